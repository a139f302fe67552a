//! Identical concurrent reads share one query (single-flight), and their answer is reused
//! for a short while (`IMPRINT_COALESCE_MS`): a redeploying cluster's burst of version
//! lists, consumer lists, resolutions at a time and inline payload downloads costs one
//! query per distinct request, not one per request.
//!
//! What is shared is what Postgres answered, never a decision about a caller: each entry
//! carries the topic's owner and restriction, and every caller's read right is checked
//! against them after the shared load (`Imprint::coalesced`), exactly as the uncoalesced
//! path checks them. Keys hold the topic's `change_seq` as this node's serving state knows
//! it, so an entry is not used past a publish, scope, pin or rollout change the node has
//! learnt of (consumer lists also hold this node's audit-flush count); an answer is at most
//! `coalesce_ttl` older than the query it came from. The read right is checked on both the
//! loaded topic row and the topic as the serving state holds it now.
use crate::error::Result;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// A shared answer and whose topic it is about (what a caller's read right is checked on).
pub(crate) struct Guarded<T> {
    pub name: String,
    pub owner: String,
    pub restricted: bool,
    pub value: T,
}

/// A shared answer that a version is not there (each caller gets its own `Error`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Missing {
    Version,
    Purged,
    Rejected,
}

impl Missing {
    pub fn error(self, topic: &str, version: u64) -> crate::Error {
        match self {
            Missing::Version => crate::Error::VersionNotFound { topic: topic.to_owned(), version },
            Missing::Purged => crate::Error::VersionPurged { topic: topic.to_owned(), version },
            Missing::Rejected => crate::Error::VersionRejected { topic: topic.to_owned(), version },
        }
    }
}

struct Entry<V> {
    started: Instant,
    cell: OnceCell<V>,
}

/// A single-flight map with a TTL and a bound on its size.
pub(crate) struct Coalescer<K, V> {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<K, Arc<Entry<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Coalescer<K, V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Coalescer { ttl, max: max.max(1), map: Mutex::new(HashMap::new()) }
    }

    /// The answer for `key`: the one being loaded or loaded less than `ttl` ago, else
    /// `load`'s. A failed load is not shared: the next waiter loads itself.
    pub async fn get<F, Fut>(&self, key: K, hits: &AtomicU64, load: F) -> Result<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V>>,
    {
        let entry = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = |e: &Entry<V>| !e.cell.initialized() || e.started.elapsed() < self.ttl;
            match map.get(&key) {
                Some(e) if fresh(e) => {
                    hits.fetch_add(1, Ordering::Relaxed);
                    Some(e.clone())
                }
                _ => {
                    if map.len() >= self.max {
                        map.retain(|_, e| fresh(e));
                    }
                    if map.len() >= self.max {
                        None // full of loads in flight: this one is not shared
                    } else {
                        let e = Arc::new(Entry { started: Instant::now(), cell: OnceCell::new() });
                        map.insert(key.clone(), e.clone());
                        Some(e)
                    }
                }
            }
        };
        let Some(entry) = entry else { return load().await };
        let v = entry.cell.get_or_try_init(load).await?.clone();
        if self.ttl.is_zero() {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                map.remove(&key);
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::Coalescer;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_identical_gets_share_one_load_and_a_stale_entry_is_reloaded() {
        let c = Arc::new(Coalescer::<String, u64>::new(Duration::from_millis(100), 10));
        let loads = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (c, loads, hits) = (c.clone(), loads.clone(), hits.clone());
            tasks.push(tokio::spawn(async move {
                c.get("k".into(), &hits, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(7)
                })
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(hits.load(Ordering::SeqCst), 99);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let v = c.get("k".into(), &hits, || async { Ok(8) }).await.unwrap();
        assert_eq!(v, 8, "past the TTL the answer is loaded again");
    }

    #[tokio::test]
    async fn a_failed_load_is_not_shared_and_the_size_is_bounded() {
        let c = Coalescer::<String, u64>::new(Duration::from_secs(60), 2);
        let hits = AtomicU64::new(0);
        let e = c.get("a".into(), &hits, || async { Err(crate::Error::Busy("x".into())) }).await;
        assert!(e.is_err());
        assert_eq!(c.get("a".into(), &hits, || async { Ok(1) }).await.unwrap(), 1);
        assert_eq!(c.get("b".into(), &hits, || async { Ok(2) }).await.unwrap(), 2);
        // Full (two fresh entries): a third key is loaded unshared, and not kept.
        assert_eq!(c.get("c".into(), &hits, || async { Ok(3) }).await.unwrap(), 3);
        assert_eq!(c.map.lock().unwrap().len(), 2);
    }
}
