//! The read model request handlers route with, published by the actors: the
//! [`directory::Directory`] of models, targets and clusters, each model's ranked snapshot,
//! each target's live state and lease, each cluster's scheduler state. Handlers read it
//! without sending a message; where they must ask an actor for something (a lease's
//! verdict, a cold start, a re-rank) they hold a `Recipient` of a message defined here,
//! never an actor's type. `actors/` imports this module, never the reverse.

pub mod cluster;
pub mod directory;
pub mod ranking;
pub mod target;
