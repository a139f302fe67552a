//! The consumer audit's durable side: writing buffered observations, reading who
//! consumes a topic, lag and propagation.
use crate::audit::{Key, Observation};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{ConsumerFilter, ConsumerInfo, ConsumerList, Propagation};
use crate::{cursor, store};
use chrono::Duration;
use imprint_domain::{Labels, Selector, TopicName};
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
                self.inner.coalesced.audit_written();
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
    /// poll held another version than they should have. Only topics that exist have a
    /// series; restricted ones are summed under `topic="restricted"` (`/metrics` is open,
    /// and must not name them — nor must a topic missing from the serving state).
    pub async fn update_lag_gauges(&self) -> Result<()> {
        let since = self.now() - Duration::minutes(5);
        let mut restricted = 0;
        for (topic, n) in store::consumers::lagging_per_topic(self.pool(), since).await? {
            if self.state().get(&topic).is_none_or(|t| t.restricted) {
                restricted += n;
            } else {
                metrics::gauge!("imprint_lagging_nodes", "topic" => topic).set(n as f64);
            }
        }
        metrics::gauge!("imprint_lagging_nodes", "topic" => "restricted").set(restricted as f64);
        Ok(())
    }

    /// How a version spread: for each node holding it, how long after the publish the
    /// audit first saw it there; `total` counts the nodes that hold or should hold it.
    pub async fn propagation(&self, caller: &Caller, topic: &TopicName, version: u64) -> Result<Propagation> {
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

    /// Deletes consumers not seen for `older_than`, and anonymous ones (no principal: made
    /// up by anyone who can reach the server) not seen for `anonymous_older_than`.
    pub async fn expire_consumers_split(&self, older_than: Duration, anonymous_older_than: Duration) -> Result<u64> {
        let now = self.now();
        store::consumers::expire_split(self.pool(), now - older_than, now - anonymous_older_than).await
    }

    /// Who consumes a topic: each instance with the version it holds and the one it should,
    /// a page at a time (`by_version` and `total` count every match, not just the page).
    /// The page is sorted and cut in Postgres and the counts are aggregated there: a
    /// request reads at most a page of rows, however many consumers the topic has.
    pub async fn consumers(&self, caller: &Caller, topic: &TopicName, filter: &ConsumerFilter) -> Result<ConsumerList> {
        let limit = cursor::limit(Some(filter.limit.unwrap_or(500)))?;
        let start = match filter.cursor.as_deref().map(cursor::decode_any).transpose()? {
            None => store::consumers::PageStart::Offset(0),
            Some(Err(offset)) => store::consumers::PageStart::Offset(offset.max(0)),
            Some(Ok((rank, last_seen, instance))) => store::consumers::PageStart::After { rank, last_seen, instance },
        };
        // Coalesced (crate::coalesce): identical concurrent lists share the four queries.
        let key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{filter:?}",
            topic.as_str(),
            self.change_seq(topic.as_str()),
            self.inner.coalesced.audit_epoch()
        );
        self.coalesced(
            |r| &r.consumers,
            key,
            caller,
            || async {
                self.inner.coalesced.queried(5);
                let t = {
                    let mut conn = self.pool().acquire().await?;
                    store::topics::require(&mut conn, topic, false).await?
                };
                let (name, owner, restricted) = (t.name.clone(), t.owner.clone(), t.restricted);
                let value = self.consumers_of(t, filter, limit, start).await?;
                Ok(crate::coalesce::Guarded { name, owner, restricted, value })
            },
        )
        .await
    }

    async fn consumers_of(
        &self,
        t: store::topics::TopicRef,
        filter: &ConsumerFilter,
        limit: i64,
        start: store::consumers::PageStart,
    ) -> Result<ConsumerList> {
        let now = self.now();
        let f = store::consumers::ListFilter {
            labels: filter.labels.as_ref().map(Selector::to_json),
            version: filter.version.map(|v| v as i64),
            lagging_only: filter.lagging_only,
            grace_ago: now - Duration::from_std(self.config().lag_grace).unwrap_or(Duration::seconds(60)),
            stale_before: now - Duration::minutes(STALE_AFTER_MINUTES),
        };
        // The page and the counts from one snapshot: an audit flush between them must not
        // answer a total that the page disagrees with.
        let mut tx = self.pool().begin_with(store::serving::BEGIN_SNAPSHOT).await?;
        // One row more than the page says whether there is a next one.
        let mut rows = store::consumers::page(&mut *tx, t.id, &f, &start, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next = if more { rows.last().map(|r| cursor::encode_key(r.rank, r.last_seen, &r.instance)) } else { None };
        let counts = store::consumers::counts(&mut *tx, t.id, &f, filter.group_by.as_deref()).await?;
        let label_keys = store::consumers::label_keys(&mut *tx, t.id, f.labels.clone(), 200).await?;
        tx.commit().await?;
        let serving = self.state().get(&t.name);
        let held = |v: Option<i64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        let mut by_version = BTreeMap::new();
        let mut total = 0;
        let mut groups: BTreeMap<String, crate::model::LabelGroup> = BTreeMap::new();
        for c in &counts {
            *by_version.entry(held(c.version)).or_insert(0) += c.all as u64;
            total += c.matching as u64;
            if let (Some(value), true) = (&c.group, c.matching > 0) {
                let g = groups
                    .entry(value.clone())
                    .or_insert_with(|| crate::model::LabelGroup { value: value.clone(), ..Default::default() });
                g.total += c.matching as u64;
                *g.by_version.entry(held(c.version)).or_insert(0) += c.matching as u64;
                g.lagging += c.lagging as u64;
                g.failed += c.failed as u64;
            }
        }
        let consumers = rows
            .into_iter()
            .map(|r| {
                let labels = Labels::from_pairs(r.labels.0.clone()).unwrap_or_default();
                ConsumerInfo {
                    authenticated: r.principal.is_some(),
                    principal: r.principal,
                    relayed_by: r.relayed_by,
                    instance: r.instance,
                    version: r.version.map(|v| v as u64),
                    expected_version: serving.as_ref().and_then(|s| s.index.resolve(&labels)).map(|r| r.version),
                    labels: r.labels.0,
                    lagging: r.lagging,
                    version_since: r.version_since,
                    first_seen: r.first_seen,
                    last_seen: r.last_seen,
                    last_applied_version: r.last_applied_version.map(|v| v as u64),
                    last_applied_ok: r.last_applied_ok,
                    last_error: r.last_error,
                    last_applied_at: r.last_applied_at,
                    served_region: r.served_region,
                }
            })
            .collect();
        Ok(ConsumerList { consumers, by_version, total, next, groups: groups.into_values().collect(), label_keys })
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
        c.applied_region.push(o.applied.as_ref().and_then(|a| a.region.clone()));
        c.principals.push(o.principal.as_deref().map(str::to_owned));
        c.relayed_by.push(o.relayed_by.as_deref().map(str::to_owned));
    }
    c
}

/// A line diff (`imprint_domain::diff_lines`) on a blocking thread: its table is quadratic
/// in the lines compared, which must not stall the async workers. `None`: too large.
pub async fn diff_off_thread(
    old: String,
    new: String,
    max_lines: usize,
) -> Result<Option<Vec<imprint_domain::DiffLine>>> {
    tokio::task::spawn_blocking(move || imprint_domain::diff_lines(&old, &new, max_lines))
        .await
        .map_err(|e| Error::Internal(format!("diff did not finish: {e}")))
}
