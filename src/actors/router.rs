//! `FederatedRouterActor`: one per model. Owns the model's ranking of its targets (by
//! routing tier, then file order) and publishes it as a [`Ranked`] snapshot, re-ranked when
//! a target changes tier; handlers pick from the snapshot with
//! [`crate::routing::ranking::pick`].

use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::routing::ranking::Ranked;
use crate::routing::target::Target;

pub struct FederatedRouterActor {
    model: String,
    targets: Vec<Arc<Target>>,
    published: Arc<ArcSwap<Ranked>>,
}

impl FederatedRouterActor {
    pub fn new(model: String, targets: Vec<Arc<Target>>, published: Arc<ArcSwap<Ranked>>) -> Self {
        FederatedRouterActor {
            model,
            targets,
            published,
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    fn republish(&self) {
        self.published.store(Arc::new(Ranked::rank(&self.targets)));
    }
}

impl Actor for FederatedRouterActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.republish();
    }
}

/// A target of this model changed tier: re-rank.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TargetChanged;

impl Handler<TargetChanged> for FederatedRouterActor {
    type Result = ();

    fn handle(&mut self, _: TargetChanged, _: &mut Context<Self>) {
        self.republish();
    }
}

/// Make this actor panic (debug builds only; tests inject it).
#[cfg(debug_assertions)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

#[cfg(debug_assertions)]
impl Handler<Crash> for FederatedRouterActor {
    type Result = ();

    #[allow(clippy::panic)]
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("injected fault in FederatedRouterActor {}", self.model);
    }
}
