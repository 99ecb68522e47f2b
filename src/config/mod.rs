//! Settings: the layered configuration (built-in defaults < /etc < --config < env) and its
//! validation. Every error names the key it is about. One module per group of sections,
//! each with its own checks; what spans sections is checked here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod auth;
mod batches;
mod hpc;
mod quotas;
mod routes;
mod server;
mod storage;
mod units;
mod upstream;

pub use auth::{Auth, AuthMode, Globus, Oidc};
pub use batches::Batches;
pub use hpc::{ClusterSettings, ColdStart, CommandLine, GlobusCompute, SchedulerKind, Streaming};
pub use quotas::{LimitSettings, Quotas};
pub use routes::{BodyKind, ChatAlias, RelayedRoute, Routes};
pub use server::{Cache, Server, Tls};
pub use storage::{Database, Logging, Redis, Storage};
pub use units::{nz, Count, HttpUrl, Millis, Seconds, SecureUrl};
pub use upstream::{Breaker, Fixtures, Health, Upstream};

/// The shipped `config/default.toml`, compiled in so the binary runs with no file at all.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");
/// Directory of site configuration files read after the defaults.
pub const SYSTEM_DIR: &str = "/etc/inference-gateway";
/// Prefix of environment overrides: `GATEWAY__SECTION__KEY`.
pub const ENV_PREFIX: &str = "GATEWAY";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: Server,
    pub auth: Auth,
    pub fixtures: Fixtures,
    pub upstream: Upstream,
    pub health: Health,
    pub breaker: Breaker,
    pub logging: Logging,
    pub routes: Routes,
    pub database: Database,
    pub storage: Storage,
    pub quotas: Quotas,
    /// `$STATE_DIRECTORY` when systemd set it (relative `storage.data_dir` resolves there).
    #[serde(skip)]
    pub state_directory: Option<PathBuf>,
    pub cold_start: ColdStart,
    pub globus_compute: GlobusCompute,
    pub streaming: Streaming,
    pub redis: Redis,
    /// Per-cluster settings (`[clusters.<name>]`): scheduler source and maintenance.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterSettings>,
    pub cache: Cache,
    pub batches: Batches,
}

/// A configuration error that names the key (or file) it is about.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Settings {
    /// Loads every layer: defaults, `/etc/inference-gateway/*.toml`, `file`, environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, Some(Path::new(SYSTEM_DIR)), env)
    }

    /// Like [`Settings::load`] with the system directory and the environment given, so tests
    /// don't depend on the machine.
    pub fn load_from(
        file: Option<&Path>,
        system_dir: Option<&Path>,
        env: Vec<(String, String)>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(dir) = system_dir {
            for path in system_files(dir)? {
                builder = builder.add_source(File::from(path).format(FileFormat::Toml));
            }
        }
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path.to_path_buf()).format(FileFormat::Toml));
        }
        let state_directory = state_directory(&env);
        let env_map = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("GATEWAY__"))
            .collect::<std::collections::HashMap<_, _>>();
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("routes.chat_aliases")
                .with_list_parse_key("routes.relayed")
                .with_list_parse_key("batches.allowed_roots")
                .source(Some(env_map)),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError::new(config_error_key(&e), config_error_message(&e)))?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError::new(config_error_key(&e), config_error_message(&e)))?;
        settings.state_directory = state_directory;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but make no sense; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bind = self.bind_addr()?;
        if self.auth.mode == AuthMode::None && !bind.ip().is_loopback() {
            return Err(ConfigError::new(
                "auth.mode",
                format!(
                    "\"none\" is refused when server.bind ({bind}) is not a loopback address: \
                     an open gateway would serve anyone who can reach it"
                ),
            ));
        }
        self.auth.validate()?;
        self.server.validate()?;
        self.upstream.validate()?;
        self.health.validate()?;
        self.cache.validate()?;
        self.logging.validate()?;
        self.storage.validate()?;
        crate::store::DatabaseUrl::from_settings(self)?;
        self.batches.validate()?;
        self.redis.validate()?;
        for (name, cluster) in &self.clusters {
            cluster.validate(name)?;
        }
        self.quotas.validate()?;
        self.routes.validate()
    }

    /// `storage.data_dir`, a relative path resolved against systemd's `$STATE_DIRECTORY`
    /// when set (the unit's `StateDirectory=`), else against the working directory.
    pub fn data_dir(&self) -> PathBuf {
        match &self.state_directory {
            Some(state) if self.storage.data_dir.is_relative() => {
                state.join(&self.storage.data_dir)
            }
            _ => self.storage.data_dir.clone(),
        }
    }

    /// Directory of the request log's spill file.
    pub fn spill_dir(&self) -> PathBuf {
        if self.logging.spill_dir.as_os_str().is_empty() {
            self.data_dir().join("log-spill")
        } else {
            self.logging.spill_dir.clone()
        }
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError::new(
                "server.bind",
                format!("{:?} is not an IP:port address", self.server.bind),
            )
        })
    }
}

/// systemd sets `STATE_DIRECTORY` (colon-separated when several) for `StateDirectory=`.
fn state_directory(env: &[(String, String)]) -> Option<PathBuf> {
    env.iter()
        .find(|(k, _)| k == "STATE_DIRECTORY")
        .and_then(|(_, v)| v.split(':').next().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::new(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

fn system_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::new(dir.display().to_string(), e.to_string())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The message of a settings value serde refused: a 0 where a typed field needs a positive
/// number says so in the words `validate` uses for the others, and the config crate's
/// " for key `...`" is dropped (the key is the error's own).
fn config_error_message(e: &config::ConfigError) -> String {
    let text = e.to_string();
    if text.contains("expected a nonzero") {
        return "must be greater than 0".to_string();
    }
    let key = config_error_key(e);
    text.replacen(&format!(" for key `{key}`"), "", 1)
}

/// The config crate puts the key in its messages but not in a field; pull it out so the
/// error's key is right where we can, and fall back to "config". The key is the last
/// " for key `...`" (a refused value quoted earlier in the message may hold anything).
fn config_error_key(e: &config::ConfigError) -> String {
    let text = e.to_string();
    let start = text
        .rfind("for key `")
        .map(|i| i + "for key `".len())
        .or_else(|| text.find("field `").map(|i| i + "field `".len()));
    if let Some(start) = start {
        if let Some(end) = text[start..].find('`') {
            return text[start..start + end].to_string();
        }
    }
    "config".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_from(None, None, Vec::new()).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8000");
        assert_eq!(s.auth.mode, AuthMode::None);
        assert_eq!(s.health.interval_secs.get(), 10);
        assert_eq!(s.breaker.failure_threshold.get(), 5);
        assert_eq!(s.breaker.open_secs.get(), 30);
        assert_eq!(s.routes.chat_aliases[0].path, "/v1/text2sql");
    }

    #[test]
    fn env_overrides_defaults() {
        let s = Settings::load_from(
            None,
            None,
            env(&[
                ("GATEWAY__SERVER__BIND", "127.0.0.1:9999"),
                ("GATEWAY__UPSTREAM__MAX_ATTEMPTS", "2"),
                ("GATEWAY__FIXTURES__DIR", "/tmp/fx"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:9999");
        assert_eq!(s.upstream.max_attempts.get(), 2);
        assert_eq!(s.fixtures.dir, PathBuf::from("/tmp/fx"));
    }

    #[test]
    fn file_layer_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, "[server]\nbind = \"127.0.0.1:7000\"\nworkers = 3\n").unwrap();
        let s = Settings::load_from(Some(&path), None, env(&[("GATEWAY__SERVER__WORKERS", "5")]))
            .unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:7000");
        assert_eq!(s.server.workers, 5);
    }

    #[test]
    fn open_gateway_on_public_address_is_refused_naming_the_key() {
        let err = Settings::load_from(
            None,
            None,
            env(&[("GATEWAY__SERVER__BIND", "0.0.0.0:8000")]),
        )
        .unwrap_err();
        assert_eq!(err.key, "auth.mode");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("GATEWAY__SERVER__BIND", "localhost", "server.bind"),
            (
                "GATEWAY__UPSTREAM__MAX_ATTEMPTS",
                "0",
                "upstream.max_attempts",
            ),
            ("GATEWAY__HEALTH__PATH", "health", "health.path"),
            ("GATEWAY__LOGGING__LEVEL", "loud", "logging.level"),
            ("GATEWAY__DATABASE__URL", "mysql://h/db", "database.url"),
            (
                "GATEWAY__DATABASE__URL",
                "/no/such/gateway.db",
                "database.url",
            ),
            ("GATEWAY__DATABASE__POOL_SIZE", "0", "database.pool_size"),
            (
                "GATEWAY__DATABASE__TIMEOUT_SECS",
                "0",
                "database.timeout_secs",
            ),
            ("GATEWAY__STORAGE__DATA_DIR", "", "storage.data_dir"),
            ("GATEWAY__QUOTAS__IDLE_SECS", "0", "quotas.idle_secs"),
            (
                "GATEWAY__QUOTAS__REDIS_SYNC_MS",
                "0",
                "quotas.redis_sync_ms",
            ),
            (
                "GATEWAY__QUOTAS__REDIS_SYNC_MS",
                "60000",
                "quotas.redis_sync_ms",
            ),
            (
                "GATEWAY__QUOTAS__REDIS_TIMEOUT_MS",
                "0",
                "quotas.redis_timeout_ms",
            ),
            (
                "GATEWAY__QUOTAS__REDIS_TIMEOUT_MS",
                "60001",
                "quotas.redis_timeout_ms",
            ),
            ("GATEWAY__BATCHES__LEASE_SECS", "2", "batches.lease_secs"),
            ("GATEWAY__BATCHES__LEASE_SECS", "0", "batches.lease_secs"),
            (
                "GATEWAY__QUOTAS__REDIS_NEAR_FRACTION",
                "1",
                "quotas.redis_near_fraction",
            ),
            (
                "GATEWAY__QUOTAS__REDIS_NEAR_FRACTION",
                "-0.1",
                "quotas.redis_near_fraction",
            ),
            (
                "GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND",
                "-1",
                "quotas.user.requests_per_second",
            ),
            ("GATEWAY__QUOTAS__USER__BURST", "0", "quotas.user.burst"),
            ("GATEWAY__LOGGING__BATCH_SIZE", "0", "logging.batch_size"),
            ("GATEWAY__LOGGING__BATCH_SIZE", "5000", "logging.batch_size"),
            (
                "GATEWAY__LOGGING__QUEUE_CAPACITY",
                "10",
                "logging.queue_capacity",
            ),
            (
                "GATEWAY__LOGGING__FLUSH_INTERVAL_MS",
                "0",
                "logging.flush_interval_ms",
            ),
            (
                "GATEWAY__LOGGING__RETRY_INTERVAL_SECS",
                "0",
                "logging.retry_interval_secs",
            ),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, None, env(&[(var, value)])).unwrap_err();
            assert_eq!(err.key, key, "{var}={value}: {err}");
        }
    }

    /// Typed positive fields refuse a 0 while the settings are read, naming the key, in the
    /// same words as the fields `validate` checks.
    #[test]
    fn a_zero_in_a_typed_positive_field_names_its_key() {
        for (var, key) in [
            ("GATEWAY__SERVER__MAX_BODY_BYTES", "server.max_body_bytes"),
            (
                "GATEWAY__SERVER__BODY_READ_TIMEOUT_MS",
                "server.body_read_timeout_ms",
            ),
            ("GATEWAY__SERVER__MAX_CONNECTIONS", "server.max_connections"),
            ("GATEWAY__SERVER__MAX_HOPS", "server.max_hops"),
            (
                "GATEWAY__UPSTREAM__CONNECT_TIMEOUT_MS",
                "upstream.connect_timeout_ms",
            ),
            (
                "GATEWAY__UPSTREAM__RESPONSE_TIMEOUT_SECS",
                "upstream.response_timeout_secs",
            ),
            (
                "GATEWAY__UPSTREAM__STREAM_IDLE_TIMEOUT_SECS",
                "upstream.stream_idle_timeout_secs",
            ),
            ("GATEWAY__UPSTREAM__MAX_ATTEMPTS", "upstream.max_attempts"),
            ("GATEWAY__HEALTH__INTERVAL_SECS", "health.interval_secs"),
            ("GATEWAY__HEALTH__TIMEOUT_MS", "health.timeout_ms"),
            (
                "GATEWAY__HEALTH__UNHEALTHY_THRESHOLD",
                "health.unhealthy_threshold",
            ),
            (
                "GATEWAY__BREAKER__FAILURE_THRESHOLD",
                "breaker.failure_threshold",
            ),
            ("GATEWAY__BREAKER__OPEN_SECS", "breaker.open_secs"),
            ("GATEWAY__LOGGING__BATCH_SIZE", "logging.batch_size"),
            (
                "GATEWAY__LOGGING__FLUSH_INTERVAL_MS",
                "logging.flush_interval_ms",
            ),
            (
                "GATEWAY__LOGGING__RETRY_INTERVAL_SECS",
                "logging.retry_interval_secs",
            ),
            ("GATEWAY__DATABASE__POOL_SIZE", "database.pool_size"),
            ("GATEWAY__DATABASE__TIMEOUT_SECS", "database.timeout_secs"),
            ("GATEWAY__QUOTAS__IDLE_SECS", "quotas.idle_secs"),
            (
                "GATEWAY__QUOTAS__FLUSH_INTERVAL_MS",
                "quotas.flush_interval_ms",
            ),
            ("GATEWAY__COLD_START__WAIT_SECS", "cold_start.wait_secs"),
            (
                "GATEWAY__COLD_START__RETRY_AFTER_SECS",
                "cold_start.retry_after_secs",
            ),
            (
                "GATEWAY__COLD_START__PROBE_INTERVAL_MS",
                "cold_start.probe_interval_ms",
            ),
            (
                "GATEWAY__COLD_START__COMMAND_TIMEOUT_SECS",
                "cold_start.command_timeout_secs",
            ),
            (
                "GATEWAY__GLOBUS_COMPUTE__POLL_INITIAL_MS",
                "globus_compute.poll_initial_ms",
            ),
            (
                "GATEWAY__GLOBUS_COMPUTE__POLL_MAX_MS",
                "globus_compute.poll_max_ms",
            ),
            (
                "GATEWAY__GLOBUS_COMPUTE__TASK_TIMEOUT_SECS",
                "globus_compute.task_timeout_secs",
            ),
            (
                "GATEWAY__STREAMING__MAX_DATA_BYTES",
                "streaming.max_data_bytes",
            ),
            (
                "GATEWAY__STREAMING__MAX_CONTROL_BYTES",
                "streaming.max_control_bytes",
            ),
            (
                "GATEWAY__STREAMING__BUFFER_EVENTS",
                "streaming.buffer_events",
            ),
            ("GATEWAY__BATCHES__MAX_FILE_BYTES", "batches.max_file_bytes"),
            (
                "GATEWAY__BATCHES__MAX_CONCURRENT_UPLOADS",
                "batches.max_concurrent_uploads",
            ),
            (
                "GATEWAY__BATCHES__CONCURRENCY_PER_BATCH",
                "batches.concurrency_per_batch",
            ),
            (
                "GATEWAY__BATCHES__MAX_CONCURRENCY",
                "batches.max_concurrency",
            ),
            ("GATEWAY__BATCHES__MAX_RUNNING", "batches.max_running"),
            (
                "GATEWAY__BATCHES__POLL_INTERVAL_MS",
                "batches.poll_interval_ms",
            ),
            ("GATEWAY__BATCHES__FLUSH_LINES", "batches.flush_lines"),
            (
                "GATEWAY__BATCHES__FLUSH_INTERVAL_MS",
                "batches.flush_interval_ms",
            ),
            ("GATEWAY__BATCHES__LINE_ATTEMPTS", "batches.line_attempts"),
            ("GATEWAY__BATCHES__LEASE_SECS", "batches.lease_secs"),
            ("GATEWAY__QUOTAS__REDIS_SYNC_MS", "quotas.redis_sync_ms"),
            (
                "GATEWAY__QUOTAS__REDIS_TIMEOUT_MS",
                "quotas.redis_timeout_ms",
            ),
            (
                "GATEWAY__CLUSTERS__X__INTERVAL_SECS",
                "clusters.x.interval_secs",
            ),
            (
                "GATEWAY__CLUSTERS__X__TIMEOUT_SECS",
                "clusters.x.timeout_secs",
            ),
        ] {
            let err = Settings::load_from(None, None, env(&[(var, "0")])).unwrap_err();
            assert_eq!(err.key, key, "{var}: {err}");
            assert!(err.to_string().contains("must be greater than 0"), "{err}");
            let err = Settings::load_from(None, None, env(&[(var, "-3")])).unwrap_err();
            assert_eq!(err.key, key, "{var}: {err}");
        }
    }

    #[test]
    fn storage_defaults_and_the_data_dir() {
        let s = Settings::load_from(None, None, Vec::new()).unwrap();
        assert_eq!(s.database.url, "");
        assert_eq!(s.data_dir(), PathBuf::from("data"));
        assert_eq!(s.spill_dir(), PathBuf::from("data/log-spill"));
        assert!(s.logging.request_log && !s.logging.store_payloads);
        assert_eq!(s.logging.retention_days, 30);
        assert_eq!(
            crate::store::DatabaseUrl::from_settings(&s).unwrap(),
            crate::store::DatabaseUrl::Sqlite {
                path: PathBuf::from("data/gateway.db"),
                create: true
            }
        );
        // Under systemd a relative data_dir lives in the unit's StateDirectory.
        let s = Settings::load_from(
            None,
            None,
            env(&[
                ("STATE_DIRECTORY", "/var/lib/inference-gateway"),
                ("GATEWAY__DATABASE__URL", "postgres://igw:pw@db/igw"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.data_dir(),
            PathBuf::from("/var/lib/inference-gateway/data")
        );
        assert_eq!(s.database.url, "postgres://igw:pw@db/igw");
        assert!(
            !format!("{:?}", s.database).contains("pw"),
            "no password in Debug"
        );
        let s = Settings::load_from(
            None,
            None,
            env(&[
                ("STATE_DIRECTORY", "/var/lib/inference-gateway"),
                ("GATEWAY__STORAGE__DATA_DIR", "/srv/igw"),
                ("GATEWAY__LOGGING__SPILL_DIR", "/srv/spill"),
            ]),
        )
        .unwrap();
        assert_eq!(s.data_dir(), PathBuf::from("/srv/igw"));
        assert_eq!(s.spill_dir(), PathBuf::from("/srv/spill"));
    }

    #[test]
    fn unknown_key_in_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(&path, "[server]\nbindd = \"127.0.0.1:7000\"\n").unwrap();
        let err = Settings::load_from(Some(&path), None, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
    }

    #[test]
    fn cluster_tables_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.toml");
        std::fs::write(
            &path,
            "[clusters.sophia]\nscheduler = \"pbs\"\ninterval_secs = 5\n\
             [clusters.polaris]\nscheduler = \"slurm\"\ncommand = [\"squeue\", \"--json\", \"-u\", \"svc\"]\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&path),
            None,
            env(&[(
                "GATEWAY__CLUSTERS__SOPHIA__COMMAND",
                "/opt/pbs/bin/qstat -f -F json",
            )]),
        )
        .unwrap();
        let sophia = &s.clusters["sophia"];
        assert_eq!(sophia.scheduler, SchedulerKind::Pbs);
        assert_eq!(sophia.interval_secs.get(), 5);
        assert_eq!(sophia.timeout_secs.get(), 15);
        assert_eq!(
            sophia.jobs_argv(),
            vec!["/opt/pbs/bin/qstat", "-f", "-F", "json"]
        );
        assert_eq!(sophia.nodes_argv(), vec!["pbsnodes", "-a", "-F", "json"]);
        assert_eq!(
            s.clusters["polaris"].jobs_argv(),
            vec!["squeue", "--json", "-u", "svc"]
        );
        assert!(s.clusters["polaris"].nodes_argv().is_empty());
    }

    #[test]
    fn bad_cluster_settings_name_their_key() {
        let cases = [
            ("GATEWAY__CLUSTERS__X__SCHEDULER", "http", "clusters.x.url"),
            (
                "GATEWAY__CLUSTERS__X__INTERVAL_SECS",
                "0",
                "clusters.x.interval_secs",
            ),
            (
                "GATEWAY__COLD_START__WAIT_SECS",
                "0",
                "cold_start.wait_secs",
            ),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, None, env(&[(var, value)])).unwrap_err();
            assert_eq!(err.key, key, "{var}={value}: {err}");
        }
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Settings::load_from(
            None,
            None,
            env(&[("GATEWAY__UPSTREAM__MAX_ATTEMPTS", "many")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_attempts"), "{err}");
    }
}
