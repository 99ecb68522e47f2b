//! What handlers share: settings, the published directory, the supervisor's address and
//! the logger. Passed explicitly with `web::Data`; no global registries.

use std::sync::Arc;
use std::time::SystemTime;

use actix::Addr;
use arc_swap::ArcSwap;

use crate::actors::gateway::{Directory, Gateway};
use crate::auth::admin::AdminKeys;
use crate::auth::caller::Authenticator;
use crate::config::Settings;

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
}
