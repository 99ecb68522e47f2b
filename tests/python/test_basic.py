"""The happy paths, through the OpenAI SDK, against one healthy llmock."""

from __future__ import annotations

import uuid

import openai
import pytest

from conftest import CHAT_MODEL, EMBED_MODEL, llmock_text

MESSAGES = [{"role": "user", "content": "Say hello."}]
LLMOCK_TEXT = llmock_text(CHAT_MODEL)


@pytest.mark.parametrize("prefix", ["/v1", "/resource_server/v1"])
def test_chat_completion(basic_gateway, fresh_basic_llmock, prefix):
    client = basic_gateway.client(prefix)
    completion = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.model == CHAT_MODEL
    assert len(completion.choices) == 1
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == LLMOCK_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0

    served = fresh_basic_llmock.requests()
    assert [(r["method"], r["path"], r["status"]) for r in served] == [
        ("POST", "/v1/chat/completions", 200)
    ]


@pytest.mark.parametrize("prefix", ["/v1", "/resource_server/v1"])
def test_chat_completion_stream(basic_gateway, fresh_basic_llmock, prefix):
    client = basic_gateway.client(prefix)
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == LLMOCK_TEXT
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    # llmock sends the usage in a last chunk with no choices.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    served = fresh_basic_llmock.requests()
    assert len(served) == 1
    assert served[0]["stream"] is True and served[0]["completed"] is True


def test_embeddings(client, fresh_basic_llmock):
    result = client.embeddings.create(model=EMBED_MODEL, input=["first text", "second text"])

    assert result.object == "list"
    assert result.model == EMBED_MODEL
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 1536 for d in result.data)
    assert [r["path"] for r in fresh_basic_llmock.requests()] == ["/v1/embeddings"]


def test_responses_route(client, fresh_basic_llmock):
    response = client.responses.create(model=CHAT_MODEL, input="Say hello.")

    assert response.object == "response"
    assert response.output_text
    assert [r["path"] for r in fresh_basic_llmock.requests()] == ["/v1/responses"]


def test_models_list_has_status_and_targets(client):
    models = {m.id: m for m in client.models.list()}

    assert CHAT_MODEL in models and EMBED_MODEL in models
    chat = models[CHAT_MODEL]
    assert chat.object == "model"
    extra = chat.model_extra or {}
    assert isinstance(extra.get("status"), str) and extra["status"], extra
    assert isinstance(extra.get("targets"), list), extra
    assert len(extra["targets"]) == 1, extra


def test_completions_backend_404_passes_through(client, fresh_basic_llmock):
    """llmock has no /v1/completions: its 404 comes back as a backend 4xx."""
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model=CHAT_MODEL, prompt="Say hello.")

    err = caught.value
    assert err.status_code == 404
    # llmock's own error, not the gateway's model_not_found.
    assert err.code == "not_found", err.body
    assert isinstance(err.body, dict) and err.body.get("message") == "Not Found"
    # It reached llmock exactly once: a backend 4xx is no reason to fail over.
    served = fresh_basic_llmock.requests()
    assert [(r["path"], r["status"]) for r in served] == [("/v1/completions", 404)]


def test_request_id_is_echoed(client):
    request_id = f"igw-test-{uuid.uuid4()}"
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, extra_headers={"x-request-id": request_id},
    )
    assert raw.headers.get("x-request-id") == request_id
    assert raw.parse().choices[0].message.content == LLMOCK_TEXT


def test_request_id_is_generated(basic_gateway):
    with basic_gateway.http() as http:
        first = http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES})
        second = http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES})
    assert first.status_code == 200 and second.status_code == 200
    ids = [first.headers.get("x-request-id"), second.headers.get("x-request-id")]
    assert all(ids), ids
    assert ids[0] != ids[1]


def test_request_id_on_gateway_error(basic_gateway):
    with basic_gateway.http() as http:
        response = http.post("/v1/chat/completions", headers={"x-request-id": "err-id-1"},
                             json={"model": "no-such-model", "messages": MESSAGES})
    assert response.status_code == 404
    assert response.headers.get("x-request-id") == "err-id-1"


def test_health(basic_gateway):
    with basic_gateway.http() as http:
        response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def _count_healthy(value, flag):
    if isinstance(value, dict):
        return (1 if value.get("healthy") is flag else 0) + sum(_count_healthy(v, flag) for v in value.values())
    if isinstance(value, list):
        return sum(_count_healthy(v, flag) for v in value)
    return 0


def test_health_detailed_lists_targets(basic_gateway):
    with basic_gateway.http() as http:
        response = http.get("/health/detailed")
    assert response.status_code == 200
    body = response.json()
    # Two targets (one per endpoint), both healthy behind a healthy llmock.
    assert _count_healthy(body, True) >= 2, body
    assert _count_healthy(body, False) == 0, body


@pytest.mark.parametrize("path", ["/list-endpoints", "/resource_server/list-endpoints"])
def test_list_endpoints_first_shape(basic_gateway, path):
    with basic_gateway.http() as http:
        response = http.get(path)
    assert response.status_code == 200
    body = response.json()
    local = body["clusters"]["local"]
    assert "base_url" in local
    framework = local["frameworks"]["llmock"]
    assert set(framework["models"]) >= {CHAT_MODEL, EMBED_MODEL}
    assert isinstance(framework["endpoints"], list) and framework["endpoints"]
