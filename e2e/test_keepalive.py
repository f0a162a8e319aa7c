"""SSE keep-alives (`[server] sse_keepalive_ms`) through the official SDKs.

With keep-alives on, a stream's response head goes out at once, followed by `: keep-alive`
comments until the upstream's first byte. Both SDKs must read past those comments to the
normal answer; and an upstream that fails before its first byte (after the 200 head has
already gone) must still surface as an error in each SDK's own terms.

The raw-HTTP tests check that the comments really are on the wire, so the SDK tests are not
passing just because keep-alives happened to be off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http import HTTPStatus

import httpx2
import openai
import pytest
from dashscope import Generation, MultiModalConversation

from conftest import (
    CLIENT_TIMEOUT_S,
    GLASS_KEY,
    UPSTREAM_KEY,
    Service,
    closed_port_url,
    gateway_config,
)

KEEPALIVE_MS = 20
# Long enough for many keep-alive periods to pass before the first token.
LATENCY_MS = 300
KEEPALIVE = b": keep-alive\n\n"
USER_TEXT = "你是谁?"
ANSWER = "echo: 你是谁?"
IMAGE_URL = "https://example.com/dog.jpeg"
IMAGE_QUESTION = "这是什么"
CHAT_PATH = "/compatible-mode/v1/chat/completions"
NATIVE_TEXT_PATH = "/api/v1/services/aigc/text-generation/generation"

# One model per kind of upstream (see conftest's [[upstreams]]).
TEXT_MODELS = [
    pytest.param("qwen-plus", id="dashscope-upstream"),
    pytest.param("qwen-turbo", id="openai-upstream"),
]
VL_MODELS = [
    pytest.param("qwen-vl-plus", id="dashscope-upstream"),
    pytest.param("qwen-vl-max", id="openai-upstream"),
]


@pytest.fixture(scope="module")
def keepalive_gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: Service
) -> Iterator[Service]:
    """The main gateway's config with keep-alives on, in front of the same simulator.

    One try per request: a 503 then reaches the client at once instead of after retries.
    """
    work = tmp_path_factory.mktemp("keepalive")
    config = work / "dashgate.toml"
    text = gateway_config(simulator.url, closed_port_url()).replace(
        "[server]\n", f"[server]\nsse_keepalive_ms = {KEEPALIVE_MS}\n", 1
    )
    config.write_text(text + "\n[retry]\nattempts = 1\n")
    service = Service(
        "dashgate",
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        work / "gateway.log",
        env={"E2E_UPSTREAM_KEY": UPSTREAM_KEY},
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def keepalive_client(keepalive_gateway: Service) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=keepalive_gateway.url + "/compatible-mode/v1",
        api_key=GLASS_KEY,
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    ) as made:
        yield made


@pytest.fixture(scope="module")
def keepalive_http(keepalive_gateway: Service) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=keepalive_gateway.url, timeout=CLIENT_TIMEOUT_S) as raw:
        yield raw


@pytest.fixture(scope="module")
def keepalive_native(keepalive_gateway: Service) -> str:
    return f"{keepalive_gateway.url}/api/v1"


def user(text: str = USER_TEXT) -> list[dict]:
    return [{"role": "user", "content": text}]


def raw_stream(http: httpx2.Client, path: str, body: dict, **headers: str) -> bytes:
    """POSTs a stream request and returns its whole raw body (after checking the head)."""
    headers = {"Authorization": f"Bearer {GLASS_KEY}", **headers}
    with http.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return response.read()


def leading_keepalives(raw: bytes) -> int:
    """How many keep-alive comments the body starts with."""
    count = 0
    while raw.startswith(KEEPALIVE, count * len(KEEPALIVE)):
        count += 1
    return count


def event_id(event: str) -> tuple[str, str]:
    """An event's `id:` (every event the gateway sends carries one, for resuming) and the rest."""
    first, _, rest = event.partition("\n")
    assert first.startswith("id:"), event
    return first.removeprefix("id:").strip(), rest


def sequence_of(event_id_text: str) -> str:
    """The sequence number an id ends with: the first event of a stream is number 1."""
    return event_id_text.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------------
# On the wire


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_stream_body_starts_with_keepalive_comments(
    keepalive_http: httpx2.Client, model: str
) -> None:
    body = {
        "model": model,
        "messages": user(),
        "stream": True,
        "sim": {"latency_ms": LATENCY_MS},
    }
    raw = raw_stream(keepalive_http, CHAT_PATH, body)

    # One at once, then one per period until the first token: with the first token 300 ms
    # away and a 20 ms period, more than one is certain.
    assert leading_keepalives(raw) >= 2, raw[:200]
    events = [event_id(e)[1] for e in raw.decode().split("\n\n") if e and not e.startswith(":")]
    data = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
    assert data[-1] == "[DONE]"
    content = "".join(
        json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1]
    )
    assert content == ANSWER


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_native_stream_body_starts_with_keepalive_comments(
    keepalive_http: httpx2.Client, model: str
) -> None:
    body = {
        "model": model,
        "input": {"messages": user()},
        "parameters": {
            "result_format": "message",
            "incremental_output": True,
            "sim": {"latency_ms": LATENCY_MS},
        },
    }
    raw = raw_stream(keepalive_http, NATIVE_TEXT_PATH, body, **{"X-DashScope-SSE": "enable"})

    assert leading_keepalives(raw) >= 2, raw[:200]
    frames = [f for f in raw.decode().split("\n\n") if f and not f.startswith(":")]
    first_id, first = event_id(frames[0])
    assert sequence_of(first_id) == "1", frames[0]
    assert first.startswith("event:result\n"), frames[0]


def test_openai_error_before_first_byte_follows_the_keepalives(
    keepalive_http: httpx2.Client,
) -> None:
    body = {"model": "qwen-plus", "messages": user(), "stream": True, "sim": {"fault": "503"}}
    raw = raw_stream(keepalive_http, CHAT_PATH, body)

    assert leading_keepalives(raw) >= 1, raw[:200]
    events = [event_id(e)[1] for e in raw.decode().split("\n\n") if e and not e.startswith(":")]
    assert len(events) == 1, events
    assert events[0].startswith("data: ")
    assert json.loads(events[0].removeprefix("data: "))["error"]["code"] == "upstream_overloaded"


def test_native_error_before_first_byte_follows_the_keepalives(
    keepalive_http: httpx2.Client,
) -> None:
    body = {
        "model": "qwen-plus",
        "input": {"messages": user()},
        "parameters": {"sim": {"fault": "503"}},
    }
    raw = raw_stream(keepalive_http, NATIVE_TEXT_PATH, body, **{"X-DashScope-SSE": "enable"})

    assert leading_keepalives(raw) >= 1, raw[:200]
    frames = [f for f in raw.decode().split("\n\n") if f and not f.startswith(": keep-alive")]
    assert len(frames) == 1, frames
    first_id, first = event_id(frames[0])
    assert sequence_of(first_id) == "1", frames[0]
    head, _, data = first.partition("\ndata:")
    assert head == "event:error\n:HTTP_STATUS/503\nstatus:503", frames[0]
    error = json.loads(data)
    assert error["code"] == "UpstreamOverloaded"
    assert error["request_id"] and error["message"]


# ---------------------------------------------------------------------------------------------
# The openai SDK


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_sdk_reads_past_keepalives_to_the_answer(
    keepalive_client: openai.OpenAI, model: str
) -> None:
    stream = keepalive_client.chat.completions.create(
        model=model,
        messages=user(),
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"sim": {"latency_ms": LATENCY_MS}},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_sdk_raises_upstream_overloaded_while_iterating(
    keepalive_client: openai.OpenAI, model: str
) -> None:
    # The head (200) is out before the upstream answers 503, so the error comes as an event.
    stream = keepalive_client.chat.completions.create(
        model=model, messages=user(), stream=True, extra_body={"sim": {"fault": "503"}}
    )

    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)

    assert received == []
    assert info.value.code == "upstream_overloaded"
    assert not isinstance(info.value, openai.APIStatusError)


# ---------------------------------------------------------------------------------------------
# The dashscope SDK


def collect(stream: Iterator) -> list:
    responses = list(stream)
    assert responses, "the stream yielded nothing"
    return responses


def assert_all_ok(responses: list) -> None:
    bad = [r for r in responses if r.status_code != HTTPStatus.OK]
    assert not bad, f"error responses in the stream: {bad}"


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_dashscope_sdk_generation_reads_past_keepalives(keepalive_native: str, model: str) -> None:
    responses = collect(
        Generation.call(
            base_address=keepalive_native,
            request_timeout=CLIENT_TIMEOUT_S,
            api_key=GLASS_KEY,
            model=model,
            messages=user(),
            result_format="message",
            stream=True,
            incremental_output=True,
            sim={"latency_ms": LATENCY_MS},
        )
    )

    assert_all_ok(responses)
    deltas = [r.output.choices[0].message.content for r in responses]
    assert "".join(deltas) == ANSWER
    assert sum(1 for d in deltas if d) > 2, deltas
    assert responses[-1].output.choices[0].finish_reason == "stop"
    assert responses[0].request_id
    assert responses[-1].usage.output_tokens > 0


@pytest.mark.parametrize("model", VL_MODELS)
def test_dashscope_sdk_multimodal_reads_past_keepalives(keepalive_native: str, model: str) -> None:
    responses = collect(
        MultiModalConversation.call(
            base_address=keepalive_native,
            request_timeout=CLIENT_TIMEOUT_S,
            api_key=GLASS_KEY,
            model=model,
            messages=[
                {"role": "user", "content": [{"image": IMAGE_URL}, {"text": IMAGE_QUESTION}]}
            ],
            stream=True,
            incremental_output=True,
            sim={"latency_ms": LATENCY_MS},
        )
    )

    assert_all_ok(responses)
    pieces = [
        "".join(item["text"] for item in r.output.choices[0].message.content) for r in responses
    ]
    assert "".join(pieces) == f"echo: {IMAGE_QUESTION}\n[image_url {IMAGE_URL}]"
    assert responses[-1].output.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_dashscope_sdk_stream_yields_upstream_overloaded(keepalive_native: str, model: str) -> None:
    responses = collect(
        Generation.call(
            base_address=keepalive_native,
            request_timeout=CLIENT_TIMEOUT_S,
            api_key=GLASS_KEY,
            model=model,
            messages=user(),
            result_format="message",
            stream=True,
            incremental_output=True,
            sim={"fault": "503"},
        )
    )

    [response] = responses
    assert response.status_code == 503
    assert response.code == "UpstreamOverloaded"
    assert response.message
    assert response.output is None
    assert response.request_id


# ---------------------------------------------------------------------------------------------
# Known gaps (strict xfail: they turn red once fixed, so the marker gets removed)


def test_keepalives_continue_until_the_upstreams_first_event(
    keepalive_http: httpx2.Client,
) -> None:
    # The simulator sends its 200 head at once and then nothing; the `stall` upstream gives up
    # after 500 ms of silence: 25 keep-alive periods.
    body = {
        "model": "qwen-stall",
        "messages": user(),
        "stream": True,
        "sim": {"fault": "stall", "after": 0},
    }
    raw = raw_stream(keepalive_http, CHAT_PATH, body)

    events = [event_id(e)[1] for e in raw.decode().split("\n\n") if e and not e.startswith(":")]
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "upstream_timeout"
    assert leading_keepalives(raw) >= 2, raw[:200]
