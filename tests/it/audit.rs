//! Issue 19 item 10: failed authentications, key creation and key revocation leave audit
//! events in the log (who, which key, from where; never a secret), a refused admin key is
//! counted, and the answer that carries a new key is never cached.
use crate::common::*;
use serde_json::{json, Value};

const BOOTSTRAP: &str = "audit-admin-key-0123456789";

async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, awc::http::header::HeaderMap, Value) {
    let client = gw.client();
    let mut req = match method {
        "POST" => client.post(gw.at(path)),
        "DELETE" => client.delete(gw.at(path)),
        _ => client.get(gw.at(path)),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut res = match body {
        Some(b) => req.send_json(&b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = res.body().await.unwrap();
    (
        res.status().as_u16(),
        res.headers().clone(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The audit events logged so far.
fn events(gw: &TestGateway) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["msg"] == "audit")
        .collect()
}

fn find<'a>(events: &'a [Value], event: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == event && pred(e))
        .unwrap_or_else(|| panic!("no {event} event in {events:#?}"))
}

async fn admin_failures(gw: &TestGateway) -> f64 {
    let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
    let text = String::from_utf8(res.body().limit(8 << 20).await.unwrap().to_vec()).unwrap();
    text.lines()
        .filter(|l| l.starts_with("gateway_admin_auth_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[actix_rt::test]
async fn auth_failures_and_key_changes_are_audited_without_secrets() {
    std::env::set_var("IGW_TEST_AUDIT_ADMIN", BOOTSTRAP);
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| s.auth.admin_key_env = "IGW_TEST_AUDIT_ADMIN".into())
        .start()
        .await;

    // Creation: no-store, and an event naming who made which key for whom.
    let (status, headers, created) = send(
        &gw,
        "POST",
        "/admin/keys",
        Some(BOOTSTRAP),
        Some(json!({"user": "alice", "org": "lab", "models": ["m"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        headers.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store"),
        "{headers:?}"
    );
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();

    // Failures: no token, an unknown token, a bad admin key, a user key on the admin API.
    let before = admin_failures(&gw).await;
    assert_eq!(send(&gw, "GET", "/v1/models", None, None).await.0, 401);
    let unknown = "igw_00000000000000000000000000000000000000000000000000000000000000ff";
    assert_eq!(
        send(&gw, "GET", "/v1/models", Some(unknown), None).await.0,
        401
    );
    let wrong_admin = "not-the-admin-key-0123456789";
    assert_eq!(
        send(&gw, "GET", "/admin/keys", Some(wrong_admin), None)
            .await
            .0,
        401
    );
    assert_eq!(
        send(&gw, "GET", "/admin/keys", Some(&secret), None).await.0,
        403
    );
    assert_eq!(send(&gw, "GET", "/admin/keys", None, None).await.0, 401);
    assert_eq!(admin_failures(&gw).await - before, 3.0);

    // Revocation, then the revoked key is refused and named by its id.
    let (status, _, _) = send(
        &gw,
        "DELETE",
        &format!("/admin/keys/{id}"),
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        send(&gw, "GET", "/whoami", Some(&secret), None).await.0,
        401
    );

    let all = events(&gw);
    let made = find(&all, "key.created", |e| e["key_id"] == id.as_str());
    assert_eq!(made["by"], "bootstrap", "{made}");
    assert_eq!(made["user"], "alice", "{made}");
    assert_eq!(made["org"], "lab", "{made}");
    assert_eq!(made["role"], "user", "{made}");
    assert_eq!(made["client_ip"], "127.0.0.1", "{made}");
    let revoked = find(&all, "key.revoked", |e| e["key_id"] == id.as_str());
    assert_eq!(revoked["by"], "bootstrap", "{revoked}");
    assert_eq!(revoked["client_ip"], "127.0.0.1", "{revoked}");

    let missing = find(&all, "auth.failed", |e| e["reason"] == "missing_token");
    assert_eq!(missing["path"], "/v1/models", "{missing}");
    assert_eq!(missing["client_ip"], "127.0.0.1", "{missing}");
    assert_eq!(missing["status"], 401, "{missing}");
    find(&all, "auth.failed", |e| {
        e["reason"] == "invalid_token" && e["credential"] == "api_key" && e["key_id"].is_null()
    });
    find(&all, "auth.failed", |e| {
        e["key_id"] == id.as_str() && e["path"] == "/whoami"
    });
    let admin = find(&all, "admin_auth.failed", |e| {
        e["reason"] == "invalid_admin_key"
    });
    assert_eq!(admin["path"], "/admin/keys", "{admin}");
    assert_eq!(admin["client_ip"], "127.0.0.1", "{admin}");
    let not_admin = find(&all, "admin_auth.failed", |e| e["reason"] == "not_admin");
    assert_eq!(not_admin["key_id"], id.as_str(), "{not_admin}");

    let logs = gw.logs();
    for leaked in [
        secret.as_str(),
        unknown,
        wrong_admin,
        BOOTSTRAP,
        &secret[4..20],
    ] {
        assert!(!logs.contains(leaked), "a secret reached the log: {leaked}");
    }
    gw.stop().await;
}
