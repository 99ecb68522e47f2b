"""Failover between targets of one model, and what comes back when every target fails."""

from __future__ import annotations

import openai
import pytest

from conftest import Topology, endpoint, free_port, llmock_text

MESSAGES = [{"role": "user", "content": "Say hello."}]
FAILOVER_MODEL = "failover-model"
CONN_FAILOVER_MODEL = "conn-failover-model"
RATELIMITED_MODEL = "ratelimited-model"
BROKEN_MODEL = "broken-model"
SEQUENTIAL_REQUESTS = 50


@pytest.fixture(scope="module")
def topo(llmocks, gateways) -> Topology:
    mocks = llmocks.start_many({
        "good": [],
        "bad503": ["--error-rate", "503=1.0"],
        "rl429a": ["--error-rate", "429=1.0"],
        "rl429b": ["--error-rate", "429=1.0"],
        "bad500": ["--error-rate", "500=1.0"],
    })
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw = gateways.start("failover", [
        endpoint(1, "local-llmock-good", FAILOVER_MODEL, mocks["good"].url),
        endpoint(2, "local-llmock-bad503", FAILOVER_MODEL, mocks["bad503"].url),
        endpoint(3, "local-llmock-rl429a", RATELIMITED_MODEL, mocks["rl429a"].url),
        endpoint(4, "remote-llmock-rl429b", RATELIMITED_MODEL, mocks["rl429b"].url, cluster="remote"),
        endpoint(5, "local-llmock-bad500", BROKEN_MODEL, mocks["bad500"].url),
        endpoint(6, "local-dead", CONN_FAILOVER_MODEL, dead_url),
        endpoint(7, "local-llmock-good-2", CONN_FAILOVER_MODEL, mocks["good"].url),
    ], expect_unhealthy=1)
    return Topology(gateway=gw, mocks=mocks)


@pytest.fixture
def fresh(topo) -> Topology:
    for mock in topo.mocks.values():
        mock.reset()
    return topo


def test_failover_past_503_target(fresh):
    client = fresh.gateway.client()
    for i in range(SEQUENTIAL_REQUESTS):
        completion = client.chat.completions.create(model=FAILOVER_MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content, f"request {i}: {completion}"

    good = fresh.mocks["good"].requests()
    bad = fresh.mocks["bad503"].requests()
    # Each client request succeeded on the healthy llmock exactly once.
    assert [r["status"] for r in good] == [200] * SEQUENTIAL_REQUESTS
    assert all(r["status"] == 503 for r in bad), bad
    # Failover is bounded: never more upstream attempts than requests x max_attempts (3).
    assert len(good) + len(bad) <= SEQUENTIAL_REQUESTS * 3


def test_failover_past_503_target_streaming(fresh):
    client = fresh.gateway.client()
    for i in range(10):
        stream = client.chat.completions.create(model=FAILOVER_MODEL, messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == llmock_text(FAILOVER_MODEL), f"stream {i}"
    assert [r["status"] for r in fresh.mocks["good"].requests()] == [200] * 10


def test_failover_past_connection_refused(fresh):
    client = fresh.gateway.client()
    for i in range(20):
        completion = client.chat.completions.create(model=CONN_FAILOVER_MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content, f"request {i}"
    assert [r["status"] for r in fresh.mocks["good"].requests()] == [200] * 20


def test_every_target_429_is_rate_limit_error(fresh):
    client = fresh.gateway.client()
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=RATELIMITED_MODEL, messages=MESSAGES)

    err = caught.value
    assert err.status_code == 429
    assert isinstance(err.body, dict) and err.body.get("message"), err.body
    # llmock answers its 429s with `retry-after: 1`; the gateway passes one on.
    assert err.response.headers.get("retry-after") == "1", dict(err.response.headers)
    # "every target answered 429": both were tried, within the attempt bound.
    a = fresh.mocks["rl429a"].requests()
    b = fresh.mocks["rl429b"].requests()
    assert len(a) >= 1 and len(b) >= 1, (a, b)
    assert len(a) + len(b) <= 3
    assert all(r["status"] == 429 for r in a + b)


def test_every_target_500_is_502(fresh):
    client = fresh.gateway.client()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=BROKEN_MODEL, messages=MESSAGES)
    err = caught.value
    assert err.status_code == 502, (err.status_code, err.body)
    assert isinstance(err.body, dict) and err.body.get("message"), err.body
    served = fresh.mocks["bad500"].requests()
    assert 1 <= len(served) <= 3 and all(r["status"] == 500 for r in served), served
