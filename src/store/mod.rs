//! Storage: one trait per concern (API keys, usage counters and quota overrides, the request
//! log, the stored catalog), each implemented for PostgreSQL (`pg.rs`, diesel-async over a
//! deadpool pool) and for SQLite (`sqlite.rs`, one connection behind
//! `SyncConnectionWrapper`, so no query ever blocks an actix thread). The query code is
//! written once (`queries.rs`) and instantiated for both; the two migration trees
//! (`migrations/postgres`, `migrations/sqlite`) create the same tables (`schema.rs`).
//! Migrations run on a sync connection before the server starts (`migrate.rs`).

pub mod log_sink;
pub mod migrate;
pub mod pg;
mod queries;
pub mod schema;
pub mod sqlite;
mod sqlite_log_insert;
pub mod storable;
pub mod url;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use url::DatabaseUrl;

/// A database failure. The text may name tables and columns but never credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database connection failed: {0}")]
    Connection(String),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The database could not be reached or could not take writes now (connection,
    /// timeout, lock, read-only, serialization conflict): trying the same statement later
    /// may succeed. Anything else (a value the database refuses) is about the statement.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as K, Error as E};
        match self {
            StoreError::Connection(_) | StoreError::Timeout(_) => true,
            StoreError::Corrupt(_) => false,
            StoreError::Query(E::DatabaseError(kind, info)) => match kind {
                K::ClosedConnection
                | K::UnableToSendCommand
                | K::ReadOnlyTransaction
                | K::SerializationFailure => true,
                // SQLite's SQLITE_BUSY / SQLITE_LOCKED, and I/O or full-disk failures.
                _ => {
                    let m = info.message();
                    m.contains("database is locked")
                        || m.contains("database table is locked")
                        || m.contains("disk I/O error")
                        || m.contains("database or disk is full")
                        || m.contains("No space left")
                }
            },
            StoreError::Query(
                E::BrokenTransactionManager
                | E::AlreadyInTransaction
                | E::RollbackErrorOnCommit { .. },
            ) => true,
            StoreError::Query(_) => false,
        }
    }
}

/// Unix milliseconds, the unit of every time column.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

// ------------------------------------------------------------------------------ API keys

/// A stored API key. Only the hash of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::api_keys)]
pub struct ApiKeyRow {
    pub id: String,
    pub user_id: String,
    pub org_id: String,
    pub role: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// The first characters of the key, to recognise it in listings.
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// JSON array of model names; `[]` = every model.
    pub allowed_models: String,
    /// When the key last authenticated a request (to the minute; see `auth::keys`).
    pub last_used_at: Option<i64>,
}

impl ApiKeyRow {
    pub fn allowed_models(&self) -> StoreResult<Vec<String>> {
        serde_json::from_str(&self.allowed_models).map_err(|e| {
            StoreError::Corrupt(format!("api_keys.allowed_models of {}: {e}", self.id))
        })
    }

    /// Usable at `now`: not revoked and not expired.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

pub trait KeyStore: Send + Sync {
    /// Stores a new key; fails if the id or the hash exists.
    fn create_key(&self, key: ApiKeyRow) -> BoxFuture<'_, StoreResult<()>>;
    /// Keys of one user (all keys when `None`), oldest first.
    fn list_keys(&self, user: Option<String>) -> BoxFuture<'_, StoreResult<Vec<ApiKeyRow>>>;
    /// Marks a key revoked at `at`; false if there is no such (unrevoked) key.
    fn revoke_key(&self, id: String, at: i64) -> BoxFuture<'_, StoreResult<bool>>;
    /// The key whose hash is `hash`, revoked or not (the caller checks `is_active`).
    fn find_key_by_hash(&self, hash: String) -> BoxFuture<'_, StoreResult<Option<ApiKeyRow>>>;
    /// Records that key `id` was used at `at` (kept if a later use is already recorded).
    fn touch_key(&self, id: String, at: i64) -> BoxFuture<'_, StoreResult<()>>;
}

// ------------------------------------------------------------------ counters and quotas

/// Requests and tokens of one subject in one window.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::usage_counters)]
pub struct CounterRow {
    pub subject: String,
    pub window_kind: String,
    pub window_start: i64,
    pub requests: i64,
    pub tokens: i64,
}

/// An admin's limits for one subject; `None` = the configured default.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = schema::quota_overrides, treat_none_as_null = true)]
pub struct QuotaOverrideRow {
    pub subject: String,
    pub rps: Option<f64>,
    pub burst: Option<i64>,
    pub max_in_flight: Option<i64>,
    pub daily_requests: Option<i64>,
    pub daily_tokens: Option<i64>,
    pub monthly_tokens: Option<i64>,
    pub updated_at: i64,
    pub tokens_per_minute: Option<i64>,
    pub max_batches: Option<i64>,
}

pub trait CounterStore: Send + Sync {
    /// Adds to a window's counters (creating them at zero first) and returns the new totals.
    fn add_usage(
        &self,
        subject: String,
        window_kind: String,
        window_start: i64,
        requests: i64,
        tokens: i64,
    ) -> BoxFuture<'_, StoreResult<CounterRow>>;
    /// A window's counters (zero when nothing was counted).
    fn get_usage(
        &self,
        subject: String,
        window_kind: String,
        window_start: i64,
    ) -> BoxFuture<'_, StoreResult<CounterRow>>;
    /// Forgets every counter of a subject (an admin reset); returns how many windows.
    fn reset_usage(&self, subject: String) -> BoxFuture<'_, StoreResult<usize>>;
    /// Deletes windows that started before `before`.
    fn prune_usage(&self, before: i64) -> BoxFuture<'_, StoreResult<usize>>;
    /// Creates or replaces a subject's override.
    fn put_override(&self, row: QuotaOverrideRow) -> BoxFuture<'_, StoreResult<()>>;
    fn get_override(&self, subject: String)
        -> BoxFuture<'_, StoreResult<Option<QuotaOverrideRow>>>;
    fn list_overrides(&self) -> BoxFuture<'_, StoreResult<Vec<QuotaOverrideRow>>>;
    fn delete_override(&self, subject: String) -> BoxFuture<'_, StoreResult<bool>>;
}

// --------------------------------------------------------------------------- request log

/// One request-log row. `id` is made by the gateway, so a replayed row lands once.
/// `None` inserts NULL (not DEFAULT): a simpler statement for diesel to bind.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = schema::request_log, treat_none_as_default_value = false)]
pub struct LogRow {
    pub id: String,
    pub request_id: String,
    pub created_at: i64,
    pub user_id: String,
    pub org_id: String,
    pub model: String,
    pub cluster: String,
    pub framework: String,
    pub target: String,
    /// The route's name: one of a fixed set, so not copied per row.
    pub route: Cow<'static, str>,
    pub status: i32,
    pub error_code: Option<Cow<'static, str>>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub tokens_estimated: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub client_ip: Option<String>,
    pub stream: bool,
    pub attempts: i32,
    pub ending: Cow<'static, str>,
    pub prompt: Option<String>,
    pub completion: Option<String>,
}

#[cfg(test)]
impl LogRow {
    /// A row for tests (one payload column set, with characters that need escaping).
    pub(crate) fn sample(id: &str) -> LogRow {
        LogRow {
            id: id.into(),
            request_id: "r".into(),
            created_at: 1,
            user_id: String::new(),
            org_id: String::new(),
            model: "m".into(),
            cluster: "c".into(),
            framework: "f".into(),
            target: "t".into(),
            route: "chat".into(),
            status: 200,
            error_code: None,
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
            tokens_estimated: false,
            latency_ms: 1.0,
            ttft_ms: None,
            client_ip: None,
            stream: false,
            attempts: 1,
            ending: "complete".into(),
            prompt: Some("line\nbreak \"quoted\"".into()),
            completion: None,
        }
    }
}

/// Which rows `/admin/usage` aggregates; `None` = no filter. Times are unix ms,
/// `since` inclusive, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub user: Option<String>,
    pub org: Option<String>,
    pub model: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// The aggregate of the rows of one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelUsage {
    pub model: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

impl ModelUsage {
    /// From a row of the usage queries: model, requests, errors, prompt, completion and
    /// total tokens.
    pub fn from_row((model, requests, errors, prompt, completion, total): UsageRow) -> Self {
        ModelUsage {
            model,
            requests,
            errors,
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
        }
    }

    /// Adds `other`'s counts to these (the model name stays).
    pub fn add(&mut self, other: &ModelUsage) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// What the usage queries select per group after its key: model, requests, errors, and
/// prompt, completion and total tokens.
pub type UsageRow = (String, i64, i64, i64, i64, i64);

/// The width of the time buckets of `/admin/usage?bucket=`. Buckets start at multiples of
/// their width since the unix epoch, so days are UTC days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBucket {
    Minute,
    Hour,
    Day,
}

impl UsageBucket {
    pub fn parse(text: &str) -> Option<UsageBucket> {
        match text {
            "minute" => Some(UsageBucket::Minute),
            "hour" => Some(UsageBucket::Hour),
            "day" => Some(UsageBucket::Day),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            UsageBucket::Minute => "minute",
            UsageBucket::Hour => "hour",
            UsageBucket::Day => "day",
        }
    }

    pub fn millis(self) -> i64 {
        match self {
            UsageBucket::Minute => 60_000,
            UsageBucket::Hour => 3_600_000,
            UsageBucket::Day => 86_400_000,
        }
    }

    /// The span shown when the caller names no `since`: an hour of minutes, a day of
    /// hours, thirty days of days.
    pub fn default_span(self) -> i64 {
        match self {
            UsageBucket::Minute => 3_600_000,
            UsageBucket::Hour => 86_400_000,
            UsageBucket::Day => 30 * 86_400_000,
        }
    }
}

/// The aggregate of one model's rows in one time bucket; `start` is unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketUsage {
    pub start: i64,
    pub usage: ModelUsage,
}

pub trait RequestLogStore: Send + Sync {
    /// Inserts rows; rows whose id is already stored are skipped. Returns rows inserted.
    /// Shared, so the caller keeps the batch (to spill it if the insert fails) without a copy.
    fn insert_log(&self, rows: Arc<[LogRow]>) -> BoxFuture<'_, StoreResult<usize>>;
    /// Deletes rows created before `before`; returns how many.
    fn prune_log(&self, before: i64) -> BoxFuture<'_, StoreResult<usize>>;
    /// Per-model aggregates of the rows matching `filter`, by model name.
    fn usage_by_model(&self, filter: UsageFilter) -> BoxFuture<'_, StoreResult<Vec<ModelUsage>>>;
    /// Per-bucket, per-model aggregates of the rows matching `filter`, by bucket then model;
    /// buckets without rows are absent.
    fn usage_series(
        &self,
        filter: UsageFilter,
        bucket: UsageBucket,
    ) -> BoxFuture<'_, StoreResult<Vec<BucketUsage>>>;
    /// Rows matching `filter`, oldest first, at most `limit`.
    fn list_log(&self, filter: UsageFilter, limit: i64) -> BoxFuture<'_, StoreResult<Vec<LogRow>>>;
}

// ------------------------------------------------------------------------ files, batches

/// An uploaded (or batch-made) file; its bytes are at `{data_dir}/files/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::files)]
pub struct FileRow {
    pub id: String,
    pub owner: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: i64,
}

/// One batch. `status` is one of OpenAI's batch states.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::batches)]
pub struct BatchRow {
    pub id: String,
    pub owner: String,
    /// The owner's identity (JSON): lines are routed with their permissions.
    pub identity: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: String,
    /// JSON object, or NULL.
    pub metadata: Option<String>,
    /// FIRST's form: the batch's model and the cluster/framework its lines are pinned to.
    pub model: Option<String>,
    pub cluster: Option<String>,
    pub framework: Option<String>,
    /// FIRST's form: where the output file is also written (a confined path).
    pub output_folder: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// JSON array of `{code, message, param, line}` (validation errors).
    pub errors: Option<String>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expires_at: i64,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
}

/// A change to a batch: `None` fields are left as they are.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = schema::batches)]
pub struct BatchPatch {
    pub status: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Option<String>,
    pub total: Option<i64>,
    pub completed: Option<i64>,
    pub failed: Option<i64>,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub lease_until: Option<i64>,
}

/// The result of one input line.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::batch_items)]
pub struct ItemRow {
    pub batch_id: String,
    pub line_index: i64,
    pub custom_id: String,
    /// 2xx: goes to the output file; else to the error file.
    pub ok: bool,
    /// The whole output line (JSON).
    pub result: String,
}

/// Batch states a batch is still being worked on in (counted for `MAX_BATCHES_PER_USER`,
/// claimed by runners).
pub const ACTIVE_BATCH_STATES: [&str; 4] =
    ["validating", "in_progress", "finalizing", "cancelling"];

pub trait BatchStore: Send + Sync {
    fn create_file(&self, row: FileRow) -> BoxFuture<'_, StoreResult<()>>;
    /// Creates or replaces a file row (a batch's output file, written again on resume).
    fn put_file(&self, row: FileRow) -> BoxFuture<'_, StoreResult<()>>;
    fn get_file(&self, id: String) -> BoxFuture<'_, StoreResult<Option<FileRow>>>;
    /// The owner's files, newest first, ids below `after` when given, at most `limit`.
    fn list_files(
        &self,
        owner: String,
        after: Option<String>,
        limit: i64,
    ) -> BoxFuture<'_, StoreResult<Vec<FileRow>>>;
    fn delete_file(&self, id: String) -> BoxFuture<'_, StoreResult<bool>>;

    fn create_batch(&self, row: BatchRow) -> BoxFuture<'_, StoreResult<()>>;
    fn get_batch(&self, id: String) -> BoxFuture<'_, StoreResult<Option<BatchRow>>>;
    /// The owner's batches, newest first, ids below `after` when given, at most `limit`.
    fn list_batches(
        &self,
        owner: Option<String>,
        status: Option<String>,
        after: Option<String>,
        limit: i64,
    ) -> BoxFuture<'_, StoreResult<Vec<BatchRow>>>;
    /// How many of the owner's batches are in an [`ACTIVE_BATCH_STATES`] state.
    fn count_active_batches(&self, owner: String) -> BoxFuture<'_, StoreResult<i64>>;
    /// Claims one active batch whose lease is free, expired, or already `worker`'s: sets
    /// `lease_owner = worker`, `lease_until = until`. PostgreSQL picks candidates with
    /// `FOR UPDATE SKIP LOCKED`; both backends then take it with a conditional UPDATE.
    /// Batches in `skip` and batches of `avoid_owners` are not taken (fair share).
    fn claim_batch(
        &self,
        worker: String,
        now: i64,
        until: i64,
        skip: Vec<String>,
        avoid_owners: Vec<String>,
    ) -> BoxFuture<'_, StoreResult<Option<BatchRow>>>;
    /// Applies `patch` if `worker` holds the lease (when given) and the status is one of
    /// `from`; false when the batch moved on (cancelled, or claimed elsewhere).
    fn update_batch(
        &self,
        id: String,
        worker: Option<String>,
        from: Vec<String>,
        patch: BatchPatch,
    ) -> BoxFuture<'_, StoreResult<bool>>;
    /// Stores line results; lines already stored are skipped. Returns rows inserted.
    fn insert_items(&self, rows: Vec<ItemRow>) -> BoxFuture<'_, StoreResult<usize>>;
    /// Every stored result of a batch, by line.
    fn list_items(&self, batch_id: String) -> BoxFuture<'_, StoreResult<Vec<ItemRow>>>;
    /// Line indexes with a stored result and whether each was ok.
    fn done_items(&self, batch_id: String) -> BoxFuture<'_, StoreResult<Vec<(i64, bool)>>>;
}

/// Every concern, on one backend.
pub trait Store: KeyStore + CounterStore + RequestLogStore + BatchStore {
    fn backend(&self) -> &'static str;
}

/// Opens the store named by `url` (no connection is made yet for PostgreSQL: the pool
/// connects on first use, so a database that is down at start delays only the log).
/// `timeout` bounds getting a connection and each query.
pub fn open(url: &DatabaseUrl, pool_size: usize, timeout: Duration) -> StoreResult<Arc<dyn Store>> {
    match url {
        DatabaseUrl::Postgres(u) => Ok(Arc::new(pg::PgStore::new(u, pool_size, timeout)?)),
        DatabaseUrl::Sqlite { path, .. } => Ok(Arc::new(sqlite::SqliteStore::open(path, timeout)?)),
    }
}
