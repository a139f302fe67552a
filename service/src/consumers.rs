//! The consumer audit's durable side: writing buffered observations, reading who
//! consumes a topic, lag and propagation.
use crate::audit::{Key, Observation};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{ConsumerFilter, ConsumerInfo, ConsumerList, Propagation};
use crate::{cursor, store};
use chrono::Duration;
use imprint_domain::{Labels, Selector};
use std::collections::BTreeMap;

/// A consumer not seen for this long is "stale" (listed after the failing and lagging).
pub const STALE_AFTER_MINUTES: i64 = 5;

impl Imprint {
    /// Writes the buffered observations. Returns how many were written.
    pub async fn flush_audit(&self) -> Result<usize> {
        let entries = self.audit().drain(self.now());
        if entries.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let cols = columns(&entries);
        match store::consumers::upsert(self.pool(), &cols).await {
            Ok(()) => {
                let mut topics = cols.topic_ids.clone();
                topics.sort_unstable();
                topics.dedup();
                let max = i64::try_from(self.config().max_consumers_per_topic).unwrap_or(i64::MAX);
                match store::consumers::trim(self.pool(), &topics, max).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!("imprint_audit_dropped_total", "reason" => "topic_cap").increment(n);
                        tracing::warn!(dropped = n, max, "consumers over the per-topic cap were forgotten");
                    }
                    Err(e) => tracing::warn!(error = %e, "trimming consumers failed"),
                }
                if self.state().has_listeners() {
                    self.state().announce(&self.state().names_of(&topics));
                }
                metrics::counter!("imprint_audit_flushed_total").increment(entries.len() as u64);
                metrics::histogram!("imprint_audit_flush_seconds").record(started.elapsed().as_secs_f64());
                Ok(entries.len())
            }
            Err(e) => {
                metrics::counter!("imprint_audit_flush_failures_total").increment(1);
                self.audit().restore(entries);
                Err(e)
            }
        }
    }

    /// Sets `imprint_lagging_nodes{topic}`: nodes seen in the last 5 minutes whose last
    /// poll held another version than they should have.
    pub async fn update_lag_gauges(&self) -> Result<()> {
        let since = self.now() - Duration::minutes(5);
        for (topic, n) in store::consumers::lagging_per_topic(self.pool(), since).await? {
            metrics::gauge!("imprint_lagging_nodes", "topic" => topic).set(n as f64);
        }
        Ok(())
    }

    /// How a version spread: for each node holding it, how long after the publish the
    /// audit first saw it there; `total` counts the nodes that hold or should hold it.
    pub async fn propagation(&self, caller: &Caller, topic: &str, version: u64) -> Result<Propagation> {
        let t = self.readable_topic(caller, topic).await?;
        let created_at = store::versions::created_at(self.pool(), t.id, version as i64)
            .await?
            .ok_or(Error::VersionNotFound { topic: t.name.clone(), version })?;
        let rows = store::consumers::holding(self.pool(), t.id, version as i64).await?;
        let mut after: Vec<f64> = rows
            .iter()
            .filter(|(v, _)| *v == Some(version as i64))
            .filter_map(|(_, since)| *since)
            .map(|s| (s - created_at).num_milliseconds().max(0) as f64 / 1000.0)
            .collect();
        after.sort_by(|a, b| a.total_cmp(b));
        Ok(Propagation { version, created_at, total: rows.len() as u64, seconds_to_reach: after })
    }

    /// Deletes consumers not seen for `older_than`.
    pub async fn expire_consumers(&self, older_than: Duration) -> Result<u64> {
        store::consumers::expire(self.pool(), self.now() - older_than).await
    }

    /// Who consumes a topic: each instance with the version it holds and the one it should,
    /// a page at a time (`by_version` and `total` count every match, not just the page).
    pub async fn consumers(&self, caller: &Caller, topic: &str, filter: &ConsumerFilter) -> Result<ConsumerList> {
        let limit = match filter.limit {
            None => 100_000,
            l => cursor::limit(l)? as usize,
        };
        let offset = filter.cursor.as_deref().map(cursor::decode).transpose()?.unwrap_or(0).max(0) as usize;
        let t = self.readable_topic(caller, topic).await?;
        let rows = store::consumers::list(self.pool(), t.id, filter.labels.as_ref().map(Selector::to_json)).await?;
        let serving = self.state().get(&t.name);
        // "Lagging" looks a grace period back: the topic's history, read once.
        let history = self.history_of(&mut *self.pool().acquire().await?, t.id).await?;
        let now = self.now();
        let grace_ago = now - Duration::from_std(self.config().lag_grace).unwrap_or(Duration::seconds(60));
        let mut by_version = BTreeMap::new();
        let mut consumers = Vec::new();
        let mut groups: BTreeMap<String, crate::model::LabelGroup> = BTreeMap::new();
        let mut label_keys = std::collections::BTreeSet::new();
        for r in rows {
            label_keys.extend(r.labels.0.keys().cloned());
            let labels = Labels::from_pairs(r.labels.0.clone()).unwrap_or_default();
            let version = r.version.map(|v| v as u64);
            let expected = serving.as_ref().and_then(|s| s.index.resolve(&labels)).map(|r| r.version);
            // Lagging: holds something else than it should, and should have for a while
            // (the expected version was already what it resolved to a grace period ago).
            let lagging = version != expected
                && expected.is_some()
                && history.resolve_at(&labels, grace_ago).map(|r| r.version) == expected;
            let held = version.map_or_else(|| "none".to_owned(), |v| v.to_string());
            *by_version.entry(held.clone()).or_insert(0) += 1;
            if filter.version.is_some_and(|v| version != Some(v)) || (filter.lagging_only && !lagging) {
                continue;
            }
            if let Some(key) = &filter.group_by {
                let value = r.labels.0.get(key).cloned().unwrap_or_default();
                let g = groups
                    .entry(value.clone())
                    .or_insert_with(|| crate::model::LabelGroup { value, ..Default::default() });
                g.total += 1;
                *g.by_version.entry(held).or_insert(0) += 1;
                g.lagging += u64::from(lagging);
                g.failed += u64::from(r.last_applied_ok == Some(false));
            }
            consumers.push(ConsumerInfo {
                authenticated: r.principal.is_some(),
                principal: r.principal,
                instance: r.instance,
                labels: r.labels.0,
                version,
                expected_version: expected,
                lagging,
                version_since: r.version_since,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
                last_applied_version: r.last_applied_version.map(|v| v as u64),
                last_applied_ok: r.last_applied_ok,
                last_error: r.last_error,
                last_applied_at: r.last_applied_at,
            });
        }
        // Trouble first; the rows come most recently seen first, and the sort is stable.
        let stale_before = now - Duration::minutes(STALE_AFTER_MINUTES);
        consumers.sort_by_key(|c| {
            if c.last_applied_ok == Some(false) {
                0
            } else if c.lagging {
                1
            } else if c.last_seen < stale_before {
                2
            } else {
                3
            }
        });
        let total = consumers.len() as u64;
        let next = (consumers.len() > offset + limit).then(|| cursor::encode((offset + limit) as i64));
        let consumers = consumers.into_iter().skip(offset).take(limit).collect();
        Ok(ConsumerList {
            consumers,
            by_version,
            total,
            next,
            groups: groups.into_values().collect(),
            label_keys: label_keys.into_iter().collect(),
        })
    }
}

/// The batch as columns for one UNNEST upsert.
fn columns(entries: &[(Key, Observation)]) -> store::consumers::ObservationColumns {
    let mut c = store::consumers::ObservationColumns::default();
    for ((tid, inst), o) in entries {
        c.topic_ids.push(*tid);
        c.instances.push(inst.clone());
        c.labels.push(serde_json::to_value(&*o.labels).unwrap_or_default());
        c.versions.push(o.version.map(|v| v as i64));
        c.since.push(o.version_since);
        c.expected.push(o.expected.map(|v| v as i64));
        c.first.push(o.first_seen);
        c.last.push(o.last_seen);
        c.applied_version.push(o.applied.as_ref().map(|a| a.version as i64));
        c.applied_ok.push(o.applied.as_ref().map(|a| a.ok));
        c.applied_error.push(o.applied.as_ref().and_then(|a| {
            if a.ok {
                None
            } else {
                a.error.clone().or(Some(String::new()))
            }
        }));
        c.applied_at.push(o.applied.as_ref().map(|a| a.at));
        c.principals.push(o.principal.as_deref().map(str::to_owned));
    }
    c
}
