"""The README's quick start, run as a new user would: the binary started exactly as the
README says (no arguments, from a directory holding the shipped `config/` and `fixtures/`,
no model server anywhere), then the README's first curl and first Python example, taken
from README.md itself so the README cannot drift. Only the address is adapted (the
documented `GATEWAY__SERVER__BIND` override picks a free port); both must answer 200.

The README marks its blocks with `<!-- first-run:run -->`, `<!-- first-run:curl -->` and
`<!-- first-run:python -->`; this module checks that the marked ones are the first of
their kind, so a newer example cannot slip in above them untested.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import (GATEWAY_READY_SECS, LOOPBACK, REPO_ROOT, ManagedProcess, _clean_env,
                      free_port, gateway_bin, wait_http_ok)

README = REPO_ROOT / "README.md"
README_ADDRESS = "http://127.0.0.1:8000"
SNIPPET_TIMEOUT_SECS = 60
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """Every fenced block: (offset, language, body)."""
    return [(m.start(), m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def marked_block(text: str, mark: str) -> tuple[int, str, str]:
    """The fenced block right after `<!-- first-run:{mark} -->`."""
    tag = f"<!-- first-run:{mark} -->"
    at = text.find(tag)
    assert at >= 0, f"README.md has no {tag}"
    following = [b for b in fenced_blocks(text) if b[0] > at]
    assert following, f"no code block after {tag}"
    block = following[0]
    between = text[at + len(tag):block[0]]
    assert between.strip() == "", f"{tag} must sit right above its code block"
    return block


def readme_snippets() -> dict[str, str]:
    text = README.read_text()
    blocks = fenced_blocks(text)
    run = marked_block(text, "run")
    curl = marked_block(text, "curl")
    python = marked_block(text, "python")
    first_curl = next(b for b in blocks if b[1] == "sh" and "curl " in b[2])
    first_python = next(b for b in blocks if b[1] == "python")
    first_sh = next(b for b in blocks if b[1] == "sh")
    assert run == first_sh, "the marked run command is the README's first shell block"
    assert curl == first_curl, "the marked curl is the README's first curl"
    assert python == first_python, "the marked Python example is the README's first"
    return {"run": run[2], "curl": curl[2], "python": python[2]}


def adapt(snippet: str, url: str) -> str:
    """The snippet aimed at `url` instead of the README's address; nothing else changes."""
    assert README_ADDRESS in snippet, snippet
    return snippet.replace(README_ADDRESS, url)


@pytest.fixture()
def first_run_gateway(tmp_path: Path, log_dir: Path):
    """The binary as the README starts it: no arguments, cwd holding the shipped files."""
    snippets = readme_snippets()
    # `cargo run --release` runs the binary with no arguments from the repository root;
    # GATEWAY_BIN is that binary (release or debug).
    assert snippets["run"].strip() == "cargo run --release", snippets["run"]
    work = tmp_path / "first-run"
    work.mkdir()
    shutil.copytree(REPO_ROOT / "config", work / "config")
    shutil.copytree(REPO_ROOT / "fixtures", work / "fixtures")
    port = free_port()
    # A new user's environment: none of the gateway's variables, no model keys.
    env = _clean_env(["GATEWAY__", "WORKSTATION_VLLM_API_KEY"])
    env["GATEWAY__SERVER__BIND"] = f"{LOOPBACK}:{port}"
    proc = ManagedProcess("gateway[readme]", [str(gateway_bin())], env,
                          log_dir / f"gateway-readme-{port}.log", cwd=work)
    proc.start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_http_ok(f"{url}/health", proc, GATEWAY_READY_SECS)
        yield url, proc, snippets, work
    finally:
        proc.stop()


def test_the_readme_curl_and_python_example_answer_on_a_fresh_gateway(first_run_gateway):
    url, proc, snippets, work = first_run_gateway
    curl = adapt(snippets["curl"], url)
    done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True,
                          timeout=SNIPPET_TIMEOUT_SECS, stdin=subprocess.DEVNULL)
    # The README's curl has --fail-with-body: any status >= 400 exits 22.
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{proc.log()}"
    events = [line[len("data: "):] for line in done.stdout.splitlines()
              if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", done.stdout
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text.endswith('You said: "Hello"'), done.stdout

    python = adapt(snippets["python"], url)
    done = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True,
                          timeout=SNIPPET_TIMEOUT_SECS, stdin=subprocess.DEVNULL, cwd=work)
    # The SDK raises on any status but 2xx.
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{proc.log()}"
    assert done.stdout.strip() == (
        "This is the inference gateway's built-in demo model. You said: \"Hello\""), done.stdout

    # What the README then says: the demo is running and labelled, the others offline.
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    by_id = {m["id"]: m for m in models}
    assert by_id["demo"]["status"] == "running" and by_id["demo"]["demo"] is True
    assert "demo" not in by_id["smollm2"]
    detailed = httpx.get(f"{url}/health/detailed", timeout=10).json()
    assert any(t["id"] == "local-demo" and t["health"] == "healthy"
               for t in detailed["targets"]), detailed
    # A missing API-key variable is a warning when serving, as in check-config.
    assert "WORKSTATION_VLLM_API_KEY" in proc.log(), proc.log()


def test_check_config_on_the_shipped_files_warns_and_passes(tmp_path: Path):
    work = tmp_path / "shipped"
    work.mkdir()
    shutil.copytree(REPO_ROOT / "config", work / "config")
    shutil.copytree(REPO_ROOT / "fixtures", work / "fixtures")
    env = _clean_env(["GATEWAY__", "WORKSTATION_VLLM_API_KEY"])
    # Nothing listens on the shipped targets' ports in a test; the probe says so quickly.
    env["GATEWAY__HEALTH__TIMEOUT_MS"] = "1000"
    done = subprocess.run([str(gateway_bin()), "check-config", "--probe"], env=env, cwd=work,
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "warnings: 1" in out, out
    assert "WORKSTATION_VLLM_API_KEY is not set" in out, out
    assert '"demo": targets local-demo (built-in demo)' in out, out
    assert 'target "local-demo" (built in): built in' in out, out
