//! The in-memory serving state: every topic's versions, scopes and pins, so polls and
//! resolution never touch Postgres. Kept current by LISTEN/NOTIFY and a periodic full
//! reload; readers take an `Arc` snapshot of a topic and never block writers for long.
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
    pub version: u64,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub metadata: BTreeMap<String, String>,
    /// Present for small inline payloads of versions some consumer can resolve to now.
    pub payload: Option<Bytes>,
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
    pub history: TopicHistory,
    pub index: CurrentIndex,
    /// The versions that resolution can return now (pinned or best per selector).
    pub served: HashMap<u64, Arc<ServedVersion>>,
}

/// A topic's Apollo binding, as the `/apollo` endpoint needs it.
#[derive(Debug, Clone)]
pub struct ApolloServed {
    pub app_id: String,
    pub namespace: String,
    pub secret: Option<String>,
}

/// A long poll's wake-up call, registered on the topics it waits for: a change to one of
/// them (and only to them) wakes it. Dropping it unregisters it.
pub struct Waiter<'a> {
    state: &'a ServingState,
    notify: Arc<tokio::sync::Notify>,
    topics: Vec<String>,
}

impl Waiter<'_> {
    /// Returns when a registered topic changed since the waiter was made (a change that
    /// came before this call is not lost: it left a permit).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self.state.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for t in &self.topics {
            if let Some(list) = waiters.get_mut(t) {
                list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.notify)));
                if list.is_empty() {
                    waiters.remove(t);
                }
            }
        }
    }
}

pub struct ServingState {
    topics: RwLock<HashMap<String, Arc<ServingTopic>>>,
    /// Topic name → the long polls waiting on it (also for topics that do not exist yet).
    waiters: std::sync::Mutex<HashMap<String, Vec<std::sync::Weak<tokio::sync::Notify>>>>,
    /// Long polls woken by a change (the measure of needless wake-ups).
    wakeups: std::sync::atomic::AtomicU64,
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
            waiters: std::sync::Mutex::new(HashMap::new()),
            wakeups: std::sync::atomic::AtomicU64::new(0),
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

    /// The secrets of an Apollo app's bindings: its requests must be signed with one
    /// of them when there is any.
    pub fn apollo_secrets(&self, app_id: &str) -> Vec<String> {
        let names: Vec<String> = self
            .apollo
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((app, _), _)| app == app_id)
            .map(|(_, n)| n.clone())
            .collect();
        names.iter().filter_map(|n| self.get(n)?.apollo.as_ref()?.secret.clone()).collect()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Registers a long poll on `topics` (names, known or not yet).
    pub fn waiter<S: AsRef<str>>(&self, topics: impl IntoIterator<Item = S>) -> Waiter<'_> {
        let notify = Arc::new(tokio::sync::Notify::new());
        let topics: Vec<String> = topics.into_iter().map(|t| t.as_ref().to_owned()).collect();
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for t in &topics {
            waiters.entry(t.clone()).or_default().push(Arc::downgrade(&notify));
        }
        Waiter { state: self, notify, topics }
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

    /// Wakes the long polls waiting on these topics.
    fn wake(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        self.announce(names);
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let mut woken = 0u64;
        for name in names {
            for w in waiters.get(name).into_iter().flatten() {
                if let Some(n) = w.upgrade() {
                    n.notify_one();
                    woken += 1;
                }
            }
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
                    _ => {
                        changed.push(t.name.to_string());
                        map.insert(t.name.to_string(), Arc::new(t));
                    }
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
        self.wake(&changed);
    }

    /// Payloads already in memory (of one topic, or of all), so a reload fetches only new ones.
    fn cached_payloads(&self, topic_id: Option<i64>) -> HashMap<(i64, u64), Bytes> {
        let map = self.topics.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|t| topic_id.is_none_or(|id| t.id == id))
            .flat_map(|t| t.served.values().filter_map(move |v| v.payload.clone().map(|p| ((t.id, v.version), p))))
            .collect()
    }

    /// Reloads one topic (`Some(id)`) or everything (`None`) from Postgres.
    pub async fn reload(&self, pool: &PgPool, topic_id: Option<i64>) -> crate::Result<()> {
        let started = std::time::Instant::now();
        let cache = self.cached_payloads(topic_id);
        let mut tx = pool.begin().await?;
        // One consistent snapshot across the four tables.
        store::serving::begin_snapshot(&mut tx).await?;
        let loaded = load(&mut tx, topic_id, &cache).await?;
        tx.commit().await?;
        self.install(loaded, topic_id.is_none());
        metrics::counter!("imprint_state_reloads_total", "kind" => if topic_id.is_none() { "full" } else { "topic" })
            .increment(1);
        metrics::histogram!("imprint_state_reload_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
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
    for p in &snap.pins {
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
    histories
}

async fn load(
    conn: &mut PgConnection,
    topic_id: Option<i64>,
    cache: &HashMap<(i64, u64), Bytes>,
) -> crate::Result<Vec<ServingTopic>> {
    let snap = store::serving::snapshot(conn, topic_id).await?;
    let mut histories = histories(&snap);
    let mut meta: HashMap<(i64, u64), store::serving::ServedVersionRow> = HashMap::new();
    for row in snap.versions {
        meta.insert((row.topic_id, row.version as u64), row);
    }

    // Which versions can be served now, and which of their payloads we still need.
    let mut out = Vec::with_capacity(snap.topics.len());
    let mut wanted: Vec<(i64, i64)> = Vec::new();
    for t in snap.topics {
        let Ok(name) = TopicName::parse(&t.name) else { continue };
        let id = t.id;
        let history = histories.remove(&id).unwrap_or_default();
        let index = history.current_index();
        let mut served = HashMap::new();
        for v in index.versions() {
            if let Some(row) = meta.get(&(id, v)) {
                let size = row.size as u64;
                let payload = cache.get(&(id, v)).cloned();
                if payload.is_none() && size <= INLINE_POLL_BYTES && row.purged_at.is_none() {
                    wanted.push((id, v as i64));
                }
                served.insert(
                    v,
                    ServedVersion {
                        version: v,
                        content_type: row.content_type.clone(),
                        size,
                        sha256: row.sha256.clone(),
                        metadata: row.metadata.0.clone(),
                        payload,
                    },
                );
            }
        }
        let apollo = match (t.apollo_app_id, t.apollo_namespace) {
            (Some(app_id), Some(namespace)) => Some(ApolloServed { app_id, namespace, secret: t.apollo_secret }),
            _ => None,
        };
        out.push((id, name, (t.change_seq, t.owner, t.restricted, apollo), history, index, served));
    }
    let mut payloads: HashMap<(i64, u64), Bytes> = HashMap::new();
    if !wanted.is_empty() {
        let (tids, vs): (Vec<i64>, Vec<i64>) = wanted.into_iter().unzip();
        let rows = store::serving::inline_payloads(conn, &tids, &vs).await?;
        payloads.extend(rows.into_iter().map(|(t, v, d)| ((t, v as u64), Bytes::from(d))));
    }
    Ok(out
        .into_iter()
        .map(|(id, name, (change_seq, owner, restricted, apollo), history, index, served)| {
            let served = served
                .into_iter()
                .map(|(v, mut sv)| {
                    if sv.payload.is_none() {
                        sv.payload = payloads.remove(&(id, v));
                    }
                    (v, Arc::new(sv))
                })
                .collect();
            ServingTopic { id, name, change_seq, owner, restricted, apollo, history, index, served }
        })
        .collect())
}

/// Keeps the state current: LISTEN for changes, reload what changed, and reload
/// everything periodically and after every reconnect (notifications may have been missed).
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
        // Listening now: a full reload catches up with anything missed before.
        if let Err(e) = state.reload(&pool, None).await {
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
                    if let Err(e) = state.reload(&pool, None).await {
                        tracing::warn!(error = %e, "periodic reload failed");
                    }
                }
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        metrics::counter!("imprint_notifications_total").increment(1);
                        let id = n.payload().parse::<i64>().ok();
                        if let Err(e) = state.reload(&pool, id).await {
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

async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: std::time::Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
