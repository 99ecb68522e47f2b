//! The token helper as a user runs it: the real binary against a fake Globus Auth token
//! endpoint on 127.0.0.1:0 that checks PKCE, then refreshes an expiring token.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Default)]
struct Fake {
    challenge: Mutex<String>,
    refreshes: Mutex<usize>,
}

async fn fake_auth(state: Arc<Fake>) -> String {
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/v2/oauth2/token",
            web::post().to(|form: web::Form<HashMap<String, String>>, s: web::Data<Fake>| async move {
                assert_eq!(form.get("client_id").map(String::as_str), Some("native-client"));
                match form.get("grant_type").map(String::as_str) {
                    Some("authorization_code") => {
                        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                        let expected = s.challenge.lock().unwrap().clone();
                        let ok = form.get("code").map(String::as_str) == Some("the-code")
                            && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == expected
                            && form.get("redirect_uri").map(String::as_str) == Some("https://auth.globus.org/v2/web/auth-code");
                        if !ok {
                            return HttpResponse::BadRequest().json(json!({"error": "invalid_grant", "error_description": "PKCE check failed"}));
                        }
                        // Expires within the helper's margin, so the next `auth token` refreshes.
                        HttpResponse::Ok().json(json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 30,
                            "scope": "https://auth.globus.org/scopes/gw/action_all", "resource_server": "gw", "token_type": "Bearer"}))
                    }
                    Some("refresh_token") => {
                        assert_eq!(form.get("refresh_token").map(String::as_str), Some("rt-1"));
                        *s.refreshes.lock().unwrap() += 1;
                        HttpResponse::Ok().json(json!({"access_token": "at-2", "expires_in": 3600, "scope": "s", "token_type": "Bearer"}))
                    }
                    _ => HttpResponse::BadRequest().json(json!({"error": "unsupported_grant_type"})),
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

fn helper(auth_base: &str, config_home: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inference-gateway"));
    cmd.arg("auth")
        .args(args)
        .args([
            "--auth-base",
            auth_base,
            "--client-id",
            "native-client",
            "--gateway-client-id",
            "gw",
        ])
        .env("XDG_CONFIG_HOME", config_home)
        .env_remove("INFERENCE_GATEWAY_TOKEN_FILE")
        .env_remove("CLI_AUTH_CLIENT_ID");
    cmd
}

#[actix_rt::test]
async fn login_with_pkce_then_refresh() {
    let fake = Arc::new(Fake::default());
    let auth_base = fake_auth(Arc::clone(&fake)).await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_path_buf();

    // `auth token` before logging in: a clear error.
    let out = helper(&auth_base, &home_path, &["token"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth login"));

    let (base, fake2, path) = (auth_base.clone(), Arc::clone(&fake), home_path.clone());
    let status = actix_rt::task::spawn_blocking(move || {
        let mut child = helper(&base, &path, &["login"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut url = String::new();
        for _ in 0..20 {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if line.contains("/v2/oauth2/authorize?") {
                url = line.trim().to_string();
                break;
            }
        }
        assert!(
            url.starts_with(&format!(
                "{base}/v2/oauth2/authorize?client_id=native-client&"
            )),
            "{url}"
        );
        assert!(
            url.contains("scope=https%3A%2F%2Fauth.globus.org%2Fscopes%2Fgw%2Faction_all"),
            "{url}"
        );
        assert!(url.contains("code_challenge_method=S256"));
        let challenge = url
            .split("code_challenge=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        *fake2.challenge.lock().unwrap() = challenge.to_string();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"the-code\n")
            .unwrap();
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());

    let token_file = home_path.join("inference-gateway").join("tokens.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The stored token expires within the margin: `auth token` refreshes it.
    let (base, path) = (auth_base.clone(), home_path.clone());
    let out =
        actix_rt::task::spawn_blocking(move || helper(&base, &path, &["token"]).output().unwrap())
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "at-2");
    assert_eq!(*fake.refreshes.lock().unwrap(), 1);

    // Now it is fresh: printed without asking Globus again; the refresh token was kept.
    let (base, path) = (auth_base.clone(), home_path.clone());
    let out =
        actix_rt::task::spawn_blocking(move || helper(&base, &path, &["token"]).output().unwrap())
            .await
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "at-2");
    assert_eq!(*fake.refreshes.lock().unwrap(), 1);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&token_file).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], "rt-1");

    // Logging in again without --force keeps the tokens.
    let (base, path) = (auth_base.clone(), home_path.clone());
    let out = actix_rt::task::spawn_blocking(move || {
        helper(&base, &path, &["login"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Already logged in"));
}
