//! Assembles the gateway: the actor tree, the shared state and the HTTP server.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::{Actor, Addr};
use actix_web::dev::Server;
use actix_web::middleware::{from_fn, Compress, Condition, NormalizePath, TrailingSlash};
use actix_web::{web, App, HttpServer};
use arc_swap::ArcSwap;

use crate::actors::gateway::{Directory, Gateway};
use crate::auth::admin::AdminKeys;
use crate::cache::ResponseCache;
use crate::clock::Clock;
use crate::config::Settings;
use crate::fixtures::Catalog;
use crate::metrics::Metrics;
use crate::openapi::{self, OpenApi};
use crate::proxy::forward::Upstream;
use crate::reload::{Reloader, SettingsSource};
use crate::state::AppState;
use crate::{routes, security};

/// A started gateway. The server future must be polled (awaited or spawned) to serve.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub server: Server,
    pub gateway: Addr<Gateway>,
    pub directory: Arc<ArcSwap<Directory>>,
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    /// The listener speaks TLS.
    pub tls: bool,
}

/// Starts the actor tree and binds the HTTP server (on `listener` when given, else on
/// `server.bind`). Must run inside an actix system. Reloads read the process's layers
/// (`/etc/inference-gateway`, the environment); see [`start_with_source`].
pub fn start(
    settings: Settings,
    catalog: Catalog,
    clock: Arc<dyn Clock>,
    log: slog::Logger,
    listener: Option<TcpListener>,
) -> io::Result<Running> {
    start_with_source(
        settings,
        catalog,
        clock,
        log,
        listener,
        SettingsSource::process(None),
    )
}

/// Like [`start`]; `source` is where a reload reads settings again.
pub fn start_with_source(
    settings: Settings,
    catalog: Catalog,
    clock: Arc<dyn Clock>,
    log: slog::Logger,
    listener: Option<TcpListener>,
    source: SettingsSource,
) -> io::Result<Running> {
    let admin_keys = AdminKeys::from_config(&settings.auth)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let tls = if settings.server.tls.enabled() {
        Some(security::server_config(&settings.server.tls)?)
    } else {
        None
    };
    let hsts = tls.as_ref().map(|_| settings.server.tls.hsts_max_age_secs);
    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::new());
    let directory = Arc::new(ArcSwap::from_pointee(Directory::default()));
    let cache = Arc::new(ResponseCache::new(
        &settings.cache,
        Arc::clone(&clock),
        Arc::clone(&metrics),
    ));
    let gateway = Gateway::new(
        Arc::clone(&settings),
        catalog,
        clock,
        Arc::clone(&directory),
        log.clone(),
        Arc::clone(&metrics),
    )
    .start();
    let reloader = Arc::new(Reloader::new(
        source,
        Arc::clone(&settings),
        gateway.clone(),
        Arc::clone(&metrics),
        log.clone(),
    ));
    let state = web::Data::new(AppState {
        settings: Arc::clone(&settings),
        directory: Arc::clone(&directory),
        gateway: gateway.clone(),
        log,
        admin_keys,
        started_at: SystemTime::now(),
        metrics: Arc::clone(&metrics),
        cache,
        reloader: Arc::clone(&reloader),
    });
    let routes = routes::inference_routes(&settings);
    metrics.init_routes(routes.iter().map(|r| r.name));
    let openapi = web::Data::new(OpenApi(openapi::document(&routes).to_string()));
    let upstream_settings = settings.upstream.clone();
    let max_body = settings.server.max_body_bytes;
    let gzip = settings.server.gzip;
    let mut server = HttpServer::new(move || {
        let root_routes = routes.clone();
        let first_routes = routes.clone();
        App::new()
            .app_data(state.clone())
            .app_data(openapi.clone())
            .app_data(web::PayloadConfig::new(max_body))
            // One upstream client (and connection pool) per worker thread.
            .app_data(web::Data::new(Upstream::new(&upstream_settings)))
            .wrap(NormalizePath::new(TrailingSlash::Trim))
            // gzip by Accept-Encoding, except SSE and small bodies, which say
            // `Content-Encoding: identity` (Compress leaves those alone).
            .wrap(Condition::new(gzip, from_fn(security::skip_small_bodies)))
            .wrap(Condition::new(gzip, Compress::default()))
            .wrap(security::headers(hsts))
            .service(
                web::scope("/resource_server")
                    .configure(move |c| routes::configure(c, &first_routes))
                    .default_service(web::to(routes::not_found)),
            )
            .configure(move |c| routes::configure(c, &root_routes))
            .default_service(web::to(routes::not_found))
    })
    .keep_alive(Duration::from_secs(settings.server.keep_alive_secs))
    .h1_allow_half_closed(false)
    .shutdown_timeout(settings.server.shutdown_grace_secs)
    .disable_signals();
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    let listener = match listener {
        Some(listener) => listener,
        None => {
            let addr = settings
                .bind_addr()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            TcpListener::bind(addr)?
        }
    };
    let is_tls = tls.is_some();
    server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    let addrs = server.addrs();
    Ok(Running {
        addrs,
        server: server.run(),
        gateway,
        directory,
        reloader,
        metrics,
        tls: is_tls,
    })
}
