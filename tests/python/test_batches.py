"""The Files and Batch APIs through the OpenAI SDK, against the real binary and llmock.

files.create / batches.create / batches.retrieve / files.content, a batch that fails
validation, cancel, listing, and errors surfacing as the SDK's exception types.
"""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from conftest import CHAT_MODEL, EMBED_MODEL, endpoint, llmock_text

BATCH_WAIT_SECS = 30.0


@pytest.fixture(scope="module")
def batch_gateway(gateways, basic_llmock):
    return gateways.start("batches", [
        endpoint(1, "local-llmock-chat", CHAT_MODEL, basic_llmock.url),
        endpoint(2, "local-llmock-embed", EMBED_MODEL, basic_llmock.url),
    ], extra_env={
        "GATEWAY__BATCHES__POLL_INTERVAL_MS": "50",
        "GATEWAY__BATCHES__MAX_FILE_BYTES": "100000",
    })


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def chat_line(custom_id: str) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": custom_id}],
                     "max_tokens": 8}}


def wait_done(client: openai.OpenAI, batch_id: str):
    deadline = time.monotonic() + BATCH_WAIT_SECS
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.1)


@pytest.mark.parametrize("prefix", ["/v1", "/resource_server/v1"])
def test_chat_batch_round_trip(batch_gateway, fresh_basic_llmock, prefix):
    client = batch_gateway.client(prefix)
    n = 12
    uploaded = client.files.create(
        file=("requests.jsonl", io.BytesIO(jsonl([chat_line(f"q{i}") for i in range(n)]))),
        purpose="batch")
    assert uploaded.object == "file"
    assert uploaded.id.startswith("file-")
    assert uploaded.purpose == "batch"
    assert uploaded.filename == "requests.jsonl"
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"run": prefix})
    assert batch.object == "batch"
    assert batch.status == "validating"
    assert batch.metadata == {"run": prefix}
    done = wait_done(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.total == n
    assert done.request_counts.completed == n
    assert done.request_counts.failed == 0
    assert done.error_file_id is None

    text = client.files.content(done.output_file_id).text
    lines = [json.loads(line) for line in text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"q{i}" for i in range(n))
    for line in lines:
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == llmock_text(CHAT_MODEL)
        assert line["error"] is None
    served = [r for r in fresh_basic_llmock.requests() if r["path"] == "/v1/chat/completions"]
    assert len(served) == n

    listed = client.batches.list(limit=100)
    assert batch.id in [b.id for b in listed.data]


def test_embeddings_batch(batch_gateway):
    client = batch_gateway.client()
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": EMBED_MODEL, "input": f"text {i}"}} for i in range(3)]
    uploaded = client.files.create(file=("emb.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings",
                                  completion_window="24h")
    done = wait_done(client, batch.id)
    assert done.status == "completed"
    out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert {line["custom_id"] for line in out} == {"e0", "e1", "e2"}
    assert all(line["response"]["body"]["object"] == "list" for line in out)


def test_bad_lines_fail_the_batch(batch_gateway):
    client = batch_gateway.client()
    good = chat_line("ok")
    wrong_url = dict(chat_line("w"), url="/v1/embeddings")
    uploaded = client.files.create(
        file=("bad.jsonl", io.BytesIO(jsonl([good, wrong_url]) + b"{oops\n")), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = wait_done(client, batch.id)
    assert done.status == "failed"
    assert [e.line for e in done.errors.data] == [2, 3]
    assert "/v1/embeddings" in done.errors.data[0].message
    errors = client.files.content(done.error_file_id).text.splitlines()
    assert len(errors) == 2


def test_errors_are_sdk_exceptions(batch_gateway):
    client = batch_gateway.client()
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_does_not_exist")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-doesnotexist")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert err.value.body["param"] == "input_file_id"
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 100001)), purpose="batch")
    assert err.value.status_code == 413


def test_files_delete(batch_gateway):
    client = batch_gateway.client()
    uploaded = client.files.create(file=("d.jsonl", io.BytesIO(jsonl([chat_line("d")]))),
                                   purpose="batch")
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
