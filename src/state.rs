//! What handlers share: settings, the published directory, the supervisor's address, the
//! logger, metrics, the response cache and the reloader. Passed explicitly with
//! `web::Data`; no global registries.

use std::sync::Arc;
use std::time::SystemTime;

use actix::Addr;
use arc_swap::ArcSwap;

use crate::actors::gateway::{Directory, Gateway};
use crate::auth::admin::AdminKeys;
use crate::cache::ResponseCache;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::reload::Reloader;

pub struct AppState {
    /// The settings the process started with (handler limits do not change on reload).
    pub settings: Arc<Settings>,
    pub directory: Arc<ArcSwap<Directory>>,
    pub gateway: Addr<Gateway>,
    pub log: slog::Logger,
    /// Keys carrying the admin role.
    pub admin_keys: AdminKeys,
    /// When this process started (the `created` of listed models).
    pub started_at: SystemTime,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<ResponseCache>,
    pub reloader: Arc<Reloader>,
}
