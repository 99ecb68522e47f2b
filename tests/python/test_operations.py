"""Issue 7 through real clients: completions (against the `mock-upstream` binary, since
llmock has no /v1/completions), the SDK's exception types on admin routes, reload through
the admin API, the response cache, gzip, /metrics, /openapi.json and /docs."""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from pathlib import Path

import httpx
import openai
import pytest

from conftest import (CHAT_MODEL, EMBED_MODEL, LOOPBACK, REPO_ROOT, ManagedProcess, endpoint,
                      free_port, wait_http_ok)

ADMIN_KEY = "python-suite-admin-key-0123456789"
COMPLETIONS_MODEL = "mock-completions"
MESSAGES = [{"role": "user", "content": "Say hello."}]


def mock_upstream_bin() -> Path:
    path = Path(os.environ.get("MOCK_UPSTREAM_BIN", str(REPO_ROOT / "target" / "debug" / "mock-upstream")))
    if not path.is_file():
        pytest.fail(f"mock-upstream not built at {path} (cargo build -p mock-upstream)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def mock_upstream(log_dir):
    port = free_port()
    proc = ManagedProcess("mock-upstream", [str(mock_upstream_bin()), "--port", str(port), "--chunks", "4"],
                          dict(os.environ), log_dir / f"mock-upstream-{port}.log")
    proc.start()
    try:
        wait_http_ok(f"http://{LOOPBACK}:{port}/health", proc, 20.0)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ops_gateway(gateways, llmocks, mock_upstream):
    chat = llmocks.start("ops")
    gw = gateways.start(
        "ops",
        [endpoint(1, "ops-chat", CHAT_MODEL, chat.url)],
        extra_env={"GATEWAY_ADMIN_KEY": ADMIN_KEY},
    )
    gw.chat_url = chat.url
    return gw


def admin_client(gw, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key or "not-an-admin-key", max_retries=0, timeout=20.0)


def test_admin_errors_are_the_sdks_exception_types(ops_gateway):
    with pytest.raises(openai.AuthenticationError) as caught:
        admin_client(ops_gateway, None).post("/admin/reload", cast_to=object)
    assert caught.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        admin_client(ops_gateway, None).get("/admin/backends", cast_to=object)


def test_admin_without_a_configured_key_is_permission_denied(basic_gateway):
    with pytest.raises(openai.PermissionDeniedError) as caught:
        admin_client(basic_gateway, ADMIN_KEY).post("/admin/reload", cast_to=object)
    assert caught.value.status_code == 403


def test_reload_adds_a_completions_backend_then_completions_work(ops_gateway, mock_upstream):
    client = ops_gateway.client()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=COMPLETIONS_MODEL, prompt="Once upon", max_tokens=4)

    (ops_gateway.fixtures_dir / "endpoints.json").write_text(json.dumps([
        endpoint(1, "ops-chat", CHAT_MODEL, ops_gateway.chat_url),
        endpoint(2, "ops-completions", COMPLETIONS_MODEL, mock_upstream, framework="mock"),
    ]))
    report = admin_client(ops_gateway, ADMIN_KEY).post("/admin/reload", cast_to=object)
    assert report["status"] == "reloaded"
    assert report["report"]["added"] == ["ops-completions"]
    assert report["report"]["kept"] == ["ops-chat"]

    completion = client.completions.create(model=COMPLETIONS_MODEL, prompt="Once upon", max_tokens=4)
    assert completion.object == "text_completion"
    assert completion.choices[0].text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens == 4

    stream = client.completions.create(model=COMPLETIONS_MODEL, prompt="Once upon", max_tokens=4,
                                       stream=True)
    texts = [c.choices[0].text for c in stream if c.choices]
    assert "".join(texts).strip() == "tok0 tok1 tok2 tok3"

    # The chat model kept working across the reload.
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert chat.choices[0].message.content


def test_invalid_fixtures_on_reload_are_a_400_and_nothing_changes(ops_gateway):
    path = ops_gateway.fixtures_dir / "endpoints.json"
    good = path.read_text()
    path.write_text("[{")
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            admin_client(ops_gateway, ADMIN_KEY).post("/admin/reload", cast_to=object)
        assert "endpoints.json" in caught.value.message
    finally:
        path.write_text(good)
    chat = ops_gateway.client().chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert chat.choices[0].message.content


def test_deterministic_requests_hit_the_cache(ops_gateway):
    client = ops_gateway.client()
    nonce = str(time.monotonic_ns())
    messages = [{"role": "user", "content": f"cache me {nonce}"}]
    first = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages,
                                                             temperature=0)
    second = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages,
                                                              temperature=0)
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert second.parse().model_dump() == first.parse().model_dump()
    warm = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages,
                                                            temperature=0.8)
    assert "x-cache" not in warm.headers


def test_large_json_is_gzipped_and_streams_are_not(basic_gateway):
    with httpx.Client(base_url=basic_gateway.url, timeout=20.0) as http:
        # Embeddings are large: worth compressing (small bodies are sent as they are).
        response = http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": ["a", "b"]},
                             headers={"accept-encoding": "gzip"})
        assert response.headers["content-encoding"] == "gzip"
        assert len(response.json()["data"]) == 2
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body,
                         headers={"accept-encoding": "gzip"}) as stream:
            # Neither compressed nor marked `identity`: no Content-Encoding at all.
            assert "content-encoding" not in stream.headers
            data = b"".join(stream.iter_raw())
        assert data.rstrip().endswith(b"data: [DONE]")
        with pytest.raises(OSError):
            gzip.decompress(data)


def test_metrics_count_the_sdk_traffic(ops_gateway):
    ops_gateway.client().chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    text = httpx.get(f"{ops_gateway.url}/metrics", timeout=10.0).text
    families = re.findall(r"^# TYPE (gateway_\w+)", text, re.M)
    assert len(families) >= 20, families
    match = re.search(
        r'^gateway_requests_total\{model="%s",route="chat",status="200",target="ops-chat"\} (\d+)' % re.escape(CHAT_MODEL),
        text, re.M)
    assert match and int(match.group(1)) >= 1, text
    assert re.search(r'^gateway_reloads_total\{result="ok"\} [1-9]', text, re.M), text


def test_openapi_and_docs_are_served_from_the_binary(ops_gateway):
    with httpx.Client(base_url=ops_gateway.url, timeout=10.0) as http:
        spec = http.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.1")
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                     "/admin/reload", "/metrics", "/docs", "/{cluster}/{framework}/v1/chat/completions"]:
            assert path in spec["paths"], path
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "default-src 'none'" in docs.headers["content-security-policy"]
        assert not re.search(r"(src|href)=\"https?://", docs.text), "no external resources"
        assert http.get("/docs/docs.js").status_code == 200
