"""The admin console (/admin/ui) in a real browser: Debian's chromium driven headless by
chromium-driver through Selenium. Sign in (a wrong key and a user key are refused), the
overview, usage charts after 50 requests, keys (create, list, revoke, refused by the API),
a quota override, maintenance (and /v1/models changing), every user's batches (cancel one),
and no error in the browser console. A screenshot of each page is saved under the test's
temp dir and its path printed.

Without chromium and chromium-driver the module is skipped, except under CI (CI=true),
where that is a failure: .ci/run installs them."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import LOOPBACK, ManagedProcess, endpoint, free_port, wait_http_ok
from test_operations import mock_upstream_bin

ADMIN_KEY = "console-suite-admin-key-0123456789"
MODEL = "console-model"
CLUSTER = "sophia"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
WAIT_SECS = 15.0


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() or shutil.which(path)):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (tests/python/requirements.txt)"
    return None


MISSING = _browser_missing()
if MISSING and os.environ.get("CI"):
    pytest.fail(f"the admin console tests need a browser under CI: {MISSING}", pytrace=False)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"NOT RUN: {MISSING}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def slow_upstream(log_dir):
    """mock-upstream answering every request after 100 ms (so a batch can be caught
    running)."""
    port = free_port()
    proc = ManagedProcess("mock-upstream[console]",
                          [str(mock_upstream_bin()), "--port", str(port), "--latency-ms", "100"],
                          dict(os.environ), log_dir / f"mock-upstream-console-{port}.log")
    proc.start()
    wait_http_ok(f"http://{LOOPBACK}:{port}/health", proc, 20.0)
    yield f"http://{LOOPBACK}:{port}"
    proc.stop()


@pytest.fixture(scope="module")
def gw(gateways, slow_upstream):
    return gateways.start("console", [
        endpoint(1, f"{CLUSTER}-mock", MODEL, slow_upstream, cluster=CLUSTER),
    ], extra_env={
        "GATEWAY__AUTH__MODE": "required",
        "GATEWAY__AUTH__ADMIN_KEY_ENV": "IGW_CONSOLE_ADMIN_KEY",
        "IGW_CONSOLE_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY__LOGGING__FLUSH_INTERVAL_MS": "100",
        "GATEWAY__BATCHES__POLL_INTERVAL_MS": "50",
        "GATEWAY__BATCHES__CONCURRENCY_PER_BATCH": "1",
    })


def admin(gw, method: str, path: str, body=None) -> httpx.Response:
    return httpx.request(method, f"{gw.url}{path}", json=body, timeout=10.0,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def make_key(gw, user: str) -> str:
    r = admin(gw, "POST", "/admin/keys", {"user": user})
    assert r.status_code == 201, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def user_key(gw) -> str:
    return make_key(gw, "console-user")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


# --------------------------------------------------------------------------- helpers


def wait_for(what: str, check, secs: float = WAIT_SECS):
    """Polls `check` (bounded) until it returns something truthy, and returns that."""
    deadline = time.monotonic() + secs
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # a stale element while the page redraws: try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, element_id)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def console_errors(driver) -> list[str]:
    """Browser console entries at SEVERE level since the last call (the log is drained)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shot(driver, shots: Path, name: str) -> Path:
    path = shots / f"console-{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def sign_in(driver, gw, key: str) -> None:
    driver.get(f"{gw.url}/admin/ui")
    field = wait_for("the sign-in form", lambda: by_id(driver, "signin-key"))
    field.clear()
    field.send_keys(key)
    by_id(driver, "signin").submit()


def show(driver, view: str) -> None:
    driver.execute_script("location.hash = arguments[0]", view)
    wait_for(f"the {view} view", lambda: by_id(driver, f"{view}-view").is_displayed())


# --------------------------------------------------------------------------- tests


def test_sign_in_refuses_wrong_and_user_keys_and_keeps_the_key_in_session_storage(
        browser, gw, user_key, shots):
    for key, words in (("not-a-key-at-all-0000000000", "not an admin key"),
                       (user_key, "not an admin key")):
        sign_in(browser, gw, key)
        message = wait_for("the refusal", lambda: by_id(browser, "signin-error").is_displayed()
                           and by_id(browser, "signin-error").text)
        assert words in message, message
        assert not by_id(browser, "nav").is_displayed()
        assert browser.execute_script("return sessionStorage.length") == 0
    shot(browser, shots, "signin-refused")
    # The refusals are failed loads (401, 403) in the console; nothing else may be there.
    refused = console_errors(browser)
    assert all(("401" in m or "403" in m) for m in refused), refused

    sign_in(browser, gw, ADMIN_KEY)
    wait_for("the navigation", lambda: by_id(browser, "nav").is_displayed())
    assert browser.execute_script("return sessionStorage.getItem('igw-admin-key')") == ADMIN_KEY
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.execute_script("return document.cookie") == ""
    assert ADMIN_KEY not in browser.current_url
    assert console_errors(browser) == []


def test_overview_shows_models_targets_and_clusters(browser, gw, user_key, shots):
    r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=10.0,
                   headers={"Authorization": f"Bearer {user_key}"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    show(browser, "overview")
    row = wait_for("the model row", lambda: css(browser, f'#models-table tr[data-model="{MODEL}"]'))[0]
    assert "running" in row.text, row.text
    target = wait_for("the target row", lambda: css(browser, f'#targets-table tr[data-target="{CLUSTER}-mock"]'))[0]
    assert "healthy" in target.text and "closed" in target.text, target.text
    wait_for("a latency", lambda: " ms" in css(browser, f'#targets-table tr[data-target="{CLUSTER}-mock"]')[0].text)
    cluster = wait_for("the cluster row", lambda: css(browser, f'#clusters-table tr[data-cluster="{CLUSTER}"]'))[0]
    assert "up" in cluster.text, cluster.text
    shot(browser, shots, "overview")
    assert console_errors(browser) == []


def test_usage_charts_and_totals_show_fifty_requests(browser, gw, shots):
    key = make_key(gw, "usage-user")

    def one(i: int) -> int:
        return httpx.post(f"{gw.url}/v1/chat/completions", timeout=20.0,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
                          ).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(one, range(50)))
    assert codes == [200] * 50, codes

    show(browser, "usage")
    user = by_id(browser, "usage-user")
    user.clear()
    user.send_keys("usage-user")

    def shown() -> bool:
        by_id(browser, "usage-form").submit()
        time.sleep(0.2)
        return by_id(browser, "total-requests").text.startswith("50")

    wait_for("50 requests in the totals (the log is written every 100 ms)", shown)
    bars = css(browser, '#chart-requests rect[data-field="requests"]')
    assert len(bars) == 60, "an hour of minutes"
    assert sum(int(b.get_attribute("data-value")) for b in bars) == 50
    tokens = css(browser, '#chart-tokens rect[data-field="total_tokens"]')
    assert sum(int(b.get_attribute("data-value")) for b in tokens) > 0
    total_tokens = int(by_id(browser, "total-tokens").text.split()[0].replace(",", ""))
    assert total_tokens == sum(int(b.get_attribute("data-value")) for b in tokens)
    row = css(browser, f'#usage-models tr[data-model="{MODEL}"]')[0]
    assert "50" in row.text, row.text
    # The same numbers as the API a script would call.
    api = admin(gw, "GET", "/admin/usage?bucket=minute&user=usage-user").json()
    assert api["totals"]["requests"] == 50 and api["totals"]["total_tokens"] == total_tokens
    user.clear()
    by_id(browser, "usage-form").submit()
    wait_for("every user's totals", lambda: int(by_id(browser, "total-requests").text.split()[0]) > 50)
    shot(browser, shots, "usage")
    assert console_errors(browser) == []


def test_keys_are_created_listed_and_revoked(browser, gw, shots):
    show(browser, "keys")
    by_id(browser, "key-user").send_keys("temp-user")
    by_id(browser, "key-org").send_keys("physics")
    by_id(browser, "key-form").submit()
    secret_box = wait_for("the new key", lambda: by_id(browser, "key-created").is_displayed()
                          and by_id(browser, "key-secret"))
    secret = secret_box.get_attribute("value")
    assert secret.startswith("igw_"), secret
    by_id(browser, "key-copy").click()
    assert by_id(browser, "key-copy").text in ("Copied", "Selected: press Ctrl+C")
    listed = wait_for("the key in the list", lambda: [r for r in css(browser, "#keys-table tr[data-key]")
                                                      if "temp-user" in r.text])
    row = listed[0]
    key_id = row.get_attribute("data-key")
    assert "physics" in row.text and "active" in row.text and secret not in row.text
    assert httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {secret}"},
                     timeout=10.0).status_code == 200
    shot(browser, shots, "keys")

    revoke = css(browser, f'button[data-revoke="{key_id}"]')[0]
    revoke.click()
    assert revoke.text == "Confirm revoke"
    revoke.click()
    wait_for("the key revoked", lambda: "revoked" in css(browser, f'#keys-table tr[data-key="{key_id}"]')[0].text)
    r = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10.0)
    assert r.status_code == 401, r.text
    assert console_errors(browser) == []


def test_a_quota_override_is_set_shown_and_removed(browser, gw, user_key, shots):
    show(browser, "quotas")
    subject = by_id(browser, "quota-subject")
    subject.clear()
    subject.send_keys("user:console-user")
    from selenium.webdriver.common.by import By
    field = browser.find_element(By.CSS_SELECTOR, '#quota-form [data-limit="tokens_per_day"]')
    field.clear()
    field.send_keys("123456")
    by_id(browser, "quota-form").submit()
    row = wait_for("the override in the table", lambda: [
        r for r in css(browser, '#quotas-table tr[data-subject="user:console-user"]')
        if "tokens_per_day = 123456" in r.text])[0]
    assert "tokens / day" in row.text and "/ 123,456" in row.text, row.text
    api = admin(gw, "GET", "/admin/quota/user:console-user").json()
    assert api["override"]["tokens_per_day"] == 123456, api
    assert api["limits"]["tokens_per_day"] == 123456, api
    shot(browser, shots, "quotas")
    # Reset: the user's counted usage (one request, from the overview test) is forgotten.
    assert admin(gw, "GET", "/admin/quota/user:console-user").json()["usage"]["day"]["requests"] >= 1
    css(browser, 'button[data-reset="user:console-user"]')[0].click()
    wait_for("the usage reset", lambda: admin(
        gw, "GET", "/admin/quota/user:console-user").json()["usage"]["day"]["requests"] == 0)
    meter = '#quotas-table tr[data-subject="user:console-user"] [data-meter="requests / day"] .muted'
    wait_for("the reset shown", lambda: css(browser, meter)[0].text.startswith("0 "))
    by_id(browser, "quota-remove").click()
    wait_for("the override removed", lambda: "defaults" in css(
        browser, '#quotas-table tr[data-subject="user:console-user"]')[0].text)
    assert admin(gw, "GET", "/admin/quota/user:console-user").json()["override"] is None
    assert console_errors(browser) == []


def model_status(gw, key: str) -> str:
    r = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10.0)
    assert r.status_code == 200, r.text
    return next(m for m in r.json()["data"] if m["id"] == MODEL)["status"]


def test_maintenance_is_toggled_from_the_overview(browser, gw, user_key, shots):
    show(browser, "overview")
    assert model_status(gw, user_key) == "running"
    notice = wait_for("the notice field", lambda: css(browser, f'input[data-notice="{CLUSTER}"]'))[0]
    notice.send_keys("PBS upgrade until 14:00 UTC")
    css(browser, f'button[data-maintenance="{CLUSTER}"]')[0].click()
    wait_for("maintenance in the table", lambda: "PBS upgrade" in css(
        browser, f'#clusters-table tr[data-cluster="{CLUSTER}"]')[0].text)
    assert model_status(gw, user_key) == "maintenance"
    wait_for("the model in maintenance", lambda: "maintenance" in css(
        browser, f'#models-table tr[data-model="{MODEL}"]')[0].text)
    shot(browser, shots, "maintenance")
    button = wait_for("the end button", lambda: [b for b in css(browser, f'button[data-maintenance="{CLUSTER}"]')
                                                 if b.text == "End maintenance"])[0]
    button.click()
    wait_for("the cluster up again", lambda: "End maintenance" not in css(
        browser, f'#clusters-table tr[data-cluster="{CLUSTER}"]')[0].text)
    wait_for("the model running again", lambda: model_status(gw, user_key) == "running")
    assert console_errors(browser) == []


def test_every_users_batches_are_listed_and_one_is_cancelled(browser, gw, shots):
    key = make_key(gw, "batch-user")
    lines = "".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": f"l{i}"}]},
    }) + "\n" for i in range(100)).encode()
    auth = {"Authorization": f"Bearer {key}"}
    f = httpx.post(f"{gw.url}/v1/files", headers=auth, timeout=10.0,
                   files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"})
    assert f.status_code == 200, f.text
    b = httpx.post(f"{gw.url}/v1/batches", headers=auth, timeout=10.0, json={
        "input_file_id": f.json()["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    assert b.status_code == 200, b.text
    batch_id = b.json()["id"]

    show(browser, "batches")

    def listed():
        by_id(browser, "batches-form").submit()
        time.sleep(0.2)
        rows = css(browser, f'#batches-table tr[data-batch="{batch_id}"]')
        return rows and "in_progress" in rows[0].text and "batch-user" in rows[0].text and rows[0]

    wait_for("the running batch, with its owner", listed)
    shot(browser, shots, "batches")
    css(browser, f'button[data-cancel="{batch_id}"]')[0].click()

    def cancelled():
        got = httpx.get(f"{gw.url}/v1/batches/{batch_id}", headers=auth, timeout=10.0).json()
        return got["status"] in ("cancelling", "cancelled") and got

    got = wait_for("the batch cancelled", cancelled)
    assert got["request_counts"]["completed"] < 100, got
    wait_for("the cancel shown", lambda: any(
        s in css(browser, f'#batches-table tr[data-batch="{batch_id}"]')[0].text
        for s in ("cancelling", "cancelled")))
    assert console_errors(browser) == []


def test_a_signed_out_console_holds_no_key(browser, gw):
    by_id(browser, "signout").click()
    wait_for("the sign-in form", lambda: by_id(browser, "signin-view").is_displayed())
    assert browser.execute_script("return sessionStorage.length") == 0
    assert console_errors(browser) == []
