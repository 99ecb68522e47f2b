//! Quotas end to end, embedded mode: admission (budgets, token bucket, in-flight cap with
//! its queue), the x-ratelimit headers, token charging from usage (streams included, the
//! usage event hidden), persistence across a restart, the admin API, and a QuotaActor
//! crash.
use std::time::Duration;

use crate::common::*;
use inference_gateway::config::{nz, Millis, Seconds};
use inference_gateway::quota::actor::{ActorOf, Crash, FlushAll, Restarts};
use inference_gateway::quota::{Kind, Subject};
use inference_gateway::store::UsageFilter;
use serde_json::{json, Value};

struct Reply {
    status: u16,
    headers: awc::http::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

async fn send(gw: &TestGateway, body: &Value) -> Reply {
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(body)
        .await
        .unwrap();
    let body = res.body().limit(1 << 20).await.unwrap().to_vec();
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
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

/// A gateway with one target `a` serving `llama` on `mock`, and the admin key.
fn gateway(mock: &MockUpstream) -> TestApp {
    TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .admin_key()
}

const ANON: &str = "user:anonymous";

#[actix_rt::test]
async fn daily_request_quota_counts_down_in_headers_then_refuses() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock)
        .settings(|s| s.quotas.user.requests_per_day = 3)
        .start()
        .await;
    for remaining in ["2", "1", "0"] {
        let r = send(&gw, &chat("llama")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining-requests").as_deref(),
            Some(remaining)
        );
        let reset = r.header("x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "{reset}");
        assert_eq!(
            r.header("x-ratelimit-limit-tokens").as_deref(),
            Some("10000000")
        );
        assert!(r.header("x-ratelimit-remaining-tokens").is_some());
    }
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(r.status, 429);
    let e = r.json();
    assert_eq!(e["error"]["code"], "insufficient_quota");
    assert_eq!(e["error"]["type"], "insufficient_quota");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 86_400, "{retry}");
    assert_eq!(
        r.header("x-ratelimit-remaining-requests").as_deref(),
        Some("0"),
        "error answers carry the headers too"
    );
    assert_eq!(
        mock.request_count(),
        3,
        "the refused request never went upstream"
    );
    // A model that does not exist is refused before the quota: nothing counted.
    assert_eq!(send(&gw, &chat("nope")).await.status, 404);
    let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains("gateway_quota_rejections_total{reason=\"insufficient_quota\"} 1"),
        "the refusal is counted"
    );
    let timed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway_queue_wait_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert_eq!(timed, 4, "every admission is timed, the refused one too");
    gw.stop().await;
}

#[actix_rt::test]
async fn token_bucket_allows_the_burst_then_asks_to_retry() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock)
        .settings(|s| {
            s.quotas.user.requests_per_second = 0.5;
            s.quotas.user.burst = 2;
        })
        .start()
        .await;
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    gw.stop().await;
}

#[actix_rt::test]
async fn in_flight_cap_holds_under_concurrent_load() {
    let mock = MockUpstream::start(Behavior {
        latency: Duration::from_millis(600),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = gateway(&mock)
        .settings(|s| {
            s.quotas.user.max_in_flight = 2;
            s.quotas.queue_timeout_ms = Millis::new(150);
        })
        .start()
        .await;
    let body = chat("llama");
    let replies = futures_util::future::join_all((0..8).map(|_| send(&gw, &body))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok, 2, "only the cap runs at once");
    assert_eq!(limited.len(), 6);
    assert!(limited
        .iter()
        .all(|r| r.json()["error"]["code"] == "rate_limit_exceeded"));
    let state = gw
        .quotas
        .get(&Subject::new(Kind::User, "anonymous"))
        .unwrap();
    assert_eq!(state.in_flight(), 0, "every slot came back");
    gw.stop().await;

    // With a queue longer than a request, the waiters get their turn instead.
    let gw = gateway(&mock)
        .settings(|s| {
            s.quotas.user.max_in_flight = 2;
            s.quotas.queue_timeout_ms = Millis::new(5000);
        })
        .start()
        .await;
    let started = std::time::Instant::now();
    let replies = futures_util::future::join_all((0..4).map(|_| send(&gw, &body))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert!(
        started.elapsed() >= Duration::from_millis(1150),
        "two rounds of two: {:?}",
        started.elapsed()
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn streams_are_charged_from_usage_the_client_did_not_see() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock)
        .settings(|s| s.logging.flush_interval_ms = Millis::new(nz(20)))
        .start()
        .await;
    let mut body = chat("llama");
    body["stream"] = json!(true);
    let r = send(&gw, &body).await;
    assert_eq!(r.status, 200);
    let events = sse_data(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "the usage event is hidden: {events:?}"
    );
    let sent = mock.requests().pop().unwrap();
    let upstream: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(upstream["stream_options"]["include_usage"], true);
    let prompt = (serde_json::to_vec(&body).unwrap().len() as u64).div_ceil(4);
    let state = gw
        .quotas
        .get(&Subject::new(Kind::User, "anonymous"))
        .unwrap();
    let charged = state
        .snapshot(inference_gateway::store::now_ms())
        .day
        .tokens;
    // The mock counts prompt tokens from the body it got (with stream_options added).
    assert!(charged >= prompt + 5, "charged {charged}");
    assert_eq!(
        r.header("x-ratelimit-remaining-tokens"),
        Some("10000000".to_string()),
        "headers are set when the answer starts, before its tokens are known"
    );

    // A client that asked for usage gets it.
    body["stream_options"] = json!({"include_usage": true});
    let r = send(&gw, &body).await;
    assert!(sse_data(&r.body).iter().any(|e| e.contains("\"usage\":{")));

    // No usage from the backend: estimated, and the log row says so.
    mock.set_behavior(Behavior {
        usage: false,
        ..Behavior::default()
    });
    let before = state
        .snapshot(inference_gateway::store::now_ms())
        .day
        .tokens;
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(r.status, 200);
    let after = state
        .snapshot(inference_gateway::store::now_ms())
        .day
        .tokens;
    assert!(after > before, "an estimate is charged");
    gw.flush_log().await;
    let rows = gw
        .store
        .list_log(UsageFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows.iter().map(|r| r.tokens_estimated).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert!(rows.iter().all(|r| r.user_id == "anonymous"));
    gw.stop().await;
}

#[actix_rt::test]
async fn used_up_token_budget_refuses_until_reset() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock)
        .settings(|s| s.quotas.user.tokens_per_day = 10)
        .start()
        .await;
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    assert_eq!(
        r.header("x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    let (status, v) = admin(&gw, "POST", &format!("/admin/quota/{ANON}/reset"), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["day"]["tokens"], 0);
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_restart_keeps_the_days_usage() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("q.db").display());
    let app = || {
        let url = url.clone();
        gateway(&mock).settings(move |s| {
            s.database.url = url;
            s.quotas.user.requests_per_day = 5;
        })
    };
    let gw = app().start().await;
    for _ in 0..3 {
        assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    }
    // What the shutdown path does after the server stopped.
    gw.quota_supervisor.send(FlushAll).await.unwrap();
    gw.stop().await;

    let gw = app().start().await;
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ratelimit-remaining-requests").as_deref(),
        Some("1"),
        "3 before the restart + this one"
    );
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    assert_eq!(send(&gw, &chat("llama")).await.status, 429);
    gw.stop().await;
}

#[actix_rt::test]
async fn admin_overrides_apply_at_once_and_persist() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock).start().await;
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);

    let path = format!("/admin/quota/{ANON}");
    let (status, v) = admin(&gw, "PUT", &path, Some(json!({"rps": 3}))).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "invalid_request");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`rps`"),
        "{v}"
    );
    let (status, v) = admin(&gw, "PUT", &path, Some(json!({"burst": -3}))).await;
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("burst")));
    let (status, v) = admin(&gw, "GET", "/admin/quota/nobody", None).await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("subject"))
    );
    // Without the admin key: 401.
    let (status, _) = gw.get(&path).await;
    assert_eq!(status, 401);

    let (status, v) = admin(
        &gw,
        "PUT",
        &path,
        Some(json!({"requests_per_day": 1, "tokens_per_minute": 500})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["limits"]["requests_per_day"], 1);
    assert_eq!(v["limits"]["tokens_per_minute"], 500);
    assert_eq!(
        v["limits"]["requests_per_second"], 50.0,
        "others stay default"
    );
    assert_eq!(v["override"]["requests_per_day"], 1);
    assert_eq!(v["usage"]["day"]["requests"], 1);
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(
        r.status, 429,
        "the override applies to the live subject at once"
    );
    assert_eq!(r.header("x-ratelimit-limit-requests").as_deref(), Some("1"));
    let stored = gw.store.get_override(ANON.into()).await.unwrap().unwrap();
    assert_eq!(stored.daily_requests, Some(1));

    // Overrides for subjects never seen show up in the list; paging by subject.
    for s in ["org:anl", "model:other", "user:zed"] {
        let (status, _) = admin(
            &gw,
            "PUT",
            &format!("/admin/quota/{s}"),
            Some(json!({"tokens_per_day": 7})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, page) = admin(&gw, "GET", "/admin/quotas?limit=2", None).await;
    assert_eq!(status, 200, "{page}");
    let subjects = |p: &Value| -> Vec<String> {
        p["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["subject"].as_str().unwrap().to_string())
            .collect()
    };
    // model:llama is live (it took a request) without an override.
    assert_eq!(subjects(&page), ["model:llama", "model:other"]);
    assert_eq!(page["next"], "model:other");
    let (_, page) = admin(&gw, "GET", "/admin/quotas?limit=3&after=model:other", None).await;
    assert_eq!(subjects(&page), ["org:anl", "user:anonymous", "user:zed"]);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["data"][1]["usage"]["live"], true);
    assert_eq!(page["data"][2]["usage"]["live"], false);
    assert_eq!(page["data"][0]["limits"]["tokens_per_day"], 7);
    let (status, _) = admin(&gw, "GET", "/admin/quotas?limit=0", None).await;
    assert_eq!(status, 400);

    // An empty override removes it: the defaults are back.
    let (status, v) = admin(&gw, "PUT", &path, Some(json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(v["override"], Value::Null);
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_crashed_quota_actor_is_rebuilt_and_counting_goes_on() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock)
        .settings(|s| s.quotas.flush_interval_ms = Millis::new(nz(50)))
        .start()
        .await;
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    let subject = Subject::new(Kind::User, "anonymous");
    let actor = gw
        .quota_supervisor
        .send(ActorOf(subject.clone()))
        .await
        .unwrap()
        .unwrap();
    actor.do_send(Crash);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.quota_supervisor.send(Restarts).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "never rebuilt");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ratelimit-remaining-requests").as_deref(),
        Some("99998"),
        "nothing lost"
    );
    // The new actor flushes: both requests reach the database.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let day =
            inference_gateway::quota::math::Window::Day.start(inference_gateway::store::now_ms());
        let row = gw
            .store
            .get_usage(ANON.into(), "day".into(), day)
            .await
            .unwrap();
        if row.requests == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not flushed: {row:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn idle_subjects_are_retired_and_come_back_with_their_counts() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock)
        .settings(|s| {
            s.quotas.idle_secs = Seconds::new(nz(1));
            s.quotas.flush_interval_ms = Millis::new(nz(50));
        })
        .start()
        .await;
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    let subject = Subject::new(Kind::User, "anonymous");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.quotas.get(&subject).is_some() {
        assert!(std::time::Instant::now() < deadline, "never retired");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let r = send(&gw, &chat("llama")).await;
    assert_eq!(
        r.header("x-ratelimit-remaining-requests").as_deref(),
        Some("99998"),
        "reloaded from the database"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn batches_per_user_are_capped() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock)
        .settings(|s| s.quotas.max_batches_per_user = 2)
        .start()
        .await;
    let state = gw.quotas.state(Subject::new(Kind::User, "alice")).await;
    let a = state.try_start_batch().unwrap();
    let _b = state.try_start_batch().unwrap();
    assert!(state.try_start_batch().is_none());
    drop(a);
    assert!(state.try_start_batch().is_some());
    gw.stop().await;
}

#[actix_rt::test]
async fn a_client_that_goes_away_gives_its_slot_back_and_pays_for_what_it_got() {
    use futures_util::StreamExt;
    let mock = MockUpstream::start(Behavior {
        chunks: 200,
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = gateway(&mock)
        .settings(|s| {
            s.quotas.user.max_in_flight = 1;
            s.quotas.queue_timeout_ms = Millis::new(0);
        })
        .start()
        .await;
    let mut body = chat("llama");
    body["stream"] = json!(true);
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    let first = res.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    // The one slot is taken: a second request is refused at once.
    assert_eq!(send(&gw, &chat("llama")).await.status, 429);
    drop(res);
    let state = gw
        .quotas
        .get(&Subject::new(Kind::User, "anonymous"))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while state.in_flight() > 0 {
        assert!(std::time::Instant::now() < deadline, "slot never released");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let charged = state
        .snapshot(inference_gateway::store::now_ms())
        .day
        .tokens;
    assert!(charged > 0, "the partial stream is charged (estimated)");
    assert_eq!(send(&gw, &chat("llama")).await.status, 200);
    gw.stop().await;
}
