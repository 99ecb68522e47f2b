//! Settings: the layered configuration (built-in defaults < /etc < --config < env) and its
//! validation. Every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The shipped `config/default.toml`, compiled in so the binary runs with no file at all.
pub const DEFAULTS: &str = include_str!("../config/default.toml");
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
    pub cache: Cache,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub bind: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub keep_alive_secs: u64,
    pub shutdown_grace_secs: u64,
    pub max_hops: u32,
    /// gzip JSON answers of 1 KiB and more when the client accepts it (never SSE).
    pub gzip: bool,
    pub tls: Tls,
}

/// TLS on the listener (rustls, TLS 1.2 and 1.3 only). Both files empty: plain HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `max-age` of the Strict-Transport-Security header sent when TLS is on.
    pub hsts_max_age_secs: u64,
}

impl Tls {
    pub fn enabled(&self) -> bool {
        self.cert_file != Path::new("") || self.key_file != Path::new("")
    }
}

/// The response cache for deterministic non-streaming requests (see `src/cache.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub enabled: bool,
    pub ttl_secs: u64,
    pub max_entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub mode: AuthMode,
    /// Environment variable holding the bootstrap admin key ("" = none).
    pub admin_key_env: String,
    /// File holding the bootstrap admin key ("" = none).
    pub admin_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub connect_timeout_ms: u64,
    pub response_timeout_secs: u64,
    pub stream_idle_timeout_secs: u64,
    pub pool_limit_per_worker: usize,
    pub pool_idle_secs: u64,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
}

impl Upstream {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs)
    }
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout_secs)
    }
    pub fn retry_backoff(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub path: String,
    pub interval_secs: u64,
    pub timeout_ms: u64,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    pub failure_threshold: u32,
    pub open_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    #[serde(default)]
    pub chat_aliases: Vec<ChatAlias>,
}

/// An extra chat-shaped route (the enterprise gateway's `/v1/text2sql`), relayed to the
/// chat endpoint of `models` (any model when empty).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatAlias {
    pub path: String,
    #[serde(default)]
    pub models: Vec<String>,
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
                .source(Some(env_map)),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError::new(config_error_key(&e), e.to_string()))?;
        let settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError::new(config_error_key(&e), e.to_string()))?;
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
        positive("server.max_body_bytes", self.server.max_body_bytes as u64)?;
        positive(
            "upstream.connect_timeout_ms",
            self.upstream.connect_timeout_ms,
        )?;
        positive(
            "upstream.response_timeout_secs",
            self.upstream.response_timeout_secs,
        )?;
        positive(
            "upstream.stream_idle_timeout_secs",
            self.upstream.stream_idle_timeout_secs,
        )?;
        positive("upstream.max_attempts", self.upstream.max_attempts as u64)?;
        if self.upstream.max_attempts > 10 {
            return Err(ConfigError::new("upstream.max_attempts", "at most 10"));
        }
        positive("health.interval_secs", self.health.interval_secs)?;
        positive("health.timeout_ms", self.health.timeout_ms)?;
        positive(
            "health.unhealthy_threshold",
            self.health.unhealthy_threshold as u64,
        )?;
        if !self.health.path.is_empty() && !self.health.path.starts_with('/') {
            return Err(ConfigError::new(
                "health.path",
                "must start with '/' or be empty",
            ));
        }
        positive(
            "breaker.failure_threshold",
            self.breaker.failure_threshold as u64,
        )?;
        positive("breaker.open_secs", self.breaker.open_secs)?;
        positive("server.max_hops", self.server.max_hops as u64)?;
        let tls = &self.server.tls;
        if tls.enabled() {
            for (key, path) in [
                ("server.tls.cert_file", &tls.cert_file),
                ("server.tls.key_file", &tls.key_file),
            ] {
                if path == Path::new("") {
                    return Err(ConfigError::new(
                        key,
                        "must be set when the other TLS file is (both or neither)",
                    ));
                }
                if !path.is_file() {
                    return Err(ConfigError::new(
                        key,
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if self.cache.enabled {
            positive("cache.ttl_secs", self.cache.ttl_secs)?;
            positive("cache.max_entries", self.cache.max_entries as u64)?;
        }
        crate::logging::parse_level(&self.logging.level).ok_or_else(|| {
            ConfigError::new(
                "logging.level",
                format!(
                    "unknown level {:?}; use one of trace, debug, info, warning, error, critical",
                    self.logging.level
                ),
            )
        })?;
        for (i, alias) in self.routes.chat_aliases.iter().enumerate() {
            let key = format!("routes.chat_aliases[{i}].path");
            if !alias.path.starts_with("/v1/") || alias.path.contains(['{', '}', ' ']) {
                return Err(ConfigError::new(
                    key,
                    format!("{:?} must be a literal path under /v1/", alias.path),
                ));
            }
            if crate::routes::BUILTIN_PATHS.contains(&alias.path.as_str()) {
                return Err(ConfigError::new(
                    key,
                    format!("{:?} is a built-in route", alias.path),
                ));
            }
        }
        Ok(())
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

/// The config crate puts the key in its messages but not in a field; pull it out so the
/// error's key is right where we can, and fall back to "config".
fn config_error_key(e: &config::ConfigError) -> String {
    let text = e.to_string();
    for marker in ["for key `", "field `"] {
        if let Some(start) = text.find(marker) {
            let rest = &text[start + marker.len()..];
            if let Some(end) = rest.find('`') {
                return rest[..end].to_string();
            }
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
        assert_eq!(s.health.interval_secs, 10);
        assert_eq!(s.breaker.failure_threshold, 5);
        assert_eq!(s.breaker.open_secs, 30);
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
        assert_eq!(s.upstream.max_attempts, 2);
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
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, None, env(&[(var, value)])).unwrap_err();
            assert_eq!(err.key, key, "{var}={value}: {err}");
        }
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
