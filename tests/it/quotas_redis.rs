//! Quotas in Redis mode, against a real Redis: the script's math (counts add up across
//! replicas, keys expire at their window's end, lost keys are seeded, the shared bucket),
//! two gateway instances on one Redis holding a shared daily limit and a shared rate, an
//! admin change on one instance enforced by the other at once, and a private Redis killed
//! and restarted under a running gateway.
//!
//! Needs `REDIS_TEST_URL` (e.g. redis://127.0.0.1:6379; each test uses its own key prefix)
//! and, for the kill test, `redis-server` on the PATH; without them each test prints
//! "NOT RUN on Redis: ..." and passes.
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use inference_gateway::config::{nz, Millis, Settings};
use inference_gateway::quota::math::Window;
use inference_gateway::quota::shared::Verdict;
use inference_gateway::quota::{Kind, Limits, QuotaRedis, Subject, SubjectState};
use inference_gateway::store::now_ms;
use serde_json::{json, Value};

/// `REDIS_TEST_URL` when set and answering; else says loudly that the test did not run.
async fn redis_url(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("REDIS_TEST_URL") else {
        eprintln!("NOT RUN on Redis: {test}: REDIS_TEST_URL is not set");
        return None;
    };
    match actix_rt::time::timeout(Duration::from_secs(3), ping(&url)).await {
        Ok(true) => Some(url),
        _ => {
            eprintln!("NOT RUN on Redis: {test}: Redis at REDIS_TEST_URL does not answer");
            None
        }
    }
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn prefix() -> String {
    format!("igw-test-{}:", uuid::Uuid::new_v4().simple())
}

/// Stops the replicas' sync tasks (so nothing re-creates keys), then deletes the keys.
async fn stop_all(url: &str, prefix: &str, gws: Vec<TestGateway>) {
    for gw in gws {
        if let Some(redis) = gw.quotas.redis() {
            redis.shutdown(&gw.quotas.live()).await;
        }
        gw.stop().await;
    }
    // A sync round already under way ends within its timeout.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    cleanup(url, prefix).await;
}

/// Deletes every key under a test's prefix (the month keys would live until the month's
/// end otherwise).
async fn cleanup(url: &str, prefix: &str) {
    let mut conn = raw(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

fn quota_settings() -> inference_gateway::config::Quotas {
    Settings::load_from(None, None, Vec::new()).unwrap().quotas
}

fn shared(url: &str, prefix: &str) -> QuotaRedis {
    QuotaRedis::new(
        url,
        prefix,
        &quota_settings(),
        prometheus::IntGauge::new("up", "up").unwrap(),
        prometheus::IntCounter::new("fallback", "fallback").unwrap(),
        inference_gateway::logging::discard(),
    )
    .unwrap()
}

fn open() -> Limits {
    Limits {
        requests_per_second: 0.0,
        burst: 0,
        max_in_flight: 0,
        tokens_per_minute: 0,
        requests_per_day: 0,
        tokens_per_day: 0,
        tokens_per_month: 0,
        max_batches: 0,
    }
}

fn state(name: &str, limits: Limits) -> Arc<SubjectState> {
    let s = Arc::new(SubjectState::new(
        Subject::new(Kind::User, name),
        limits,
        now_ms(),
    ));
    s.enable_shared();
    s
}

async fn hget(conn: &mut redis::aio::MultiplexedConnection, key: &str, field: &str) -> u64 {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async::<Option<u64>>(conn)
        .await
        .unwrap()
        .unwrap_or(0)
}

#[actix_rt::test]
async fn script_counts_add_up_across_replicas_and_keys_expire_at_window_end() {
    let Some(url) =
        redis_url("script_counts_add_up_across_replicas_and_keys_expire_at_window_end").await
    else {
        return;
    };
    let prefix = prefix();
    let (a, b) = (shared(&url, &prefix), shared(&url, &prefix));
    let (sa, sb) = (state("carol", open()), state("carol", open()));
    let now = now_ms();
    for _ in 0..3 {
        sa.count_request(now);
    }
    sa.charge_tokens(now, 50);
    sb.count_request(now);
    sb.charge_tokens(now, 7);
    a.sync(&[Arc::clone(&sa)]).await.unwrap();
    b.sync(&[Arc::clone(&sb)]).await.unwrap();
    a.sync(&[Arc::clone(&sa)]).await.unwrap();
    let subject = Subject::new(Kind::User, "carol");
    let mut conn = raw(&url).await;
    for w in [Window::Minute, Window::Day, Window::Month] {
        let key = a.window_key(&subject, w, w.start(now));
        assert_eq!(hget(&mut conn, &key, "r").await, 4, "{key}");
        assert_eq!(hget(&mut conn, &key, "t").await, 57, "{key}");
        let expires: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(expires, w.end(now), "{key} expires at its window's end");
    }
    // Both replicas see the shared totals, and nothing is left to push.
    for s in [&sa, &sb] {
        b.sync(std::slice::from_ref(s)).await.unwrap();
        let snap = s.snapshot(now_ms());
        assert_eq!((snap.day.requests, snap.day.tokens), (4, 57));
        assert!(s.unsynced().is_empty());
    }
    // Redis loses the keys (restarted empty): the next push seeds them from what the
    // replica knew, plus what it counted meanwhile.
    let day_key = a.window_key(&subject, Window::Day, Window::Day.start(now));
    redis::cmd("DEL")
        .arg(&day_key)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    sa.count_request(now_ms());
    a.sync(&[Arc::clone(&sa)]).await.unwrap();
    assert_eq!(hget(&mut conn, &day_key, "r").await, 5);
    assert_eq!(hget(&mut conn, &day_key, "t").await, 57);
    // Usage as the admin API reads it.
    let [_, day, month] = b.usage(&subject).await.unwrap();
    assert_eq!((day.requests, month.requests), (5, 5));
    cleanup(&url, &prefix).await;
}

#[actix_rt::test]
async fn redis_admission_holds_the_daily_budget_and_the_shared_bucket() {
    let Some(url) = redis_url("redis_admission_holds_the_daily_budget_and_the_shared_bucket").await
    else {
        return;
    };
    let prefix = prefix();
    let (a, b) = (shared(&url, &prefix), shared(&url, &prefix));
    let limits = Limits {
        requests_per_day: 3,
        ..open()
    };
    let (sa, sb) = (state("dave", limits), state("dave", limits));
    assert_eq!(a.admit(&sa).await.unwrap(), Verdict::Admitted);
    assert_eq!(b.admit(&sb).await.unwrap(), Verdict::Admitted);
    assert_eq!(a.admit(&sa).await.unwrap(), Verdict::Admitted);
    let Verdict::Refused(d) = b.admit(&sb).await.unwrap() else {
        panic!("the fourth request of the day is refused");
    };
    assert!(d.quota, "{d:?}");
    assert_eq!(sb.snapshot(now_ms()).day.requests, 3, "b sees a's requests");
    // The bucket: 2 requests of burst at 1 per second, shared.
    let limits = Limits {
        requests_per_second: 1.0,
        burst: 2,
        ..open()
    };
    let (sa, sb) = (state("erin", limits), state("erin", limits));
    assert_eq!(a.admit(&sa).await.unwrap(), Verdict::Admitted);
    assert_eq!(b.admit(&sb).await.unwrap(), Verdict::Admitted);
    let Verdict::Refused(d) = a.admit(&sa).await.unwrap() else {
        panic!("the bucket is shared and empty");
    };
    assert!(!d.quota);
    assert!(
        d.retry_after_ms > 0 && d.retry_after_ms <= 1000,
        "{}",
        d.retry_after_ms
    );
    // The bucket's key expires once it would be full again (burst / rate + 1 s).
    let bucket = a.bucket_key(&Subject::new(Kind::User, "erin"));
    let mut conn = raw(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&bucket)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 3000,
        "the bucket expires once full: {ttl}"
    );
    cleanup(&url, &prefix).await;
}

struct Reply {
    status: u16,
}

async fn send(gw: &TestGateway) -> Reply {
    let res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&chat("llama"))
        .await
        .unwrap();
    Reply {
        status: res.status().as_u16(),
    }
}

async fn admin(gw: &TestGateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = gw.client();
    let req = match method {
        "PUT" => client.put(gw.at(path)),
        "POST" => client.post(gw.at(path)),
        _ => client.get(gw.at(path)),
    }
    .bearer_auth(ADMIN_KEY);
    let mut res = match body {
        Some(b) => req.send_json(&b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = res.body().limit(1 << 20).await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn metrics(gw: &TestGateway) -> String {
    let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
    String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
}

fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// A gateway replica on `mock` sharing Redis at `url` under `prefix`.
fn replica(mock: &MockUpstream, keys: &tempfile::TempDir, url: &str, prefix: &str) -> TestApp {
    let key_file = admin_key_file(keys.path());
    let (url, prefix) = (url.to_string(), prefix.to_string());
    TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .settings(move |s| {
            s.auth.admin_key_env = String::new();
            s.auth.admin_key_file = key_file.into();
            s.redis.url = url;
            s.redis.key_prefix = prefix;
            s.quotas.redis_sync_ms = Millis::new(nz(20));
        })
}

/// Sends `count` requests through `gw`, `concurrency` at a time, stopping at `until`;
/// returns how many were admitted (200) and refused (429).
async fn hammer(
    gw: &TestGateway,
    count: usize,
    concurrency: usize,
    until: Instant,
) -> (usize, usize) {
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let results = futures_util::future::join_all((0..concurrency).map(|_| async {
        let (mut ok, mut limited) = (0, 0);
        while Instant::now() < until
            && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count
        {
            match send(gw).await.status {
                200 => ok += 1,
                429 => limited += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        (ok, limited)
    }))
    .await;
    results
        .into_iter()
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// No per-user rate or concurrency limit.
fn no_rate(s: &mut Settings) {
    s.quotas.user.requests_per_second = 0.0;
    s.quotas.user.burst = 0;
    s.quotas.user.max_in_flight = 0;
}

#[actix_rt::test]
async fn two_replicas_hold_a_shared_daily_limit_within_ten_percent() {
    let Some(url) = redis_url("two_replicas_hold_a_shared_daily_limit_within_ten_percent").await
    else {
        return;
    };
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let prefix = prefix();
    let app = || {
        replica(&mock, &keys, &url, &prefix).settings(|s| {
            no_rate(s);
            s.quotas.user.requests_per_day = 200;
        })
    };
    let a = app().start().await;
    let b = app().start().await;
    let until = Instant::now() + Duration::from_secs(30);
    let ((ok_a, no_a), (ok_b, no_b)) =
        futures_util::future::join(hammer(&a, 300, 8, until), hammer(&b, 300, 8, until)).await;
    let admitted = ok_a + ok_b;
    eprintln!(
        "admitted a {ok_a} + b {ok_b} = {admitted}; refused {}",
        no_a + no_b
    );
    assert!(
        (200..=220).contains(&admitted),
        "shared limit 200 held within 10%: {admitted} admitted"
    );
    // How the 200 split is not asserted: it depends on which replica leased first and on
    // scheduling (192/8 and 200/0 have been seen on a loaded machine). Either way both sent
    // 300, so the sum above holding means each was refused by the shared count.
    // The admin API of either replica shows the shared usage.
    let (status, body) = admin(&b, "GET", "/admin/quota/user:anonymous", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["usage"]["source"], "redis", "{body}");
    assert_eq!(body["usage"]["day"]["requests"], admitted as u64, "{body}");
    stop_all(&url, &prefix, vec![a, b]).await;
}

#[actix_rt::test]
async fn two_replicas_hold_a_shared_request_rate_within_ten_percent() {
    let Some(url) = redis_url("two_replicas_hold_a_shared_request_rate_within_ten_percent").await
    else {
        return;
    };
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let prefix = prefix();
    let app = || {
        replica(&mock, &keys, &url, &prefix).settings(|s| {
            s.quotas.user.requests_per_second = 40.0;
            s.quotas.user.burst = 20;
            s.quotas.user.max_in_flight = 0;
        })
    };
    let a = app().start().await;
    let b = app().start().await;
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(3);
    let ((ok_a, no_a), (ok_b, no_b)) =
        futures_util::future::join(hammer(&a, 20_000, 6, until), hammer(&b, 20_000, 6, until))
            .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let admitted = (ok_a + ok_b) as f64;
    // What one bucket of 40/s with a burst of 20 allows over the run.
    let allowed = 20.0 + 40.0 * elapsed;
    let offered = admitted + (no_a + no_b) as f64;
    eprintln!("admitted a {ok_a} + b {ok_b} = {admitted} of {offered} in {elapsed:.2} s; bucket allows {allowed:.0}");
    assert!(
        admitted <= allowed * 1.1,
        "shared rate held within 10%: {admitted} > {allowed:.0}"
    );
    // A loaded machine may not offer enough requests to use the rate; only then is the
    // lower bound meaningless.
    if offered >= allowed * 1.5 {
        assert!(
            admitted >= allowed * 0.9,
            "the shared rate is not undercut by more than 10%: {admitted} < {allowed:.0}"
        );
    } else {
        eprintln!("only {offered} requests offered: lower bound not checked");
    }
    assert!(
        ok_a > 10 && ok_b > 10,
        "both replicas served: {ok_a} {ok_b}"
    );
    stop_all(&url, &prefix, vec![a, b]).await;
}

#[actix_rt::test]
async fn an_override_put_on_one_replica_is_enforced_by_the_other_at_once() {
    let Some(url) =
        redis_url("an_override_put_on_one_replica_is_enforced_by_the_other_at_once").await
    else {
        return;
    };
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let prefix = prefix();
    let a = replica(&mock, &keys, &url, &prefix)
        .settings(no_rate)
        .start()
        .await;
    let b = replica(&mock, &keys, &url, &prefix)
        .settings(no_rate)
        .start()
        .await;
    assert_eq!(send(&a).await.status, 200);
    assert_eq!(send(&b).await.status, 200);
    // Let both subscribers connect (they listen from start-up).
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = admin(
        &a,
        "PUT",
        "/admin/quota/user:anonymous",
        Some(json!({"requests_per_day": 3})),
    )
    .await;
    assert_eq!(status, 200);
    let user = Subject::new(Kind::User, "anonymous");
    let deadline = Instant::now() + Duration::from_secs(2);
    while b.quotas.get(&user).unwrap().limits().requests_per_day != 3 {
        assert!(Instant::now() < deadline, "b never applied the override");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    // Two used of three (one on each replica): b admits one more, then refuses.
    assert_eq!(send(&b).await.status, 200);
    assert_eq!(send(&b).await.status, 429);
    assert_eq!(send(&a).await.status, 429, "a sees b's request");
    // A reset on b frees both.
    let (status, body) = admin(&b, "POST", "/admin/quota/user:anonymous/reset", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["day"]["requests"], 0, "{body}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.quotas.get(&user).unwrap().snapshot(now_ms()).day.requests != 0 {
        assert!(Instant::now() < deadline, "a never applied the reset");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(send(&a).await.status, 200);
    stop_all(&url, &prefix, vec![a, b]).await;
}

/// A private `redis-server` on a free loopback port (never the shared one).
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn spawn(port: u16) -> std::io::Result<Child> {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    async fn start(port: u16) -> Option<PrivateRedis> {
        let child = Self::spawn(port).ok()?;
        let r = PrivateRedis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ping(&r.url()).await {
            if Instant::now() > deadline {
                return None;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn redis_killed_and_restarted_falls_back_then_pushes_local_usage() {
    const TEST: &str = "redis_killed_and_restarted_falls_back_then_pushes_local_usage";
    if redis_url(TEST).await.is_none() {
        return;
    }
    let port = PrivateRedis::free_port();
    let Some(mut server) = PrivateRedis::start(port).await else {
        eprintln!("NOT RUN on Redis: {TEST}: no redis-server could be started");
        return;
    };
    let url = server.url();
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let prefix = prefix();
    let gw = replica(&mock, &keys, &url, &prefix)
        .settings(|s| {
            no_rate(s);
            s.quotas.user.requests_per_day = 1000;
            s.quotas.redis_timeout_ms = Millis::new(nz(100));
            // Sync rounds further apart than a failing push can last (the timeout): with
            // the helper's 20 ms, on a loaded machine a push to the dead server was nearly
            // always in flight, holding the counts, and the check below never saw them back.
            s.quotas.redis_sync_ms = Millis::new(nz(250));
        })
        .start()
        .await;
    let user = Subject::new(Kind::User, "anonymous");
    let day_key = format!(
        "{prefix}quota:user:anonymous:day:{}",
        Window::Day.start(now_ms())
    );
    for _ in 0..5 {
        assert_eq!(send(&gw).await.status, 200);
    }
    let mut conn = raw(&url).await;
    until("the first five requests in redis", async || {
        hget(&mut conn, &day_key, "r").await == 5
    })
    .await;
    drop(conn);
    server.kill();
    until("the replica noticing redis is gone", async || {
        metric(&metrics(&gw).await, "gateway_quota_redis_up") == Some(0)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(send(&gw).await.status, 200, "served on local limits");
    }
    let text = metrics(&gw).await;
    assert!(
        metric(&text, "gateway_quota_redis_fallback_total").unwrap_or(0) >= 5,
        "fallback counted"
    );
    // A push attempt in flight holds the counts until it fails and gives them back.
    until("the five fallback requests unsynced", async || {
        gw.quotas.get(&user).unwrap().unsynced().day.requests == 5
    })
    .await;
    // The same port again, empty: the replica seeds the day from what it knew and pushes
    // what it counted meanwhile.
    let _server = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = PrivateRedis::start(port).await {
                break s;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
        }
    };
    let mut conn = raw(&url).await;
    until("the local usage pushed", async || {
        hget(&mut conn, &day_key, "r").await == 10
    })
    .await;
    until("the gauge back up", async || {
        metric(&metrics(&gw).await, "gateway_quota_redis_up") == Some(1)
    })
    .await;
    assert_eq!(send(&gw).await.status, 200);
    until("counting resumed", async || {
        hget(&mut conn, &day_key, "r").await == 11
    })
    .await;
    let logs = gw.logs();
    assert_eq!(
        logs.matches("redis unreachable: quotas fall back").count(),
        1,
        "logged once per transition"
    );
    assert_eq!(logs.matches("redis is back").count(), 1);
    gw.stop().await;
}
