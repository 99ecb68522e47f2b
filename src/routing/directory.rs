//! The [`Directory`] handlers route with: every model, target and cluster, published
//! whole by the `Gateway` supervisor and swapped whole on reload.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::fixtures::ModelSpec;
use crate::routing::cluster::ClusterState;
use crate::routing::ranking::{Pin, Ranked};
use crate::routing::target::Target;

/// A model as handlers see it.
pub struct ModelEntry {
    pub spec: ModelSpec,
    pub targets: Vec<Arc<Target>>,
    /// The ranking its router publishes.
    pub ranked: Arc<ArcSwap<Ranked>>,
}

impl ModelEntry {
    /// The targets a request may use under `pin` (all of them without one).
    pub fn eligible<'a>(
        &'a self,
        pin: Option<&'a Pin>,
    ) -> impl Iterator<Item = &'a Arc<Target>> + 'a {
        self.targets
            .iter()
            .filter(move |t| pin.is_none_or(|p| p.matches(t)))
    }
}

/// Everything handlers need to route, published by the supervisor; swapped whole on reload.
#[derive(Default)]
pub struct Directory {
    /// Looked up on every request: foldhash, not SipHash (model names come from the
    /// catalog, so there is no flooding to defend against).
    pub models: foldhash::HashMap<String, Arc<ModelEntry>>,
    /// Model names in catalog order (for listings).
    pub model_order: Vec<String>,
    /// Every target in catalog order.
    pub targets: Vec<Arc<Target>>,
    /// Every cluster: named by a target, `clusters.json` or a `[clusters.<name>]` table.
    pub clusters: BTreeMap<String, Arc<ClusterState>>,
}

impl Directory {
    pub fn model(&self, name: &str) -> Option<&Arc<ModelEntry>> {
        self.models.get(name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterState>> {
        self.clusters.get(name)
    }
}
