//! The admin console (`/admin/ui`): a compiled-in page under a strict policy, whose data
//! calls are all admin routes; the overview's sources (`/admin/backends` with models and
//! live target state, `/admin/clusters`) answer the admin key and nobody else. The page
//! itself is driven in a real browser by tests/python/test_admin_console.py.

use crate::common::*;
use inference_gateway::routes::exposure::{self, Exposure};
use serde_json::{json, Value};

const CONSOLE_JS: &str = include_str!("../../src/ui/console.js");

async fn fetch(gw: &TestGateway, path: &str, key: Option<&str>) -> (u16, String, String, String) {
    let mut req = gw.client().get(gw.at(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut res = req.send().await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (csp, ctype) = (header("content-security-policy"), header("content-type"));
    let body = res.body().limit(1 << 20).await.unwrap();
    (
        res.status().as_u16(),
        csp,
        ctype,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[actix_rt::test]
async fn the_page_and_its_assets_are_served_under_a_strict_policy() {
    let gw = TestApp::builder().admin_key().start().await;
    for (path, ctype, marker) in [
        ("/admin/ui", "text/html", "admin console"),
        ("/admin/ui/console.js", "text/javascript", "sessionStorage"),
        ("/admin/ui/console.css", "text/css", ".meter"),
        ("/resource_server/admin/ui", "text/html", "ui/console.js"),
    ] {
        let (status, csp, got_type, body) = fetch(&gw, path, None).await;
        assert_eq!(status, 200, "{path}: no key is needed for the page itself");
        assert!(got_type.starts_with(ctype), "{path}: {got_type}");
        assert!(body.contains(marker), "{path}");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
    let (_, _, _, html) = fetch(&gw, "/admin/ui", None).await;
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resource"
    );
    gw.stop().await;
}

/// Every path the script calls is an admin route (so a user key gets 403 from each), and
/// the key goes only in the Authorization header, kept in sessionStorage.
#[actix_rt::test]
async fn every_data_call_of_the_console_is_an_admin_route() {
    let mut calls: Vec<String> = CONSOLE_JS
        .match_indices("'/admin/")
        .chain(CONSOLE_JS.match_indices("`/admin/"))
        .map(|(i, _)| {
            let rest = &CONSOLE_JS[i + 1..];
            let end = rest.find(['\'', '`', '?']).unwrap();
            rest[..end].to_string()
        })
        .collect();
    calls.sort();
    calls.dedup();
    assert!(calls.len() >= 8, "{calls:?}");
    for call in &calls {
        // `${...}` and a trailing `/` + id become the route's `{param}`.
        let shape = call.split("${").next().unwrap().trim_end_matches('/');
        let admin = exposure::ROUTES
            .iter()
            .any(|(_, p, e)| *e == Exposure::Admin && p.starts_with(shape));
        assert!(admin, "{call} is not an admin route");
    }
    assert!(!CONSOLE_JS.contains("localStorage") && !CONSOLE_JS.contains("document.cookie"));
    assert!(
        !CONSOLE_JS.contains("innerHTML"),
        "API text is set as text only"
    );

    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .admin_key()
        .env(&[("GATEWAY__AUTH__MODE", "required")])
        .start()
        .await;
    let mut res = gw
        .client()
        .post(gw.at("/admin/keys"))
        .bearer_auth(ADMIN_KEY)
        .send_json(&json!({"user": "dave"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let created: Value = res.json().await.unwrap();
    let user_key = created["key"].as_str().unwrap();
    for path in [
        "/admin/backends",
        "/admin/clusters",
        "/admin/usage?bucket=hour",
        "/admin/keys",
        "/admin/quotas?limit=1000",
        "/admin/batches?limit=200",
    ] {
        assert_eq!(fetch(&gw, path, None).await.0, 401, "{path} without a key");
        assert_eq!(
            fetch(&gw, path, Some(user_key)).await.0,
            403,
            "{path} with a user key"
        );
        assert_eq!(fetch(&gw, path, Some(ADMIN_KEY)).await.0, 200, "{path}");
    }
    gw.stop().await;
}

/// What the overview draws: models with status and targets, targets with live state,
/// clusters with their scheduler and maintenance.
#[actix_rt::test]
async fn the_overview_sources_carry_models_targets_and_clusters() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .admin_key()
        .start()
        .await;
    let (status, _, _) = gw.post("/v1/chat/completions", &chat("llama")).await;
    assert_eq!(status, 200);
    let (status, backends) = gw.get_admin("/admin/backends").await;
    assert_eq!(status, 200, "{backends}");
    assert_eq!(
        backends["models"],
        json!([{"id": "llama", "status": "running", "targets": ["a"]}]),
        "{backends}"
    );
    let t = &backends["data"][0];
    assert_eq!(
        (t["id"].as_str(), t["health"].as_str()),
        (Some("a"), Some("healthy"))
    );
    assert_eq!(t["requests"], 1, "{t}");
    // (Latency is null here: the test gateway's clock is a manual one.)
    for field in [
        "ewma_ttfb_ms",
        "breaker",
        "scheduler",
        "maintenance",
        "in_flight",
        "failures",
        "last_error",
    ] {
        assert!(t.get(field).is_some(), "{field}: {t}");
    }
    let (status, clusters) = gw.get_admin("/admin/clusters").await;
    assert_eq!(status, 200, "{clusters}");
    assert_eq!(clusters["clusters"]["local"]["status"], "up", "{clusters}");
    let res = gw
        .client()
        .put(gw.at("/admin/clusters/local/maintenance"))
        .bearer_auth(ADMIN_KEY)
        .send_json(&json!({"enabled": true, "notice": "disk swap"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let (_, clusters) = gw.get_admin("/admin/clusters").await;
    assert_eq!(
        (
            &clusters["clusters"]["local"]["status"],
            &clusters["clusters"]["local"]["notice"]
        ),
        (&json!("maintenance"), &json!("disk swap"))
    );
    let (_, backends) = gw.get_admin("/admin/backends").await;
    assert_eq!(backends["models"][0]["status"], "maintenance", "{backends}");
    gw.stop().await;
}
