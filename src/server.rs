//! Assembles the gateway: the actor tree, the shared state and the HTTP server.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::{Actor, Addr};
use actix_web::dev::Server;
use actix_web::middleware::{NormalizePath, TrailingSlash};
use actix_web::{web, App, HttpServer};
use arc_swap::ArcSwap;

use crate::actors::gateway::{Directory, Gateway};
use crate::actors::log_writer::{LogSink, LogStats, LogWriter, LogWriterConfig};
use crate::auth::admin::AdminKeys;
use crate::clock::Clock;
use crate::config::Settings;
use crate::fixtures::Catalog;
use crate::proxy::forward::Upstream;
use crate::routes;
use crate::state::AppState;
use crate::store::{self, DatabaseUrl, Store};

/// PostgreSQL connections the request log's writer keeps (it writes one batch at a time).
const LOG_WRITER_POOL: usize = 2;

/// A started gateway. The server future must be polled (awaited or spawned) to serve.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub server: Server,
    pub gateway: Addr<Gateway>,
    pub directory: Arc<ArcSwap<Directory>>,
    pub store: Arc<dyn Store>,
    /// The request log's writer (None when `logging.request_log = false`); the shutdown
    /// path sends it `Flush` after the server stopped.
    pub log_writer: Option<Addr<LogWriter>>,
    pub log_stats: Option<Arc<LogStats>>,
}

/// Starts the actor tree and binds the HTTP server (on `listener` when given, else on
/// `server.bind`). Must run inside an actix system. The database must be migrated already
/// (`store::migrate::run`, on a sync connection before the system starts); opening the
/// store makes no connection.
pub fn start(
    settings: Settings,
    catalog: Catalog,
    clock: Arc<dyn Clock>,
    log: slog::Logger,
    listener: Option<TcpListener>,
) -> io::Result<Running> {
    let admin_keys = AdminKeys::from_config(&settings.auth)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let db_url = DatabaseUrl::from_settings(&settings)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let db_timeout = Duration::from_secs(settings.database.timeout_secs);
    let store = store::open(&db_url, settings.database.pool_size, db_timeout)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let (log_sink, log_writer, log_stats) = if settings.logging.request_log {
        // PostgreSQL: the writer gets its own small pool, on this (the system's) thread, so
        // its connections outlive the HTTP workers for the flush at shutdown.
        let writer_store = match &db_url {
            DatabaseUrl::Postgres(_) => store::open(&db_url, LOG_WRITER_POOL, db_timeout)
                .map_err(|e| io::Error::other(e.to_string()))?,
            DatabaseUrl::Sqlite { .. } => Arc::clone(&store),
        };
        let writer = LogWriter::new(
            writer_store,
            LogWriterConfig::from_settings(&settings),
            log.clone(),
        );
        let stats = writer.stats();
        let tx = writer.sender();
        let addr = writer.start();
        (
            LogSink::new(addr.clone(), tx, &settings.logging),
            Some(addr),
            Some(stats),
        )
    } else {
        (LogSink::disabled(), None, None)
    };
    let settings = Arc::new(settings);
    let directory = Arc::new(ArcSwap::from_pointee(Directory::default()));
    let gateway = Gateway::new(
        Arc::clone(&settings),
        catalog,
        clock,
        Arc::clone(&directory),
        log.clone(),
    )
    .start();
    let state = web::Data::new(AppState {
        settings: Arc::clone(&settings),
        directory: Arc::clone(&directory),
        gateway: gateway.clone(),
        log,
        admin_keys,
        started_at: SystemTime::now(),
        store: Arc::clone(&store),
        log_sink,
    });
    let routes = routes::inference_routes(&settings);
    let upstream_settings = settings.upstream.clone();
    let mut server = HttpServer::new(move || {
        let root_routes = routes.clone();
        let first_routes = routes.clone();
        App::new()
            .app_data(state.clone())
            // One upstream client (and connection pool) per worker thread.
            .app_data(web::Data::new(Upstream::new(&upstream_settings)))
            .wrap(NormalizePath::new(TrailingSlash::Trim))
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
    server = match listener {
        Some(listener) => server.listen(listener)?,
        None => {
            let addr = settings
                .bind_addr()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            server.bind(addr)?
        }
    };
    let addrs = server.addrs();
    Ok(Running {
        addrs,
        server: server.run(),
        gateway,
        directory,
        store,
        log_writer,
        log_stats,
    })
}
