//! The in-memory serving state: what resolution needs *now* of every topic — the active
//! pins, the best live version per scope selector, and those versions (with the payloads
//! of small inline ones and their poll answers pre-serialised) — so polls never touch
//! Postgres. History (time travel, rollbacks, the console timeline) is read from Postgres
//! on demand (`Imprint::topic_history`). Kept current by LISTEN/NOTIFY (one topic at a
//! time) and a safety net that compares change sequences and reloads only the topics
//! that differ; readers take an `Arc` snapshot of a topic and never block writers for long.
use crate::store;
use bytes::Bytes;
use imprint_domain::{CurrentIndex, PinEntry, ScopeEntry, Selector, TopicHistory, TopicName, VersionEntry};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// The NOTIFY channel every change is announced on; the payload is the topic id.
pub use crate::store::CHANGE_CHANNEL;

/// Payloads up to this size are held in memory and sent inline in poll answers.
pub const INLINE_POLL_BYTES: u64 = 64 * 1024;

/// What the poll path needs of one version.
#[derive(Debug)]
pub struct ServedVersion {
    pub topic: TopicName,
    pub version: u64,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Present for small inline payloads of versions some consumer can resolve to now.
    pub payload: Option<Bytes>,
    /// The poll answer's JSON for this version (unpinned, pinned), built once on first use
    /// and shared by every poll that gets it.
    json: [std::sync::OnceLock<Box<serde_json::value::RawValue>>; 2],
}

/// The fields of a poll update (API.md), as serialised once per version.
#[derive(serde::Serialize)]
struct UpdateJson<'a> {
    version: u64,
    pinned: bool,
    metadata: &'a BTreeMap<String, String>,
    content_type: &'a str,
    size: u64,
    sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    data_url: String,
}

impl ServedVersion {
    /// A version as the poll path serves it (`payload`: the bytes of a small inline one).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        topic: TopicName,
        version: u64,
        content_type: String,
        size: u64,
        sha256: String,
        metadata: BTreeMap<String, String>,
        created_at: chrono::DateTime<chrono::Utc>,
        payload: Option<Bytes>,
    ) -> Self {
        let payload = payload.filter(|_| size <= INLINE_POLL_BYTES);
        ServedVersion {
            topic,
            version,
            content_type,
            size,
            sha256,
            metadata,
            created_at,
            payload,
            json: Default::default(),
        }
    }

    /// The update's JSON, pre-serialised (built at most once per version and flag).
    pub fn update_json(&self, pinned: bool) -> &serde_json::value::RawValue {
        self.json[usize::from(pinned)].get_or_init(|| {
            use base64::Engine;
            let u = UpdateJson {
                version: self.version,
                pinned,
                metadata: &self.metadata,
                content_type: &self.content_type,
                size: self.size,
                sha256: &self.sha256,
                data_base64: self.payload.as_ref().map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
                data_url: format!("/api/v1/topics/{}/versions/{}/data", self.topic, self.version),
            };
            let text = serde_json::to_string(&u).unwrap_or_else(|_| "null".into());
            serde_json::value::RawValue::from_string(text)
                .unwrap_or_else(|_| serde_json::value::RawValue::from_string("null".into()).expect("null is JSON"))
        })
    }
}

#[derive(Debug)]
pub struct ServingTopic {
    pub id: i64,
    pub name: TopicName,
    /// The topic's change counter at the snapshot this was loaded from.
    pub change_seq: i64,
    /// The owning team and whether the topic is restricted (who may poll it).
    pub owner: String,
    pub restricted: bool,
    /// How Apollo clients address it, if they do.
    pub apollo: Option<ApolloServed>,
    /// Some version is not purged (Apollo notifies only topics with a release).
    pub has_live: bool,
    pub index: CurrentIndex,
    /// The versions that resolution can return now (pinned or best per selector).
    pub served: HashMap<u64, Arc<ServedVersion>>,
}

/// A topic's Apollo binding, as the `/apollo` endpoint needs it.
#[derive(Clone)]
pub struct ApolloServed {
    pub app_id: String,
    pub namespace: String,
    /// Requests for this namespace (and only this one) must be signed with it.
    pub secret: Option<String>,
}

/// The secret never reaches a log: `Debug` says only whether there is one.
impl std::fmt::Debug for ApolloServed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApolloServed")
            .field("app_id", &self.app_id)
            .field("namespace", &self.namespace)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A long poll's wake-up call, registered on the topics it waits for: a change to one of
/// them (and only to them) wakes it, and says which.
pub struct Waiter<'a> {
    _state: &'a ServingState,
    slot: Arc<WaitSlot>,
}

#[derive(Default)]
struct WaitSlot {
    notify: tokio::sync::Notify,
    /// The registered topics that changed since the last `changed()`.
    changed: std::sync::Mutex<Vec<String>>,
}

impl Waiter<'_> {
    /// Returns the registered topics that changed since the last call (or since the
    /// waiter was made: a change that came before this call is not lost). A topic that
    /// appeared is among them; `watch` then follows the ones the poll asked about.
    pub async fn changed(&self) -> Vec<String> {
        loop {
            self.slot.notify.notified().await;
            let names = std::mem::take(&mut *self.slot.changed.lock().unwrap_or_else(|e| e.into_inner()));
            if !names.is_empty() {
                return names;
            }
        }
    }

    /// Follows topics that appeared while this poll waited for them (its newcomers
    /// entry only says that a topic appeared, not that it changed afterwards).
    pub fn watch<S: AsRef<str>>(&self, appeared: impl IntoIterator<Item = S>) {
        let loaded = self._state.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut waiters = self._state.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for t in appeared {
            if let Some((name, _)) = loaded.get_key_value(t.as_ref()) {
                let list = waiters.entry(name.clone()).or_default();
                if !list.entries.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.slot))) {
                    list.push(Arc::downgrade(&self.slot));
                }
            }
        }
    }
}

/// The long polls waiting on one topic (weak: a poll that ended leaves a dead entry;
/// unlinking each one as it ends — ten thousand woken polls, each searching a list of ten
/// thousand under the lock — was quadratic). Dead entries go at the topic's next wake-up,
/// or at a registration once they outnumber the live ones.
#[derive(Default)]
struct WaiterList {
    entries: Vec<std::sync::Weak<WaitSlot>>,
    /// Live entries after the last pruning: the list is pruned again once it doubles.
    pruned_len: usize,
}

impl WaiterList {
    fn push(&mut self, w: std::sync::Weak<WaitSlot>) {
        if self.entries.len() >= 2 * self.pruned_len + 64 {
            self.prune();
        }
        self.entries.push(w);
    }

    fn prune(&mut self) {
        self.entries.retain(|w| w.strong_count() > 0);
        self.pruned_len = self.entries.len();
    }

    /// Tells every live entry that `names` changed, drops the dead ones in the same
    /// pass, and returns how many were woken.
    fn wake(&mut self, names: &[String]) -> u64 {
        let mut woken = 0;
        self.entries.retain(|w| {
            let Some(slot) = w.upgrade() else { return false };
            {
                let mut changed = slot.changed.lock().unwrap_or_else(|e| e.into_inner());
                for name in names {
                    if !changed.contains(name) {
                        changed.push(name.clone());
                    }
                }
            }
            slot.notify.notify_one();
            woken += 1;
            true
        });
        self.pruned_len = self.entries.len();
        woken
    }
}

/// An own change being applied by its writer (`ServingState::own_change`).
pub(crate) struct OwnChange<'a> {
    state: &'a ServingState,
    id: i64,
    seq: i64,
}

impl Drop for OwnChange<'_> {
    fn drop(&mut self) {
        let mut own = self.state.own.lock().unwrap_or_else(|e| e.into_inner());
        if own.get(&self.id) == Some(&self.seq) {
            own.remove(&self.id);
        }
    }
}

pub struct ServingState {
    topics: RwLock<HashMap<String, Arc<ServingTopic>>>,
    /// Own changes being applied by their writers: topic id → change sequence.
    own: std::sync::Mutex<HashMap<i64, i64>>,
    /// Topic id → the change sequence held (notifications name topics by id).
    seqs: RwLock<HashMap<i64, i64>>,
    /// Topic name → the long polls waiting on it: loaded topics only, so what a caller
    /// can make this hold is bounded by what exists.
    waiters: std::sync::Mutex<HashMap<String, WaiterList>>,
    /// The long polls that also wait for a topic that does not exist yet: one entry per
    /// poll, however many made-up names it sent, woken when a topic appears.
    newcomers: std::sync::Mutex<WaiterList>,
    /// Long polls woken by a change (the measure of needless wake-ups).
    wakeups: std::sync::atomic::AtomicU64,
    /// Publishes applied in memory by their writer (`apply_publish`).
    applied: std::sync::atomic::AtomicU64,
    /// (Apollo app id, namespace key) → topic name.
    apollo: RwLock<HashMap<(String, String), String>>,
    loaded_once: watch::Sender<bool>,
    /// Every change, by topic name, for the console's live pages: serving changes
    /// (publishes, scopes, pins, rollout stages) and consumer reports written.
    changes: tokio::sync::broadcast::Sender<Arc<[String]>>,
}

impl Default for ServingState {
    fn default() -> Self {
        Self {
            topics: RwLock::new(HashMap::new()),
            own: std::sync::Mutex::new(HashMap::new()),
            seqs: RwLock::new(HashMap::new()),
            waiters: std::sync::Mutex::new(HashMap::new()),
            newcomers: std::sync::Mutex::new(WaiterList::default()),
            wakeups: std::sync::atomic::AtomicU64::new(0),
            applied: std::sync::atomic::AtomicU64::new(0),
            apollo: RwLock::new(HashMap::new()),
            loaded_once: watch::channel(false).0,
            changes: tokio::sync::broadcast::channel(256).0,
        }
    }
}

impl ServingState {
    pub fn get(&self, name: &str) -> Option<Arc<ServingTopic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// The topic bound to an Apollo app's namespace (`.properties` and case ignored).
    pub fn apollo_topic(&self, app_id: &str, namespace: &str) -> Option<Arc<ServingTopic>> {
        let key = (app_id.to_owned(), imprint_domain::apollo::namespace_key(namespace));
        let name = self.apollo.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned()?;
        self.get(&name)
    }

    /// Every loaded topic (a snapshot of the map: changes after the call are not seen).
    pub fn all_topics(&self) -> Vec<Arc<ServingTopic>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Does this server hold topic `id` at change `seq` or later, or is it about to (its
    /// own write of that change, applied by the writer itself: `own_change`)?
    pub fn holds(&self, id: i64, seq: i64) -> bool {
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner()).get(&id).is_some_and(|s| *s >= seq);
        own || self.seqs.read().unwrap_or_else(|e| e.into_inner()).get(&id).is_some_and(|held| *held >= seq)
    }

    /// Marks change `seq` of topic `id` as this process's own, to be applied by the
    /// writer right after its commit (until the returned guard goes): its notification,
    /// which can arrive before that, does not make the listener load it a second time.
    pub(crate) fn own_change(&self, id: i64, seq: i64) -> OwnChange<'_> {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        let s = own.entry(id).or_insert(seq);
        *s = (*s).max(seq);
        OwnChange { state: self, id, seq }
    }

    pub fn topic_count(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Registers a long poll on `topics` (names, known or not yet). A loaded topic gets
    /// an entry of its own; all names that are not loaded share one entry among the
    /// newcomers, woken with the name of each topic that appears.
    pub fn waiter<S: AsRef<str>>(&self, topics: impl IntoIterator<Item = S>) -> Waiter<'_> {
        let slot = Arc::new(WaitSlot::default());
        let mut unknown = false;
        {
            let loaded = self.topics.read().unwrap_or_else(|e| e.into_inner());
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            for t in topics {
                match loaded.get_key_value(t.as_ref()) {
                    Some((name, _)) => waiters.entry(name.clone()).or_default().push(Arc::downgrade(&slot)),
                    None => unknown = true,
                }
            }
        }
        if unknown {
            self.newcomers.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&slot));
        }
        Waiter { _state: self, slot }
    }

    /// Registered long-poll entries (per topic, plus newcomers): what waiters cost.
    pub fn waiter_entries(&self) -> (usize, usize) {
        let per_topic = self.waiters.lock().unwrap_or_else(|e| e.into_inner()).values().map(|l| l.entries.len()).sum();
        (per_topic, self.newcomers.lock().unwrap_or_else(|e| e.into_inner()).entries.len())
    }

    /// Publishes applied in memory by this process so far (not read back from Postgres).
    pub fn publishes_applied(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Long polls woken by changes so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes as they happen (topic names), for live console pages. A receiver that
    /// falls behind gets `Lagged` and should treat it as "everything changed".
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Arc<[String]>> {
        self.changes.subscribe()
    }

    /// Tells live console pages that these topics changed (without waking long polls:
    /// nothing they resolve changed).
    pub fn announce(&self, names: &[String]) {
        if !names.is_empty() && self.changes.receiver_count() > 0 {
            let _ = self.changes.send(names.into());
        }
    }

    /// Is a live console page listening?
    pub fn has_listeners(&self) -> bool {
        self.changes.receiver_count() > 0
    }

    /// The names of loaded topics by id (one pass over the topics).
    pub fn names_of(&self, ids: &[i64]) -> Vec<String> {
        let ids: std::collections::HashSet<i64> = ids.iter().copied().collect();
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| ids.contains(&t.id))
            .map(|t| t.name.to_string())
            .collect()
    }

    /// Wakes the long polls waiting on these topics (`appeared`: those of them that were
    /// not loaded before, which also wake the polls waiting for newcomers).
    fn wake(&self, names: &[String], appeared: &[String]) {
        if names.is_empty() {
            return;
        }
        self.announce(names);
        let mut woken = 0u64;
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            for name in names {
                let Some(list) = waiters.get_mut(name) else { continue };
                woken += list.wake(std::slice::from_ref(name));
                if list.entries.is_empty() {
                    waiters.remove(name);
                }
            }
        }
        if !appeared.is_empty() {
            woken += self.newcomers.lock().unwrap_or_else(|e| e.into_inner()).wake(appeared);
        }
        if woken > 0 {
            self.wakeups.fetch_add(woken, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("imprint_long_poll_wakeups_total").increment(woken);
        }
    }

    pub fn is_loaded(&self) -> bool {
        *self.loaded_once.borrow()
    }

    fn install(&self, loaded: Vec<ServingTopic>, full: bool) {
        let mut changed: Vec<String> = Vec::new();
        let mut appeared: Vec<String> = Vec::new();
        let loaded_seqs: Vec<(i64, i64)> = loaded.iter().map(|t| (t.id, t.change_seq)).collect();
        {
            let mut map = self.topics.write().unwrap_or_else(|e| e.into_inner());
            // Topics are never deleted, so a full reload only adds and refreshes. A snapshot
            // older than what is held (a reload that raced a newer change) is dropped.
            for t in loaded {
                match map.get(t.name.as_str()) {
                    Some(held) if held.change_seq > t.change_seq => {
                        metrics::counter!("imprint_state_stale_reloads_total").increment(1);
                    }
                    // The same snapshot again (the safety-net reload): nobody needs waking.
                    Some(held) if held.change_seq == t.change_seq => {
                        map.insert(t.name.to_string(), Arc::new(t));
                    }
                    held => {
                        if held.is_none() {
                            appeared.push(t.name.to_string());
                        }
                        changed.push(t.name.to_string());
                        map.insert(t.name.to_string(), Arc::new(t));
                    }
                }
            }
            {
                let mut seqs = self.seqs.write().unwrap_or_else(|e| e.into_inner());
                for (id, seq) in loaded_seqs {
                    let held = seqs.entry(id).or_insert(seq);
                    *held = (*held).max(seq);
                }
            }
            metrics::gauge!("imprint_topics_loaded").set(map.len() as f64);
            // The Apollo index follows the changed topics (a binding change is a change).
            let changed_set: std::collections::HashSet<&String> = changed.iter().collect();
            let mut index = self.apollo.write().unwrap_or_else(|e| e.into_inner());
            index.retain(|_, name| !changed_set.contains(name));
            for name in &changed {
                if let Some(a) = map.get(name).and_then(|t| t.apollo.clone()) {
                    index.insert((a.app_id, imprint_domain::apollo::namespace_key(&a.namespace)), name.clone());
                }
            }
        }
        if full {
            self.loaded_once.send_replace(true);
        }
        self.wake(&changed, &appeared);
    }

    /// Applies a publish in memory, by its writer, without reading it back: the topic as
    /// loaded plus `version` released to `selectors`. Only when what is loaded is exactly
    /// the state the publish changed (change sequence `seq - 1`); otherwise (another
    /// change in between, not loaded yet) nothing happens and false says to reload.
    pub(crate) fn apply_publish(&self, name: &str, seq: i64, version: ServedVersion, selectors: &[Selector]) -> bool {
        let Some(old) = self.get(name) else { return false };
        if old.change_seq != seq - 1 || version.version <= old.served.keys().copied().max().unwrap_or(0) {
            return false;
        }
        let index = old.index.with_released(version.version, selectors);
        let new = Arc::new(version);
        let mut served = HashMap::new();
        for v in index.versions() {
            let kept = if v == new.version { Some(new.clone()) } else { old.served.get(&v).cloned() };
            let Some(kept) = kept else { return false };
            served.insert(v, kept);
        }
        self.install(
            vec![ServingTopic {
                id: old.id,
                name: old.name.clone(),
                change_seq: seq,
                owner: old.owner.clone(),
                restricted: old.restricted,
                apollo: old.apollo.clone(),
                has_live: true,
                index,
                served,
            }],
            false,
        );
        metrics::counter!("imprint_state_reloads_total", "kind" => "applied").increment(1);
        self.applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Payloads already in memory (of the given topics, or of all), so a reload fetches
    /// only new ones.
    fn cached_payloads(&self, ids: Option<&[i64]>) -> HashMap<(i64, u64), Bytes> {
        let map = self.topics.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|t| ids.is_none_or(|ids| ids.contains(&t.id)))
            .flat_map(|t| t.served.values().filter_map(move |v| v.payload.clone().map(|p| ((t.id, v.version), p))))
            .collect()
    }

    /// Reloads one topic (`Some(id)`) or everything (`None`) from Postgres.
    pub async fn reload(&self, pool: &PgPool, topic_id: Option<i64>) -> crate::Result<()> {
        match topic_id {
            Some(id) => self.reload_ids(pool, Some(&[id])).await,
            None => self.reload_ids(pool, None).await,
        }
    }

    /// Reloads the given topics (`None`: all) from Postgres: what resolution needs now.
    pub async fn reload_ids(&self, pool: &PgPool, ids: Option<&[i64]>) -> crate::Result<()> {
        let started = std::time::Instant::now();
        let cache = self.cached_payloads(ids);
        // One consistent snapshot across the tables (in the BEGIN: one round trip less).
        let mut tx = pool.begin_with(store::serving::BEGIN_SNAPSHOT).await?;
        let loaded = load(&mut tx, ids, &cache).await?;
        tx.commit().await?;
        self.install(loaded, ids.is_none());
        let kind = match ids {
            None => "full",
            Some([_]) => "topic",
            Some(_) => "catch_up",
        };
        metrics::counter!("imprint_state_reloads_total", "kind" => kind).increment(1);
        metrics::histogram!("imprint_state_reload_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The safety net behind NOTIFY: compares every topic's change sequence with the one
    /// loaded and reloads only the topics that differ (or are new). Returns how many.
    pub async fn catch_up(&self, pool: &PgPool) -> crate::Result<usize> {
        let seqs = store::serving::change_seqs(&mut *pool.acquire().await?).await?;
        let stale: Vec<i64> = {
            let map = self.topics.read().unwrap_or_else(|e| e.into_inner());
            let loaded: HashMap<i64, i64> = map.values().map(|t| (t.id, t.change_seq)).collect();
            seqs.into_iter().filter(|(id, seq)| loaded.get(id) != Some(seq)).map(|(id, _)| id).collect()
        };
        metrics::counter!("imprint_state_catch_ups_total").increment(1);
        for chunk in stale.chunks(1000) {
            self.reload_ids(pool, Some(chunk)).await?;
        }
        Ok(stale.len())
    }
}

/// The resolution history of each topic of a snapshot.
pub(crate) fn histories(snap: &store::serving::Snapshot) -> HashMap<i64, TopicHistory> {
    let mut histories: HashMap<i64, TopicHistory> =
        snap.topics.iter().map(|t| (t.id, TopicHistory::default())).collect();
    for row in &snap.versions {
        let v = row.version as u64;
        if let Some(h) = histories.get_mut(&row.topic_id) {
            h.versions.insert(v, VersionEntry { version: v, created_at: row.created_at, purged_at: row.purged_at });
        }
    }
    for s in &snap.scopes {
        if let (Some(h), Ok(selector)) = (histories.get_mut(&s.topic_id), Selector::parse(&s.selector_key)) {
            h.scopes.push(ScopeEntry { version: s.version as u64, selector, added_at: s.added_at });
        }
    }
    add_pins(&mut histories, &snap.pins);
    histories
}

/// Adds pin rows to the histories of their topics (rows of other topics are ignored).
fn add_pins(histories: &mut HashMap<i64, TopicHistory>, pins: &[store::serving::ServedPinRow]) {
    for p in pins {
        if let (Some(h), Ok(selector)) = (histories.get_mut(&p.topic_id), Selector::parse(&p.selector_key)) {
            h.pins.push(PinEntry {
                id: p.id,
                selector,
                version: p.version as u64,
                created_at: p.created_at,
                removed_at: p.removed_at,
            });
        }
    }
}

async fn load(
    conn: &mut PgConnection,
    ids: Option<&[i64]>,
    cache: &HashMap<(i64, u64), Bytes>,
) -> crate::Result<Vec<ServingTopic>> {
    let now = store::serving::current(conn, ids).await?;
    // Per topic, a history of just the present: each selector's best live version and
    // the active pins. The index built from it answers exactly as the full history would.
    let mut present: HashMap<i64, TopicHistory> = now.topics.iter().map(|t| (t.id, TopicHistory::default())).collect();
    for b in &now.best {
        if let (Some(h), Ok(selector)) = (present.get_mut(&b.topic_id), Selector::parse(&b.selector_key)) {
            let v = b.version as u64;
            h.versions.insert(v, VersionEntry { version: v, created_at: b.added_at, purged_at: None });
            h.scopes.push(ScopeEntry { version: v, selector, added_at: b.added_at });
        }
    }
    add_pins(&mut present, &now.pins);
    let indexes: HashMap<i64, CurrentIndex> = present.iter().map(|(id, h)| (*id, h.current_index())).collect();
    // The rows of the versions resolution can return, and the payloads still needed.
    let (tids, vs): (Vec<i64>, Vec<i64>) =
        indexes.iter().flat_map(|(id, ix)| ix.versions().into_iter().map(move |v| (*id, v as i64))).unzip();
    let mut meta: HashMap<(i64, u64), store::serving::ServedVersionRow> = HashMap::new();
    for chunk in (0..tids.len()).step_by(10_000) {
        let end = (chunk + 10_000).min(tids.len());
        for row in store::serving::version_rows(conn, &tids[chunk..end], &vs[chunk..end]).await? {
            meta.insert((row.topic_id, row.version as u64), row);
        }
    }
    let wanted: Vec<(i64, i64)> = meta
        .values()
        .filter(|r| {
            r.size as u64 <= INLINE_POLL_BYTES
                && r.purged_at.is_none()
                && !cache.contains_key(&(r.topic_id, r.version as u64))
        })
        .map(|r| (r.topic_id, r.version))
        .collect();
    let mut payloads: HashMap<(i64, u64), Bytes> = HashMap::new();
    for chunk in wanted.chunks(10_000) {
        let (t, v): (Vec<i64>, Vec<i64>) = chunk.iter().copied().unzip();
        let rows = store::serving::inline_payloads(conn, &t, &v).await?;
        payloads.extend(rows.into_iter().map(|(t, v, d)| ((t, v as u64), Bytes::from(d))));
    }

    let mut out = Vec::with_capacity(now.topics.len());
    let mut indexes = indexes;
    for t in now.topics {
        let Ok(name) = TopicName::parse(&t.name) else { continue };
        let index = indexes.remove(&t.id).unwrap_or_default();
        let mut served = HashMap::new();
        for v in index.versions() {
            let Some(row) = meta.remove(&(t.id, v)) else { continue };
            let payload = cache.get(&(t.id, v)).cloned().or_else(|| payloads.remove(&(t.id, v)));
            served.insert(
                v,
                Arc::new(ServedVersion::new(
                    name.clone(),
                    v,
                    row.content_type,
                    row.size as u64,
                    row.sha256,
                    row.metadata.0,
                    row.created_at,
                    payload,
                )),
            );
        }
        let apollo = match (t.apollo_app_id, t.apollo_namespace) {
            (Some(app_id), Some(namespace)) => Some(ApolloServed { app_id, namespace, secret: t.apollo_secret }),
            _ => None,
        };
        out.push(ServingTopic {
            id: t.id,
            name,
            change_seq: t.change_seq,
            owner: t.owner,
            restricted: t.restricted,
            apollo,
            has_live: t.has_live,
            index,
            served,
        });
    }
    Ok(out)
}

/// Keeps the state current: LISTEN for changes and reload what changed; periodically
/// (and after every reconnect: notifications may have been missed) compare change
/// sequences and reload the topics that differ.
pub async fn follow_changes(
    state: Arc<ServingState>,
    pool: PgPool,
    full_every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(CHANGE_CHANNEL).await {
                Ok(()) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    sleep_or_stop(&mut stop, backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to Postgres to follow changes; serving from memory, retrying");
                sleep_or_stop(&mut stop, backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        // Listening now: catch up with anything missed before.
        if let Err(e) = state.catch_up(&pool).await {
            tracing::warn!(error = %e, "full reload failed; retrying");
            sleep_or_stop(&mut stop, backoff).await;
            continue;
        }
        backoff = std::time::Duration::from_millis(200);
        tracing::info!(topics = state.topic_count(), "serving state loaded; following changes");
        let mut tick = tokio::time::interval(full_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    match state.catch_up(&pool).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(topics = n, "the safety net reloaded topics whose change was not notified"),
                        Err(e) => tracing::warn!(error = %e, "periodic catch-up failed"),
                    }
                }
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        // This one and whatever else has arrived meanwhile: one reload for
                        // the lot, skipping changes this server holds already (its own
                        // writes were applied before they were acknowledged).
                        let mut changed = vec![parse_change(n.payload())];
                        while let Some(more) = listener.next_buffered() {
                            changed.push(parse_change(more.payload()));
                        }
                        metrics::counter!("imprint_notifications_total").increment(changed.len() as u64);
                        let result = if changed.iter().any(Option::is_none) {
                            state.reload(&pool, None).await
                        } else {
                            let mut ids: Vec<i64> = changed
                                .into_iter()
                                .flatten()
                                .filter(|(id, seq)| !state.holds(*id, *seq))
                                .map(|(id, _)| id)
                                .collect();
                            ids.sort_unstable();
                            ids.dedup();
                            if ids.is_empty() { Ok(()) } else { state.reload_ids(&pool, Some(&ids)).await }
                        };
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "reload after notification failed");
                        }
                    }
                    // Connection lost: notifications in between are lost, so start over.
                    Ok(None) | Err(_) => {
                        tracing::warn!("lost the LISTEN connection; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// A change notification: `<topic id>:<change seq>` (or a bare id from an older server).
fn parse_change(payload: &str) -> Option<(i64, i64)> {
    match payload.split_once(':') {
        Some((id, seq)) => Some((id.parse().ok()?, seq.parse().ok()?)),
        None => Some((payload.parse().ok()?, i64::MAX)),
    }
}

async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: std::time::Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_changes_count_as_held_until_applied() {
        let s = ServingState::default();
        assert!(!s.holds(1, 5));
        {
            let _a = s.own_change(1, 5);
            assert!(s.holds(1, 5) && s.holds(1, 4));
            assert!(!s.holds(1, 6), "a later change (another server's) is not covered");
            assert!(!s.holds(2, 5), "nor another topic");
            let b = s.own_change(1, 7);
            assert!(s.holds(1, 7));
            drop(b);
            assert!(!s.holds(1, 7), "a finished writer's mark goes");
        }
        assert!(!s.holds(1, 5));
    }
}
