//! `Gateway`: the root supervisor. Builds one `BackendActor` per target and one
//! `FederatedRouterActor` per model from the catalog, publishes the [`Directory`] handlers
//! read, and rebuilds any child whose mailbox closed (a panic ends an actor without a
//! supervised stop, so it watches `Addr::connected`). On reload it applies a new catalog
//! ([`ApplyCatalog`]): unchanged targets keep their actor and state, removed (or changed)
//! ones leave the directory at once and their actor stops when their last request ends,
//! new ones start, and every model gets a fresh router that ranks from live state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::actors::backend::{BackendActor, BackendSettings, CheckNow, Stop, Tick};
use crate::actors::router::FederatedRouterActor;
use crate::actors::scheduler::{SchedulerProbe, SetProbeRouters};
use crate::clock::Clock;
use crate::config::Settings;
use crate::fixtures::{Catalog, TargetSpec};
use crate::metrics::Metrics;
use crate::proxy::globus_compute::GlobusShared;
use crate::routing::cluster::ClusterState;
use crate::routing::directory::{Directory, ModelEntry};
use crate::routing::ranking::Ranked;
use crate::routing::target::Target;

/// How often the supervisor looks for dead children.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

struct BackendSlot {
    target: Arc<Target>,
    settings: BackendSettings,
    routers: Vec<String>,
    addr: Addr<BackendActor>,
}

struct ProbeSlot {
    cluster: Arc<ClusterState>,
    /// Models whose routers it notifies.
    models: Vec<String>,
    addr: Addr<SchedulerProbe>,
}

struct RouterSlot {
    entry: Arc<ModelEntry>,
    addr: Addr<FederatedRouterActor>,
}

pub struct Gateway {
    settings: Arc<Settings>,
    clock: Arc<dyn Clock>,
    directory: Arc<ArcSwap<Directory>>,
    log: slog::Logger,
    backends: Vec<BackendSlot>,
    routers: HashMap<String, RouterSlot>,
    probes: Vec<ProbeSlot>,
    catalog: Catalog,
    /// Built but not yet started (started with the supervisor).
    pending: Vec<PendingModel>,
    /// Targets removed by a reload whose requests are still running; their actor stops
    /// when the last one ends.
    draining: Vec<BackendSlot>,
    metrics: Arc<Metrics>,
    /// Globus Compute access, for clusters whose scheduler is a Globus Compute function.
    globus: Option<Arc<GlobusShared>>,
}

struct PendingModel {
    entry: Arc<ModelEntry>,
}

impl Gateway {
    /// Builds the targets and models and publishes the directory at once (requests can be
    /// routed before the actors start); the actors start with the supervisor.
    pub fn new(
        settings: Arc<Settings>,
        catalog: Catalog,
        clock: Arc<dyn Clock>,
        directory: Arc<ArcSwap<Directory>>,
        log: slog::Logger,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut gateway = Gateway {
            settings,
            clock,
            directory,
            log,
            backends: Vec::new(),
            routers: HashMap::new(),
            probes: Vec::new(),
            catalog,
            pending: Vec::new(),
            draining: Vec::new(),
            metrics,
            globus: None,
        };
        gateway.build();
        gateway
    }

    /// Lets the scheduler probes run Globus Compute functions (`scheduler = "globus-compute"`).
    pub fn with_globus(mut self, globus: Arc<GlobusShared>) -> Self {
        self.globus = Some(globus);
        self
    }

    fn backend_settings(&self, health_path: Option<&str>) -> BackendSettings {
        let s = &self.settings;
        let path = health_path.unwrap_or(&s.health.path);
        BackendSettings {
            health_path: (!path.is_empty()).then(|| path.to_string()),
            health_interval: s.health.interval_secs.duration(),
            health_timeout: s.health.timeout_ms.duration(),
            unhealthy_threshold: s.health.unhealthy_threshold.get(),
            failure_threshold: s.breaker.failure_threshold.get(),
            open_for: s.breaker.open_secs.duration(),
            connect_timeout: s.upstream.connect_timeout_ms.duration(),
        }
    }

    /// A new target from its spec, with its upstream key read from the environment.
    fn make_target(&self, spec: &TargetSpec) -> Arc<Target> {
        let api_key = spec
            .api_key_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok())
            .filter(|k| !k.is_empty());
        if let (Some(var), None) = (&spec.api_key_env, &api_key) {
            slog::warn!(self.log, "upstream API key variable is not set";
                "target" => &spec.slug, "variable" => var);
        }
        let target = Target::new(
            spec.clone(),
            api_key,
            self.settings.upstream.response_timeout_secs.duration(),
        );
        if target.api_key.is_some() && target.authorization().is_none() {
            // Never the value itself. Requests go without it (the target will say 401).
            slog::warn!(self.log, "upstream API key cannot be sent in a header (control characters?)";
                "target" => &spec.slug, "variable" => spec.api_key_env.as_deref().unwrap_or(""));
        }
        Arc::new(target)
    }

    /// Builds targets and model entries from the catalog and publishes the directory.
    fn build(&mut self) {
        let targets: Vec<Arc<Target>> = self
            .catalog
            .targets
            .iter()
            .map(|spec| self.make_target(spec))
            .collect();
        self.publish_directory(targets);
    }

    /// Builds the model entries over `targets` (queued in `pending` for their routers to
    /// start) and publishes the directory.
    fn publish_directory(&mut self, targets: Vec<Arc<Target>>) {
        let by_slug: HashMap<&str, &Arc<Target>> = targets.iter().map(|t| (t.slug(), t)).collect();
        let mut directory = Directory {
            targets: targets.clone(),
            ..Directory::default()
        };
        for spec in &self.catalog.models {
            let model_targets: Vec<Arc<Target>> = spec
                .targets
                .iter()
                .filter_map(|slug| by_slug.get(slug.as_str()).map(|t| Arc::clone(t)))
                .collect();
            let entry = Arc::new(ModelEntry {
                spec: spec.clone(),
                ranked: Arc::new(ArcSwap::from_pointee(Ranked::rank(&model_targets))),
                targets: model_targets,
            });
            directory.model_order.push(spec.name.clone());
            directory
                .models
                .insert(spec.name.clone(), Arc::clone(&entry));
            self.pending.push(PendingModel { entry });
        }
        let mut names: Vec<String> = self.settings.clusters.keys().cloned().collect();
        names.extend(self.catalog.clusters.iter().map(|c| c.name.clone()));
        names.extend(targets.iter().map(|t| t.spec.cluster.clone()));
        for name in names {
            if directory.clusters.contains_key(&name) {
                continue;
            }
            let mut settings = self
                .settings
                .clusters
                .get(&name)
                .cloned()
                .unwrap_or_default();
            // FIRST keeps its qstat function in the cluster's fixture config.
            if let Some(spec) = self.catalog.clusters.iter().find(|c| c.name == name) {
                for (value, key) in [
                    (&mut settings.qstat_endpoint_uuid, "qstat_endpoint_uuid"),
                    (&mut settings.qstat_function_uuid, "qstat_function_uuid"),
                ] {
                    if value.is_empty() {
                        *value = spec.config_text(key).unwrap_or_default();
                    }
                }
            }
            let members: Vec<Arc<Target>> = targets
                .iter()
                .filter(|t| t.spec.cluster == name)
                .cloned()
                .collect();
            directory.clusters.insert(
                name.clone(),
                Arc::new(ClusterState::new(name, settings, members)),
            );
        }
        self.directory.store(Arc::new(directory));
    }

    /// Starts one router per model and one backend actor per target.
    fn start_children(&mut self) {
        let mut model_routers: HashMap<String, Vec<String>> = HashMap::new();
        for PendingModel { entry } in std::mem::take(&mut self.pending) {
            for t in &entry.targets {
                model_routers
                    .entry(t.slug().to_string())
                    .or_default()
                    .push(entry.spec.name.clone());
            }
            let addr = start_router(&entry);
            self.routers
                .insert(entry.spec.name.clone(), RouterSlot { entry, addr });
        }
        let targets = self.directory.load().targets.clone();
        for target in targets {
            let routers = model_routers.remove(target.slug()).unwrap_or_default();
            self.start_backend(target, routers);
        }
        let clusters: Vec<Arc<ClusterState>> =
            self.directory.load().clusters.values().cloned().collect();
        for cluster in clusters {
            let mut models: Vec<String> = Vec::new();
            for slot in self
                .backends
                .iter()
                .filter(|b| b.target.spec.cluster == cluster.name)
            {
                for m in &slot.routers {
                    if !models.contains(m) {
                        models.push(m.clone());
                    }
                }
            }
            let addr = self.start_probe(&cluster, &models);
            self.probes.push(ProbeSlot {
                cluster,
                models,
                addr,
            });
        }
    }

    fn start_probe(&self, cluster: &Arc<ClusterState>, models: &[String]) -> Addr<SchedulerProbe> {
        SchedulerProbe::new(
            Arc::clone(cluster),
            self.router_addrs(models),
            self.settings.cold_start.clone(),
            self.log.new(slog::o!("actor" => "scheduler_probe")),
        )
        .with_globus(self.globus.clone())
        .start()
    }

    /// Starts a target's `BackendActor`, pushing to the routers of `routers` (model names).
    fn start_backend(&mut self, target: Arc<Target>, routers: Vec<String>) {
        let settings = self.backend_settings(target.spec.health_path.as_deref());
        let addr = BackendActor::new(
            Arc::clone(&target),
            settings.clone(),
            Arc::clone(&self.clock),
            self.router_addrs(&routers),
            false,
            &self.metrics,
        )
        .start();
        self.backends.push(BackendSlot {
            target,
            settings,
            routers,
            addr,
        });
    }

    fn router_addrs(&self, models: &[String]) -> Vec<Addr<FederatedRouterActor>> {
        models
            .iter()
            .filter_map(|m| self.routers.get(m).map(|r| r.addr.clone()))
            .collect()
    }

    /// Rebuilds children whose actor died. A rebuilt router re-ranks from the targets' live
    /// state; a rebuilt backend starts half-open with unknown health and checks at once.
    fn watch(&mut self) {
        self.draining.retain(|slot| {
            if slot.target.in_flight() > 0 {
                return true;
            }
            slot.addr.do_send(Stop);
            false
        });
        let mut routers_rebuilt = false;
        for (name, slot) in self.routers.iter_mut() {
            if !slot.addr.connected() {
                slog::error!(self.log, "router actor died; rebuilding it"; "model" => name);
                slot.addr = start_router(&slot.entry);
                routers_rebuilt = true;
            }
        }
        let mut rebuilt = Vec::new();
        for (i, slot) in self.backends.iter().enumerate() {
            if routers_rebuilt || !slot.addr.connected() {
                rebuilt.push((i, !slot.addr.connected()));
            }
        }
        for (i, crashed) in rebuilt {
            let routers = self.router_addrs(&self.backends[i].routers);
            let slot = &mut self.backends[i];
            if crashed {
                slog::error!(self.log, "backend actor died; rebuilding it"; "target" => slot.target.slug());
                slot.target
                    .restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                slot.addr = BackendActor::new(
                    Arc::clone(&slot.target),
                    slot.settings.clone(),
                    Arc::clone(&self.clock),
                    routers,
                    true,
                    &self.metrics,
                )
                .start();
            } else {
                // Alive, but it pushes to routers that were replaced: give it the new ones.
                slot.addr.do_send(SetRouters(routers));
            }
        }
        // Scheduler probes: a rebuilt one probes at once and re-applies the targets'
        // status; the maintenance notice lives in the ClusterState and survives.
        for i in 0..self.probes.len() {
            let crashed = !self.probes[i].addr.connected();
            if !crashed && !routers_rebuilt {
                continue;
            }
            if crashed {
                slog::error!(self.log, "scheduler probe died; rebuilding it";
                    "cluster" => &self.probes[i].cluster.name);
                let cluster = Arc::clone(&self.probes[i].cluster);
                let models = self.probes[i].models.clone();
                self.probes[i].addr = self.start_probe(&cluster, &models);
            } else {
                let routers = self.router_addrs(&self.probes[i].models);
                self.probes[i].addr.do_send(SetProbeRouters(routers));
            }
        }
    }
}

/// What a reload changed, by target id.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSummary {
    pub kept: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same id, new definition: the old actor drains, a new one starts.
    pub replaced: Vec<String>,
    pub models: usize,
    /// Removed or replaced targets still finishing requests (their actors stop after).
    pub draining: usize,
}

/// Apply a new (already validated) catalog and the settings new actors start with.
#[derive(Message)]
#[rtype(result = "ReloadSummary")]
pub struct ApplyCatalog {
    pub catalog: Catalog,
    pub settings: Arc<Settings>,
}

impl Handler<ApplyCatalog> for Gateway {
    type Result = MessageResult<ApplyCatalog>;

    fn handle(&mut self, msg: ApplyCatalog, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.apply(msg.catalog, msg.settings))
    }
}

impl Gateway {
    fn apply(&mut self, catalog: Catalog, settings: Arc<Settings>) -> ReloadSummary {
        self.settings = settings;
        self.catalog = catalog;
        let mut summary = ReloadSummary::default();
        let mut old: HashMap<String, BackendSlot> = self
            .backends
            .drain(..)
            .map(|slot| (slot.target.slug().to_string(), slot))
            .collect();
        let mut kept: Vec<BackendSlot> = Vec::new();
        let mut targets: Vec<Arc<Target>> = Vec::new();
        let mut fresh: Vec<Arc<Target>> = Vec::new();
        for spec in self.catalog.targets.clone() {
            match old.remove(&spec.slug) {
                Some(slot) if *slot.target.spec == spec => {
                    summary.kept.push(spec.slug.clone());
                    targets.push(Arc::clone(&slot.target));
                    kept.push(slot);
                }
                other => {
                    if let Some(slot) = other {
                        summary.replaced.push(spec.slug.clone());
                        self.draining.push(slot);
                    } else {
                        summary.added.push(spec.slug.clone());
                    }
                    let target = self.make_target(&spec);
                    targets.push(Arc::clone(&target));
                    fresh.push(target);
                }
            }
        }
        for (slug, slot) in old {
            summary.removed.push(slug);
            self.draining.push(slot);
        }
        summary.removed.sort();
        // Drained actors push to no router; the watch stops them when idle.
        for slot in &self.draining {
            slot.addr.do_send(SetRouters(Vec::new()));
        }
        // Fresh routers for every model (ranking from the targets' live state); the old
        // ones stop when their last address is dropped.
        self.routers.clear();
        self.publish_directory(targets);
        let mut model_routers: HashMap<String, Vec<String>> = HashMap::new();
        for PendingModel { entry } in std::mem::take(&mut self.pending) {
            for t in &entry.targets {
                model_routers
                    .entry(t.slug().to_string())
                    .or_default()
                    .push(entry.spec.name.clone());
            }
            let addr = start_router(&entry);
            self.routers
                .insert(entry.spec.name.clone(), RouterSlot { entry, addr });
        }
        for mut slot in kept {
            slot.routers = model_routers.remove(slot.target.slug()).unwrap_or_default();
            slot.addr
                .do_send(SetRouters(self.router_addrs(&slot.routers)));
            self.backends.push(slot);
        }
        for target in fresh {
            let routers = model_routers.remove(target.slug()).unwrap_or_default();
            self.start_backend(target, routers);
        }
        // Keep catalog order (listings and /health/detailed follow it).
        let order: HashMap<String, usize> = self
            .catalog
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.slug.clone(), i))
            .collect();
        self.backends
            .sort_by_key(|s| order.get(s.target.slug()).copied().unwrap_or(usize::MAX));
        summary.models = self.routers.len();
        summary.draining = self.draining.len();
        summary
    }
}

fn start_router(entry: &Arc<ModelEntry>) -> Addr<FederatedRouterActor> {
    FederatedRouterActor::new(
        entry.spec.name.clone(),
        entry.targets.clone(),
        Arc::clone(&entry.ranked),
    )
    .start()
}

impl Actor for Gateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_children();
        ctx.run_interval(WATCH_INTERVAL, |act, _| act.watch());
    }
}

/// Replace the routers a backend pushes its changes to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRouters(pub Vec<Addr<FederatedRouterActor>>);

impl Handler<SetRouters> for BackendActor {
    type Result = ();

    fn handle(&mut self, msg: SetRouters, _: &mut Context<Self>) {
        self.set_routers(msg.0);
    }
}

/// Re-evaluate every backend's time-based state now (after a test moved its clock).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TickAll;

impl Handler<TickAll> for Gateway {
    type Result = ();

    fn handle(&mut self, _: TickAll, _: &mut Context<Self>) {
        for slot in &self.backends {
            slot.addr.do_send(Tick);
        }
    }
}

/// Probe every cluster's scheduler now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProbeAll;

impl Handler<ProbeAll> for Gateway {
    type Result = ();

    fn handle(&mut self, _: ProbeAll, _: &mut Context<Self>) {
        for slot in &self.probes {
            slot.addr.do_send(crate::actors::scheduler::ProbeNow);
        }
    }
}

/// Run every health check now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckAll;

impl Handler<CheckAll> for Gateway {
    type Result = ();

    fn handle(&mut self, _: CheckAll, _: &mut Context<Self>) {
        for slot in &self.backends {
            slot.addr.do_send(CheckNow);
        }
    }
}

/// Inject a panic into one target's BackendActor (debug builds; tests only).
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CrashBackend(pub String);

#[cfg(debug_assertions)]
impl Handler<CrashBackend> for Gateway {
    type Result = bool;

    fn handle(&mut self, msg: CrashBackend, _: &mut Context<Self>) -> bool {
        match self.backends.iter().find(|s| s.target.slug() == msg.0) {
            Some(slot) => {
                slot.addr.do_send(crate::actors::backend::Crash);
                true
            }
            None => false,
        }
    }
}

/// Inject a panic into one cluster's scheduler probe (debug builds; tests only).
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CrashProbe(pub String);

#[cfg(debug_assertions)]
impl Handler<CrashProbe> for Gateway {
    type Result = bool;

    fn handle(&mut self, msg: CrashProbe, _: &mut Context<Self>) -> bool {
        match self.probes.iter().find(|s| s.cluster.name == msg.0) {
            Some(slot) => {
                slot.addr.do_send(crate::actors::scheduler::Crash);
                true
            }
            None => false,
        }
    }
}

/// Inject a panic into one model's router (debug builds; tests only).
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CrashRouter(pub String);

#[cfg(debug_assertions)]
impl Handler<CrashRouter> for Gateway {
    type Result = bool;

    fn handle(&mut self, msg: CrashRouter, _: &mut Context<Self>) -> bool {
        match self.routers.get(&msg.0) {
            Some(slot) => {
                slot.addr.do_send(crate::actors::router::Crash);
                true
            }
            None => false,
        }
    }
}
