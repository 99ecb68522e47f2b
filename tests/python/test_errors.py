"""Errors the gateway answers itself, in the OpenAI envelope."""

from __future__ import annotations

import openai
import pytest

from conftest import CHAT_MODEL

MESSAGES = [{"role": "user", "content": "Say hello."}]
PREFIXES = ["", "/resource_server"]


def assert_envelope(response, status: int) -> dict:
    """`{"error": {"message", "type", "param", "code"}}` with the given status."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert error["code"] is None or isinstance(error["code"], str), body
    assert error["param"] is None or isinstance(error["param"], str), body
    return error


def test_unknown_model_is_not_found(client, fresh_basic_llmock):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found", caught.value.body
    assert fresh_basic_llmock.requests() == []


def test_unknown_model_stream_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert caught.value.code == "model_not_found", caught.value.body


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_model_envelope(basic_gateway, prefix):
    with basic_gateway.http() as http:
        response = http.post(f"{prefix}/v1/embeddings", json={"model": "no-such-model", "input": "x"})
    error = assert_envelope(response, 404)
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_malformed_json_is_400(basic_gateway, fresh_basic_llmock, prefix):
    with basic_gateway.http() as http:
        response = http.post(f"{prefix}/v1/chat/completions", content=b'{"model": "gpt-4o-mini", "messages": [',
                             headers={"content-type": "application/json"})
    error = assert_envelope(response, 400)
    assert error["type"] == "invalid_request_error", error
    assert fresh_basic_llmock.requests() == []


def test_non_object_json_is_400(basic_gateway):
    with basic_gateway.http() as http:
        response = http.post("/v1/chat/completions", json=["not", "an", "object"])
    assert_envelope(response, 400)


def test_missing_model_is_bad_request(client, fresh_basic_llmock):
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body={"messages": MESSAGES}, cast_to=object)
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict) and caught.value.body.get("message"), caught.value.body
    assert fresh_basic_llmock.requests() == []


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/embeddings", "/v1/completions"])
def test_get_on_post_route_is_405(basic_gateway, prefix, route):
    with basic_gateway.http() as http:
        response = http.get(f"{prefix}{route}")
    assert_envelope(response, 405)


@pytest.mark.parametrize("path", ["/v1/no-such-route", "/resource_server/v1/no-such-route", "/nothing"])
def test_unknown_route_is_404(basic_gateway, path):
    with basic_gateway.http() as http:
        response = http.post(path, json={"model": CHAT_MODEL})
    assert_envelope(response, 404)
