"""A backend that closes the connection after each streamed response (as llama-server
does, while advertising keep-alive) must not cause a single failed request.

The backend here is a small raw-socket HTTP/1.1 server on 127.0.0.1, in a thread:
- `GET /health` -> 200, connection kept open;
- `POST /v1/chat/completions` without `stream` -> JSON, connection kept open;
- with `"stream": true` -> chunked SSE with `Connection: keep-alive`, then the socket
  is closed right after the last chunk.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from conftest import Topology, endpoint

MODEL = "closing-model"
ROUNDS = 30
SOCKET_TIMEOUT = 10.0


class ClosingBackend:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str, bool]] = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.handlers: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ClosingBackend":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()
        for handler in self.handlers:
            handler.join(timeout=SOCKET_TIMEOUT + 1)

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                self.connections += 1
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.handlers = [h for h in self.handlers if h.is_alive()] + [handler]
            handler.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(SOCKET_TIMEOUT)
        buffer = b""
        try:
            for _ in range(10_000):  # requests per connection, bounded
                if self.stopping.is_set():
                    return
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in lines[1:] if ":" in line)}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                if not self._respond(conn, method, path, body):
                    return
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def _respond(self, conn: socket.socket, method: str, path: str, body: bytes) -> bool:
        """Answer one request; False when the connection must be closed."""
        if method == "GET" and path.startswith("/health"):
            self._record(method, path, False)
            self._send_json(conn, 200, {"status": "ok"})
            return True
        if method == "POST" and path.endswith("/chat/completions"):
            payload = json.loads(body or b"{}")
            stream = payload.get("stream") is True
            self._record(method, path, stream)
            if not stream:
                self._send_json(conn, 200, {
                    "id": "chatcmpl-closing", "object": "chat.completion", "created": 0,
                    "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": "ok"}}],
                })
                return True
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"connection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in ("o", "k"):
                chunk = {"id": "chatcmpl-closing", "object": "chat.completion.chunk", "created": 0,
                         "model": MODEL, "choices": [{"index": 0, "delta": {"content": piece},
                                                      "finish_reason": None}]}
                self._send_chunk(conn, f"data: {json.dumps(chunk)}\n\n".encode())
            self._send_chunk(conn, b"data: [DONE]\n\n")
            conn.sendall(b"0\r\n\r\n")
            return False  # like llama-server: close although keep-alive was advertised
        self._record(method, path, False)
        self._send_json(conn, 404, {"error": {"message": "not found", "type": "invalid_request_error",
                                              "param": None, "code": "not_found"}})
        return True

    def _record(self, method: str, path: str, stream: bool) -> None:
        with self.lock:
            self.requests.append((method, path, stream))

    @staticmethod
    def _send_chunk(conn: socket.socket, data: bytes) -> None:
        conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    @staticmethod
    def _send_json(conn: socket.socket, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        reason = {200: "OK", 404: "Not Found"}[status]
        conn.sendall(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                     f"connection: keep-alive\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data)


@pytest.fixture(scope="module")
def backend():
    server = ClosingBackend().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def topo(gateways, backend) -> Topology:
    gw = gateways.start("closing", [endpoint(1, "local-closing", MODEL, backend.url)])
    return Topology(gateway=gw, mocks={})


def test_no_failure_when_backend_closes_after_stream(topo, backend):
    failures = []
    deadline = time.monotonic() + 120
    with topo.gateway.http() as http:
        for i in range(ROUNDS):
            assert time.monotonic() < deadline, "took too long"
            streamed = http.post("/v1/chat/completions",
                                 json={"model": MODEL, "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]})
            if streamed.status_code != 200 or not streamed.text.rstrip().endswith("data: [DONE]"):
                failures.append((i, "stream", streamed.status_code, streamed.text[:300]))
            plain = http.post("/v1/chat/completions",
                              json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            if plain.status_code != 200 or plain.json()["choices"][0]["message"]["content"] != "ok":
                failures.append((i, "plain", plain.status_code, plain.text[:300]))
    assert failures == [], failures
    with backend.lock:
        chat = [r for r in backend.requests if r[0] == "POST"]
    # Every client request reached the backend; a retry on a fresh connection may add
    # at most a few more attempts, never fewer.
    assert len(chat) >= 2 * ROUNDS
