//! `BatchActor`: claims runnable batches from the database and runs their lines through
//! the same routing and forwarding path as interactive requests (`proxy::forward`, no
//! HTTP to itself), with bounded concurrency per batch (`batches.concurrency_per_batch`)
//! and per process (`batches.max_concurrency`), charging the owner's quota.
//!
//! Priority: a line starts only while fewer than `batches.yield_above_interactive`
//! interactive requests are in flight on the model's (pinned) targets in this process;
//! above that the batch waits and looks again every `flush_interval_ms`. Interactive =
//! the targets' in-flight count minus this actor's own batch lines on them.
//!
//! Durability: each finished line is stored in `batch_items` under (batch, line) and
//! inserts skip lines already stored, so a line's result is written at most once; a
//! resumed batch skips stored lines, so every line is done at least once. Results go in
//! transactions of up to `flush_lines` lines or every `flush_interval_ms`. A claim is a
//! lease (`lease_owner`, `lease_until`) renewed with every write and at least every
//! second; the write is conditional on still holding the lease and on the batch still
//! being `in_progress`, which is also how a cancel is noticed.
//!
//! Supervision: `BatchSupervisor` watches the actor's address and rebuilds a dead actor
//! (a panic) on the same arbiter with the same worker id, so the new actor takes over its
//! predecessor's leases at once. The lines of a batch are futures of the actor's context,
//! so they die with it: nothing runs twice at the same time.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::ArbiterHandle;
use actix_web::http::header::HeaderValue;
use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::lines::{self, Line};
use super::repeat_log::RepeatLog;
use super::{files, is_terminal, paths};
use crate::auth::identity::Identity;
use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::proxy::forward::{self, Call, Upstream};
use crate::proxy::globus_compute::GlobusShared;
use crate::proxy::record::RequestRecord;
use crate::quota::{Kind, QuotaRegistry, Subject};
use crate::routing::directory::{Directory, ModelEntry};
use crate::routing::ranking::Pin;
use crate::store::log_sink::LogSink;
use crate::store::{now_ms, BatchPatch, BatchRow, FileRow, ItemRow, Store};

/// How often the supervisor checks that the actor is alive.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// A running batch writes (and so renews its lease, and notices a cancel) at least this often.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest pause of a line refused with 429 before it tries again.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Longest pause before a batch whose run failed is claimed again.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(60);
/// A repeated error is logged at most once per this interval (with the count left out).
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Tries to write a batch's output into FIRST's output folder, with a pause doubling from
/// `OUTPUT_RETRY_FIRST` between them; then the batch fails, naming the folder.
const OUTPUT_TRIES: u32 = 4;
const OUTPUT_RETRY_FIRST: Duration = Duration::from_millis(250);

/// What the actor needs; all shared, so a rebuilt actor gets the same.
#[derive(Clone)]
pub struct BatchDeps {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub directory: Arc<ArcSwap<Directory>>,
    pub metrics: Arc<Metrics>,
    pub quotas: Arc<QuotaRegistry>,
    pub log_sink: LogSink,
    pub globus: Arc<GlobusShared>,
    pub log: slog::Logger,
}

pub struct BatchSupervisor {
    deps: BatchDeps,
    arbiter: ArbiterHandle,
    /// This process's name in `lease_owner`.
    worker: String,
    actor: Addr<BatchActor>,
    restarts: u64,
}

impl BatchSupervisor {
    /// Starts the supervisor and its actor on an arbiter (thread) of their own.
    pub fn start(deps: BatchDeps) -> Addr<BatchSupervisor> {
        let arbiter = Arbiter::new().handle();
        let worker = format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple());
        let actor = BatchActor::start_on(&arbiter, deps.clone(), worker.clone());
        let sup = BatchSupervisor {
            deps,
            arbiter,
            worker,
            actor,
            restarts: 0,
        };
        sup.start()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

impl Actor for BatchSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(WATCH_EVERY, |sup, _| {
            if !sup.actor.connected() {
                slog::error!(sup.deps.log, "batch actor died; rebuilding it");
                sup.restarts += 1;
                sup.actor =
                    BatchActor::start_on(&sup.arbiter, sup.deps.clone(), sup.worker.clone());
            }
        });
    }
}

/// Look for runnable batches now (a batch was created or cancelled here).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Wake;

impl Handler<Wake> for BatchSupervisor {
    type Result = ();

    fn handle(&mut self, _: Wake, _: &mut Context<Self>) {
        self.actor.do_send(Wake);
    }
}

/// The running actor's address (tests send it `Crash`).
#[derive(Message)]
#[rtype(result = "Addr<BatchActor>")]
pub struct ActorAddr;

impl Handler<ActorAddr> for BatchSupervisor {
    type Result = MessageResult<ActorAddr>;

    fn handle(&mut self, _: ActorAddr, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.actor.clone())
    }
}

/// How many times the actor was rebuilt.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Restarts;

impl Handler<Restarts> for BatchSupervisor {
    type Result = u64;

    fn handle(&mut self, _: Restarts, _: &mut Context<Self>) -> u64 {
        self.restarts
    }
}

/// Lines of batches in flight per model, to tell batch from interactive load.
type BatchLoad = Rc<RefCell<HashMap<String, u32>>>;

pub struct BatchActor {
    deps: BatchDeps,
    worker: String,
    /// Built on the actor's own thread (awc clients are not `Send`).
    upstream: Rc<Upstream>,
    global: Arc<Semaphore>,
    load: BatchLoad,
    /// Running batches and their owners.
    running: HashMap<String, String>,
    /// Batches whose last run stopped on an error: not claimed again before the time
    /// (backoff doubling per failure, up to `MAX_RETRY_PAUSE`).
    retry: HashMap<String, (Instant, u32)>,
    repeats: RepeatLog,
    claiming: bool,
}

impl BatchActor {
    fn start_on(arbiter: &ArbiterHandle, deps: BatchDeps, worker: String) -> Addr<BatchActor> {
        BatchActor::start_in_arbiter(arbiter, move |_| {
            let upstream =
                Upstream::new(&deps.settings.upstream).with_globus(Arc::clone(&deps.globus));
            let permits =
                usize::try_from(deps.settings.batches.max_concurrency.get()).unwrap_or(usize::MAX);
            BatchActor {
                upstream: Rc::new(upstream),
                global: Arc::new(Semaphore::new(permits)),
                load: Rc::default(),
                running: HashMap::new(),
                retry: HashMap::new(),
                repeats: RepeatLog::new(REPEAT_LOG_EVERY),
                claiming: false,
                deps,
                worker,
            }
        })
    }

    /// Claims batches while this process runs fewer than `max_running`. Fair share: a
    /// batch of an owner with nothing running here is taken first, and no owner takes
    /// more than `max_running_per_user` slots, so one user cannot hold them all.
    fn claim(&mut self, ctx: &mut Context<Self>) {
        let settings = &self.deps.settings.batches;
        let cap = usize::try_from(settings.max_running.get()).unwrap_or(usize::MAX);
        if self.claiming || self.running.len() >= cap {
            return;
        }
        self.claiming = true;
        let per_user = usize::try_from(settings.per_user_running()).unwrap_or(usize::MAX);
        let store = Arc::clone(&self.deps.store);
        let worker = self.worker.clone();
        let lease = ms(settings.lease_secs.duration());
        let now_instant = Instant::now();
        self.retry.retain(|_, (at, _)| *at > now_instant);
        let skip: Vec<String> = self
            .running
            .keys()
            .chain(self.retry.keys())
            .cloned()
            .collect();
        let mut per_owner: HashMap<&str, usize> = HashMap::new();
        for owner in self.running.values() {
            *per_owner.entry(owner.as_str()).or_insert(0) += 1;
        }
        let busy: Vec<String> = per_owner.keys().map(|o| o.to_string()).collect();
        let full: Vec<String> = per_owner
            .iter()
            .filter(|(_, n)| **n >= per_user)
            .map(|(o, _)| o.to_string())
            .collect();
        let fut = async move {
            let now = now_ms();
            let until = now + lease;
            match store
                .claim_batch(worker.clone(), now, until, skip.clone(), busy)
                .await
            {
                Ok(None) => store.claim_batch(worker, now, until, skip, full).await,
                other => other,
            }
        };
        ctx.spawn(fut.into_actor(self).map(|claimed, act, ctx| {
            act.claiming = false;
            match claimed {
                Ok(Some(row)) => {
                    act.run(row, ctx);
                    act.claim(ctx);
                }
                Ok(None) => {}
                Err(e) => {
                    if let Some(left_out) = act.repeats.check("claim", Instant::now()) {
                        slog::warn!(act.deps.log, "could not claim batches";
                            "error" => e.to_string(), "repeats_left_out" => left_out);
                    }
                }
            }
        }));
    }

    fn publish_active(&self) {
        let n = i64::try_from(self.running.len()).unwrap_or(i64::MAX);
        self.deps.metrics.batches.active.set(n);
    }

    fn run(&mut self, row: BatchRow, ctx: &mut Context<Self>) {
        let id = row.id.clone();
        self.running.insert(id.clone(), row.owner.clone());
        self.publish_active();
        let runner = Runner {
            deps: self.deps.clone(),
            worker: self.worker.clone(),
            upstream: Rc::clone(&self.upstream),
            global: Arc::clone(&self.global),
            load: Rc::clone(&self.load),
        };
        let log = self.deps.log.new(slog::o!("batch_id" => id.clone()));
        ctx.spawn(
            async move { (runner.drive(row, &log).await, log) }
                .into_actor(self)
                .map(move |(result, log), act, ctx| {
                    act.running.remove(&id);
                    act.publish_active();
                    match result {
                        Ok(()) => {
                            act.retry.remove(&id);
                        }
                        Err(e) => {
                            // Not claimed again at once: a batch failing the same way
                            // must neither spin nor flood the log.
                            let failures = act.retry.get(&id).map_or(0, |(_, n)| *n) + 1;
                            let pause = retry_pause(failures);
                            act.retry.insert(id.clone(), (Instant::now() + pause, failures));
                            if let Some(left_out) = act.repeats.check(&id, Instant::now()) {
                                slog::error!(log, "batch run stopped; it resumes when claimed again";
                                    "error" => e, "failures" => failures,
                                    "retry_in_ms" => ms(pause), "repeats_left_out" => left_out);
                            }
                        }
                    }
                    act.claim(ctx);
                }),
        );
    }
}

/// The pause before a batch whose run failed `failures` times in a row is claimed again.
fn retry_pause(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(7))).min(MAX_RETRY_PAUSE)
}

impl Actor for BatchActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A rebuilt actor starts from nothing (a dead one never ran `stopped`).
        self.publish_active();
        let every = self.deps.settings.batches.poll_interval_ms.duration();
        ctx.run_interval(every, |act, ctx| act.claim(ctx));
        self.claim(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.running.clear();
        self.publish_active();
    }
}

impl Handler<Wake> for BatchActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.claim(ctx);
    }
}

/// Debug builds only: panics inside the actor (tests inject faults with it).
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

#[cfg(debug_assertions)]
impl Handler<Crash> for BatchActor {
    type Result = ();

    #[allow(clippy::panic)]
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("injected fault in BatchActor");
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn owned(states: &[&str]) -> Vec<String> {
    states.iter().map(|s| s.to_string()).collect()
}

/// Why a run of lines stopped early.
enum Stop {
    Cancel,
    Expire,
    /// The lease is gone (another replica has the batch): leave it alone.
    Lost,
}

/// One batch's run; its futures live on the actor's context.
struct Runner {
    deps: BatchDeps,
    worker: String,
    upstream: Rc<Upstream>,
    global: Arc<Semaphore>,
    load: BatchLoad,
}

type RunResult = Result<(), String>;

impl Runner {
    fn store(&self) -> &dyn Store {
        &*self.deps.store
    }

    async fn reload(&self, id: &str) -> Result<Option<BatchRow>, String> {
        self.store()
            .get_batch(id.to_string())
            .await
            .map_err(|e| e.to_string())
    }

    /// Moves a claimed batch on until it is final or this process no longer holds it.
    async fn drive(&self, mut row: BatchRow, log: &slog::Logger) -> RunResult {
        loop {
            let now = now_ms();
            let expired = now >= row.expires_at
                && matches!(row.status.as_str(), "validating" | "in_progress");
            let next = if expired {
                self.finish(&row, "expired", log).await?
            } else {
                match row.status.as_str() {
                    "validating" => self.validate(&row, log).await?,
                    "in_progress" => self.run_lines(&row, log).await?,
                    "finalizing" => self.finish(&row, "completed", log).await?,
                    "cancelling" => self.finish(&row, "cancelled", log).await?,
                    _ => return Ok(()),
                }
            };
            if !next {
                return Ok(());
            }
            match self.reload(&row.id).await? {
                Some(r)
                    if !is_terminal(&r.status)
                        && r.lease_owner.as_deref() == Some(&self.worker) =>
                {
                    row = r
                }
                _ => return Ok(()),
            }
        }
    }

    async fn input(&self, row: &BatchRow) -> Result<Vec<u8>, String> {
        files::read(files::dir(&self.deps.settings), row.input_file_id.clone())
            .await
            .map_err(|e| format!("input file {}: {e}", row.input_file_id))
    }

    /// validating → in_progress (or failed, with the bad lines). True: look again.
    async fn validate(&self, row: &BatchRow, log: &slog::Logger) -> Result<bool, String> {
        let input = match self.input(row).await {
            Ok(b) => b,
            Err(e) => {
                slog::warn!(log, "batch input unreadable"; "error" => e);
                let errors = vec![lines::LineError {
                    line: 0,
                    custom_id: None,
                    message: "The input file could not be read (was it deleted?).".into(),
                }];
                return self.fail_validation(row, &errors, 0).await;
            }
        };
        let endpoint = row.endpoint.clone();
        let model = row.model.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let total = input
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .count();
            (lines::parse(&input, &endpoint, model.as_deref()), total)
        })
        .await
        .map_err(|e| e.to_string())?;
        match parsed {
            (Ok(lines), _) => {
                let now = now_ms();
                let patch = BatchPatch {
                    status: Some("in_progress".into()),
                    in_progress_at: Some(now),
                    total: Some(i64::try_from(lines.len()).unwrap_or(i64::MAX)),
                    ..BatchPatch::default()
                };
                self.update(row, &["validating"], patch).await?;
                Ok(true)
            }
            (Err(errors), total) => self.fail_validation(row, &errors, total).await,
        }
    }

    async fn fail_validation(
        &self,
        row: &BatchRow,
        errors: &[lines::LineError],
        total: usize,
    ) -> Result<bool, String> {
        let mut text = String::new();
        for e in errors {
            text.push_str(&lines::error_line(
                e.custom_id.as_deref(),
                "invalid_line",
                &format!("line {}: {}", e.line, e.message),
                Some(e.line),
            ));
            text.push('\n');
        }
        let bytes = text.into_bytes();
        let error_file = self
            .put_batch_file(row, 'e', "errors", bytes.clone())
            .await?;
        // The batch fails anyway; a folder that cannot be written changes nothing.
        let _ = self.to_folder(row, &[("errors".into(), bytes)]).await;
        let now = now_ms();
        let patch = BatchPatch {
            status: Some("failed".into()),
            failed_at: Some(now),
            errors: Some(lines::errors_data(errors).to_string()),
            error_file_id: Some(error_file),
            total: Some(i64::try_from(total).unwrap_or(i64::MAX)),
            ..BatchPatch::default()
        };
        self.update(row, &["validating"], patch).await?;
        Ok(true)
    }

    /// A conditional write (holding the lease, status one of `from`).
    async fn update(
        &self,
        row: &BatchRow,
        from: &[&str],
        patch: BatchPatch,
    ) -> Result<bool, String> {
        self.store()
            .update_batch(
                row.id.clone(),
                Some(self.worker.clone()),
                owned(from),
                patch,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Writes a batch's output (`o`) or error (`e`) file and its row; returns its id.
    async fn put_batch_file(
        &self,
        row: &BatchRow,
        kind: char,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<String, String> {
        let id = files::batch_file_id(&row.id, kind);
        let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        files::write(files::dir(&self.deps.settings), id.clone(), bytes)
            .await
            .map_err(|e| format!("writing {id}: {e}"))?;
        self.store()
            .put_file(FileRow {
                id: id.clone(),
                owner: row.owner.clone(),
                filename: format!("{}_{name}.jsonl", row.id),
                purpose: "batch_output".into(),
                bytes: len,
                created_at: now_ms(),
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// FIRST's form: copies the files into the client's output folder, confined again now
    /// (a symlink could have been swapped in since the batch was created). Tried
    /// `OUTPUT_TRIES` times with a doubling pause; `Err` names the folder and the cause.
    async fn to_folder(&self, row: &BatchRow, written: &[(String, Vec<u8>)]) -> Result<(), String> {
        let Some(folder) = row.output_folder.clone() else {
            return Ok(());
        };
        let mut pause = OUTPUT_RETRY_FIRST;
        let mut tries = 0;
        loop {
            tries += 1;
            let roots = self.deps.settings.batches.allowed_roots.clone();
            let (dir, files_to_write) = (folder.clone(), written.to_vec());
            let id = row.id.clone();
            let result = files::blocking(move || {
                let dir = paths::confine(&dir, &roots, paths::Kind::Dir, "output_folder_path")
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                for (name, bytes) in &files_to_write {
                    files::write_atomic(&dir.join(format!("{id}_{name}.jsonl")), bytes)?;
                }
                Ok(())
            })
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if tries >= OUTPUT_TRIES => {
                    return Err(format!(
                        "The output could not be written to `{folder}` ({tries} tries): {e}"
                    ))
                }
                Err(_) => {
                    actix_rt::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }

    /// Writes the output and error files from the stored results and moves the batch to
    /// `last` (completed via finalizing, cancelled, expired). True: look again.
    async fn finish(&self, row: &BatchRow, last: &str, log: &slog::Logger) -> Result<bool, String> {
        let now = now_ms();
        let from: &[&str] = match last {
            "completed" => {
                if row.status == "in_progress" {
                    let patch = BatchPatch {
                        status: Some("finalizing".into()),
                        finalizing_at: Some(now),
                        ..BatchPatch::default()
                    };
                    if !self.update(row, &["in_progress"], patch).await? {
                        return Ok(true);
                    }
                }
                &["finalizing"]
            }
            "cancelled" => &["cancelling"],
            _ => &["validating", "in_progress"],
        };
        let items = self
            .store()
            .list_items(row.id.clone())
            .await
            .map_err(|e| e.to_string())?;
        let (mut out, mut err) = (String::new(), String::new());
        let (mut completed, mut failed) = (0i64, 0i64);
        for item in &items {
            let target = if item.ok {
                completed += 1;
                &mut out
            } else {
                failed += 1;
                &mut err
            };
            target.push_str(&item.result);
            target.push('\n');
        }
        let mut written: Vec<(String, Vec<u8>)> = Vec::new();
        let output_file_id = if out.is_empty() {
            None
        } else {
            let bytes = out.into_bytes();
            let id = self
                .put_batch_file(row, 'o', "output", bytes.clone())
                .await?;
            written.push(("output".into(), bytes));
            Some(id)
        };
        let error_file_id = if err.is_empty() {
            None
        } else {
            let bytes = err.into_bytes();
            let id = self
                .put_batch_file(row, 'e', "errors", bytes.clone())
                .await?;
            written.push(("errors".into(), bytes));
            Some(id)
        };
        let folder_error = self.to_folder(row, &written).await.err();
        let now = now_ms();
        // A completed batch whose output folder cannot be written has failed (its results
        // are still in its output and error files); a cancelled or expired one stays so,
        // with the error noted.
        let status = match (&folder_error, last) {
            (Some(_), "completed") => "failed",
            _ => last,
        };
        let mut patch = BatchPatch {
            status: Some(status.into()),
            output_file_id,
            error_file_id,
            completed: Some(completed),
            failed: Some(failed),
            ..BatchPatch::default()
        };
        if let Some(message) = &folder_error {
            slog::warn!(log, "batch output not written"; "error" => message);
            patch.errors = Some(
                serde_json::json!([{"code": "output_not_written", "message": message,
                    "param": "output_folder_path", "line": null}])
                .to_string(),
            );
        }
        match status {
            "completed" => patch.completed_at = Some(now),
            "failed" => patch.failed_at = Some(now),
            "cancelled" => patch.cancelled_at = Some(now),
            _ => patch.expired_at = Some(now),
        }
        let done = self.update(row, from, patch).await?;
        if done {
            slog::info!(log, "batch finished"; "status" => status,
                "completed" => completed, "failed" => failed);
        }
        Ok(true)
    }

    /// Runs the lines not done yet. True: look again (finalize, cancel, expire).
    async fn run_lines(&self, row: &BatchRow, log: &slog::Logger) -> Result<bool, String> {
        let input = self.input(row).await?;
        let endpoint = row.endpoint.clone();
        let model = row.model.clone();
        let parsed =
            tokio::task::spawn_blocking(move || lines::parse(&input, &endpoint, model.as_deref()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|_| "the input file changed after validation".to_string())?;
        let identity: Arc<Identity> = Arc::new(
            serde_json::from_str(&row.identity).map_err(|e| format!("stored identity: {e}"))?,
        );
        let done: HashMap<i64, bool> = self
            .store()
            .done_items(row.id.clone())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let mut completed = i64::try_from(done.values().filter(|ok| **ok).count()).unwrap_or(0);
        let mut failed = i64::try_from(done.len()).unwrap_or(0) - completed;
        let mut pending: VecDeque<Line> = parsed
            .into_iter()
            .filter(|l| !done.contains_key(&i64::try_from(l.index).unwrap_or(i64::MAX)))
            .collect();
        if !done.is_empty() {
            slog::info!(log, "batch resumed"; "done" => done.len(), "left" => pending.len());
        }
        let pin = match (&row.cluster, &row.framework) {
            (Some(c), Some(f)) => Some(Pin {
                cluster: c.clone(),
                framework: f.clone(),
            }),
            _ => None,
        };
        let settings = &self.deps.settings.batches;
        let per_batch = usize::try_from(settings.concurrency_per_batch.get()).unwrap_or(usize::MAX);
        let flush_lines = usize::try_from(settings.flush_lines.get()).unwrap_or(usize::MAX);
        let mut ticker = tokio::time::interval(settings.flush_interval_ms.duration());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inflight = FuturesUnordered::new();
        let mut buffer: Vec<ItemRow> = Vec::new();
        let mut last_write = Instant::now();
        let mut stop: Option<Stop> = None;
        let mut expires_at = row.expires_at;
        let mut last_look = Instant::now();
        loop {
            while stop.is_none() && inflight.len() < per_batch {
                let Some(line) = pending.front() else { break };
                if !self.may_start(&line.model, pin.as_ref()) {
                    break;
                }
                let Ok(permit) = Arc::clone(&self.global).try_acquire_owned() else {
                    break;
                };
                let Some(line) = pending.pop_front() else {
                    break;
                };
                let ctx = LineCtx {
                    batch_id: row.id.clone(),
                    identity: Arc::clone(&identity),
                    pin: pin.clone(),
                };
                inflight.push(async move {
                    let _permit = permit;
                    self.run_line(&ctx, line, log).await
                });
            }
            if inflight.is_empty() && (pending.is_empty() || stop.is_some()) {
                break;
            }
            let write = tokio::select! {
                Some(item) = inflight.next(), if !inflight.is_empty() => {
                    let result = if item.ok { completed += 1; "completed" } else { failed += 1; "failed" };
                    self.deps.metrics.batches.lines.with_label_values(&[result]).inc();
                    buffer.push(item);
                    buffer.len() >= flush_lines
                }
                _ = ticker.tick() => {
                    !buffer.is_empty() || last_write.elapsed() >= HEARTBEAT
                }
            };
            if write && stop.is_none() {
                if last_look.elapsed() >= HEARTBEAT {
                    // The stored row decides the deadline (an operator may move it).
                    last_look = Instant::now();
                    if let Some(r) = self.reload(&row.id).await? {
                        expires_at = r.expires_at;
                    }
                }
                last_write = Instant::now();
                if let Some(s) = self
                    .write(row, expires_at, &mut buffer, completed, failed)
                    .await?
                {
                    stop = Some(s);
                    // Lines in flight are dropped (their requests cancelled): a cancelled
                    // or expired batch keeps only what is stored; a lost lease leaves the
                    // rest to the new holder.
                    inflight = FuturesUnordered::new();
                }
            }
        }
        match stop {
            None => {
                self.write(row, expires_at, &mut buffer, completed, failed)
                    .await?;
                self.finish(row, "completed", log).await
            }
            Some(Stop::Cancel) => Ok(true),
            Some(Stop::Expire) => self.finish(row, "expired", log).await,
            Some(Stop::Lost) => Ok(false),
        }
    }

    /// Stores finished lines and the counts, renewing the lease. `Some` when the batch
    /// must stop (cancelled, expired, or the lease is gone).
    async fn write(
        &self,
        row: &BatchRow,
        expires_at: i64,
        buffer: &mut Vec<ItemRow>,
        completed: i64,
        failed: i64,
    ) -> Result<Option<Stop>, String> {
        if !buffer.is_empty() {
            let rows = std::mem::take(buffer);
            if let Err(e) = self.store().insert_items(rows.clone()).await {
                // Kept for the next write; the lease may lapse meanwhile, which is safe.
                *buffer = rows;
                return Err(format!("storing line results: {e}"));
            }
        }
        let now = now_ms();
        if now >= expires_at {
            return Ok(Some(Stop::Expire));
        }
        let patch = BatchPatch {
            completed: Some(completed),
            failed: Some(failed),
            lease_until: Some(now + ms(self.deps.settings.batches.lease_secs.duration())),
            ..BatchPatch::default()
        };
        if self.update(row, &["in_progress"], patch).await? {
            return Ok(None);
        }
        Ok(Some(match self.reload(&row.id).await? {
            Some(r)
                if r.status == "cancelling" && r.lease_owner.as_deref() == Some(&self.worker) =>
            {
                Stop::Cancel
            }
            _ => Stop::Lost,
        }))
    }

    /// Whether interactive traffic on the model's targets leaves room for a batch line.
    fn may_start(&self, model: &str, pin: Option<&Pin>) -> bool {
        let limit = self.deps.settings.batches.yield_above_interactive;
        if limit == 0 {
            return true;
        }
        let directory = self.deps.directory.load();
        let Some(entry) = directory.model(model) else {
            return true; // the line fails at once with model_not_found
        };
        let total: u64 = entry.eligible(pin).map(|t| u64::from(t.in_flight())).sum();
        let ours = u64::from(self.load.borrow().get(model).copied().unwrap_or(0));
        total.saturating_sub(ours) < limit
    }

    /// Keeps half of the owner's own request bucket and in-flight slots for their
    /// interactive requests: while a batch line would eat into that half, it waits for
    /// the returned time instead of taking a slot.
    async fn owner_reserve(&self, owner: &Identity) -> Option<Duration> {
        if !self.deps.quotas.enabled {
            return None;
        }
        let user = self
            .deps
            .quotas
            .state(Subject::new(Kind::User, &owner.id))
            .await;
        let snap = user.snapshot(now_ms());
        let l = snap.limits;
        if l.requests_per_second > 0.0
            && l.burst > 1
            && snap.bucket_available < l.burst as f64 / 2.0
        {
            let refill = Duration::from_secs_f64((1.0 / l.requests_per_second).min(1.0));
            return Some(refill.max(Duration::from_millis(10)));
        }
        if l.max_in_flight > 1 && snap.in_flight >= l.max_in_flight / 2 {
            return Some(Duration::from_millis(20));
        }
        None
    }

    /// One line to its result, retrying what may pass later.
    async fn run_line(&self, ctx: &LineCtx, line: Line, log: &slog::Logger) -> ItemRow {
        let _load = LoadGuard::new(&self.load, &line.model);
        let tries = self.deps.settings.batches.line_attempts.get();
        let mut failures = 0;
        let request_id = format!("{}-{}", ctx.batch_id, line.index);
        let (ok, result) = loop {
            if let Some(pause) = self.owner_reserve(&ctx.identity).await {
                actix_rt::time::sleep(pause).await;
                continue;
            }
            let entry = self.deps.directory.load().model(&line.model).cloned();
            let Some(entry) = entry else {
                let e = ApiError::ModelNotFound(line.model.clone());
                break (false, gateway_error(&line, &request_id, &e));
            };
            match self.attempt(ctx, &line, entry, &request_id, log).await {
                Ok((status, body)) => {
                    let ok = (200..300).contains(&status);
                    break (
                        ok,
                        lines::response_line(&line.custom_id, status, &request_id, &body),
                    );
                }
                Err(ApiError::RateLimited { retry_after, .. })
                | Err(ApiError::QuotaExceeded { retry_after, .. }) => {
                    // A 429 delays the line; it never fails it. Retry-After is in whole
                    // seconds: short refusals (a request bucket) are retried sooner, at a
                    // random point so the batch's waiting lines do not all wake at once.
                    let after = retry_after.unwrap_or(Duration::from_secs(1));
                    let pause = if after <= Duration::from_secs(1) {
                        Duration::from_millis(10 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]))
                    } else {
                        after.min(MAX_DELAY)
                    };
                    actix_rt::time::sleep(pause).await;
                }
                Err(
                    e @ (ApiError::NoAvailableTarget { .. }
                    | ApiError::AllTargetsFailed { .. }
                    | ApiError::UpstreamTimeout { .. }
                    | ApiError::ModelStarting { .. }),
                ) => {
                    failures += 1;
                    if failures >= tries {
                        break (false, gateway_error(&line, &request_id, &e));
                    }
                    let pause = Duration::from_millis(500u64.saturating_mul(1 << failures.min(6)));
                    actix_rt::time::sleep(pause.min(MAX_DELAY)).await;
                }
                Err(e) => break (false, gateway_error(&line, &request_id, &e)),
            }
        };
        ItemRow {
            batch_id: ctx.batch_id.clone(),
            line_index: i64::try_from(line.index).unwrap_or(i64::MAX),
            custom_id: line.custom_id,
            ok,
            result,
        }
    }

    /// One admission and one forward of a line: the answer's status and body.
    async fn attempt(
        &self,
        ctx: &LineCtx,
        line: &Line,
        entry: Arc<ModelEntry>,
        request_id: &str,
        log: &slog::Logger,
    ) -> Result<(u16, Bytes), ApiError> {
        let caller = &ctx.identity;
        let mut record = RequestRecord::new(request_id.to_string(), "batch", Instant::now());
        record.log_to(self.deps.log_sink.clone());
        record.on_caller(&caller.id, caller.org.as_deref());
        record.keep_prompt(&line.body);
        record.on_parsed(&line.model, false);
        record.on_model_known();
        // A batch line has no HTTP edge to log an internal cause: it is logged here.
        let refuse = |e: ApiError, mut record: RequestRecord| {
            if let Some(cause) = e.cause() {
                slog::error!(log, "batch line failed inside the gateway";
                    "request_id" => request_id, "cause" => cause.as_str());
            }
            record.on_rejected(&e);
            record.finish(log, &self.deps.metrics);
            Err(e)
        };
        // Batch ids and line numbers: always a valid header value.
        let Ok(request_header) = HeaderValue::from_str(request_id) else {
            return refuse(
                ApiError::internal("a batch line's request id", "not a header value"),
                record,
            );
        };
        if !caller.may_name(&line.model) {
            let e =
                ApiError::Forbidden(format!("This API key may not use model `{}`.", line.model));
            return refuse(e, record);
        }
        if let Some(pin) = &ctx.pin {
            if !entry.targets.iter().any(|t| pin.matches(t)) {
                let e = crate::routes::inference_request::not_on_cluster(
                    &entry,
                    caller,
                    line.model.clone(),
                    pin.clone(),
                );
                return refuse(e, record);
            }
        }
        if self.deps.quotas.enabled {
            let quotas = &self.deps.quotas;
            let mut subjects = vec![quotas.state(Subject::new(Kind::User, &caller.id)).await];
            if let Some(org) = caller.org.as_deref().filter(|o| !o.is_empty()) {
                subjects.push(quotas.state(Subject::new(Kind::Org, org)).await);
            }
            subjects.push(quotas.state(Subject::new(Kind::Model, &line.model)).await);
            match quotas.admit(&subjects).await {
                Ok(admission) => record.on_admitted(admission),
                Err(e) => {
                    // Counted, but no request record: the line waits and tries again, and
                    // the request log gets one row for the attempt that is let through.
                    self.deps.metrics.quota_refusal(&e);
                    return Err(e);
                }
            }
        }
        let call = Call {
            model: entry,
            upstream_path: line.endpoint,
            content_type: actix_web::http::header::HeaderValue::from_static("application/json"),
            body: line.body.clone(),
            requested_model: line.model.clone(),
            pin: ctx.pin.clone(),
            caller: Arc::clone(caller),
            stream: false,
            hide_usage: false,
            request_id: request_header,
            hops: 0,
            client_headers: Vec::new(),
            metrics: Arc::clone(&self.deps.metrics),
            cache: None,
        };
        match forward::forward(&self.upstream, call, record, log).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Reading the body to its end finishes the record (tokens charged).
                let body = actix_web::body::to_bytes(response.into_body())
                    .await
                    .map_err(|e| ApiError::AllTargetsFailed {
                        model: line.model.clone(),
                        cause: format!("the answer's body failed: {e}"),
                    })?;
                Ok((status, body))
            }
            Err((e, record)) => refuse(e, record),
        }
    }
}

fn gateway_error(line: &Line, request_id: &str, e: &ApiError) -> String {
    let status = actix_web::ResponseError::status_code(e).as_u16();
    let body = serde_json::json!({"error": {"message": e.to_string(), "type": e.kind(),
        "param": null, "code": e.code()}});
    let _ = request_id;
    let mut v: serde_json::Value = serde_json::from_str(&lines::error_line(
        Some(&line.custom_id),
        e.code(),
        &e.to_string(),
        None,
    ))
    .unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "response".into(),
            serde_json::json!({"status_code": status, "request_id": request_id, "body": body}),
        );
    }
    v.to_string()
}

/// What every line of one batch shares.
struct LineCtx {
    batch_id: String,
    identity: Arc<Identity>,
    pin: Option<Pin>,
}

/// Counts a batch line in flight on its model while it lives.
struct LoadGuard {
    load: BatchLoad,
    model: String,
}

impl LoadGuard {
    fn new(load: &BatchLoad, model: &str) -> LoadGuard {
        *load.borrow_mut().entry(model.to_string()).or_insert(0) += 1;
        LoadGuard {
            load: Rc::clone(load),
            model: model.to_string(),
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if let Some(n) = self.load.borrow_mut().get_mut(&self.model) {
            *n = n.saturating_sub(1);
        }
    }
}
