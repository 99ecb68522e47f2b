"""An upstream stream that breaks after it began must end with an in-band SSE error.

llmock breaks the stream after 1 to 6 chunks (its `--stream-fault KIND=1.0`), so
the first bytes have always reached the client and failover is no longer possible:
the gateway must end the stream with `data: {"error": {...}}`, which the OpenAI SDK
raises as `openai.APIError` (the base class, not a connection or status error).

- `truncate`: llmock ends the HTTP response cleanly but early, with no finish reason
  and no `data: [DONE]`.
- `disconnect`: llmock drops the connection mid-body.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from conftest import Topology, endpoint

MESSAGES = [{"role": "user", "content": "Say hello."}]
# Each attempt is bounded by the SDK timeout (conftest.CLIENT_TIMEOUT_SECS);
# a healthy gateway answers in well under this.
MAX_SECONDS_PER_STREAM = 10.0
# Fewer than the breaker threshold (5), so every attempt still reaches llmock.
ATTEMPTS = 3


@pytest.fixture(scope="module")
def topo(llmocks, gateways) -> Topology:
    mocks = llmocks.start_many({
        "truncate": ["--stream-fault", "truncate=1.0"],
        "disconnect": ["--stream-fault", "disconnect=1.0"],
    })
    gw = gateways.start("stream-faults", [
        endpoint(1, "local-llmock-truncate", "truncate-model", mocks["truncate"].url),
        endpoint(2, "local-llmock-disconnect", "disconnect-model", mocks["disconnect"].url),
    ])
    return Topology(gateway=gw, mocks=mocks)


@pytest.mark.parametrize("kind", ["truncate", "disconnect"])
def test_broken_stream_raises_api_error(topo, kind):
    client = topo.gateway.client()
    for attempt in range(ATTEMPTS):
        started = time.monotonic()
        received = 0
        stream = client.chat.completions.create(model=f"{kind}-model", messages=MESSAGES, stream=True)
        error: openai.APIError | None = None
        try:
            for _chunk in stream:
                received += 1
                assert time.monotonic() - started < MAX_SECONDS_PER_STREAM
        except openai.APIError as exc:
            error = exc
        except httpx.HTTPError as exc:
            pytest.fail(f"attempt {attempt}: transport error instead of an in-band SSE error "
                        f"after {received} chunks: {type(exc).__name__}: {exc}")
        finally:
            stream.close()
        assert error is not None, (
            f"attempt {attempt}: the stream ended without an error after {received} chunks "
            "(a silent short stream)")
        elapsed = time.monotonic() - started
        err = error
        # An in-band error event: not a transport error (APIConnectionError, e.g. a
        # timeout) and not an HTTP status error.
        assert type(err) is openai.APIError, f"attempt {attempt}: {type(err).__name__}: {err}"
        assert isinstance(err.body, dict), err.body
        assert isinstance(err.body.get("message"), str) and err.body["message"], err.body
        assert "type" in err.body and "code" in err.body, err.body
        assert elapsed < MAX_SECONDS_PER_STREAM, f"took {elapsed:.1f}s"
        # llmock sent 1..6 chunks before the fault, and the first is the role chunk.
        assert received >= 1, f"attempt {attempt}: the error came before any upstream chunk"

    served = topo.mocks[kind].requests()
    assert len(served) == ATTEMPTS, served
    assert all((r["fault"] or "").startswith(f"stream:{kind}") for r in served), served


@pytest.mark.parametrize("kind", ["truncate", "disconnect"])
def test_broken_stream_wire_format(topo, kind):
    """The last SSE event on the wire is the error object, and no [DONE] follows it."""
    with topo.gateway.http() as http:
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": f"{kind}-model", "messages": MESSAGES, "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers.get("content-type", "").startswith("text/event-stream")
            raw = b"".join(response.iter_bytes())
    events = [e for e in raw.decode().split("\n\n") if e.strip()]
    assert events, raw
    data_lines = [line[len("data: "):] for line in events[-1].splitlines() if line.startswith("data: ")]
    assert len(data_lines) == 1, events[-1]
    last = json.loads(data_lines[0])
    assert set(last) == {"error"}, last
    assert set(last["error"]) >= {"message", "type", "code"}, last
    assert not any("[DONE]" in e for e in events), events
