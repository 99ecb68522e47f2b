//! The quota path of one request, measured alone: the registry lookups of the user and the
//! model, `admit` (budgets, token bucket, in-flight slot, counting), the `x-ratelimit-*`
//! headers, and charging tokens at the end. Two threads (like two HTTP workers) hammer the
//! same user and model, so the shared locks are contended.
//!
//! With `--redis URL` the registry runs in Redis mode (a key prefix of its own, the sync
//! task pushing every `quotas.redis_sync_ms` on a third thread), so the number includes
//! the shared-view bookkeeping; far from the limits no request awaits Redis.
//!
//! `--near` (with `--redis`) sets `quotas.redis_near_fraction = 0.99`, so every token
//! budget counts as near its limit and every admission is decided in Redis: the cost of
//! the near-limit path (one awaited script call).
//!
//! cargo run --release --example quota_admit [iterations per thread] [--redis URL [--near]]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use inference_gateway::config::Settings;
use inference_gateway::quota::{rate_limit_headers, Kind, QuotaRedis, QuotaRegistry, Subject};
use inference_gateway::{logging, store};

const THREADS: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redis_url = args
        .iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1).cloned());
    let iterations: usize = args
        .iter()
        .find(|a| a.parse::<usize>().is_ok())
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    let dir = tempfile::tempdir()?;
    let big = "1000000000000";
    let near = args.iter().any(|a| a == "--near");
    let mut env: Vec<(String, String)> = [
        (
            "GATEWAY__STORAGE__DATA_DIR",
            dir.path().to_str().unwrap_or("."),
        ),
        ("GATEWAY__QUOTAS__USER__REQUESTS_PER_SECOND", big),
        ("GATEWAY__QUOTAS__USER__BURST", big),
        ("GATEWAY__QUOTAS__USER__REQUESTS_PER_DAY", big),
        ("GATEWAY__QUOTAS__USER__TOKENS_PER_DAY", big),
        ("GATEWAY__QUOTAS__USER__TOKENS_PER_MONTH", big),
        ("GATEWAY__QUOTAS__USER__TOKENS_PER_MINUTE", big),
        ("GATEWAY__QUOTAS__MODEL__TOKENS_PER_MINUTE", big),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if near {
        // 1e8 tokens a day, 2e6 of them used (charged below): within 99 % of the limit.
        env.push(("GATEWAY__QUOTAS__REDIS_NEAR_FRACTION".into(), "0.99".into()));
        for (k, v) in env.iter_mut() {
            if k == "GATEWAY__QUOTAS__USER__TOKENS_PER_DAY" {
                *v = "100000000".into();
            }
        }
    }
    let settings = Settings::load_from(None, None, env)?;
    let url = store::DatabaseUrl::from_settings(&settings)?;
    store::migrate::run(&url)?;
    let store = store::open(&url, 1, Duration::from_secs(10))?;
    let registry = Arc::new(QuotaRegistry::new(
        &settings.quotas,
        store,
        logging::discard(),
    ));

    let prefix = format!("igw-bench-{}:", uuid::Uuid::new_v4().simple());
    let up = prometheus::IntGauge::new("up", "up")?;
    let fallbacks = prometheus::IntCounter::new("fallback", "fallback")?;
    let mut sync_system = None;
    if let Some(url) = &redis_url {
        let redis = Arc::new(QuotaRedis::new(
            url,
            &prefix,
            &settings.quotas,
            up.clone(),
            fallbacks.clone(),
            logging::discard(),
        )?);
        registry.set_redis(Arc::clone(&redis));
        let (r, reg) = (redis, Arc::clone(&registry));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            let _ = tx.send(actix_rt::System::current());
            system.block_on(async move {
                inference_gateway::quota::shared::spawn_sync(r, reg);
            });
            let _ = system.run();
        });
        sync_system = Some((rx.recv()?, thread));
    }
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || -> Vec<Duration> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let Ok(rt) = rt else { return Vec::new() };
                rt.block_on(async {
                    if near {
                        let user = registry.state(Subject::new(Kind::User, "bench")).await;
                        user.charge_tokens(inference_gateway::store::now_ms(), 1_000_000);
                    }
                    let mut times = Vec::with_capacity(iterations);
                    for _ in 0..iterations {
                        let t0 = Instant::now();
                        let user = registry.state(Subject::new(Kind::User, "bench")).await;
                        let model = registry.state(Subject::new(Kind::Model, "m")).await;
                        let Ok(admission) = registry.admit(&[Arc::clone(&user), model]).await
                        else {
                            continue;
                        };
                        let mut headers = HeaderMap::new();
                        rate_limit_headers(&mut headers, &user);
                        admission.charge(30);
                        drop(admission);
                        times.push(t0.elapsed());
                    }
                    times
                })
            })
        })
        .collect();
    let mut times: Vec<Duration> = Vec::new();
    for t in threads {
        times.extend(t.join().unwrap_or_default());
    }
    if let Some((system, thread)) = sync_system {
        system.stop();
        let _ = thread.join();
    }
    if let Some(url) = &redis_url {
        // Leave nothing behind in the shared Redis.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut conn = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            Ok::<(), redis::RedisError>(())
        })?;
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    let mut out = std::io::stdout().lock();
    if times.is_empty() {
        writeln!(out, "nothing measured")?;
        return Ok(());
    }
    writeln!(
        out,
        "quota path ({}), {THREADS} threads x {iterations}: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.1} µs",
        match (&redis_url, near) {
            (Some(_), true) => "redis mode, every admission in redis",
            (Some(_), false) => "redis mode",
            _ => "embedded",
        },
        at(0.50),
        at(0.99),
        at(0.999),
        at(1.0)
    )?;
    if redis_url.is_some() {
        writeln!(
            out,
            "redis up at the end: {}, admissions on local limits because redis failed: {}",
            up.get(),
            fallbacks.get()
        )?;
    }
    Ok(())
}
