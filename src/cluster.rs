//! One cluster's shared live state: its settings, its targets, the last scheduler
//! observation (published by its `SchedulerProbe`, read by `/jobs` and `/status`) and its
//! maintenance notice. Like [`crate::target::Target`], handlers read it without messages.

use std::sync::Arc;
use std::time::SystemTime;

use actix::Addr;
use arc_swap::{ArcSwap, ArcSwapOption};

use crate::actors::scheduler::SchedulerProbe;
use crate::config::{ClusterSettings, SchedulerKind};
use crate::scheduler::Observation;
use crate::target::Target;

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
    probe: ArcSwapOption<Addr<SchedulerProbe>>,
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
    /// when the probe is told (see `actors::scheduler::Republish`).
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

    pub(crate) fn set_probe(&self, addr: Addr<SchedulerProbe>) {
        self.probe.store(Some(Arc::new(addr)));
    }

    pub fn probe(&self) -> Option<Arc<Addr<SchedulerProbe>>> {
        self.probe.load_full()
    }
}
