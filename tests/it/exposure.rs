//! Issue 19 item 5: what each route shows, and to whom, under `auth.mode = "required"`.
//! Every route's exposure is one entry of `routes::exposure::ROUTES`; these tests hold the
//! served routes, the OpenAPI document and the answers to that table.
use crate::common::*;
use serde_json::{json, Value};

const BOOTSTRAP: &str = "exposure-admin-key-0123456789";

async fn gateway(mock: &MockUpstream) -> TestGateway {
    std::env::set_var("IGW_TEST_EXPOSURE_ADMIN", BOOTSTRAP);
    TestApp::builder()
        .targets(&[
            target("a", "m", mock.url()),
            T {
                slug: "b",
                cluster: "other-cluster",
                framework: "sglang",
                model: "secret-model",
                base_url: mock.url(),
            },
        ])
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .settings(|s| s.auth.admin_key_env = "IGW_TEST_EXPOSURE_ADMIN".into())
        .start()
        .await
}

async fn call(gw: &TestGateway, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let client = gw.client();
    let mut req = match method {
        "POST" => client.post(gw.at(path)),
        "PUT" => client.put(gw.at(path)),
        "DELETE" => client.delete(gw.at(path)),
        _ => client.get(gw.at(path)),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut res = if matches!(method, "POST" | "PUT") {
        req.send_json(&json!({})).await.unwrap()
    } else {
        req.send().await.unwrap()
    };
    let bytes = res.body().limit(8 << 20).await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn key_for(gw: &TestGateway, body: Value) -> String {
    let (status, key) = call_json(gw, "/admin/keys", BOOTSTRAP, body).await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_string()
}

async fn call_json(gw: &TestGateway, path: &str, key: &str, body: Value) -> (u16, Value) {
    let mut res = gw
        .client()
        .post(gw.at(path))
        .bearer_auth(key)
        .send_json(&body)
        .await
        .unwrap();
    let bytes = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn status_and_jobs_need_a_caller() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock).await;
    for path in [
        "/status",
        "/local/jobs",
        "/resource_server/status",
        "/resource_server/local/jobs",
    ] {
        let (status, body) = call(&gw, "GET", path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{path}: {body}");
        let (status, body) = call(&gw, "GET", path, Some("igw_nobody")).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let key = key_for(&gw, json!({"user": "alice"})).await;
    let (status, body) = call(&gw, "GET", "/status", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["clusters"]["local"].is_object(), "{body}");
    let (status, body) = call(&gw, "GET", "/local/jobs", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    gw.stop().await;
}

#[actix_rt::test]
async fn a_model_limited_key_sees_only_its_models_everywhere() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock).await;
    let limited = key_for(&gw, json!({"user": "alice", "models": ["m"]})).await;
    let open = key_for(&gw, json!({"user": "bob"})).await;

    let (status, models) = call(&gw, "GET", "/v1/models", Some(&limited)).await;
    assert_eq!(status, 200);
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");

    for path in ["/list-endpoints", "/health/detailed"] {
        let (status, body) = call(&gw, "GET", path, Some(&limited)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let text = body.to_string();
        assert!(text.contains("\"m\""), "{path}: {text}");
        for hidden in ["secret-model", "other-cluster", "sglang", "\"b\""] {
            assert!(!text.contains(hidden), "{path} shows {hidden}: {text}");
        }
        // A key without limits still sees everything.
        let (_, body) = call(&gw, "GET", path, Some(&open)).await;
        assert!(body.to_string().contains("secret-model"), "{path}: {body}");
    }
    let (_, detailed) = call(&gw, "GET", "/health/detailed", Some(&limited)).await;
    assert_eq!(
        detailed["targets"].as_array().unwrap().len(),
        1,
        "{detailed}"
    );
    assert_eq!(
        detailed["models"].as_array().unwrap().len(),
        1,
        "{detailed}"
    );
    gw.stop().await;
}

/// A concrete path for a registered one.
fn concrete(path: &str) -> String {
    path.replace("{cluster}", "local")
        .replace("{framework}", "vllm")
        .replace("{id}", "x")
        .replace("{subject}", "user:x")
        .replace("{name}", "local")
}

#[actix_rt::test]
async fn every_route_answers_as_the_exposure_table_says() {
    use inference_gateway::routes::exposure::{Exposure, ROUTES};
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(&mock).await;
    let key = key_for(&gw, json!({"user": "alice"})).await;
    for (method, path, exposure) in ROUTES {
        for prefix in ["", "/resource_server"] {
            let url = format!("{prefix}{}", concrete(path));
            let (status, body) = call(&gw, method, &url, None).await;
            let route_missing = status == 404
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("No route"));
            assert!(
                !route_missing && status != 405,
                "{method} {url} is not served: {body}"
            );
            match exposure {
                Exposure::Public => assert!(
                    (200..300).contains(&status),
                    "{method} {url} should answer without a token: {status} {body}"
                ),
                _ => assert_eq!(
                    status, 401,
                    "{method} {url} answered without a token: {body}"
                ),
            }
            if *exposure == Exposure::Caller {
                let (status, body) = call(&gw, method, &url, Some(&key)).await;
                assert!(
                    status != 401 && status != 403,
                    "{method} {url} refused a caller: {status} {body}"
                );
            }
        }
    }

    // The document lists exactly the table's routes, each with its security.
    let (status, doc) = call(&gw, "GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let exposure = ROUTES
                .iter()
                .find(|(m, p, _)| *m == method && p == path)
                .map(|(_, _, e)| *e)
                .unwrap_or_else(|| {
                    // Chat aliases come from config: inference routes, so `Caller`.
                    let tag = op["tags"][0].as_str().unwrap_or_default();
                    assert!(
                        matches!(tag, "inference" | "pinned"),
                        "{method} {path} is documented but not in the table"
                    );
                    Exposure::Caller
                });
            let security = &op["security"];
            match exposure {
                Exposure::Public => assert_eq!(security, &json!([]), "{method} {path}"),
                Exposure::Caller | Exposure::Admin => {
                    assert_eq!(security, &json!([{"bearer": []}]), "{method} {path}");
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                }
                Exposure::Callback => assert!(security[0]["internalSecret"].is_array()),
            }
            documented.push((method, path.clone()));
        }
    }
    for (method, path, _) in ROUTES {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is in the table but not documented"
        );
    }
    gw.stop().await;
}
