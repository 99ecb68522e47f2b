//! Reloading configuration and fixtures while serving (SIGHUP, `POST /admin/reload`).
//! Both are read and validated first; anything invalid leaves the gateway running on what
//! it has, and the error names the key or file. A valid catalog goes to the `Gateway`
//! actor ([`ApplyCatalog`]), which swaps the directory without dropping a request.
//! Settings that only take effect at start (the listener, workers, TLS, per-worker
//! clients, handler limits, logging, cache) are reported as needing a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Addr;

use crate::actors::gateway::{ApplyCatalog, Gateway, ReloadSummary};
use crate::config::{ConfigError, Settings, SYSTEM_DIR};
use crate::fixtures::{Catalog, FixtureError};
use crate::metrics::Metrics;

/// Where settings come from, kept so a reload reads the same layers again.
#[derive(Debug, Clone)]
pub struct SettingsSource {
    pub file: Option<PathBuf>,
    pub system_dir: Option<PathBuf>,
    /// `None`: the process environment at reload time.
    pub env: Option<Vec<(String, String)>>,
}

impl SettingsSource {
    /// The layers `inference-gateway serve` reads.
    pub fn process(file: Option<PathBuf>) -> SettingsSource {
        SettingsSource {
            file,
            system_dir: Some(PathBuf::from(SYSTEM_DIR)),
            env: None,
        }
    }

    /// Fixed layers (tests): no system directory, the given environment.
    pub fn fixed(file: Option<PathBuf>, env: Vec<(String, String)>) -> SettingsSource {
        SettingsSource {
            file,
            system_dir: None,
            env: Some(env),
        }
    }

    pub fn load(&self) -> Result<Settings, ConfigError> {
        let env = self
            .env
            .clone()
            .unwrap_or_else(|| std::env::vars().collect());
        Settings::load_from(self.file.as_deref(), self.system_dir.as_deref(), env)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error("fixtures error (fixtures.dir = {dir}): {error}")]
    Fixtures { dir: String, error: FixtureError },
    #[error("the gateway supervisor is not running")]
    Gateway,
}

#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    #[serde(flatten)]
    pub summary: ReloadSummary,
    /// Settings that changed but take effect only after a restart.
    pub restart_required: Vec<&'static str>,
}

pub struct Reloader {
    source: SettingsSource,
    /// The settings the process started with (what restart-only settings still are).
    running: Arc<Settings>,
    gateway: Addr<Gateway>,
    metrics: Arc<Metrics>,
    log: slog::Logger,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
    /// Whether some target has `allowed_globus_groups` (read by the Globus rules).
    target_groups: Arc<AtomicBool>,
}

impl Reloader {
    pub fn new(
        source: SettingsSource,
        running: Arc<Settings>,
        gateway: Addr<Gateway>,
        metrics: Arc<Metrics>,
        log: slog::Logger,
        target_groups: Arc<AtomicBool>,
    ) -> Reloader {
        Reloader {
            source,
            running,
            gateway,
            metrics,
            log,
            busy: tokio::sync::Mutex::new(()),
            target_groups,
        }
    }

    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.busy.lock().await;
        crate::systemd::reloading(&self.log);
        let result = self.apply().await;
        crate::systemd::ready(&self.log);
        match &result {
            Ok(report) => {
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                slog::info!(self.log, "reloaded";
                    "targets.kept" => report.summary.kept.len(),
                    "targets.added" => report.summary.added.join(","),
                    "targets.removed" => report.summary.removed.join(","),
                    "targets.replaced" => report.summary.replaced.join(","),
                    "targets.draining" => report.summary.draining,
                    "models" => report.summary.models,
                    "restart_required" => report.restart_required.join(","));
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failed"]).inc();
                slog::error!(self.log, "reload refused; still running on the previous configuration";
                    "error" => e.to_string());
            }
        }
        result
    }

    async fn apply(&self) -> Result<ReloadReport, ReloadError> {
        let settings = self.source.load()?;
        let catalog =
            Catalog::load(&settings.fixtures.dir).map_err(|error| ReloadError::Fixtures {
                dir: settings.fixtures.dir.display().to_string(),
                error,
            })?;
        let restart_required = restart_required(&self.running, &settings);
        let target_groups = crate::server::catalog_has_target_groups(&catalog);
        let summary = self
            .gateway
            .send(ApplyCatalog {
                catalog,
                settings: Arc::new(settings),
            })
            .await
            .map_err(|_| ReloadError::Gateway)?;
        self.target_groups.store(target_groups, Ordering::Relaxed);
        Ok(ReloadReport {
            summary,
            restart_required,
        })
    }

    pub fn fixtures_dir(&self) -> &Path {
        &self.running.fixtures.dir
    }
}

/// Sections that differ between the running and the new settings and are only read at
/// start. `fixtures`, `health` and `breaker` apply on reload (health and breaker settings
/// to the targets started by it).
pub fn restart_required(running: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    let s = &running.server;
    let n = &new.server;
    let mut differs = |key: &'static str, a: String, b: String| {
        if a != b {
            out.push(key);
        }
    };
    differs("server.bind", s.bind.clone(), n.bind.clone());
    differs(
        "server.workers",
        s.workers.to_string(),
        n.workers.to_string(),
    );
    differs("server.tls", format!("{:?}", s.tls), format!("{:?}", n.tls));
    differs(
        "server",
        format!(
            "{:?}",
            (
                s.max_body_bytes,
                s.keep_alive_secs,
                s.body_read_timeout_ms,
                s.max_connections,
                s.shutdown_grace_secs,
                s.max_hops,
                s.gzip
            )
        ),
        format!(
            "{:?}",
            (
                n.max_body_bytes,
                n.keep_alive_secs,
                n.body_read_timeout_ms,
                n.max_connections,
                n.shutdown_grace_secs,
                n.max_hops,
                n.gzip
            )
        ),
    );
    differs(
        "auth",
        format!("{:?}", running.auth),
        format!("{:?}", new.auth),
    );
    differs(
        "upstream",
        format!("{:?}", running.upstream),
        format!("{:?}", new.upstream),
    );
    differs(
        "logging",
        format!("{:?}", running.logging),
        format!("{:?}", new.logging),
    );
    differs(
        "routes",
        format!("{:?}", running.routes),
        format!("{:?}", new.routes),
    );
    differs(
        "cache",
        format!("{:?}", running.cache),
        format!("{:?}", new.cache),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_reported_and_reloadable_ones_are_not() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let a = Settings::load_from(None, None, Vec::new()).unwrap();
        let b = Settings::load_from(
            None,
            None,
            env(&[
                ("GATEWAY__SERVER__BIND", "127.0.0.1:9"),
                ("GATEWAY__SERVER__WORKERS", "7"),
                ("GATEWAY__HEALTH__INTERVAL_SECS", "3"),
                ("GATEWAY__FIXTURES__DIR", "/elsewhere"),
            ]),
        )
        .unwrap();
        assert_eq!(
            restart_required(&a, &b),
            vec!["server.bind", "server.workers"]
        );
        assert!(restart_required(&a, &a).is_empty());
    }
}
