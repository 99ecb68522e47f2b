"""`inference-gateway check-config` validates config and fixtures without serving."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading

from conftest import endpoint, free_port, gateway_bin

TIMEOUT = 30


def run_check(gateways, env_extra: dict[str, str], endpoints=None, raw_endpoints: str | None = None):
    fixtures = gateways.write_fixtures("check", endpoints or [
        endpoint(1, "local-llmock-a", "gpt-4o-mini", "http://127.0.0.1:9"),
    ])
    if raw_endpoints is not None:
        (fixtures / "endpoints.json").write_text(raw_endpoints)
    # Bind elsewhere than the endpoints' (unused) port 9: check-config rejects a
    # target that points at the gateway itself.
    env = gateways.base_env(fixtures, free_port(), env_extra)
    return subprocess.run([str(gateway_bin()), "check-config"], env=env, capture_output=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, text=True)


def test_valid_config_passes(gateways):
    result = run_check(gateways, {})
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_value_names_the_key(gateways):
    result = run_check(gateways, {"GATEWAY__UPSTREAM__MAX_ATTEMPTS": "not-a-number"})
    output = (result.stdout + result.stderr).lower()
    assert result.returncode != 0, output
    assert "max_attempts" in output, output


def test_broken_fixtures_fail(gateways):
    result = run_check(gateways, {}, raw_endpoints='[{"model": "resource_server.endpoint", "pk": 1,')
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "endpoints.json" in output, output


def test_missing_fixture_field_names_it(gateways):
    row = endpoint(1, "local-llmock-a", "gpt-4o-mini", "http://127.0.0.1:9")
    del row["fields"]["base_url"]
    result = run_check(gateways, {}, raw_endpoints=json.dumps([row]))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "base_url" in output, output


def test_it_says_whether_first_path_batches_can_be_used(gateways):
    """FIRST's path batches (`input_file_path`) need `batches.allowed_roots`: say so."""
    result = run_check(gateways, {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "batches.allowed_roots is empty" in result.stdout, result.stdout
    result = run_check(gateways, {"GATEWAY__BATCHES__ALLOWED_ROOTS": "/tmp"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "path batches: allowed under /tmp" in result.stdout, result.stdout


def test_a_missing_api_key_variable_is_a_warning_as_when_serving(gateways):
    row = endpoint(1, "local-llmock-a", "gpt-4o-mini", "http://127.0.0.1:9")
    row["fields"]["api_key_env_name"] = "IGW_TEST_SURELY_UNSET_KEY"
    result = run_check(gateways, {}, raw_endpoints=json.dumps([row]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IGW_TEST_SURELY_UNSET_KEY is not set" in result.stdout, result.stdout
    assert "warnings: 1" in result.stdout, result.stdout
    result = run_check(gateways, {})
    assert "warnings: 0" in result.stdout, result.stdout


def test_only_the_fixture_files_found_are_listed_as_read(gateways):
    result = run_check(gateways, {})
    assert result.returncode == 0, result.stdout + result.stderr
    read = next(line for line in result.stdout.splitlines() if line.startswith("fixtures: ok"))
    assert "endpoints.json" in read, read
    assert "federated_endpoints.json" not in read and "clusters.json" not in read, read
    assert "not found (optional):" in result.stdout, result.stdout


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        status = 503 if self.path.startswith("/sick") else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


def test_probe_says_reachable_refused_timeout_or_the_status(gateways):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # Accepts connections (the kernel's backlog) but never answers: a frozen server.
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(8)
    try:
        up = f"http://127.0.0.1:{server.server_address[1]}"
        sick = endpoint(3, "sick", "m3", up)
        sick["fields"]["health_path"] = "/sick/health"
        rows = [
            endpoint(1, "up", "m1", up),
            endpoint(2, "down", "m2", f"http://127.0.0.1:{free_port()}"),
            sick,
            endpoint(4, "frozen", "m4", f"http://127.0.0.1:{frozen.getsockname()[1]}"),
        ]
        fixtures = gateways.write_fixtures("probe", rows)
        env = gateways.base_env(fixtures, free_port(), {"GATEWAY__HEALTH__TIMEOUT_MS": "500"})
        result = subprocess.run([str(gateway_bin()), "check-config", "--probe"], env=env,
                                capture_output=True, timeout=TIMEOUT,
                                stdin=subprocess.DEVNULL, text=True)
    finally:
        server.shutdown()
        server.server_close()
        frozen.close()
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    lines = {line.split('"')[1]: line for line in out.splitlines()
             if line.startswith('  target "')}
    assert "reachable (HTTP 200 on GET /health)" in lines["up"], out
    assert "refused" in lines["down"], out
    assert "HTTP 503 on GET /sick/health" in lines["sick"], out
    assert "timeout (no answer within 0.5 s)" in lines["frozen"], out
