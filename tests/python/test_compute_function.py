"""The Globus Compute remote function (compute-functions/vllm_inference_function.py),
run as the endpoint would run it: against a real model server (llmock) and a callback
receiver standing in for the gateway's streaming routes."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO_ROOT, llmock_text

FUNCTION_FILE = REPO_ROOT / "compute-functions" / "vllm_inference_function.py"


def load_function():
    spec = importlib.util.spec_from_file_location("vllm_inference_function", FUNCTION_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.vllm_inference_function


@pytest.fixture
def function(monkeypatch):
    monkeypatch.setenv("MODEL_SERVER_SCHEME", "http")
    monkeypatch.setenv("INTERNAL_STREAMING_SECRET", "s3cret")
    return load_function()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_non_streaming_returns_a_json_string_with_metrics(function, fresh_basic_llmock):
    params = {"model": "m1", "messages": [{"role": "user", "content": "hi"}],
              "openai_endpoint": "chat/completions", "api_port": port_of(fresh_basic_llmock.url)}
    result = function({"model_params": params})
    assert isinstance(result, str), "FIRST's contract: a JSON string"
    answer = json.loads(result)
    assert answer["choices"][0]["message"]["content"] == llmock_text("m1")
    assert answer["response_time"] > 0
    assert "throughput_tokens_per_second" in answer
    sent = fresh_basic_llmock.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}, \
        "openai_endpoint and api_port are the function's, not the server's"


def test_model_server_errors_raise_with_the_status_code(function, fresh_basic_llmock):
    params = {"model": "m1", "messages": [{"role": "user", "content": "hi"}],
              "openai_endpoint": "no/such/route", "api_port": port_of(fresh_basic_llmock.url)}
    with pytest.raises(Exception) as info:
        function({"model_params": params})
    assert "status code: 404" in str(info.value)


class Receiver(BaseHTTPRequestHandler):
    calls: list = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        Receiver.calls.append({
            "path": self.path,
            "secret": self.headers.get("X-Internal-Secret"),
            "token": self.headers.get("X-Stream-Task-Token"),
            "body": json.loads(self.rfile.read(length)),
        })
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"received"}')

    def log_message(self, *args):
        pass


def test_streaming_posts_batches_then_done(function, fresh_basic_llmock):
    Receiver.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        params = {"model": "m1", "messages": [{"role": "user", "content": "hi"}],
                  "stream": True, "openai_endpoint": "chat/completions",
                  "api_port": port_of(fresh_basic_llmock.url),
                  "streaming_server_host": "127.0.0.1",
                  "streaming_server_port": server.server_address[1],
                  "streaming_server_protocol": "http",
                  "stream_task_id": "6f1c1f0e-8d2a-4a5e-9a55-0d6f1b2c3d4e",
                  "stream_task_token": "tok"}
        result = json.loads(function({"model_params": params}))
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert result["streaming"] is True and result["status"] == "completed"
    paths = [c["path"] for c in Receiver.calls]
    assert paths[-1] == "/resource_server/api/streaming/done/"
    assert set(paths[:-1]) == {"/resource_server/api/streaming/data/"}
    assert all(c["secret"] == "s3cret" and c["token"] == "tok" for c in Receiver.calls)
    lines = [l for c in Receiver.calls[:-1] for l in c["body"]["data"].split("\n")]
    assert lines and all(l.startswith("data: ") for l in lines)
    assert "data: [DONE]" not in lines
    text = "".join(json.loads(l[6:])["choices"][0]["delta"].get("content") or ""
                   for l in lines if json.loads(l[6:]).get("choices"))
    assert text == llmock_text("m1")
    assert result["chunks_sent_to_server"] == result["total_chunks"] == len(lines)
    assert all(c["body"]["task_id"] == params["stream_task_id"] for c in Receiver.calls)
