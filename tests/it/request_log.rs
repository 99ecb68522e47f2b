//! The request log end to end: requests through a real gateway produce request_log rows
//! (SQLite, and PostgreSQL with DATABASE_TEST_URL) that `/admin/usage` aggregates; payloads
//! only when asked; and nothing lost while PostgreSQL is unreachable.
use std::num::NonZero;
use std::time::Duration;

use crate::common::chaos::ChaosProxy;
use crate::common::db::TestDb;
use crate::common::*;
use inference_gateway::actors::log_writer::Spill;
use inference_gateway::config::{nz, Millis, Seconds};
use inference_gateway::store::log_sink::LogStats;
use inference_gateway::store::{self, LogRow, UsageFilter};
use serde_json::{json, Value};

async fn post_with_id(gw: &TestGateway, body: &Value, id: &str) -> (u16, Vec<u8>) {
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .insert_header(("x-request-id", id))
        .send_json(body)
        .await
        .unwrap();
    let bytes = res.body().limit(1 << 20).await.unwrap();
    (res.status().as_u16(), bytes.to_vec())
}

async fn rows(gw: &TestGateway) -> Vec<LogRow> {
    gw.store
        .list_log(UsageFilter::default(), 10_000)
        .await
        .unwrap()
}

fn by_request(rows: &[LogRow], id: &str) -> LogRow {
    rows.iter()
        .find(|r| r.request_id == id)
        .unwrap_or_else(|| panic!("no row for {id}"))
        .clone()
}

#[actix_rt::test]
async fn requests_become_rows_and_admin_usage_aggregates_them() {
    for db in TestDb::all("requests_become_rows_and_admin_usage_aggregates_them") {
        let b = db.name();
        let mock = MockUpstream::start(Behavior::default()).await.unwrap();
        let keys = tempfile::tempdir().unwrap();
        let key_file = admin_key_file(keys.path());
        let db_url = db.config_url();
        let gw = TestApp::builder()
            .target(target("a", "llama", mock.url()))
            .settings(move |s| {
                s.database.url = db_url;
                s.auth.admin_key_env = String::new();
                s.auth.admin_key_file = key_file.into();
                s.logging.flush_interval_ms = Millis::new(nz(20));
            })
            .start()
            .await;
        let plain = chat("llama");
        let (status, body) = post_with_id(&gw, &plain, "plain-1").await;
        assert_eq!(status, 200, "{b}: {}", String::from_utf8_lossy(&body));
        assert_eq!(post_with_id(&gw, &plain, "plain-2").await.0, 200);
        let mut streamed = chat("llama");
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        assert_eq!(post_with_id(&gw, &streamed, "stream-usage").await.0, 200);
        let mut bare = chat("llama");
        bare["stream"] = json!(true);
        assert_eq!(post_with_id(&gw, &bare, "stream-bare").await.0, 200);
        assert_eq!(post_with_id(&gw, &chat("nope"), "unknown").await.0, 404);
        gw.flush_log().await;

        let rows = rows(&gw).await;
        assert_eq!(rows.len(), 5, "{b}: one row per request");
        let prompt = (serde_json::to_vec(&plain).unwrap().len() / 4) as i64;
        let p = by_request(&rows, "plain-1");
        assert_eq!(
            (
                p.model.as_str(),
                p.target.as_str(),
                p.cluster.as_str(),
                p.framework.as_str()
            ),
            ("llama", "a", "local", "vllm"),
            "{b}"
        );
        assert_eq!(
            (p.route.as_ref(), p.status, p.ending.as_ref()),
            ("chat", 200, "complete"),
            "{b}"
        );
        assert_eq!(
            (
                p.prompt_tokens,
                p.completion_tokens,
                p.total_tokens,
                p.tokens_estimated
            ),
            (prompt, 5, prompt + 5, false),
            "{b}: the upstream's usage"
        );
        assert!(
            !p.stream && p.error_code.is_none() && p.attempts == 1,
            "{b}: {p:?}"
        );
        assert!(p.latency_ms > 0.0 && p.ttft_ms.is_some(), "{b}: {p:?}");
        assert_eq!(p.client_ip.as_deref(), Some("127.0.0.1"), "{b}");
        assert_eq!(
            (p.prompt.as_ref(), p.completion.as_ref()),
            (None, None),
            "{b}: payloads off"
        );
        let now = store::now_ms();
        assert!(p.created_at <= now && p.created_at > now - 60_000, "{b}");

        let s = by_request(&rows, "stream-usage");
        assert!(s.stream, "{b}");
        assert_eq!((s.completion_tokens, s.tokens_estimated), (5, false), "{b}");
        let e = by_request(&rows, "stream-bare");
        assert!(
            !e.tokens_estimated,
            "{b}: the gateway asked for usage (quotas charge it)"
        );
        assert_eq!(e.completion_tokens, 5, "{b}");
        let u = by_request(&rows, "unknown");
        assert_eq!(
            (
                u.status,
                u.error_code.as_deref(),
                u.model.as_str(),
                u.target.as_str()
            ),
            (404, Some("model_not_found"), "nope", ""),
            "{b}"
        );
        assert_eq!((u.total_tokens, u.tokens_estimated), (0, false), "{b}");

        // The admin view.
        let (status, usage) = gw.get_admin("/admin/usage").await;
        assert_eq!(status, 200, "{b}: {usage}");
        let expected_total: i64 = rows.iter().map(|r| r.total_tokens).sum();
        assert_eq!(usage["totals"]["requests"], 5, "{b}: {usage}");
        assert_eq!(usage["totals"]["errors"], 1, "{b}: {usage}");
        assert_eq!(
            usage["totals"]["total_tokens"], expected_total,
            "{b}: {usage}"
        );
        let models: Vec<&str> = usage["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["model"].as_str().unwrap())
            .collect();
        assert_eq!(models, ["llama", "nope"], "{b}");
        assert_eq!(usage["models"][0]["requests"], 4, "{b}");

        let (_, only) = gw
            .get_admin("/resource_server/admin/usage?model=llama&since=2020-01-01T00:00:00Z")
            .await;
        assert_eq!(only["totals"]["requests"], 4, "{b}: {only}");
        assert_eq!(only["filters"]["since"], "2020-01-01T00:00:00Z", "{b}");
        let future = (now / 1000 + 3600).to_string();
        let (_, none) = gw.get_admin(&format!("/admin/usage?since={future}")).await;
        assert_eq!(none["totals"]["requests"], 0, "{b}: {none}");
        assert_eq!(none["models"], json!([]), "{b}");
        let (_, by_user) = gw.get_admin("/admin/usage?user=alice").await;
        assert_eq!(
            by_user["totals"]["requests"], 0,
            "{b}: no user before auth lands"
        );

        // Bucketed: the last hour by minute by default, these requests in the last bucket.
        let (status, series) = gw.get_admin("/admin/usage?bucket=minute").await;
        assert_eq!(status, 200, "{b}: {series}");
        assert_eq!(series["bucket"], "minute", "{b}");
        let buckets = series["series"].as_array().unwrap();
        assert_eq!(buckets.len(), 60, "{b}: an hour of minutes");
        let in_buckets: i64 = buckets
            .iter()
            .map(|x| x["requests"].as_i64().unwrap())
            .sum();
        assert_eq!(in_buckets, 5, "{b}: {series}");
        assert_eq!(series["totals"]["requests"], 5, "{b}");
        assert_eq!(series["totals"]["total_tokens"], expected_total, "{b}");
        // The requests may straddle a minute boundary: count llama across the buckets.
        let llama: i64 = buckets
            .iter()
            .filter_map(|x| x["models"]["llama"]["requests"].as_i64())
            .sum();
        assert_eq!(llama, 4, "{b}: {series}");
        let last = buckets.iter().rev().find(|x| x["requests"] != 0).unwrap();
        assert!(
            last["start"].as_i64().unwrap() * 1000 <= now,
            "{b}: bucket start in unix seconds"
        );
        let (_, days) = gw.get_admin("/admin/usage?bucket=day&model=nope").await;
        assert_eq!(days["series"].as_array().unwrap().len(), 30, "{b}");
        assert_eq!(days["totals"]["requests"], 1, "{b}: {days}");
        let (status, bad) = gw.get_admin("/admin/usage?bucket=week").await;
        assert_eq!(
            (status, bad["error"]["param"].as_str()),
            (400, Some("bucket")),
            "{b}"
        );
        let (status, bad) = gw
            .get_admin("/admin/usage?bucket=minute&since=2020-01-01T00:00:00Z")
            .await;
        assert_eq!(
            (status, bad["error"]["param"].as_str()),
            (400, Some("bucket")),
            "{b}: too many buckets"
        );

        let (status, bad) = gw.get_admin("/admin/usage?since=yesterday").await;
        assert_eq!(status, 400, "{b}");
        assert_eq!(bad["error"]["param"], "since", "{b}: {bad}");
        assert_eq!(bad["error"]["code"], "invalid_request", "{b}");
        let (status, bad) = gw.get_admin("/admin/usage?colour=red").await;
        assert_eq!(
            (status, bad["error"]["type"].as_str()),
            (400, Some("invalid_request_error")),
            "{b}: {bad}"
        );
        let (status, _) = gw.get("/admin/usage").await;
        assert_eq!(status, 401, "{b}: admin only");
        gw.stop().await;
    }
}

#[actix_rt::test]
async fn payloads_are_stored_only_when_configured() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .settings(|s| {
            s.logging.store_payloads = true;
            s.logging.payload_max_bytes = 40;
        })
        .start()
        .await;
    let mut streamed = chat("llama");
    streamed["stream"] = json!(true);
    assert_eq!(post_with_id(&gw, &streamed, "s").await.0, 200);
    assert_eq!(post_with_id(&gw, &chat("llama"), "j").await.0, 200);
    gw.flush_log().await;
    let rows = rows(&gw).await;
    let s = by_request(&rows, "s");
    let body = serde_json::to_string(&streamed).unwrap();
    assert_eq!(
        s.prompt.as_deref(),
        Some(&body[..40]),
        "the request body, cut at the limit"
    );
    let completion = s.completion.unwrap();
    assert!(completion.starts_with("data: "), "{completion}");
    assert_eq!(completion.len(), 40);
    let j = by_request(&rows, "j");
    assert!(j
        .completion
        .unwrap()
        .starts_with("{\"id\":\"chatcmpl-mock\""));
    gw.stop().await;
}

#[actix_rt::test]
async fn request_log_off_writes_no_rows() {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .settings(|s| s.logging.request_log = false)
        .start()
        .await;
    assert!(gw.log_writer.is_none());
    assert_eq!(post_with_id(&gw, &chat("llama"), "x").await.0, 200);
    assert!(rows(&gw).await.is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn old_rows_are_pruned_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let url = store::DatabaseUrl::Sqlite {
        path: path.clone(),
        create: true,
    };
    store::migrate::run(&url).unwrap();
    {
        let s = store::open(&url, 1, Duration::from_secs(5)).unwrap();
        let mut old = template_row("old");
        old.created_at = store::now_ms() - 3 * 86_400_000;
        let mut recent = template_row("recent");
        recent.created_at = store::now_ms() - 3_600_000;
        s.insert_log(vec![old, recent].into()).await.unwrap();
    }
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let config_url = format!("sqlite://{}", path.display());
    let gw = TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .settings(move |s| {
            s.database.url = config_url;
            s.logging.retention_days = 2;
        })
        .start()
        .await;
    let stats = gw.log_stats.clone().unwrap();
    wait_until("the prune at start", || LogStats::get(&stats.pruned) == 1).await;
    let ids: Vec<String> = rows(&gw).await.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["recent"]);
    gw.stop().await;
}

/// A row from now: retention (which runs at start too) leaves it alone.
fn recent_row(id: &str) -> LogRow {
    LogRow {
        created_at: store::now_ms(),
        ..template_row(id)
    }
}

fn template_row(id: &str) -> LogRow {
    LogRow {
        id: id.into(),
        request_id: id.into(),
        created_at: 0,
        user_id: String::new(),
        org_id: String::new(),
        model: "llama".into(),
        cluster: "local".into(),
        framework: "vllm".into(),
        target: "a".into(),
        route: "chat".into(),
        status: 200,
        error_code: None,
        prompt_tokens: 1,
        completion_tokens: 1,
        total_tokens: 2,
        tokens_estimated: false,
        latency_ms: 1.0,
        ttft_ms: None,
        client_ip: None,
        stream: false,
        attempts: 1,
        ending: "complete".into(),
        prompt: None,
        completion: None,
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PostgreSQL goes away behind a chaos proxy: requests are still served, rows wait in the
/// spill file, and once the database is back every row arrives exactly once.
#[actix_rt::test]
async fn nothing_is_lost_while_postgres_is_unreachable() {
    let Some(db) = TestDb::pg("nothing_is_lost_while_postgres_is_unreachable") else {
        return;
    };
    let TestDb::Pg {
        url: direct, name, ..
    } = &db
    else {
        unreachable!()
    };
    store::migrate::run(&db.url()).unwrap();
    let pg_addr = {
        let host_port = direct.split('@').nth(1).unwrap().split('/').next().unwrap();
        let host_port = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:5432")
        };
        host_port.replace("localhost", "127.0.0.1").parse().unwrap()
    };
    let proxy = ChaosProxy::start(pg_addr);
    let user = direct
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    let via_proxy = format!("postgres://{user}@{}/{name}", proxy.addr);
    let spill_dir = tempfile::tempdir().unwrap();
    let spill_path = spill_dir.path().display().to_string();
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .settings(move |s| {
            s.database.url = via_proxy;
            s.database.timeout_secs = Seconds::new(nz(3));
            s.logging.flush_interval_ms = Millis::new(nz(20));
            s.logging.batch_size = NonZero::new(4).unwrap();
            s.logging.queue_capacity = 8;
            s.logging.retry_interval_secs = Seconds::new(nz(1));
            s.logging.spill_dir = spill_path.into();
        })
        .start()
        .await;
    // The test reads the database directly, not through the proxy.
    let direct_store = store::open(&db.url(), 1, Duration::from_secs(5)).unwrap();
    let count = || async {
        direct_store
            .list_log(UsageFilter::default(), 10_000)
            .await
            .unwrap()
    };

    for i in 0..3 {
        assert_eq!(
            post_with_id(&gw, &chat("llama"), &format!("before-{i}"))
                .await
                .0,
            200
        );
    }
    gw.flush_log().await;
    assert_eq!(count().await.len(), 3);

    proxy.sever();
    for i in 0..21 {
        let (status, _) = post_with_id(&gw, &chat("llama"), &format!("during-{i}")).await;
        assert_eq!(
            status, 200,
            "requests are served while the database is down"
        );
    }
    gw.flush_log().await;
    let stats = gw.log_stats.clone().unwrap();
    let spill = Spill::new(spill_dir.path().to_path_buf());
    assert_eq!(
        spill.pending().unwrap(),
        21,
        "every row waits in the spill file"
    );
    assert_eq!(count().await.len(), 3, "nothing reached the database");
    assert!(proxy.refused() > 0, "the writer did try to reconnect");
    assert_eq!(LogStats::get(&stats.lost), 0);

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = count().await.len();
        if n == 24 && spill.pending().unwrap() == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} of 24 rows arrived"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    // More traffic after the outage goes straight in.
    assert_eq!(post_with_id(&gw, &chat("llama"), "after").await.0, 200);
    gw.flush_log().await;
    let rows = count().await;
    let mut ids: Vec<String> = rows.iter().map(|r| r.request_id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..3)
        .map(|i| format!("before-{i}"))
        .chain((0..21).map(|i| format!("during-{i}")))
        .chain(["after".to_string()])
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "every row exactly once");
    assert!(LogStats::get(&stats.replayed) >= 21);
    gw.stop().await;
    drop(proxy);
}

/// Rows a previous run spilled (database down at its shutdown) are stored at the next start.
#[actix_rt::test]
async fn a_previous_runs_spill_file_is_replayed_at_start() {
    let spill_dir = tempfile::tempdir().unwrap();
    let spill = Spill::new(spill_dir.path().to_path_buf());
    spill
        .append(&[recent_row("left-1"), recent_row("left-2")])
        .unwrap();
    let spill_path = spill_dir.path().display().to_string();
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = TestApp::builder()
        .target(target("a", "llama", mock.url()))
        .settings(move |s| s.logging.spill_dir = spill_path.into())
        .start()
        .await;
    let stats = gw.log_stats.clone().unwrap();
    wait_until("the replay at start", || {
        LogStats::get(&stats.replayed) == 2
    })
    .await;
    let mut ids: Vec<String> = rows(&gw).await.into_iter().map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, ["left-1", "left-2"]);
    assert_eq!(
        spill.pending().unwrap(),
        0,
        "the spill file is gone once stored"
    );
    gw.stop().await;
}

/// Good requests around one whose `model` holds a NUL.
async fn around_a_nul(gw: &TestGateway) {
    for i in 0..3 {
        assert_eq!(
            post_with_id(gw, &chat("llama"), &format!("good-{i}"))
                .await
                .0,
            200
        );
    }
    let nul = json!({"model": "x\u{0000}y", "messages": []});
    let (status, body) = post_with_id(gw, &nul, "nul").await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    for i in 3..6 {
        assert_eq!(
            post_with_id(gw, &chat("llama"), &format!("good-{i}"))
                .await
                .0,
            200
        );
    }
    gw.flush_log().await;
}

/// Issue 19: PostgreSQL's text cannot hold NUL; the row's text is made storable, so the
/// batch (and every batch after it) is written.
#[actix_rt::test]
async fn a_nul_in_the_model_does_not_stop_the_request_log() {
    for db in TestDb::all("a_nul_in_the_model_does_not_stop_the_request_log") {
        let mock = MockUpstream::start(Behavior::default()).await.unwrap();
        let spill_dir = tempfile::tempdir().unwrap();
        let spill_path = spill_dir.path().display().to_string();
        let url = db.config_url();
        let gw = TestApp::builder()
            .target(target("a", "llama", mock.url()))
            .settings(move |s| {
                s.database.url = url;
                s.logging.spill_dir = spill_path.into();
            })
            .start()
            .await;
        around_a_nul(&gw).await;
        let stored = rows(&gw).await;
        let mut ids: Vec<&str> = stored.iter().map(|r| r.request_id.as_str()).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["good-0", "good-1", "good-2", "good-3", "good-4", "good-5", "nul"],
            "{}: every row stored",
            db.name()
        );
        assert_eq!(by_request(&stored, "nul").model, "x\u{FFFD}y");
        assert_eq!(
            Spill::new(spill_dir.path().to_path_buf())
                .pending()
                .unwrap(),
            0,
            "{}: nothing waits in the spill file",
            db.name()
        );
        let stats = gw.log_stats.clone().unwrap();
        assert_eq!(LogStats::get(&stats.quarantined), 0);
        gw.stop().await;
    }
}

/// Makes the database refuse request-log rows whose model is `poison`.
fn refuse_poison(db: &TestDb) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    match db {
        TestDb::Sqlite { path, .. } => {
            let mut c =
                diesel::sqlite::SqliteConnection::establish(&path.display().to_string()).unwrap();
            c.batch_execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON request_log \
                 WHEN NEW.model = 'poison' BEGIN SELECT RAISE(ABORT, 'poison row'); END;",
            )
            .unwrap();
        }
        TestDb::Pg { url, .. } => {
            let mut c = diesel::pg::PgConnection::establish(url).unwrap();
            c.batch_execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.model = 'poison' THEN RAISE EXCEPTION 'poison row'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON request_log \
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
            )
            .unwrap();
        }
    }
}

/// Issue 19: a row the database refuses is kept aside alone (its own file, a metric, one
/// log line); the rows of its batch, and the batches after it, are stored.
#[actix_rt::test]
async fn a_row_the_database_refuses_is_quarantined_alone() {
    for db in TestDb::all("a_row_the_database_refuses_is_quarantined_alone") {
        store::migrate::run(&db.url()).unwrap();
        refuse_poison(&db);
        let mock = MockUpstream::start(Behavior::default()).await.unwrap();
        let spill_dir = tempfile::tempdir().unwrap();
        let spill_path = spill_dir.path().display().to_string();
        let url = db.config_url();
        let gw = TestApp::builder()
            .target(target("a", "llama", mock.url()))
            .settings(move |s| {
                s.database.url = url;
                s.logging.spill_dir = spill_path.into();
                s.logging.retry_interval_secs = Seconds::new(nz(1));
            })
            .start()
            .await;
        for (id, model) in [("a", "llama"), ("p", "poison"), ("b", "llama")] {
            post_with_id(&gw, &chat(model), id).await;
        }
        gw.flush_log().await;
        assert_eq!(post_with_id(&gw, &chat("llama"), "c").await.0, 200);
        gw.flush_log().await;
        let mut ids: Vec<String> = rows(&gw).await.into_iter().map(|r| r.request_id).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["a", "b", "c"],
            "{}: the good rows are stored",
            db.name()
        );
        let spill = Spill::new(spill_dir.path().to_path_buf());
        assert_eq!(spill.pending().unwrap(), 0, "{}", db.name());
        let quarantine = std::fs::read_to_string(
            spill_dir
                .path()
                .join(inference_gateway::actors::log_writer::QUARANTINE),
        )
        .unwrap();
        let lines: Vec<Value> = quarantine
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{}: {quarantine}", db.name());
        assert_eq!(lines[0]["row"]["request_id"], "p");
        assert!(
            lines[0]["error"].as_str().unwrap().contains("poison row"),
            "{}",
            lines[0]
        );
        let stats = gw.log_stats.clone().unwrap();
        assert_eq!(LogStats::get(&stats.quarantined), 1);
        let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
        let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
        assert!(
            text.contains("gateway_log_quarantined_total 1"),
            "{}",
            db.name()
        );
        let logs = gw.logs();
        assert_eq!(
            logs.matches("request log: rows refused by the database")
                .count(),
            1,
            "{logs}"
        );
        gw.stop().await;
    }
}
