"""The Batch API through the pinned openai SDK (docs/batch.md): `files.create(purpose="batch")`,
`batches.create / retrieve / list / cancel`, and the results through `files.content`, on both
routes: a model a `dashscope` upstream serves goes to its batch API (the simulator's), one an
OpenAI-compatible upstream serves is run by the gateway itself.

A gateway and simulator of this module's own: the runner polls every 50 ms here (the default is
seconds), and a simulated batch ends at its 20th poll, so a cancel sent right after the create
finds it running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from conftest import CLIENT_TIMEOUT_S, GLASS_KEY, LIMITED_KEY, UPSTREAM_KEY, Service

# A safety net so a stuck batch fails the test instead of hanging it; not a behaviour check.
BATCH_WAIT_S = 60
ENDED = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def batch_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("batch-sim")
    simulator = Service(
        "dashgate simulator",
        [
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            UPSTREAM_KEY,
            "--batch-polls",
            "20",
        ],
        logs / "simulator.log",
    )
    work = tmp_path_factory.mktemp("batch-gateway")
    config = work / "dashgate.toml"
    config.write_text(
        f"""
[batch]
poll_ms = 50
workers = 2

[[keys]]
name = "glass3"
key = "{GLASS_KEY}"

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
models = ["qwen-plus"]

# Forwarded: DashScope's batch API.
[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{simulator.url}"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-plus"]

# No batch API: the gateway runs these batches itself.
[[upstreams]]
name = "compat"
provider = "openai"
base_url = "{simulator.url}/v1"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-turbo"]
"""
    )
    gateway = Service(
        "dashgate",
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        work / "gateway.log",
    )
    yield gateway
    gateway.stop()
    simulator.stop()


def client_for(gateway: Service, key: str = GLASS_KEY) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/compatible-mode/v1",
        api_key=key,
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def batch_client(batch_gateway: Service) -> Iterator[openai.OpenAI]:
    with client_for(batch_gateway) as client:
        yield client


def write_jsonl(path: Path, model: str, count: int) -> Path:
    lines = [
        json.dumps(
            {
                "custom_id": f"req-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"line {n}"}]},
            }
        )
        for n in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def until_ended(client: openai.OpenAI, batch_id: str):
    """Polls the batch (a bounded wait on its state, as a client of the API would)."""
    deadline = time.monotonic() + BATCH_WAIT_S
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ENDED:
            return batch
        assert time.monotonic() < deadline, f"batch never ended: {batch}"
        time.sleep(0.05)


@pytest.mark.parametrize("model", ["qwen-plus", "qwen-turbo"], ids=["forwarded", "gateway-run"])
def test_a_batch_runs_and_its_results_come_back_through_files_content(
    batch_client: openai.OpenAI, tmp_path: Path, model: str
) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", model, 20)
    uploaded = batch_client.files.create(file=path, purpose="batch")
    assert uploaded.purpose == "batch"
    batch = batch_client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "e2e"},
    )
    assert batch.object == "batch"
    assert batch.input_file_id == uploaded.id
    assert batch.metadata == {"job": "e2e"}

    done = until_ended(batch_client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (20, 20)
    assert done.request_counts.failed == 0
    assert done.completed_at is not None and done.error_file_id is None
    assert done.output_file_id is not None

    text = batch_client.files.content(done.output_file_id).text
    answers = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert sorted(a["custom_id"] for a in answers) == sorted(f"req-{n}" for n in range(20))
    for answer in answers:
        assert answer["error"] is None
        assert answer["response"]["status_code"] == 200
        body = answer["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["total_tokens"] > 0

    listed = batch_client.batches.list(limit=100)
    assert batch.id in [b.id for b in listed.data]


def test_a_cancel_is_forwarded_and_the_batch_ends_cancelled(
    batch_client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", "qwen-plus", 5)
    uploaded = batch_client.files.create(file=path, purpose="batch")
    batch = batch_client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelling = batch_client.batches.cancel(batch.id)
    assert cancelling.id == batch.id
    assert cancelling.status in {"cancelling", "cancelled"}
    done = until_ended(batch_client, batch.id)
    assert done.status == "cancelled", done
    assert done.cancelled_at is not None
    # Asked again, the same answer: a cancel is idempotent.
    assert batch_client.batches.cancel(batch.id).status == "cancelled"


def test_a_bad_line_is_refused_naming_it_and_another_key_sees_nothing(
    batch_gateway: Service, batch_client: openai.OpenAI, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", "qwen-plus", 3)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].replace('"POST"', '"GET"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = batch_client.files.create(file=path, purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        batch_client.batches.create(
            input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.param == "input_file_id"
    assert 'line 2: method must be "POST"' in refused.value.message

    good = batch_client.files.create(
        file=write_jsonl(tmp_path / "good.jsonl", "qwen-plus", 2), purpose="batch"
    )
    batch = batch_client.batches.create(
        input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with client_for(batch_gateway, LIMITED_KEY) as other:
        with pytest.raises(openai.NotFoundError):
            other.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            other.batches.cancel(batch.id)
        assert batch.id not in [b.id for b in other.batches.list()]
    assert until_ended(batch_client, batch.id).status == "completed"
    # A batch that completed is past cancelling: a 409 saying so.
    with pytest.raises(openai.ConflictError) as late:
        batch_client.batches.cancel(batch.id)
    assert late.value.code == "batch_not_cancellable"
