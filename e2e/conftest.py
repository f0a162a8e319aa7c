"""Fixtures: one dashgate simulator and one gateway in front of it, started once per session.

Both are real `dashgate` processes on port 0; each announces its address as the first line on
stdout, which is how we learn the port (and know it is ready to serve).
"""

from __future__ import annotations

import io
import os
import select
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import openai
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent

GLASS_KEY = "sk-glass3-test"
LIMITED_KEY = "sk-limited-test"
UPSTREAM_KEY = "sk-upstream-test"
MAX_BODY_BYTES = 1024 * 1024

# A safety net so a wedged process fails the run instead of hanging it; not a behaviour check.
STARTUP_WAIT_S = 30
CLIENT_TIMEOUT_S = 30


class Service:
    """A running dashgate subprocess and the base URL it announced."""

    def __init__(
        self, what: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        # The store (a SQLite file) and the usage spill file go beside the log.
        cwd = log_path.parent
        self.what = what
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(dashgate_bin()), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, **(env or {})},
                cwd=cwd,
            )
        self.url = self._read_announcement()

    def _read_announcement(self) -> str:
        prefix = f"{self.what} listening on "
        assert self.process.stdout is not None
        # One blocking wait for the first line (not a poll loop): select bounds it.
        ready, _, _ = select.select([self.process.stdout], [], [], STARTUP_WAIT_S)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith(prefix):
            self.stop()
            pytest.fail(
                f"{self.what} did not announce its address (first stdout line: {line!r}).\n"
                f"Its log ({self.log_path}):\n{self.log()}",
                pytrace=False,
            )
        return line[len(prefix) :].strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def dashgate_bin() -> Path:
    path = Path(os.environ.get("DASHGATE_BIN", REPO / "target" / "debug" / "dashgate"))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"dashgate binary not found at {path}: run `cargo build` in {REPO} "
            "or point DASHGATE_BIN at a built binary.",
            pytrace=False,
        )
    return path


def closed_port_url() -> str:
    """A loopback URL nothing listens on: bind a free port, then let it go."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def camera_jpeg(width: int = 1152, height: int = 864) -> bytes:
    """A camera-sized JPEG with real structure in it, as the glasses would capture. The default
    size is within the gateway's 1 MP budget, so it travels byte-identical; larger ones are
    downscaled (see test_media.py)."""
    image = Image.new("RGB", (width, height), (30, 80, 150))
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 64):
        draw.rectangle([x, 0, x + 31, height - 1], fill=(x % 256, 140, 255 - x % 256))
    cx, cy, r = width // 2, height // 2, min(width, height) // 4
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(240, 200, 40), outline=(0, 0, 0), width=12)
    draw.line([0, 0, width - 1, height - 1], fill=(255, 255, 255), width=9)
    draw.text((48, 48), "dashgate e2e", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def gateway_config(sim_url: str, dead_url: str) -> str:
    """One gateway, one upstream per failure mode, each on its own model name."""
    return f"""
[server]
max_body_bytes = {MAX_BODY_BYTES}

# The suite injects faults into one shared simulator on purpose; a breaker opening on them would
# turn later tests' answers into 503s. Circuit breaking has its own tests in tests/reliability.rs.
[circuit]
failure_threshold = 1000000

[auth]
mode = "keys"

[[keys]]
name = "glass3"
key = "{GLASS_KEY}"

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
models = ["qwen-plus"]

# The simulator in DashScope's own layout ({{base_url}}/compatible-mode/v1/...).
# `missing-qwen` is routed here on purpose: the simulator answers it with its own 404.
[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{sim_url}"
api_key = "${{E2E_UPSTREAM_KEY}}"
models = ["qwen-plus", "qwen-vl-plus", "qwen-max", "qwen-long", "missing-qwen"]
first_byte_timeout_ms = 10000

# The same simulator as a plain OpenAI-compatible server ({{base_url}}/chat/completions): the
# gateway translates native requests to it and its replies back.
[[upstreams]]
name = "compat"
provider = "openai"
base_url = "{sim_url}/v1"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-turbo", "qwen-vl-max"]

# Nothing listens here: upstream unreachable.
[[upstreams]]
name = "dead"
provider = "dashscope"
base_url = "{dead_url}"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-dead"]
connect_timeout_ms = 2000

# The simulator refuses this key: the gateway's own credentials are wrong.
[[upstreams]]
name = "badkey"
provider = "dashscope"
base_url = "{sim_url}"
api_key = "sk-not-the-upstream-key"
models = ["qwen-badkey"]

# A short wait for the first byte, so a slow upstream trips it quickly.
[[upstreams]]
name = "slow"
provider = "dashscope"
base_url = "{sim_url}"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-slow"]
first_byte_timeout_ms = 300

# A short allowance of silence between stream events, so a stalled stream trips it quickly.
[[upstreams]]
name = "stall"
provider = "dashscope"
base_url = "{sim_url}"
api_key = "{UPSTREAM_KEY}"
models = ["qwen-stall"]
idle_timeout_ms = 500

# The response cache, allowed for one model; a request still asks (x-dashgate-cache: on).
[cache]
models = ["qwen-max"]
"""


@pytest.fixture(scope="session")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("simulator")
    service = Service(
        "dashgate simulator",
        ["simulate", "--listen", "127.0.0.1:0", "--api-key", UPSTREAM_KEY],
        logs / "simulator.log",
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, simulator: Service) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("gateway")
    config = work / "dashgate.toml"
    config.write_text(gateway_config(simulator.url, closed_port_url()))
    service = Service(
        "dashgate",
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        work / "gateway.log",
        # The upstream key arrives through ${VAR} interpolation, as a deployment would pass it.
        env={"E2E_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def passthrough_gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: Service
) -> Iterator[Service]:
    """A second gateway in passthrough mode: callers bring their own DashScope key."""
    work = tmp_path_factory.mktemp("passthrough")
    config = work / "dashgate.toml"
    config.write_text(
        f"""
[auth]
mode = "passthrough"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{simulator.url}"
models = ["qwen-plus"]
"""
    )
    service = Service(
        "dashgate",
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        work / "gateway.log",
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def make_client(gateway: Service) -> Iterator[Callable[..., openai.OpenAI]]:
    """Builds SDK clients for the gateway with any key; retries off so every error surfaces."""
    made: list[openai.OpenAI] = []

    def make(
        api_key: str = GLASS_KEY, path: str = "/compatible-mode/v1", base: str | None = None
    ) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=(base or gateway.url) + path,
            api_key=api_key,
            max_retries=0,
            timeout=CLIENT_TIMEOUT_S,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture(scope="session")
def client(make_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    """The glasses' client: compatible-mode base URL and their gateway key."""
    return make_client(GLASS_KEY)


@pytest.fixture(scope="session")
def http(gateway: Service) -> Iterator[httpx2.Client]:
    """Raw HTTP for what the SDK cannot send (bad JSON, oversized bodies)."""
    with httpx2.Client(base_url=gateway.url, timeout=CLIENT_TIMEOUT_S) as raw:
        yield raw


@pytest.fixture(scope="session")
def native_base(gateway: Service) -> str:
    """The gateway as the dashscope SDK's `base_address` (what `base_http_api_url` would hold)."""
    return f"{gateway.url}/api/v1"
