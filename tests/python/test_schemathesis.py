"""Issue 19 item 9: the gateway's own /openapi.json describes what it serves.

Every templated path declares its path parameters, streamed answers are declared as
`text/event-stream` with an event schema, and a bounded Schemathesis run (every phase,
a few examples per operation, fixed seed) against the real binary with
`auth.mode = "required"` and a user API key finds no server error, no undocumented status,
content type or body.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import CHAT_MODEL, EMBED_MODEL, endpoint

ADMIN_KEY = "schemathesis-admin-key-0123456789"
# A bounded run: Schemathesis' own budget, and a hard stop well under CI's limits.
MAX_EXAMPLES = "3"
RUN_TIMEOUT_SECS = 120


@pytest.fixture(scope="module")
def fuzz_gateway(gateways, llmocks):
    upstream = llmocks.start("schemathesis")
    gw = gateways.start(
        "schemathesis",
        [endpoint(1, "fuzz-chat", CHAT_MODEL, upstream.url),
         endpoint(2, "fuzz-embed", EMBED_MODEL, upstream.url)],
        extra_env={"GATEWAY__AUTH__MODE": "required", "GATEWAY_ADMIN_KEY": ADMIN_KEY},
    )
    created = httpx.post(f"{gw.url}/admin/keys", json={"user": "fuzzer"},
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10.0)
    assert created.status_code == 201, created.text
    gw.api_key = created.json()["key"]
    return gw


def test_templated_paths_declare_their_parameters_and_streams_their_events(fuzz_gateway):
    doc = httpx.get(f"{fuzz_gateway.url}/openapi.json", timeout=10.0).json()
    templated = 0
    for path, item in doc["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path} declares {declared}, needs {names}"
            templated += bool(names)
            sse = op["responses"].get("200", {}).get("content", {}).get("text/event-stream")
            if sse is not None:
                assert sse["schema"]["type"] == "string", path
                assert sse["x-itemSchema"] == {"$ref": "#/components/schemas/SseEvent"}, path
    assert templated >= 12
    assert doc["components"]["schemas"]["SseEvent"]["required"] == ["data"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_schemathesis_finds_nothing(fuzz_gateway, tmp_path: Path):
    schemathesis = Path(sys.executable).parent / "schemathesis"
    assert schemathesis.exists(), "schemathesis is not installed (tests/python/requirements.txt)"
    argv = [
        str(schemathesis), "run", f"{fuzz_gateway.url}/openapi.json",
        "--url", fuzz_gateway.url,
        "--header", f"Authorization: Bearer {fuzz_gateway.api_key}",
        "--checks", "not_a_server_error,status_code_conformance,"
                    "content_type_conformance,response_schema_conformance",
        "--max-examples", MAX_EXAMPLES,
        "--seed", "19",
        "--request-timeout", "10",
        "--no-color",
    ]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_SECS)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert summary, report
    assert summary.group(1) == summary.group(2) and int(summary.group(1)) > 0, report
    assert "Server error" not in run.stdout, report
