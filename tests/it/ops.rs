//! Operations end to end on a real gateway: metrics fed by real traffic, the response cache,
//! gzip (never for SSE), security headers, the OpenAPI document covering every route,
//! reload without dropping a request, and TLS.
use std::io::Read;
use std::num::NonZero;
use std::sync::Arc;
use std::time::Duration;

use crate::common::metrics::{metrics_text, sample};
use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A gateway over one target, `a`, serving model `m` at `mock`.
fn app(mock: &MockUpstream) -> TestApp {
    TestApp::builder().target(target("a", "m", mock.url()))
}

#[actix_rt::test]
async fn metrics_are_fed_by_real_traffic() {
    let mock = MockUpstream::start(Behavior {
        chunks: 4,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let dead = dead_url();
    // "dead" first in fixture order, so the first request fails over to "good".
    let gw = TestApp::builder()
        .targets(&[target("dead", "m", dead), target("good", "m", mock.url())])
        .settings(|s| s.breaker.failure_threshold = NonZero::new(100).unwrap())
        .start()
        .await;

    let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200, "{body}");
    let usage = body["usage"].clone();
    let mut stream = chat("m");
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let (status, _, _) = gw.post("/v1/chat/completions", &stream).await;
    assert_eq!(status, 200);
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("nope")).await;
    assert_eq!(status, 404);

    // A client that goes away mid-stream.
    mock.set_behavior(Behavior {
        chunks: 50,
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&stream)
        .await
        .unwrap();
    let _ = res.next().await;
    drop(res);
    assert!(
        mock.wait_for(|m| m.streams_cancelled() >= 1, Duration::from_secs(5))
            .await
    );

    let mut text = String::new();
    for _ in 0..100 {
        text = metrics_text(&gw).await;
        if sample(&text, r#"gateway_stream_disconnects_total{route="chat"}"#)
            .is_some_and(|v| v >= 1.0)
        {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let families = text
        .lines()
        .filter(|l| l.starts_with("# TYPE gateway_"))
        .count();
    assert!(families >= 20, "{families} gateway_ families:\n{text}");
    assert!(text
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .all(|l| l.starts_with("# TYPE gateway_")));

    let ok = sample(
        &text,
        r#"gateway_requests_total{model="m",route="chat",status="200",target="good"}"#,
    )
    .expect("the 200s of target good are counted");
    assert!(ok >= 3.0, "{text}");
    assert_eq!(
        sample(
            &text,
            r#"gateway_requests_total{model="unknown",route="chat",status="404",target=""}"#
        ),
        Some(1.0),
        "an unconfigured model name is not a label value"
    );
    assert!(!text.contains(r#"model="nope""#));
    assert!(
        sample(&text, r#"gateway_failovers_total{model="m"}"#).is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(sample(
        &text,
        r#"gateway_upstream_errors_total{kind="connect",target="dead"}"#
    )
    .is_some_and(|v| v >= 1.0));
    assert!(sample(&text, r#"gateway_prompt_tokens_total{model="m"}"#)
        .is_some_and(|v| v >= usage["prompt_tokens"].as_f64().unwrap() * 2.0));
    assert!(
        sample(&text, r#"gateway_completion_tokens_total{model="m"}"#).is_some_and(|v| v >= 4.0)
    );
    assert!(sample(
        &text,
        r#"gateway_time_to_first_token_seconds_count{model="m",route="chat"}"#
    )
    .is_some_and(|v| v >= 3.0));
    assert!(sample(
        &text,
        r#"gateway_request_duration_seconds_count{model="m",route="chat"}"#
    )
    .is_some_and(|v| v >= 3.0));
    assert_eq!(
        sample(&text, r#"gateway_target_up{target="good"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"gateway_breaker_state{target="good"}"#),
        Some(0.0)
    );
    assert!(text.contains(r#"gateway_target_up{target="dead"}"#));
    assert_eq!(sample(&text, "gateway_requests_in_flight"), Some(0.0));
    // Fed by the quota, auth and storage components.
    assert!(
        sample(&text, "gateway_queue_wait_seconds_count").is_some_and(|v| v >= 3.0),
        "every admitted request's quota wait is timed"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("gateway_log_queue_depth ")),
        "the log writer's queue depth is exported"
    );
    assert_eq!(
        sample(&text, "gateway_log_spills_total"),
        Some(0.0),
        "the database is up: nothing spilled"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn in_flight_counts_a_running_stream_and_breaker_state_follows_the_target() {
    let mock = MockUpstream::start(Behavior {
        chunks: 30,
        chunk_delay: Duration::from_millis(20),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock)
        .settings(|s| s.breaker.failure_threshold = NonZero::new(1).unwrap())
        .start()
        .await;
    let mut stream = chat("m");
    stream["stream"] = json!(true);
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&stream)
        .await
        .unwrap();
    let _ = res.next().await;
    let text = metrics_text(&gw).await;
    assert_eq!(sample(&text, "gateway_requests_in_flight"), Some(1.0));
    assert_eq!(
        sample(&text, r#"gateway_target_in_flight{target="a"}"#),
        Some(1.0)
    );
    let _ = res.body().limit(1 << 20).await;
    drop(res);
    // One 500 opens the breaker (threshold 1).
    mock.fail_next(1, 500);
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 502);
    gw.wait_target("a", |t| t["breaker"] == "open").await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        sample(&text, r#"gateway_breaker_state{target="a"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, r#"gateway_target_up{target="a"}"#), Some(0.0));
    assert_eq!(
        sample(
            &text,
            r#"gateway_upstream_errors_total{kind="status_5xx",target="a"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "gateway_requests_in_flight"), Some(0.0));
    gw.stop().await;
}

#[actix_rt::test]
async fn health_check_latency_is_observed() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock)
        .settings(|s| s.health.path = "/health".into())
        .start()
        .await;
    gw.wait_target("a", |t| t["health"] == "healthy").await;
    let text = metrics_text(&gw).await;
    assert!(
        sample(
            &text,
            r#"gateway_health_check_duration_seconds_count{result="ok",target="a"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    gw.stop().await;
}

async fn raw_post(
    gw: &TestGateway,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, awc::http::header::HeaderMap, bytes::Bytes) {
    let mut req = gw.client().post(gw.at("/v1/chat/completions"));
    for h in headers {
        req = req.insert_header(*h);
    }
    let mut res = req.send_json(body).await.unwrap();
    let bytes = res.body().limit(8 << 20).await.unwrap();
    (res.status().as_u16(), res.headers().clone(), bytes)
}

#[actix_rt::test]
async fn deterministic_requests_are_answered_from_the_cache() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = app(&mock).start().await;
    let mut zero = chat("m");
    zero["temperature"] = json!(0);

    let (s1, h1, b1) = raw_post(&gw, &zero, &[]).await;
    assert_eq!(s1, 200);
    assert_eq!(h1.get("x-cache").unwrap(), "miss");
    let (s2, h2, b2) = raw_post(&gw, &zero, &[]).await;
    assert_eq!(s2, 200);
    assert_eq!(h2.get("x-cache").unwrap(), "hit");
    assert_eq!(b1, b2, "a hit returns the same bytes");
    assert!(h2.get("x-request-id").is_some());
    assert_eq!(mock.request_count(), 1, "the hit never reached the target");

    // x-cache: off bypasses; a non-zero temperature is not cached; neither are streams.
    let (_, h, _) = raw_post(&gw, &zero, &[("x-cache", "off")]).await;
    assert!(h.get("x-cache").is_none());
    let mut warm = chat("m");
    warm["temperature"] = json!(0.7);
    raw_post(&gw, &warm, &[]).await;
    let (_, h, _) = raw_post(&gw, &warm, &[]).await;
    assert!(h.get("x-cache").is_none());
    assert_eq!(mock.request_count(), 4);
    // ... unless the caller asks with x-cache: on.
    let (_, h, _) = raw_post(&gw, &warm, &[("x-cache", "on")]).await;
    assert_eq!(h.get("x-cache").unwrap(), "miss");
    let (_, h, _) = raw_post(&gw, &warm, &[("x-cache", "on")]).await;
    assert_eq!(h.get("x-cache").unwrap(), "hit");
    let mut stream = zero.clone();
    stream["stream"] = json!(true);
    raw_post(&gw, &stream, &[]).await;
    let (_, h, _) = raw_post(&gw, &stream, &[]).await;
    assert!(h.get("x-cache").is_none());
    assert_eq!(mock.request_count(), 7);
    // A failed answer is not cached.
    let mut other = zero.clone();
    other["max_tokens"] = json!(9);
    mock.fail_next(1, 400);
    let (s, _, _) = raw_post(&gw, &other, &[]).await;
    assert_eq!(s, 400);
    let (s, h, _) = raw_post(&gw, &other, &[]).await;
    assert_eq!(
        (s, h.get("x-cache").unwrap().to_str().unwrap()),
        (200, "miss")
    );

    let text = metrics_text(&gw).await;
    assert_eq!(
        sample(&text, r#"gateway_cache_requests_total{result="hit"}"#),
        Some(2.0)
    );
    assert!(
        sample(&text, r#"gateway_cache_requests_total{result="bypass"}"#).is_some_and(|v| v >= 4.0)
    );
    assert_eq!(sample(&text, "gateway_cache_entries"), Some(3.0));
    gw.stop().await;
}

#[actix_rt::test]
async fn large_json_is_gzipped_on_request_and_sse_and_small_bodies_never_are() {
    // 400 completion tokens: a body of several KB.
    let mock = MockUpstream::start(Behavior {
        chunks: 400,
        ..Behavior::default()
    })
    .await
    .unwrap();
    let gw = app(&mock).start().await;
    let (status, headers, body) = raw_post(&gw, &chat("m"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-encoding").unwrap(), "gzip");
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert!(plain.len() > 1024);
    let v: Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(body.len() < plain.len());

    let mut stream = chat("m");
    stream["stream"] = json!(true);
    let (status, headers, body) = raw_post(&gw, &stream, &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 200);
    // Not compressed, and no `Content-Encoding: identity` marker either.
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert_eq!(sse_data(&body).last().unwrap(), "[DONE]");
    assert_eq!(sse_data(&body).len(), 401, "every event arrived as it was");

    // Without Accept-Encoding, JSON is plain.
    let (_, headers, body) = raw_post(&gw, &chat("m"), &[]).await;
    assert!(headers.get("content-encoding").is_none());
    assert!(serde_json::from_slice::<Value>(&body).is_ok());

    // Small bodies are not worth gzip: neither a small answer nor the gateway's own errors.
    mock.set_behavior(Behavior {
        chunks: 2,
        ..Behavior::default()
    });
    let (_, headers, body) = raw_post(&gw, &chat("m"), &[("accept-encoding", "gzip")]).await;
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert!(serde_json::from_slice::<Value>(&body).is_ok());
    let (status, headers, _) = raw_post(&gw, &chat("nope"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 404);
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    // Nor the gateway's own small answers (the model list, health).
    for path in ["/v1/models", "/health"] {
        let res = gw
            .client()
            .get(gw.at(path))
            .insert_header(("accept-encoding", "gzip"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("content-encoding").is_none(), "{path}");
    }
    gw.stop().await;

    // server.gzip = false: nothing is compressed.
    mock.set_behavior(Behavior {
        chunks: 400,
        ..Behavior::default()
    });
    let gw = app(&mock).settings(|s| s.server.gzip = false).start().await;
    let (status, headers, body) = raw_post(&gw, &chat("m"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert_ne!(
        headers.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert!(serde_json::from_slice::<Value>(&body).is_ok());
    gw.stop().await;
}

#[actix_rt::test]
async fn security_headers_and_the_docs_page_policy() {
    let gw = TestApp::builder().start().await;
    let res = gw.client().get(gw.at("/v1/models")).send().await.unwrap();
    let h = res.headers();
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
    assert!(h
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    assert!(
        h.get("strict-transport-security").is_none(),
        "no HSTS without TLS"
    );

    let mut res = gw.client().get(gw.at("/docs")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
    let html = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(html.contains("/docs/docs.js"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
    let mut js = gw
        .client()
        .get(gw.at("/docs/docs.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    let js = String::from_utf8(js.body().await.unwrap().to_vec()).unwrap();
    assert!(js.contains("/openapi.json") && !js.contains("http"));
    gw.stop().await;
}

/// Every route the app registers is in /openapi.json, and every documented operation is
/// served (not 404/405).
#[actix_rt::test]
async fn openapi_describes_every_route() {
    let gw = TestApp::builder()
        .target(target("a", "m", dead_url()))
        .start()
        .await;
    let (status, doc) = gw.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();

    // The registered routes, read from the route table's source.
    let source = include_str!("../../src/routes/mod.rs");
    let mut registered: Vec<String> = source
        .split("resource(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    for p in inference_gateway::routes::BUILTIN_PATHS
        .iter()
        .map(|p| p.to_string())
        .chain(std::iter::once("/v1/text2sql".to_string()))
    {
        registered.push(format!("/{{cluster}}/{{framework}}{p}"));
        registered.push(p);
    }
    assert!(registered.len() > 20);
    for path in &registered {
        assert!(paths.contains_key(path), "{path} is not in /openapi.json");
    }
    for (path, item) in paths {
        let concrete = path
            .replace("{cluster}", "local")
            .replace("{framework}", "vllm");
        for method in item.as_object().unwrap().keys() {
            let req = match method.as_str() {
                "get" => gw.client().get(gw.at(&concrete)),
                "post" => gw.client().post(gw.at(&concrete)),
                "put" => gw.client().put(gw.at(&concrete)),
                "delete" => gw.client().delete(gw.at(&concrete)),
                other => panic!("unexpected method {other}"),
            };
            let mut res = req.send_body("{}").await.unwrap();
            let s = res.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_slice(&res.body().await.unwrap()).unwrap_or_default();
            // A handler's own 404 (no such file or batch `{id}`) means the route exists;
            // only the router's "No route" 404 does not.
            let routed = s != 404
                || !body["error"]["message"]
                    .as_str()
                    .unwrap_or("No route")
                    .starts_with("No route");
            assert!(routed && s != 405, "{method} {path} answered {s}");
        }
        let errors = item.as_object().unwrap().values().next().unwrap()["responses"]
            .as_object()
            .unwrap()
            .clone();
        assert!(errors.contains_key("405"), "{path}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn reload_adds_and_drains_targets_without_dropping_a_stream() {
    let a = MockUpstream::start(Behavior {
        chunks: 20,
        chunk_delay: Duration::from_millis(25),
        ..Behavior::default()
    })
    .await
    .unwrap();
    let b = MockUpstream::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, "reload-admin-key-0123456789\n").unwrap();
    let key_path = key_file.display().to_string();
    let gw = TestApp::builder()
        .target(target("a", "m", a.url()))
        .env(&[("GATEWAY__AUTH__ADMIN_KEY_FILE", key_path.as_str())])
        .start()
        .await;

    // A stream on "a" that runs across the reload.
    let mut stream = chat("m");
    stream["stream"] = json!(true);
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&stream)
        .await
        .unwrap();
    let first = res.next().await.unwrap().unwrap();
    assert!(!first.is_empty());

    // "a" leaves, "b" arrives.
    gw.write_fixtures(&[target("b", "m", b.url())], &[]);
    let mut reload = gw
        .client()
        .post(gw.at("/admin/reload"))
        .bearer_auth("reload-admin-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    let report: Value = reload.json().await.unwrap();
    assert_eq!(report["report"]["added"], json!(["b"]));
    assert_eq!(report["report"]["removed"], json!(["a"]));
    assert_eq!(report["report"]["draining"], 1);
    assert_eq!(report["report"]["restart_required"], json!([]));

    let before = a.request_count();
    for _ in 0..5 {
        let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(b.request_count(), 5, "the added target takes the traffic");
    assert_eq!(a.request_count(), before, "the removed one gets none");

    // The stream begun before the reload still completes.
    let rest = res.body().limit(1 << 20).await.unwrap();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    assert_eq!(sse_data(&all).last().unwrap(), "[DONE]");
    assert_eq!(a.streams_completed(), 1);

    let text = metrics_text(&gw).await;
    assert!(text.contains(r#"gateway_target_up{target="b"}"#));
    assert!(!text.contains(r#"gateway_target_up{target="a"}"#));
    assert_eq!(
        sample(&text, r#"gateway_reloads_total{result="ok"}"#),
        Some(1.0)
    );

    // Broken fixtures: 400 naming the file, and the gateway keeps serving on "b".
    std::fs::write(gw.dir.path().join("endpoints.json"), "[{not json").unwrap();
    let mut bad = gw
        .client()
        .post(gw.at("/admin/reload"))
        .bearer_auth("reload-admin-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("endpoints.json"), "{message}");
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200);
    assert_eq!(b.request_count(), 6);

    // Without the admin key: refused in the envelope.
    let res = gw
        .client()
        .post(gw.at("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    gw.stop().await;
}

#[actix_rt::test]
async fn reload_keeps_unchanged_targets_and_their_state() {
    let a = MockUpstream::start(Behavior::default()).await.unwrap();
    let b = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "m", a.url()))
        .start()
        .await;
    for _ in 0..3 {
        gw.post("/v1/chat/completions", &chat("m")).await;
    }
    gw.write_fixtures(
        &[target("a", "m", a.url()), target("b", "m2", b.url())],
        &[],
    );
    let report = gw.reloader.reload().await.unwrap();
    assert_eq!(report.summary.kept, vec!["a"]);
    assert_eq!(report.summary.added, vec!["b"]);
    // Same target object: its counters survived.
    let state = gw.target_state("a").await;
    assert_eq!(state["requests"], 3);
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("m2")).await;
    assert_eq!(status, 200);
    assert_eq!(b.request_count(), 1);
    gw.stop().await;
}

fn tls_files(
    dir: &std::path::Path,
) -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
        cert.cert.der().clone(),
    )
}

fn tls_client(
    ca: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> awc::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
        .timeout(Duration::from_secs(10))
        .finish()
}

#[actix_rt::test]
async fn tls_serves_1_2_and_1_3_with_hsts_and_refuses_older() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = tls_files(dir.path());
    let gw = app(&mock)
        .settings(move |s| {
            s.server.tls.cert_file = cert.into();
            s.server.tls.key_file = key.into();
        })
        .start()
        .await;
    assert!(gw.url.starts_with("https://"));
    let url = gw.url.replace("127.0.0.1", "localhost");
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let client = tls_client(&der, versions);
        let mut res = client
            .post(format!("{url}/v1/chat/completions"))
            .send_json(&chat("m"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res
            .headers()
            .get("strict-transport-security")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("max-age=31536000"));
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
    }
    // TLS 1.1 (and 1.0) are not offered: the handshake fails.
    let port = gw.url.rsplit(':').next().unwrap().to_string();
    for flag in ["-tls1_1", "-tls1"] {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), flag])
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !out.status.success() || text.contains("Cipher is (NONE)"),
                    "{flag} handshake succeeded: {text}"
                );
            }
            Err(e) => eprintln!("openssl not available ({e}); TLS 1.1 check skipped"),
        }
    }
    gw.stop().await;
}

#[test]
fn tls_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a pem").unwrap();
    let err = inference_gateway::config::Settings::load_from(
        None,
        None,
        vec![(
            "GATEWAY__SERVER__TLS__CERT_FILE".into(),
            cert.display().to_string(),
        )],
    )
    .unwrap_err();
    assert_eq!(err.key, "server.tls.key_file");
    let tls = inference_gateway::config::Tls {
        cert_file: cert.clone(),
        key_file: cert,
        hsts_max_age_secs: inference_gateway::config::Seconds::new(1),
    };
    let err = inference_gateway::security::server_config(&tls).unwrap_err();
    assert!(err.to_string().starts_with("server.tls.cert_file"), "{err}");
}
