//! `SchedulerProbe`: one per cluster. Reads the cluster's scheduler (a command on this
//! host, with a timeout, or an HTTP status URL) every `interval_secs`, maps its jobs to the
//! cluster's targets (running, starting, queued, stopped; free nodes), writes each
//! target's `SchedStatus` and tells the routers when a routing tier changed. It also runs
//! targets' start commands for cold starts, at most once per debounce period.
//!
//! Commands run as child processes awaited on the actor's arbiter (never blocking it), and
//! their output is parsed on the blocking pool. A probe that fails or times out marks the
//! state unknown; it never stops the actor.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;

use crate::actors::router::{FederatedRouterActor, TargetChanged};
use crate::config::{ColdStart, SchedulerKind};
use crate::proxy::globus_compute::{self, GlobusShared};
use crate::routing::cluster::{
    ClusterState, ProbeHandle, ProbeState, Republish, Snapshot, StartOutcome, StartTarget,
};
use crate::routing::target::{SchedStatus, Target};
use crate::scheduler::{self, JobPhase, Observation};

/// Largest output read from a command or status URL.
const OUTPUT_LIMIT: usize = 64 * 1024 * 1024;

pub struct SchedulerProbe {
    cluster: Arc<ClusterState>,
    routers: Vec<Addr<FederatedRouterActor>>,
    cold_start: ColdStart,
    log: slog::Logger,
    probing: bool,
    /// Last start command per target slug (debounce).
    started: HashMap<String, Instant>,
    /// Probe every `cold_start.probe_interval_ms` until then (a start is pending).
    fast_until: Option<Instant>,
    last_ok: Option<bool>,
    client: Option<awc::Client>,
    /// For `scheduler = "globus-compute"`.
    globus: Option<Arc<GlobusShared>>,
}

impl SchedulerProbe {
    pub fn new(
        cluster: Arc<ClusterState>,
        routers: Vec<Addr<FederatedRouterActor>>,
        cold_start: ColdStart,
        log: slog::Logger,
    ) -> Self {
        SchedulerProbe {
            cluster,
            routers,
            cold_start,
            log,
            probing: false,
            started: HashMap::new(),
            fast_until: None,
            last_ok: None,
            client: None,
            globus: None,
        }
    }

    pub fn with_globus(mut self, globus: Option<Arc<GlobusShared>>) -> Self {
        self.globus = globus;
        self
    }

    pub(crate) fn set_routers(&mut self, routers: Vec<Addr<FederatedRouterActor>>) {
        self.routers = routers;
    }

    fn configured(&self) -> bool {
        self.cluster.settings.scheduler != SchedulerKind::None
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        if self.probing || !self.configured() {
            return;
        }
        self.probing = true;
        let settings = self.cluster.settings.clone();
        let timeout = settings.timeout_secs.duration();
        let work: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Observation, String>>>,
        > = match settings.scheduler {
            SchedulerKind::Http => {
                let Some(client) = self.client.clone() else {
                    self.probing = false;
                    return;
                };
                // Set for this scheduler (`Settings::validate`).
                let url = settings.url.as_ref().map(ToString::to_string);
                let token = (!settings.token_env.is_empty()).then(|| {
                    std::env::var(&settings.token_env).map_err(|_| {
                        format!(
                            "clusters.{}.token_env: environment variable {} is not set",
                            self.cluster.name, settings.token_env
                        )
                    })
                });
                Box::pin(async move {
                    let url = url.ok_or("no status URL (clusters.<name>.url)")?;
                    let mut req = client.get(url).timeout(timeout);
                    if let Some(token) = token {
                        req = req.bearer_auth(token?);
                    }
                    let mut res = req.send().await.map_err(|e| format!("status URL: {e}"))?;
                    if !res.status().is_success() {
                        return Err(format!("status URL answered HTTP {}", res.status()));
                    }
                    let body = res
                        .body()
                        .limit(OUTPUT_LIMIT)
                        .await
                        .map_err(|e| format!("status URL body: {e}"))?;
                    let text = String::from_utf8(body.to_vec())
                        .map_err(|_| "status URL body is not UTF-8".to_string())?;
                    parse_off_thread(move || scheduler::parse_first_jobs(&text)).await
                })
            }
            SchedulerKind::GlobusCompute => {
                let (Some(client), Some(globus)) = (self.client.clone(), self.globus.clone())
                else {
                    self.probing = false;
                    return;
                };
                let name = self.cluster.name.clone();
                Box::pin(async move {
                    let (endpoint, function) =
                        (&settings.qstat_endpoint_uuid, &settings.qstat_function_uuid);
                    if endpoint.is_empty() || function.is_empty() {
                        return Err(format!(
                            "clusters.{name}: scheduler \"globus-compute\" needs \
                             qstat_endpoint_uuid and qstat_function_uuid (in [clusters.{name}] \
                             or the cluster's config in clusters.json)"
                        ));
                    }
                    let text = globus_compute::run_no_arg_function(
                        &client, &globus, &name, endpoint, function, timeout,
                    )
                    .await
                    .map_err(|e| format!("qstat function: {e}"))?;
                    parse_off_thread(move || scheduler::parse_first_jobs(&text)).await
                })
            }
            kind => {
                let jobs_argv = settings.jobs_argv();
                let nodes_argv = settings.nodes_argv();
                Box::pin(async move {
                    let jobs_out = run_command(&jobs_argv, timeout).await?;
                    let mut observation = parse_off_thread(move || match kind {
                        SchedulerKind::Pbs => scheduler::parse_pbs_json(&jobs_out),
                        SchedulerKind::PbsText => {
                            scheduler::parse_pbs_text(&jobs_out).map(Observation::of)
                        }
                        _ => scheduler::parse_squeue_json(&jobs_out).map(Observation::of),
                    })
                    .await?;
                    if !nodes_argv.is_empty() {
                        let out = run_command(&nodes_argv, timeout).await?;
                        observation.free_nodes = Some(
                            parse_off_thread(move || scheduler::parse_pbsnodes_json(&out)).await?,
                        );
                    }
                    Ok(observation)
                })
            }
        };
        ctx.spawn(work.into_actor(self).map(|result, act, _| {
            act.probing = false;
            act.apply(result);
        }));
    }

    /// Writes the targets' scheduler status from one probe result and publishes it.
    fn apply(&mut self, result: Result<Observation, String>) {
        let before: Vec<Option<u8>> = self.cluster.targets.iter().map(|t| t.tier()).collect();
        let (state, observation) = match result {
            Ok(observation) => {
                if self.last_ok != Some(true) {
                    slog::info!(self.log, "scheduler probe succeeded";
                        "cluster" => &self.cluster.name, "jobs" => observation.jobs.len());
                }
                self.last_ok = Some(true);
                if observation.skipped > 0 {
                    slog::warn!(self.log, "scheduler probe: jobs that could not be read were skipped";
                        "cluster" => &self.cluster.name, "skipped" => observation.skipped,
                        "jobs" => observation.jobs.len());
                }
                for t in &self.cluster.targets {
                    t.set_sched(status_of(t, &observation));
                }
                (ProbeState::Ok, observation)
            }
            Err(error) => {
                if self.last_ok != Some(false) {
                    slog::warn!(self.log, "scheduler probe failed; scheduler state unknown";
                        "cluster" => &self.cluster.name, "error" => error);
                }
                self.last_ok = Some(false);
                for t in &self.cluster.targets {
                    t.set_sched(SchedStatus::Unknown);
                }
                (ProbeState::Unknown, Observation::default())
            }
        };
        self.cluster.publish(Snapshot {
            state,
            observation,
            at: Some(SystemTime::now()),
        });
        let changed = self
            .cluster
            .targets
            .iter()
            .zip(before)
            .any(|(t, b)| t.tier() != b);
        if changed {
            self.notify_routers();
        }
        if self.fast_until.is_some_and(|until| Instant::now() >= until) {
            self.fast_until = None;
        }
    }

    fn notify_routers(&self) {
        for r in &self.routers {
            r.do_send(TargetChanged);
        }
    }

    fn start(&mut self, slug: &str, ctx: &mut Context<Self>) -> StartOutcome {
        let Some(target) = self.cluster.targets.iter().find(|t| t.slug() == slug) else {
            return StartOutcome::NoCommand;
        };
        let Some(command) = target.spec.start_command.clone() else {
            return StartOutcome::NoCommand;
        };
        let now = Instant::now();
        let debounce = self.cold_start.debounce_secs.duration();
        if self
            .started
            .get(slug)
            .is_some_and(|at| now.duration_since(*at) < debounce)
        {
            return StartOutcome::AlreadyStarting;
        }
        self.started.insert(slug.to_string(), now);
        let wait = self.cold_start.wait_secs.duration();
        self.fast_until = Some(now + wait.max(Duration::from_secs(60)));
        slog::info!(self.log, "cold start: running the target's start command";
            "cluster" => &self.cluster.name, "target" => slug);
        let argv = vec!["sh".to_string(), "-c".to_string(), command];
        let timeout = self.cold_start.command_timeout_secs.duration();
        let slug = slug.to_string();
        ctx.spawn(
            async move { run_command(&argv, timeout).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    match result {
                        Ok(_) => slog::info!(act.log, "start command submitted";
                            "cluster" => &act.cluster.name, "target" => &slug),
                        Err(e) => {
                            slog::error!(act.log, "start command failed";
                                "cluster" => &act.cluster.name, "target" => &slug, "error" => e);
                            // Let the next request try again.
                            act.started.remove(&slug);
                        }
                    }
                    act.probe(ctx);
                }),
        );
        StartOutcome::Started
    }
}

/// The best job serving `target`: running, then starting, then queued; no job means
/// stopped (with or without free nodes on the cluster).
fn status_of(target: &Target, observation: &Observation) -> SchedStatus {
    let spec = &target.spec;
    let best = observation
        .jobs
        .iter()
        .filter(|j| j.serves_target(spec))
        .map(|j| j.phase())
        .min_by_key(|p| match p {
            JobPhase::Running => 0,
            JobPhase::Starting => 1,
            JobPhase::Queued => 2,
            JobPhase::Other => 3,
        });
    match best {
        Some(JobPhase::Running) => SchedStatus::Running,
        Some(JobPhase::Starting) => SchedStatus::Starting,
        Some(JobPhase::Queued) => SchedStatus::Queued,
        Some(JobPhase::Other) | None => {
            if observation.free_nodes.is_some_and(|n| n > 0) {
                SchedStatus::StoppedFreeNodes
            } else {
                SchedStatus::Stopped
            }
        }
    }
}

async fn parse_off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("parser task failed: {e}"))?
}

/// Runs `argv` with a timeout (the child is killed when it runs over) and returns its
/// standard output; a non-zero exit is an error carrying the start of its stderr.
pub async fn run_command(argv: &[String], timeout: Duration) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "{program} timed out after {} ms",
                timeout.as_millis()
            ))
        }
        Ok(Err(e)) => return Err(format!("{program}: {e}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first: String = stderr
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        return Err(format!("{program} exited with {}: {first}", output.status));
    }
    if output.stdout.len() > OUTPUT_LIMIT {
        return Err(format!("{program} printed more than {OUTPUT_LIMIT} bytes"));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("{program} printed non-UTF-8 output"))
}

impl Actor for SchedulerProbe {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let addr = ctx.address();
        self.cluster.set_probe(ProbeHandle {
            republish: addr.clone().recipient(),
            start: addr.recipient(),
        });
        self.client = Some(awc::Client::builder().disable_redirects().finish());
        if !self.configured() {
            return;
        }
        self.probe(ctx);
        ctx.run_interval(
            self.cluster.settings.interval_secs.duration(),
            |act, ctx| act.probe(ctx),
        );
        let fast = self.cold_start.probe_interval_ms.duration();
        ctx.run_interval(fast, |act, ctx| {
            if act.fast_until.is_some() {
                act.probe(ctx);
            }
        });
    }
}

/// Probe the scheduler now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProbeNow;

impl Handler<ProbeNow> for SchedulerProbe {
    type Result = ();

    fn handle(&mut self, _: ProbeNow, ctx: &mut Context<Self>) {
        self.probe(ctx);
    }
}

impl Handler<Republish> for SchedulerProbe {
    type Result = ();

    fn handle(&mut self, _: Republish, _: &mut Context<Self>) {
        self.notify_routers();
    }
}

impl Handler<StartTarget> for SchedulerProbe {
    type Result = MessageResult<StartTarget>;

    fn handle(&mut self, msg: StartTarget, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.start(&msg.slug, ctx))
    }
}

/// Replace the routers this probe notifies.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetProbeRouters(pub Vec<Addr<FederatedRouterActor>>);

impl Handler<SetProbeRouters> for SchedulerProbe {
    type Result = ();

    fn handle(&mut self, msg: SetProbeRouters, _: &mut Context<Self>) {
        self.set_routers(msg.0);
    }
}

/// Make this actor panic (debug builds only; tests inject it).
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

#[cfg(debug_assertions)]
impl Handler<Crash> for SchedulerProbe {
    type Result = ();

    #[allow(clippy::panic)]
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("injected fault in SchedulerProbe {}", self.cluster.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn commands_time_out_and_report_failures() {
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        assert_eq!(
            run_command(&sh("echo hi"), Duration::from_secs(5))
                .await
                .unwrap(),
            "hi\n"
        );
        let started = Instant::now();
        let err = run_command(&sh("sleep 5"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let err = run_command(&sh("echo boom >&2; exit 3"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("boom"), "{err}");
        let err = run_command(&["/nonexistent/qstat".to_string()], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("/nonexistent/qstat"), "{err}");
    }
}
