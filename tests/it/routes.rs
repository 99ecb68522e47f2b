//! The HTTP surface: every route, both prefixes, pinning, aliases, listings, and every
//! error status in the OpenAI envelope.
use std::num::NonZero;

use crate::common::*;
use serde_json::{json, Value};

/// A gateway over one target, `a`, serving model `m` at `mock`.
fn app(mock: &MockUpstream) -> TestApp {
    TestApp::builder().target(target("a", "m", mock.url()))
}

fn assert_envelope(body: &Value, code: &str) {
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some(), "{body}");
}

#[actix_rt::test]
async fn every_inference_route_under_both_prefixes_reaches_its_upstream_path() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;
    let routes = [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/completions", "/v1/completions"),
        ("/v1/embeddings", "/v1/embeddings"),
        ("/v1/rerank", "/v1/rerank"),
        ("/v1/responses", "/v1/responses"),
        ("/v1/messages", "/v1/messages"),
        ("/v1/text2sql", "/v1/chat/completions"),
    ];
    let mut expected = Vec::new();
    for (path, upstream) in routes {
        for prefix in ["", "/resource_server"] {
            for slash in ["", "/"] {
                let (status, _, body) =
                    gw.post(&format!("{prefix}{path}{slash}"), &chat("m")).await;
                assert_eq!(status, 200, "{prefix}{path}{slash}: {body}");
                expected.push(upstream.to_string());
            }
        }
    }
    let seen: Vec<String> = mock.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, expected);
    gw.stop().await;
}

#[actix_rt::test]
async fn pinned_routes_reach_only_their_cluster_and_framework() {
    let sophia = MockUpstream::start(Behavior::default()).await.unwrap();
    let polaris = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            T {
                slug: "s",
                cluster: "sophia",
                framework: "vllm",
                model: "m",
                base_url: sophia.url(),
            },
            T {
                slug: "p",
                cluster: "polaris",
                framework: "vllm",
                model: "m",
                base_url: polaris.url(),
            },
        ])
        .start()
        .await;
    for _ in 0..5 {
        let (status, _, _) = gw
            .post(
                "/resource_server/polaris/vllm/v1/chat/completions",
                &chat("m"),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _, _) = gw.post("/sophia/vllm/v1/embeddings/", &chat("m")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(polaris.request_count(), 5);
    assert_eq!(sophia.request_count(), 5);
    assert!(polaris
        .requests()
        .iter()
        .all(|r| r.path == "/v1/chat/completions"));
    assert!(sophia.requests().iter().all(|r| r.path == "/v1/embeddings"));

    let (status, _, body) = gw
        .post(
            "/resource_server/polaris/sglang/v1/chat/completions",
            &chat("m"),
        )
        .await;
    assert_eq!(status, 404);
    assert_envelope(&body, "model_not_found");
    gw.stop().await;
}

#[actix_rt::test]
async fn chat_alias_from_config_relays_to_chat_for_its_models_only() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("a", "sql-model", mock.url()),
            target("b", "other", mock.url()),
        ])
        .toml("[[routes.chat_aliases]]\npath = \"/v1/sql\"\nmodels = [\"sql-model\"]\n")
        .start()
        .await;
    let (status, _, body) = gw.post("/resource_server/v1/sql", &chat("sql-model")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.requests()[0].path, "/v1/chat/completions");
    let (status, _, body) = gw.post("/v1/sql", &chat("other")).await;
    assert_eq!(status, 404);
    assert_envelope(&body, "model_not_found");
    // The file replaced the default alias list, so /v1/text2sql is gone.
    let (status, _, _) = gw.post("/v1/text2sql", &chat("sql-model")).await;
    assert_eq!(status, 404);
    gw.stop().await;
}

#[actix_rt::test]
async fn models_list_is_an_openai_list_with_status_and_targets() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[target("a", "m1", mock.url()), target("b", "m2", dead_url())])
        .start()
        .await;
    for prefix in ["", "/resource_server"] {
        let (status, body) = gw.get(&format!("{prefix}/v1/models")).await;
        assert_eq!(status, 200);
        assert_eq!(body["object"], "list");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["id"], "m1");
        assert_eq!(data[0]["object"], "model");
        assert!(data[0]["created"].is_u64());
        assert!(data[0]["owned_by"].is_string());
        assert_eq!(data[0]["targets"][0]["id"], "a");
        // Health checks are off in tests: presumed healthy until requests fail.
        assert_eq!(data[0]["status"], "running");
    }
    let (status, body) = gw.get("/list-endpoints").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["clusters"]["local"]["frameworks"]["vllm"]["models"],
        json!(["m1", "m2"])
    );
    assert_eq!(
        body["clusters"]["local"]["base_url"],
        "/resource_server/local"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn health_and_detailed_health() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;
    let (status, body) = gw.get("/health").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    let t = gw.wait_target("a", |t| t["ewma_ttfb_ms"].is_number()).await;
    assert_eq!(t["healthy"], true);
    assert_eq!(t["breaker"], "closed");
    assert_eq!(t["in_flight"], 0);
    assert_eq!(t["requests"], 1);
    assert!(t["last_error"].is_null());
    gw.stop().await;
}

#[actix_rt::test]
async fn every_error_status_in_the_openai_envelope() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .targets(&[
            target("a", "m", mock.url()),
            target("d", "down", dead_url()),
        ])
        .settings(|s| {
            s.server.max_body_bytes = NonZero::new(1000).unwrap();
            s.upstream.max_attempts = NonZero::new(1).unwrap();
        })
        .start()
        .await;
    let client = gw.client();
    let send = |path: &str, body: &'static [u8]| {
        client
            .post(gw.at(path))
            .insert_header(("content-type", "application/json"))
            .send_body(body)
    };
    let read = |mut res: awc::ClientResponse<_>| async move {
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
        (status, ct, body)
    };

    let cases: Vec<(&str, &'static [u8], u16, &str)> = vec![
        ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("/v1/chat/completions", b"", 400, "invalid_json"),
        ("/v1/chat/completions", b"[]", 400, "invalid_json"),
        (
            "/v1/chat/completions",
            b"{\"messages\":[]}",
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            b"{\"model\":\"nope\"}",
            404,
            "model_not_found",
        ),
        ("/v1/nothing-here", b"{}", 404, "not_found"),
        (
            "/v1/chat/completions",
            b"{\"model\":\"down\"}",
            502,
            "upstream_error",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, ct, value) = read(send(path, body).await.unwrap()).await;
        assert_eq!(
            got,
            status,
            "{path} {}: {value}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(ct.as_deref(), Some("application/json"));
        assert_envelope(&value, code);
    }

    // 413: body over server.max_body_bytes.
    let big = format!("{{\"model\":\"m\",\"pad\":\"{}\"}}", "x".repeat(2000));
    let (status, _, value) = read(
        client
            .post(gw.at("/v1/chat/completions"))
            .send_body(big)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    assert_envelope(&value, "payload_too_large");

    // 405: wrong method on a real route.
    let (status, _, value) = read(
        client
            .get(gw.at("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_envelope(&value, "method_not_allowed");
    let (status, _, value) = read(
        client
            .delete(gw.at("/resource_server/v1/models"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_envelope(&value, "method_not_allowed");

    // 508: a request that already went through too many gateways.
    let (status, _, value) = read(
        client
            .post(gw.at("/v1/chat/completions"))
            .insert_header(("x-inference-gateway-hops", "4"))
            .send_json(&chat("m"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 508);
    assert_envelope(&value, "loop_detected");
    assert_eq!(
        mock.request_count(),
        0,
        "no bad request reached the backend"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn gateway_sends_hop_count_upstream() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    let r = &mock.requests()[0];
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k == "x-inference-gateway-hops" && v == "1"));
    gw.stop().await;
}

#[actix_rt::test]
async fn admin_routes_need_the_admin_key() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, "test-admin-key-0123456789\n").unwrap();
    let key_path = key_file.display().to_string();
    let gw = app(&mock)
        .settings(move |s| {
            s.auth.admin_key_env = String::new();
            s.auth.admin_key_file = key_path.into();
        })
        .start()
        .await;
    let client = gw.client();
    let mut res = client.get(gw.at("/admin/backends")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_envelope(&body, "invalid_api_key");
    assert_eq!(body["error"]["type"], "authentication_error");

    let res = client
        .get(gw.at("/admin/backends"))
        .bearer_auth("test-admin-key-0123456780")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let mut res = client
        .get(gw.at("/resource_server/admin/backends"))
        .bearer_auth("test-admin-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(body["data"][0]["base_url"], mock.url());
    gw.stop().await;

    // No admin key configured: the admin API is off.
    let gw = app(&mock)
        .settings(|s| s.auth.admin_key_env = String::new())
        .start()
        .await;
    let mut res = gw
        .client()
        .get(gw.at("/admin/backends"))
        .bearer_auth("anything-at-all-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_envelope(&body, "forbidden");
    gw.stop().await;
}

/// Repeated and trailing slashes are routed like the clean path (the query kept), for a
/// listing and for an inference POST; a small answer is marked not to be compressed.
#[actix_rt::test]
async fn untidy_paths_are_routed_like_clean_ones() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;
    for path in [
        "/v1//models/",
        "//v1/models",
        "/resource_server/v1/models/?x=1",
    ] {
        let (status, body) = gw.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["data"][0]["id"], "m", "{path}");
    }
    let res = gw
        .client()
        .post(gw.at("/v1//chat/completions/"))
        .insert_header(("accept-encoding", "gzip"))
        .send_json(&chat("m"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(mock.requests()[0].path, "/v1/chat/completions");
    assert!(res.headers().get("content-encoding").is_none());
    gw.stop().await;
}
