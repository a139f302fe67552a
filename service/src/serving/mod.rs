//! The in-memory serving state: what resolution needs *now* of every topic — the active
//! pins, the best live version per scope selector, and those versions (with the payloads
//! of small inline ones and their poll answers pre-serialised) — so polls never touch
//! Postgres. History (time travel, rollbacks, the console timeline) is read from Postgres
//! on demand (`Imprint::topic_history`). Kept current by LISTEN/NOTIFY (one topic at a
//! time) and a safety net that compares change sequences and reloads only the topics
//! that differ; readers take an `Arc` snapshot of a topic and never block writers for long.
//!
//! One concern per file, each depending only on the ones before it:
//! `served` (what is held of a topic and a version, the pre-serialised update),
//! `waiters` (the long polls registered on a topic), `load` (reading the present from
//! Postgres), `state` (`ServingState`: the map, installing loads, applying own publishes,
//! waking waiters), `follow` (LISTEN/NOTIFY and the safety net).
mod follow;
mod load;
mod served;
mod state;
mod waiters;

/// The NOTIFY channel every change is announced on; the payload is the topic id.
pub use crate::store::CHANGE_CHANNEL;
pub use follow::follow_changes;
pub(crate) use load::histories;
pub use served::{ApolloServed, OfrepServed, ServedVersion, ServingTopic, SpringServed, INLINE_POLL_BYTES};
pub use state::{ServingState, Waiter};
