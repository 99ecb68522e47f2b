//! Issue 19: a NUL byte from a client (`%00` in a path segment or query parameter, `\u0000`
//! in a JSON string) never makes a 500, on SQLite and on PostgreSQL (whose text cannot
//! hold NUL), with authentication required and without.
use crate::common::db::TestDb;
use crate::common::*;
use serde_json::{json, Value};

/// Which credential a route takes.
#[derive(Clone, Copy)]
enum As {
    User,
    Admin,
}

/// Every route with a path or query parameter (and the `/resource_server` form of one),
/// each with a NUL where a client may put one.
fn routes() -> Vec<(&'static str, &'static str, As, Option<Value>)> {
    vec![
        ("GET", "/v1/files/a%00b", As::User, None),
        ("DELETE", "/v1/files/a%00b", As::User, None),
        ("GET", "/v1/files/a%00b/content", As::User, None),
        ("GET", "/v1/files?after=%00", As::User, None),
        ("GET", "/v1/files?after=file-%00&limit=5", As::User, None),
        ("GET", "/v1/batches/a%00b", As::User, None),
        ("POST", "/v1/batches/a%00b/cancel", As::User, None),
        ("GET", "/v1/batches/a%00b/result", As::User, None),
        ("GET", "/v1/batches?after=%00", As::User, None),
        (
            "POST",
            "/local%00/vllm/v1/batches",
            As::User,
            Some(json!({"input_file": "/tmp/x.jsonl", "model": "llama"})),
        ),
        (
            "POST",
            "/local/vl%00lm/v1/chat/completions",
            As::User,
            Some(chat("llama")),
        ),
        ("GET", "/local%00/jobs", As::User, None),
        ("DELETE", "/admin/keys/%00", As::Admin, None),
        ("GET", "/admin/keys?user=%00", As::Admin, None),
        ("GET", "/admin/usage?user=%00&model=a%00", As::Admin, None),
        ("GET", "/admin/quota/%00", As::Admin, None),
        ("GET", "/admin/quota/user:a%00b", As::Admin, None),
        (
            "PUT",
            "/admin/quota/user:a%00b",
            As::Admin,
            Some(json!({"requests_per_second": 5})),
        ),
        ("POST", "/admin/quota/user:a%00b/reset", As::Admin, None),
        (
            "PUT",
            "/admin/clusters/lo%00cal/maintenance",
            As::Admin,
            Some(json!({"enabled": true})),
        ),
        ("GET", "/resource_server/v1/files/a%00b", As::User, None),
        // JSON strings with NUL that reach a table.
        (
            "POST",
            "/admin/keys",
            As::Admin,
            Some(json!({"user": "a\u{0000}b", "org": "o\u{0000}"})),
        ),
        (
            "POST",
            "/v1/batches",
            As::User,
            Some(
                json!({"input_file_id": "file-\u{0000}", "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"}),
            ),
        ),
    ]
}

async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let client = gw.client();
    let mut req = client.request(method.parse().unwrap(), gw.at(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut res = match body {
        Some(b) => req.send_json(b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn nul_in_paths_queries_and_json_is_never_a_server_error() {
    let mut wrong = Vec::new();
    for db in TestDb::all("nul_in_paths_queries_and_json_is_never_a_server_error") {
        for auth in ["none", "required"] {
            let mock = MockUpstream::start(Behavior::default()).await.unwrap();
            let keys = tempfile::tempdir().unwrap();
            let admin_file = admin_key_file(keys.path());
            let url = db.config_url();
            let gw = TestApp::builder()
                .target(target("a", "llama", mock.url()))
                .env(&[("GATEWAY__AUTH__MODE", auth)])
                .settings(move |s| {
                    s.database.url = url;
                    s.auth.admin_key_file = admin_file.into();
                    s.auth.admin_key_env = String::new();
                })
                .start()
                .await;
            let user_key = if auth == "required" {
                let (status, created) = send(
                    &gw,
                    "POST",
                    "/admin/keys",
                    Some(ADMIN_KEY),
                    Some(&json!({"user": "alice"})),
                )
                .await;
                assert_eq!(status, 201, "{created}");
                Some(created["key"].as_str().unwrap().to_string())
            } else {
                None
            };
            for (method, path, who, body) in routes() {
                let key = match who {
                    As::Admin => Some(ADMIN_KEY),
                    As::User => user_key.as_deref(),
                };
                let (status, answer) = send(&gw, method, path, key, body.as_ref()).await;
                let what = format!("{} auth={auth}: {method} {path}", db.name());
                let error = &answer["error"];
                if !(status == 400 || status == 404)
                    || !(error["message"].is_string() && error["type"].is_string())
                {
                    wrong.push(format!("{what}: {status} {answer}"));
                }
            }
            // The gateway still serves, and logs no error about it.
            let (status, _) = send(
                &gw,
                "POST",
                "/v1/chat/completions",
                user_key.as_deref(),
                Some(&chat("llama")),
            )
            .await;
            assert_eq!(status, 200);
            gw.stop().await;
        }
    }
    assert!(
        wrong.is_empty(),
        "not a 400/404 in OpenAI form:\n{}",
        wrong.join("\n")
    );
}
