//! Faults of a target under load, against the real binary: a target killed and restarted
//! gets its share of requests back (its half-open breaker is probed and closed even while
//! another target is healthy), and a target that stops answering (frozen, like `kill
//! -STOP`) stops getting new requests within one health interval.
use std::cell::Cell;
use std::num::NonZero;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::common::binary::{gateway_bin, spawn_binary, Binary};
use crate::common::*;
use inference_gateway::config::{nz, Seconds};
use mock_upstream::MockOptions;
use serde_json::Value;

struct Gateway {
    proc: Binary,
    _dir: tempfile::TempDir,
}

fn spawn(targets: &[T<'_>], env: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path(), targets, &[]);
    let mut cmd = Command::new(gateway_bin());
    cmd.arg("serve");
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Gateway {
        proc: spawn_binary(cmd, dir.path(), &env),
        _dir: dir,
    }
}

/// `/health/detailed` of one target.
async fn state(gw: &Gateway, slug: &str) -> Value {
    let mut res = awc::Client::default()
        .get(format!("{}/health/detailed", gw.proc.url))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == slug)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `clients` loops of chat requests until stopped; each request is abandoned after
/// `timeout` (as an SDK with a timeout does).
struct Load {
    stop: Rc<Cell<bool>>,
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, clients: usize, timeout: Duration) -> Load {
        let stop = Rc::new(Cell::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = Rc::clone(&stop);
                let url = format!("{url}/v1/chat/completions");
                actix_rt::spawn(async move {
                    let client = awc::Client::builder().timeout(timeout).finish();
                    // Bounded: the test stops it long before.
                    for _ in 0..200_000 {
                        if stop.get() {
                            break;
                        }
                        if let Ok(mut res) = client.post(&url).send_json(&chat("m")).await {
                            let _ = res.body().await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) {
        self.stop.set(true);
        for task in self.tasks {
            let _ = actix_rt::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn a_killed_and_restarted_target_gets_its_share_back_while_the_other_is_healthy() {
    let a = MockUpstream::start(Behavior::default()).await.unwrap();
    let b = MockUpstream::start(Behavior::default()).await.unwrap();
    let a_addr = a.addr();
    let gw = spawn(
        &[target("a", "m", a.url()), target("b", "m", b.url())],
        &[
            ("GATEWAY__HEALTH__PATH", "/health"),
            ("GATEWAY__HEALTH__INTERVAL_SECS", "1"),
            ("GATEWAY__HEALTH__TIMEOUT_MS", "300"),
            ("GATEWAY__BREAKER__OPEN_SECS", "2"),
            ("GATEWAY__LOGGING__LEVEL", "warning"),
        ],
    );
    gw.proc.wait_ready().await;
    let load = Load::start(&gw.proc.url, 8, Duration::from_secs(5));
    wait_until("both targets serve", Duration::from_secs(10), || {
        a.request_count() > 20 && b.request_count() > 20
    })
    .await;

    // kill: connections cut, then refused. The breaker opens; clients fail over to b.
    a.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&gw, "a").await["breaker"] != "open" {
        assert!(Instant::now() < deadline, "a's breaker never opened");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }

    // Restart on the same port.
    let a = MockUpstream::start_with_options(
        Behavior::default(),
        MockOptions {
            bind: a_addr,
            ..MockOptions::default()
        },
    )
    .await
    .unwrap();
    // Open 2 s, then probed within one health interval (1 s): a second of traffic with a
    // fair share well before 2 + 1 + slack seconds.
    let deadline = Instant::now() + Duration::from_secs(8);
    let (mut last_a, mut last_b) = (a.request_count(), b.request_count());
    loop {
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        let (now_a, now_b) = (a.request_count(), b.request_count());
        let (da, db) = (now_a - last_a, now_b - last_b);
        if da + db >= 20 && da * 10 >= (da + db) * 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted target served {da} of the last {} requests; its state: {}",
            da + db,
            state(&gw, "a").await
        );
        (last_a, last_b) = (now_a, now_b);
    }
    assert_eq!(state(&gw, "a").await["breaker"], "closed");
    load.stop().await;
}

#[actix_rt::test]
async fn a_target_whose_health_check_times_out_gets_no_new_requests_within_one_interval() {
    let a = MockUpstream::start(Behavior::default()).await.unwrap();
    let b = MockUpstream::start(Behavior::default()).await.unwrap();
    // The default response timeout (600 s): requests on a frozen target just hang.
    let gw = spawn(
        &[target("a", "m", a.url()), target("b", "m", b.url())],
        &[
            ("GATEWAY__HEALTH__PATH", "/health"),
            ("GATEWAY__HEALTH__INTERVAL_SECS", "2"),
            ("GATEWAY__HEALTH__TIMEOUT_MS", "300"),
            ("GATEWAY__LOGGING__LEVEL", "warning"),
        ],
    );
    gw.proc.wait_ready().await;
    // Clients give up after 500 ms, so requests stuck on the frozen target do not pile up
    // there (a pile would steer new requests away by in-flight count alone).
    let load = Load::start(&gw.proc.url, 8, Duration::from_millis(500));
    wait_until("both targets serve", Duration::from_secs(10), || {
        a.request_count() > 20 && b.request_count() > 20
    })
    .await;

    // Freeze a just after it answered a health check: the next check comes one interval
    // later and times out 300 ms after that.
    let checks = a.health_checks();
    wait_until("a health check", Duration::from_secs(5), || {
        a.health_checks() > checks
    })
    .await;
    a.freeze();
    let frozen = Instant::now();
    let window_start = frozen + Duration::from_millis(2000 + 300 + 500);
    actix_rt::time::sleep_until(window_start.into()).await;
    let (a0, b0) = (a.request_count(), b.request_count());
    let detail = state(&gw, "a").await;
    actix_rt::time::sleep(Duration::from_millis(1000)).await;
    let (a1, b1) = (a.request_count(), b.request_count());
    assert!(b1 > b0, "b kept serving");
    assert_eq!(
        a1 - a0,
        0,
        "the frozen target still got new requests {:?} after its health check timed out; its state then: {detail}",
        window_start - frozen
    );
    assert_eq!(detail["health"], "unhealthy");

    // Thawed, it passes its next check and is routable at the top tier again.
    a.thaw();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let now = state(&gw, "a").await;
        if now["healthy"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the thawed target stays out: {now}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    load.stop().await;
}

#[actix_rt::test]
async fn without_health_checks_the_next_request_probes_a_half_open_target() {
    let a = MockUpstream::start(Behavior::default()).await.unwrap();
    let b = MockUpstream::start(Behavior::default()).await.unwrap();
    // In process, health checks off, a manual clock for the breaker's open period.
    let gw = TestApp::builder()
        .targets(&[target("a", "m", a.url()), target("b", "m", b.url())])
        .settings(|s| {
            s.breaker.failure_threshold = NonZero::new(1).unwrap();
            s.breaker.open_secs = Seconds::new(nz(30));
        })
        .start()
        .await;
    // a fails once (the request fails over to b): open.
    a.fail_next(1, 500);
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    gw.wait_target("a", |t| t["breaker"] == "open").await;
    assert_eq!(a.request_count(), 1);

    // Half-open: b is healthy and idle, yet the next request is a's probe.
    gw.advance(Duration::from_secs(30));
    gw.wait_target("a", |t| t["breaker"] == "half_open").await;
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    assert_eq!(a.request_count(), 2, "the half-open target was not probed");
    gw.wait_target("a", |t| t["breaker"] == "closed").await;
    gw.stop().await;
}
