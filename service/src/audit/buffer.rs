//! The in-memory audit buffer: polls record into sharded maps (never waiting on
//! Postgres, allocating nothing for a steady node), bounded in size and per anonymous
//! source; the flusher drains what Postgres does not have yet and restores what it
//! could not write.
use super::report::{source_of, Key, Observation, Reporter, Seen, MAX_INSTANCES_PER_SOURCE};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

fn anonymous_ignored() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("imprint_audit_anonymous_ignored_total"))
}

/// An unchanged node's `last_seen` is written at most this often (changes go out at once).
const REFRESH_SECS: i64 = 30;
/// Written entries not seen for this long are dropped from memory (they are in Postgres).
const FORGET_SECS: i64 = 300;

struct Entry {
    obs: Observation,
    /// Holds something Postgres does not have yet.
    dirty: bool,
    /// When an unchanged `last_seen` is worth writing again (`REFRESH_SECS` after the
    /// one last written; `None`: never written).
    refresh_after: Option<DateTime<Utc>>,
    /// The source whose `MAX_INSTANCES_PER_SOURCE` this entry counts against (`None`:
    /// put back by `restore`, counted against nobody).
    source: Option<Arc<str>>,
}

/// Seeded per process: the keys are what pollers send (no collisions to be made up).
type Fast = foldhash::fast::RandomState;

/// Per shard: instance → topic id → entry. A poll is one instance, so recording all its
/// topics takes one lock and no allocation for nodes already known.
type Shard = HashMap<String, HashMap<i64, Entry, Fast>, Fast>;

pub struct AuditBuffer {
    shards: Vec<Mutex<Shard>>,
    /// Per (topic, source): entries in memory it created (bounded by `max_entries` too).
    per_source: Mutex<HashMap<(i64, Arc<str>), u32, Fast>>,
    per_source_max: u32,
    hasher: Fast,
    len: AtomicU64,
    dirty: AtomicU64,
    max_entries: u64,
    dropped: AtomicU64,
}

impl AuditBuffer {
    pub fn new(max_entries: u64) -> Self {
        Self::with_source_cap(max_entries, MAX_INSTANCES_PER_SOURCE)
    }

    /// A buffer where one source adds at most `per_source` instances per topic.
    pub fn with_source_cap(max_entries: u64, per_source: u32) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            per_source: Mutex::new(HashMap::default()),
            per_source_max: per_source,
            hasher: Fast::default(),
            len: AtomicU64::new(0),
            dirty: AtomicU64::new(0),
            max_entries,
            dropped: AtomicU64::new(0),
        }
    }

    fn shard(&self, instance: &str) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        &self.shards[(self.hasher.hash_one(instance) as usize) % SHARDS]
    }

    /// Records what one poll said about each of its topics. Memory is bounded: past
    /// `max_entries` (topic, instance) pairs, new pairs are counted as dropped.
    ///
    /// The common case — a known node reporting what it reported before — touches
    /// `last_seen` in place and allocates nothing: the labels and the principal are
    /// copied into shared `Arc`s only when an entry is new or they changed.
    pub fn record(&self, who: &Reporter<'_>, seen: impl IntoIterator<Item = Seen>) {
        self.record_from(who, None, seen)
    }

    /// `record`, counting new instances against the source `source_of(principal, client)`
    /// (at most `MAX_INSTANCES_PER_SOURCE` per topic; beyond it they are dropped).
    pub fn record_from(
        &self,
        who: &Reporter<'_>,
        client: Option<std::net::IpAddr>,
        seen: impl IntoIterator<Item = Seen>,
    ) {
        let mut shard = self.shard(who.instance).lock().unwrap_or_else(|e| e.into_inner());
        // An unknown instance gets its map only once an entry is actually added to it: a
        // full buffer (or a capped source) leaves nothing behind, not even an empty map.
        let mut fresh: Option<HashMap<i64, Entry, Fast>> = None;
        // Built at most once per call, only when some entry needs them.
        let mut labels: Option<Arc<BTreeMap<String, String>>> = None;
        let mut principal: Option<Option<Arc<str>>> = None;
        let mut source: Option<Arc<str>> = None;
        for s in seen {
            let topics = match shard.get_mut(who.instance) {
                Some(t) => t,
                None => fresh.get_or_insert_with(HashMap::default),
            };
            match topics.get_mut(&s.topic_id) {
                // An anonymous poll never overwrites what an authenticated consumer said.
                Some(e) if e.obs.principal.is_some() && who.principal.is_none() => {
                    anonymous_ignored().increment(1);
                }
                Some(e) if e.obs.same_report(who, &s) => {
                    // Nothing new but the time: the cheap path of every steady poll.
                    if who.at > e.obs.last_seen {
                        e.obs.last_seen = who.at;
                    }
                    if let (Some(a), Some(b)) = (e.obs.applied.as_mut(), s.applied) {
                        a.at = a.at.max(b.at);
                    }
                    self.mark_if_stale(e, false);
                }
                Some(e) => {
                    // A node that moved to the version it should hold: how long that took.
                    if e.obs.version != s.version && s.version.is_some() && s.version == s.expected {
                        if let Some(p) = s.published_at {
                            let secs = (who.at - p).num_milliseconds().max(0) as f64 / 1000.0;
                            metrics::histogram!("imprint_propagation_seconds").record(secs);
                        }
                    }
                    // Keep the entry's own labels when they did not change.
                    let l = if *e.obs.labels == *who.labels {
                        e.obs.labels.clone()
                    } else {
                        labels.get_or_insert_with(|| Arc::new(who.labels.clone())).clone()
                    };
                    let p = principal.get_or_insert_with(|| who.principal.map(Arc::from)).clone();
                    // Not `same_report`: something beyond the time changed, so it goes out.
                    e.obs.merge(Observation::new(who, s, l, p));
                    self.mark_if_stale(e, true);
                }
                None => {
                    if self.len.load(Ordering::Relaxed) >= self.max_entries {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("imprint_audit_dropped_total").increment(1);
                        continue;
                    }
                    // Only anonymous sources are capped: a token is issued by an admin and
                    // may stand for a whole fleet (thousands of nodes sharing it).
                    // Relayed reports are vouched for by the relay's token (admin-issued too).
                    let src = (who.principal.is_none() && who.relayed_by.is_none())
                        .then(|| source.get_or_insert_with(|| source_of(None, client)).clone());
                    if src.as_ref().is_some_and(|src| !self.admit(s.topic_id, src)) {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("imprint_audit_dropped_total", "reason" => "source_cap").increment(1);
                        continue;
                    }
                    let l = labels.get_or_insert_with(|| Arc::new(who.labels.clone())).clone();
                    let p = principal.get_or_insert_with(|| who.principal.map(Arc::from)).clone();
                    self.len.fetch_add(1, Ordering::Relaxed);
                    self.dirty.fetch_add(1, Ordering::Relaxed);
                    topics.insert(
                        s.topic_id,
                        Entry { obs: Observation::new(who, s, l, p), dirty: true, refresh_after: None, source: src },
                    );
                }
            }
        }
        if let Some(t) = fresh.filter(|t| !t.is_empty()) {
            shard.insert(who.instance.to_owned(), t);
        }
    }

    /// Counts one more instance of `source` on `topic_id`, unless it has its share.
    fn admit(&self, topic_id: i64, source: &Arc<str>) -> bool {
        let mut m = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry((topic_id, source.clone())).or_insert(0);
        if *n >= self.per_source_max {
            return false;
        }
        *n += 1;
        true
    }

    /// An entry of `source` left memory: its place may be taken again.
    fn release(&self, topic_id: i64, source: &Option<Arc<str>>) {
        let Some(source) = source else { return };
        let mut m = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let key = (topic_id, source.clone());
        if let Some(n) = m.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&key);
            }
        }
    }

    /// Marks an entry for writing when it changed, or when its `last_seen` was last
    /// written `REFRESH_SECS` ago.
    fn mark_if_stale(&self, e: &mut Entry, changed: bool) {
        // A comparison, not date arithmetic: this runs for every topic of every poll.
        let stale = e.refresh_after.is_none_or(|r| e.obs.last_seen >= r);
        if (changed || stale) && !e.dirty {
            e.dirty = true;
            self.dirty.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes what Postgres does not have yet (marking it written), and forgets written
    /// entries not seen for a while.
    pub fn drain(&self, now: DateTime<Utc>) -> Vec<(Key, Observation)> {
        let mut out = Vec::new();
        let forget_before = now - chrono::Duration::seconds(FORGET_SECS);
        let refresh = chrono::Duration::seconds(REFRESH_SECS);
        for s in &self.shards {
            let mut shard = s.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|instance, topics| {
                topics.retain(|topic_id, e| {
                    if e.dirty {
                        out.push(((*topic_id, instance.clone()), e.obs.clone()));
                        e.dirty = false;
                        e.refresh_after = Some(e.obs.last_seen + refresh);
                        self.dirty.fetch_sub(1, Ordering::Relaxed);
                        true
                    } else if e.obs.last_seen < forget_before {
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        self.release(*topic_id, &e.source);
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
                    topics
                        .insert(topic_id, Entry { obs: older, dirty: true, refresh_after: None, source: newer.source });
                }
                None => {
                    self.len.fetch_add(1, Ordering::Relaxed);
                    self.dirty.fetch_add(1, Ordering::Relaxed);
                    topics.insert(topic_id, Entry { obs: older, dirty: true, refresh_after: None, source: None });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::report::tests::{obs, t};

    fn rec(b: &AuditBuffer, instance: &str, topic_id: i64, o: Observation) {
        let who = Reporter {
            instance,
            labels: &o.labels,
            principal: o.principal.as_deref(),
            relayed_by: o.relayed_by.as_deref(),
            at: o.last_seen,
        };
        let seen =
            Seen { topic_id, version: o.version, expected: o.expected, applied: o.applied.clone(), published_at: None };
        b.record(&who, [seen]);
    }

    #[test]
    fn buffer_is_bounded_and_restores_under_newer() {
        let b = AuditBuffer::new(2);
        rec(&b, "a", 1, obs(Some(1), 1, None));
        rec(&b, "b", 1, obs(Some(1), 1, None));
        rec(&b, "c", 1, obs(Some(1), 1, None));
        assert_eq!(b.len(), 2);
        assert_eq!(b.dropped.load(Ordering::Relaxed), 1);
        rec(&b, "a", 1, obs(Some(2), 5, None));
        assert_eq!(b.len(), 2, "known keys are updated in place");
        let drained = b.drain(Utc::now());
        assert_eq!((drained.len(), b.pending()), (2, 0));
        rec(&b, "a", 1, obs(Some(3), 9, None));
        b.restore(drained);
        assert_eq!(b.pending(), 2);
        let again: HashMap<Key, Observation> = b.drain(Utc::now()).into_iter().collect();
        let a = &again[&(1, "a".to_owned())];
        assert_eq!((a.version, a.first_seen, a.last_seen), (Some(3), t(1), t(9)));
    }

    #[test]
    fn a_full_buffer_leaves_no_empty_instance_maps() {
        let b = AuditBuffer::new(1);
        rec(&b, "a", 1, obs(Some(1), 1, None));
        for i in 0..100 {
            rec(&b, &format!("ghost-{i}"), 1, obs(Some(1), 1, None));
        }
        let instances: usize = b.shards.iter().map(|s| s.lock().expect("lock").len()).sum();
        assert_eq!((b.len(), instances), (1, 1), "dropped reports leave nothing behind");
    }

    #[test]
    fn one_source_adds_a_bounded_number_of_instances_per_topic() {
        let b = AuditBuffer::with_source_cap(1_000, 3);
        let ip = |n: u8| Some(std::net::IpAddr::from([192, 0, 2, n]));
        let rec_from = |instance: &str, topic_id: i64, client| {
            let o = obs(Some(1), 1, None);
            let who = Reporter { instance, labels: &o.labels, principal: None, relayed_by: None, at: o.last_seen };
            let seen = Seen { topic_id, version: o.version, expected: None, applied: None, published_at: None };
            b.record_from(&who, client, [seen]);
        };
        for i in 0..10 {
            rec_from(&format!("made-up-{i}"), 1, ip(1));
        }
        assert_eq!(b.len(), 3, "one address, one topic: the cap");
        rec_from("made-up-0", 1, ip(1));
        assert_eq!(b.len(), 3, "known instances still report");
        rec_from("other", 1, ip(2));
        rec_from("made-up-9", 2, ip(1));
        assert_eq!(b.len(), 5, "other addresses and other topics have their own share");
        // Forgotten entries free their places.
        b.drain(Utc::now());
        b.drain(Utc::now());
        assert_eq!(b.len(), 0);
        rec_from("made-up-5", 1, ip(1));
        assert_eq!(b.len(), 1);
        // A token may stand for a whole fleet behind one address: its nodes are not capped.
        for i in 0..10 {
            let o = obs(Some(1), 1, None);
            let who = Reporter {
                instance: &format!("fleet-{i}"),
                labels: &o.labels,
                principal: Some("fleet"),
                relayed_by: None,
                at: o.last_seen,
            };
            let seen = Seen { topic_id: 3, version: o.version, expected: None, applied: None, published_at: None };
            b.record_from(&who, ip(1), [seen]);
        }
        assert_eq!(b.len(), 11);
        // Anonymous nodes behind a relay: the relay token vouches for the batch, no cap.
        for i in 0..10 {
            let o = obs(Some(1), 1, None);
            let who = Reporter {
                instance: &format!("relayed-{i}"),
                labels: &o.labels,
                principal: None,
                relayed_by: Some("relay-1"),
                at: o.last_seen,
            };
            let seen = Seen { topic_id: 4, version: o.version, expected: None, applied: None, published_at: None };
            b.record_from(&who, None, [seen]);
        }
        assert_eq!(b.len(), 21);
    }

    #[test]
    fn a_node_moving_behind_a_relay_is_written_again() {
        let b = AuditBuffer::new(10);
        rec(&b, "a", 1, obs(Some(1), 100, None));
        assert_eq!(b.drain(Utc::now())[0].1.relayed_by, None);
        let mut o = obs(Some(1), 101, None);
        o.relayed_by = Some(Arc::from("relay-1"));
        rec(&b, "a", 1, o);
        let d = b.drain(Utc::now());
        assert_eq!((d.len(), d[0].1.relayed_by.as_deref()), (1, Some("relay-1")), "a change, written at once");
    }

    #[test]
    fn unchanged_nodes_are_rewritten_only_now_and_then() {
        let b = AuditBuffer::new(10);
        rec(&b, "a", 1, obs(Some(1), 100, None));
        assert_eq!(b.drain(Utc::now()).len(), 1);
        rec(&b, "a", 1, obs(Some(1), 110, None));
        assert!(b.drain(Utc::now()).is_empty(), "nothing new 10 s later");
        rec(&b, "a", 1, obs(Some(1), 131, None));
        assert_eq!(b.drain(Utc::now()).len(), 1, "last_seen refreshed after 30 s");
        rec(&b, "a", 1, obs(Some(2), 132, None));
        assert_eq!(b.drain(Utc::now()).len(), 1, "a new version goes out at once");
        rec(&b, "a", 1, obs(Some(2), 133, Some((2, false, 133))));
        assert_eq!(b.drain(Utc::now()).len(), 1, "so does an apply report");
        rec(&b, "a", 1, obs(Some(2), 134, Some((2, false, 134))));
        assert!(b.drain(Utc::now()).is_empty(), "the same report again is nothing new");
    }

    #[test]
    fn steady_polls_touch_only_the_time() {
        let b = AuditBuffer::new(10);
        let labels = |region: &str| Arc::new(BTreeMap::from([("region".to_owned(), region.to_owned())]));
        let mut o = obs(Some(1), 100, None);
        o.labels = labels("eu");
        rec(&b, "a", 1, o);
        let first = b.drain(Utc::now());
        // The same report with equal (not identical) labels: only last_seen moves, the
        // entry keeps its labels, nothing is due for writing.
        let mut o = obs(Some(1), 105, None);
        o.labels = labels("eu");
        rec(&b, "a", 1, o);
        {
            let shard = b.shard("a").lock().expect("lock");
            let e = &shard["a"][&1];
            assert_eq!((e.obs.last_seen, e.obs.first_seen, e.dirty), (t(105), t(100), false));
            assert!(Arc::ptr_eq(&e.obs.labels, &first[0].1.labels));
        }
        // New labels go out at once.
        let mut o = obs(Some(1), 106, None);
        o.labels = labels("us");
        rec(&b, "a", 1, o);
        let d = b.drain(Utc::now());
        assert_eq!((d.len(), d[0].1.labels["region"].as_str(), d[0].1.last_seen), (1, "us", t(106)));
        // Once a token reported, anonymous reports change nothing.
        let mut o = obs(Some(2), 107, None);
        o.principal = Some(Arc::from("token:x"));
        rec(&b, "a", 1, o);
        rec(&b, "a", 1, obs(Some(3), 108, None));
        let d = b.drain(Utc::now());
        assert_eq!((d[0].1.version, d[0].1.last_seen), (Some(2), t(107)));
    }
}
