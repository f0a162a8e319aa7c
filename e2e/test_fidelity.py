"""Fidelity through both official SDKs: the models list of a `"*"` upstream, Qwen-Omni audio
output, and logprobs, each through `openai` and `dashscope` against dashgate and its simulator.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from http import HTTPStatus

import dashscope
import openai
import pytest
from dashscope import Generation, Models

from conftest import CLIENT_TIMEOUT_S, GLASS_KEY, LIMITED_KEY, UPSTREAM_KEY, Service

OMNI = {"modalities": ["text", "audio"], "audio": {"voice": "Chelsie", "format": "wav"}}


@pytest.fixture(scope="module")
def wildcard_gateway(tmp_path_factory: pytest.TempPathFactory, simulator: Service) -> Iterator[Service]:
    """A gateway whose only upstream serves `"*"`: what it lists comes from the upstream."""
    work = tmp_path_factory.mktemp("wildcard")
    config = work / "dashgate.toml"
    config.write_text(
        f"""
[[keys]]
name = "glass3"
key = "{GLASS_KEY}"

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
models = ["qwen-plus"]

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "{simulator.url}"
api_key = "{UPSTREAM_KEY}"
models = ["*"]
"""
    )
    service = Service(
        "dashgate",
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0"],
        work / "gateway.log",
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def wild(wildcard_gateway: Service) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=wildcard_gateway.url + "/compatible-mode/v1",
        api_key=GLASS_KEY,
        max_retries=0,
        timeout=CLIENT_TIMEOUT_S,
    )
    yield client
    client.close()


def test_openai_models_list_shows_what_a_wildcard_upstream_serves(wild: openai.OpenAI) -> None:
    ids = [m.id for m in wild.models.list()]
    assert {"qwen-plus", "qwen-turbo", "qwen-omni-turbo"} <= set(ids), ids
    assert wild.models.retrieve("qwen-omni-turbo").id == "qwen-omni-turbo"
    with pytest.raises(openai.NotFoundError):
        wild.models.retrieve("no-such-model")
    limited = wild.with_options(api_key=LIMITED_KEY)
    assert [m.id for m in limited.models.list()] == ["qwen-plus"]


def test_dashscope_models_list_shows_what_a_wildcard_upstream_serves(
    wildcard_gateway: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"{wildcard_gateway.url}/api/v1"
    listed = Models.list(page_size=100, api_key=GLASS_KEY, base_address=base)
    assert listed.status_code == HTTPStatus.OK, listed
    names = [m["model"] for m in listed.output["models"]]
    assert {"qwen-plus", "qwen-turbo", "qwen-omni-turbo"} <= set(names), names
    monkeypatch.setattr(dashscope, "base_http_api_url", base)
    one = Models.get("qwen-omni-turbo", api_key=GLASS_KEY)
    assert one.status_code == HTTPStatus.OK, one
    assert one.output["model"] == "qwen-omni-turbo"


@pytest.mark.parametrize("model", ["qwen-plus", "qwen-turbo"], ids=["dashscope", "openai"])
def test_openai_sdk_streams_omni_audio(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
        **OMNI,
    )
    audio, transcript, usage = b"", "", None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        piece = chunk.choices[0].delta.audio
        if piece is None:
            continue
        if getattr(piece, "data", None):
            audio += base64.b64decode(piece.data)
        transcript += getattr(piece, "transcript", None) or ""
    assert transcript == "echo: hi"
    assert len(audio) > 0
    assert usage is not None and usage.completion_tokens_details.audio_tokens > 0


@pytest.mark.parametrize("model", ["qwen-plus", "qwen-turbo"], ids=["dashscope", "openai"])
def test_dashscope_sdk_streams_omni_audio(native_base: str, model: str) -> None:
    responses = Generation.call(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        result_format="message",
        stream=True,
        incremental_output=True,
        api_key=GLASS_KEY,
        base_address=native_base,
        request_timeout=CLIENT_TIMEOUT_S,
        **OMNI,
    )
    audio, last = b"", None
    for response in responses:
        assert response.status_code == HTTPStatus.OK, response
        message = response.output["choices"][0]["message"]
        data = (message.get("audio") or {}).get("data")
        if data:
            audio += base64.b64decode(data)
        last = response
    assert len(audio) > 0
    assert last is not None and last.usage["output_tokens_details"]["audio_tokens"] > 0


@pytest.mark.parametrize("model", ["qwen-plus", "qwen-turbo"], ids=["dashscope", "openai"])
def test_openai_sdk_reads_logprobs(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=2,
    )
    content = completion.choices[0].logprobs.content
    assert "".join(t.token for t in content) == "echo: hi"
    assert all(len(t.top_logprobs) == 2 for t in content)


@pytest.mark.parametrize("model", ["qwen-plus", "qwen-turbo"], ids=["dashscope", "openai"])
def test_dashscope_sdk_reads_logprobs(native_base: str, model: str) -> None:
    response = Generation.call(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        result_format="message",
        logprobs=True,
        top_logprobs=2,
        api_key=GLASS_KEY,
        base_address=native_base,
        request_timeout=CLIENT_TIMEOUT_S,
    )
    assert response.status_code == HTTPStatus.OK, response
    content = response.output["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == "echo: hi"
