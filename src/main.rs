//! The `inference-gateway` command: serve (the default) and check-config.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use inference_gateway::clock::SystemClock;
use inference_gateway::config::Settings;
use inference_gateway::fixtures::{self, Catalog};
use inference_gateway::reload::SettingsSource;
use inference_gateway::{logging, server, systemd};

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
    /// Validate configuration and fixtures, print a summary, exit non-zero on any error.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
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
        Command::CheckConfig => check_config(&settings, &catalog),
        Command::Serve => serve(settings, catalog, SettingsSource::process(cli.config)),
    }
}

fn check_config(settings: &Settings, catalog: &Catalog) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let mut problems = Vec::new();
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
                problems.push(format!(
                    "target {:?}: api_key_env_name {var} is not set in the environment",
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
    let _ = writeln!(
        out,
        "fixtures: ok ({} targets, {} models, {} clusters) from {}",
        catalog.targets.len(),
        catalog.models.len(),
        catalog.clusters.len(),
        fixtures::files(&settings.fixtures.dir)
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for m in &catalog.models {
        let _ = writeln!(
            out,
            "  model {:?}: targets {}",
            m.name,
            m.targets.join(", ")
        );
    }
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
    let system = actix_rt::System::new();
    let result = system.block_on(run(settings, catalog, source, log.clone()));
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
    log: slog::Logger,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let grace = settings.server.shutdown_grace_secs;
    let running = server::start_with_source(
        settings,
        catalog,
        Arc::new(SystemClock),
        log.clone(),
        None,
        source,
    )?;
    for addr in &running.addrs {
        slog::info!(log, "listening"; "addr" => addr.to_string(), "tls" => running.tls);
    }
    let handle = running.server.handle();
    let reloader = Arc::clone(&running.reloader);
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
    handle.stop(true).await;
    let _ = server.await;
    slog::info!(log, "stopped");
    Ok(())
}
