//! `[cold_start]`, `[globus_compute]`, `[streaming]` and `[clusters.<name>]`: HPC schedulers
//! and Globus Compute.

use std::num::NonZeroUsize;

use serde::Deserialize;

use super::units::empty_is_none;
use super::{nz, ConfigError, HttpUrl, Millis, Seconds};

/// Starting a stopped model through its target's `start_command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdStart {
    /// Seconds a request for a cold model waits for a target to come up.
    pub wait_secs: Seconds,
    /// `Retry-After` seconds when the wait ends first.
    pub retry_after_secs: Seconds,
    /// A target's start command runs at most once per this many seconds.
    pub debounce_secs: Seconds<u64>,
    /// Milliseconds between scheduler probes while a start is pending.
    pub probe_interval_ms: Millis,
    /// Seconds a start command may run.
    pub command_timeout_secs: Seconds,
}

/// The Globus Compute transport (targets with `transport = "globus-compute"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobusCompute {
    /// Globus Auth base URL (client-credentials token at `{auth_base}/v2/oauth2/token`).
    pub auth_base: HttpUrl,
    /// Globus Compute web service base URL.
    pub compute_base: HttpUrl,
    /// Environment variables holding the confidential client's id and secret.
    pub client_id_env: String,
    pub client_secret_env: String,
    /// The Compute scope requested.
    pub scope: String,
    /// First and largest pause between task polls, in milliseconds (doubling).
    pub poll_initial_ms: Millis,
    pub poll_max_ms: Millis,
    /// Seconds a task may take before the request gets 504 (a target's
    /// `api_request_timeout` overrides it).
    pub task_timeout_secs: Seconds,
    /// Seconds an endpoint's status is cached (errors: a sixth of it).
    pub status_cache_secs: Seconds<u64>,
    /// Seconds after a submit during which an endpoint with no managers counts as
    /// starting (requests get 503 `model_starting` instead of queueing more tasks).
    pub start_window_secs: Seconds<u64>,
}

/// Streaming through Globus Compute: the remote function POSTs chunks back to
/// `/resource_server/api/streaming/{data,done,error}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streaming {
    /// The URL compute nodes reach this gateway at ("" = streaming through Globus Compute
    /// is off: such requests fail over to other targets).
    #[serde(deserialize_with = "empty_is_none")]
    pub callback_base_url: Option<HttpUrl>,
    /// Environment variable holding the shared secret the function sends in
    /// `X-Internal-Secret` (unset: every callback is refused).
    pub secret_env: String,
    /// Largest `data` callback body, and largest `done`/`error` body, in bytes.
    pub max_data_bytes: NonZeroUsize,
    pub max_control_bytes: NonZeroUsize,
    /// Callbacks buffered per stream while the client reads (more: 503 to the function).
    pub buffer_events: NonZeroUsize,
    /// Milliseconds to wait for `done` after the task itself finished.
    pub done_grace_ms: Millis<u64>,
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
    /// The status URL for `scheduler = "http"` ("" = none).
    #[serde(deserialize_with = "empty_is_none")]
    pub url: Option<HttpUrl>,
    /// Environment variable holding a bearer token sent to `url` ("" = none), e.g. for
    /// FIRST's `/{cluster}/jobs`, which needs an authenticated caller.
    pub token_env: String,
    pub interval_secs: Seconds,
    pub timeout_secs: Seconds,
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
            url: None,
            token_env: String::new(),
            interval_secs: Seconds::new(nz(30)),
            timeout_secs: Seconds::new(nz(15)),
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
}

impl ClusterSettings {
    /// `[clusters.<name>]`.
    pub(super) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("clusters.{name}.{k}");
        if self.globus_client_id_env.is_empty() != self.globus_client_secret_env.is_empty() {
            return Err(ConfigError::new(
                key("globus_client_secret_env"),
                "set both globus_client_id_env and globus_client_secret_env, or neither",
            ));
        }
        match self.scheduler {
            SchedulerKind::Http => {
                if self.url.is_none() {
                    return Err(ConfigError::new(
                        key("url"),
                        "is required when scheduler = \"http\"",
                    ));
                }
            }
            // The function may come from clusters.json: checked when the catalog is read.
            SchedulerKind::None | SchedulerKind::GlobusCompute => {}
            _ => {
                if self.jobs_argv().is_empty() {
                    return Err(ConfigError::new(key("command"), "must not be empty"));
                }
            }
        }
        Ok(())
    }
}
