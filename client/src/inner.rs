//! The state a [`Client`](crate::Client) shares with its background task: the settings,
//! the HTTP client and server URL, the consumer's identity, the disk cache and the
//! registered subscriptions. The client builds it and the poller, fetch and delivery
//! code read it; it depends on none of them.
use crate::cache::Store;
use crate::subscription::{lock, Slot};
use imprint_protocol::Consumer;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The longest a long poll may be held (the server refuses more than 60 s).
pub(crate) const MAX_LONG_POLL: Duration = Duration::from_secs(60);

/// Timings and limits of a client (see the builder's methods for each).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub initial_wait: Duration,
    pub long_poll: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub client_error_retry: Duration,
    pub startup_fallback: usize,
    pub recheck_rejected: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            initial_wait: Duration::from_secs(5),
            long_poll: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            client_error_retry: Duration::from_secs(60),
            startup_fallback: 3,
            recheck_rejected: Duration::from_secs(10),
        }
    }
}

/// What the client handle and the poller share.
pub(crate) struct Inner {
    pub settings: Settings,
    /// age identities for end-to-end encrypted topics (`ClientBuilder::identity_file`).
    pub identities: Option<crate::crypt::Identities>,
    /// Where snapshots are read when the server is unreachable.
    #[cfg(feature = "snapshots")]
    pub snapshots: Option<crate::snapshot::Snapshots>,
    /// The disk cache could not be written (said once).
    pub cache_warned: AtomicBool,
    pub http: reqwest::Client,
    /// The server URLs without a trailing slash (the first, then the fallbacks); API paths
    /// are appended to the current one.
    pub bases: Vec<String>,
    pub current: std::sync::atomic::AtomicUsize,
    pub token: Option<String>,
    pub consumer: Consumer,
    pub store: Store,
    pub slots: Mutex<BTreeMap<String, Weak<dyn Slot>>>,
    /// Bumped by every new subscription; the poller restarts its poll when it changes.
    pub generation: AtomicU64,
    pub wake: Notify,
    pub stop: watch::Receiver<bool>,
    pub task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Topic → the region whose copy of its payload was downloaded last (several regions:
    /// docs/regions.md).
    pub served_regions: Mutex<BTreeMap<String, String>>,
}

impl Inner {
    /// The server polled now.
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.bases.get(i).or(self.bases.first()).map_or("", String::as_str)
    }

    /// After a failed poll: the next server, if there are several (wrapping around).
    pub fn fail_over(&self) {
        if self.bases.len() > 1 {
            let next = (self.current.load(std::sync::atomic::Ordering::Relaxed) + 1) % self.bases.len();
            self.current.store(next, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(server = %self.bases[next], "trying the next server");
        }
    }

    /// Whether `url` is on one of the configured servers (the whole origin: a
    /// `http://imprint:3000.evil.example/` link is not `http://imprint:3000`).
    pub fn is_ours(&self, url: &str) -> bool {
        self.bases.iter().any(|b| {
            url.strip_prefix(b.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
        })
    }

    /// The region whose copy of `topic`'s payload was downloaded last (docs/regions.md).
    pub fn served_region(&self, topic: &str) -> Option<String> {
        self.served_regions.lock().unwrap_or_else(|e| e.into_inner()).get(topic).cloned()
    }

    /// Records where `topic`'s payload came from (`None`: inline, or one region).
    pub fn set_served_region(&self, topic: &str, region: Option<&str>) {
        let mut m = self.served_regions.lock().unwrap_or_else(|e| e.into_inner());
        match region {
            Some(r) => m.insert(topic.to_owned(), r.to_owned()),
            None => m.remove(topic),
        };
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{}", self.base(), path)
        }
    }

    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        // Only our own server gets the token (a `data_url` could point elsewhere).
        match &self.token {
            Some(t) if self.is_ours(url) => r.bearer_auth(t),
            _ => r,
        }
    }

    /// The live, ready subscriptions (dropped ones are forgotten here).
    pub fn live_slots(&self) -> Vec<Arc<dyn Slot>> {
        let mut slots = lock(&self.slots);
        slots.retain(|_, w| w.strong_count() > 0);
        slots.values().filter_map(Weak::upgrade).filter(|s| s.state().ready).collect()
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Returns when a subscription was added after `generation`.
    pub async fn subscribed_since(&self, generation: u64) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            notified.await;
        }
    }
}
