"""The exact response cache through the official OpenAI SDK: the second identical request (a
seed set, asking with `x-dashgate-cache: on`) is answered from the cache, as JSON and as a stream.
"""

from __future__ import annotations

import uuid

import openai

ASK = {"x-dashgate-cache": "on"}


def question() -> list[dict[str, str]]:
    # The session's gateway is shared by every test: a question of this test only.
    return [{"role": "user", "content": f"what is this {uuid.uuid4()}"}]


def test_a_repeated_request_is_a_hit(client: openai.OpenAI) -> None:
    messages = question()
    replies = []
    for expected in ("miss", "hit"):
        raw = client.chat.completions.with_raw_response.create(
            model="qwen-max", messages=messages, seed=7, extra_headers=ASK
        )
        assert raw.headers.get("x-dashgate-cache") == expected
        replies.append(raw.parse())
    first, second = replies
    assert second.choices[0].message.content == first.choices[0].message.content
    assert first.choices[0].message.content.startswith("echo: what is this")
    assert second.usage == first.usage
    assert second.id != first.id


def test_a_stream_is_replayed_with_the_same_text(client: openai.OpenAI) -> None:
    messages = question()
    texts = []
    for expected in ("miss", "hit"):
        with client.chat.completions.with_streaming_response.create(
            model="qwen-max", messages=messages, seed=7, stream=True, extra_headers=ASK
        ) as response:
            assert response.headers.get("x-dashgate-cache") == expected
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in response.parse()
                if chunk.choices
            )
        texts.append(text)
    assert texts[0] == texts[1]
    assert texts[0].startswith("echo: what is this")


def test_without_a_seed_the_cache_is_not_consulted(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="qwen-max", messages=question(), extra_headers=ASK
    )
    assert raw.headers.get("x-dashgate-cache") is None
