"""The official `dashscope` Python SDK (DashScope's native API) against dashgate and its simulator.

Every behaviour runs against both kinds of upstream:

- `dashscope-upstream`: a `provider = "dashscope"` upstream (the simulator's own native endpoints);
  native requests travel to it unchanged and its frames come back as they are;
- `openai-upstream`: a `provider = "openai"` upstream (the simulator as a plain OpenAI-compatible
  server); the gateway translates the native request to chat/completions and the reply (whole or
  streamed) back to native frames.

The simulator answers deterministically (`echo: <last user text>`, one line per media part, the
first tool called with the user text, `thinking about: <text>` as reasoning), so the assertions
are exact about what went through the gateway and came back.

The SDK does not raise for HTTP errors: every call returns a response object (streams: a
generator of them) whose `status_code`, `code` and `message` carry the error.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from http import HTTPStatus

import pytest
from dashscope import Generation, MultiModalConversation

from conftest import CLIENT_TIMEOUT_S, GLASS_KEY, LIMITED_KEY, camera_jpeg

USER_TEXT = "你是谁?"
IMAGE_URL = "https://example.com/dog.jpeg"
IMAGE_QUESTION = "这是什么"

# Text and vision models, one pair per kind of upstream (see conftest's [[upstreams]]).
TEXT_MODELS = [
    pytest.param("qwen-plus", id="dashscope-upstream"),
    pytest.param("qwen-turbo", id="openai-upstream"),
]
VL_MODELS = [
    pytest.param("qwen-vl-plus", id="dashscope-upstream"),
    pytest.param("qwen-vl-max", id="openai-upstream"),
]

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


@pytest.fixture(scope="module")
def generate(native_base: str):
    """`Generation.call` pointed at the gateway, with the glasses' key unless told otherwise."""

    def call(**kwargs):
        kwargs.setdefault("api_key", GLASS_KEY)
        return Generation.call(
            base_address=native_base, request_timeout=CLIENT_TIMEOUT_S, **kwargs
        )

    return call


@pytest.fixture(scope="module")
def converse(native_base: str):
    """`MultiModalConversation.call` pointed at the gateway."""

    def call(**kwargs):
        kwargs.setdefault("api_key", GLASS_KEY)
        return MultiModalConversation.call(
            base_address=native_base, request_timeout=CLIENT_TIMEOUT_S, **kwargs
        )

    return call


def user(text: str = USER_TEXT) -> list[dict]:
    return [{"role": "user", "content": text}]


def image_question(image: str) -> list[dict]:
    return [{"role": "user", "content": [{"image": image}, {"text": IMAGE_QUESTION}]}]


def collect(stream: Iterator) -> list:
    """All responses of a stream (the SDK ends it after an error response)."""
    responses = list(stream)
    assert responses, "the stream yielded nothing"
    return responses


def assert_all_ok(responses: list) -> None:
    bad = [r for r in responses if r.status_code != HTTPStatus.OK]
    assert not bad, f"error responses in the stream: {bad}"


def message_of(response):
    return response.output.choices[0].message


def finish_of(response) -> str:
    return response.output.choices[0].finish_reason


def vl_text(response) -> str:
    """The text of a multimodal reply: content is a list of `{text}` items."""
    content = message_of(response).content
    assert isinstance(content, list), content
    return "".join(item["text"] for item in content)


def assert_usage_adds_up(usage) -> None:
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    # The SDK's usage objects are dicts; total_tokens is DashScope's, kept as sent.
    assert usage["total_tokens"] == usage.input_tokens + usage.output_tokens


def assert_prefix_chain(texts: list[str], full: str) -> None:
    """Each text is a prefix of the next; the last is the whole reply; it grew more than once."""
    for earlier, later in zip(texts, texts[1:]):
        assert later.startswith(earlier), (earlier, later)
    assert texts[-1] == full
    assert len(set(texts)) > 2, f"the text did not grow frame by frame: {texts}"


# ---------------------------------------------------------------------------------------------
# Text generation


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_message_format_reply_echoes_the_question(generate, model: str) -> None:
    response = generate(model=model, messages=user(), result_format="message")

    assert response.status_code == HTTPStatus.OK
    assert response.code == "" and response.message == ""
    message = message_of(response)
    assert message.role == "assistant"
    assert message.content == "echo: 你是谁?"
    assert finish_of(response) == "stop"
    assert response.output.text is None
    assert_usage_adds_up(response.usage)
    assert response.request_id
    assert response.headers.get("x-request-id")


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_prompt_gets_a_text_format_reply(generate, model: str) -> None:
    # Without result_format the text endpoint answers in `text` format.
    response = generate(model=model, prompt="hello there")

    assert response.status_code == HTTPStatus.OK
    assert response.output.text == "echo: hello there"
    assert response.output.finish_reason == "stop"
    assert response.output.choices is None
    assert_usage_adds_up(response.usage)
    assert response.request_id


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_incremental_stream_sends_deltas(generate, model: str) -> None:
    responses = collect(
        generate(
            model=model,
            messages=user(),
            result_format="message",
            stream=True,
            incremental_output=True,
        )
    )

    assert_all_ok(responses)
    deltas = [message_of(r).content for r in responses]
    assert "".join(deltas) == "echo: 你是谁?"
    assert sum(1 for d in deltas if d) > 2, f"not streamed in pieces: {deltas}"
    finishes = [finish_of(r) for r in responses]
    assert finishes[-1] == "stop"
    # DashScope's native stream says "null" (a string) until the last frame.
    assert all(f == "null" for f in finishes[:-1]), finishes
    assert_usage_adds_up(responses[-1].usage)
    assert responses[0].request_id
    assert all(r.request_id == responses[0].request_id for r in responses)


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("result_format", ["message", "text"])
def test_cumulative_stream_sends_the_text_so_far(
    generate, model: str, result_format: str
) -> None:
    # incremental_output left out: the gateway's default (false), the whole text in every frame.
    # (The SDK only rewrites an explicit False; see the next test.)
    responses = collect(
        generate(model=model, messages=user(), result_format=result_format, stream=True)
    )

    assert_all_ok(responses)
    if result_format == "text":
        texts = [r.output.text for r in responses]
        finishes = [r.output.finish_reason for r in responses]
    else:
        texts = [message_of(r).content for r in responses]
        finishes = [finish_of(r) for r in responses]
    assert_prefix_chain(texts, "echo: 你是谁?")
    assert finishes[-1] == "stop"
    assert all(f == "null" for f in finishes[:-1]), finishes
    assert_usage_adds_up(responses[-1].usage)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_explicit_non_incremental_stream_is_merged_by_the_sdk(generate, model: str) -> None:
    # dashscope 2.x turns an explicit incremental_output=False into True on the wire and adds the
    # deltas up itself, so this exercises the gateway's incremental stream plus the SDK's merge.
    responses = collect(
        generate(
            model=model,
            messages=user(),
            result_format="message",
            stream=True,
            incremental_output=False,
        )
    )

    assert_all_ok(responses)
    assert_prefix_chain([message_of(r).content for r in responses], "echo: 你是谁?")
    assert finish_of(responses[-1]) == "stop"


# ---------------------------------------------------------------------------------------------
# Images (multimodal endpoint)


@pytest.mark.parametrize("model", VL_MODELS)
def test_image_url_reaches_the_vision_model(converse, model: str) -> None:
    response = converse(model=model, messages=image_question(IMAGE_URL))

    assert response.status_code == HTTPStatus.OK
    assert message_of(response).role == "assistant"
    # The multimodal endpoint answers in `message` format, content as a list of {text} items.
    assert message_of(response).content == [
        {"text": f"echo: {IMAGE_QUESTION}\n[image_url {IMAGE_URL}]"}
    ]
    assert finish_of(response) == "stop"
    assert_usage_adds_up(response.usage)


@pytest.mark.parametrize("model", VL_MODELS)
def test_image_url_streams_back_in_pieces(converse, model: str) -> None:
    responses = collect(
        converse(
            model=model,
            messages=image_question(IMAGE_URL),
            stream=True,
            incremental_output=True,
        )
    )

    assert_all_ok(responses)
    pieces = [vl_text(r) for r in responses]
    assert "".join(pieces) == f"echo: {IMAGE_QUESTION}\n[image_url {IMAGE_URL}]"
    assert sum(1 for p in pieces if p) > 2
    assert finish_of(responses[-1]) == "stop"
    assert all(finish_of(r) == "null" for r in responses[:-1])


@pytest.fixture(scope="module")
def camera_data_url() -> str:
    return "data:image/jpeg;base64," + base64.b64encode(camera_jpeg()).decode()


@pytest.mark.parametrize("model", VL_MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_base64_camera_jpeg_arrives_intact(
    converse, camera_data_url: str, model: str, stream: bool
) -> None:
    # The SDK uploads local file paths to OSS, but a `data:` URL is neither a file nor http(s):
    # it goes into the request unchanged. The simulator describes what it received: the URL's
    # length and its sha256 prefix, so a single altered byte shows.
    digest = hashlib.sha256(camera_data_url.encode()).hexdigest()[:16]
    expected = (
        f"echo: {IMAGE_QUESTION}\n"
        f"[image_url data:image/jpeg chars={len(camera_data_url)} sha256={digest}]"
    )
    messages = image_question(camera_data_url)

    if stream:
        responses = collect(
            converse(model=model, messages=messages, stream=True, incremental_output=True)
        )
        assert_all_ok(responses)
        text = "".join(vl_text(r) for r in responses)
        usage = responses[-1].usage
    else:
        response = converse(model=model, messages=messages)
        assert response.status_code == HTTPStatus.OK
        text = vl_text(response)
        usage = response.usage

    assert text == expected
    assert_usage_adds_up(usage)
    # The SDK worked on a copy: the caller's message still holds the data URL.
    assert messages[0]["content"][0]["image"] == camera_data_url


# ---------------------------------------------------------------------------------------------
# Tools


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_two_round_tool_call(generate, model: str) -> None:
    question = "杭州天气怎么样"
    first = generate(
        model=model, messages=user(question), tools=[WEATHER_TOOL], result_format="message"
    )

    assert first.status_code == HTTPStatus.OK
    assert finish_of(first) == "tool_calls"
    assistant = message_of(first)
    [call] = assistant.tool_calls
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_current_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": question}

    # Round 2: the assistant's message as the SDK returned it, then the tool's answer.
    second = generate(
        model=model,
        messages=[
            *user(question),
            assistant,
            {"role": "tool", "content": "rain", "name": "get_current_weather"},
        ],
        tools=[WEATHER_TOOL],
        result_format="message",
    )

    assert second.status_code == HTTPStatus.OK
    assert message_of(second).content == "tool result: rain"
    assert finish_of(second) == "stop"


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_streamed_tool_call_assembles_from_deltas(generate, model: str) -> None:
    question = "杭州天气怎么样"
    responses = collect(
        generate(
            model=model,
            messages=user(question),
            tools=[WEATHER_TOOL],
            result_format="message",
            stream=True,
            incremental_output=True,
        )
    )

    assert_all_ok(responses)
    calls: dict[int, dict[str, str]] = {}
    fragments = 0
    for response in responses:
        for delta in message_of(response).get("tool_calls") or []:
            fragments += 1
            call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
            # Later fragments repeat the call with an empty id and no name (DashScope's framing).
            if delta.get("id"):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""

    assert fragments > 1, "the arguments should arrive in several fragments"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "get_current_weather"
    assert json.loads(calls[0]["arguments"]) == {"location": question}
    assert finish_of(responses[-1]) == "tool_calls"
    assert all(finish_of(r) == "null" for r in responses[:-1])


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_cumulative_stream_carries_the_tool_call_so_far(generate, model: str) -> None:
    question = "杭州天气怎么样"
    responses = collect(
        generate(
            model=model,
            messages=user(question),
            tools=[WEATHER_TOOL],
            result_format="message",
            stream=True,
        )
    )

    assert_all_ok(responses)
    calls = [message_of(r)["tool_calls"] for r in responses if message_of(r).get("tool_calls")]
    assert all(len(c) == 1 for c in calls)
    # Every frame repeats the whole call so far: id and name each time, arguments growing.
    assert len({c[0]["id"] for c in calls}) == 1 and calls[0][0]["id"].startswith("call_")
    assert all(c[0]["function"]["name"] == "get_current_weather" for c in calls)
    assert_prefix_chain(
        [c[0]["function"]["arguments"] for c in calls],
        json.dumps({"location": question}, ensure_ascii=False, separators=(",", ":")),
    )
    assert finish_of(responses[-1]) == "tool_calls"


# ---------------------------------------------------------------------------------------------
# Thinking


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_thinking_streams_reasoning_before_the_answer(generate, model: str) -> None:
    responses = collect(
        generate(
            model=model,
            messages=user("why"),
            result_format="message",
            enable_thinking=True,
            stream=True,
            incremental_output=True,
        )
    )

    assert_all_ok(responses)
    reasoning = [message_of(r).get("reasoning_content") or "" for r in responses]
    content = [message_of(r).content or "" for r in responses]
    assert "".join(reasoning) == "thinking about: why"
    assert "".join(content) == "echo: why"
    last_thought = max(i for i, r in enumerate(reasoning) if r)
    first_word = min(i for i, c in enumerate(content) if c)
    assert last_thought < first_word, "the reasoning should be over before the answer starts"
    usage = responses[-1].usage
    assert_usage_adds_up(usage)
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_thinking_whole_reply_has_reasoning_content(generate, model: str) -> None:
    response = generate(
        model=model, messages=user("why"), result_format="message", enable_thinking=True
    )

    assert response.status_code == HTTPStatus.OK
    assert message_of(response).reasoning_content == "thinking about: why"
    assert message_of(response).content == "echo: why"
    assert_usage_adds_up(response.usage)
    reasoning_tokens = response.usage["output_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning_tokens < response.usage.output_tokens


# ---------------------------------------------------------------------------------------------
# Errors


def assert_gateway_error(response, status: int, code: str) -> None:
    """An error the gateway raised itself: its request_id is the x-request-id header."""
    assert response.status_code == status, response
    assert response.code == code
    assert response.message
    assert response.output is None
    assert response.request_id
    assert response.request_id == response.headers.get("x-request-id")


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_wrong_key_is_401_invalid_api_key(generate, model: str, stream: bool) -> None:
    result = generate(model=model, messages=user(), api_key="sk-wrong", stream=stream)
    [response] = collect(result) if stream else [result]

    assert_gateway_error(response, 401, "InvalidApiKey")


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_out_of_range_temperature_is_400_naming_the_native_field(generate, model: str) -> None:
    response = generate(model=model, messages=user(), temperature=5)

    assert_gateway_error(response, 400, "InvalidParameter")
    assert "parameters.temperature" in response.message


def test_unknown_model_is_404_model_not_found(generate) -> None:
    # No upstream serves this name: the gateway answers itself.
    response = generate(model="qwen-nonexistent", messages=user())

    assert_gateway_error(response, 404, "ModelNotFound")
    assert "qwen-nonexistent" in response.message


def test_disallowed_model_is_403_access_denied(generate) -> None:
    # The limited key may use qwen-plus only.
    assert generate(model="qwen-plus", messages=user(), api_key=LIMITED_KEY).status_code == 200

    response = generate(model="qwen-max", messages=user(), api_key=LIMITED_KEY)

    assert_gateway_error(response, 403, "Model.AccessDenied")


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_upstream_429_is_throttling_rate_quota(generate, model: str, stream: bool) -> None:
    # From the dashscope upstream: the simulator's own native refusal, forwarded. From the
    # openai upstream: its `limit_requests` error, mapped to the native code.
    result = generate(
        model=model,
        messages=user(),
        stream=stream,
        sim={"fault": "429", "retry_after": "7"},
    )
    [response] = collect(result) if stream else [result]

    assert response.status_code == 429
    assert response.code == "Throttling.RateQuota"
    assert response.message == "Requests rate limit exceeded, please try again later."
    assert response.output is None
    assert response.request_id
    assert response.headers.get("retry-after") == "7"


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 502, "UpstreamError"), ("503", 503, "UpstreamOverloaded")],
)
def test_upstream_5xx_becomes_the_gateways_native_error(
    generate, model: str, fault: str, status: int, code: str
) -> None:
    response = generate(model=model, messages=user(), sim={"fault": fault})

    assert_gateway_error(response, status, code)


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "cumulative"])
def test_mid_stream_inspection_failure_ends_with_an_error_response(
    generate, model: str, incremental: bool
) -> None:
    kwargs = {"incremental_output": True} if incremental else {}
    responses = collect(
        generate(
            model=model,
            messages=user(),
            result_format="message",
            stream=True,
            sim={"fault": "inspection"},
            **kwargs,
        )
    )

    *received, failure = responses
    # The simulator refuses after two events: some of the answer arrived first.
    assert len(received) == 2
    assert_all_ok(received)
    texts = [message_of(r).content for r in received]
    partial = "".join(texts) if incremental else texts[-1]
    assert partial and "echo: 你是谁?".startswith(partial) and partial != "echo: 你是谁?"
    # Then one error response, and nothing after it.
    assert failure.status_code == 400
    assert failure.code == "DataInspectionFailed"
    assert failure.message == "Output data may contain inappropriate content."
    assert failure.output is None
    assert failure.request_id == received[0].request_id


def test_gateway_timeout_mid_stream_ends_with_an_error_response(generate) -> None:
    # The stall upstream (dashscope) allows 500 ms of silence between events; the simulator
    # stalls forever after two. The gateway's own error frame names its status for the SDK.
    responses = collect(
        generate(
            model="qwen-stall",
            messages=user(),
            result_format="message",
            stream=True,
            incremental_output=True,
            sim={"fault": "stall"},
        )
    )

    *received, failure = responses
    assert len(received) == 2
    assert_all_ok(received)
    assert failure.status_code == 504
    assert failure.code == "UpstreamTimeout"
    assert failure.output is None


# ---------------------------------------------------------------------------------------------
# Several choices


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_n_choices_all_come_back_with_their_index(generate, model: str) -> None:
    response = generate(model=model, messages=user(), result_format="message", n=2)

    assert response.status_code == HTTPStatus.OK
    choices = response.output.choices
    assert [c.message.content for c in choices] == ["echo: 你是谁?"] * 2
    assert [c["index"] for c in choices] == [0, 1]
