"""Request bytes go upstream untouched; response bytes come back unchanged."""

from __future__ import annotations

import json
import re

import httpx

from conftest import CHAT_MODEL

MESSAGES = [{"role": "user", "content": "Say hello."}]
# Fields llmock generates afresh for every response.
_VOLATILE = [
    (re.compile(rb'"id":"chatcmpl-[0-9a-f]+"'), b'"id":"<id>"'),
    (re.compile(rb'"created":\d+'), b'"created":0'),
]
REPLY_TEXT = 'Grüße, 世界! "quoted" \\ back\\slash </script> \u2028 done'


def mask(raw: bytes) -> bytes:
    for pattern, replacement in _VOLATILE:
        raw = pattern.sub(replacement, raw)
    return raw


def test_unknown_field_reaches_backend_via_sdk(client, fresh_basic_llmock):
    client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES,
        extra_body={"my_custom_field": 1, "nested_custom": {"b": [1, 2, {"c": None}], "a": "x"}},
    )
    served = fresh_basic_llmock.requests()
    assert len(served) == 1
    body = served[0]["body"]
    assert body["my_custom_field"] == 1
    assert body["nested_custom"] == {"b": [1, 2, {"c": None}], "a": "x"}
    assert body["model"] == CHAT_MODEL and body["messages"] == MESSAGES


def test_request_body_keys_values_and_order_kept(basic_gateway, fresh_basic_llmock):
    sent = {
        "zeta_unknown": {"y": 2, "x": 1},
        "model": CHAT_MODEL,
        "messages": [{"content": "héllo ✓", "role": "user"}],
        "temperature": 0.25,
        "max_tokens": 7,
        "alpha_unknown": [True, None, 1.5e-7],
    }
    raw = json.dumps(sent, ensure_ascii=False, indent=1).encode()
    with basic_gateway.http() as http:
        response = http.post("/v1/chat/completions", content=raw,
                             headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    body = fresh_basic_llmock.requests()[0]["body"]
    assert body == sent
    assert list(body) == list(sent)
    assert list(body["zeta_unknown"]) == ["y", "x"]
    assert list(body["messages"][0]) == ["content", "role"]


def _post_raw(url: str, payload: dict) -> tuple[int, str, bytes]:
    """Status, content type and body bytes (after any content-encoding is undone)."""
    with httpx.Client(timeout=20.0) as http:
        with http.stream("POST", url, json=payload) as response:
            body = b"".join(response.iter_bytes())
            return response.status_code, response.headers.get("content-type", ""), body


def test_response_bytes_unchanged(basic_gateway, fresh_basic_llmock):
    payload = {"model": CHAT_MODEL, "messages": MESSAGES}
    reply = {"type": "reply", "text": REPLY_TEXT, "times": 1}

    fresh_basic_llmock.script(reply)
    direct = _post_raw(f"{fresh_basic_llmock.url}/v1/chat/completions", payload)
    fresh_basic_llmock.script(reply)
    via_gateway = _post_raw(f"{basic_gateway.url}/v1/chat/completions", payload)

    assert direct[0] == via_gateway[0] == 200
    assert via_gateway[1] == direct[1]
    # llmock writes UTF-8 unescaped and compact; a re-serialising gateway would
    # change key order, escaping or spacing.
    assert "Grüße".encode() in direct[2]
    assert mask(via_gateway[2]) == mask(direct[2]), (via_gateway[2], direct[2])


def test_stream_bytes_unchanged(basic_gateway, fresh_basic_llmock):
    payload = {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True,
               "stream_options": {"include_usage": True}}
    reply = {"type": "reply", "text": REPLY_TEXT, "times": 1}

    fresh_basic_llmock.script(reply)
    direct = _post_raw(f"{fresh_basic_llmock.url}/v1/chat/completions", payload)
    fresh_basic_llmock.script(reply)
    via_gateway = _post_raw(f"{basic_gateway.url}/v1/chat/completions", payload)

    assert direct[0] == via_gateway[0] == 200
    assert via_gateway[1].startswith("text/event-stream"), via_gateway[1]
    assert direct[2].rstrip().endswith(b"data: [DONE]")
    assert mask(via_gateway[2]) == mask(direct[2]), (via_gateway[2], direct[2])


def test_backend_4xx_body_unchanged(basic_gateway, fresh_basic_llmock):
    """llmock's 422 for a request it cannot validate comes back as llmock wrote it."""
    payload = {"model": CHAT_MODEL, "messages": "not-a-list"}
    direct = _post_raw(f"{fresh_basic_llmock.url}/v1/chat/completions", payload)
    via_gateway = _post_raw(f"{basic_gateway.url}/v1/chat/completions", payload)
    assert direct[0] == via_gateway[0] == 422
    assert via_gateway[2] == direct[2]
