//! Failover, the circuit breaker (with a manual clock), health-aware routing and
//! supervision (injected panics).
use std::num::NonZero;
use std::time::Duration;

use crate::common::*;
use inference_gateway::actors::gateway::{CheckAll, CrashBackend, CrashRouter};
use inference_gateway::config::{nz, Seconds};
use serde_json::json;

#[actix_rt::test]
async fn five_hundreds_fail_over_to_the_next_target() {
    let bad = MockUpstream::start(Behavior {
        status: 500,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let good = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("bad", "m", bad.url()),
            target("good", "m", good.url()),
        ])
        .start()
        .await;
    for _ in 0..10 {
        let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(good.request_count(), 10);
    assert!(bad.request_count() >= 1);
    gw.stop().await;
}

#[actix_rt::test]
async fn connection_refused_fails_over() {
    let good = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("dead", "m", dead_url()),
            target("good", "m", good.url()),
        ])
        .start()
        .await;
    for _ in 0..5 {
        let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200);
    }
    let dead = gw.target_state("dead").await;
    assert!(
        dead["last_error"].as_str().unwrap().contains("connect"),
        "{dead}"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn early_stream_death_fails_over_before_the_client_sees_a_byte() {
    let bad = MockUpstream::start(Behavior {
        drop_after_chunks: Some(0),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let good = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("bad", "m", bad.url()),
            target("good", "m", good.url()),
        ])
        .start()
        .await;
    let mut body = chat("m");
    body["stream"] = json!(true);
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let data = sse_data(&res.body().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(bad.request_count(), 1);
    assert_eq!(good.request_count(), 1);
    gw.stop().await;
}

#[actix_rt::test]
async fn all_targets_failing_is_502_and_attempts_are_bounded() {
    let a = MockUpstream::start(Behavior {
        status: 503,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let b = MockUpstream::start(Behavior {
        status: 502,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let c = MockUpstream::start(Behavior {
        status: 500,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("a", "m", a.url()),
            target("b", "m", b.url()),
            target("c", "m", c.url()),
        ])
        .settings(|s| s.upstream.max_attempts = NonZero::new(2).unwrap())
        .start()
        .await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no internals in the body: {body}"
    );
    assert_eq!(a.request_count() + b.request_count() + c.request_count(), 2);
    gw.stop().await;
}

#[actix_rt::test]
async fn every_target_rate_limited_is_429_with_retry_after() {
    let a = MockUpstream::start(Behavior {
        status: 429,
        retry_after_secs: Some(7),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let b = MockUpstream::start(Behavior {
        status: 429,
        retry_after_secs: Some(7),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = TestApp::builder()
        .targets(&[target("a", "m", a.url()), target("b", "m", b.url())])
        .start()
        .await;
    let (status, headers, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 429);
    assert_eq!(
        headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("7"),
        "the Retry-After of the last target tried reaches the client"
    );
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        a.request_count() + b.request_count(),
        2,
        "429 fails over to the other target"
    );
    // 429s are not breaker failures.
    assert_eq!(gw.target_state("a").await["failures"], 0);
    gw.stop().await;
}

#[actix_rt::test]
async fn backend_4xx_passes_through_and_is_never_retried() {
    let a = MockUpstream::start(Behavior {
        status: 400,
        error_body: Some(r#"{"error":{"code":400,"message":"max_tokens too large","type":"invalid_request_error"}}"#.into()),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let b = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[target("a", "m", a.url()), target("b", "m", b.url())])
        .start()
        .await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error":{"code":400,"message":"max_tokens too large","type":"invalid_request_error"}})
    );
    assert_eq!((a.request_count(), b.request_count()), (1, 0));
    gw.stop().await;
}

#[actix_rt::test]
async fn slow_target_is_504() {
    let slow = MockUpstream::start(Behavior {
        latency: Duration::from_secs(5),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let other = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("slow", "m", slow.url()),
            target("other", "m2", other.url()),
        ])
        .settings(|s| s.upstream.response_timeout_secs = Seconds::new(nz(1)))
        .start()
        .await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "upstream_timeout");
    gw.stop().await;
}

#[actix_rt::test]
async fn breaker_opens_then_half_open_probe_closes_it() {
    let mock = MockUpstream::start(Behavior {
        status: 500,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .settings(|s| {
            s.breaker.failure_threshold = NonZero::new(3).unwrap();
            s.breaker.open_secs = Seconds::new(nz(30));
            s.upstream.max_attempts = NonZero::new(1).unwrap();
        })
        .start()
        .await;
    for _ in 0..3 {
        let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 502);
    }
    gw.wait_target("a", |t| t["breaker"] == "open").await;

    // Open: requests don't reach the target.
    let (status, headers, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_available_target");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(mock.request_count(), 3);

    // Not yet: 29 s later it is still open.
    gw.advance(Duration::from_secs(29));
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 503);

    // Half-open after 30 s; the probe fails: open again.
    gw.advance(Duration::from_secs(1));
    gw.wait_target("a", |t| t["breaker"] == "half_open").await;
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 502);
    gw.wait_target("a", |t| t["breaker"] == "open").await;
    assert_eq!(mock.request_count(), 4);

    // Next period: the probe succeeds and closes it.
    mock.set_behavior(Behavior::default());
    gw.advance(Duration::from_secs(30));
    gw.wait_target("a", |t| t["breaker"] == "half_open").await;
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    gw.wait_target("a", |t| t["breaker"] == "closed").await;
    for _ in 0..3 {
        let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200);
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn unhealthy_targets_are_avoided_while_a_healthy_one_exists() {
    let sick = MockUpstream::start(Behavior {
        health_status: 503,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let well = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("sick", "m", sick.url()),
            target("well", "m", well.url()),
        ])
        .settings(|s| {
            s.health.path = "/health".into();
            s.health.unhealthy_threshold = NonZero::new(1).unwrap();
            s.health.interval_secs = Seconds::new(nz(3600));
        })
        .start()
        .await;
    gw.wait_target("sick", |t| t["health"] == "unhealthy").await;
    gw.wait_target("well", |t| t["health"] == "healthy").await;
    for _ in 0..10 {
        let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(sick.request_count(), 0);
    assert_eq!(well.request_count(), 10);
    let (_, models) = gw.get("/v1/models").await;
    assert_eq!(models["data"][0]["status"], "running");

    // The sick one recovers: the next check says so.
    sick.set_behavior(Behavior::default());
    gw.gateway.do_send(CheckAll);
    gw.wait_target("sick", |t| t["health"] == "healthy").await;
    gw.stop().await;
}

#[actix_rt::test]
async fn a_crashed_backend_actor_is_rebuilt_and_requests_keep_working() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .start()
        .await;
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);

    assert!(gw.gateway.send(CrashBackend("a".into())).await.unwrap());
    // The very next request works (handlers don't depend on the actor being alive).
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    // The supervisor notices and rebuilds it; the rebuilt actor starts half-open and
    // lets one probe decide.
    gw.wait_target("a", |t| t["actor_restarts"] == 1).await;
    for _ in 0..3 {
        let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200);
    }
    gw.wait_target("a", |t| t["breaker"] == "closed").await;
    gw.stop().await;
}

#[actix_rt::test]
async fn a_crashed_router_is_rebuilt_and_requests_keep_working() {
    let bad = MockUpstream::start(Behavior {
        status: 500,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let good = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("bad", "m", bad.url()),
            target("good", "m", good.url()),
        ])
        .settings(|s| s.breaker.failure_threshold = NonZero::new(1).unwrap())
        .start()
        .await;
    assert!(gw.gateway.send(CrashRouter("m".into())).await.unwrap());
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    // The rebuilt router still hears from backends: bad's breaker opening re-ranks it.
    gw.wait_target("bad", |t| t["breaker"] == "open").await;
    let before = bad.request_count();
    for _ in 0..5 {
        let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(bad.request_count(), before, "open target is skipped");
    gw.stop().await;
}

#[actix_rt::test]
async fn federated_model_name_is_rewritten_for_each_target() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let federated = vec![
        json!({"model":"resource_server.federatedendpoint","pk":1,"fields":{
        "name":"Fed","slug":"fed","target_model_name":"fed-model","description":"d",
        "targets":[{"cluster":"local","framework":"vllm","model":"real/model","endpoint_slug":"a"}]}}),
    ];
    let gw = TestApp::builder()
        .target(target("a", "real/model", mock.url()))
        .federated(&federated)
        .start()
        .await;
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("fed-model")).await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&mock.requests()[0].body).unwrap();
    assert_eq!(seen["model"], "real/model");
    assert_eq!(seen["messages"][0]["content"], "hi");
    let _ = Duration::ZERO;
    gw.stop().await;
}

/// Sends `n` requests one after another (so nothing is in flight when the next is routed
/// and only latency decides); returns how many reached `mock`.
async fn sequential_share(gw: &TestGateway, mock: &MockUpstream, n: usize) -> usize {
    let before = mock.request_count();
    for _ in 0..n {
        let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200, "{body}");
    }
    mock.request_count() - before
}

/// Makes both targets measured: `slow` (200 ms) and `fast`, until the router prefers `fast`.
async fn measure_both(gw: &TestGateway, slow: &MockUpstream, fast: &MockUpstream) {
    for _ in 0..50 {
        if slow.request_count() > 0 && fast.request_count() > 0 {
            break;
        }
        gw.post("/v1/chat/completions", &chat("m")).await;
    }
    gw.wait_target("slow", |t| t["ewma_ttfb_ms"].as_f64() > Some(100.0))
        .await;
    gw.wait_target("fast", |t| t["ewma_ttfb_ms"].is_number())
        .await;
}

fn slow_behavior() -> Behavior {
    Behavior {
        latency: Duration::from_millis(200),
        ..Behavior::default()
    }
}

#[actix_rt::test]
async fn a_target_back_from_unhealthy_is_measured_again_not_ranked_by_its_old_latency() {
    let slow = MockUpstream::start(slow_behavior()).await.unwrap();
    let fast = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("slow", "m", slow.url()),
            target("fast", "m", fast.url()),
        ])
        .settings(|s| {
            s.health.path = "/health".into();
            s.health.unhealthy_threshold = NonZero::new(1).unwrap();
            s.health.interval_secs = Seconds::new(nz(3600));
        })
        .start()
        .await;
    gw.wait_target("slow", |t| t["health"] == "healthy").await;
    gw.wait_target("fast", |t| t["health"] == "healthy").await;
    measure_both(&gw, &slow, &fast).await;
    assert_eq!(sequential_share(&gw, &slow, 10).await, 0, "200 ms loses");

    // It goes down and comes back fast (a restart on better hardware, say).
    slow.set_behavior(Behavior {
        health_status: 503,
        ..Behavior::default()
    });
    gw.gateway.do_send(CheckAll);
    gw.wait_target("slow", |t| t["health"] == "unhealthy").await;
    slow.set_behavior(Behavior::default());
    gw.gateway.do_send(CheckAll);
    let state = gw.wait_target("slow", |t| t["health"] == "healthy").await;
    assert!(state["ewma_ttfb_ms"].is_null(), "old latency kept: {state}");
    let share = sequential_share(&gw, &slow, 10).await;
    assert!(share >= 3, "the recovered target served {share} of 10");
    gw.stop().await;
}

#[actix_rt::test]
async fn a_latency_not_measured_for_30_s_is_forgotten_and_measured_again() {
    let slow = MockUpstream::start(slow_behavior()).await.unwrap();
    let fast = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("slow", "m", slow.url()),
            target("fast", "m", fast.url()),
        ])
        .start()
        .await;
    measure_both(&gw, &slow, &fast).await;
    // It got faster, but nothing sends it a request to find out.
    slow.set_behavior(Behavior::default());
    assert_eq!(sequential_share(&gw, &slow, 10).await, 0);

    gw.advance(Duration::from_secs(31));
    gw.wait_target("slow", |t| t["ewma_ttfb_ms"].is_null())
        .await;
    let share = sequential_share(&gw, &slow, 10).await;
    assert!(share >= 3, "the re-measured target served {share} of 10");
    gw.stop().await;
}
