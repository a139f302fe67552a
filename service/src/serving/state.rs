//! `ServingState`: the loaded topics by name, the change sequences held, the long polls
//! waiting on them; installing what was loaded, applying a writer's own publish, waking.
use super::load::load;
use super::served::{ServedVersion, ServingTopic};
use super::waiters::{WaitSlot, WaiterList};
use crate::store;
use bytes::Bytes;
use imprint_domain::Selector;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// A long poll's wake-up call, registered on the topics it waits for: a change to one of
/// them (and only to them) wakes it, and says which.
pub struct Waiter<'a> {
    _state: &'a ServingState,
    slot: Arc<WaitSlot>,
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
    /// OpenFeature flag key → topic name.
    ofrep: RwLock<HashMap<String, String>>,
    /// Spring application → the names of the topics bound to it.
    spring: RwLock<HashMap<String, Vec<String>>>,
    loaded_once: watch::Sender<bool>,
    /// Every change, by topic name, for the console's live pages: serving changes
    /// (publishes, scopes, pins, rollout stages) and consumer reports written.
    changes: tokio::sync::broadcast::Sender<Arc<[String]>>,
    /// Every region, most preferred first, when several are configured (empty: one):
    /// the order of a served version's `data_urls`.
    regions: Vec<String>,
    /// The public base URL of regions' servers (`IMPRINT_REGION_URLS`).
    region_urls: crate::regions::PublicUrls,
    /// The key provider that opens at-rest payloads as they are loaded (docs/encryption.md).
    keys: Option<crate::keys::Keys>,
}

impl ServingState {
    /// Serving with the configured regions (docs/regions.md).
    pub(crate) fn with_regions(mut self, regions: &crate::regions::Regions) -> Self {
        self.regions = if regions.several() { regions.ranked().to_vec() } else { Vec::new() };
        self.region_urls = regions.public_urls().clone();
        self
    }

    /// Serving that opens at-rest payloads with `keys`.
    pub(crate) fn with_keys(mut self, keys: Option<crate::keys::Keys>) -> Self {
        self.keys = keys;
        self
    }

    /// Every region, most preferred first (empty: one region configured).
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// The public base URL of regions' servers (`IMPRINT_REGION_URLS`).
    pub fn region_urls(&self) -> &crate::regions::PublicUrls {
        &self.region_urls
    }
}

impl Default for ServingState {
    fn default() -> Self {
        Self {
            regions: Vec::new(),
            region_urls: Default::default(),
            keys: None,
            topics: RwLock::new(HashMap::new()),
            own: std::sync::Mutex::new(HashMap::new()),
            seqs: RwLock::new(HashMap::new()),
            waiters: std::sync::Mutex::new(HashMap::new()),
            newcomers: std::sync::Mutex::new(WaiterList::default()),
            wakeups: std::sync::atomic::AtomicU64::new(0),
            applied: std::sync::atomic::AtomicU64::new(0),
            apollo: RwLock::new(HashMap::new()),
            ofrep: RwLock::new(HashMap::new()),
            spring: RwLock::new(HashMap::new()),
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

    /// The topic bound to an OpenFeature flag key.
    pub fn ofrep_topic(&self, flag_key: &str) -> Option<Arc<ServingTopic>> {
        let name = self.ofrep.read().unwrap_or_else(|e| e.into_inner()).get(flag_key).cloned()?;
        self.get(&name).filter(|t| t.ofrep.as_ref().is_some_and(|o| o.flag_key == flag_key))
    }

    /// Every topic bound to an OpenFeature flag key, by flag key.
    pub fn ofrep_topics(&self) -> Vec<Arc<ServingTopic>> {
        let names: Vec<String> = self.ofrep.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut out: Vec<Arc<ServingTopic>> =
            names.iter().filter_map(|n| self.get(n)).filter(|t| t.ofrep.is_some()).collect();
        out.sort_by(|a, b| a.ofrep.as_ref().map(|o| &o.flag_key).cmp(&b.ofrep.as_ref().map(|o| &o.flag_key)));
        out.dedup_by_key(|t| t.id);
        out
    }

    /// The topics bound to a Spring application (any profile), by name.
    pub fn spring_topics(&self, application: &str) -> Vec<Arc<ServingTopic>> {
        let names = self.spring.read().unwrap_or_else(|e| e.into_inner()).get(application).cloned().unwrap_or_default();
        names.iter().filter_map(|n| self.get(n)).collect()
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
            drop(index);
            // So does the OpenFeature index.
            let mut flags = self.ofrep.write().unwrap_or_else(|e| e.into_inner());
            flags.retain(|_, name| !changed_set.contains(name));
            for name in &changed {
                if let Some(o) = map.get(name).and_then(|t| t.ofrep.clone()) {
                    flags.insert(o.flag_key, name.clone());
                }
            }
            drop(flags);
            // So does the Spring index.
            let mut spring = self.spring.write().unwrap_or_else(|e| e.into_inner());
            for names in spring.values_mut() {
                names.retain(|n| !changed_set.contains(n));
            }
            spring.retain(|_, names| !names.is_empty());
            for name in &changed {
                if let Some(b) = map.get(name).and_then(|t| t.spring.as_ref()) {
                    spring.entry(b.application.clone()).or_default().push(name.clone());
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
                ofrep: old.ofrep.clone(),
                spring: old.spring.clone(),
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
    fn cached_payloads(&self, ids: Option<&[i64]>) -> HashMap<(i64, u64), (Bytes, bool)> {
        let map = self.topics.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|t| ids.is_none_or(|ids| ids.contains(&t.id)))
            .flat_map(|t| {
                t.served.values().filter_map(move |v| v.payload.clone().map(|p| ((t.id, v.version), (p, v.sealed))))
            })
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
        let loaded = load(&mut tx, ids, &cache, (&self.regions, &self.region_urls), self.keys.as_ref()).await?;
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
