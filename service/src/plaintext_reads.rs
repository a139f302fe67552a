//! The audit of plaintext reads of at-rest topics (docs/encryption.md, "At rest"): every
//! read that hands out a sealed version's plaintext — a poll or `/latest` answered with the
//! payload held in memory, a download, a preview — is counted per (topic, version, reader)
//! in memory, and the audit flusher writes the counts in one batched upsert per interval
//! (`plaintext_reads` table), keeping what it could not write for the next try. Bounded:
//! at most `MAX_ENTRIES` distinct keys wait; reads beyond are counted as dropped.
use crate::auth::Caller;
pub use crate::model::PlaintextRead;
pub(crate) use crate::store::plaintext_reads::Count;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Distinct (topic, version, reader) keys waiting for the flusher at most.
pub const MAX_ENTRIES: usize = 100_000;

type Key = (i64, i64, String);

#[derive(Default)]
pub struct PlaintextReads {
    waiting: std::sync::Mutex<HashMap<Key, Count>>,
    /// Held by a flush from its drain to its write: a flush (the audit's read) waits for
    /// one under way, so what was drained is in Postgres when it returns.
    pub(crate) flushing: tokio::sync::Mutex<()>,
}

impl PlaintextReads {
    /// Counts one plaintext read of `version` of topic `topic_id` by `caller` (internal
    /// reads by the system are not counted).
    pub(crate) fn record(&self, topic_id: i64, version: u64, caller: &Caller, at: DateTime<Utc>) {
        if matches!(caller, Caller::System) {
            return;
        }
        self.record_as(topic_id, version, caller.who(), at);
    }

    /// Counts one plaintext read by a reader that is not a `Caller` (an Apollo client,
    /// known by its app id: `apollo:<app id>`).
    pub(crate) fn record_as(&self, topic_id: i64, version: u64, reader: String, at: DateTime<Utc>) {
        let key = (topic_id, version as i64, reader);
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = w.get_mut(&key) {
            c.reads += 1;
            c.last_at = c.last_at.max(at);
            return;
        }
        if w.len() >= MAX_ENTRIES {
            metrics::counter!("imprint_plaintext_reads_dropped_total").increment(1);
            return;
        }
        w.insert(key, Count { reads: 1, first_at: at, last_at: at });
    }

    /// Everything waiting, taken out.
    pub(crate) fn drain(&self) -> Vec<(Key, Count)> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect()
    }

    /// Puts back what could not be written (merged with what came meanwhile).
    pub(crate) fn restore(&self, entries: Vec<(Key, Count)>) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for (k, c) in entries {
            let full = w.len() >= MAX_ENTRIES;
            match w.get_mut(&k) {
                Some(n) => {
                    n.reads += c.reads;
                    n.first_at = n.first_at.min(c.first_at);
                    n.last_at = n.last_at.max(c.last_at);
                }
                None if !full => {
                    w.insert(k, c);
                }
                None => metrics::counter!("imprint_plaintext_reads_dropped_total").increment(c.reads),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
