"""Camera frames through the gateway as the glasses send them: a full-resolution frame is
downscaled to the pixel budget before it goes upstream, and the response says what was saved."""

from __future__ import annotations

import base64
import hashlib
import re

import dashscope
import openai

from conftest import camera_jpeg


def frame_url(width: int, height: int) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(camera_jpeg(width, height)).decode()


def reported(content: str) -> tuple[int, str]:
    """The simulator's line for the image it received: (data URL length, short sha256)."""
    match = re.search(r"\[image_url data:image/jpeg chars=(\d+) sha256=([0-9a-f]{16})\]", content)
    assert match, content
    return int(match.group(1)), match.group(2)


def test_openai_sdk_streams_a_12_megapixel_frame_downscaled(client: openai.OpenAI) -> None:
    url = frame_url(4032, 3024)
    raw = client.chat.completions.with_raw_response.create(
        model="qwen-vl-plus",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "这是什么"},
        ]}],
    )
    headers = raw.headers
    content = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    sent_chars, sent_hash = reported(content)
    # The upstream got a smaller image than the one sent, and the headers say by how much.
    assert sent_chars < len(url)
    assert sent_hash != hashlib.sha256(url.encode()).hexdigest()[:16]
    assert int(headers["x-dashgate-image-count"]) == 1
    original = int(headers["x-dashgate-image-original-bytes"])
    sent = int(headers["x-dashgate-image-sent-bytes"])
    assert original == len(base64.b64decode(url.split(",", 1)[1]))
    assert sent < original
    assert int(headers["x-dashgate-image-tokens-after"]) < int(headers["x-dashgate-image-tokens-before"])


def test_a_frame_within_budget_arrives_byte_identical(client: openai.OpenAI) -> None:
    url = frame_url(1152, 864)
    reply = client.chat.completions.create(
        model="qwen-vl-plus",
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "what"},
        ]}],
    )
    assert reported(reply.choices[0].message.content) == (len(url), hashlib.sha256(url.encode()).hexdigest()[:16])


def test_dashscope_sdk_native_image_item_is_downscaled(native_base: str) -> None:
    url = frame_url(4032, 3024)
    response = dashscope.MultiModalConversation.call(
        api_key="sk-glass3-test",
        base_address=native_base,
        model="qwen-vl-plus",
        messages=[{"role": "user", "content": [{"image": url}, {"text": "这是什么"}]}],
    )
    assert response.status_code == 200, response
    text = "".join(item.get("text", "") for item in response.output.choices[0].message.content)
    sent_chars, _ = reported(text)
    assert sent_chars < len(url)
