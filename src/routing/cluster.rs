//! One cluster's shared live state: its settings, its targets, the last scheduler
//! observation (published by its `SchedulerProbe`, read by `/jobs` and `/status`) and its
//! maintenance notice. Like [`crate::routing::target::Target`], handlers read it without messages.

use std::sync::Arc;
use std::time::SystemTime;

use actix::{Message, Recipient};
use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{ClusterSettings, SchedulerKind};
use crate::routing::target::Target;
use crate::scheduler::Observation;

/// How the last probe went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    /// No scheduler source configured.
    NotConfigured,
    /// Configured, no probe finished yet.
    Pending,
    Ok,
    /// The last probe failed or timed out: the scheduler state is unknown.
    Unknown,
}

impl ProbeState {
    pub fn name(self) -> &'static str {
        match self {
            ProbeState::NotConfigured => "none",
            ProbeState::Pending => "pending",
            ProbeState::Ok => "ok",
            ProbeState::Unknown => "unknown",
        }
    }
}

/// The last probe's result.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: ProbeState,
    pub observation: Observation,
    /// When the last probe finished.
    pub at: Option<SystemTime>,
}

pub struct ClusterState {
    pub name: String,
    pub settings: ClusterSettings,
    /// The cluster's targets, in catalog order.
    pub targets: Vec<Arc<Target>>,
    maintenance: ArcSwapOption<String>,
    snapshot: ArcSwap<Snapshot>,
    probe: ArcSwapOption<ProbeHandle>,
}

impl ClusterState {
    pub fn new(name: String, settings: ClusterSettings, targets: Vec<Arc<Target>>) -> Self {
        let state = if settings.scheduler == SchedulerKind::None {
            ProbeState::NotConfigured
        } else {
            ProbeState::Pending
        };
        let cluster = ClusterState {
            name,
            targets,
            maintenance: ArcSwapOption::empty(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                state,
                observation: Observation::default(),
                at: None,
            }),
            probe: ArcSwapOption::empty(),
            settings,
        };
        if cluster.settings.maintenance {
            cluster.set_maintenance(Some(cluster.settings.maintenance_notice.clone()));
        }
        cluster
    }

    /// The notice when the cluster is in maintenance (possibly empty), else `None`.
    pub fn maintenance(&self) -> Option<Arc<String>> {
        self.maintenance.load_full()
    }

    /// Puts the cluster in maintenance (`Some(notice)`) or takes it out (`None`). Takes
    /// effect for the next pick at once (leases check the targets' flag); routers re-rank
    /// when the probe is told (see [`Republish`]).
    pub fn set_maintenance(&self, notice: Option<String>) {
        let on = notice.is_some();
        self.maintenance.store(notice.map(Arc::new));
        for t in &self.targets {
            t.set_maintenance(on);
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Called by the cluster's SchedulerProbe only.
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Called by the cluster's SchedulerProbe when it starts.
    pub fn set_probe(&self, probe: ProbeHandle) {
        self.probe.store(Some(Arc::new(probe)));
    }

    pub fn probe(&self) -> Option<Arc<ProbeHandle>> {
        self.probe.load_full()
    }
}

/// What handlers may ask of a cluster's `SchedulerProbe`.
pub struct ProbeHandle {
    pub republish: Recipient<Republish>,
    pub start: Recipient<StartTarget>,
}

/// The cluster's maintenance flag changed: re-rank the routers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Republish;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// The start command was launched now.
    Started,
    /// It ran within the debounce period.
    AlreadyStarting,
    /// The target has no start command.
    NoCommand,
}

/// Run a cold target's start command (debounced).
#[derive(Message)]
#[rtype(result = "StartOutcome")]
pub struct StartTarget {
    pub slug: String,
}
