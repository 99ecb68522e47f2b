"""The gateway in front of a real model server: llama.cpp's `llama-server` with SmolLM2-135M.

Every answer through the gateway is compared with the same request sent to the server
itself: bodies equal once ids, timestamps, timings and prompt-cache counters are masked
(they differ between any two calls). Built and cached by tests/llama/build.sh; `.ci/run`
exports LLAMA_SERVER_BIN and LLAMA_MODEL and sets LLAMA_REQUIRED=1, so in CI this module
fails instead of skipping when the server is missing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LOOPBACK, ManagedProcess, endpoint, free_port, wait_http_ok

MODEL = "smollm2"
TARGET = "local-llama-cpp-smollm2"
LLAMA_READY_SECS = 120.0
# llama-server on one thread of a busy 2-core machine: a few tokens a second at worst.
CALL_TIMEOUT_SECS = 120.0
# Fields that differ between any two calls to the same server.
VOLATILE = {"id", "created", "created_at", "completed_at", "timings", "system_fingerprint",
            "cached_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
            "input_tokens", "prompt_tokens_details", "input_tokens_details", "total_tokens",
            "prompt_tokens"}


def mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<masked>" if k in VOLATILE else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, str) and value.startswith(("chatcmpl-", "resp_", "msg_", "cmpl-")):
        return "<masked-id>"
    return value


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture(scope="module")
def llama(log_dir: Path):
    binary = os.environ.get("LLAMA_SERVER_BIN", "")
    model = os.environ.get("LLAMA_MODEL", "")
    if not (binary and Path(binary).is_file() and model and Path(model).is_file()):
        message = ("llama-server not built: run `eval \"$(bash tests/llama/build.sh)\"` and "
                   "export LLAMA_SERVER_BIN and LLAMA_MODEL")
        if os.environ.get("LLAMA_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    port = free_port()
    argv = [binary, "-m", model, "--host", LOOPBACK, "--port", str(port), "-t", "1",
            "-c", "8192", "-np", "4", "--alias", MODEL, "--embeddings", "--pooling", "mean",
            "--metrics"]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(Path(binary).parent)
    proc = ManagedProcess("llama-server", argv, env, log_dir / f"llama-server-{port}.log")
    proc.start()
    try:
        wait_http_ok(f"http://{LOOPBACK}:{port}/health", proc, LLAMA_READY_SECS)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def gw(gateways, llama: str):
    return gateways.start("llama", [
        endpoint(1, TARGET, MODEL, llama, framework="llama-cpp"),
    ], extra_env={"GATEWAY__UPSTREAM__RESPONSE_TIMEOUT_SECS": "300"})


def both(gw, llama: str, path: str, body: Any) -> tuple[httpx.Response, httpx.Response]:
    with httpx.Client(timeout=CALL_TIMEOUT_SECS) as client:
        direct = client.post(f"{llama}{path}", json=body)
        through = client.post(f"{gw.url}{path}", json=body)
    return direct, through


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 6, "temperature": 0, "seed": 1}


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", CHAT),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 2}),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]}),
    ("/v1/completions", {"model": MODEL, "prompt": "One, two,", "max_tokens": 6,
                         "temperature": 0, "seed": 1}),
    ("/v1/embeddings", {"model": MODEL, "input": ["hello world", "bonjour"]}),
    ("/v1/responses", {"model": MODEL, "input": "Say hi", "max_output_tokens": 6,
                       "temperature": 0}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 6, "temperature": 0,
                      "messages": [{"role": "user", "content": "Say hi"}]}),
    ("/v1/messages/count_tokens", {"model": MODEL,
                                   "messages": [{"role": "user", "content": "Say hi"}]}),
    ("/tokenize", {"model": MODEL, "content": "Hello world"}),
    ("/detokenize", {"model": MODEL, "tokens": [19556, 905]}),
])
def test_json_answers_match_the_server_itself(gw, llama, path, body):
    direct, through = both(gw, llama, path, body)
    assert direct.status_code == 200, direct.text
    assert through.status_code == 200, f"{through.text}\n{gw.log()}"
    assert mask(through.json()) == mask(direct.json())


def stream(url: str, body: dict[str, Any]) -> str:
    with httpx.Client(timeout=CALL_TIMEOUT_SECS) as client:
        with client.stream("POST", url, json=body) as response:
            assert response.status_code == 200, response.read()
            return response.read().decode()


def test_a_stream_with_include_usage_is_the_servers_stream(gw, llama):
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    direct = sse_events(stream(f"{llama}/v1/chat/completions", body))
    through = sse_events(stream(f"{gw.url}/v1/chat/completions", body))
    assert [mask(e) for e in through] == [mask(e) for e in direct]
    assert through[-2]["usage"]["completion_tokens"] > 0


def test_a_stream_without_usage_keeps_the_servers_timings(gw, llama):
    body = {**CHAT, "stream": True}
    direct = sse_events(stream(f"{llama}/v1/chat/completions", body))
    text = stream(f"{gw.url}/v1/chat/completions", body)
    through = sse_events(text)
    # The gateway asked for usage to charge tokens: only `usage` is taken out, so the
    # server's `timings` move to one extra event (README, "What can differ").
    assert '"usage"' not in text
    content = lambda events: "".join(  # noqa: E731
        (e["choices"][0]["delta"].get("content") or "")
        for e in events if e != "[DONE]" and e["choices"])
    assert content(through) == content(direct)
    assert through[-1] == "[DONE]"
    assert any(e != "[DONE]" and "timings" in e for e in through), text
    finish = [e["choices"][0]["finish_reason"] for e in through if e != "[DONE]" and e["choices"]]
    assert finish[-1] == [e["choices"][0]["finish_reason"] for e in direct
                          if e != "[DONE]" and e["choices"]][-1]


def test_completions_stream_matches(gw, llama):
    body = {"model": MODEL, "prompt": "One, two,", "max_tokens": 6, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    direct = sse_events(stream(f"{llama}/v1/completions", body))
    through = sse_events(stream(f"{gw.url}/v1/completions", body))
    assert [mask(e) for e in through] == [mask(e) for e in direct]


def test_request_errors_come_back_as_the_server_sent_them(gw, llama):
    # A prompt far over the context (8192 / 4 slots): llama-server's 400.
    huge = {"model": MODEL, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hello " * 20000}]}
    direct, through = both(gw, llama, "/v1/chat/completions", huge)
    assert direct.status_code == 400
    assert through.status_code == 400, through.text
    assert through.json() == direct.json()
    assert through.json()["error"]["type"] == "exceed_context_size_error"
    # No `--reranking`: 501, relayed, and never a breaker failure.
    rerank = {"model": MODEL, "query": "a", "documents": ["b", "c"]}
    for _ in range(7):
        direct, through = both(gw, llama, "/v1/rerank", rerank)
        assert direct.status_code == 501
        assert through.status_code == 501, through.text
        assert through.content == direct.content
    health = httpx.get(f"{gw.url}/health/detailed", timeout=10).json()
    target = next(t for t in health["targets"] if t["id"] == TARGET)
    assert target["breaker"] == "closed", target
    ok = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=CALL_TIMEOUT_SECS)
    assert ok.status_code == 200, ok.text


def test_forty_streams_over_four_keep_alive_connections_five_rounds(gw):
    """llama-server closes its connection after every stream while announcing
    keep-alive: the gateway's pooled connections go stale under it."""
    failures: list[str] = []
    body = {**CHAT, "max_tokens": 2, "stream": True}

    def client_loop(n: int) -> None:
        # One client, one connection, kept alive between its streams.
        with httpx.Client(timeout=CALL_TIMEOUT_SECS,
                          limits=httpx.Limits(max_connections=1)) as client:
            for i in range(n):
                try:
                    with client.stream("POST", f"{gw.url}/v1/chat/completions",
                                       json=body) as response:
                        text = response.read().decode()
                    if response.status_code != 200 or "data: [DONE]" not in text:
                        failures.append(f"{response.status_code}: {text[:300]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    for _ in range(5):
        threads = [threading.Thread(target=client_loop, args=(10,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    assert failures == [], f"{len(failures)} of 200 failed; first: {failures[0]}\n{gw.log()}"


def test_a_client_that_leaves_frees_the_servers_slot(gw, llama):
    body = {**CHAT, "max_tokens": 400, "stream": True,
            "messages": [{"role": "user", "content": "Count from 1 to 1000."}]}

    def busy() -> int:
        slots = httpx.get(f"{llama}/slots", timeout=10).json()
        return sum(1 for s in slots if s.get("is_processing"))

    with httpx.Client(timeout=CALL_TIMEOUT_SECS) as client:
        with client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            # Keep the iterator: leaving a `for` over it would close the response.
            lines = response.iter_lines()
            next(lines)
            deadline = time.monotonic() + 10
            while busy() != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert busy() == 1, "the server is generating for this client"
    left = time.monotonic()
    while busy() and time.monotonic() - left < 5:
        time.sleep(0.05)
    freed_after = time.monotonic() - left
    assert busy() == 0
    assert freed_after < 1.0, f"the slot was freed {freed_after:.2f} s after the client left"
