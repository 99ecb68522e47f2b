"""Fixtures that run the real gateway binary in front of real `llmock` processes.

Everything listens on 127.0.0.1 only. Every wait below is bounded in time, and every
process started here is stopped at teardown by its own PID (TERM, wait, then KILL).

Environment:
  GATEWAY_BIN          gateway binary (default <repo>/target/debug/inference-gateway)
  LLMOCK_BIN           llmock executable (default: the one beside this Python, else PATH)
  IGW_TEST_LOG_DIR     where process logs go (default: pytest's temporary directory)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GATEWAY_BIN = REPO_ROOT / "target" / "debug" / "inference-gateway"

LOOPBACK = "127.0.0.1"
LLMOCK_READY_SECS = 30.0
GATEWAY_READY_SECS = 30.0
TARGETS_HEALTHY_SECS = 15.0
STOP_GRACE_SECS = 5.0
# Timeout of every client call in the suite: a hang fails the test instead of the run.
CLIENT_TIMEOUT_SECS = 20.0
LOG_TAIL_LINES = 200


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def gateway_bin() -> Path:
    path = Path(os.environ.get("GATEWAY_BIN", str(DEFAULT_GATEWAY_BIN)))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"gateway binary not found or not executable: {path}\n"
            "Build it first (`cargo build --bin inference-gateway`) or set GATEWAY_BIN.",
            pytrace=False,
        )
    return path


def llmock_bin() -> str:
    explicit = os.environ.get("LLMOCK_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "llmock"
    if beside.is_file():
        return str(beside)
    found = shutil.which("llmock")
    if not found:
        pytest.fail(
            "llmock not found: install tests/python/requirements.txt "
            "(pip install -r tests/python/requirements.txt) or set LLMOCK_BIN.",
            pytrace=False,
        )
    return found


def _clean_env(drop_prefixes: Iterable[str]) -> dict[str, str]:
    prefixes = tuple(drop_prefixes)
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    rows = text.splitlines()
    cut = rows[-lines:]
    prefix = f"... ({len(rows) - len(cut)} earlier lines in {path})\n" if len(rows) > len(cut) else ""
    return prefix + "\n".join(cut)


class ManagedProcess:
    """A child process whose stdout+stderr go to a file; stopped by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path = REPO_ROOT) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=str(self.cwd),
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_SECS)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=STOP_GRACE_SECS)
                except subprocess.TimeoutExpired:
                    pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self) -> str:
        return tail(self.log_path)


def wait_http_ok(url: str, proc: ManagedProcess, deadline_secs: float) -> None:
    """Poll `url` until it answers 200, the process dies, or the deadline passes."""
    deadline = time.monotonic() + deadline_secs
    last_error = "no attempt"
    while time.monotonic() < deadline:
        code = proc.exited()
        if code is not None:
            pytest.fail(
                f"{proc.name} exited with code {code} before it was ready ({url}).\n"
                f"--- {proc.name} log ({proc.log_path}) ---\n{proc.log()}",
                pytrace=False,
            )
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.1)
    pytest.fail(
        f"{proc.name} not ready at {url} after {deadline_secs:.0f}s (last: {last_error}).\n"
        f"--- {proc.name} log ({proc.log_path}) ---\n{proc.log()}",
        pytrace=False,
    )


# --------------------------------------------------------------------------- llmock


@dataclass
class Llmock:
    name: str
    port: int
    flags: tuple[str, ...]
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Requests llmock served (its journal), oldest first."""
        response = httpx.get(f"{self.url}/_llmock/requests", timeout=10.0)
        response.raise_for_status()
        return response.json()["requests"]

    def reset(self) -> None:
        httpx.post(f"{self.url}/_llmock/reset", timeout=10.0).raise_for_status()

    def script(self, *behaviors: dict[str, Any]) -> None:
        """Queue llmock behaviours (`{"type": "reply", "text": ...}`, ...)."""
        response = httpx.post(
            f"{self.url}/_llmock/scenario", json={"behaviors": list(behaviors)}, timeout=10.0
        )
        response.raise_for_status()


class LlmockFactory:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Llmock] = []

    def start(self, name: str, *flags: str) -> Llmock:
        return self.start_many({name: flags})[name]

    def start_many(self, specs: dict[str, Iterable[str]]) -> dict[str, Llmock]:
        """Start several llmocks at once (they take ~1.5 s each to import), then wait."""
        exe = llmock_bin()
        env = _clean_env(["LLMOCK_"])
        started: dict[str, Llmock] = {}
        for name, flags in specs.items():
            flags = tuple(flags)
            port = free_port()
            # `static` answers "Mock response from {model}." to every chat request.
            argv = [exe, "serve", "--host", LOOPBACK, "--port", str(port),
                    "--log-level", "warning", "--response-style", "static", *flags]
            proc = ManagedProcess(f"llmock[{name}]", argv, env, self.log_dir / f"llmock-{name}-{port}.log")
            mock = Llmock(name=name, port=port, flags=flags, process=proc)
            self.started.append(mock)
            proc.start()
            started[name] = mock
        for mock in started.values():
            wait_http_ok(f"{mock.url}/health", mock.process, LLMOCK_READY_SECS)
        return started

    def stop_all(self) -> None:
        for mock in reversed(self.started):
            mock.process.stop()


# --------------------------------------------------------------------------- gateway


def endpoint(pk: int, slug: str, model: str, base_url: str,
             cluster: str = "local", framework: str = "llmock") -> dict[str, Any]:
    """One row of endpoints.json, in FIRST's Django fixture format plus `base_url`."""
    return {
        "model": "resource_server.endpoint",
        "pk": pk,
        "fields": {
            "endpoint_slug": slug,
            "cluster": cluster,
            "framework": framework,
            "model": model,
            "base_url": base_url,
        },
    }


@dataclass
class Gateway:
    name: str
    port: int
    fixtures_dir: Path
    process: ManagedProcess
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self, prefix: str = "/v1", **kwargs: Any) -> openai.OpenAI:
        """The OpenAI SDK pointed at the gateway; never retries on its own."""
        kwargs.setdefault("timeout", CLIENT_TIMEOUT_SECS)
        return openai.OpenAI(base_url=f"{self.url}{prefix}", api_key="unused", max_retries=0, **kwargs)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_SECS)

    def log(self) -> str:
        return self.process.log()


def _unhealthy_marks(value: Any) -> int:
    """How many `"healthy": false` appear anywhere in a /health/detailed body."""
    if isinstance(value, dict):
        own = 1 if value.get("healthy") is False else 0
        return own + sum(_unhealthy_marks(v) for v in value.values())
    if isinstance(value, list):
        return sum(_unhealthy_marks(v) for v in value)
    return 0


class GatewayFactory:
    def __init__(self, log_dir: Path, work_dir: Path) -> None:
        self.log_dir = log_dir
        self.work_dir = work_dir
        self.started: list[Gateway] = []
        self._dirs = 0

    def write_fixtures(self, name: str, endpoints: list[dict[str, Any]],
                       federated: list[dict[str, Any]] | None = None) -> Path:
        self._dirs += 1
        fixtures = self.work_dir / f"fixtures-{name}-{self._dirs}"
        fixtures.mkdir(parents=True, exist_ok=True)
        (fixtures / "endpoints.json").write_text(json.dumps(endpoints, indent=2))
        if federated is not None:
            (fixtures / "federated_endpoints.json").write_text(json.dumps(federated, indent=2))
        return fixtures

    def base_env(self, fixtures: Path, port: int, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        env = _clean_env(["GATEWAY__"])
        env.update({
            "GATEWAY__SERVER__BIND": f"{LOOPBACK}:{port}",
            "GATEWAY__FIXTURES__DIR": str(fixtures),
            "GATEWAY__AUTH__MODE": "none",
            # Fast health checks so that targets are known healthy soon after start.
            "GATEWAY__HEALTH__INTERVAL_SECS": "1",
            "GATEWAY__LOGGING__LEVEL": "info",
            # Each gateway's SQLite request log (and spill file) in its own directory.
            "GATEWAY__STORAGE__DATA_DIR": str(self.work_dir / f"data-{port}"),
            # Quotas stay on, but a session's burst of requests must not hit the default
            # 50 requests/s of the one anonymous user (tests/it/quotas.rs covers the limits).
            "GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND": "10000",
            "GATEWAY__QUOTAS__USER__BURST": "10000",
            "RUST_BACKTRACE": "1",
        })
        env.update(extra_env or {})
        return env

    def start(self, name: str, endpoints: list[dict[str, Any]],
              federated: list[dict[str, Any]] | None = None,
              extra_env: dict[str, str] | None = None,
              expect_unhealthy: int = 0) -> Gateway:
        """Start a gateway on `endpoints`; `expect_unhealthy` targets are known to be down."""
        exe = gateway_bin()
        fixtures = self.write_fixtures(name, endpoints, federated)
        port = free_port()
        env = self.base_env(fixtures, port, extra_env)
        proc = ManagedProcess(f"gateway[{name}]", [str(exe)], env,
                              self.log_dir / f"gateway-{name}-{port}.log")
        gw = Gateway(name=name, port=port, fixtures_dir=fixtures, process=proc,
                     env={k: v for k, v in env.items() if k.startswith("GATEWAY__")})
        self.started.append(gw)
        proc.start()
        wait_http_ok(f"{gw.url}/health", proc, GATEWAY_READY_SECS)
        self._wait_targets_healthy(gw, expect_unhealthy)
        return gw

    @staticmethod
    def _wait_targets_healthy(gw: Gateway, expect_unhealthy: int) -> None:
        """Best effort: wait (bounded) until /health/detailed reports at most
        `expect_unhealthy` unhealthy targets.

        The shape of /health/detailed is checked by its own test; here a body that
        cannot be read just ends the wait.
        """
        deadline = time.monotonic() + TARGETS_HEALTHY_SECS
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{gw.url}/health/detailed", timeout=2.0)
                if response.status_code != 200 or _unhealthy_marks(response.json()) <= expect_unhealthy:
                    return
            except (httpx.HTTPError, ValueError):
                return
            time.sleep(0.2)

    def stop_all(self) -> None:
        for gw in reversed(self.started):
            gw.process.stop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    explicit = os.environ.get("IGW_TEST_LOG_DIR")
    if explicit:
        path = Path(explicit)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def llmocks(log_dir: Path):
    factory = LlmockFactory(log_dir)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def gateways(log_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    gateway_bin()  # fail the first test that needs it, clearly, if it is missing
    factory = GatewayFactory(log_dir, tmp_path_factory.mktemp("gateway"))
    try:
        yield factory
    finally:
        factory.stop_all()


# The default topology, shared by most modules: one healthy llmock behind the
# gateway for a chat model and an embeddings model, both in cluster "local",
# framework "llmock".
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"


def llmock_text(model: str) -> str:
    """What llmock (`--response-style static`) answers to a chat request."""
    return f"Mock response from {model}."


@pytest.fixture(scope="session")
def basic_llmock(llmocks: LlmockFactory) -> Llmock:
    return llmocks.start("basic")


@pytest.fixture(scope="session")
def basic_gateway(gateways: GatewayFactory, basic_llmock: Llmock) -> Gateway:
    return gateways.start("basic", [
        endpoint(1, "local-llmock-chat", CHAT_MODEL, basic_llmock.url),
        endpoint(2, "local-llmock-embed", EMBED_MODEL, basic_llmock.url),
    ])


@pytest.fixture
def client(basic_gateway: Gateway) -> openai.OpenAI:
    return basic_gateway.client()


@pytest.fixture
def fresh_basic_llmock(basic_llmock: Llmock) -> Llmock:
    """The shared llmock with an empty journal and no queued behaviour."""
    basic_llmock.reset()
    return basic_llmock


# --------------------------------------------------------------------------- reports


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """On a failed test, attach the logs of the gateways and llmocks it used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    seen: set[int] = set()
    for value in getattr(item, "funcargs", {}).values():
        for obj in _processes_in(value):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            report.sections.append((f"{obj.name} log ({obj.log_path})", obj.log()))


@dataclass
class Topology:
    """A gateway and the llmocks behind it, as a module's fixture returns them."""

    gateway: Gateway
    mocks: dict[str, Llmock]


def _processes_in(value: Any) -> list[ManagedProcess]:
    if isinstance(value, Topology):
        return [value.gateway.process, *(m.process for m in value.mocks.values())]
    if isinstance(value, (Gateway, Llmock)):
        return [value.process]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _processes_in(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _processes_in(v)]
    return []
