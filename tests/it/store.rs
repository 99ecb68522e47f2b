//! The stores on both backends (SQLite always; PostgreSQL with DATABASE_TEST_URL), and the
//! migrations: each one up, down and up again, and both trees giving the same tables.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::db::TestDb;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use inference_gateway::store::migrate::{self, SyncConn};
use inference_gateway::store::schema::TABLES;
use inference_gateway::store::{
    self, ApiKeyRow, LogRow, QuotaOverrideRow, Store, UsageBucket, UsageFilter,
};

fn open(db: &TestDb) -> Arc<dyn Store> {
    migrate::run(&db.url()).unwrap();
    store::open(&db.url(), 2, Duration::from_secs(10)).unwrap()
}

fn key(id: &str, user: &str, hash: &str, created_at: i64) -> ApiKeyRow {
    ApiKeyRow {
        id: id.into(),
        user_id: user.into(),
        org_id: "uchicago".into(),
        role: "user".into(),
        hash: hash.into(),
        prefix: "igw_abc".into(),
        created_at,
        expires_at: None,
        revoked_at: None,
        allowed_models: r#"["llama"]"#.into(),
        last_used_at: None,
    }
}

pub fn row(
    id: &str,
    user: &str,
    model: &str,
    created_at: i64,
    status: i32,
    tokens: (i64, i64),
) -> LogRow {
    LogRow {
        id: id.into(),
        request_id: format!("req-{id}"),
        created_at,
        user_id: user.into(),
        org_id: "org".into(),
        model: model.into(),
        cluster: "local".into(),
        framework: "vllm".into(),
        target: "t1".into(),
        route: "chat".into(),
        status,
        error_code: (status >= 400).then(|| "upstream_error".into()),
        prompt_tokens: tokens.0,
        completion_tokens: tokens.1,
        total_tokens: tokens.0 + tokens.1,
        tokens_estimated: false,
        latency_ms: 12.5,
        ttft_ms: Some(3.25),
        client_ip: Some("127.0.0.1".into()),
        stream: true,
        attempts: 1,
        ending: "complete".into(),
        prompt: None,
        completion: Some("héllo".into()),
    }
}

#[actix_rt::test]
async fn api_keys_create_list_find_revoke() {
    for db in TestDb::all("api_keys_create_list_find_revoke") {
        let s = open(&db);
        let b = db.name();
        s.create_key(key("k1", "alice", "h1", 10)).await.unwrap();
        s.create_key(key("k2", "alice", "h2", 20)).await.unwrap();
        s.create_key(key("k3", "bob", "h3", 15)).await.unwrap();
        assert!(
            s.create_key(key("k4", "bob", "h1", 30)).await.is_err(),
            "{b}: a duplicate hash must be refused"
        );
        let alice: Vec<String> = s
            .list_keys(Some("alice".into()))
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(alice, ["k1", "k2"], "{b}");
        let all: Vec<String> = s
            .list_keys(None)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(all, ["k1", "k3", "k2"], "{b}: oldest first");

        let found = s.find_key_by_hash("h2".into()).await.unwrap().unwrap();
        assert_eq!(found, key("k2", "alice", "h2", 20), "{b}");
        assert_eq!(found.allowed_models().unwrap(), ["llama"], "{b}");
        assert!(found.is_active(100), "{b}");
        assert!(
            s.find_key_by_hash("nope".into()).await.unwrap().is_none(),
            "{b}"
        );

        assert!(s.revoke_key("k2".into(), 50).await.unwrap(), "{b}");
        assert!(
            !s.revoke_key("k2".into(), 60).await.unwrap(),
            "{b}: already revoked"
        );
        assert!(!s.revoke_key("missing".into(), 60).await.unwrap(), "{b}");
        let revoked = s.find_key_by_hash("h2".into()).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(50), "{b}");
        assert!(!revoked.is_active(100), "{b}");
    }
}

#[actix_rt::test]
async fn usage_counters_add_get_reset_prune() {
    for db in TestDb::all("usage_counters_add_get_reset_prune") {
        let s = open(&db);
        let b = db.name();
        let c = s
            .add_usage("alice".into(), "day".into(), 1000, 1, 30)
            .await
            .unwrap();
        assert_eq!((c.requests, c.tokens), (1, 30), "{b}");
        let c = s
            .add_usage("alice".into(), "day".into(), 1000, 2, 12)
            .await
            .unwrap();
        assert_eq!((c.requests, c.tokens), (3, 42), "{b}: adds up");
        s.add_usage("alice".into(), "month".into(), 0, 1, 5)
            .await
            .unwrap();
        s.add_usage("alice".into(), "day".into(), 2000, 1, 1)
            .await
            .unwrap();
        s.add_usage("bob".into(), "day".into(), 1000, 7, 70)
            .await
            .unwrap();

        let got = s
            .get_usage("alice".into(), "day".into(), 1000)
            .await
            .unwrap();
        assert_eq!((got.requests, got.tokens), (3, 42), "{b}");
        let month = s
            .get_usage("alice".into(), "month".into(), 0)
            .await
            .unwrap();
        assert_eq!(
            (month.requests, month.tokens),
            (1, 5),
            "{b}: windows are separate"
        );
        let none = s
            .get_usage("carol".into(), "day".into(), 1000)
            .await
            .unwrap();
        assert_eq!((none.requests, none.tokens), (0, 0), "{b}");

        assert_eq!(
            s.prune_usage(1000).await.unwrap(),
            1,
            "{b}: the month window at 0"
        );
        assert_eq!(s.reset_usage("alice".into()).await.unwrap(), 2, "{b}");
        let got = s
            .get_usage("alice".into(), "day".into(), 1000)
            .await
            .unwrap();
        assert_eq!(got.requests, 0, "{b}");
        let bob = s.get_usage("bob".into(), "day".into(), 1000).await.unwrap();
        assert_eq!(bob.requests, 7, "{b}: other subjects untouched");
    }
}

#[actix_rt::test]
async fn quota_overrides_put_get_list_delete() {
    for db in TestDb::all("quota_overrides_put_get_list_delete") {
        let s = open(&db);
        let b = db.name();
        let mut o = QuotaOverrideRow {
            subject: "alice".into(),
            rps: Some(2.5),
            burst: Some(10),
            max_in_flight: None,
            daily_requests: Some(1000),
            daily_tokens: None,
            monthly_tokens: Some(1_000_000),
            updated_at: 1,
            tokens_per_minute: Some(20_000),
            max_batches: None,
        };
        s.put_override(o.clone()).await.unwrap();
        assert_eq!(
            s.get_override("alice".into()).await.unwrap(),
            Some(o.clone()),
            "{b}"
        );
        o.rps = None;
        o.max_in_flight = Some(4);
        o.updated_at = 2;
        s.put_override(o.clone()).await.unwrap();
        assert_eq!(
            s.get_override("alice".into()).await.unwrap(),
            Some(o.clone()),
            "{b}: replaced, None clears"
        );
        let mut other = o.clone();
        other.subject = "org:anl".into();
        s.put_override(other).await.unwrap();
        let subjects: Vec<String> = s
            .list_overrides()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.subject)
            .collect();
        assert_eq!(subjects, ["alice", "org:anl"], "{b}");
        assert!(s.delete_override("alice".into()).await.unwrap(), "{b}");
        assert!(!s.delete_override("alice".into()).await.unwrap(), "{b}");
        assert_eq!(s.get_override("alice".into()).await.unwrap(), None, "{b}");
    }
}

#[actix_rt::test]
async fn request_log_insert_is_idempotent_and_aggregates() {
    for db in TestDb::all("request_log_insert_is_idempotent_and_aggregates") {
        let s = open(&db);
        let b = db.name();
        let rows = vec![
            row("a", "alice", "llama", 1000, 200, (10, 5)),
            row("b", "alice", "llama", 2000, 502, (0, 0)),
            row("c", "bob", "llama", 3000, 200, (7, 3)),
            row("d", "alice", "qwen", 4000, 200, (1, 1)),
        ];
        assert_eq!(s.insert_log(rows.clone().into()).await.unwrap(), 4, "{b}");
        assert_eq!(
            s.insert_log(rows.clone().into()).await.unwrap(),
            0,
            "{b}: replayed rows are skipped"
        );
        assert_eq!(s.insert_log(Vec::new().into()).await.unwrap(), 0, "{b}");
        let stored = s.list_log(UsageFilter::default(), 100).await.unwrap();
        assert_eq!(stored, rows, "{b}: every column round-trips");

        let all = s.usage_by_model(UsageFilter::default()).await.unwrap();
        assert_eq!(all.len(), 2, "{b}");
        assert_eq!(all[0].model, "llama", "{b}");
        assert_eq!(
            (
                all[0].requests,
                all[0].errors,
                all[0].prompt_tokens,
                all[0].completion_tokens,
                all[0].total_tokens
            ),
            (3, 1, 17, 8, 25),
            "{b}"
        );
        assert_eq!((all[1].model.as_str(), all[1].requests), ("qwen", 1), "{b}");

        let alice = s
            .usage_by_model(UsageFilter {
                user: Some("alice".into()),
                model: Some("llama".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(alice.len(), 1, "{b}");
        assert_eq!((alice[0].requests, alice[0].total_tokens), (2, 15), "{b}");

        let window = s
            .usage_by_model(UsageFilter {
                since: Some(2000),
                until: Some(4000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(window.len(), 1, "{b}: since inclusive, until exclusive");
        assert_eq!(window[0].requests, 2, "{b}");
        let empty = s
            .usage_by_model(UsageFilter {
                org: Some("nobody".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(empty.is_empty(), "{b}");

        assert_eq!(s.prune_log(2500).await.unwrap(), 2, "{b}");
        let left: Vec<String> = s
            .list_log(UsageFilter::default(), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, ["c", "d"], "{b}");
    }
}

/// `/admin/usage?bucket=` is grouped in the database: rows land in the bucket their start
/// time floors to (UTC minutes, hours, days), per model, with the filter applied.
#[actix_rt::test]
async fn usage_series_groups_by_time_bucket_and_model() {
    for db in TestDb::all("usage_series_groups_by_time_bucket_and_model") {
        let s = open(&db);
        let b = db.name();
        let day = 86_400_000;
        let rows = vec![
            row("a", "alice", "llama", 10 * day, 200, (1, 2)),
            row("b", "alice", "llama", 10 * day + 59_999, 500, (1, 0)),
            row("c", "bob", "qwen", 10 * day + 30_000, 200, (5, 5)),
            row("d", "alice", "llama", 10 * day + 60_000, 200, (2, 2)),
            row("e", "bob", "llama", 11 * day + 3_600_000, 200, (3, 3)),
        ];
        s.insert_log(rows.into()).await.unwrap();
        let minutes = s
            .usage_series(UsageFilter::default(), UsageBucket::Minute)
            .await
            .unwrap();
        let got: Vec<(i64, &str, i64, i64, i64)> = minutes
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.usage.model.as_str(),
                    r.usage.requests,
                    r.usage.errors,
                    r.usage.total_tokens,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (10 * day, "llama", 2, 1, 4),
                (10 * day, "qwen", 1, 0, 10),
                (10 * day + 60_000, "llama", 1, 0, 4),
                (11 * day + 3_600_000, "llama", 1, 0, 6),
            ],
            "{b}"
        );
        let days = s
            .usage_series(
                UsageFilter {
                    user: Some("alice".into()),
                    ..Default::default()
                },
                UsageBucket::Day,
            )
            .await
            .unwrap();
        assert_eq!(days.len(), 1, "{b}: {days:?}");
        assert_eq!(
            (
                days[0].start,
                days[0].usage.requests,
                days[0].usage.prompt_tokens
            ),
            (10 * day, 3, 4),
            "{b}"
        );
        let hours = s
            .usage_series(
                UsageFilter {
                    since: Some(11 * day),
                    ..Default::default()
                },
                UsageBucket::Hour,
            )
            .await
            .unwrap();
        assert_eq!(hours.len(), 1, "{b}");
        assert_eq!(hours[0].start, 11 * day + 3_600_000, "{b}");
    }
}

/// A batch of several full multi-row statements and a remainder (SQLite inserts 16 rows
/// per statement), a replay of it mixed with new rows, and rows that share a timestamp.
#[actix_rt::test]
async fn a_large_batch_is_stored_whole_and_once() {
    for db in TestDb::all("a_large_batch_is_stored_whole_and_once") {
        let s = open(&db);
        let b = db.name();
        let rows: Vec<_> = (0..41)
            .map(|i| {
                row(
                    &format!("r{i:02}"),
                    "alice",
                    "llama",
                    1000 + i / 4,
                    200,
                    (1, 1),
                )
            })
            .collect();
        assert_eq!(s.insert_log(rows.clone().into()).await.unwrap(), 41, "{b}");
        let mut again = rows[30..].to_vec();
        again.extend((41..60).map(|i| row(&format!("r{i:02}"), "bob", "llama", 2000, 200, (1, 1))));
        assert_eq!(
            s.insert_log(again.into()).await.unwrap(),
            19,
            "{b}: the 11 replayed rows are skipped, the 19 new ones stored"
        );
        let stored = s.list_log(UsageFilter::default(), 100).await.unwrap();
        let ids: Vec<String> = stored.iter().map(|r| r.id.clone()).collect();
        let want: Vec<String> = (0..60).map(|i| format!("r{i:02}")).collect();
        assert_eq!(ids, want, "{b}: every row once, in time order");
        assert_eq!(stored[..41], rows[..], "{b}");
    }
}

#[derive(QueryableByName, Debug)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Integer)]
    not_null: i32,
    /// Position in the primary key (1-based), 0 when not part of it.
    #[diesel(sql_type = Integer)]
    pk: i32,
}

/// table → column → (normalised type, not null, position in the primary key), excluding
/// diesel's own table.
type Shape = BTreeMap<String, BTreeMap<String, (String, bool, i32)>>;

fn normalise(t: &str) -> String {
    match t.to_ascii_lowercase().as_str() {
        "bigint" | "int8" => "int64",
        "integer" | "int4" | "int" => "int32",
        "text" | "character varying" => "text",
        "boolean" | "bool" => "bool",
        "double precision" | "real" | "float8" => "float64",
        other => return format!("unknown:{other}"),
    }
    .to_string()
}

fn shape(conn: &mut SyncConn) -> Shape {
    let cols: Vec<Column> = match conn {
        SyncConn::Pg(c) => diesel::sql_query(
            "SELECT table_name::text AS table_name, column_name::text AS column_name, \
             data_type::text AS data_type, CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END AS not_null, \
             COALESCE((SELECT k.ordinal_position FROM information_schema.table_constraints t \
               JOIN information_schema.key_column_usage k ON k.constraint_name = t.constraint_name \
               AND k.table_schema = t.table_schema AND k.table_name = t.table_name \
               WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = c.table_schema \
               AND t.table_name = c.table_name AND k.column_name = c.column_name), 0)::int AS pk \
             FROM information_schema.columns c WHERE table_schema = 'public'",
        )
        .load(c)
        .unwrap(),
        SyncConn::Sqlite(c) => diesel::sql_query(
            "SELECT m.name AS table_name, p.name AS column_name, p.type AS data_type, \
             CAST(p.\"notnull\" AS INTEGER) AS not_null, CAST(p.pk AS INTEGER) AS pk \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'",
        )
        .load(c)
        .unwrap(),
    };
    let mut out = Shape::new();
    for c in cols {
        if c.table_name.starts_with("__diesel") || c.table_name.starts_with("sqlite_") {
            continue;
        }
        out.entry(c.table_name).or_default().insert(
            c.column_name,
            (normalise(&c.data_type), c.not_null == 1, c.pk),
        );
    }
    out
}

fn tables(conn: &mut SyncConn) -> Vec<String> {
    shape(conn).into_keys().collect()
}

#[test]
fn every_migration_goes_up_down_and_up_again() {
    for db in TestDb::all("every_migration_goes_up_down_and_up_again") {
        let b = db.name();
        let mut conn = SyncConn::connect(&db.url()).unwrap();
        let total = conn.migration_count();
        assert_eq!(total, 9, "{b}");
        let mut seen = Vec::new();
        for step in 0..total {
            let before = shape(&mut conn);
            let version = conn.run_next().unwrap().expect("a pending migration");
            let after = shape(&mut conn);
            assert_ne!(before, after, "{b}: migration {version} changed nothing");
            assert_eq!(conn.revert_last().unwrap(), version, "{b}");
            assert_eq!(
                shape(&mut conn),
                before,
                "{b}: {version} down restores the schema"
            );
            assert_eq!(conn.run_next().unwrap(), Some(version.clone()), "{b}");
            assert_eq!(shape(&mut conn), after, "{b}: {version} up again");
            seen.push(version);
            assert_eq!(seen.len(), step + 1);
        }
        assert_eq!(conn.run_next().unwrap(), None, "{b}: nothing left");
        let mut expected: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        expected.sort();
        assert_eq!(tables(&mut conn), expected, "{b}");
        assert_eq!(conn.revert_all().unwrap().len(), total, "{b}");
        assert!(
            tables(&mut conn).is_empty(),
            "{b}: all down leaves no table"
        );
        assert_eq!(conn.run_pending().unwrap().len(), total, "{b}");
        assert_eq!(tables(&mut conn), expected, "{b}");
        assert!(conn.run_pending().unwrap().is_empty(), "{b}: idempotent");
    }
}

/// Rows logged before migration 000007 (the request log's new key) survive it, and its
/// down, on both backends.
#[test]
fn request_log_rows_survive_the_key_migration_both_ways() {
    fn exec(conn: &mut SyncConn, sql: &str) {
        match conn {
            SyncConn::Pg(c) => diesel::sql_query(sql).execute(c).map(drop),
            SyncConn::Sqlite(c) => diesel::sql_query(sql).execute(c).map(drop),
        }
        .unwrap();
    }
    fn ids(conn: &mut SyncConn) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = Text)]
            id: String,
        }
        let sql = "SELECT id FROM request_log ORDER BY created_at, id";
        let rows: Vec<Id> = match conn {
            SyncConn::Pg(c) => diesel::sql_query(sql).load(c),
            SyncConn::Sqlite(c) => diesel::sql_query(sql).load(c),
        }
        .unwrap();
        rows.into_iter().map(|r| r.id).collect()
    }
    for db in TestDb::all("request_log_rows_survive_the_key_migration_both_ways") {
        let b = db.name();
        let mut conn = SyncConn::connect(&db.url()).unwrap();
        for _ in 0..6 {
            conn.run_next().unwrap().expect("a migration before 000007");
        }
        for (id, at) in [("b", 2000), ("a", 1000), ("c", 2000)] {
            exec(
                &mut conn,
                &format!(
                    "INSERT INTO request_log (id, request_id, created_at, user_id, org_id, \
                     model, cluster, framework, target, route, status, prompt_tokens, \
                     completion_tokens, total_tokens, tokens_estimated, latency_ms, stream, \
                     attempts, ending) VALUES ('{id}', 'r-{id}', {at}, 'u', '', 'm', 'c', \
                     'f', 't', 'chat', 200, 1, 2, 3, FALSE, 1.5, FALSE, 1, 'complete')"
                ),
            );
        }
        let version = conn.run_next().unwrap().expect("migration 000007");
        assert!(version.contains("000007"), "{b}: {version}");
        assert_eq!(ids(&mut conn), ["a", "b", "c"], "{b}: after up");
        assert_eq!(conn.revert_last().unwrap(), version, "{b}");
        assert_eq!(ids(&mut conn), ["a", "b", "c"], "{b}: after down");
    }
}

#[test]
fn both_trees_give_the_same_tables() {
    let lite = TestDb::sqlite();
    let mut lite_conn = SyncConn::connect(&lite.url()).unwrap();
    lite_conn.run_pending().unwrap();
    let lite_shape = shape(&mut lite_conn);
    for (table, cols) in &lite_shape {
        for (col, (ty, _, _)) in cols {
            assert!(!ty.starts_with("unknown"), "sqlite {table}.{col}: {ty}");
        }
    }
    let Some(pg) = TestDb::pg("both_trees_give_the_same_tables") else {
        return;
    };
    let mut pg_conn = SyncConn::connect(&pg.url()).unwrap();
    pg_conn.run_pending().unwrap();
    let pg_shape = shape(&mut pg_conn);
    assert_eq!(pg_shape, lite_shape);
}

#[test]
fn a_missing_bare_sqlite_path_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    let url = store::DatabaseUrl::Sqlite {
        path: path.clone(),
        create: false,
    };
    assert!(migrate::run(&url).is_err());
    assert!(!path.exists(), "no empty database was created");
}
