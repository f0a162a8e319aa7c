"""The official OpenAI Python SDK, used as the glasses use it, against dashgate and its simulator.

The simulator answers deterministically (`echo: <last user text>`, one line per media part, the
first tool called with the user text), so every assertion here is exact about what went through
the gateway and came back.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

import httpx2
import openai
import pytest

from conftest import GLASS_KEY, LIMITED_KEY, MAX_BODY_BYTES, UPSTREAM_KEY, Service, camera_jpeg

USER_TEXT = "你是谁?"
CHAT_PATH = "/compatible-mode/v1/chat/completions"

# The weather tool from DashScope's function-calling example.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "当你想查询指定城市的天气时非常有用。",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "城市或县区,比如北京市、杭州市、余杭区等。",
                }
            },
            "required": ["location"],
        },
    },
}


def user(text: str = USER_TEXT) -> list[dict]:
    return [{"role": "user", "content": text}]


def sim(**knobs) -> dict:
    """Per-request simulator knobs; the gateway forwards unknown body fields untouched."""
    return {"sim": knobs}


def content_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---------------------------------------------------------------------------------------------
# Chat


def test_non_stream_chat_echoes_the_question(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="qwen-plus", messages=user())

    assert completion.choices[0].message.content == "echo: 你是谁?"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "qwen-plus"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="qwen-plus",
        messages=user(),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert content_of(chunks) == "echo: 你是谁?"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert all(f is None for f in finishes[:-1])
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.id == chunks[0].id and c.id.startswith("chatcmpl-") for c in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="qwen-plus", messages=user(), stream=True))

    assert content_of(chunks) == "echo: 你是谁?"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_stream_ends_with_done_marker(http: httpx2.Client) -> None:
    # The SDK hides the terminator, so read the raw event stream.
    body = {"model": "qwen-plus", "messages": user(), "stream": True}
    headers = {"Authorization": f"Bearer {GLASS_KEY}"}
    with http.stream("POST", CHAT_PATH, json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line for line in response.iter_lines() if line.startswith("data:")]

    assert data[-1] == "data: [DONE]"
    assert data.count("data: [DONE]") == 1


def test_base64_camera_jpeg_arrives_intact_in_a_stream(client: openai.OpenAI) -> None:
    jpeg = camera_jpeg()
    assert jpeg[:2] == b"\xff\xd8"
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    # The simulator describes what it received: the URL's length and its sha256 prefix.
    digest = hashlib.sha256(data_url.encode()).hexdigest()[:16]
    expected = (
        f"echo: 这是什么?\n[image_url data:image/jpeg chars={len(data_url)} sha256={digest}]"
    )

    stream = client.chat.completions.create(
        model="qwen-vl-plus",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": "这是什么?"},
                ],
            }
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert content_of(chunks) == expected
    assert chunks[-1].usage is not None


def test_openai_provider_upstream_serves_its_model(client: openai.OpenAI) -> None:
    # qwen-turbo is routed to the upstream configured with provider = "openai".
    completion = client.chat.completions.create(model="qwen-turbo", messages=user("ping"))

    assert completion.choices[0].message.content == "echo: ping"
    assert completion.model == "qwen-turbo"


def test_plain_v1_base_url_works_too(make_client: Callable[..., openai.OpenAI]) -> None:
    v1 = make_client(GLASS_KEY, path="/v1")

    completion = v1.chat.completions.create(model="qwen-plus", messages=user("hello"))

    assert completion.choices[0].message.content == "echo: hello"
    assert [m.id for m in v1.models.list()]


# ---------------------------------------------------------------------------------------------
# Tools


def test_two_round_tool_call(client: openai.OpenAI) -> None:
    question = "杭州天气怎么样"
    first = client.chat.completions.create(
        model="qwen-plus", messages=user(question), tools=[WEATHER_TOOL]
    )

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"location": question}

    # Round 2: the assistant's call and our tool's answer go back; the model reads the result.
    messages = [
        *user(question),
        {
            "role": "assistant",
            "content": choice.message.content or "",
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "杭州今天晴,25°C"},
    ]
    second = client.chat.completions.create(
        model="qwen-plus", messages=messages, tools=[WEATHER_TOOL]
    )

    assert second.choices[0].message.content == "tool result: 杭州今天晴,25°C"
    assert second.choices[0].finish_reason == "stop"


def test_streamed_tool_call_assembles_from_deltas(client: openai.OpenAI) -> None:
    question = "杭州天气怎么样"
    stream = client.chat.completions.create(
        model="qwen-plus", messages=user(question), tools=[WEATHER_TOOL], stream=True
    )

    calls: dict[int, dict[str, str]] = {}
    finish_reason = None
    fragments = 0
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                fragments += 1
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                # Later fragments repeat the call with an empty id (DashScope's framing).
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
            finish_reason = choice.finish_reason or finish_reason

    assert fragments > 1, "the arguments should arrive in several fragments"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "get_current_weather"
    assert json.loads(calls[0]["arguments"]) == {"location": question}
    assert finish_reason == "tool_calls"


# ---------------------------------------------------------------------------------------------
# Pass-through of DashScope extensions


def test_extra_body_fields_reach_the_upstream_unchanged(client: openai.OpenAI) -> None:
    extensions = {
        "enable_search": True,
        "skill": [{"type": "ppt", "mode": "general", "template_id": "news_01"}],
        "translation_options": {
            "source_lang": "auto",
            "target_lang": "English",
            "terms": [{"source": "智能眼镜", "target": "smart glasses"}],
        },
        "vl_high_resolution_images": True,
    }
    messages = [{"role": "system", "content": "You are a helpful assistant."}, *user()]

    completion = client.chat.completions.create(
        model="qwen-plus",
        messages=messages,
        temperature=0.7,
        extra_body={**extensions, **sim(echo_request=True)},
    )
    # With echo_request the reply is the exact body the simulator received.
    received = json.loads(completion.choices[0].message.content)

    for field, value in extensions.items():
        assert received[field] == value, field
    assert received["model"] == "qwen-plus"
    assert received["messages"] == messages
    assert received["temperature"] == 0.7


def test_request_bytes_reach_the_upstream_exactly_as_sent(http: httpx2.Client) -> None:
    # Odd spacing, an escaped character, key order and a trailing-zero number: a gateway that
    # re-serialised the body would change at least one of them.
    sent = (
        b'{ "model" :"qwen-plus",\n "messages":[{"role":"user","content":"\\u4f60 hi"}],'
        b' "zzz_unknown": 1.50, "sim":{"echo_request":true} }'
    )
    response = http.post(
        CHAT_PATH,
        content=sent,
        headers={"Authorization": f"Bearer {GLASS_KEY}", "Content-Type": "application/json"},
    )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].encode() == sent


def test_boundary_parameter_values_are_accepted(client: openai.OpenAI) -> None:
    # The edges of each documented range are valid; the gateway must not refuse them.
    completion = client.chat.completions.create(
        model="qwen-plus",
        messages=user("a long enough question"),
        temperature=0,
        top_p=1,
        presence_penalty=-2,
        n=4,
        max_tokens=1,
        stop=["never-appears"],
    )

    assert len(completion.choices) == 4
    assert all(c.finish_reason == "length" for c in completion.choices)


# ---------------------------------------------------------------------------------------------
# Models


def test_models_list_shows_every_configured_model(client: openai.OpenAI) -> None:
    models = list(client.models.list())

    assert {m.id for m in models} == {
        "qwen-long",
        "qwen-plus",
        "qwen-vl-plus",
        "qwen-max",
        "missing-qwen",
        "qwen-turbo",
        "qwen-vl-max",
        "qwen-dead",
        "qwen-badkey",
        "qwen-slow",
        "qwen-stall",
    }
    assert all(m.object == "model" for m in models)


def test_limited_key_sees_only_its_allowed_model(make_client: Callable[..., openai.OpenAI]) -> None:
    limited = make_client(LIMITED_KEY)

    assert [m.id for m in limited.models.list()] == ["qwen-plus"]


def test_models_list_needs_a_valid_key(make_client: Callable[..., openai.OpenAI]) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        make_client("sk-nobody").models.list()

    assert info.value.code == "invalid_api_key"


# ---------------------------------------------------------------------------------------------
# Errors the gateway raises itself


def assert_request_id_matches(error: openai.APIStatusError) -> None:
    """The error body's request_id is the one in the x-request-id header."""
    header = error.response.headers.get("x-request-id")
    assert header
    assert error.response.json()["request_id"] == header


def test_wrong_key_is_401_invalid_api_key(make_client: Callable[..., openai.OpenAI]) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        make_client("sk-wrong").chat.completions.create(model="qwen-plus", messages=user())

    error = info.value
    assert error.status_code == 401
    assert error.code == "invalid_api_key"
    assert error.type == "invalid_request_error"
    assert_request_id_matches(error)


def test_missing_key_is_401_invalid_api_key(http: httpx2.Client) -> None:
    response = http.post(CHAT_PATH, json={"model": "qwen-plus", "messages": user()})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        pytest.param({"temperature": 2}, "temperature", id="temperature"),
        pytest.param({"top_p": 0}, "top_p", id="top_p"),
        pytest.param({"presence_penalty": 2.5}, "presence_penalty", id="presence_penalty"),
        pytest.param({"n": 5}, "n", id="n"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens"),
        pytest.param({"stop": {"word": 1}}, "stop", id="stop"),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "has space"}}]},
            "tools[0].function.name",
            id="tool_name",
        ),
        pytest.param({"messages": []}, "messages", id="empty_messages"),
        pytest.param(
            {"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role", id="role"
        ),
    ],
)
def test_invalid_parameter_is_400_naming_the_param(
    client: openai.OpenAI, overrides: dict, param: str
) -> None:
    request = {"model": "qwen-plus", "messages": user(), **overrides}

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**request)

    error = info.value
    assert error.status_code == 400
    assert error.code == "invalid_parameter_error"
    assert error.param == param
    assert error.type == "invalid_request_error"
    # The SDK keeps the inner error object as `body`.
    assert isinstance(error.body, dict) and error.body["param"] == param
    assert_request_id_matches(error)


def test_malformed_json_is_400_invalid_json(http: httpx2.Client) -> None:
    response = http.post(
        CHAT_PATH,
        content=b'{"model": "qwen-plus", "messages": [',
        headers={"Authorization": f"Bearer {GLASS_KEY}", "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "invalid_json"
    assert body["request_id"] == response.headers["x-request-id"]


def oversized_body() -> bytes:
    """A well-formed request just over the gateway's max_body_bytes."""
    text = "x" * (MAX_BODY_BYTES + 1)
    return json.dumps({"model": "qwen-plus", "messages": user(text)}).encode()


def test_oversized_body_is_413(http: httpx2.Client) -> None:
    response = http.post(
        CHAT_PATH,
        content=oversized_body(),
        headers={"Authorization": f"Bearer {GLASS_KEY}", "Content-Type": "application/json"},
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_oversized_chunked_body_is_413(http: httpx2.Client) -> None:
    # No Content-Length: the gateway must count while reading.
    body = oversized_body()
    pieces = (body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
    response = http.post(
        CHAT_PATH,
        content=pieces,
        headers={"Authorization": f"Bearer {GLASS_KEY}", "Content-Type": "application/json"},
    )

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="qwen-nonexistent", messages=user())

    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


def test_disallowed_model_is_403_model_not_allowed(
    make_client: Callable[..., openai.OpenAI],
) -> None:
    limited = make_client(LIMITED_KEY)
    # The allowed model works, so the 403 below is about the model alone.
    assert limited.chat.completions.create(model="qwen-plus", messages=user()).choices

    with pytest.raises(openai.PermissionDeniedError) as info:
        limited.chat.completions.create(model="qwen-max", messages=user())

    assert info.value.status_code == 403
    assert info.value.code == "model_not_allowed"


# ---------------------------------------------------------------------------------------------
# Upstream failures


def test_upstream_429_keeps_status_body_and_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="qwen-plus", messages=user(), extra_body=sim(fault="429", retry_after="7")
        )

    error = info.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "7"
    # DashScope's own error body, forwarded.
    assert error.code == "limit_requests"
    assert error.type == "limit_requests"
    # The SDK prefixes `message` with the status; the body keeps DashScope's text as sent.
    assert error.body["message"] == "Requests rate limit exceeded, please try again later."


def test_upstream_4xx_is_forwarded_with_its_status(client: openai.OpenAI) -> None:
    # missing-qwen is configured on the simulator upstream, which answers 404 for it.
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="missing-qwen", messages=user())

    assert info.value.code == "model_not_found"
    assert "missing-qwen" in info.value.message


def test_upstream_500_is_502_upstream_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="qwen-plus", messages=user(), extra_body=sim(fault="500")
        )

    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert_request_id_matches(info.value)


def test_upstream_503_is_503_upstream_overloaded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="qwen-plus", messages=user(), extra_body=sim(fault="503")
        )

    assert info.value.status_code == 503
    assert info.value.code == "upstream_overloaded"


def test_unreachable_upstream_is_502_upstream_unreachable(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="qwen-dead", messages=user())

    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"


def test_slow_first_byte_is_504_upstream_timeout(client: openai.OpenAI) -> None:
    # The slow upstream allows 300 ms to the first byte; the simulator waits 3 s.
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="qwen-slow", messages=user(), extra_body=sim(latency_ms=3000)
        )

    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


def test_rejected_upstream_key_is_502_upstream_auth_failed(client: openai.OpenAI) -> None:
    # The client's key is fine; the gateway's key for this upstream is not.
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="qwen-badkey", messages=user())

    assert info.value.status_code == 502
    assert info.value.code == "upstream_auth_failed"


def test_mid_stream_inspection_failure_raises_while_iterating(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="qwen-plus", messages=user(), stream=True, extra_body=sim(fault="inspection")
    )

    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)

    # The simulator fails after its role chunk and one content delta.
    assert len(received) == 2
    assert received[0].choices[0].delta.role == "assistant"
    assert info.value.code == "data_inspection_failed"
    assert not isinstance(info.value, openai.APIStatusError)


def test_upstream_dropping_mid_stream_raises_while_iterating(client: openai.OpenAI) -> None:
    # A pause between events makes the simulator flush its head and first event before the
    # drop; without one it closes the connection before sending anything at all.
    stream = client.chat.completions.create(
        model="qwen-plus",
        messages=user(),
        stream=True,
        extra_body=sim(fault="drop", chunk_delay_ms=10),
    )

    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)

    # The event written just before the drop may die in the simulator's send buffer.
    assert 1 <= len(received) <= 2
    assert received[0].choices[0].delta.role == "assistant"
    assert info.value.code == "upstream_invalid_response"
    assert not isinstance(info.value, openai.APIStatusError)


def test_upstream_stalling_mid_stream_raises_upstream_timeout(client: openai.OpenAI) -> None:
    # The stall upstream allows 500 ms of silence between events; the simulator stalls forever.
    stream = client.chat.completions.create(
        model="qwen-stall", messages=user(), stream=True, extra_body=sim(fault="stall")
    )

    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)

    assert len(received) == 2
    assert info.value.code == "upstream_timeout"


def stream_data_lines(http: httpx2.Client, body: dict) -> tuple[list[str], str]:
    """POSTs a streaming request; returns its `data:` payloads and the x-request-id header."""
    headers = {"Authorization": f"Bearer {GLASS_KEY}"}
    with http.stream("POST", CHAT_PATH, json={**body, "stream": True}, headers=headers) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
        data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        return data, response.headers["x-request-id"]


def test_gateway_error_event_is_the_last_event_and_names_the_request(http: httpx2.Client) -> None:
    lines, request_id = stream_data_lines(
        http, {"model": "qwen-stall", "messages": user(), **sim(fault="stall")}
    )

    last = json.loads(lines[-1])
    assert last["error"]["code"] == "upstream_timeout"
    assert last["request_id"] == request_id
    assert "[DONE]" not in lines


def test_upstream_error_event_is_the_last_event(http: httpx2.Client) -> None:
    # DashScope ends a refused stream with the error event and no [DONE]; a [DONE] after it
    # tells a client that does not inspect every event that the answer completed.
    lines, _ = stream_data_lines(
        http, {"model": "qwen-plus", "messages": user(), **sim(fault="inspection")}
    )

    assert json.loads(lines[-2])["choices"]
    assert json.loads(lines[-1])["error"]["code"] == "data_inspection_failed"


# ---------------------------------------------------------------------------------------------
# Passthrough mode


def test_passthrough_forwards_the_callers_own_key(
    make_client: Callable[..., openai.OpenAI], passthrough_gateway: Service
) -> None:
    own_key = make_client(UPSTREAM_KEY, base=passthrough_gateway.url)

    completion = own_key.chat.completions.create(model="qwen-plus", messages=user())

    assert completion.choices[0].message.content == "echo: 你是谁?"


def test_passthrough_upstream_401_stays_the_callers_401(
    make_client: Callable[..., openai.OpenAI], passthrough_gateway: Service
) -> None:
    # In passthrough mode a refused key is the caller's, not a gateway misconfiguration.
    wrong = make_client("sk-callers-wrong-key", base=passthrough_gateway.url)

    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model="qwen-plus", messages=user())

    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"


# ---------------------------------------------------------------------------------------------
# Request ids


def test_every_response_has_a_request_id(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="qwen-plus", messages=user())

    assert raw.headers.get("x-request-id")
    assert raw.parse().choices[0].message.content == "echo: 你是谁?"


def test_stream_response_has_a_request_id(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="qwen-plus", messages=user(), stream=True
    )

    assert raw.headers.get("x-request-id")
    assert content_of(list(raw.parse())) == "echo: 你是谁?"


def test_sane_incoming_request_id_is_echoed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="qwen-plus", messages=user(), extra_headers={"x-request-id": "glass3-e2e.0001:a_b"}
    )

    assert raw.headers["x-request-id"] == "glass3-e2e.0001:a_b"


def test_insane_incoming_request_id_is_replaced(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="qwen-plus", messages=user(), extra_headers={"x-request-id": "no spaces <allowed>"}
    )

    assert raw.headers["x-request-id"] not in ("", "no spaces <allowed>")


def test_health_endpoints_answer(http: httpx2.Client) -> None:
    health = http.get("/healthz")
    ready = http.get("/readyz")

    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert health.headers.get("x-request-id")
