"""Resumable streams through the official OpenAI SDK.

The device reads a few chunks of a stream, the link drops (the SDK's response is closed), and
the device sends the same request again with `Last-Event-ID` set to the last event id it read:
the gateway answers with the rest of the same upstream call, which the SDK reads as any stream.
The simulator's own counter says the upstream was called once.
"""

from __future__ import annotations

import json

import httpx2
import openai

from conftest import CLIENT_TIMEOUT_S, GLASS_KEY

TEXT = "a device on a flaky link asks for a long answer"
KNOBS = {"sim": {"chunks": 30, "chunk_delay_ms": 20}}


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=GLASS_KEY,
        base_url=f"{gateway.url}/compatible-mode/v1",
        timeout=CLIENT_TIMEOUT_S,
        max_retries=0,
    )


def upstream_requests(simulator) -> int:
    stats = httpx2.get(f"{simulator.url}/sim/stats", timeout=CLIENT_TIMEOUT_S).json()
    return stats["requests"]


def ask(sdk: openai.OpenAI, **extra):
    return dict(
        model="qwen-plus",
        messages=[{"role": "user", "content": TEXT}],
        stream=True,
        extra_body=KNOBS,
        **extra,
    )


def test_a_stream_cut_after_a_few_chunks_resumes_with_the_rest(gateway, simulator) -> None:
    sdk = client(gateway)
    before = upstream_requests(simulator)
    # Read three events as the SDK's raw stream gives them, then hang up.
    first_text, last_id, read = "", None, 0
    with sdk.chat.completions.with_streaming_response.create(**ask(sdk)) as response:
        for line in response.iter_lines():
            if line.startswith("id:"):
                last_id = line[len("id:") :].strip()
            elif line.startswith("data: "):
                chunk = json.loads(line[len("data: ") :])
                if chunk["choices"]:
                    first_text += chunk["choices"][0]["delta"].get("content") or ""
                read += 1
                if read == 3:
                    break
    assert last_id is not None and last_id.endswith(".3"), last_id

    # The same request, resumed: the SDK reads the rest like any stream.
    rest = sdk.chat.completions.create(
        **ask(sdk, extra_headers={"Last-Event-ID": last_id})
    )
    rest_text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert first_text + rest_text == f"echo: {TEXT}"
    assert upstream_requests(simulator) - before == 1


def test_a_resume_with_an_unknown_id_is_a_clear_409(gateway) -> None:
    sdk = client(gateway)
    try:
        sdk.chat.completions.create(
            **ask(sdk, extra_headers={"Last-Event-ID": "dg.00000000000000ff.4"})
        )
    except openai.APIStatusError as error:
        assert error.status_code == 409
        assert error.body["code"] == "stream_not_resumable"
        assert error.body["param"] == "Last-Event-ID"
    else:
        raise AssertionError("an unknown stream was resumed")
