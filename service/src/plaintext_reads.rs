//! The audit of plaintext reads of at-rest topics (docs/encryption.md, "At rest"): every
//! read that hands out a sealed version's plaintext — a poll or `/latest` answered with the
//! payload held in memory, a download, a preview — is counted per (topic, version, reader)
//! in memory, and the audit flusher writes the counts in one batched upsert per interval
//! (`plaintext_reads` table), keeping what it could not write for the next try. Bounded:
//! at most `MAX_ENTRIES` distinct keys wait; reads beyond are counted as dropped.
use crate::auth::Caller;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Distinct (topic, version, reader) keys waiting for the flusher at most.
pub const MAX_ENTRIES: usize = 100_000;

type Key = (i64, i64, String);

#[derive(Clone, Copy, Debug)]
pub(crate) struct Count {
    pub reads: u64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct PlaintextReads {
    waiting: std::sync::Mutex<HashMap<Key, Count>>,
}

impl PlaintextReads {
    /// Counts one plaintext read of `version` of topic `topic_id` by `caller` (internal
    /// reads by the system are not counted).
    pub(crate) fn record(&self, topic_id: i64, version: u64, caller: &Caller, at: DateTime<Utc>) {
        if matches!(caller, Caller::System) {
            return;
        }
        let key = (topic_id, version as i64, caller.who());
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

/// One row of the audit as the API shows it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PlaintextRead {
    pub version: u64,
    /// `token:<name>`, `user:<name>` or `anonymous`.
    pub reader: String,
    pub reads: u64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

impl crate::handle::Imprint {
    /// Writes the waiting plaintext-read counts in one batch (kept for the next try when
    /// Postgres says no). Returns how many keys were written.
    pub async fn flush_plaintext_reads(&self) -> crate::Result<usize> {
        let entries = self.inner.plaintext_reads.drain();
        if entries.is_empty() {
            return Ok(0);
        }
        match crate::store::plaintext_reads::upsert(self.pool(), &entries).await {
            Ok(()) => Ok(entries.len()),
            Err(e) => {
                self.inner.plaintext_reads.restore(entries);
                Err(e)
            }
        }
    }

    pub(crate) fn plaintext_reads(&self) -> &PlaintextReads {
        &self.inner.plaintext_reads
    }

    /// The plaintext reads of an at-rest topic, newest first (at most 1000): for the
    /// topic's publishers and admins (readers do not see who else read).
    pub async fn plaintext_read_audit(
        &self,
        caller: &Caller,
        topic: &imprint_domain::TopicName,
    ) -> crate::Result<Vec<PlaintextRead>> {
        let t = {
            let mut conn = self.pool().acquire().await?;
            crate::store::topics::require(&mut conn, topic, false).await?
        };
        caller.require_write(&t.name, &t.owner)?;
        self.flush_plaintext_reads().await?;
        crate::store::plaintext_reads::of_topic(self.pool(), t.id).await
    }
}
