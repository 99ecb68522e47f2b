//! `LogWriter`: writes request-log rows to the database in batches, off the request path.
//!
//! Handlers hand over one row per request through [`LogSink`]: a push onto a bounded
//! lock-free channel the writer drains every `flush_interval` (no wake-up of the writer's
//! thread per request), falling back to a fire-and-forget `do_send` when the channel is
//! full; nothing on the request path waits for the database. Rows wait in a bounded
//! in-memory queue and are inserted `batch_size` at a time.
//!
//! Nothing is lost while the process lives (a `kill -9` or a crash loses the rows still
//! in memory: normally under `flush_interval` of requests, up to `queue_capacity` rows
//! while the database is slow): when an insert fails, the batch is appended to a
//! JSON-lines spill file (fsync'd) and the writer counts the database as down: further
//! batches go straight to the file, and every `retry_interval` the file is replayed into
//! the database, then removed. Rows beyond `queue_capacity` go to the file too. A replay
//! that is due goes before the next batch (one operation runs at a time), so the file is
//! drained while traffic goes on, and again after every replay until it is empty. Row ids
//! are made by the gateway and inserts skip ids already stored, so a batch that reached
//! the database before its acknowledgement was lost is not written twice.
//!
//! A batch the database refuses for a reason other than being unavailable
//! ([`StoreError::is_unavailable`]) is inserted again row by row: the rows it takes are
//! stored, and a row it refuses alone is appended to `quarantine.jsonl` beside the spill
//! file (with the error; counted, and logged once per batch), so one bad row never holds
//! back the rows around it. File I/O runs on tokio's blocking pool. `Flush` (awaited by
//! the shutdown path) replays the spill file, then writes out everything queued.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::store::log_sink::{LogStats, Row};
use crate::store::{now_ms, LogRow, Store, StoreError};

/// How often old rows are pruned (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct LogWriterConfig {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub queue_capacity: usize,
    pub retry_interval: Duration,
    /// Rows older than this are pruned; `None` keeps them forever.
    pub retention: Option<Duration>,
    pub spill_dir: PathBuf,
}

impl LogWriterConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        let l = &settings.logging;
        LogWriterConfig {
            batch_size: l.batch_size.get(),
            flush_interval: l.flush_interval_ms.duration(),
            queue_capacity: l.queue_capacity.max(l.batch_size.get()),
            retry_interval: l.retry_interval_secs.duration(),
            retention: (l.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(l.retention_days) * 86_400)),
            spill_dir: settings.spill_dir(),
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// Writes out every queued row (to the database, or the spill file when it is down) and
/// waits for writes in progress; first it waits (up to a second) until every request
/// answered so far has handed over its row. The shutdown path awaits it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Replays the spill file now (tests; the timer does it otherwise).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retry;

pub struct LogWriter {
    store: Arc<dyn Store>,
    /// Rows pushed by handlers, drained on every tick and after every write.
    /// Boxed rows: the channel's 10,000 slots are allocated up front and stay resident
    /// once traffic has passed through them, so each holds a pointer, not a 400-byte row.
    rx: Receiver<Box<LogRow>>,
    tx: SyncSender<Box<LogRow>>,
    cfg: LogWriterConfig,
    queue: VecDeque<LogRow>,
    /// An insert, spill of a failed batch, or replay is running (one at a time).
    busy: bool,
    /// A replay should run as soon as nothing else is busy (it goes before the next batch).
    replay_due: bool,
    /// Background operations running (busy work, overflow spills, prunes).
    ops: usize,
    db_down: bool,
    /// The spill file may hold rows (set on append and at start).
    spill_dirty: bool,
    spill: Arc<Spill>,
    stats: Arc<LogStats>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    log: slog::Logger,
}

impl LogWriter {
    pub fn new(store: Arc<dyn Store>, cfg: LogWriterConfig, log: slog::Logger) -> Self {
        let spill = Arc::new(Spill::new(cfg.spill_dir.clone()));
        let (tx, rx) = sync_channel(cfg.queue_capacity.max(1));
        LogWriter {
            store,
            rx,
            tx,
            cfg,
            queue: VecDeque::new(),
            busy: false,
            replay_due: true,
            ops: 0,
            db_down: false,
            spill_dirty: true,
            spill,
            stats: Arc::new(LogStats::default()),
            flush_waiters: Vec::new(),
            log,
        }
    }

    pub fn stats(&self) -> Arc<LogStats> {
        Arc::clone(&self.stats)
    }

    /// The sending end of the row channel, for [`LogSink`].
    pub fn sender(&self) -> SyncSender<Box<LogRow>> {
        self.tx.clone()
    }

    /// Moves rows from the channel into the queue; beyond `queue_capacity`, the oldest
    /// batch goes to the spill file so memory stays bounded.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Ok(row) = self.rx.try_recv() {
            self.push(*row, ctx);
        }
        self.set_queued();
    }

    fn push(&mut self, row: LogRow, ctx: &mut Context<Self>) {
        self.queue.push_back(row);
        if self.queue.len() >= self.cfg.batch_size {
            self.flush(ctx);
        }
        if self.queue.len() > self.cfg.queue_capacity {
            // The database is slow or down: keep memory bounded.
            let overflow = self.take(self.cfg.batch_size).into();
            self.spill_rows(overflow, ctx, false);
        }
    }

    fn set_queued(&self) {
        self.stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    fn take(&mut self, n: usize) -> Vec<LogRow> {
        let n = n.min(self.queue.len());
        let rows = self.queue.drain(..n).collect();
        self.set_queued();
        rows
    }

    /// Starts the next operation if nothing else is running: a due replay first, else the
    /// next batch.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        if self.replay_due {
            return self.replay(ctx);
        }
        if self.queue.is_empty() {
            return;
        }
        let batch: Arc<[LogRow]> = self.take(self.cfg.batch_size).into();
        self.busy = true;
        self.ops += 1;
        if self.db_down {
            self.spill_rows(batch, ctx, true);
            return;
        }
        let store = Arc::clone(&self.store);
        let spill = Arc::clone(&self.spill);
        let work = async move { store_rows(&*store, &spill, batch).await };
        ctx.spawn(work.into_actor(self).map(|stored, act, ctx| {
            add(&act.stats.written, stored.inserted);
            act.quarantined(&stored);
            match stored.down {
                None => {
                    act.busy = false;
                    act.ops -= 1;
                    act.after_op(ctx);
                }
                Some((e, rest)) => {
                    act.went_down(&e, rest.len());
                    // Still busy: the same operation goes on by spilling.
                    act.spill_rows(rest.into(), ctx, true);
                }
            }
        }));
    }

    /// Counts and logs (one line) rows the database refused on their own.
    fn quarantined(&mut self, stored: &Stored) {
        if stored.refused == 0 {
            return;
        }
        add(&self.stats.quarantined, stored.refused);
        let file = self.spill.dir().join(QUARANTINE).display().to_string();
        match &stored.quarantine_error {
            None => slog::error!(self.log, "request log: rows refused by the database, kept aside";
                "rows" => stored.refused, "error" => stored.refused_error.clone(), "file" => file),
            Some(e) => {
                slog::error!(self.log, "request log: rows refused by the database and lost (quarantine file not written)";
                "rows" => stored.refused, "error" => stored.refused_error.clone(),
                "file" => file, "file_error" => e.to_string())
            }
        }
    }

    fn went_down(&mut self, e: &StoreError, rows: usize) {
        if !self.db_down {
            slog::warn!(self.log, "request log: database write failed; spilling to file";
                "error" => e.to_string(), "rows" => rows,
                "spill_dir" => self.cfg.spill_dir.display().to_string());
        }
        self.db_down = true;
    }

    /// Appends rows to the spill file on the blocking pool. `owned` = this is the busy
    /// operation (an insert that failed, or a batch while the database is down); its `ops`
    /// count was taken by the caller.
    fn spill_rows(&mut self, rows: Arc<[LogRow]>, ctx: &mut Context<Self>, owned: bool) {
        if !owned {
            self.ops += 1;
        }
        let spill = Arc::clone(&self.spill);
        let work = async move {
            let n = rows.len();
            let result = tokio::task::spawn_blocking(move || spill.append(&rows).map(|_| rows))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            (result, n)
        };
        ctx.spawn(work.into_actor(self).map(move |(result, n), act, ctx| {
            match result {
                Ok(_) => {
                    add(&act.stats.spilled, n);
                    act.spill_dirty = true;
                }
                Err(e) => {
                    // Disk trouble too: keep what fits in memory, the rest is lost.
                    add(&act.stats.lost, n);
                    slog::error!(act.log, "request log: rows lost (database down and spill failed)";
                        "error" => e.to_string(), "rows" => n);
                }
            }
            if owned {
                act.busy = false;
            }
            act.ops -= 1;
            act.after_op(ctx);
        }));
    }

    /// Replays the spill file into the database (when nothing else runs; else it is due
    /// and goes before the next batch).
    fn replay(&mut self, ctx: &mut Context<Self>) {
        self.replay_due = true;
        if self.busy {
            return;
        }
        self.replay_due = false;
        self.busy = true;
        self.ops += 1;
        let spill = Arc::clone(&self.spill);
        let store = Arc::clone(&self.store);
        let batch = self.cfg.batch_size;
        let work = async move {
            let taken = {
                let spill = Arc::clone(&spill);
                tokio::task::spawn_blocking(move || spill.take_for_replay())
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
            };
            let (rows, skipped) = match taken {
                Ok(Some(found)) => found,
                Ok(None) => return Replayed::Nothing,
                Err(e) => return Replayed::FileError(e, Stored::default()),
            };
            let mut inserted = 0;
            let mut refused = Stored::default();
            for chunk in rows.chunks(batch) {
                let stored = store_rows(&*store, &spill, chunk.to_vec().into()).await;
                inserted += stored.inserted;
                refused.add_refused(&stored);
                if let Some((e, _)) = stored.down {
                    return Replayed::DbDown(e, refused);
                }
            }
            let removed = tokio::task::spawn_blocking(move || spill.finish_replay())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            match removed {
                Ok(()) => Replayed::Done {
                    rows: rows.len(),
                    inserted,
                    skipped,
                    refused,
                },
                Err(e) => Replayed::FileError(e, refused),
            }
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            act.ops -= 1;
            match result {
                Replayed::Nothing => {
                    act.spill_dirty = false;
                    act.db_down = false;
                }
                Replayed::Done {
                    rows,
                    inserted,
                    skipped,
                    refused,
                } => {
                    add(&act.stats.replayed, rows - refused.refused);
                    act.quarantined(&refused);
                    slog::info!(act.log, "request log: spill file replayed into the database";
                        "rows" => rows, "rows_inserted" => inserted,
                        "lines_unreadable" => skipped);
                    act.db_down = false;
                    // More may have been spilled meanwhile: look again before the next batch.
                    act.replay_due = true;
                }
                Replayed::DbDown(e, refused) => {
                    act.quarantined(&refused);
                    slog::debug!(act.log, "request log: database still down"; "error" => e.to_string());
                    act.db_down = true;
                }
                Replayed::FileError(e, refused) => {
                    act.quarantined(&refused);
                    slog::error!(act.log, "request log: cannot read the spill file";
                        "error" => e.to_string(),
                        "spill_dir" => act.cfg.spill_dir.display().to_string());
                }
            }
            act.after_op(ctx);
        }));
    }

    fn prune(&mut self, ctx: &mut Context<Self>) {
        let Some(retention) = self.cfg.retention else {
            return;
        };
        if self.db_down {
            return;
        }
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let store = Arc::clone(&self.store);
        self.ops += 1;
        ctx.spawn(
            async move { store.prune_log(before).await }
                .into_actor(self)
                .map(|result, act, ctx| {
                    act.ops -= 1;
                    match result {
                        Ok(n) => {
                            add(&act.stats.pruned, n);
                            if n > 0 {
                                slog::info!(act.log, "request log: pruned old rows"; "rows" => n);
                            }
                        }
                        Err(e) => {
                            slog::warn!(act.log, "request log: prune failed"; "error" => e.to_string())
                        }
                    }
                    act.after_op(ctx);
                }),
        );
    }

    /// After any operation: keep draining, and answer `Flush` once everything is out.
    fn after_op(&mut self, ctx: &mut Context<Self>) {
        self.drain(ctx);
        let flushing = !self.flush_waiters.is_empty();
        if flushing || self.replay_due || self.queue.len() >= self.cfg.batch_size {
            self.flush(ctx);
        }
        if flushing && self.queue.is_empty() && self.ops == 0 && !self.replay_due {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

enum Replayed {
    Nothing,
    Done {
        rows: usize,
        inserted: usize,
        skipped: usize,
        refused: Stored,
    },
    DbDown(StoreError, Stored),
    FileError(io::Error, Stored),
}

/// What storing one batch came to.
#[derive(Default)]
struct Stored {
    /// Rows inserted now (rows stored before are skipped and not counted).
    inserted: usize,
    /// Rows the database refused on their own (moved to the quarantine file).
    refused: usize,
    /// The database's last reason for refusing one.
    refused_error: String,
    /// Writing the quarantine file failed (those rows are lost).
    quarantine_error: Option<String>,
    /// The database is unavailable: why, and the rows not stored (to spill).
    down: Option<(StoreError, Vec<LogRow>)>,
}

impl Stored {
    fn add_refused(&mut self, other: &Stored) {
        if other.refused > 0 {
            self.refused += other.refused;
            self.refused_error.clone_from(&other.refused_error);
            if other.quarantine_error.is_some() {
                self.quarantine_error.clone_from(&other.quarantine_error);
            }
        }
    }
}

/// Inserts a batch. When the database refuses it for a reason other than being
/// unavailable, the rows go again one by one: a row refused alone goes to the quarantine
/// file, the others are stored. If every row of a batch of several is refused, the
/// database, not the rows, is the problem: the batch counts as not stored (spilled).
async fn store_rows(store: &dyn Store, spill: &Arc<Spill>, rows: Arc<[LogRow]>) -> Stored {
    let e = match store.insert_log(Arc::clone(&rows)).await {
        Ok(n) => {
            return Stored {
                inserted: n,
                ..Stored::default()
            }
        }
        Err(e) => e,
    };
    if e.is_unavailable() {
        return Stored {
            down: Some((e, rows.to_vec())),
            ..Stored::default()
        };
    }
    let mut stored = Stored::default();
    let mut refused: Vec<(LogRow, String)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match store.insert_log(Arc::new([row.clone()])).await {
            Ok(n) => stored.inserted += n,
            Err(e) if e.is_unavailable() => {
                // Went away meanwhile: the rest (refused ones included) waits in the spill.
                let rest = refused
                    .into_iter()
                    .map(|(r, _)| r)
                    .chain(rows[i..].iter().cloned())
                    .collect();
                stored.down = Some((e, rest));
                return stored;
            }
            Err(e) => refused.push((row.clone(), e.to_string())),
        }
    }
    if refused.len() == rows.len() && rows.len() > 1 {
        stored.down = Some((e, rows.to_vec()));
        return stored;
    }
    if let Some((_, error)) = refused.last() {
        stored.refused = refused.len();
        stored.refused_error.clone_from(error);
        let spill = Arc::clone(spill);
        let written = tokio::task::spawn_blocking(move || spill.quarantine(&refused))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        stored.quarantine_error = written.err().map(|e| e.to_string());
    }
    stored
}

impl Actor for LogWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.cfg.flush_interval, |act, ctx| {
            act.drain(ctx);
            act.flush(ctx);
        });
        ctx.run_interval(self.cfg.retry_interval, |act, ctx| {
            if act.db_down || act.spill_dirty {
                // Runs now, or as soon as the operation in progress ends.
                act.replay(ctx);
            }
        });
        ctx.run_interval(PRUNE_EVERY, |act, ctx| act.prune(ctx));
        // Rows a previous run left in the spill file, and rows past retention.
        self.replay(ctx);
        self.prune(ctx);
    }
}

impl Handler<Row> for LogWriter {
    type Result = ();

    fn handle(&mut self, Row(row): Row, ctx: &mut Context<Self>) {
        // The channel was full: take everything now.
        self.drain(ctx);
        self.push(row, ctx);
        self.set_queued();
    }
}

impl Handler<Flush> for LogWriter {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.flush_waiters.push(tx);
        // What waits in the spill file goes in first (the database may be back).
        if self.db_down || self.spill_dirty {
            self.replay_due = true;
        }
        self.flush_after_deferred(ctx, Instant::now() + DEFERRED_WAIT);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// How long a `Flush` waits for answered requests to hand over their rows.
const DEFERRED_WAIT: Duration = Duration::from_secs(1);

impl LogWriter {
    /// Flushes once every answered request has handed its row over (a relayed answer's
    /// row leaves its worker just after the response: `RequestRecord::finish_soon`), or
    /// at `deadline` (traffic that never stops would keep some always on their way).
    fn flush_after_deferred(&mut self, ctx: &mut Context<Self>, deadline: Instant) {
        if crate::proxy::record::deferred_written() || Instant::now() >= deadline {
            return self.after_op(ctx);
        }
        ctx.run_later(Duration::from_millis(1), move |act, ctx| {
            act.flush_after_deferred(ctx, deadline)
        });
    }
}

impl Handler<Retry> for LogWriter {
    type Result = ();

    fn handle(&mut self, _: Retry, ctx: &mut Context<Self>) {
        self.replay(ctx);
    }
}

// ----------------------------------------------------------------------------- spill file

const ACTIVE: &str = "request-log.jsonl";
const REPLAYING: &str = "request-log.replaying.jsonl";
/// Rows the database refused on their own: `{"error", "quarantined_at", "row"}` a line,
/// never replayed (an operator may fix and re-insert them).
pub const QUARANTINE: &str = "quarantine.jsonl";

/// The append-only spill file. New rows go to `request-log.jsonl`; a replay first renames
/// it to `request-log.replaying.jsonl` (so appends during the replay go to a new file) and
/// removes that once every row is stored. A replay interrupted by a crash resumes from the
/// renamed file; rows it had already stored are skipped by id.
pub struct Spill {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl Spill {
    pub fn new(dir: PathBuf) -> Self {
        Spill {
            dir,
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends rows, one JSON object per line, and fsyncs.
    pub fn append(&self, rows: &[LogRow]) -> io::Result<()> {
        let _g = self.guard();
        fs::create_dir_all(&self.dir)?;
        let mut text = Vec::with_capacity(rows.len() * 512);
        for row in rows {
            serde_json::to_writer(&mut text, row)?;
            text.push(b'\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(ACTIVE))?;
        file.write_all(&text)?;
        file.sync_data()
    }

    /// Appends refused rows with their errors to the quarantine file, and fsyncs.
    pub fn quarantine(&self, rows: &[(LogRow, String)]) -> io::Result<()> {
        let _g = self.guard();
        fs::create_dir_all(&self.dir)?;
        let at = now_ms();
        let mut text = Vec::with_capacity(rows.len() * 512);
        for (row, error) in rows {
            serde_json::to_writer(
                &mut text,
                &serde_json::json!({"error": error, "quarantined_at": at, "row": row}),
            )?;
            text.push(b'\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(QUARANTINE))?;
        file.write_all(&text)?;
        file.sync_data()
    }

    /// Rows to replay (and how many lines were unreadable), or None when there are none.
    pub fn take_for_replay(&self) -> io::Result<Option<(Vec<LogRow>, usize)>> {
        let _g = self.guard();
        let replaying = self.dir.join(REPLAYING);
        if !replaying.exists() {
            let active = self.dir.join(ACTIVE);
            match fs::metadata(&active) {
                Ok(m) if m.len() > 0 => fs::rename(&active, &replaying)?,
                Ok(_) => {
                    fs::remove_file(&active)?;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        read_rows(&replaying).map(Some)
    }

    /// The replayed rows are stored: forget them.
    pub fn finish_replay(&self) -> io::Result<()> {
        let _g = self.guard();
        match fs::remove_file(self.dir.join(REPLAYING)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Rows waiting in the spill files (tests, operators).
    pub fn pending(&self) -> io::Result<usize> {
        let _g = self.guard();
        let mut n = 0;
        for name in [REPLAYING, ACTIVE] {
            let path = self.dir.join(name);
            if path.exists() {
                n += read_rows(&path)?.0.len();
            }
        }
        Ok(n)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads a spill file; a line that does not parse (a write torn by a crash) is skipped and
/// counted.
fn read_rows(path: &Path) -> io::Result<(Vec<LogRow>, usize)> {
    let reader = BufReader::new(File::open(path)?);
    let mut rows = Vec::new();
    let mut skipped = 0;
    for line in reader.split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<LogRow>(&line) {
            Ok(row) => rows.push(row),
            Err(_) => skipped += 1,
        }
    }
    Ok((rows, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_round_trips_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new(dir.path().join("spill"));
        assert!(spill.take_for_replay().unwrap().is_none());
        spill
            .append(&[LogRow::sample("a"), LogRow::sample("b")])
            .unwrap();
        // A crash in the middle of an append leaves half a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("spill").join(ACTIVE))
            .unwrap();
        f.write_all(b"{\"id\":\"c\",\"requ").unwrap();
        drop(f);
        assert_eq!(spill.pending().unwrap(), 2);
        let (rows, skipped) = spill.take_for_replay().unwrap().unwrap();
        assert_eq!(rows, vec![LogRow::sample("a"), LogRow::sample("b")]);
        assert_eq!(skipped, 1);
        // Rows spilled during the replay go to a new file and survive finish_replay.
        spill.append(&[LogRow::sample("d")]).unwrap();
        let (again, _) = spill.take_for_replay().unwrap().unwrap();
        assert_eq!(again.len(), 2, "an unfinished replay is resumed, not lost");
        spill.finish_replay().unwrap();
        let (next, _) = spill.take_for_replay().unwrap().unwrap();
        assert_eq!(next, vec![LogRow::sample("d")]);
        spill.finish_replay().unwrap();
        assert!(spill.take_for_replay().unwrap().is_none());
        assert_eq!(spill.pending().unwrap(), 0);
    }
}
