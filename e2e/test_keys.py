"""Keys made with `dashgate keys create`, used by the official SDKs: the key works, its limits
answer 429 the way each SDK understands, every request lands in the ledger (read back through
the admin API), and `dashgate keys revoke` shuts the key out."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from dashscope import Generation

from conftest import CLIENT_TIMEOUT_S, UPSTREAM_KEY, Service, dashgate_bin

ADMIN_TOKEN = "e2e-admin-token-0123456789"
# How long the gateway trusts a key lookup: the bound on seeing a revoke made by another process.
KEY_CACHE_MS = 200
# A safety net for the asynchronous ledger writer and the cache bound; not a behaviour check.
WAIT_S = 10


def config(sim_url: str) -> str:
    return f"""
[auth]
admin_token = "{ADMIN_TOKEN}"
key_cache_ms = {KEY_CACHE_MS}

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{sim_url}"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-plus", "qwen-vl-plus"]
"""


def keys(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(dashgate_bin()), "keys", *args, "--config", str(work / "dashgate.toml")],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


class Fleet:
    def __init__(self, work: Path, gateway: Service) -> None:
        self.work = work
        self.gateway = gateway

    def mint(self, *args: str) -> str:
        made = keys(self.work, "create", *args)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("sk-dg-") and "\n" not in key, made.stdout
        return key

    def admin(self, path: str) -> dict:
        request = urllib.request.Request(
            self.gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as response:
            return json.loads(response.read())

    def usage_of(self, name: str, requests: int) -> dict:
        """The key's totals once the ledger holds `requests` records for it."""
        deadline = time.monotonic() + WAIT_S
        while True:
            totals = self.admin(f"/admin/api/usage?key={name}")["totals"]
            if totals["requests"] >= requests or time.monotonic() > deadline:
                assert totals["requests"] == requests, totals
                return totals
            time.sleep(0.02)

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/compatible-mode/v1",
            api_key=key,
            max_retries=0,
            timeout=CLIENT_TIMEOUT_S,
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, simulator: Service) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("keys")
    (work / "dashgate.toml").write_text(config(simulator.url))
    gateway = Service(
        "dashgate",
        ["serve", "--config", str(work / "dashgate.toml"), "--listen", "127.0.0.1:0"],
        work / "gateway.log",
    )
    yield Fleet(work, gateway)
    gateway.stop()


def test_a_minted_key_works_and_every_request_is_metered(fleet: Fleet) -> None:
    key = fleet.mint("--name", "e2e-glass", "--models", "qwen-plus,qwen-vl-plus")
    client = fleet.openai(key)
    reply = client.chat.completions.create(
        model="qwen-plus", messages=[{"role": "user", "content": "hello"}]
    )
    # A stream whose client does not ask for usage gets none; the ledger still counts it.
    chunks = list(
        client.chat.completions.create(
            model="qwen-plus", messages=[{"role": "user", "content": "again"}], stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="qwen-max", messages=[{"role": "user", "content": "x"}])
    totals = fleet.usage_of("e2e-glass", 3)
    assert reply.usage is not None
    assert totals["total_tokens"] > reply.usage.total_tokens
    listed = keys(fleet.work, "list")
    assert listed.returncode == 0 and "e2e-glass" in listed.stdout and key not in listed.stdout


def test_limits_answer_429_in_each_sdks_terms(fleet: Fleet) -> None:
    key = fleet.mint("--name", "e2e-capped", "--rpm", "2")
    client = fleet.openai(key)
    for _ in range(2):
        client.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "limit_requests"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    native = Generation.call(
        model="qwen-plus",
        prompt="hi",
        api_key=key,
        base_address=fleet.gateway.url + "/api/v1",
        request_timeout=CLIENT_TIMEOUT_S,
    )
    assert native.status_code == 429
    assert native.code == "Throttling.RateQuota"


def test_a_revoke_from_the_command_line_shuts_the_key_out(fleet: Fleet) -> None:
    key = fleet.mint("--name", "e2e-lost")
    client = fleet.openai(key)
    client.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "hi"}])
    revoked = keys(fleet.work, "revoke", "e2e-lost")
    assert revoked.returncode == 0, revoked.stderr
    # Another process revoked it: the gateway sees it once its cached lookup runs out.
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            client.chat.completions.create(
                model="qwen-plus", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.AuthenticationError as e:
            assert "revoked" in str(e)
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(KEY_CACHE_MS / 4000)
    missing = keys(fleet.work, "revoke", "nobody")
    assert missing.returncode == 1 and "nobody" in missing.stderr
