//! Redis mode (`redis.url` set): the counters and the request-rate bucket of every subject
//! shared by all replicas through Redis.
//!
//! Keys (under `redis.key_prefix`): `quota:{subject}:minute:{start}`,
//! `quota:{subject}:day:{start}`, `quota:{subject}:month:{start}` (hashes `r` requests, `t`
//! tokens; `PEXPIREAT` the window's end) and `quota:{subject}:bucket` (hash `tok`, `ts`;
//! expires once it would be full again). One Lua script ([`SCRIPT`], `EVALSHA`, loaded
//! once, reloaded on `NOSCRIPT`) pushes a replica's unsynced counts, seeds keys Redis lost,
//! refills and takes from the bucket with Redis' own clock, optionally admits one request
//! atomically, and returns the totals. `quota:replicas` (a sorted set of replica ids by
//! last sync) tells how many replicas share the limits; `quota:changes` carries admin
//! changes to every replica.
//!
//! Handlers never await Redis far from a limit: they decide on the state's view (last
//! totals + unsynced counts), and the sync task ([`spawn_sync`]) pushes and reads every
//! `quotas.redis_sync_ms` in one pipeline. Near a limit, [`QuotaRedis::admit`] decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use prometheus::{IntCounter, IntGauge};
use redis::Value;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::limits::{Limits, Subject};
use super::math::{Window, WindowCount};
use super::registry::QuotaRegistry;
use super::state::{Denial, Exceeded, Push, SubjectState, Totals};
use crate::store::now_ms;

/// The one script. KEYS: minute, day, month, bucket. ARGV: 1-3 window ends (ms), 4-9
/// deltas (minute r t, day r t, month r t), 10-15 seeds (same order, used only when the
/// key is missing), 16 bucket takes, 17 rate, 18 burst, 19 admit (1/0), 20 requests per
/// day, 21 tokens per day, 22 tokens per month, 23 tokens per minute, 24 leased requests
/// to release (used, now in the deltas), 25 replicas (0: grant no new lease), 26 this replica's unused lease.
/// Returns {status, minute r, minute t, day r, day t, month r, month t, bucket level (a
/// string), retry ms, granted lease}; status 0 synced, 1 admitted, 2 day requests, 3 day
/// tokens, 4 month tokens, 5 minute tokens, 6 rate.
///
/// The day hash's `l` is the requests leased to replicas and not yet pushed as used: a
/// replica admits locally only from its lease, and Redis admits only while `r + l` (less
/// the caller's own lease) is under the limit, so the requests per day never go over.
pub const SCRIPT: &str = r#"
local totals = {}
for i = 1, 3 do
  local k = KEYS[i]
  if redis.call('EXISTS', k) == 0 then
    redis.call('HSET', k, 'r', ARGV[8 + 2 * i], 't', ARGV[9 + 2 * i])
    redis.call('PEXPIREAT', k, ARGV[i])
  end
  totals[2 * i - 1] = redis.call('HINCRBY', k, 'r', ARGV[2 + 2 * i])
  totals[2 * i] = redis.call('HINCRBY', k, 't', ARGV[3 + 2 * i])
end
local rate = tonumber(ARGV[17])
local burst = tonumber(ARGV[18])
local level = 0
local now = 0
if rate > 0 then
  local tm = redis.call('TIME')
  now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
  local b = redis.call('HMGET', KEYS[4], 'tok', 'ts')
  local tok = tonumber(b[1])
  local ts = tonumber(b[2])
  if tok == nil or ts == nil then
    tok = burst
    ts = now
  end
  if now > ts then
    tok = math.min(burst, tok + (now - ts) * rate / 1000)
  end
  level = math.max(tok - tonumber(ARGV[16]), -burst)
end
local rpd = tonumber(ARGV[20])
local lease = 0
local mine = tonumber(ARGV[26])
if rpd > 0 then
  lease = math.max(0, tonumber(redis.call('HGET', KEYS[2], 'l') or '0') - tonumber(ARGV[24]))
end
local status = 0
local retry = 0
if ARGV[19] == '1' then
  local tpd = tonumber(ARGV[21])
  local tpm = tonumber(ARGV[22])
  local tpmin = tonumber(ARGV[23])
  if rpd > 0 and totals[3] + lease - mine >= rpd then
    status = 2
  elseif tpd > 0 and totals[4] >= tpd then
    status = 3
  elseif tpm > 0 and totals[6] >= tpm then
    status = 4
  elseif tpmin > 0 and totals[2] >= tpmin then
    status = 5
  elseif rate > 0 and level < 1 then
    status = 6
    retry = math.ceil((1 - level) / rate * 1000)
  else
    status = 1
    for i = 1, 3 do
      totals[2 * i - 1] = redis.call('HINCRBY', KEYS[i], 'r', 1)
    end
    level = level - 1
  end
end
local grant = 0
if rpd > 0 then
  local free = rpd - totals[3] - lease
  if free > 0 and tonumber(ARGV[25]) > 0 then
    grant = math.max(0, math.floor(free / (2 * tonumber(ARGV[25]))) - mine)
  end
  redis.call('HSET', KEYS[2], 'l', lease + grant)
end
if rate > 0 then
  redis.call('HSET', KEYS[4], 'tok', tostring(level), 'ts', now)
  redis.call('PEXPIRE', KEYS[4], math.ceil(burst / rate * 1000) + 1000)
end
return {status, totals[1], totals[2], totals[3], totals[4], totals[5], totals[6],
  tostring(level), retry, grant}
"#;

/// A replica counts as sharing the limits this long after its last sync.
const REPLICA_TTL_MS: i64 = 5_000;

/// An admin change sent to every replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Change {
    op: String,
    subject: String,
    /// The sender (which applied it already).
    replica: String,
    /// `override`: the new override as a `PUT` body (`null`: removed), so replicas apply
    /// it without a database read.
    #[serde(default)]
    limits: serde_json::Value,
}

/// What a Redis admission said.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admitted and counted in Redis.
    Admitted,
    Refused(Denial),
}

pub struct QuotaRedis {
    url: String,
    pool: deadpool_redis::Pool,
    prefix: String,
    replica: String,
    sha: Mutex<Option<String>>,
    up: AtomicBool,
    /// Set by [`QuotaRedis::shutdown`]: the sync task stops.
    stopped: AtomicBool,
    timeout: Duration,
    pub(super) sync_every: Duration,
    up_gauge: IntGauge,
    fallbacks: IntCounter,
    log: slog::Logger,
}

type RResult<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl QuotaRedis {
    pub fn new(
        url: &str,
        prefix: &str,
        settings: &crate::config::Quotas,
        up_gauge: IntGauge,
        fallbacks: IntCounter,
        log: slog::Logger,
    ) -> RResult<QuotaRedis> {
        let timeout = settings.redis_timeout_ms.duration();
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(16);
        pool_cfg.timeouts = deadpool_redis::Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        };
        cfg.pool = Some(pool_cfg);
        let pool = cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(err)?;
        // Up until proven otherwise, so the first failure is the one transition logged.
        up_gauge.set(1);
        Ok(QuotaRedis {
            url: url.to_string(),
            pool,
            prefix: prefix.to_string(),
            replica: Uuid::new_v4().simple().to_string(),
            sha: Mutex::new(None),
            up: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            timeout,
            sync_every: settings.redis_sync_ms.duration(),
            up_gauge,
            fallbacks,
            log,
        })
    }

    /// Whether the last Redis operation worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the outcome of a Redis operation; logs and sets the gauge on a transition
    /// only (never per request).
    fn set_up(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.up_gauge.set(i64::from(up));
            if up {
                slog::info!(
                    self.log,
                    "redis is back: quotas shared again, local counts pushed"
                );
            } else {
                slog::warn!(self.log, "redis unreachable: quotas fall back to local limits";
                    "error" => why);
            }
        }
    }

    /// Stops the sync task and pushes what the `states` counted last (shutdown: nothing
    /// counted here is lost in Redis).
    pub async fn shutdown(&self, states: &[Arc<SubjectState>]) {
        self.stopped.store(true, Ordering::Relaxed);
        let shared: Vec<_> = states.iter().filter(|s| s.is_shared()).cloned().collect();
        if let Err(e) = self.sync(&shared).await {
            slog::warn!(self.log, "last quota counts not pushed to redis"; "error" => e);
        }
    }

    /// Counts one decision made on local limits because Redis is unreachable.
    pub fn count_fallback(&self) {
        self.fallbacks.inc();
    }

    /// The key of a subject's window starting at `start`.
    pub fn window_key(&self, subject: &Subject, window: Window, start: i64) -> String {
        format!(
            "{}quota:{}:{}:{start}",
            self.prefix,
            subject.key(),
            window.name()
        )
    }

    pub fn bucket_key(&self, subject: &Subject) -> String {
        format!("{}quota:{}:bucket", self.prefix, subject.key())
    }

    fn replicas_key(&self) -> String {
        format!("{}quota:replicas", self.prefix)
    }

    fn changes_channel(&self) -> String {
        format!("{}quota:changes", self.prefix)
    }

    async fn conn(&self) -> RResult<deadpool_redis::Connection> {
        self.pool.get().await.map_err(err)
    }

    /// The script's SHA, loading it (`SCRIPT LOAD`) when not known yet or `reload`.
    async fn sha(&self, conn: &mut deadpool_redis::Connection, reload: bool) -> RResult<String> {
        if !reload {
            if let Some(sha) = self.sha.lock().ok().and_then(|s| s.clone()) {
                return Ok(sha);
            }
        }
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async(conn)
            .await
            .map_err(err)?;
        if let Ok(mut s) = self.sha.lock() {
            *s = Some(sha.clone());
        }
        Ok(sha)
    }

    /// One EVALSHA of [`SCRIPT`] for a subject's push (and admission when `admit`).
    fn script_cmd(
        &self,
        sha: &str,
        subject: &Subject,
        push: &Push,
        limits: &Limits,
        admit: bool,
        now: i64,
    ) -> redis::Cmd {
        let d = &push.delta;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha).arg(4);
        for (w, c) in [
            (Window::Minute, d.minute),
            (Window::Day, d.day),
            (Window::Month, d.month),
        ] {
            cmd.arg(self.window_key(subject, w, c.start));
        }
        cmd.arg(self.bucket_key(subject));
        for (w, c) in [
            (Window::Minute, d.minute),
            (Window::Day, d.day),
            (Window::Month, d.month),
        ] {
            // The end of the delta's window (its start is in the window).
            cmd.arg(w.end(c.start.max(w.start(now))));
        }
        for c in [d.minute, d.day, d.month] {
            cmd.arg(c.requests).arg(c.tokens);
        }
        for c in push.seed {
            cmd.arg(c.requests).arg(c.tokens);
        }
        cmd.arg(d.bucket_takes)
            .arg(limits.requests_per_second)
            .arg(limits.burst)
            .arg(if admit { 1 } else { 0 })
            .arg(limits.requests_per_day)
            .arg(limits.tokens_per_day)
            .arg(limits.tokens_per_month)
            .arg(limits.tokens_per_minute)
            .arg(push.lease_release)
            .arg(push.replicas)
            .arg(push.lease_unused);
        cmd
    }

    /// Bounded by `quotas.redis_timeout_ms`.
    async fn timed<T>(&self, f: impl std::future::Future<Output = RResult<T>>) -> RResult<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err("redis timed out".into()),
        }
    }

    /// Decides one request in Redis (the subject is near a limit): pushes its unsynced
    /// counts, checks every budget and the shared bucket, and counts it when admitted.
    /// `Err` when Redis is unreachable (the caller decides locally).
    pub async fn admit(&self, state: &SubjectState) -> RResult<Verdict> {
        let now = now_ms();
        let Some(push) = state.take_push(now, true) else {
            return Ok(Verdict::Admitted);
        };
        let limits = state.limits();
        let result = self
            .timed(async {
                let mut conn = self.conn().await?;
                let mut reload = false;
                loop {
                    let sha = self.sha(&mut conn, reload).await?;
                    let cmd = self.script_cmd(&sha, &state.subject, &push, &limits, true, now);
                    match cmd.query_async::<Value>(&mut conn).await {
                        Err(e) if e.kind() == redis::ErrorKind::NoScriptError && !reload => {
                            reload = true
                        }
                        other => return other.map_err(err),
                    }
                }
            })
            .await;
        let reply = match result.and_then(|v| parse_reply(&v)) {
            Ok(r) => r,
            Err(e) => {
                state.restore_unsynced(&push);
                self.set_up(false, &e);
                return Err(e);
            }
        };
        self.set_up(true, "");
        state.apply_totals(&reply.totals(&push, None), now);
        let exceeded = match reply.status {
            1 | 0 => return Ok(Verdict::Admitted),
            2 => Exceeded::DayRequests,
            3 => Exceeded::DayTokens,
            4 => Exceeded::MonthTokens,
            5 => Exceeded::MinuteTokens,
            _ => Exceeded::Rate {
                retry_after_ms: reply.retry_ms.max(1),
            },
        };
        Ok(Verdict::Refused(state.denial(exceeded, &limits, now)))
    }

    /// One sync round: every shared state's counts pushed and its totals read back, in one
    /// pipeline, with this replica's heartbeat. On failure the counts go back to the states.
    pub async fn sync(&self, states: &[Arc<SubjectState>]) -> RResult<()> {
        let now = now_ms();
        let pushes: Vec<(Arc<SubjectState>, Push, Limits)> = states
            .iter()
            .filter_map(|s| {
                let push = s.take_push(now, false)?;
                Some((Arc::clone(s), push, s.limits()))
            })
            .collect();
        let result = self
            .timed(async {
                let mut conn = self.conn().await?;
                let mut reload = false;
                loop {
                    let sha = self.sha(&mut conn, reload).await?;
                    let mut pipe = redis::pipe();
                    pipe.cmd("ZADD")
                        .arg(self.replicas_key())
                        .arg(now)
                        .arg(&self.replica)
                        .ignore()
                        .cmd("ZREMRANGEBYSCORE")
                        .arg(self.replicas_key())
                        .arg("-inf")
                        .arg(now - REPLICA_TTL_MS)
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(self.replicas_key())
                        .arg(REPLICA_TTL_MS * 2)
                        .ignore()
                        .cmd("ZCARD")
                        .arg(self.replicas_key());
                    for (s, push, limits) in &pushes {
                        pipe.add_command(
                            self.script_cmd(&sha, &s.subject, push, limits, false, now),
                        );
                    }
                    match pipe.query_async::<Vec<Value>>(&mut conn).await {
                        Err(e) if e.kind() == redis::ErrorKind::NoScriptError && !reload => {
                            reload = true
                        }
                        other => return other.map_err(err),
                    }
                }
            })
            .await;
        let values = match result {
            Ok(v) if v.len() == pushes.len() + 1 => v,
            Ok(_) | Err(_) => {
                for (s, push, _) in &pushes {
                    s.restore_unsynced(push);
                }
                let e = result
                    .err()
                    .unwrap_or_else(|| "short pipeline reply".into());
                self.set_up(false, &e);
                return Err(e);
            }
        };
        self.set_up(true, "");
        let replicas = redis::from_redis_value::<u64>(&values[0]).unwrap_or(1);
        for ((s, push, _), v) in pushes.iter().zip(&values[1..]) {
            match parse_reply(v) {
                Ok(reply) => s.apply_totals(&reply.totals(push, Some(replicas)), now),
                Err(_) => s.restore_unsynced(push),
            }
        }
        Ok(())
    }

    /// The shared usage of a subject's current windows (minute, day, month), for the admin
    /// API; zeros for windows nobody counted.
    pub async fn usage(&self, subject: &Subject) -> RResult<[WindowCount; 3]> {
        let now = now_ms();
        let windows = [Window::Minute, Window::Day, Window::Month];
        let result = self
            .timed(async {
                let mut conn = self.conn().await?;
                let mut pipe = redis::pipe();
                for w in windows {
                    pipe.cmd("HMGET")
                        .arg(self.window_key(subject, w, w.start(now)))
                        .arg("r")
                        .arg("t");
                }
                pipe.query_async::<Vec<(Option<u64>, Option<u64>)>>(&mut conn)
                    .await
                    .map_err(err)
            })
            .await;
        let rows = result.inspect_err(|e| self.set_up(false, e))?;
        self.set_up(true, "");
        let mut out = [WindowCount::default(); 3];
        for (i, w) in windows.iter().enumerate() {
            let (r, t) = rows.get(i).copied().unwrap_or((None, None));
            out[i] = WindowCount {
                start: w.start(now),
                requests: r.unwrap_or(0),
                tokens: t.unwrap_or(0),
            };
        }
        Ok(out)
    }

    /// Zeroes a subject's shared counters (the keys stay, so no replica's seed brings the
    /// old usage back) and refills its bucket.
    pub async fn reset(&self, subject: &Subject) -> RResult<()> {
        let now = now_ms();
        self.timed(async {
            let mut conn = self.conn().await?;
            let mut pipe = redis::pipe();
            for w in [Window::Minute, Window::Day, Window::Month] {
                let key = self.window_key(subject, w, w.start(now));
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg("r")
                    .arg(0)
                    .arg("t")
                    .arg(0)
                    .arg("l")
                    .arg(0)
                    .ignore()
                    .cmd("PEXPIREAT")
                    .arg(&key)
                    .arg(w.end(now))
                    .ignore();
            }
            pipe.cmd("DEL").arg(self.bucket_key(subject)).ignore();
            pipe.query_async::<()>(&mut conn).await.map_err(err)
        })
        .await
        .inspect_err(|e| self.set_up(false, e))
    }

    /// Tells every other replica that a subject's override changed (`override`) or its
    /// usage was reset (`reset`).
    pub async fn publish(
        &self,
        op: &str,
        subject: &Subject,
        limits: Option<&crate::store::QuotaOverrideRow>,
    ) -> RResult<()> {
        let limits = match limits.map(super::limits::override_json) {
            Some(serde_json::Value::Object(mut o)) => {
                o.remove("updated_at");
                serde_json::Value::Object(o)
            }
            _ => serde_json::Value::Null,
        };
        let message = serde_json::to_string(&Change {
            op: op.to_string(),
            subject: subject.key().to_string(),
            replica: self.replica.clone(),
            limits,
        })
        .map_err(err)?;
        self.timed(async {
            let mut conn = self.conn().await?;
            redis::cmd("PUBLISH")
                .arg(self.changes_channel())
                .arg(message)
                .query_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(err)
        })
        .await
        .inspect_err(|e| self.set_up(false, e))
    }

    async fn subscribe_once(&self, registry: &QuotaRegistry) -> RResult<()> {
        let client = redis::Client::open(self.url.as_str()).map_err(err)?;
        let mut pubsub = client.get_async_pubsub().await.map_err(err)?;
        pubsub
            .subscribe(self.changes_channel())
            .await
            .map_err(err)?;
        // Changes sent while this replica was not listening: reload every live override.
        registry.reload_overrides().await;
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(change) = serde_json::from_slice::<Change>(msg.get_payload_bytes()) else {
                continue;
            };
            if change.replica == self.replica {
                continue;
            }
            let Some(subject) = Subject::parse(&change.subject) else {
                continue;
            };
            match change.op.as_str() {
                "override" if change.limits.is_null() => registry.apply_override(&subject, None),
                "override" => {
                    match super::limits::parse_override(&subject, &change.limits, now_ms()) {
                        Ok(row) => registry.apply_override(&subject, Some(&row)),
                        Err(_) => registry.reload_override(&subject).await,
                    }
                }
                "reset" => {
                    if let Some(s) = registry.get(&subject) {
                        s.reset(now_ms());
                    }
                }
                _ => {}
            }
        }
        Err("subscription ended".into())
    }
}

/// One script reply.
struct Reply {
    status: i64,
    /// minute r t, day r t, month r t.
    counts: Vec<u64>,
    level: f64,
    retry_ms: i64,
    grant: u64,
}

fn parse_reply(v: &Value) -> RResult<Reply> {
    let Value::Array(items) = v else {
        return Err("unexpected script reply".into());
    };
    if items.len() != 10 {
        return Err("unexpected script reply".into());
    }
    let int = |v: &Value| redis::from_redis_value::<i64>(v).map_err(err);
    let counts = items[1..7]
        .iter()
        .map(|v| int(v).map(|n| u64::try_from(n).unwrap_or(0)))
        .collect::<RResult<Vec<u64>>>()?;
    let level: String = redis::from_redis_value(&items[7]).map_err(err)?;
    Ok(Reply {
        status: int(&items[0])?,
        counts,
        level: level.parse::<f64>().unwrap_or(0.0),
        retry_ms: int(&items[8])?,
        grant: u64::try_from(int(&items[9])?).unwrap_or(0),
    })
}

impl Reply {
    fn totals(&self, push: &Push, replicas: Option<u64>) -> Totals {
        let w = |i: usize, start: i64| WindowCount {
            start,
            requests: self.counts.get(2 * i).copied().unwrap_or(0),
            tokens: self.counts.get(2 * i + 1).copied().unwrap_or(0),
        };
        Totals {
            minute: w(0, push.delta.minute.start),
            day: w(1, push.delta.day.start),
            month: w(2, push.delta.month.start),
            bucket: self.level,
            replicas,
            grant: self.grant,
        }
    }
}

/// Runs the sync rounds every `quotas.redis_sync_ms` until the system stops, behind a
/// panic boundary; and listens for admin changes on `quota:changes`, reconnecting with
/// backoff.
pub fn spawn_sync(redis: Arc<QuotaRedis>, registry: Arc<QuotaRegistry>) {
    use futures_util::FutureExt;
    let (r, reg) = (Arc::clone(&redis), Arc::clone(&registry));
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(r.sync_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if r.stopped.load(Ordering::Relaxed) {
                break;
            }
            let now = now_ms();
            let states: Vec<_> = reg
                .live()
                .into_iter()
                .filter(|s| s.wants_sync(now, reg.stale_ms()))
                .collect();
            let run = std::panic::AssertUnwindSafe(r.sync(&states)).catch_unwind();
            if run.await.is_err() {
                slog::error!(r.log, "quota sync panicked; continuing");
            }
        }
    });
    actix_rt::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let run = std::panic::AssertUnwindSafe(redis.subscribe_once(&registry)).catch_unwind();
            match run.await {
                Ok(Ok(())) => backoff = Duration::from_millis(100),
                Ok(Err(e)) => {
                    slog::debug!(redis.log, "quota change subscriber lost; reconnecting";
                        "error" => e, "retry_ms" => backoff.as_millis() as u64);
                }
                Err(_) => slog::error!(redis.log, "quota change subscriber panicked; restarting"),
            }
            actix_rt::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}
