//! What handlers share: settings, the published directory, the supervisor's address, the
//! logger, the store and the request log's sink, metrics, the response cache and the
//! reloader. Passed explicitly with `web::Data`; no global registries.

use std::sync::Arc;
use std::time::SystemTime;

use actix::Addr;
use arc_swap::ArcSwap;

use crate::actors::gateway::Gateway;
use crate::auth::admin::AdminKeys;
use crate::auth::caller::Authenticator;
use crate::cache::ResponseCache;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::quota::actor::QuotaSupervisor;
use crate::quota::QuotaRegistry;
use crate::reload::Reloader;
use crate::routing::directory::Directory;
use crate::store::log_sink::LogSink;
use crate::store::Store;
use crate::streaming::StreamHub;
use crate::streaming_redis::RedisStreams;

pub struct AppState {
    /// The settings the process started with (handler limits do not change on reload).
    pub settings: Arc<Settings>,
    pub directory: Arc<ArcSwap<Directory>>,
    pub gateway: Addr<Gateway>,
    pub log: slog::Logger,
    /// How callers are authenticated.
    pub auth: Authenticator,
    /// Keys carrying the admin role.
    pub admin_keys: AdminKeys,
    /// Where streaming callbacks meet client streams.
    pub streams: Arc<StreamHub>,
    /// Callbacks for streams other replicas own (with `redis.url`).
    pub redis_streams: Option<Arc<RedisStreams>>,
    /// SHA-256 of the streaming callbacks' shared secret (`None`: callbacks refused).
    pub streaming_secret: Option<[u8; 32]>,
    /// When this process started (the `created` of listed models).
    pub started_at: SystemTime,
    /// The database (its own PostgreSQL pool; SQLite's one connection is shared).
    pub store: Arc<dyn Store>,
    /// Where request records send their row (disabled when `logging.request_log = false`).
    pub log_sink: LogSink,
    /// The request log writer's counters (queue depth, spills), for `/metrics`.
    pub log_stats: Option<Arc<crate::store::log_sink::LogStats>>,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<ResponseCache>,
    pub reloader: Arc<Reloader>,
    /// Live quota states of users, orgs and models.
    pub quotas: Arc<QuotaRegistry>,
    pub quota_supervisor: Addr<QuotaSupervisor>,
    /// Runs batches (`None` when `batches.enabled = false`); handlers send it `Wake`.
    pub batches: Option<Addr<crate::batch::actor::BatchSupervisor>>,
    /// File uploads being received (`batches.max_concurrent_uploads` permits).
    pub uploads: Arc<tokio::sync::Semaphore>,
}
