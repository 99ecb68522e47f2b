//! `QuotaActor`, one per live subject, owns its state's life: it writes the day and month
//! counters to the database every `quotas.flush_interval_ms` (and when it stops), and stops
//! itself once the subject has been idle for `quotas.idle_secs`, retiring the state from the
//! registry. `QuotaSupervisor` starts one per new subject and rebuilds any that died (a
//! panic in an actor is not a supervised stop): the state lives on in the registry, so a
//! crash loses nothing, and the new actor resumes the flushes.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;

use super::limits::Subject;
use super::math::Window;
use super::registry::QuotaRegistry;
use super::state::{Pending, SubjectState};
use crate::store::now_ms;

/// How often the supervisor looks for dead actors.
const WATCH_EVERY: Duration = Duration::from_millis(250);

pub struct QuotaActor {
    state: Arc<SubjectState>,
    registry: Arc<QuotaRegistry>,
    flush_every: Duration,
    idle_ms: i64,
}

impl QuotaActor {
    /// Writes pending counts; on failure they go back to the state for the next flush.
    fn flush(&self, ctx: &mut Context<Self>) {
        let pending = self.state.take_pending();
        if pending.day.requests == 0
            && pending.day.tokens == 0
            && pending.month.requests == 0
            && pending.month.tokens == 0
        {
            return;
        }
        let fut = write(Arc::clone(&self.registry), Arc::clone(&self.state), pending);
        ctx.spawn(fut.into_actor(self));
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.flush(ctx);
        let idle = now_ms() - self.state.last_used_ms() >= self.idle_ms;
        if idle && self.registry.retire(&self.state) {
            // Retired: nobody can count on this state any more; write what is left.
            self.flush(ctx);
            ctx.stop();
        }
    }
}

async fn write(registry: Arc<QuotaRegistry>, state: Arc<SubjectState>, p: Pending) {
    let key = state.subject.key().to_string();
    let mut failed = Pending {
        day: p.day,
        month: p.month,
    };
    failed.day.requests = 0;
    failed.day.tokens = 0;
    failed.month.requests = 0;
    failed.month.tokens = 0;
    for (window, count, slot) in [
        (Window::Day, p.day, &mut failed.day),
        (Window::Month, p.month, &mut failed.month),
    ] {
        if count.requests == 0 && count.tokens == 0 {
            continue;
        }
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let result = registry
            .store
            .add_usage(
                key.clone(),
                window.name().into(),
                count.start,
                to_i64(count.requests),
                to_i64(count.tokens),
            )
            .await;
        if let Err(e) = result {
            slog::warn!(registry.log, "quota counters not written; retrying at the next flush";
                "subject" => &key, "window" => window.name(), "error" => e.to_string());
            *slot = count;
        }
    }
    state.restore_pending(failed);
}

impl Actor for QuotaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.flush_every, |actor, ctx| actor.tick(ctx));
    }
}

/// Debug builds only: panics inside the actor (tests inject faults with it).
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

#[cfg(debug_assertions)]
impl Handler<Crash> for QuotaActor {
    type Result = ();

    #[allow(clippy::panic)]
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("injected fault in QuotaActor {}", self.state.subject);
    }
}

/// Writes a subject's pending counts now (admin reads and tests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushNow;

impl Handler<FlushNow> for QuotaActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushNow, _: &mut Context<Self>) -> Self::Result {
        let pending = self.state.take_pending();
        Box::pin(write(
            Arc::clone(&self.registry),
            Arc::clone(&self.state),
            pending,
        ))
    }
}

pub struct QuotaSupervisor {
    registry: Arc<QuotaRegistry>,
    /// Weak: the registry and the actor hold the state; the supervisor only watches.
    actors: HashMap<Subject, (Weak<SubjectState>, Addr<QuotaActor>)>,
    flush_every: Duration,
    idle_ms: i64,
    /// Actors rebuilt after a crash.
    pub restarts: u64,
}

impl QuotaSupervisor {
    /// Starts the supervisor and connects it to the registry.
    pub fn start(
        registry: Arc<QuotaRegistry>,
        settings: &crate::config::Quotas,
    ) -> Addr<QuotaSupervisor> {
        let sup = QuotaSupervisor {
            registry: Arc::clone(&registry),
            actors: HashMap::new(),
            flush_every: settings.flush_interval_ms.duration(),
            idle_ms: i64::try_from(settings.idle_secs.get().saturating_mul(1000))
                .unwrap_or(i64::MAX),
            restarts: 0,
        }
        .start();
        registry.set_supervisor(sup.clone());
        sup
    }

    fn spawn_actor(&self, state: Arc<SubjectState>) -> Addr<QuotaActor> {
        QuotaActor {
            state,
            registry: Arc::clone(&self.registry),
            flush_every: self.flush_every,
            idle_ms: self.idle_ms,
        }
        .start()
    }

    fn watch(&mut self) {
        let mut gone = Vec::new();
        let mut crashed = Vec::new();
        for (subject, (state, addr)) in &self.actors {
            if addr.connected() {
                continue;
            }
            if state.upgrade().is_some_and(|s| self.registry.holds(&s)) {
                crashed.push(subject.clone());
            } else {
                gone.push(subject.clone());
            }
        }
        for subject in gone {
            self.actors.remove(&subject);
        }
        for subject in crashed {
            let Some(state) = self.actors.remove(&subject).and_then(|(w, _)| w.upgrade()) else {
                continue;
            };
            slog::error!(self.registry.log, "quota actor died; rebuilding it";
                "subject" => subject.key());
            self.restarts += 1;
            let addr = self.spawn_actor(Arc::clone(&state));
            self.actors.insert(subject, (Arc::downgrade(&state), addr));
        }
    }
}

impl Actor for QuotaSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(WATCH_EVERY, |sup, _| sup.watch());
    }
}

/// A new subject: start its actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Spawn(pub Arc<SubjectState>);

impl Handler<Spawn> for QuotaSupervisor {
    type Result = ();

    fn handle(&mut self, Spawn(state): Spawn, _: &mut Context<Self>) {
        let weak = Arc::downgrade(&state);
        let subject = state.subject.clone();
        let addr = self.spawn_actor(state);
        self.actors.insert(subject, (weak, addr));
    }
}

/// The actor of a subject (tests, and the admin API's flush before reading the database).
#[derive(Message)]
#[rtype(result = "Option<Addr<QuotaActor>>")]
pub struct ActorOf(pub Subject);

impl Handler<ActorOf> for QuotaSupervisor {
    type Result = Option<Addr<QuotaActor>>;

    fn handle(&mut self, ActorOf(subject): ActorOf, _: &mut Context<Self>) -> Self::Result {
        self.actors.get(&subject).map(|(_, a)| a.clone())
    }
}

/// How many actors were rebuilt after a crash.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Restarts;

impl Handler<Restarts> for QuotaSupervisor {
    type Result = u64;

    fn handle(&mut self, _: Restarts, _: &mut Context<Self>) -> u64 {
        self.restarts
    }
}

/// Flushes every subject's pending counts (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushAll;

impl Handler<FlushAll> for QuotaSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushAll, _: &mut Context<Self>) -> Self::Result {
        let addrs: Vec<_> = self.actors.values().map(|(_, a)| a.clone()).collect();
        Box::pin(async move {
            for a in addrs {
                let _ = a.send(FlushNow).await;
            }
        })
    }
}
