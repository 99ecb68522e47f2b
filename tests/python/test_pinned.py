"""Pinned routes `/{cluster}/{framework}/v1/...` reach only that cluster's targets."""

from __future__ import annotations

import openai
import pytest

from conftest import Topology, endpoint

MESSAGES = [{"role": "user", "content": "Say hello."}]
MODEL = "pinned-model"
REQUESTS = 6


@pytest.fixture(scope="module")
def topo(llmocks, gateways) -> Topology:
    mocks = llmocks.start_many({"local": [], "remote": []})
    gw = gateways.start("pinned", [
        endpoint(1, "local-llmock-pinned", MODEL, mocks["local"].url, cluster="local"),
        endpoint(2, "remote-llmock-pinned", MODEL, mocks["remote"].url, cluster="remote"),
    ])
    return Topology(gateway=gw, mocks=mocks)


@pytest.fixture
def fresh(topo) -> Topology:
    for mock in topo.mocks.values():
        mock.reset()
    return topo


@pytest.mark.parametrize("cluster,other", [("local", "remote"), ("remote", "local")])
@pytest.mark.parametrize("prefix", ["/resource_server", ""])
def test_pinned_route_reaches_only_its_cluster(fresh, cluster, other, prefix):
    client = fresh.gateway.client(f"{prefix}/{cluster}/llmock/v1")
    for _ in range(REQUESTS):
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    hit = fresh.mocks[cluster].requests()
    assert [(r["path"], r["status"], r["model"]) for r in hit] == \
        [("/v1/chat/completions", 200, MODEL)] * (REQUESTS + 1)
    assert fresh.mocks[other].requests() == []


def test_unpinned_route_may_use_both(fresh):
    client = fresh.gateway.client()
    for _ in range(REQUESTS):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    total = len(fresh.mocks["local"].requests()) + len(fresh.mocks["remote"].requests())
    assert total == REQUESTS


def test_pinned_route_unknown_cluster_is_not_found(fresh):
    client = fresh.gateway.client("/resource_server/nowhere/llmock/v1")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert fresh.mocks["local"].requests() == [] and fresh.mocks["remote"].requests() == []
