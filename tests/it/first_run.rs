//! What a new user meets first: the built-in `demo` target answering through the whole
//! request path, failures that say which target failed and how (never where it is),
//! `/v1/models` telling `offline` at the first failed check, and a pinned route that says
//! where a model is served instead of "does not exist".
use std::num::NonZero;
use std::time::{Duration, Instant};

use crate::common::*;
use inference_gateway::actors::gateway::CheckAll;
use inference_gateway::config::{nz, Millis, Seconds};
use inference_gateway::store::UsageFilter;
use serde_json::{json, Value};

fn demo_endpoint() -> Value {
    json!({"model": "resource_server.endpoint", "pk": 100, "fields": {
        "endpoint_slug": "local-demo", "cluster": "local", "framework": "demo", "model": "demo"}})
}

/// POSTs `body` to `path`; status, headers and the raw body.
async fn post_raw(
    gw: &TestGateway,
    path: &str,
    body: &Value,
) -> (u16, awc::http::header::HeaderMap, String) {
    let mut res = gw.client().post(gw.at(path)).send_json(body).await.unwrap();
    let bytes = res.body().limit(8 << 20).await.unwrap();
    (
        res.status().as_u16(),
        res.headers().clone(),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[actix_rt::test]
async fn the_demo_target_answers_every_route_through_the_whole_request_path() {
    let gw = TestApp::builder()
        .endpoints(&[demo_endpoint()])
        .settings(|s| {
            // Health checks on: the demo's is answered in process.
            s.health.path = "/health".into();
            s.quotas.user.requests_per_day = 50;
            s.logging.flush_interval_ms = Millis::new(nz(20));
        })
        .start()
        .await;
    gw.wait_target("local-demo", |t| t["health"] == "healthy")
        .await;
    let (_, models) = gw.get("/v1/models").await;
    let demo = &models["data"][0];
    assert_eq!(demo["id"], "demo");
    assert_eq!(demo["demo"], true, "labelled as a demo: {demo}");
    assert!(demo["description"]
        .as_str()
        .unwrap()
        .contains("not a language model"));
    assert_eq!(demo["status"], "running");
    assert_eq!(demo["targets"][0]["framework"], "demo");

    let said = json!([{"role": "user", "content": "Hello gateway"}]);
    let requests = [
        (
            "/v1/chat/completions",
            json!({"model": "demo", "messages": said}),
        ),
        (
            "/v1/completions",
            json!({"model": "demo", "prompt": "Hello gateway"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "demo", "input": ["a", "b"]}),
        ),
        (
            "/v1/responses",
            json!({"model": "demo", "input": "Hello gateway"}),
        ),
        (
            "/v1/messages",
            json!({"model": "demo", "max_tokens": 64, "messages": said}),
        ),
    ];
    let mut count = 0;
    for (path, body) in &requests {
        let (status, headers, text) = post_raw(&gw, path, body).await;
        count += 1;
        assert_eq!(status, 200, "{path}: {text}");
        assert!(headers.contains_key("x-ratelimit-remaining-requests"));
        let v: Value = serde_json::from_str(&text).unwrap();
        let answer = v["choices"][0]["message"]["content"]
            .as_str()
            .or(v["choices"][0]["text"].as_str())
            .or(v["output"][0]["content"][0]["text"].as_str())
            .or(v["content"][0]["text"].as_str());
        if *path != "/v1/embeddings" {
            assert!(
                answer.unwrap().ends_with("\"Hello gateway\""),
                "{path}: {text}"
            );
        }
        assert!(v["usage"].is_object(), "{path}: {text}");
        if *path == "/v1/embeddings" {
            continue;
        }
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (status, headers, text) = post_raw(&gw, path, &streamed).await;
        count += 1;
        assert_eq!(status, 200, "{path} streamed: {text}");
        assert_eq!(headers.get("content-type").unwrap(), "text/event-stream");
        let last = text.trim_end().rsplit("\n\n").next().unwrap().to_string();
        assert!(
            ["data: [DONE]", "response.completed", "message_stop"]
                .iter()
                .any(|end| last.contains(end)),
            "{path}: the stream ends properly: {last}"
        );
        // The gateway asked for usage (quotas) and hid the event the client did not ask for.
        assert!(!text.contains("\"choices\":[]"), "{path}: {text}");
    }

    // Quotas counted every request; the breaker and the health view saw them.
    let (_, headers, _) = post_raw(&gw, "/v1/chat/completions", &requests[0].1).await;
    count += 1;
    assert_eq!(
        headers.get("x-ratelimit-remaining-requests").unwrap(),
        &(50 - count).to_string()
    );
    let state = gw
        .wait_target("local-demo", |t| t["requests"] == count)
        .await;
    assert_eq!(state["breaker"], "closed");
    assert_eq!(state["failures"], 0);

    // The request log has a row per request, with the demo's usage (not estimated).
    gw.flush_log().await;
    let rows = gw
        .store
        .list_log(UsageFilter::default(), 1000)
        .await
        .unwrap();
    assert_eq!(rows.len(), count as usize);
    for row in &rows {
        assert_eq!(
            (row.target.as_str(), row.framework.as_str(), row.status),
            ("local-demo", "demo", 200)
        );
        assert!(row.total_tokens > 0 && !row.tokens_estimated, "{row:?}");
    }

    // And the metrics.
    let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
    let text = String::from_utf8(res.body().limit(4 << 20).await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains(r#"gateway_requests_total{model="demo",route="chat",status="200",target="local-demo"} 3"#),
        "{text}"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn the_demo_target_can_be_removed_from_the_fixtures() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let real = endpoint(1, &target("real", "m", mock.url()));
    let gw = TestApp::builder()
        .endpoints(&[demo_endpoint(), real.clone()])
        .start()
        .await;
    let (status, _, _) = post_raw(&gw, "/v1/chat/completions", &chat("demo")).await;
    assert_eq!(status, 200);
    std::fs::write(
        gw.dir.path().join("endpoints.json"),
        serde_json::to_vec(&json!([real])).unwrap(),
    )
    .unwrap();
    gw.reloader.reload().await.unwrap();
    let (_, models) = gw.get("/v1/models").await;
    let ids: Vec<&Value> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids, vec![&json!("m")]);
    let (status, _, text) = post_raw(&gw, "/v1/chat/completions", &chat("demo")).await;
    assert_eq!(status, 404, "{text}");
    let (status, _, _) = post_raw(&gw, "/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

/// Waits (bounded) until `/v1/models` gives `model` the status `want`; the last status.
async fn wait_model_status(gw: &TestGateway, model: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (_, models) = gw.get("/v1/models").await;
        let status = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == model)
            .map(|m| m["status"].as_str().unwrap().to_string())
            .unwrap_or_default();
        if status == want || Instant::now() > deadline {
            return status;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn models_are_offline_after_the_first_failed_health_check() {
    let flaky = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("dead", "dead-model", dead_url()),
            target("flaky", "flaky-model", flaky.url()),
        ])
        .settings(|s| {
            s.health.path = "/health".into();
            s.health.unhealthy_threshold = NonZero::new(2).unwrap();
            // No second check comes by itself within the test.
            s.health.interval_secs = Seconds::new(nz(3600));
        })
        .start()
        .await;
    let status = wait_model_status(&gw, "dead-model", "offline", Duration::from_secs(5)).await;
    assert_eq!(
        status, "offline",
        "at the first failed check, not `unknown`"
    );
    assert_eq!(
        gw.target_state("dead").await["health"],
        "unhealthy",
        "a target never seen healthy"
    );

    // A target seen healthy keeps the threshold's benefit of the doubt.
    gw.wait_target("flaky", |t| t["health"] == "healthy").await;
    flaky.set_behavior(Behavior {
        health_status: 503,
        ..Behavior::default()
    });
    let checks = flaky.health_checks();
    gw.gateway.do_send(CheckAll);
    assert!(
        flaky
            .wait_for(|m| m.health_checks() > checks, Duration::from_secs(5))
            .await
    );
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.target_state("flaky").await["health"], "healthy");
    gw.gateway.do_send(CheckAll);
    gw.wait_target("flaky", |t| t["health"] == "unhealthy")
        .await;
    let status = wait_model_status(&gw, "flaky-model", "offline", Duration::from_secs(5)).await;
    assert_eq!(status, "offline");
    gw.stop().await;
}

#[actix_rt::test]
async fn failures_name_the_target_and_how_it_failed_never_its_address() {
    let sick = MockUpstream::start(Behavior {
        status: 503,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let slow = MockUpstream::start(Behavior {
        latency: Duration::from_secs(5),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("local-llama-cpp-smollm2", "smollm2", dead_url()),
            target("sick", "sick-model", sick.url()),
            target("slow", "slow-model", slow.url()),
        ])
        .settings(|s| {
            s.upstream.response_timeout_secs = Seconds::new(nz(1));
            s.breaker.failure_threshold = NonZero::new(2).unwrap();
        })
        .start()
        .await;
    let message = |body: &str| {
        assert!(!body.contains("127.0.0.1"), "no address: {body}");
        let v: Value = serde_json::from_str(body).unwrap();
        v["error"]["message"].as_str().unwrap().to_string()
    };
    let (status, _, body) = post_raw(&gw, "/v1/chat/completions", &chat("smollm2")).await;
    assert_eq!(status, 502);
    assert_eq!(
        message(&body),
        "All targets for model `smollm2` failed (target local-llama-cpp-smollm2: connection \
         refused); try again later."
    );
    let (status, _, body) = post_raw(&gw, "/v1/chat/completions", &chat("sick-model")).await;
    assert_eq!(status, 502);
    assert_eq!(
        message(&body),
        "All targets for model `sick-model` failed (target sick: answered 503); try again later."
    );
    let (status, _, body) = post_raw(&gw, "/v1/chat/completions", &chat("slow-model")).await;
    assert_eq!(status, 504);
    assert_eq!(
        message(&body),
        "The model `slow-model` did not answer in time (target slow: timed out after 1 s)."
    );

    // A second refusal opens the breaker: the 503 says which target and why.
    let (status, _, _) = post_raw(&gw, "/v1/chat/completions", &chat("smollm2")).await;
    assert_eq!(status, 502);
    gw.wait_target("local-llama-cpp-smollm2", |t| t["breaker"] == "open")
        .await;
    let (status, headers, body) = post_raw(&gw, "/v1/chat/completions", &chat("smollm2")).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "no_available_target");
    assert_eq!(
        message(&body),
        "No target for model `smollm2` is available right now (target \
         local-llama-cpp-smollm2: circuit breaker open after repeated failures); try again \
         later."
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn a_pinned_route_names_the_clusters_that_serve_the_model() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            T {
                slug: "a",
                cluster: "polaris",
                framework: "vllm",
                model: "m",
                base_url: mock.url(),
            },
            T {
                slug: "b",
                cluster: "local",
                framework: "llama-cpp",
                model: "m",
                base_url: mock.url(),
            },
        ])
        .start()
        .await;
    for path in [
        "/sophia/vllm/v1/chat/completions",
        "/resource_server/sophia/vllm/v1/chat/completions",
    ] {
        let (status, _, body) = post_raw(&gw, path, &chat("m")).await;
        assert_eq!(status, 404, "{path}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": {
                "message": "The model `m` is not served by cluster `sophia` with framework `vllm`; it is served by `polaris` (vllm), `local` (llama-cpp). Name one of those in the path, or use the route without a cluster (/v1/...) to let the gateway choose.",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}),
            "{path}"
        );
    }
    // The right cluster with the wrong framework says the same; the right pair answers.
    let (status, _, body) = post_raw(&gw, "/polaris/sglang/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 404);
    assert!(body.contains("it is served by `polaris` (vllm)"), "{body}");
    let (status, _, _) = post_raw(&gw, "/polaris/vllm/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    // A model served nowhere is still "does not exist".
    let (status, _, body) = post_raw(&gw, "/polaris/vllm/v1/chat/completions", &chat("nope")).await;
    assert_eq!(status, 404);
    assert!(body.contains("does not exist"), "{body}");
    gw.stop().await;
}
