//! Consumer audit: what each (topic, instance) holds. Polls record into a sharded
//! in-memory buffer (never waiting on Postgres); a flusher writes it in one batched
//! upsert every interval and keeps what it could not write for the next try.
use crate::error::Result;
use crate::model::ConsumerInfo;
use crate::{Error, Imprint};
use chrono::{DateTime, Duration, Utc};
use imprint_domain::{Labels, Selector};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const SHARDS: usize = 16;

#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub version: u64,
    pub ok: bool,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// What one poll told us about one (topic, instance).
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub labels: std::sync::Arc<BTreeMap<String, String>>,
    pub version: Option<u64>,
    pub version_since: DateTime<Utc>,
    pub expected: Option<u64>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub applied: Option<Applied>,
    /// When the held version was published (for the propagation metric; not stored).
    pub published_at: Option<DateTime<Utc>>,
}

impl Observation {
    /// Folds a newer observation into this one (same key).
    fn merge(&mut self, newer: Observation) {
        let first_seen = self.first_seen.min(newer.first_seen);
        let version_since = if self.version == newer.version {
            self.version_since.min(newer.version_since)
        } else {
            newer.version_since
        };
        let applied = match (self.applied.take(), newer.applied.clone()) {
            (Some(a), Some(b)) => Some(if b.at >= a.at { b } else { a }),
            (a, b) => b.or(a),
        };
        if newer.last_seen >= self.last_seen {
            *self = newer;
        }
        self.first_seen = first_seen;
        self.version_since = version_since;
        self.applied = applied;
    }
}

type Key = (i64, String);

/// An unchanged node's `last_seen` is written at most this often (changes go out at once).
const REFRESH_SECS: i64 = 30;
/// Written entries not seen for this long are dropped from memory (they are in Postgres).
const FORGET_SECS: i64 = 300;

struct Entry {
    obs: Observation,
    /// Holds something Postgres does not have yet.
    dirty: bool,
    /// The `last_seen` last written.
    written_seen: Option<DateTime<Utc>>,
}

/// Per shard: instance → topic id → entry. A poll is one instance, so recording all its
/// topics takes one lock and no allocation for nodes already known.
type Shard = HashMap<String, HashMap<i64, Entry>>;

pub struct AuditBuffer {
    shards: Vec<Mutex<Shard>>,
    len: AtomicU64,
    dirty: AtomicU64,
    max_entries: u64,
    dropped: AtomicU64,
}

impl Observation {
    /// Does `newer` say something the stored observation does not (beyond `last_seen`)?
    fn differs(&self, newer: &Observation) -> bool {
        self.version != newer.version
            || self.expected != newer.expected
            || self.labels != newer.labels
            || newer.applied.as_ref().is_some_and(|a| {
                self.applied.as_ref().is_none_or(|b| (b.version, b.ok, &b.error) != (a.version, a.ok, &a.error))
            })
    }
}

impl AuditBuffer {
    pub fn new(max_entries: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            len: AtomicU64::new(0),
            dirty: AtomicU64::new(0),
            max_entries,
            dropped: AtomicU64::new(0),
        }
    }

    fn shard(&self, instance: &str) -> &Mutex<Shard> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        instance.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Records what one poll said about each of its topics. Memory is bounded: past
    /// `max_entries` (topic, instance) pairs, new pairs are counted as dropped.
    pub fn record(&self, instance: &str, observations: impl IntoIterator<Item = (i64, Observation)>) {
        let mut shard = self.shard(instance).lock().unwrap_or_else(|e| e.into_inner());
        if !shard.contains_key(instance) {
            shard.insert(instance.to_owned(), HashMap::new());
        }
        let Some(topics) = shard.get_mut(instance) else { return };
        for (topic_id, obs) in observations {
            match topics.get_mut(&topic_id) {
                Some(e) => {
                    // A node that moved to the version it should hold: how long that took.
                    if e.obs.version != obs.version && obs.version.is_some() && obs.version == obs.expected {
                        if let Some(p) = obs.published_at {
                            let secs = (obs.last_seen - p).num_milliseconds().max(0) as f64 / 1000.0;
                            metrics::histogram!("imprint_propagation_seconds").record(secs);
                        }
                    }
                    let changed = e.obs.differs(&obs);
                    e.obs.merge(obs);
                    let stale = e.written_seen.is_none_or(|w| (e.obs.last_seen - w).num_seconds() >= REFRESH_SECS);
                    if (changed || stale) && !e.dirty {
                        e.dirty = true;
                        self.dirty.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    if self.len.load(Ordering::Relaxed) >= self.max_entries {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("imprint_audit_dropped_total").increment(1);
                        continue;
                    }
                    self.len.fetch_add(1, Ordering::Relaxed);
                    self.dirty.fetch_add(1, Ordering::Relaxed);
                    topics.insert(topic_id, Entry { obs, dirty: true, written_seen: None });
                }
            }
        }
    }

    /// Takes what Postgres does not have yet (marking it written), and forgets written
    /// entries not seen for a while.
    pub fn drain(&self) -> Vec<(Key, Observation)> {
        let now = Utc::now();
        let mut out = Vec::new();
        for s in &self.shards {
            let mut shard = s.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|instance, topics| {
                topics.retain(|topic_id, e| {
                    if e.dirty {
                        out.push(((*topic_id, instance.clone()), e.obs.clone()));
                        e.dirty = false;
                        e.written_seen = Some(e.obs.last_seen);
                        self.dirty.fetch_sub(1, Ordering::Relaxed);
                        true
                    } else if (now - e.obs.last_seen).num_seconds() > FORGET_SECS {
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        false
                    } else {
                        true
                    }
                });
                !topics.is_empty()
            });
        }
        out
    }

    /// Puts back what could not be written, under anything recorded since (which is newer).
    pub fn restore(&self, entries: Vec<(Key, Observation)>) {
        for ((topic_id, instance), mut older) in entries {
            let mut shard = self.shard(&instance).lock().unwrap_or_else(|e| e.into_inner());
            let topics = shard.entry(instance).or_default();
            match topics.remove(&topic_id) {
                Some(newer) => {
                    if !newer.dirty {
                        self.dirty.fetch_add(1, Ordering::Relaxed);
                    }
                    older.merge(newer.obs);
                    topics.insert(topic_id, Entry { obs: older, dirty: true, written_seen: None });
                }
                None => {
                    self.len.fetch_add(1, Ordering::Relaxed);
                    self.dirty.fetch_add(1, Ordering::Relaxed);
                    topics.insert(topic_id, Entry { obs: older, dirty: true, written_seen: None });
                }
            }
        }
    }

    /// (topic, instance) pairs held in memory.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Pairs with something not yet written.
    pub fn pending(&self) -> u64 {
        self.dirty.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a version reached its consumers (see [`Imprint::propagation`]).
#[derive(Clone, Debug)]
pub struct Propagation {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    /// Nodes that hold the version or should hold it.
    pub total: u64,
    /// For each node holding it, seconds from the publish until the audit saw it there, sorted.
    pub seconds_to_reach: Vec<f64>,
}

/// Filters for the consumer list.
#[derive(Clone, Debug, Default)]
pub struct ConsumerFilter {
    pub labels: Option<Selector>,
    pub version: Option<u64>,
    pub lagging_only: bool,
}

pub struct ConsumerList {
    pub consumers: Vec<ConsumerInfo>,
    pub by_version: BTreeMap<String, u64>,
    pub total: u64,
}

type ConsumerRow = (
    String,
    sqlx::types::Json<BTreeMap<String, String>>,
    Option<i64>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<i64>,
    Option<bool>,
    Option<String>,
    Option<DateTime<Utc>>,
);

impl Imprint {
    /// Writes the buffered observations. Returns how many were written.
    pub async fn flush_audit(&self) -> Result<usize> {
        let entries = self.audit().drain();
        if entries.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        match write_observations(self.pool(), &entries).await {
            Ok(()) => {
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
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.name, count(c.instance) FILTER (WHERE c.version IS DISTINCT FROM c.expected_version
                                                      AND c.last_seen > now() - interval '5 minutes')
             FROM topics t LEFT JOIN consumers c ON c.topic_id = t.id GROUP BY t.name",
        )
        .fetch_all(self.pool())
        .await?;
        for (topic, n) in rows {
            metrics::gauge!("imprint_lagging_nodes", "topic" => topic).set(n as f64);
        }
        Ok(())
    }

    /// How a version spread: for each node holding it, how long after the publish the
    /// audit first saw it there; `total` counts the nodes that hold or should hold it.
    pub async fn propagation(&self, topic: &str, version: u64) -> Result<Propagation> {
        let t = self.topic_ref(self.pool(), topic).await?;
        let created_at: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT created_at FROM versions WHERE topic_id = $1 AND version = $2")
                .bind(t.id)
                .bind(version as i64)
                .fetch_optional(self.pool())
                .await?;
        let created_at = created_at.ok_or(Error::VersionNotFound { topic: t.name.clone(), version })?;
        let rows: Vec<(Option<i64>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT version, version_since FROM consumers WHERE topic_id = $1 AND (version = $2 OR expected_version = $2)",
        )
        .bind(t.id)
        .bind(version as i64)
        .fetch_all(self.pool())
        .await?;
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
        let done = sqlx::query("DELETE FROM consumers WHERE last_seen < now() - $1::interval")
            .bind(sqlx::postgres::types::PgInterval::try_from(older_than).map_err(|e| Error::Internal(e.to_string()))?)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Who consumes a topic: each instance with the version it holds and the one it should.
    pub async fn consumers(&self, topic: &str, filter: &ConsumerFilter) -> Result<ConsumerList> {
        let t = self.topic_ref(self.pool(), topic).await?;
        let rows: Vec<ConsumerRow> = sqlx::query_as(
            "SELECT instance, labels, version, version_since, first_seen, last_seen, last_applied_version,
                    last_applied_ok, last_error, last_applied_at
             FROM consumers WHERE topic_id = $1 AND ($2::jsonb IS NULL OR labels @> $2)
             ORDER BY last_seen DESC, instance LIMIT 100000",
        )
        .bind(t.id)
        .bind(filter.labels.as_ref().map(Selector::to_json))
        .fetch_all(self.pool())
        .await?;
        let serving = self.state().get(&t.name);
        let now = Utc::now();
        let grace_ago = now - Duration::from_std(self.config().lag_grace).unwrap_or(Duration::seconds(60));
        let mut by_version = BTreeMap::new();
        let mut consumers = Vec::new();
        for r in rows {
            let labels = Labels::from_pairs(r.1 .0.clone()).unwrap_or_default();
            let version = r.2.map(|v| v as u64);
            let expected = serving.as_ref().and_then(|s| s.index.resolve(&labels)).map(|r| r.version);
            // Lagging: holds something else than it should, and should have for a while
            // (the expected version was already what it resolved to a grace period ago).
            let lagging = version != expected
                && expected.is_some()
                && serving.as_ref().and_then(|s| s.history.resolve_at(&labels, grace_ago)).map(|r| r.version)
                    == expected;
            *by_version.entry(version.map_or_else(|| "none".to_owned(), |v| v.to_string())).or_insert(0) += 1;
            if filter.version.is_some_and(|v| version != Some(v)) || (filter.lagging_only && !lagging) {
                continue;
            }
            consumers.push(ConsumerInfo {
                instance: r.0,
                labels: r.1 .0,
                version,
                expected_version: expected,
                lagging,
                version_since: r.3,
                first_seen: r.4,
                last_seen: r.5,
                last_applied_version: r.6.map(|v| v as u64),
                last_applied_ok: r.7,
                last_error: r.8,
                last_applied_at: r.9,
            });
        }
        let total = consumers.len() as u64;
        Ok(ConsumerList { consumers, by_version, total })
    }
}

async fn write_observations(pool: &sqlx::PgPool, entries: &[(Key, Observation)]) -> Result<()> {
    let n = entries.len();
    let mut topic_ids = Vec::with_capacity(n);
    let mut instances = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut versions: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut since = Vec::with_capacity(n);
    let mut expected: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut first = Vec::with_capacity(n);
    let mut last = Vec::with_capacity(n);
    let mut a_version: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut a_ok: Vec<Option<bool>> = Vec::with_capacity(n);
    let mut a_error: Vec<Option<String>> = Vec::with_capacity(n);
    let mut a_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    for ((tid, inst), o) in entries {
        topic_ids.push(*tid);
        instances.push(inst.clone());
        labels.push(serde_json::to_value(&*o.labels).unwrap_or_default());
        versions.push(o.version.map(|v| v as i64));
        since.push(o.version_since);
        expected.push(o.expected.map(|v| v as i64));
        first.push(o.first_seen);
        last.push(o.last_seen);
        a_version.push(o.applied.as_ref().map(|a| a.version as i64));
        a_ok.push(o.applied.as_ref().map(|a| a.ok));
        a_error
            .push(o.applied.as_ref().and_then(|a| if a.ok { None } else { a.error.clone().or(Some(String::new())) }));
        a_at.push(o.applied.as_ref().map(|a| a.at));
    }
    let mut tx = pool.begin().await?;
    // Several servers flush concurrently: every column keeps the newest information.
    sqlx::query(
        "INSERT INTO consumers AS c (topic_id, instance, labels, version, version_since, expected_version, first_seen,
                                     last_seen, last_applied_version, last_applied_ok, last_error, last_applied_at)
         SELECT x.* FROM UNNEST($1::bigint[], $2::text[], $3::jsonb[], $4::bigint[], $5::timestamptz[], $6::bigint[],
                              $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::bool[], $11::text[], $12::timestamptz[])
              AS x(topic_id, instance, labels, version, version_since, expected_version, first_seen, last_seen,
                   last_applied_version, last_applied_ok, last_error, last_applied_at)
         WHERE EXISTS (SELECT 1 FROM topics t WHERE t.id = x.topic_id)
         -- a fixed row order: concurrent flushes from several servers cannot deadlock
         ORDER BY x.topic_id, x.instance
         ON CONFLICT (topic_id, instance) DO UPDATE SET
            labels = CASE WHEN EXCLUDED.last_seen >= c.last_seen THEN EXCLUDED.labels ELSE c.labels END,
            version = CASE WHEN EXCLUDED.last_seen >= c.last_seen THEN EXCLUDED.version ELSE c.version END,
            version_since = CASE
                WHEN EXCLUDED.last_seen < c.last_seen THEN c.version_since
                WHEN EXCLUDED.version IS NOT DISTINCT FROM c.version THEN LEAST(c.version_since, EXCLUDED.version_since)
                ELSE EXCLUDED.version_since END,
            expected_version = CASE WHEN EXCLUDED.last_seen >= c.last_seen THEN EXCLUDED.expected_version ELSE c.expected_version END,
            first_seen = LEAST(c.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(c.last_seen, EXCLUDED.last_seen),
            last_applied_version = CASE WHEN EXCLUDED.last_applied_at >= c.last_applied_at OR c.last_applied_at IS NULL
                THEN COALESCE(EXCLUDED.last_applied_version, c.last_applied_version) ELSE c.last_applied_version END,
            last_applied_ok = CASE WHEN EXCLUDED.last_applied_at >= c.last_applied_at OR c.last_applied_at IS NULL
                THEN COALESCE(EXCLUDED.last_applied_ok, c.last_applied_ok) ELSE c.last_applied_ok END,
            last_error = CASE WHEN EXCLUDED.last_applied_at >= c.last_applied_at OR (c.last_applied_at IS NULL AND EXCLUDED.last_applied_at IS NOT NULL)
                THEN NULLIF(EXCLUDED.last_error, '') ELSE c.last_error END,
            last_applied_at = GREATEST(c.last_applied_at, EXCLUDED.last_applied_at)",
    )
    .bind(&topic_ids)
    .bind(&instances)
    .bind(&labels)
    .bind(&versions)
    .bind(&since)
    .bind(&expected)
    .bind(&first)
    .bind(&last)
    .bind(&a_version)
    .bind(&a_ok)
    .bind(&a_error)
    .bind(&a_at)
    .execute(&mut *tx)
    .await?;
    // When each topic was last polled (for "unused topics"), kept to the minute so that
    // busy topics do not rewrite their row on every flush.
    sqlx::query(
        "UPDATE topics t SET last_polled_at = x.seen
         FROM (SELECT topic_id, max(seen) AS seen FROM UNNEST($1::bigint[], $2::timestamptz[]) AS u(topic_id, seen)
               GROUP BY topic_id ORDER BY topic_id) x
         WHERE t.id = x.topic_id AND (t.last_polled_at IS NULL OR t.last_polled_at < x.seen - interval '60 seconds')",
    )
    .bind(&topic_ids)
    .bind(&last)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().expect("time")
    }

    fn obs(version: Option<u64>, at: i64, applied: Option<(u64, bool, i64)>) -> Observation {
        Observation {
            labels: Default::default(),
            version,
            version_since: t(at),
            expected: Some(2),
            first_seen: t(at),
            last_seen: t(at),
            applied: applied.map(|(v, ok, at)| Applied {
                version: v,
                ok,
                error: (!ok).then(|| "boom".into()),
                at: t(at),
            }),
            published_at: None,
        }
    }

    #[test]
    fn merge_keeps_the_newest_and_the_earliest() {
        let mut a = obs(Some(1), 10, Some((1, false, 10)));
        a.merge(obs(Some(1), 20, None));
        assert_eq!((a.first_seen, a.last_seen, a.version_since), (t(10), t(20), t(10)));
        assert_eq!(a.applied.as_ref().map(|x| x.ok), Some(false), "an absent report keeps the last one");
        a.merge(obs(Some(2), 30, Some((2, true, 30))));
        assert_eq!((a.version, a.version_since), (Some(2), t(30)));
        assert_eq!(a.applied.as_ref().map(|x| (x.version, x.ok)), Some((2, true)));
        // An older observation arriving late changes nothing but first_seen.
        a.merge(obs(Some(1), 5, Some((1, false, 5))));
        assert_eq!((a.version, a.last_seen, a.first_seen), (Some(2), t(30), t(5)));
        assert_eq!(a.applied.as_ref().map(|x| x.version), Some(2));
    }

    #[test]
    fn buffer_is_bounded_and_restores_under_newer() {
        let b = AuditBuffer::new(2);
        b.record("a", [(1, obs(Some(1), 1, None))]);
        b.record("b", [(1, obs(Some(1), 1, None))]);
        b.record("c", [(1, obs(Some(1), 1, None))]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.dropped.load(Ordering::Relaxed), 1);
        b.record("a", [(1, obs(Some(2), 5, None))]);
        assert_eq!(b.len(), 2, "known keys are updated in place");
        let drained = b.drain();
        assert_eq!((drained.len(), b.pending()), (2, 0));
        b.record("a", [(1, obs(Some(3), 9, None))]);
        b.restore(drained);
        assert_eq!(b.pending(), 2);
        let again: HashMap<Key, Observation> = b.drain().into_iter().collect();
        let a = &again[&(1, "a".to_owned())];
        assert_eq!((a.version, a.first_seen, a.last_seen), (Some(3), t(1), t(9)));
    }

    #[test]
    fn unchanged_nodes_are_rewritten_only_now_and_then() {
        let b = AuditBuffer::new(10);
        b.record("a", [(1, obs(Some(1), 100, None))]);
        assert_eq!(b.drain().len(), 1);
        b.record("a", [(1, obs(Some(1), 110, None))]);
        assert!(b.drain().is_empty(), "nothing new 10 s later");
        b.record("a", [(1, obs(Some(1), 131, None))]);
        assert_eq!(b.drain().len(), 1, "last_seen refreshed after 30 s");
        b.record("a", [(1, obs(Some(2), 132, None))]);
        assert_eq!(b.drain().len(), 1, "a new version goes out at once");
        b.record("a", [(1, obs(Some(2), 133, Some((2, false, 133))))]);
        assert_eq!(b.drain().len(), 1, "so does an apply report");
        b.record("a", [(1, obs(Some(2), 134, Some((2, false, 134))))]);
        assert!(b.drain().is_empty(), "the same report again is nothing new");
    }
}
