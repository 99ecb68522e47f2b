//! The cap on one worker's upstream requests (`upstream.pool_limit_per_worker`), made
//! visible. awc's own connection limit makes a request wait in silence for a slot; here the
//! gate is ours (awc's is lifted), so a request that has to wait is counted
//! (`gateway_upstream_pool_wait_seconds`, `gateway_upstream_pool_waiters`) and the first
//! wait of an episode is logged once. A slot is held from before the first attempt until
//! the upstream response has ended (a relayed stream keeps it in its `Lease`).
//!
//! Also here: recognising that the gateway itself is out of file descriptors (`EMFILE`,
//! `ENFILE`), which is the gateway's error, never the target's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Waits closer together than this belong to one episode (one log line).
const EPISODE_GAP_MS: u64 = 10_000;

/// Wait buckets in seconds: from a slot freed at once to streams that hold slots for minutes.
const WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// The pool and file-descriptor metrics (part of [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct PoolMetrics {
    /// `gateway_upstream_pool_wait_seconds`: how long requests that found every slot of
    /// their worker taken waited for one (requests that did not wait are not observed).
    pub wait: Histogram,
    /// `gateway_upstream_pool_waiters`: requests waiting for a slot now (all workers).
    pub waiters: IntGauge,
    /// `gateway_fd_exhausted_total{op}`: the gateway ran out of file descriptors
    /// (`op="connect"`: an upstream connection could not be opened; the request is 503).
    pub fd_exhausted: IntCounterVec,
    /// `gateway_open_fds` and `gateway_max_fds` (the soft `RLIMIT_NOFILE`), read from
    /// `/proc/self` at scrape time: alert before the gateway runs out.
    pub open_fds: IntGauge,
    pub max_fds: IntGauge,
}

impl PoolMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<PoolMetrics> {
        let wait = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_upstream_pool_wait_seconds",
                "Time requests waited for an upstream connection slot of their worker \
                 (upstream.pool_limit_per_worker); only requests that had to wait.",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(wait.clone()))?;
        let waiters = IntGauge::new(
            "gateway_upstream_pool_waiters",
            "Requests waiting for an upstream connection slot now.",
        )?;
        r.register(Box::new(waiters.clone()))?;
        let fd_exhausted = IntCounterVec::new(
            Opts::new(
                "gateway_fd_exhausted_total",
                "Times the gateway ran out of file descriptors (EMFILE/ENFILE), by operation.",
            ),
            &["op"],
        )?;
        r.register(Box::new(fd_exhausted.clone()))?;
        fd_exhausted.with_label_values(&["connect"]);
        let open_fds = IntGauge::new(
            "gateway_open_fds",
            "File descriptors the gateway has open (read at scrape time; Linux).",
        )?;
        r.register(Box::new(open_fds.clone()))?;
        let max_fds = IntGauge::new(
            "gateway_max_fds",
            "The gateway's file descriptor limit (soft RLIMIT_NOFILE; read at scrape time; Linux).",
        )?;
        r.register(Box::new(max_fds.clone()))?;
        Ok(PoolMetrics {
            wait,
            waiters,
            fd_exhausted,
            open_fds,
            max_fds,
        })
    }

    /// Reads the descriptor count and limit from `/proc/self` (left as they are elsewhere).
    pub fn refresh_fds(&self) {
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Minus the descriptor `read_dir` itself holds.
            let open = dir.count().saturating_sub(1);
            self.open_fds.set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .as_deref()
            .and_then(soft_nofile)
        {
            self.max_fds.set(max);
        }
    }
}

/// The soft limit of "Max open files" in `/proc/self/limits` (`None` when unlimited).
fn soft_nofile(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// One worker's gate on upstream requests.
pub struct PoolGate {
    /// `None`: no limit (`pool_limit_per_worker = 0`).
    permits: Option<Arc<Semaphore>>,
    limit: usize,
    /// Milliseconds since `epoch` of the last wait's start or end (0 = never waited).
    last_wait_ms: AtomicU64,
    epoch: Instant,
}

/// A slot taken from a [`PoolGate`]; dropping it frees the slot.
#[derive(Debug)]
pub struct PoolSlot(#[allow(dead_code)] OwnedSemaphorePermit);

impl PoolGate {
    pub fn new(limit: usize) -> PoolGate {
        PoolGate {
            permits: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
            last_wait_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Takes a slot, waiting for one when the worker has `limit` upstream requests out.
    /// A wait is counted and, when it starts an episode, logged. `None` without a limit.
    pub async fn acquire(&self, metrics: &PoolMetrics, log: &slog::Logger) -> Option<PoolSlot> {
        let permits = self.permits.as_ref()?;
        if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
            return Some(PoolSlot(permit));
        }
        let started = Instant::now();
        if self.wait_begins_episode(started) {
            slog::warn!(log, "upstream connection slots of this worker are all taken; requests wait for one";
                "pool_limit_per_worker" => self.limit,
                "worker" => std::thread::current().name().unwrap_or("").to_string(),
                "metric" => "gateway_upstream_pool_wait_seconds");
        }
        // Counted while it waits, also if the client goes away meanwhile.
        let _waiting = Waiting::new(&metrics.waiters);
        let permit = Arc::clone(permits).acquire_owned().await.ok();
        metrics.wait.observe(started.elapsed().as_secs_f64());
        self.touch(Instant::now());
        permit.map(PoolSlot)
    }

    /// Slots in use now (for tests and logs).
    pub fn in_use(&self) -> usize {
        self.permits
            .as_ref()
            .map_or(0, |p| self.limit.saturating_sub(p.available_permits()))
    }

    fn ms(&self, at: Instant) -> u64 {
        // +1: 0 means "never waited".
        u64::try_from(at.duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn touch(&self, at: Instant) {
        self.last_wait_ms.store(self.ms(at), Ordering::Relaxed);
    }

    /// True when no wait started or ended within the last `EPISODE_GAP_MS`.
    fn wait_begins_episode(&self, at: Instant) -> bool {
        let now = self.ms(at);
        let last = self.last_wait_ms.swap(now, Ordering::Relaxed);
        last == 0 || now.saturating_sub(last) >= EPISODE_GAP_MS
    }
}

struct Waiting(IntGauge);

impl Waiting {
    fn new(gauge: &IntGauge) -> Waiting {
        gauge.inc();
        Waiting(gauge.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// True for "too many open files" (`EMFILE`: this process; `ENFILE`: the whole system).
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EMFILE) | Some(ENFILE))
}

/// Linux `errno` values (the gateway runs on Linux; `std` has no names for them).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn metrics() -> PoolMetrics {
        PoolMetrics::register(&Registry::new()).unwrap()
    }

    fn discard() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    #[actix_rt::test]
    async fn a_request_beyond_the_limit_waits_counted_until_a_slot_is_freed() {
        let gate = Arc::new(PoolGate::new(1));
        let m = metrics();
        let first = gate.acquire(&m, &discard()).await.unwrap();
        assert_eq!(gate.in_use(), 1);
        assert_eq!(m.wait.get_sample_count(), 0, "no wait, no sample");

        let (gate2, m2) = (Arc::clone(&gate), m.clone());
        let waiter = actix_rt::spawn(async move { gate2.acquire(&m2, &discard()).await });
        // Bounded: the waiter registers within a few polls.
        for _ in 0..100 {
            if m.waiters.get() == 1 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(m.waiters.get(), 1);
        drop(first);
        let second = waiter.await.unwrap();
        assert!(second.is_some());
        assert_eq!(m.waiters.get(), 0);
        assert_eq!(m.wait.get_sample_count(), 1);
    }

    #[actix_rt::test]
    async fn a_waiter_that_goes_away_is_no_longer_counted() {
        let gate = PoolGate::new(1);
        let m = metrics();
        let _held = gate.acquire(&m, &discard()).await.unwrap();
        let gave_up =
            actix_rt::time::timeout(Duration::from_millis(20), gate.acquire(&m, &discard())).await;
        assert!(gave_up.is_err());
        assert_eq!(m.waiters.get(), 0);
    }

    #[actix_rt::test]
    async fn no_limit_means_no_slot_and_no_wait() {
        let gate = PoolGate::new(0);
        assert!(gate.acquire(&metrics(), &discard()).await.is_none());
    }

    #[test]
    fn waits_close_together_are_one_episode() {
        let gate = PoolGate::new(1);
        let t0 = gate.epoch + Duration::from_secs(1);
        assert!(gate.wait_begins_episode(t0));
        assert!(!gate.wait_begins_episode(t0 + Duration::from_secs(5)));
        gate.touch(t0 + Duration::from_secs(8));
        assert!(!gate.wait_begins_episode(t0 + Duration::from_secs(17)));
        assert!(gate.wait_begins_episode(t0 + Duration::from_secs(28)));
    }

    #[test]
    fn the_soft_descriptor_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 20000                files     \n";
        assert_eq!(soft_nofile(limits), Some(1024));
        assert_eq!(
            soft_nofile(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        let m = metrics();
        m.refresh_fds();
        assert!(m.open_fds.get() >= 3, "stdin, stdout, stderr at least");
        assert!(m.max_fds.get() >= m.open_fds.get());
    }

    #[test]
    fn fd_exhaustion_is_recognised_by_errno() {
        assert!(is_fd_exhaustion(&std::io::Error::from_raw_os_error(24)));
        assert!(is_fd_exhaustion(&std::io::Error::from_raw_os_error(23)));
        assert!(!is_fd_exhaustion(&std::io::Error::from_raw_os_error(111)));
        assert!(!is_fd_exhaustion(&std::io::Error::other("x")));
    }
}
