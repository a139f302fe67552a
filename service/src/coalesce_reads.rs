//! The coalesced reads of one `Imprint` (the mechanism: `crate::coalesce`): version lists,
//! consumer lists, resolutions at a time and payload lookups, the count of the queries they
//! made, and the per-caller check of the read right on every shared answer.
use crate::auth::Caller;
use crate::coalesce::{Coalescer, Guarded, Missing};
use crate::error::Result;
use crate::Imprint;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Shared<T> = Arc<Guarded<T>>;

/// The coalesced reads of one `Imprint`.
pub(crate) struct Reads {
    pub versions: Coalescer<String, Shared<crate::model::Page<crate::model::Version>>>,
    pub consumers: Coalescer<String, Shared<crate::model::ConsumerList>>,
    pub resolve_at: Coalescer<String, Shared<(Option<imprint_domain::Resolution>, bool)>>,
    pub payloads: Coalescer<String, Shared<std::result::Result<crate::model::VersionPayload, Missing>>>,
    /// Postgres queries these reads made (each store call counts one).
    queries: AtomicU64,
    /// Requests answered from another's query.
    hits: AtomicU64,
    /// Moves when this node writes the consumer audit (part of consumer lists' keys).
    audit_epoch: AtomicU64,
}

impl Reads {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Reads {
            versions: Coalescer::new(ttl, max),
            consumers: Coalescer::new(ttl, max),
            resolve_at: Coalescer::new(ttl, max),
            // Inline payloads are up to a topic's inline limit (1 MiB by default) each.
            payloads: Coalescer::new(ttl, max.min(64)),
            queries: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            audit_epoch: AtomicU64::new(0),
        }
    }

    /// This node wrote the consumer audit: consumer lists are loaded again.
    pub fn audit_written(&self) {
        self.audit_epoch.fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_epoch(&self) -> u64 {
        self.audit_epoch.load(Ordering::Relaxed)
    }

    /// `n` queries were made by a coalesced load.
    pub fn queried(&self, n: u64) {
        self.queries.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("imprint_coalesced_queries_total").increment(n);
    }
}

impl Imprint {
    /// A read shared with identical concurrent ones, then checked against `caller`'s right
    /// to read the topic it is about (`Caller::require_read`, as `readable_topic`).
    pub(crate) async fn coalesced<T, F, Fut>(
        &self,
        which: impl FnOnce(&Reads) -> &Coalescer<String, Shared<T>>,
        key: String,
        caller: &Caller,
        load: F,
    ) -> Result<T>
    where
        T: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Guarded<T>>>,
    {
        let reads = &self.inner.coalesced;
        let before = reads.hits.load(Ordering::Relaxed);
        let g = which(reads).get(key, &reads.hits, || async { load().await.map(Arc::new) }).await?;
        if reads.hits.load(Ordering::Relaxed) != before {
            metrics::counter!("imprint_coalesced_hits_total").increment(1);
        }
        caller.require_read(&g.name, &g.owner, g.restricted)?;
        // And as the topic stands now, if its owner or restriction changed since the load
        // (the serving state follows every change): the stricter of the two answers.
        if let Some(now) = self.state().get(&g.name) {
            caller.require_read(&g.name, &now.owner, now.restricted)?;
        }
        Ok(g.value.clone())
    }

    /// The serving state's change sequence of a topic (0: not served here): part of every
    /// coalescing key, so a change this node has learnt of is never answered from before it.
    pub(crate) fn change_seq(&self, topic: &str) -> i64 {
        self.state().get(topic).map_or(0, |t| t.change_seq)
    }

    /// Postgres queries the coalesced reads have made (tests and docs/fairness.md).
    pub fn coalesced_queries(&self) -> u64 {
        self.inner.coalesced.queries.load(Ordering::Relaxed)
    }
}
