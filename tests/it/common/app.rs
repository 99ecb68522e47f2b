//! The typed test harness: [`TestApp::builder`] describes a gateway (targets, raw fixture
//! entries, federated models, clusters, a config file, settings) and `start` runs it on
//! 127.0.0.1:0 in this process, with a manual clock and its JSON logs captured.
//!
//! ```ignore
//! let gw = TestApp::builder()
//!     .target(target("a", "m", mock.url()))
//!     .env(&[("GATEWAY__BREAKER__FAILURE_THRESHOLD", "1")])
//!     .settings(|s| s.upstream.max_attempts = 1)
//!     .start()
//!     .await;
//! ```
//!
//! When a [`TestGateway`] is dropped (after `stop()` or at the end of a test that did not
//! panic) it checks that the gateway counts no request in flight, overall and per target,
//! waiting up to [`IN_FLIGHT_SETTLE`] for relays still unwinding: a request whose count
//! never comes back would starve its target in production.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use inference_gateway::clock::ManualClock;
use inference_gateway::config::Settings;
use inference_gateway::fixtures::Catalog;
use inference_gateway::metrics::Metrics;
use inference_gateway::reload::SettingsSource;
use inference_gateway::routing::directory::Directory;
use inference_gateway::server;
use inference_gateway::store;
use serde_json::Value;
use slog::Drain;

use super::{endpoint, LogBuffer, TestGateway, T};

/// How long a dropped gateway may take to count its last requests out.
pub const IN_FLIGHT_SETTLE: Duration = Duration::from_secs(5);

type Tweak = Box<dyn FnOnce(&mut Settings)>;

/// A test gateway, described before it starts.
#[derive(Default)]
pub struct TestApp {
    endpoints: Vec<Value>,
    federated: Vec<Value>,
    clusters: Vec<Value>,
    toml: Option<String>,
    env: Vec<(String, String)>,
    tweaks: Vec<Tweak>,
    admin_key: bool,
    allow_in_flight: bool,
}

impl TestApp {
    pub fn builder() -> TestApp {
        TestApp::default()
    }

    /// A target (an `endpoints.json` entry made from `t`).
    pub fn target(mut self, t: T<'_>) -> Self {
        let e = endpoint(self.endpoints.len(), &t);
        self.endpoints.push(e);
        self
    }

    pub fn targets(self, targets: &[T<'_>]) -> Self {
        targets.iter().fold(self, |app, t| {
            app.target(T {
                slug: t.slug,
                cluster: t.cluster,
                framework: t.framework,
                model: t.model,
                base_url: t.base_url.clone(),
            })
        })
    }

    /// Raw `endpoints.json` entries (any fixture fields).
    pub fn endpoints(mut self, entries: &[Value]) -> Self {
        self.endpoints.extend_from_slice(entries);
        self
    }

    /// `federated_endpoints.json` entries.
    pub fn federated(mut self, entries: &[Value]) -> Self {
        self.federated.extend_from_slice(entries);
        self
    }

    /// `clusters.json` entries.
    pub fn clusters(mut self, entries: &[Value]) -> Self {
        self.clusters.extend_from_slice(entries);
        self
    }

    /// A config file (TOML), layered under the settings.
    pub fn toml(mut self, text: &str) -> Self {
        self.toml = Some(text.to_string());
        self
    }

    /// `GATEWAY__...` settings, as an operator's environment would give them (a reload
    /// reads them again).
    pub fn env(mut self, settings: &[(&str, &str)]) -> Self {
        self.env
            .extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Changes the loaded settings in place (typed; not seen by a reload, which reads the
    /// environment and the file again).
    pub fn settings(mut self, tweak: impl FnOnce(&mut Settings) + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// The admin API accepts [`super::ADMIN_KEY`] (from a file in the gateway's directory).
    pub fn admin_key(mut self) -> Self {
        self.admin_key = true;
        self
    }

    /// For a test that ends with requests deliberately still running: skip the in-flight
    /// check when the gateway is dropped.
    pub fn allow_in_flight_at_drop(mut self) -> Self {
        self.allow_in_flight = true;
        self
    }

    pub async fn start(self) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, entries: &[Value]| {
            std::fs::write(dir.path().join(name), serde_json::to_vec(entries).unwrap()).unwrap();
        };
        write("endpoints.json", &self.endpoints);
        if !self.federated.is_empty() {
            write("federated_endpoints.json", &self.federated);
        }
        if !self.clusters.is_empty() {
            write("clusters.json", &self.clusters);
        }
        let config_file = self.toml.as_deref().map(|text| {
            let path = dir.path().join("gateway.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut env: Vec<(String, String)> = vec![
            (
                "GATEWAY__FIXTURES__DIR".into(),
                dir.path().display().to_string(),
            ),
            // The default SQLite database and the spill file live in the test's temp dir.
            (
                "GATEWAY__STORAGE__DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
            ("GATEWAY__SERVER__WORKERS".into(), "2".into()),
            // Health checks are off unless a setting turns them on: tests decide health.
            ("GATEWAY__HEALTH__PATH".into(), "".into()),
            ("GATEWAY__UPSTREAM__RETRY_BACKOFF_MS".into(), "1".into()),
        ];
        if self.admin_key {
            env.push(("GATEWAY__AUTH__ADMIN_KEY_ENV".into(), String::new()));
            env.push((
                "GATEWAY__AUTH__ADMIN_KEY_FILE".into(),
                super::admin_key_file(dir.path()),
            ));
        }
        env.extend(self.env);
        let mut settings =
            Settings::load_from(config_file.as_deref(), None, env.clone()).expect("settings");
        for tweak in self.tweaks {
            tweak(&mut settings);
        }
        // Typed tweaks pass the same checks as settings an operator writes.
        settings
            .validate()
            .unwrap_or_else(|e| panic!("settings after the test's tweaks: {e}"));
        // As `serve` does: migrate on a sync connection before the server starts.
        let db_url = store::DatabaseUrl::from_settings(&settings).expect("database.url");
        store::migrate::run(&db_url).expect("migrations");
        let catalog = Catalog::load(dir.path()).expect("catalog");
        let clock = Arc::new(ManualClock::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = slog::Logger::root(
            std::sync::Mutex::new(slog_json::Json::default(LogBuffer(Arc::clone(&logs))))
                .map(slog::Fuse),
            slog::o!(),
        );
        let running = server::start_with_source(
            settings,
            catalog,
            clock.clone(),
            log,
            Some(listener),
            SettingsSource::fixed(config_file, env),
        )
        .unwrap();
        let scheme = if running.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", running.addrs[0]);
        let handle = running.server.handle();
        actix_rt::spawn(running.server);
        TestGateway {
            url,
            gateway: running.gateway,
            clock,
            logs,
            store: running.store,
            log_writer: running.log_writer,
            log_stats: running.log_stats,
            reloader: running.reloader,
            quotas: running.quotas,
            quota_supervisor: running.quota_supervisor,
            batches: running.batches,
            handle,
            dir,
            in_flight: InFlight {
                metrics: running.metrics,
                directory: running.directory,
                check: !self.allow_in_flight,
            },
        }
    }
}

/// What a dropped [`TestGateway`] checks.
pub struct InFlight {
    metrics: Arc<Metrics>,
    directory: Arc<ArcSwap<Directory>>,
    check: bool,
}

impl InFlight {
    /// Requests still counted: `("gateway", n)` and `(slug, n)` for each busy target.
    pub fn counted(&self) -> Vec<(String, i64)> {
        let mut busy = Vec::new();
        let total = self.metrics.in_flight.get();
        if total != 0 {
            busy.push(("gateway_requests_in_flight".to_string(), total));
        }
        for t in &self.directory.load().targets {
            if t.in_flight() != 0 {
                busy.push((t.slug().to_string(), i64::from(t.in_flight())));
            }
        }
        busy
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if !self.in_flight.check || std::thread::panicking() {
            return;
        }
        // Relays of requests the test abandoned may still be unwinding on the workers.
        let deadline = Instant::now() + IN_FLIGHT_SETTLE;
        let mut busy = self.in_flight.counted();
        while !busy.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            busy = self.in_flight.counted();
        }
        assert!(
            busy.is_empty(),
            "requests still counted in flight {IN_FLIGHT_SETTLE:?} after the test: {busy:?}"
        );
    }
}
