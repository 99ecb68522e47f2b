//! Settings: the layered configuration (built-in defaults < /etc < --config < env) and its
//! validation. Every error names the key it is about.

use std::collections::BTreeMap;
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

/// `[batches]`: the Files and Batch APIs and the `BatchActor` that runs batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batches {
    /// Run batches in this process (a replica may serve the API only).
    pub enabled: bool,
    /// Largest file `POST /v1/files` (and FIRST's path form) accepts.
    pub max_file_bytes: u64,
    /// Uploads (`POST /v1/files`) received at once by this process; more are 429.
    pub max_concurrent_uploads: u64,
    /// Lines of one batch in flight at once.
    pub concurrency_per_batch: u64,
    /// Lines of all batches in flight at once in this process.
    pub max_concurrency: u64,
    /// Batches this process runs at once.
    pub max_running: u64,
    /// Of those, at most this many of one user's (0 = all but one of `max_running`, so
    /// another user's batch always finds a slot).
    pub max_running_per_user: u64,
    /// A line starts only while fewer interactive requests than this are in flight on
    /// the model's targets (0 = batches never yield).
    pub yield_above_interactive: u64,
    /// Seconds a claim on a batch holds; renewed every third of it while it runs.
    pub lease_secs: u64,
    /// Milliseconds between looks for runnable batches.
    pub poll_interval_ms: u64,
    /// Finished lines are written in transactions of at most this many lines...
    pub flush_lines: u64,
    /// ...or after this many milliseconds, whichever comes first.
    pub flush_interval_ms: u64,
    /// Tries per line when every target failed or none was available.
    pub line_attempts: u64,
    /// Directories FIRST's path form may read from and write to (empty = path form off).
    pub allowed_roots: Vec<PathBuf>,
}

impl Batches {
    /// Slots one user's batches may hold in this process.
    pub fn per_user_running(&self) -> u64 {
        match self.max_running_per_user {
            0 => self.max_running.saturating_sub(1).max(1),
            n => n,
        }
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub bind: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub keep_alive_secs: u64,
    /// Longest pause between two chunks of a request body before the request is answered
    /// 408 and its connection closed (a client that stops sending mid-body).
    pub body_read_timeout_ms: u64,
    /// Connections one worker holds at once; past it new ones wait in the listen backlog.
    pub max_connections: usize,
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
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub mode: AuthMode,
    /// Environment variable holding the bootstrap admin key ("" = none).
    pub admin_key_env: String,
    /// File holding the bootstrap admin key ("" = none).
    pub admin_key_file: PathBuf,
    pub globus: Globus,
    pub oidc: Oidc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    pub enabled: bool,
    pub jwks_url: String,
    pub issuer: String,
    pub audience: Vec<String>,
    pub username_claim: String,
    pub name_claim: String,
    pub groups_claim: String,
    pub org_claim: String,
    pub required_groups: Vec<String>,
    pub jwks_refresh_secs: u64,
    pub leeway_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Globus {
    pub enabled: bool,
    pub client_id: String,
    pub client_secret_env: String,
    pub auth_base: String,
    pub groups_base: String,
    pub globus_groups: Vec<String>,
    pub authorized_idp_domains: Vec<String>,
    pub authorized_groups_per_idp: std::collections::BTreeMap<String, Vec<String>>,
    pub globus_policies: Vec<String>,
    pub authorized_globus_service_usernames: Vec<String>,
    pub cache_secs: u64,
    pub failure_cache_secs: u64,
    pub timeout_ms: u64,
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
    /// Write one request-log row per request to the database.
    pub request_log: bool,
    /// Store prompts and completions in the request log.
    pub store_payloads: bool,
    /// Largest prompt or completion stored, in bytes (longer ones are cut).
    pub payload_max_bytes: usize,
    /// Rows older than this many days are deleted (0 = keep forever).
    pub retention_days: u32,
    /// Rows per insert.
    pub batch_size: usize,
    /// Most time a row waits before its batch is written, in milliseconds.
    pub flush_interval_ms: u64,
    /// Rows kept in memory while the database is slow or down; more go to the spill file.
    pub queue_capacity: usize,
    /// Seconds between attempts to replay the spill file while the database is down.
    pub retry_interval_secs: u64,
    /// Directory of the spill file ("" = `{storage.data_dir}/log-spill`).
    pub spill_dir: PathBuf,
}

/// `[database]`. `url` may carry a password: Debug prints it redacted.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub url: String,
    pub pool_size: usize,
    /// Most time one background database operation (a log batch, a prune) may take.
    pub timeout_secs: u64,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &crate::store::url::redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub data_dir: PathBuf,
}

/// Starting a stopped model through its target's `start_command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdStart {
    /// Seconds a request for a cold model waits for a target to come up.
    pub wait_secs: u64,
    /// `Retry-After` seconds when the wait ends first.
    pub retry_after_secs: u64,
    /// A target's start command runs at most once per this many seconds.
    pub debounce_secs: u64,
    /// Milliseconds between scheduler probes while a start is pending.
    pub probe_interval_ms: u64,
    /// Seconds a start command may run.
    pub command_timeout_secs: u64,
}

impl ColdStart {
    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.wait_secs)
    }
}

/// The Globus Compute transport (targets with `transport = "globus-compute"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobusCompute {
    /// Globus Auth base URL (client-credentials token at `{auth_base}/v2/oauth2/token`).
    pub auth_base: String,
    /// Globus Compute web service base URL.
    pub compute_base: String,
    /// Environment variables holding the confidential client's id and secret.
    pub client_id_env: String,
    pub client_secret_env: String,
    /// The Compute scope requested.
    pub scope: String,
    /// First and largest pause between task polls, in milliseconds (doubling).
    pub poll_initial_ms: u64,
    pub poll_max_ms: u64,
    /// Seconds a task may take before the request gets 504 (a target's
    /// `api_request_timeout` overrides it).
    pub task_timeout_secs: u64,
    /// Seconds an endpoint's status is cached (errors: a sixth of it).
    pub status_cache_secs: u64,
    /// Seconds after a submit during which an endpoint with no managers counts as
    /// starting (requests get 503 `model_starting` instead of queueing more tasks).
    pub start_window_secs: u64,
}

/// Streaming through Globus Compute: the remote function POSTs chunks back to
/// `/resource_server/api/streaming/{data,done,error}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streaming {
    /// The URL compute nodes reach this gateway at ("" = streaming through Globus Compute
    /// is off: such requests fail over to other targets).
    pub callback_base_url: String,
    /// Environment variable holding the shared secret the function sends in
    /// `X-Internal-Secret` (unset: every callback is refused).
    pub secret_env: String,
    /// Largest `data` callback body, and largest `done`/`error` body, in bytes.
    pub max_data_bytes: usize,
    pub max_control_bytes: usize,
    /// Callbacks buffered per stream while the client reads (more: 503 to the function).
    pub buffer_events: usize,
    /// Milliseconds to wait for `done` after the task itself finished.
    pub done_grace_ms: u64,
}

/// Redis, shared by replicas ("" = none: each replica on its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
    /// Prefix of every key and channel this gateway uses.
    pub key_prefix: String,
}

/// Where a cluster's scheduler state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerKind {
    /// No scheduler: the cluster's targets route on health alone.
    #[default]
    None,
    /// `qstat -f -F json` (+ `pbsnodes -a -F json` for free nodes).
    Pbs,
    /// Text `qstat -xf` as FIRST reads it (+ `pbsnodes -a -F json`).
    PbsText,
    /// `squeue --json` (Slurm 23.02 or 23.11+ output).
    Slurm,
    /// An HTTP URL answering FIRST's `/jobs` JSON.
    Http,
    /// FIRST's way: its qstat function run on the cluster's Globus Compute endpoint
    /// (`qstat_endpoint_uuid`, `qstat_function_uuid`), answering FIRST's `/jobs` JSON.
    GlobusCompute,
}

/// A command line: a list of words, or one string split on whitespace (environment
/// variables can only carry the latter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Words(Vec<String>),
    Line(String),
}

impl Default for CommandLine {
    fn default() -> Self {
        CommandLine::Words(Vec::new())
    }
}

impl CommandLine {
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Words(w) => w.clone(),
            CommandLine::Line(l) => l.split_whitespace().map(String::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    pub scheduler: SchedulerKind,
    /// The jobs command; empty means the scheduler's default.
    pub command: CommandLine,
    /// The free-nodes command: unset means `pbsnodes -a -F json` for PBS (none for
    /// Slurm); empty means none.
    pub nodes_command: Option<CommandLine>,
    /// The status URL for `scheduler = "http"`.
    pub url: String,
    /// Environment variable holding a bearer token sent to `url` ("" = none), e.g. for
    /// FIRST's `/{cluster}/jobs`, which needs an authenticated caller.
    pub token_env: String,
    pub interval_secs: u64,
    pub timeout_secs: u64,
    pub maintenance: bool,
    pub maintenance_notice: String,
    /// Environment variables holding this cluster's Globus Compute client id and secret
    /// ("" = the `[globus_compute]` ones).
    pub globus_client_id_env: String,
    pub globus_client_secret_env: String,
    /// For `scheduler = "globus-compute"`: the endpoint and registered function that print
    /// the cluster's jobs ("" = the cluster's `config` in clusters.json, as FIRST has them).
    pub qstat_endpoint_uuid: String,
    pub qstat_function_uuid: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            scheduler: SchedulerKind::None,
            command: CommandLine::default(),
            nodes_command: None,
            url: String::new(),
            token_env: String::new(),
            interval_secs: 30,
            timeout_secs: 15,
            maintenance: false,
            maintenance_notice: String::new(),
            globus_client_id_env: String::new(),
            globus_client_secret_env: String::new(),
            qstat_endpoint_uuid: String::new(),
            qstat_function_uuid: String::new(),
        }
    }
}

/// FIRST's jobs probe (`qselect -u $USER | xargs -r qstat -xf`): only this user's jobs
/// (the gateway's service user, who runs the endpoints), not every user's; `-u` cannot be
/// combined with `-F json` (PBS mixes a text table in), hence `qselect`. A failing
/// `qselect` fails the probe rather than looking like "no jobs".
const PBS_JSON_JOBS: &str = "ids=$(qselect -u \"${USER:-$(id -un)}\") || exit; \
     [ -z \"$ids\" ] || echo \"$ids\" | xargs qstat -x -f -F json";
const PBS_TEXT_JOBS: &str = "ids=$(qselect -u \"${USER:-$(id -un)}\") || exit; \
     [ -z \"$ids\" ] || echo \"$ids\" | xargs qstat -xf";

impl ClusterSettings {
    /// The jobs command to run (the configured one, else the scheduler's default).
    pub fn jobs_argv(&self) -> Vec<String> {
        let argv = self.command.argv();
        if !argv.is_empty() {
            return argv;
        }
        let default: &[&str] = match self.scheduler {
            SchedulerKind::Pbs => &["sh", "-c", PBS_JSON_JOBS],
            SchedulerKind::PbsText => &["sh", "-c", PBS_TEXT_JOBS],
            SchedulerKind::Slurm => &["squeue", "--json"],
            SchedulerKind::None | SchedulerKind::Http | SchedulerKind::GlobusCompute => &[],
        };
        default.iter().map(|s| s.to_string()).collect()
    }

    /// The free-nodes command, if the scheduler has one.
    pub fn nodes_argv(&self) -> Vec<String> {
        if let Some(command) = &self.nodes_command {
            return command.argv();
        }
        match self.scheduler {
            SchedulerKind::Pbs | SchedulerKind::PbsText => ["pbsnodes", "-a", "-F", "json"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// `[quotas]`: rate limits and usage quotas (see `quota/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub enabled: bool,
    /// How long a request waits for an in-flight slot before it gets 429.
    pub queue_timeout_ms: u64,
    /// A subject unused this long has its `QuotaActor` stopped (counters flushed first).
    pub idle_secs: u64,
    /// How often day and month counters are written to the database.
    pub flush_interval_ms: u64,
    /// Active batches per user (`MAX_BATCHES_PER_USER`; 0 = no limit).
    pub max_batches_per_user: u64,
    /// Redis mode (`redis.url` set): how often each replica pushes its counts to Redis and
    /// reads back the shared totals (milliseconds).
    pub redis_sync_ms: u64,
    /// Redis mode: a token budget closer to its limit than this fraction of it (or than
    /// twice what the cluster used in one sync interval) is checked in Redis per request.
    pub redis_near_fraction: f64,
    /// Redis mode: longest wait for one Redis round trip before the replica falls back to
    /// its local limits (milliseconds).
    pub redis_timeout_ms: u64,
    pub user: LimitSettings,
    pub org: LimitSettings,
    pub model: LimitSettings,
}

impl Quotas {
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }

    pub fn redis_sync(&self) -> Duration {
        Duration::from_millis(self.redis_sync_ms)
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

/// The default limits of one kind of subject; 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub requests_per_second: f64,
    pub burst: u64,
    pub max_in_flight: u64,
    pub tokens_per_minute: u64,
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
    pub tokens_per_month: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    #[serde(default)]
    pub chat_aliases: Vec<ChatAlias>,
    #[serde(default)]
    pub relayed: Vec<RelayedRoute>,
}

/// A model-addressed route that real servers have beyond the built-in ones (`/tokenize`,
/// `/v1/messages/count_tokens`, `/v1/audio/transcriptions`...): routed by the body's
/// `model` and relayed unchanged to the same path on the target. Paths not listed are
/// never forwarded (backends also have admin routes clients must not reach).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayedRoute {
    pub path: String,
    #[serde(default)]
    pub body: BodyKind,
}

/// How a relayed route's body names its model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    /// A JSON object with a `model` member.
    #[default]
    Json,
    /// `multipart/form-data` with a `model` field (audio transcription).
    Multipart,
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
            .map_err(|e| ConfigError::new(config_error_key(&e), e.to_string()))?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError::new(config_error_key(&e), e.to_string()))?;
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
        if self.auth.oidc.enabled {
            let o = &self.auth.oidc;
            if !(o.jwks_url.starts_with("https://")
                || o.jwks_url.starts_with("http://127.")
                || o.jwks_url.starts_with("http://localhost"))
            {
                return Err(ConfigError::new(
                    "auth.oidc.jwks_url",
                    format!(
                        "{:?} must be an https:// URL (plain http only on loopback)",
                        o.jwks_url
                    ),
                ));
            }
            if o.issuer.trim().is_empty() {
                return Err(ConfigError::new(
                    "auth.oidc.issuer",
                    "is required when auth.oidc.enabled",
                ));
            }
            positive("auth.oidc.jwks_refresh_secs", o.jwks_refresh_secs)?;
        }
        if self.auth.globus.enabled {
            let g = &self.auth.globus;
            if g.client_id.trim().is_empty() {
                return Err(ConfigError::new(
                    "auth.globus.client_id",
                    "is required when auth.globus.enabled",
                ));
            }
            for (key, url) in [
                ("auth.globus.auth_base", &g.auth_base),
                ("auth.globus.groups_base", &g.groups_base),
            ] {
                if !(url.starts_with("https://")
                    || url.starts_with("http://127.")
                    || url.starts_with("http://localhost"))
                {
                    return Err(ConfigError::new(
                        key,
                        format!("{url:?} must be an https:// URL (plain http only on loopback)"),
                    ));
                }
            }
            positive("auth.globus.cache_secs", g.cache_secs)?;
            positive("auth.globus.timeout_ms", g.timeout_ms)?;
        }
        positive("server.max_body_bytes", self.server.max_body_bytes as u64)?;
        positive(
            "server.body_read_timeout_ms",
            self.server.body_read_timeout_ms,
        )?;
        positive("server.max_connections", self.server.max_connections as u64)?;
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
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("storage.data_dir", "must not be empty"));
        }
        positive("database.pool_size", self.database.pool_size as u64)?;
        positive("batches.max_file_bytes", self.batches.max_file_bytes)?;
        positive(
            "batches.max_concurrent_uploads",
            self.batches.max_concurrent_uploads,
        )?;
        positive(
            "batches.concurrency_per_batch",
            self.batches.concurrency_per_batch,
        )?;
        positive("batches.max_concurrency", self.batches.max_concurrency)?;
        positive("batches.max_running", self.batches.max_running)?;
        positive("batches.poll_interval_ms", self.batches.poll_interval_ms)?;
        positive("batches.flush_lines", self.batches.flush_lines)?;
        positive("batches.flush_interval_ms", self.batches.flush_interval_ms)?;
        positive("batches.line_attempts", self.batches.line_attempts)?;
        if self.batches.lease_secs < 3 {
            return Err(ConfigError::new("batches.lease_secs", "at least 3"));
        }
        if self.batches.flush_lines > 1000 {
            return Err(ConfigError::new("batches.flush_lines", "at most 1000"));
        }
        for root in &self.batches.allowed_roots {
            if !root.is_absolute() {
                return Err(ConfigError::new(
                    "batches.allowed_roots",
                    format!("{} is not an absolute path", root.display()),
                ));
            }
        }
        positive("database.timeout_secs", self.database.timeout_secs)?;
        crate::store::DatabaseUrl::from_settings(self)?;
        positive("logging.batch_size", self.logging.batch_size as u64)?;
        if self.logging.batch_size > 1000 {
            // 24 columns per row: stays under SQLite's and PostgreSQL's bind limits.
            return Err(ConfigError::new("logging.batch_size", "at most 1000"));
        }
        positive("logging.flush_interval_ms", self.logging.flush_interval_ms)?;
        if self.logging.queue_capacity < self.logging.batch_size {
            return Err(ConfigError::new(
                "logging.queue_capacity",
                format!(
                    "must be at least logging.batch_size ({})",
                    self.logging.batch_size
                ),
            ));
        }
        positive(
            "logging.retry_interval_secs",
            self.logging.retry_interval_secs,
        )?;
        positive("cold_start.wait_secs", self.cold_start.wait_secs)?;
        positive(
            "cold_start.retry_after_secs",
            self.cold_start.retry_after_secs,
        )?;
        positive(
            "cold_start.probe_interval_ms",
            self.cold_start.probe_interval_ms,
        )?;
        positive(
            "cold_start.command_timeout_secs",
            self.cold_start.command_timeout_secs,
        )?;
        let gc = &self.globus_compute;
        for (key, url) in [
            ("globus_compute.auth_base", &gc.auth_base),
            ("globus_compute.compute_base", &gc.compute_base),
        ] {
            if crate::fixtures::normalize_base_url(url).is_err() {
                return Err(ConfigError::new(
                    key,
                    format!("{url:?} must be an http:// or https:// URL"),
                ));
            }
        }
        if !self.streaming.callback_base_url.is_empty() {
            crate::fixtures::normalize_base_url(&self.streaming.callback_base_url)
                .map_err(|m| ConfigError::new("streaming.callback_base_url", m))?;
        }
        positive(
            "streaming.max_data_bytes",
            self.streaming.max_data_bytes as u64,
        )?;
        positive(
            "streaming.max_control_bytes",
            self.streaming.max_control_bytes as u64,
        )?;
        positive(
            "streaming.buffer_events",
            self.streaming.buffer_events as u64,
        )?;
        let redis_url = &self.redis.url;
        if !(redis_url.is_empty()
            || redis_url.starts_with("redis://")
            || redis_url.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "redis.url",
                "must start with redis:// or rediss:// (or be empty)",
            ));
        }
        positive("globus_compute.poll_initial_ms", gc.poll_initial_ms)?;
        positive("globus_compute.poll_max_ms", gc.poll_max_ms)?;
        positive("globus_compute.task_timeout_secs", gc.task_timeout_secs)?;
        for (name, c) in &self.clusters {
            let key = |k: &str| format!("clusters.{name}.{k}");
            positive(&key("interval_secs"), c.interval_secs)?;
            positive(&key("timeout_secs"), c.timeout_secs)?;
            if c.globus_client_id_env.is_empty() != c.globus_client_secret_env.is_empty() {
                return Err(ConfigError::new(
                    key("globus_client_secret_env"),
                    "set both globus_client_id_env and globus_client_secret_env, or neither",
                ));
            }
            match c.scheduler {
                SchedulerKind::Http => {
                    if crate::fixtures::normalize_base_url(&c.url).is_err() {
                        return Err(ConfigError::new(
                            key("url"),
                            format!("{:?} must be an http:// or https:// URL", c.url),
                        ));
                    }
                }
                // The function may come from clusters.json: checked when the catalog is read.
                SchedulerKind::None | SchedulerKind::GlobusCompute => {}
                _ => {
                    if c.jobs_argv().is_empty() {
                        return Err(ConfigError::new(key("command"), "must not be empty"));
                    }
                }
            }
        }
        positive("quotas.idle_secs", self.quotas.idle_secs)?;
        positive("quotas.flush_interval_ms", self.quotas.flush_interval_ms)?;
        if !(1..=10_000).contains(&self.quotas.redis_sync_ms) {
            return Err(ConfigError::new(
                "quotas.redis_sync_ms",
                "must be between 1 and 10000 (milliseconds)",
            ));
        }
        if !(1..=60_000).contains(&self.quotas.redis_timeout_ms) {
            return Err(ConfigError::new(
                "quotas.redis_timeout_ms",
                "must be between 1 and 60000 (milliseconds)",
            ));
        }
        let near = self.quotas.redis_near_fraction;
        if !near.is_finite() || !(0.0..1.0).contains(&near) {
            return Err(ConfigError::new(
                "quotas.redis_near_fraction",
                "must be a number >= 0 and < 1",
            ));
        }
        for (kind, l) in [
            ("user", &self.quotas.user),
            ("org", &self.quotas.org),
            ("model", &self.quotas.model),
        ] {
            let rps = l.requests_per_second;
            if !rps.is_finite() || rps < 0.0 {
                return Err(ConfigError::new(
                    format!("quotas.{kind}.requests_per_second"),
                    "must be a number >= 0 (0 = no limit)",
                ));
            }
            if rps > 0.0 && l.burst == 0 {
                return Err(ConfigError::new(
                    format!("quotas.{kind}.burst"),
                    "must be at least 1 when requests_per_second is set",
                ));
            }
        }
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
        let mut seen: Vec<&str> = self
            .routes
            .chat_aliases
            .iter()
            .map(|a| a.path.as_str())
            .collect();
        for (i, route) in self.routes.relayed.iter().enumerate() {
            let key = format!("routes.relayed[{i}].path");
            let path = route.path.as_str();
            if !path.starts_with('/') || path.len() < 2 || path.contains(['{', '}', ' ', '?', '#'])
            {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} must be a literal path starting with /"),
                ));
            }
            if crate::routes::BUILTIN_PATHS.contains(&path) || seen.contains(&path) {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} is already a route (built-in, an alias or listed twice)"),
                ));
            }
            if let Some(own) = crate::routes::GATEWAY_PREFIXES
                .iter()
                .find(|p| path == **p || path.starts_with(&format!("{p}/")))
            {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} is under the gateway's own {own}"),
                ));
            }
            seen.push(path);
        }
        Ok(())
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
        assert_eq!(sophia.interval_secs, 5);
        assert_eq!(sophia.timeout_secs, 15);
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
