//! Before forwarding: a model whose clusters are all in maintenance is refused with the
//! notice, and a model whose scheduled targets are all cold (stopped, queued or starting)
//! gets its stopped targets' start commands run (debounced by each cluster's
//! `SchedulerProbe`, and across replicas through Redis when configured) and a bounded wait for one to come up, else a 503 with `Retry-After`.
//! Targets the scheduler says nothing about are never cold: the fast path is one atomic
//! load per target and no await.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ColdStart;
use crate::error::ApiError;
use crate::routing::cluster::{StartOutcome, StartTarget};
use crate::routing::directory::{Directory, ModelEntry};
use crate::routing::ranking::Pin;
use crate::routing::target::{SchedStatus, Target};
use crate::streaming_redis::RedisStreams;

/// How often a waiting request looks at its targets again.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// Refuses a model whose eligible targets are all in maintenance, and wakes one whose
/// routable targets are all cold (see the module docs); anything else passes at once.
pub async fn preflight(
    entry: &ModelEntry,
    pin: Option<&Pin>,
    model: &str,
    directory: &Directory,
    cold: &ColdStart,
    redis: Option<&RedisStreams>,
    log: &slog::Logger,
) -> Result<(), ApiError> {
    if warm(entry, pin) {
        return Ok(());
    }
    // Boxed: the cold path's future (scheduler and Redis calls, about 7 KB) would
    // otherwise be part of every request's.
    Box::pin(start_cold(entry, pin, model, directory, cold, redis, log)).await
}

/// The fast path, without allocating: true when an eligible target is neither in
/// maintenance nor cold, or when none is eligible under this pin (routing answers that).
/// False means every eligible target is in maintenance or cold: the slow path decides.
fn warm(entry: &ModelEntry, pin: Option<&Pin>) -> bool {
    let mut eligible = entry.eligible(pin).peekable();
    if eligible.peek().is_none() {
        return true;
    }
    eligible.any(|t| !t.in_maintenance() && !t.sched().is_cold())
}

async fn start_cold(
    entry: &ModelEntry,
    pin: Option<&Pin>,
    model: &str,
    directory: &Directory,
    cold: &ColdStart,
    redis: Option<&RedisStreams>,
    log: &slog::Logger,
) -> Result<(), ApiError> {
    let eligible: Vec<&Arc<Target>> = entry.eligible(pin).collect();
    let routable: Vec<&Arc<Target>> = eligible
        .iter()
        .copied()
        .filter(|t| !t.in_maintenance())
        .collect();
    if routable.is_empty() {
        if let Some(first) = eligible.first() {
            let notice = directory
                .cluster(&first.spec.cluster)
                .and_then(|c| c.maintenance())
                .map(|n| n.to_string())
                .unwrap_or_default();
            return Err(ApiError::Maintenance {
                cluster: first.spec.cluster.clone(),
                notice,
            });
        }
        return Ok(());
    }
    if routable.iter().any(|t| !t.sched().is_cold()) {
        return Ok(());
    }

    // Every target is cold. Start the stopped ones that can be started.
    let mut pending = routable
        .iter()
        .any(|t| matches!(t.sched(), SchedStatus::Starting | SchedStatus::Queued));
    for t in routable.iter().filter(|t| {
        matches!(
            t.sched(),
            SchedStatus::Stopped | SchedStatus::StoppedFreeNodes
        ) && t.spec.start_command.is_some()
    }) {
        let Some(probe) = directory.cluster(&t.spec.cluster).and_then(|c| c.probe()) else {
            continue;
        };
        if let Some(redis) = redis {
            // Debounce across replicas: only the replica that claims the start runs it.
            match redis
                .claim_cold_start(t.slug(), cold.debounce_secs.duration())
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    pending = true;
                    continue;
                }
                Err(e) => {
                    slog::warn!(log, "redis unavailable for the cold-start debounce; starting from this replica";
                        "target" => t.slug(), "error" => e);
                }
            }
        }
        match probe
            .start
            .send(StartTarget {
                slug: t.slug().to_string(),
            })
            .await
        {
            Ok(StartOutcome::Started) | Ok(StartOutcome::AlreadyStarting) => pending = true,
            Ok(StartOutcome::NoCommand) => {}
            Err(e) => {
                slog::warn!(log, "could not reach the scheduler probe for a cold start";
                    "target" => t.slug(), "error" => e.to_string());
            }
        }
    }
    if !pending {
        // Nothing is coming up and nothing can be started: let the targets answer for
        // themselves (the scheduler may be wrong).
        return Ok(());
    }
    let deadline = Instant::now() + cold.wait_secs.duration();
    loop {
        if routable.iter().any(|t| !t.sched().is_cold()) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        actix_rt::time::sleep(WAIT_STEP.min(deadline - now)).await;
    }
    let phase = if routable.iter().any(|t| t.sched() == SchedStatus::Starting) {
        "starting"
    } else if routable.iter().any(|t| t.sched() == SchedStatus::Queued) {
        "queued"
    } else {
        "submitted"
    };
    Err(ApiError::ModelStarting {
        model: model.to_string(),
        phase,
        retry_after: cold.retry_after_secs.duration(),
    })
}
