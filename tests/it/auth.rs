//! Authentication end to end against a fake Globus Auth + Groups service on 127.0.0.1:0
//! answering with the documented shapes: active, inactive, expired, wrong IdP, missing
//! group, failed policy; caching, one introspection per token, per-target access lists.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

const CLIENT_ID: &str = "gateway-client-id";
const SECRET_ENV: &str = "IGW_TEST_GLOBUS_SECRET";
const SECRET: &str = "s3cret-client-secret-value";

#[derive(Default)]
struct FakeGlobus {
    introspections: Mutex<HashMap<String, usize>>,
    group_calls: AtomicUsize,
    down: AtomicBool,
    slow: AtomicBool,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Introspection answers per token, in Globus' documented shape.
fn introspection(token: &str) -> Value {
    let identity = |username: &str, idp: &str, sub: &str| {
        json!({"id": sub, "sub": sub, "username": username, "name": "Alice", "email": username,
               "organization": "Argonne National Laboratory", "identity_provider": idp,
               "identity_provider_display_name": "Argonne National Laboratory",
               "last_authentication": 1775771457, "identity_type": "login", "status": "used"})
    };
    let active = |username: &str, idp: &str, sub: &str, exp: i64| {
        json!({"active": true, "token_type": "Bearer", "scope": "s", "client_id": "app",
               "sub": sub, "username": username, "name": "Alice", "email": username,
               "exp": exp, "iat": now() - 10, "nbf": now() - 10, "aud": [CLIENT_ID],
               "iss": "https://auth.globus.org",
               "identity_set_detail": [identity(username, idp, sub)],
               "session_info": {"session_id": "s", "authentications": {sub: {"idp": idp, "auth_time": 1, "custom_claims": {}}}},
               "policy_evaluations": {"pol-1": {"evaluation": true}}})
    };
    match token {
        "tok-alice" | "tok-alice-2" | "tok-restricted" => {
            active("alice@anl.gov", "idp-anl", "alice-id", now() + 3600)
        }
        "tok-bob-nogroup" => active("bob@anl.gov", "idp-anl", "bob-id", now() + 3600),
        "tok-expired" => active("alice@anl.gov", "idp-anl", "alice-id", now() - 5),
        "tok-gmail" => active("carol@gmail.com", "idp-google", "carol-id", now() + 3600),
        "tok-policy" => {
            let mut v = active("alice@anl.gov", "idp-anl", "alice-id", now() + 3600);
            v["policy_evaluations"] = json!({"pol-1": {"evaluation": false}});
            v
        }
        _ => json!({"active": false}),
    }
}

fn groups_of(token: &str) -> Value {
    let group = |id: &str| json!({"name": id, "id": id, "group_type": "regular", "my_memberships": [], "policies": {}});
    match token {
        "tok-bob-nogroup" => json!([]),
        "tok-restricted" => json!([group("g-users"), group("g-secret")]),
        _ => json!([group("g-users")]),
    }
}

fn basic_ok(req: &HttpRequest) -> bool {
    use base64::Engine;
    let expected = format!("{CLIENT_ID}:{SECRET}");
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|decoded| decoded == expected.as_bytes())
}

async fn start_fake(state: Arc<FakeGlobus>) -> String {
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(
                "/v2/oauth2/token/introspect",
                web::post().to(|req: HttpRequest, form: web::Form<HashMap<String, String>>, s: web::Data<FakeGlobus>| async move {
                    if s.down.load(Ordering::SeqCst) {
                        return HttpResponse::InternalServerError().finish();
                    }
                    if !basic_ok(&req) {
                        return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"}));
                    }
                    assert_eq!(form.get("include").map(String::as_str), Some("session_info,identity_set_detail"));
                    let token = form.get("token").cloned().unwrap_or_default();
                    *s.introspections.lock().unwrap().entry(token.clone()).or_default() += 1;
                    if s.slow.load(Ordering::SeqCst) {
                        actix_rt::time::sleep(Duration::from_millis(300)).await;
                    }
                    HttpResponse::Ok().json(introspection(&token))
                }),
            )
            .route(
                "/v2/oauth2/token",
                web::post().to(|req: HttpRequest, form: web::Form<HashMap<String, String>>| async move {
                    if !basic_ok(&req) {
                        return HttpResponse::Unauthorized().finish();
                    }
                    assert_eq!(form.get("grant_type").map(String::as_str), Some("urn:globus:auth:grant_type:dependent_token"));
                    let token = form.get("token").cloned().unwrap_or_default();
                    HttpResponse::Ok().json(json!([
                        {"scope": "urn:globus:auth:scope:transfer.api.globus.org:all", "access_token": "transfer", "token_type": "bearer", "expires_in": 120, "resource_server": "transfer.api.globus.org"},
                        {"scope": "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships", "access_token": format!("groups-{token}"), "token_type": "bearer", "expires_in": 120, "resource_server": "groups.api.globus.org"}
                    ]))
                }),
            )
            .route(
                "/v2/groups/my_groups",
                web::get().to(|req: HttpRequest, s: web::Data<FakeGlobus>| async move {
                    s.group_calls.fetch_add(1, Ordering::SeqCst);
                    let token = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                    match token.strip_prefix("Bearer groups-") {
                        Some(user_token) => HttpResponse::Ok().json(groups_of(user_token)),
                        None => HttpResponse::Unauthorized().finish(),
                    }
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    actix_rt::spawn(server.run());
    url
}

async fn gateway(fake_url: &str, upstream: &str, extra_toml: &str) -> TestGateway {
    gateway_with_groups(fake_url, upstream, "[\"g-users\"]", extra_toml).await
}

/// `global_groups` is the TOML list for `auth.globus.globus_groups`.
async fn gateway_with_groups(
    fake_url: &str,
    upstream: &str,
    global_groups: &str,
    extra_toml: &str,
) -> TestGateway {
    std::env::set_var(SECRET_ENV, SECRET);
    let toml = format!(
        "[auth]\nmode = \"required\"\n[auth.globus]\nenabled = true\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_env = \"{SECRET_ENV}\"\nauth_base = \"{fake_url}\"\ngroups_base = \"{fake_url}\"\n\
         authorized_idp_domains = [\"anl.gov\"]\nglobus_groups = {global_groups}\n{extra_toml}"
    );
    let endpoints = vec![
        endpoint(0, &target("open", "m", upstream.to_string())),
        json!({"model": "resource_server.endpoint", "pk": 2, "fields": {
            "endpoint_slug": "secret", "cluster": "sophia", "framework": "vllm", "model": "secret-model",
            "base_url": upstream, "allowed_globus_groups": ["g-secret"]}}),
    ];
    TestApp::builder()
        .endpoints(&endpoints)
        .toml(&toml)
        .start()
        .await
}

async fn call(
    gw: &TestGateway,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = gw.client();
    let mut req = match &body {
        Some(_) => client.post(gw.at(path)),
        None => client.get(gw.at(path)),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut res = match body {
        Some(b) => req.send_json(&b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn tokens_are_checked_with_first_rules() {
    let fake = Arc::new(FakeGlobus::default());
    let fake_url = start_fake(Arc::clone(&fake)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&fake_url, &mock.url(), "").await;

    // Liveness needs nothing; everything else needs a token.
    assert_eq!(call(&gw, "/health", None, None).await.0, 200);
    for path in [
        "/v1/models",
        "/list-endpoints",
        "/health/detailed",
        "/whoami",
        "/resource_server/v1/models",
    ] {
        let (status, body) = call(&gw, path, None, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let (status, _) = call(&gw, "/v1/chat/completions", None, Some(chat("m"))).await;
    assert_eq!(status, 401);
    let res = gw
        .client()
        .get(gw.at("/whoami"))
        .insert_header(("authorization", "Token abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "malformed header");

    let cases = [
        ("tok-unknown", 401, "not active"),
        ("tok-expired", 401, "expired"),
        ("tok-gmail", 403, "AUTHORIZED_IDP_DOMAINS"),
        ("tok-bob-nogroup", 403, "GLOBUS_GROUPS"),
    ];
    for (token, status, words) in cases {
        let (got, body) = call(&gw, "/v1/chat/completions", Some(token), Some(chat("m"))).await;
        assert_eq!(got, status, "{token}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(words),
            "{token}: {body}"
        );
        let kind = if status == 401 {
            "authentication_error"
        } else {
            "permission_error"
        };
        assert_eq!(body["error"]["type"], kind);
    }
    assert_eq!(mock.request_count(), 0);

    let (status, body) = call(
        &gw,
        "/v1/chat/completions",
        Some("tok-alice"),
        Some(chat("m")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, me) = call(&gw, "/whoami", Some("tok-alice"), None).await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "alice@anl.gov");
    assert_eq!(me["id"], "alice-id");
    assert_eq!(me["idp_id"], "idp-anl");
    assert_eq!(me["idp_name"], "Argonne National Laboratory");
    assert_eq!(me["groups"], json!(["g-users"]));
    assert_eq!(me["auth_method"], "globus");
    gw.stop().await;
}

#[actix_rt::test]
async fn policy_failures_are_403_naming_the_rule() {
    let fake = Arc::new(FakeGlobus::default());
    let fake_url = start_fake(Arc::clone(&fake)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&fake_url, &mock.url(), "globus_policies = [\"pol-1\"]\n").await;
    let (status, _) = call(&gw, "/whoami", Some("tok-alice"), None).await;
    assert_eq!(status, 200);
    let (status, body) = call(&gw, "/whoami", Some("tok-policy"), None).await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("GLOBUS_POLICIES"));
    gw.stop().await;
}

#[actix_rt::test]
async fn introspection_is_cached_and_single_flight() {
    let fake = Arc::new(FakeGlobus::default());
    let fake_url = start_fake(Arc::clone(&fake)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&fake_url, &mock.url(), "").await;

    fake.slow.store(true, Ordering::SeqCst);
    let requests = (0..20).map(|_| {
        call(
            &gw,
            "/v1/chat/completions",
            Some("tok-alice-2"),
            Some(chat("m")),
        )
    });
    let results = futures_util::future::join_all(requests).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    assert_eq!(
        fake.introspections.lock().unwrap()["tok-alice-2"],
        1,
        "one introspection for 20 concurrent requests"
    );
    fake.slow.store(false, Ordering::SeqCst);

    for _ in 0..5 {
        assert_eq!(call(&gw, "/whoami", Some("tok-alice-2"), None).await.0, 200);
    }
    assert_eq!(
        fake.introspections.lock().unwrap()["tok-alice-2"],
        1,
        "cached"
    );
    assert_eq!(fake.group_calls.load(Ordering::SeqCst), 1);

    // Refusals are cached too.
    for _ in 0..3 {
        assert_eq!(call(&gw, "/whoami", Some("tok-unknown"), None).await.0, 401);
    }
    assert_eq!(fake.introspections.lock().unwrap()["tok-unknown"], 1);
    assert_eq!(call(&gw, "/whoami", None, None).await.0, 401);

    // All of it shows in the metrics.
    let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    let value = |line: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} missing"))
    };
    assert_eq!(
        value("gateway_auth_failures_total{reason=\"invalid_token\"}"),
        3
    );
    assert_eq!(
        value("gateway_auth_failures_total{reason=\"missing_token\"}"),
        1
    );
    assert!(value("gateway_introspection_cache_total{result=\"hit\"}") >= 7);
    assert!(value("gateway_introspection_cache_total{result=\"miss\"}") >= 2);
    gw.stop().await;
}

#[actix_rt::test]
async fn globus_down_is_503_and_not_cached() {
    let fake = Arc::new(FakeGlobus::default());
    let fake_url = start_fake(Arc::clone(&fake)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&fake_url, &mock.url(), "").await;
    fake.down.store(true, Ordering::SeqCst);
    let (status, body) = call(&gw, "/whoami", Some("tok-alice"), None).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "auth_unavailable");
    fake.down.store(false, Ordering::SeqCst);
    assert_eq!(call(&gw, "/whoami", Some("tok-alice"), None).await.0, 200);
    gw.stop().await;
}

#[actix_rt::test]
async fn per_target_groups_hide_and_refuse_models() {
    let fake = Arc::new(FakeGlobus::default());
    let fake_url = start_fake(Arc::clone(&fake)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&fake_url, &mock.url(), "").await;

    let (_, models) = call(&gw, "/v1/models", Some("tok-alice"), None).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["m"]);
    let (_, endpoints) = call(&gw, "/list-endpoints", Some("tok-alice"), None).await;
    assert!(endpoints["clusters"].get("sophia").is_none(), "{endpoints}");
    let (status, body) = call(
        &gw,
        "/v1/chat/completions",
        Some("tok-alice"),
        Some(chat("secret-model")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("group"));

    let (_, models) = call(&gw, "/v1/models", Some("tok-restricted"), None).await;
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
    let (status, _) = call(
        &gw,
        "/v1/chat/completions",
        Some("tok-restricted"),
        Some(chat("secret-model")),
    )
    .await;
    assert_eq!(status, 200);
    gw.stop().await;
}

/// Only a target names groups (no global `globus_groups`): the caller's groups must still
/// be fetched, or the target refuses everyone (FIRST always fetches them).
#[actix_rt::test]
async fn per_target_groups_alone_still_fetch_groups() {
    let fake = Arc::new(FakeGlobus::default());
    let fake_url = start_fake(Arc::clone(&fake)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway_with_groups(&fake_url, &mock.url(), "[]", "").await;

    let (status, body) = call(
        &gw,
        "/v1/chat/completions",
        Some("tok-restricted"),
        Some(chat("secret-model")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, models) = call(&gw, "/v1/models", Some("tok-restricted"), None).await;
    assert_eq!(models["data"].as_array().unwrap().len(), 2, "{models}");
    // A member of no group still gets the open model, but not the restricted one.
    let (status, _) = call(
        &gw,
        "/v1/chat/completions",
        Some("tok-bob-nogroup"),
        Some(chat("m")),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &gw,
        "/v1/chat/completions",
        Some("tok-bob-nogroup"),
        Some(chat("secret-model")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Groups are fetched once per token and cached with the identity.
    let before = fake.group_calls.load(Ordering::SeqCst);
    call(
        &gw,
        "/v1/chat/completions",
        Some("tok-restricted"),
        Some(chat("secret-model")),
    )
    .await;
    assert_eq!(fake.group_calls.load(Ordering::SeqCst), before);
    gw.stop().await;
}

#[actix_rt::test]
async fn no_token_or_secret_in_logs_or_error_bodies() {
    let fake = Arc::new(FakeGlobus::default());
    let fake_url = start_fake(Arc::clone(&fake)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&fake_url, &mock.url(), "").await;
    let mut bodies = Vec::new();
    for token in [
        "tok-alice",
        "tok-unknown",
        "tok-expired",
        "tok-gmail",
        "tok-bob-nogroup",
    ] {
        for model in ["m", "nope"] {
            bodies.push(
                call(&gw, "/v1/chat/completions", Some(token), Some(chat(model)))
                    .await
                    .1
                    .to_string(),
            );
        }
    }
    fake.down.store(true, Ordering::SeqCst);
    bodies.push(
        call(&gw, "/whoami", Some("tok-fresh-during-outage"), None)
            .await
            .1
            .to_string(),
    );
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    let logs = gw.logs();
    assert!(logs.contains("\"request\""), "requests were logged: {logs}");
    for secret in [
        "tok-alice",
        "tok-unknown",
        "tok-expired",
        "tok-gmail",
        "tok-bob",
        "tok-fresh",
        SECRET,
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
        assert!(
            bodies.iter().all(|b| !b.contains(secret)),
            "{secret} leaked into a body"
        );
    }
    gw.stop().await;
}
