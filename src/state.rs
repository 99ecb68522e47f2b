//! What handlers share: settings, the published directory, the supervisor's address, the
//! logger, the store and the request log's sink. Passed explicitly with `web::Data`; no
//! global registries.

use std::sync::Arc;
use std::time::SystemTime;

use actix::Addr;
use arc_swap::ArcSwap;

use crate::actors::gateway::{Directory, Gateway};
use crate::actors::log_writer::LogSink;
use crate::auth::admin::AdminKeys;
use crate::auth::caller::Authenticator;
use crate::config::Settings;
use crate::quota::actor::QuotaSupervisor;
use crate::quota::QuotaRegistry;
use crate::store::Store;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub directory: Arc<ArcSwap<Directory>>,
    pub gateway: Addr<Gateway>,
    pub log: slog::Logger,
    /// How callers are authenticated.
    pub auth: Authenticator,
    /// Keys carrying the admin role.
    pub admin_keys: AdminKeys,
    /// When this process started (the `created` of listed models).
    pub started_at: SystemTime,
    /// The database (its own PostgreSQL pool; SQLite's one connection is shared).
    pub store: Arc<dyn Store>,
    /// Where request records send their row (disabled when `logging.request_log = false`).
    pub log_sink: LogSink,
    /// Live quota states of users, orgs and models.
    pub quotas: Arc<QuotaRegistry>,
    pub quota_supervisor: Addr<QuotaSupervisor>,
}
