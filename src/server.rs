//! Assembles the gateway: the actor tree, the shared state and the HTTP server.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::{Actor, Addr};
use actix_web::body::MessageBody;
use actix_web::dev::Server;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpMessage, HttpServer};
use arc_swap::ArcSwap;

use crate::actors::gateway::Gateway;
use crate::actors::log_writer::{LogWriter, LogWriterConfig};
use crate::auth::admin::AdminKeys;
use crate::auth::caller::Authenticator;
use crate::auth::globus::{GlobusAuth, GlobusClient};
use crate::auth::identity::Identity;
use crate::auth::keys::ApiKeys;
use crate::auth::oidc::OidcAuth;
use crate::auth::policy::Rules;
use crate::batch::actor::{BatchDeps, BatchSupervisor};
use crate::cache::ResponseCache;
use crate::clock::Clock;
use crate::config::Settings;
use crate::error::ApiError;
use crate::fixtures::Catalog;
use crate::metrics::Metrics;
use crate::openapi::{self, OpenApi};
use crate::proxy::forward::Upstream;
use crate::proxy::globus_compute::GlobusShared;
use crate::quota::actor::QuotaSupervisor;
use crate::quota::{rate_limit_headers, QuotaRedis, QuotaRegistry, RateLimited};
use crate::routes;
use crate::routing::directory::Directory;
use crate::state::AppState;
use crate::store::log_sink::{LogSink, LogStats};
use crate::store::{self, DatabaseUrl, Store};

/// PostgreSQL connections the request log's writer keeps (it writes one batch at a time).
const LOG_WRITER_POOL: usize = 2;
use crate::reload::{Reloader, SettingsSource};
use crate::request_id::{RequestId, REQUEST_ID};
use crate::security;
use crate::streaming::{token_hash, StreamHub};
use crate::streaming_redis::RedisStreams;

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
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    /// The listener speaks TLS.
    pub tls: bool,
    pub quotas: Arc<QuotaRegistry>,
    /// Flushed (`FlushAll`) by the shutdown path after the server stopped.
    pub quota_supervisor: Addr<QuotaSupervisor>,
    /// The batch runner's supervisor (`None` when `batches.enabled = false`).
    pub batches: Option<Addr<BatchSupervisor>>,
}

/// Whether some target of `catalog` is limited to Globus groups (`allowed_globus_groups`):
/// then a Globus caller's groups are fetched even with no global group rule.
pub fn catalog_has_target_groups(catalog: &Catalog) -> bool {
    catalog
        .targets
        .iter()
        .any(|t| !t.allowed_globus_groups.is_empty())
}

/// Starts the actor tree and binds the HTTP server (on `listener` when given, else on
/// `server.bind`). Must run inside an actix system. Reloads read the process's layers
/// (`/etc/inference-gateway`, the environment); see [`start_with_source`]. The database
/// must be migrated already (`store::migrate::run`, on a sync connection before the system
/// starts); opening the store makes no connection.
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

/// Binds `server.bind`; the error names the address ("cannot listen on 127.0.0.1:8080:
/// address already in use").
pub fn bind_listener(settings: &Settings) -> io::Result<TcpListener> {
    let addr = settings.bind_addr().map_err(invalid_input)?;
    TcpListener::bind(addr).map_err(|e| {
        let cause = match e.kind() {
            io::ErrorKind::AddrInUse => "address already in use".to_string(),
            io::ErrorKind::AddrNotAvailable => "address not available on this host".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (server.bind): {cause}"),
        )
    })
}

fn invalid_input(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// API keys, Globus and OIDC as configured; and the flag that says whether some target has
/// `allowed_globus_groups` (then Globus groups are fetched even without a global group
/// rule), which the reloader keeps true to the catalog.
fn authenticator(
    settings: &Settings,
    catalog: &Catalog,
    store: Arc<dyn store::Store>,
    metrics: &Metrics,
    log: &slog::Logger,
) -> io::Result<(Authenticator, Arc<std::sync::atomic::AtomicBool>)> {
    let target_groups = Arc::new(std::sync::atomic::AtomicBool::new(
        catalog_has_target_groups(catalog),
    ));
    let globus = if settings.auth.globus.enabled {
        let client = GlobusClient::from_config(&settings.auth.globus).map_err(invalid_input)?;
        let rules = Rules {
            target_groups: Arc::clone(&target_groups),
            ..Rules::from_config(&settings.auth.globus)
        };
        Some(GlobusAuth::start(
            client,
            rules,
            log.clone(),
            metrics.auth.introspection_cache.clone(),
        ))
    } else {
        None
    };
    let auth = Authenticator {
        mode: settings.auth.mode,
        anonymous: Arc::new(Identity::anonymous()),
        globus,
        keys: ApiKeys::new(store, log.clone()),
        oidc: settings
            .auth
            .oidc
            .enabled
            .then(|| OidcAuth::start(settings.auth.oidc.clone(), log.clone())),
    };
    Ok((auth, target_groups))
}

/// The request log: the sink handlers write rows to, the `LogWriter` and its stats (none
/// when `logging.request_log` is off).
#[allow(clippy::type_complexity)]
fn request_log(
    settings: &Settings,
    db_url: &DatabaseUrl,
    store: &Arc<dyn store::Store>,
    db_timeout: Duration,
    log: &slog::Logger,
) -> io::Result<(LogSink, Option<Addr<LogWriter>>, Option<Arc<LogStats>>)> {
    if !settings.logging.request_log {
        return Ok((LogSink::disabled(), None, None));
    }
    // PostgreSQL: the writer gets its own small pool, on this (the system's) thread, so
    // its connections outlive the HTTP workers for the flush at shutdown.
    let writer_store = match db_url {
        DatabaseUrl::Postgres(_) => store::open(db_url, LOG_WRITER_POOL, db_timeout)
            .map_err(|e| io::Error::other(e.to_string()))?,
        DatabaseUrl::Sqlite { .. } => Arc::clone(store),
    };
    let writer = LogWriter::new(
        writer_store,
        LogWriterConfig::from_settings(settings),
        log.clone(),
    );
    let stats = writer.stats();
    let tx = writer.sender();
    let addr = writer.start();
    Ok((
        LogSink::new(addr.clone().recipient(), tx, &settings.logging),
        Some(addr),
        Some(stats),
    ))
}

/// The quota registry and its supervisor; in Redis mode (`redis.url`) the shared counters
/// and their sync task.
fn quota_state(
    settings: &Settings,
    store: &Arc<dyn store::Store>,
    metrics: &Metrics,
    log: &slog::Logger,
) -> io::Result<(Arc<QuotaRegistry>, Addr<QuotaSupervisor>)> {
    let quotas = Arc::new(QuotaRegistry::new(
        &settings.quotas,
        Arc::clone(store),
        log.clone(),
    ));
    let quota_supervisor = QuotaSupervisor::start(Arc::clone(&quotas), &settings.quotas);
    if !settings.redis.url.is_empty() {
        let redis = QuotaRedis::new(
            &settings.redis.url,
            &settings.redis.key_prefix,
            &settings.quotas,
            metrics.quota_redis_up.clone(),
            metrics.quota_redis_fallback.clone(),
            log.clone(),
        )
        .map(Arc::new)
        .map_err(|e| invalid_input(format!("redis.url: {e}")))?;
        quotas.set_redis(Arc::clone(&redis));
        crate::quota::shared::spawn_sync(redis, Arc::clone(&quotas));
    }
    Ok((quotas, quota_supervisor))
}

/// What Globus Compute targets share (token and status caches, the stream hub); in Redis
/// mode also the cross-replica stream callbacks and their subscriber.
fn globus_compute(
    settings: &Settings,
    streams: &Arc<StreamHub>,
    log: &slog::Logger,
) -> io::Result<(Arc<GlobusShared>, Option<Arc<RedisStreams>>)> {
    let mut globus = GlobusShared::new(
        &settings.globus_compute,
        &settings.clusters,
        &settings.streaming,
        Arc::clone(streams),
        settings.cold_start.retry_after_secs.duration(),
    );
    let redis_streams = if settings.redis.url.is_empty() {
        None
    } else {
        let redis = RedisStreams::new(&settings.redis.url, &settings.redis.key_prefix)
            .map(Arc::new)
            .map_err(|e| invalid_input(format!("redis.url: {e}")))?;
        redis.spawn_subscriber(Arc::clone(streams), log.clone());
        globus = globus.with_redis(Arc::clone(&redis), log.clone());
        Some(redis)
    };
    Ok((Arc::new(globus), redis_streams))
}

/// What every worker's app holds: the state, the API description, its own upstream client
/// (and connection pool), and extractor settings whose errors leave in the OpenAI envelope
/// too (JSON routes take `json_body::JsonBody`; any `web::Json` left answers alike).
fn app_data(
    cfg: &mut web::ServiceConfig,
    state: &web::Data<AppState>,
    openapi: &web::Data<OpenApi>,
    upstream: Upstream,
    max_body: usize,
) {
    cfg.app_data(state.clone())
        .app_data(openapi.clone())
        .app_data(web::PayloadConfig::new(max_body))
        .app_data(web::Data::new(upstream))
        .app_data(
            web::JsonConfig::default()
                .limit(crate::json_body::JSON_LIMIT)
                .error_handler(|e, _| crate::error::json_payload_error(e).into()),
        )
        .app_data(
            web::QueryConfig::default().error_handler(|e, _| {
                ApiError::invalid(format!("Invalid query string: {e}")).into()
            }),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ApiError::invalid(format!("Invalid path: {e}")).into()),
        );
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
    let admin_keys = AdminKeys::from_config(&settings.auth).map_err(invalid_input)?;
    let tls = if settings.server.tls.enabled() {
        Some(security::server_config(&settings.server.tls)?)
    } else {
        None
    };
    let metrics = Arc::new(Metrics::new());
    let db_url = DatabaseUrl::from_settings(&settings).map_err(invalid_input)?;
    let db_timeout = settings.database.timeout_secs.duration();
    let store = store::open(&db_url, settings.database.pool_size.get(), db_timeout)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let (auth, target_groups) =
        authenticator(&settings, &catalog, Arc::clone(&store), &metrics, &log)?;
    let (log_sink, log_writer, log_stats) =
        request_log(&settings, &db_url, &store, db_timeout, &log)?;
    let (quotas, quota_supervisor) = quota_state(&settings, &store, &metrics, &log)?;
    let settings = Arc::new(settings);
    let directory = Arc::new(ArcSwap::from_pointee(Directory::default()));
    let cache = Arc::new(ResponseCache::new(
        &settings.cache,
        Arc::clone(&clock),
        Arc::clone(&metrics),
    ));
    let streams = Arc::new(StreamHub::new(settings.streaming.buffer_events.get()));
    let streaming_secret = std::env::var(&settings.streaming.secret_env)
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| token_hash(&s));
    let (globus, redis_streams) = globus_compute(&settings, &streams, &log)?;
    let gateway = Gateway::new(
        Arc::clone(&settings),
        catalog,
        clock,
        Arc::clone(&directory),
        log.clone(),
        Arc::clone(&metrics),
    )
    .with_globus(Arc::clone(&globus))
    .start();
    let batches = settings.batches.enabled.then(|| {
        BatchSupervisor::start(BatchDeps {
            settings: Arc::clone(&settings),
            store: Arc::clone(&store),
            directory: Arc::clone(&directory),
            metrics: Arc::clone(&metrics),
            quotas: Arc::clone(&quotas),
            log_sink: log_sink.clone(),
            globus: Arc::clone(&globus),
            log: log.new(slog::o!("component" => "batches")),
        })
    });
    let reloader = Arc::new(Reloader::new(
        source,
        Arc::clone(&settings),
        gateway.clone(),
        Arc::clone(&metrics),
        log.clone(),
        target_groups,
    ));
    let state = web::Data::new(AppState {
        settings: Arc::clone(&settings),
        directory: Arc::clone(&directory),
        gateway: gateway.clone(),
        log,
        auth,
        admin_keys,
        streams: Arc::clone(&streams),
        redis_streams,
        streaming_secret,
        started_at: SystemTime::now(),
        store: Arc::clone(&store),
        log_sink,
        metrics: Arc::clone(&metrics),
        log_stats: log_stats.clone(),
        cache,
        reloader: Arc::clone(&reloader),
        quotas: Arc::clone(&quotas),
        quota_supervisor: quota_supervisor.clone(),
        batches: batches.clone(),
        uploads: Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(settings.batches.max_concurrent_uploads.get()).unwrap_or(usize::MAX),
        )),
    });
    let is_tls = tls.is_some();
    let (server, addrs) = http_server(state, globus, tls, listener)?;
    Ok(Running {
        addrs,
        server,
        gateway,
        directory,
        store,
        log_writer,
        log_stats,
        reloader,
        metrics,
        tls: is_tls,
        quotas,
        quota_supervisor,
        batches,
    })
}

/// The HTTP server over `state`: each worker's app (the edges, security headers, the
/// routes at the root and under `/resource_server`), bound to `listener` (else to
/// `server.bind`), with TLS when `tls` is given; and the addresses it listens on.
fn http_server(
    state: web::Data<AppState>,
    globus: Arc<GlobusShared>,
    tls: Option<rustls::ServerConfig>,
    listener: Option<TcpListener>,
) -> io::Result<(Server, Vec<SocketAddr>)> {
    let settings = Arc::clone(&state.settings);
    let hsts = tls
        .as_ref()
        .map(|_| settings.server.tls.hsts_max_age_secs.get());
    let routes = routes::inference_routes(&settings);
    state.metrics.init_routes(routes.iter().map(|r| r.name));
    let openapi = web::Data::new(OpenApi(openapi::document(&routes).to_string()));
    let upstream_settings = settings.upstream.clone();
    let max_body = settings.server.max_body_bytes.get();
    let gzip = settings.server.gzip;
    let body_timeout = settings.server.body_read_timeout_ms.duration();
    let edge_log = state.log.clone();
    let mut server = HttpServer::new(move || {
        let edge_log = edge_log.clone();
        let root_routes = routes.clone();
        let first_routes = routes.clone();
        let upstream = Upstream::new(&upstream_settings).with_globus(Arc::clone(&globus));
        App::new()
            .configure(|c| app_data(c, &state, &openapi, upstream, max_body))
            // Path normalization, the body timeout, gzip, and an error answer's request id
            // and the log line of its inside cause, in one layer (each `from_fn`
            // layer boxes a future per request).
            .wrap(from_fn(move |req, next| {
                edges(req, next, gzip, body_timeout, edge_log.clone())
            }))
            .wrap(security::headers(hsts))
            .service(
                web::scope("/resource_server")
                    .configure(move |c| routes::configure(c, &first_routes))
                    .default_service(web::to(routes::not_found)),
            )
            .configure(move |c| routes::configure(c, &root_routes))
            .default_service(web::to(routes::not_found))
    })
    .keep_alive(settings.server.keep_alive_secs.duration())
    .max_connections(settings.server.max_connections.get())
    .h1_allow_half_closed(false)
    // The grace, then time for the streams cut at its end to send their final event.
    .shutdown_timeout(
        settings.server.shutdown_grace_secs.get() + crate::proxy::shutdown_cut::CUT_SECS,
    )
    .disable_signals();
    if settings.server.workers > 0 {
        server = server.workers(settings.server.workers);
    }
    let listener = match listener {
        Some(listener) => listener,
        None => bind_listener(&settings)?,
    };
    server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}

/// The app's innermost middleware: `/v1//models/` is routed as `/v1/models` (merged and
/// trimmed slashes); a `%00` in the path or query is a 400 (`nul_input`); a request body
/// that stops arriving for `body_timeout` is answered 408 with `Connection: close`
/// (`body_timeout::wrap`); and with gzip on, an answer worth it is gzipped when the
/// client accepts it (`compress::maybe_gzip`: never an event stream or a small body).
/// The request id is chosen here, before the handler runs ([`RequestId`] in the request's
/// extensions, which handlers read), and every answer leaves with it as `x-request-id`;
/// the edge's own refusals (NUL, 408) included. A request under a user's quotas
/// ([`RateLimited`] in its extensions) gets the `x-ratelimit-*` headers, errors included.
/// The inside cause of a 5xx the gateway made itself ([`crate::error::Cause`], put in the
/// response by `ApiError`) is logged here, once, with the request id and path: handlers do
/// not log the errors they return.
fn name_answer<B>(log: &slog::Logger, res: &mut ServiceResponse<B>) {
    let (id, user) = {
        let extensions = res.request().extensions();
        (
            extensions.get::<RequestId>().cloned(),
            extensions.get::<RateLimited>().cloned(),
        )
    };
    if !res.headers().contains_key(&REQUEST_ID) {
        let id = id.unwrap_or_else(|| RequestId::of(res.request()));
        res.headers_mut().insert(REQUEST_ID.clone(), id.0);
    }
    if let Some(RateLimited(user)) = user {
        rate_limit_headers(res.headers_mut(), &user);
    }
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    let Some(cause) = res
        .response()
        .extensions()
        .get::<crate::error::Cause>()
        .cloned()
    else {
        return;
    };
    let request_id = res
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = res.request().path().to_string();
    if status == actix_web::http::StatusCode::SERVICE_UNAVAILABLE {
        slog::warn!(log, "unavailable"; "cause" => cause.as_str(), "path" => path,
            "request_id" => request_id);
    } else {
        slog::error!(log, "internal error"; "cause" => cause.as_str(), "path" => path,
            "request_id" => request_id);
    }
}

async fn edges(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    gzip: bool,
    body_timeout: Duration,
    log: slog::Logger,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    crate::normalize_path::normalize(&mut req);
    let id = RequestId::choose(req.request());
    req.extensions_mut().insert(id);
    if let Some(refused) = crate::nul_input::refuse(&req) {
        let mut refused = req.into_response(refused).map_into_right_body();
        name_answer(&log, &mut refused);
        return Ok(crate::compress::maybe_gzip(refused, false));
    }
    let fired = crate::body_timeout::wrap(&mut req, body_timeout);
    let accepts_gzip = gzip && crate::compress::accepts_gzip(&req);
    let res = next.call(req).await?;
    let mut res = if fired.is_some_and(|f| f.get()) {
        let (req, _) = res.into_parts();
        let mut timeout = actix_web::ResponseError::error_response(&ApiError::RequestTimeout);
        timeout
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        ServiceResponse::new(req, timeout).map_into_right_body()
    } else {
        res.map_into_left_body()
    };
    name_answer(&log, &mut res);
    Ok(crate::compress::maybe_gzip(res, accepts_gzip))
}
