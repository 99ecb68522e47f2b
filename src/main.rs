//! The `inference-gateway` command: serve (the default), check-config and migrate.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use inference_gateway::clock::SystemClock;
use inference_gateway::config::Settings;
use inference_gateway::fixtures::{self, Catalog};
use inference_gateway::login::{self, LoginSettings};
use inference_gateway::reload::SettingsSource;
use inference_gateway::store::{self, DatabaseUrl};
use inference_gateway::{logging, server, systemd};

/// mimalloc: the proxy path allocates many small, short-lived buffers, where glibc's
/// allocator showed up at ~10% of CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "inference-gateway",
    version,
    about = "OpenAI-compatible gateway for many inference servers"
)]
struct Cli {
    /// Configuration file layered over the defaults (and under GATEWAY__* variables).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Validate configuration and fixtures, print a summary and warnings (exit 0), exit
    /// non-zero on any error.
    CheckConfig {
        /// Also ask each target once (its health path, within health.timeout_ms) and print
        /// reachable, refused, timeout or its HTTP status.
        #[arg(long)]
        probe: bool,
    },
    /// Apply pending database migrations (`database.url`) and exit. `serve` does it too.
    Migrate,
    /// Manage API keys in the database (`database.url`).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Get Globus tokens for calling a gateway (the role of FIRST's inference-auth-token.py).
    Auth(AuthArgs),
}

#[derive(clap::Args)]
struct AuthArgs {
    #[command(subcommand)]
    action: AuthAction,
    /// Globus Auth base URL.
    #[arg(
        long,
        global = true,
        env = "GLOBUS_AUTH_BASE",
        default_value = "https://auth.globus.org"
    )]
    auth_base: String,
    /// This helper's public (native app) Globus client id.
    #[arg(long, global = true, env = "CLI_AUTH_CLIENT_ID")]
    client_id: Option<String>,
    /// The gateway's Globus client id; the scope asked for is its action_all scope.
    #[arg(long, global = true, env = "GLOBUS_APPLICATION_ID")]
    gateway_client_id: Option<String>,
    /// Scopes to ask for, overriding the one derived from --gateway-client-id.
    #[arg(long, global = true)]
    scope: Option<String>,
    /// Identity-provider domains the login must use, comma-separated.
    #[arg(long, global = true, env = "CLI_ALLOWED_DOMAINS", default_value = "")]
    domains: String,
    /// Where tokens are kept (default: $XDG_CONFIG_HOME/inference-gateway/tokens.json).
    #[arg(long, global = true, env = "INFERENCE_GATEWAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        /// The user the key belongs to.
        #[arg(long)]
        user: String,
        /// The user's organisation (quotas and usage can be counted per org).
        #[arg(long)]
        org: Option<String>,
        /// Give the key the admin role (the /admin API).
        #[arg(long)]
        admin: bool,
        /// Lifetime, like 30d, 12h, 90m (default: no expiry).
        #[arg(long, value_name = "LIFETIME")]
        expires: Option<String>,
        /// Models the key may use, comma-separated (default: every model).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AuthAction {
    /// Log in (PKCE): open the printed address, paste the code back.
    Login {
        /// Log in again even if valid tokens are stored.
        #[arg(long, short)]
        force: bool,
    },
    /// Print a valid access token, refreshing it first when it is about to expire.
    Token,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Auth(args)) = cli.command {
        return auth(args);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Migrate) => return migrate(&settings),
        Some(Command::Keys { action }) => return keys(&settings, action),
        _ => {}
    }
    let catalog = match Catalog::load(&settings.fixtures.dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "fixtures error (fixtures.dir = {}): {e}",
                settings.fixtures.dir.display()
            );
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { probe } => check_config(&settings, &catalog, probe),
        Command::Serve | Command::Auth(_) | Command::Keys { .. } | Command::Migrate => {
            serve(settings, catalog, SettingsSource::process(cli.config))
        }
    }
}

/// `keys create|list|revoke`: the same store the admin API uses.
fn keys(settings: &Settings, action: KeysAction) -> ExitCode {
    use inference_gateway::auth::keys::{self as api_keys, NewKey};
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(1)
    };
    let url = match migrate_database(settings) {
        Ok((url, _)) => url,
        Err(e) => return fail(e),
    };
    let expires_at = match &action {
        KeysAction::Create {
            expires: Some(text),
            ..
        } => match api_keys::expires_at(text, store::now_ms()) {
            Ok(at) => Some(at),
            Err(e) => return fail(format!("--expires: {e}")),
        },
        _ => None,
    };
    let timeout = settings.database.timeout_secs.duration();
    let system = actix_rt::System::new();
    let result: Result<(), String> = system.block_on(async move {
        let db = store::open(&url, 1, timeout).map_err(|e| e.to_string())?;
        let mut out = std::io::stdout().lock();
        match action {
            KeysAction::Create {
                user,
                org,
                admin,
                models,
                ..
            } => {
                let new = NewKey {
                    user,
                    org,
                    admin,
                    expires_at,
                    models,
                };
                let (secret, row) = api_keys::create(db.as_ref(), new)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = writeln!(out, "{secret}");
                eprintln!(
                    "created {} for {} (role {}); the key above is shown only once",
                    row.id, row.user_id, row.role
                );
            }
            KeysAction::List { user } => {
                let rows = db.list_keys(user).await.map_err(|e| e.to_string())?;
                let _ = writeln!(
                    out,
                    "{:<22} {:<20} {:<12} {:<6} {:<14} {:<8}",
                    "ID", "USER", "ORG", "ROLE", "PREFIX", "STATE"
                );
                let now = store::now_ms();
                for r in rows {
                    let state = if r.revoked_at.is_some() {
                        "revoked"
                    } else if !r.is_active(now) {
                        "expired"
                    } else {
                        "active"
                    };
                    let _ = writeln!(
                        out,
                        "{:<22} {:<20} {:<12} {:<6} {:<14} {:<8}",
                        r.id, r.user_id, r.org_id, r.role, r.prefix, state
                    );
                }
            }
            KeysAction::Revoke { id } => {
                if !db
                    .revoke_key(id.clone(), store::now_ms())
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Err(format!("no active key {id}"));
                }
                let _ = writeln!(out, "revoked {id}");
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn auth(args: AuthArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(1)
    };
    let Some(client_id) = args.client_id.filter(|c| !c.is_empty()) else {
        return fail("--client-id (or CLI_AUTH_CLIENT_ID) is required".into());
    };
    let scopes = match (args.scope, args.gateway_client_id) {
        (Some(scope), _) => scope,
        (None, Some(gateway)) => format!("https://auth.globus.org/scopes/{gateway}/action_all"),
        (None, None) => {
            return fail(
                "--gateway-client-id (or GLOBUS_APPLICATION_ID) or --scope is required".into(),
            )
        }
    };
    let Some(token_file) = args.token_file.or_else(login::default_token_file) else {
        return fail("no home directory: pass --token-file".into());
    };
    let settings = LoginSettings {
        auth_base: args.auth_base.trim_end_matches('/').to_string(),
        client_id,
        scopes,
        redirect_uri: format!("{}/v2/web/auth-code", "https://auth.globus.org"),
        domains: args
            .domains
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect(),
        token_file,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        match args.action {
            AuthAction::Login { force } => {
                let stdin = std::io::stdin();
                let mut input = stdin.lock();
                let mut err = std::io::stderr();
                login::login(&settings, force, &mut input, &mut err).await
            }
            AuthAction::Token => login::access_token(&settings).await.map(|token| {
                let _ = writeln!(std::io::stdout(), "{token}");
            }),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

/// Applies pending migrations on a sync connection (before any actix system exists).
/// Returns the database (printable: no password) and the versions applied.
fn migrate_database(settings: &Settings) -> Result<(DatabaseUrl, Vec<String>), String> {
    let url = DatabaseUrl::from_settings(settings).map_err(|e| e.to_string())?;
    match store::migrate::run(&url) {
        Ok(applied) => Ok((url, applied)),
        Err(e) => Err(format!("database.url ({url}): {e}")),
    }
}

fn migrate(settings: &Settings) -> ExitCode {
    match migrate_database(settings) {
        Ok((url, applied)) => {
            let mut out = std::io::stdout().lock();
            if applied.is_empty() {
                let _ = writeln!(out, "database {url}: up to date");
            } else {
                let _ = writeln!(out, "database {url}: applied {}", applied.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migration error: {e}");
            ExitCode::from(1)
        }
    }
}

fn check_config(settings: &Settings, catalog: &Catalog, probe: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    // Problems stop `serve` (or make it misbehave) and exit 1 here; warnings are what
    // `serve` only logs, and exit 0 here too.
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if let Err(e) = inference_gateway::auth::admin::AdminKeys::from_config(&settings.auth) {
        problems.push(e.to_string());
    }
    let bind = settings.server.bind.as_str();
    for t in &catalog.targets {
        let host_port = t.base_url.split("://").nth(1).unwrap_or("");
        if host_port.starts_with(bind)
            || (bind.starts_with("127.0.0.1:")
                && host_port.starts_with(&bind.replacen("127.0.0.1", "localhost", 1)))
        {
            problems.push(format!(
                "target {:?}: base_url {} is this gateway's own address",
                t.slug, t.base_url
            ));
        }
        if let Some(var) = &t.api_key_env {
            if std::env::var(var).map(|v| v.is_empty()).unwrap_or(true) {
                // `serve` logs the same and sends the target's requests without a key.
                warnings.push(format!(
                    "target {:?}: api_key_env_name {var} is not set in the environment \
                     (its requests go without a key)",
                    t.slug
                ));
            }
        }
    }
    let _ = writeln!(
        out,
        "config: ok (server.bind = {bind}, auth.mode = {:?})",
        settings.auth.mode
    );
    match DatabaseUrl::from_settings(settings) {
        Ok(url) => {
            let _ = writeln!(out, "database: {url}");
        }
        Err(e) => problems.push(e.to_string()),
    }
    // Only the files that were there: the optional ones may be missing.
    let (read, missing): (Vec<PathBuf>, Vec<PathBuf>) = fixtures::files(&settings.fixtures.dir)
        .into_iter()
        .partition(|p| p.is_file());
    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "fixtures: ok ({} targets, {} models, {} clusters) read from {}",
        catalog.targets.len(),
        catalog.models.len(),
        catalog.clusters.len(),
        list(&read)
    );
    if !missing.is_empty() {
        let _ = writeln!(out, "  not found (optional): {}", list(&missing));
    }
    for m in &catalog.models {
        let demo = m.targets.iter().all(|slug| {
            catalog
                .target(slug)
                .is_some_and(|t| t.transport == fixtures::Transport::Demo)
        });
        let _ = writeln!(
            out,
            "  model {:?}: targets {}{}",
            m.name,
            m.targets.join(", "),
            if demo { " (built-in demo)" } else { "" }
        );
    }
    // FIRST's path batches (`input_file_path`, `output_folder_path`) are refused unless
    // their directories are listed: say which way this gateway is set.
    if settings.batches.allowed_roots.is_empty() {
        let _ = writeln!(
            out,
            "path batches: refused (batches.allowed_roots is empty; list the directories \
             FIRST's input_file_path and output_folder_path may name)"
        );
    } else {
        let _ = writeln!(
            out,
            "path batches: allowed under {}",
            settings
                .batches
                .allowed_roots
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if probe {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = settings.health.timeout_ms.duration();
        let system = actix_rt::System::new();
        let outcomes = system.block_on(inference_gateway::probe::probe_all(
            &catalog.targets,
            settings,
            timeout,
        ));
        let _ = writeln!(
            out,
            "probe (one request each, within {} s):",
            timeout.as_secs_f64()
        );
        for (t, outcome) in catalog.targets.iter().zip(&outcomes) {
            let _ = writeln!(
                out,
                "  target {:?} ({}): {outcome}",
                t.slug,
                inference_gateway::probe::address(t)
            );
        }
    }
    for w in &warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(out, "warnings: {}", warnings.len());
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        ExitCode::from(1)
    }
}

fn serve(settings: Settings, catalog: Catalog, source: SettingsSource) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let level = logging::parse_level(&settings.logging.level).unwrap_or(slog::Level::Info);
    let (log, guard) = logging::json_stdout(level);
    // Listen first, before anything is started: a port in use is one clear line, not a
    // half-built actor system torn down.
    let listener = match server::bind_listener(&settings) {
        Ok(listener) => listener,
        Err(e) => {
            slog::crit!(log, "cannot listen"; "error" => &e);
            eprintln!("error: {e}");
            drop(log);
            drop(guard);
            return ExitCode::from(1);
        }
    };
    match migrate_database(&settings) {
        Ok((url, applied)) => slog::info!(log, "database ready";
            "database" => url.to_string(), "migrations_applied" => applied.join(",")),
        Err(e) => {
            slog::crit!(log, "database migration failed"; "error" => &e);
            eprintln!("error: {e}");
            drop(log);
            drop(guard);
            return ExitCode::from(1);
        }
    }
    let system = actix_rt::System::new();
    let result = system.block_on(run(settings, catalog, source, listener, log.clone()));
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            slog::crit!(log, "gateway stopped with an error"; "error" => e.to_string());
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    };
    drop(log);
    // Flushes the log writer: every line logged so far is written before exit.
    drop(guard);
    code
}

async fn run(
    settings: Settings,
    catalog: Catalog,
    source: SettingsSource,
    listener: std::net::TcpListener,
    log: slog::Logger,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let grace = settings.server.shutdown_grace_secs.get();
    let flush_timeout = Duration::from_secs(settings.database.timeout_secs.get() + 5);
    let running = server::start_with_source(
        settings,
        catalog,
        Arc::new(SystemClock),
        log.clone(),
        Some(listener),
        source,
    )?;
    for addr in &running.addrs {
        slog::info!(log, "listening"; "addr" => addr.to_string(), "tls" => running.tls);
    }
    let handle = running.server.handle();
    let log_writer = running.log_writer.clone();
    let reloader = Arc::clone(&running.reloader);
    let quota_supervisor = running.quota_supervisor.clone();
    let quotas = Arc::clone(&running.quotas);
    let mut server = actix_rt::spawn(running.server);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // The listener is bound: tell systemd (Type=notify), and keep its watchdog fed from
    // this (the actix system) thread.
    systemd::ready(&log);
    systemd::spawn_watchdog(log.clone());
    loop {
        tokio::select! {
            _ = term.recv() => {
                slog::info!(log, "SIGTERM: stopping"; "grace_secs" => grace);
                break;
            }
            _ = int.recv() => {
                slog::info!(log, "SIGINT: stopping"; "grace_secs" => grace);
                break;
            }
            _ = hup.recv() => {
                slog::info!(log, "SIGHUP: reloading configuration and fixtures");
                // Errors are logged by the reloader (naming the key or file); we keep
                // serving on what we have either way.
                let _ = reloader.reload().await;
            }
            result = &mut server => {
                return result.map_err(std::io::Error::other)?;
            }
        }
    }
    systemd::stopping(&log);
    // Stop accepting at once; in-flight requests and streams get up to the grace period.
    // Streams still open then end with an in-band error event (the server itself waits
    // `CUT_SECS` longer, so they can send it), instead of a reset connection.
    let stopping = handle.stop(true);
    tokio::pin!(stopping);
    tokio::select! {
        _ = &mut stopping => {}
        _ = actix_rt::time::sleep(Duration::from_secs(grace)) => {
            slog::warn!(log, "shutdown grace period over: ending the streams still open";
                "grace_secs" => grace);
            inference_gateway::proxy::shutdown_cut::cut();
            stopping.await;
        }
    }
    let _ = server.await;
    // Every request has ended: write the quota counters so a restart keeps them.
    use inference_gateway::quota::actor::FlushAll;
    if actix_rt::time::timeout(flush_timeout, quota_supervisor.send(FlushAll))
        .await
        .is_err()
    {
        slog::error!(log, "quota counters not flushed in time";
            "timeout_secs" => flush_timeout.as_secs());
    }
    // Redis mode: push the last counts (bounded by quotas.redis_timeout_ms).
    if let Some(redis) = quotas.redis() {
        redis.shutdown(&quotas.live()).await;
    }
    if let Some(writer) = log_writer {
        // Every request has ended: write out the rows still queued (or spill them).
        use inference_gateway::actors::log_writer::Flush;
        match actix_rt::time::timeout(flush_timeout, writer.send(Flush)).await {
            Ok(Ok(())) => slog::info!(log, "request log flushed"),
            _ => slog::error!(log, "request log flush did not finish; queued rows are lost";
                "timeout_secs" => flush_timeout.as_secs()),
        }
    }
    slog::info!(log, "stopped");
    Ok(())
}
