"""`inference-gateway check-config` validates config and fixtures without serving."""

from __future__ import annotations

import json
import subprocess

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
