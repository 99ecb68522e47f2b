//! API keys end to end: the `keys` CLI and `/admin/keys` on one database, keys used as
//! bearer tokens, roles, expiry, model limits and revocation.
use std::process::Command;

use crate::common::*;
use serde_json::{json, Value};

const BOOTSTRAP: &str = "bootstrap-admin-key-0123456789";

fn cli(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .args(args)
        .env("GATEWAY__STORAGE__DATA_DIR", data_dir)
        .env_remove("GATEWAY__DATABASE__URL")
        .output()
        .unwrap()
}

async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
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
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn cli_keys_authenticate_requests_with_their_limits() {
    let data = tempfile::tempdir().unwrap();
    let out = cli(
        data.path(),
        &[
            "keys",
            "create",
            "--user",
            "alice",
            "--org",
            "lab",
            "--expires",
            "30d",
            "--models",
            "m",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("igw_") && key.len() == 68, "{key}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only once"));

    let out = cli(data.path(), &["keys", "list"]);
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains("alice") && listing.contains("lab") && listing.contains("active"),
        "{listing}"
    );
    assert!(listing.contains(&key[..12]), "prefix shown");
    assert!(!listing.contains(&key[12..]), "secret never listed");

    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let data_dir = data.path().display().to_string();
    let gw = TestApp::builder()
        .targets(&[
            target("a", "m", mock.url()),
            target("b", "other", mock.url()),
        ])
        .env(&[
            ("GATEWAY__AUTH__MODE", "required"),
            ("GATEWAY__STORAGE__DATA_DIR", &data_dir),
        ])
        .settings(|s| s.auth.admin_key_env = String::new())
        .start()
        .await;
    let (status, _) = send(&gw, "POST", "/v1/chat/completions", None, Some(chat("m"))).await;
    assert_eq!(status, 401);
    let (status, body) = send(
        &gw,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        Some(chat("m")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, me) = send(&gw, "GET", "/whoami", Some(&key), None).await;
    assert_eq!(me["username"], "alice");
    assert_eq!(me["org"], "lab");
    assert_eq!(me["auth_method"], "api_key");
    assert_eq!(me["admin"], false);
    assert_eq!(me["models"], json!(["m"]));

    // Limited to model m: other is refused and not listed.
    let (status, body) = send(
        &gw,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        Some(chat("other")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (_, models) = send(&gw, "GET", "/v1/models", Some(&key), None).await;
    assert_eq!(models["data"].as_array().unwrap().len(), 1);

    // A user key is not an admin key.
    let (status, body) = send(&gw, "GET", "/admin/keys", Some(&key), None).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = send(
        &gw,
        "POST",
        "/v1/chat/completions",
        Some("igw_0000000000000000000000000000000000000000000000000000000000000000"),
        Some(chat("m")),
    )
    .await;
    assert_eq!(status, 401);
    gw.stop().await;

    // Revoked from the CLI: a gateway started afterwards refuses it.
    let id = String::from_utf8(cli(data.path(), &["keys", "list", "--user", "alice"]).stdout)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = cli(data.path(), &["keys", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(data.path(), &["keys", "revoke", &id]);
    assert_eq!(out.status.code(), Some(1), "revoking twice is an error");
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .env(&[
            ("GATEWAY__AUTH__MODE", "required"),
            ("GATEWAY__STORAGE__DATA_DIR", &data_dir),
        ])
        .start()
        .await;
    let (status, _) = send(&gw, "GET", "/whoami", Some(&key), None).await;
    assert_eq!(status, 401);
    gw.stop().await;
}

#[actix_rt::test]
async fn admin_api_creates_lists_and_revokes_keys() {
    std::env::set_var("IGW_TEST_BOOTSTRAP_ADMIN", BOOTSTRAP);
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| s.auth.admin_key_env = "IGW_TEST_BOOTSTRAP_ADMIN".into())
        .start()
        .await;

    // The bootstrap key makes the first admin key.
    let (status, admin) = send(
        &gw,
        "POST",
        "/admin/keys",
        Some(BOOTSTRAP),
        Some(json!({"user": "root", "admin": true})),
    )
    .await;
    assert_eq!(status, 201, "{admin}");
    let admin_key = admin["key"].as_str().unwrap().to_string();
    assert_eq!(admin["role"], "admin");

    // The admin key makes a user key, and sees both (without secrets).
    let (status, user) = send(
        &gw,
        "POST",
        "/admin/keys",
        Some(&admin_key),
        Some(json!({"user": "bob", "org": "physics", "expires_in": "1h"})),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    let user_key = user["key"].as_str().unwrap().to_string();
    let expires = user["expires_at"].as_i64().unwrap();
    assert!((expires - user["created_at"].as_i64().unwrap() - 3600).abs() <= 1);
    let (status, list) = send(&gw, "GET", "/admin/keys", Some(&admin_key), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains(&user_key[12..]),
        "no secret in listings"
    );
    assert!(list["data"][0].get("hash").is_none());
    let (_, only_bob) = send(&gw, "GET", "/admin/keys?user=bob", Some(&admin_key), None).await;
    assert_eq!(only_bob["data"].as_array().unwrap().len(), 1);

    // Bad bodies: 400 in the envelope, naming the problem.
    for (body, words) in [
        (json!({"user": "x", "colour": "red"}), "colour"),
        (json!({"user": ""}), "user"),
        (json!({"user": "x", "expires_in": "soon"}), "expires_in"),
        (json!({"org": "x"}), "user"),
    ] {
        let (status, err) = send(&gw, "POST", "/admin/keys", Some(&admin_key), Some(body)).await;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(words),
            "{err}"
        );
    }

    // The user key works until revoked; revocation takes effect at once on this replica.
    assert!(
        list["data"][1]["last_used_at"].is_null(),
        "{list}: not used yet"
    );
    assert_eq!(
        send(&gw, "GET", "/whoami", Some(&user_key), None).await.0,
        200
    );
    let id = user["id"].as_str().unwrap();
    // The use is recorded (in the background, to the minute) and listed.
    let mut last_used = Value::Null;
    for _ in 0..100 {
        let (_, bob) = send(&gw, "GET", "/admin/keys?user=bob", Some(&admin_key), None).await;
        last_used = bob["data"][0]["last_used_at"].clone();
        if !last_used.is_null() {
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let created = user["created_at"].as_i64().unwrap();
    assert!(
        last_used
            .as_i64()
            .is_some_and(|t| t >= created && t <= created + 60),
        "last_used_at: {last_used}"
    );
    let (status, _) = send(
        &gw,
        "DELETE",
        &format!("/admin/keys/{id}"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = send(&gw, "GET", "/whoami", Some(&user_key), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, err) = send(
        &gw,
        "DELETE",
        &format!("/admin/keys/{id}"),
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");

    // An expired key is refused with a message saying so.
    let expired = inference_gateway::auth::keys::create(
        gw.store.as_ref(),
        inference_gateway::auth::keys::NewKey {
            user: "old".into(),
            org: None,
            admin: false,
            expires_at: Some(inference_gateway::store::now_ms() - 1000),
            models: vec![],
        },
    )
    .await
    .unwrap()
    .0;
    let (status, body) = send(&gw, "GET", "/whoami", Some(&expired), None).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let logs = gw.logs();
    for secret in [&admin_key, &user_key, &expired, &BOOTSTRAP.to_string()] {
        assert!(
            !logs.contains(secret.as_str()),
            "a key leaked into the logs"
        );
    }
    gw.stop().await;
}

/// Issue 19 item 7: a lifetime past ten years (or one that overflows) is refused, over
/// HTTP and in the CLI, instead of making a key with a negative `expires_at`.
#[actix_rt::test]
async fn lifetimes_past_ten_years_are_refused() {
    std::env::set_var("IGW_TEST_BOOTSTRAP_ADMIN", BOOTSTRAP);
    let gw = TestApp::builder()
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| s.auth.admin_key_env = "IGW_TEST_BOOTSTRAP_ADMIN".into())
        .start()
        .await;
    for lifetime in [
        "30000000000000w",
        "18446744073709551615",
        "99999999999999999999999d",
        "3651d",
        "522w",
    ] {
        let (status, err) = send(
            &gw,
            "POST",
            "/admin/keys",
            Some(BOOTSTRAP),
            Some(json!({"user": "x", "expires_in": lifetime})),
        )
        .await;
        assert_eq!(status, 400, "{lifetime}: {err}");
        assert_eq!(err["error"]["param"], "expires_in", "{err}");
    }
    let (status, key) = send(
        &gw,
        "POST",
        "/admin/keys",
        Some(BOOTSTRAP),
        Some(json!({"user": "x", "expires_in": "3650d"})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let lifetime = key["expires_at"].as_i64().unwrap() - key["created_at"].as_i64().unwrap();
    assert!((lifetime - 3650 * 86_400).abs() <= 1, "{key}");
    gw.stop().await;

    let data = tempfile::tempdir().unwrap();
    for lifetime in ["30000000000000w", "18446744073709551615", "3651d"] {
        let out = cli(
            data.path(),
            &["keys", "create", "--user", "x", "--expires", lifetime],
        );
        assert_eq!(out.status.code(), Some(1), "{lifetime}");
        assert!(out.stdout.is_empty(), "no key printed for {lifetime}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--expires"), "{stderr}");
    }
}

/// Issue 19 item 8: `/admin/keys` says 413 for a body over the JSON limit, and bad bodies
/// are explained in the client's terms (the field, what was expected), never with Rust
/// type names.
#[actix_rt::test]
async fn admin_key_body_errors_are_413_and_name_the_field() {
    std::env::set_var("IGW_TEST_BOOTSTRAP_ADMIN", BOOTSTRAP);
    let gw = TestApp::builder()
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| s.auth.admin_key_env = "IGW_TEST_BOOTSTRAP_ADMIN".into())
        .start()
        .await;
    let huge = json!({"user": "x", "org": "o".repeat(2 << 20)});
    let (status, err) = send(&gw, "POST", "/admin/keys", Some(BOOTSTRAP), Some(huge)).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["code"], "payload_too_large");

    for (body, param, words) in [
        (json!({"user": 5}), Some("user"), "`user`"),
        (
            json!({"user": "x", "admin": "yes"}),
            Some("admin"),
            "`admin`",
        ),
        (
            json!({"user": "x", "models": "m"}),
            Some("models"),
            "`models`",
        ),
        (
            json!({"user": "x", "models": [1]}),
            Some("models[0]"),
            "`models[0]`",
        ),
        (json!([]), None, "JSON object"),
        (json!("x"), None, "JSON object"),
        (json!({"org": "x"}), Some("user"), "`user`"),
        (
            json!({"user": "x", "colour": 1}),
            Some("colour"),
            "`colour`",
        ),
    ] {
        let (status, err) = send(
            &gw,
            "POST",
            "/admin/keys",
            Some(BOOTSTRAP),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
        for rust in ["struct", "CreateKey", "Vec<", "sequence", "line 1 column"] {
            assert!(!message.contains(rust), "{body}: {message}");
        }
        assert_eq!(err["error"]["param"].as_str(), param, "{body}: {err}");
    }
    // Not JSON at all.
    let mut res = gw
        .client()
        .post(gw.at("/admin/keys"))
        .bearer_auth(BOOTSTRAP)
        .content_type("application/json")
        .send_body("{\"user\": ")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "invalid_json", "{err}");
    gw.stop().await;
}
