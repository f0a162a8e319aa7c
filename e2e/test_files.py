"""Long documents as the seeds show them (000_*, 003_*): the openai SDK uploads a file with
purpose `file-extract`, names it as `fileid://` in a system message, and qwen-long answers
from it; the file is listed, read back and deleted through the SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from dashscope import Generation

from conftest import CLIENT_TIMEOUT_S, GLASS_KEY


def test_the_openai_sdk_uploads_a_document_and_asks_about_it(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    doc = tmp_path / "百炼系列手机产品介绍.txt"
    doc.write_text("百炼 X1 phone: 12 GB memory, two-day battery.", encoding="utf-8")
    file_object = client.files.create(file=doc, purpose="file-extract")
    assert file_object.id.startswith("file-fe-")
    assert file_object.filename == doc.name
    assert file_object.bytes == len(doc.read_bytes())

    completion = client.chat.completions.create(
        model="qwen-long",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "system", "content": f"fileid://{file_object.id}"},
            {"role": "user", "content": "这篇文章讲了什么?"},
        ],
    )
    said = completion.choices[0].message.content or ""
    assert f"{doc.name}: 百炼 X1 phone: 12 GB memory" in said, said

    # Streamed, as the seed's curl example asks.
    stream = client.chat.completions.create(
        model="qwen-long",
        messages=[
            {"role": "system", "content": f"fileid://{file_object.id}"},
            {"role": "user", "content": "again"},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "two-day battery" in text, text
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0

    assert file_object.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(file_object.id).filename == doc.name
    assert client.files.content(file_object.id).read() == doc.read_bytes()
    deleted = client.files.delete(file_object.id)
    assert deleted.deleted and deleted.id == file_object.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_object.id)


def test_a_native_client_names_an_uploaded_file(
    client: openai.OpenAI, native_base: str, tmp_path: Path
) -> None:
    doc = tmp_path / "spec.md"
    doc.write_text("# Glasses\nCamera: 12 MP", encoding="utf-8")
    file_id = client.files.create(file=doc, purpose="file-extract").id
    response = Generation.call(
        model="qwen-long",
        messages=[
            {"role": "system", "content": f"fileid://{file_id}"},
            {"role": "user", "content": "camera?"},
        ],
        result_format="message",
        api_key=GLASS_KEY,
        base_address=native_base,
        request_timeout=CLIENT_TIMEOUT_S,
    )
    assert response.status_code == 200, response
    assert "spec.md: # Glasses Camera: 12 MP" in response.output.choices[0].message.content


def test_a_file_that_is_not_there_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="qwen-long",
            messages=[
                {"role": "system", "content": "fileid://file-fe-nothere"},
                {"role": "user", "content": "?"},
            ],
        )
    assert caught.value.param == "messages[0].content"
