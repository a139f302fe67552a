//! `Client` and its builder: the connection settings, the consumer's identity, and the
//! `subscribe_*` calls that register topics with the background poller.
use crate::cache::Store;
use crate::error::{Error, Result};
use crate::inner::{Inner, Settings, MAX_LONG_POLL};
use crate::subscription::{lock, ApplyFn, Data, KeepAlive, Kind, Payload, Shared, Slot, Source, Subscription};
use imprint_protocol::Consumer;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Builds a [`Client`]: `Client::builder("http://imprint:3000")`.
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    fallback_urls: Vec<String>,
    token: Option<String>,
    instance: Option<String>,
    labels: BTreeMap<String, String>,
    cache_dir: Option<PathBuf>,
    snapshot_store: Option<String>,
    #[cfg(feature = "snapshots")]
    snapshot_keyring: Option<PathBuf>,
    #[cfg(feature = "snapshots")]
    snapshot_keys: Option<Arc<dyn imprint_seal::KeyProvider>>,
    settings: Settings,
    http: Option<reqwest::Client>,
    identities: Option<crate::crypt::Identities>,
    identity_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("fallback_urls", &self.fallback_urls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("instance", &self.instance)
            .field("labels", &self.labels)
            .field("cache_dir", &self.cache_dir)
            .field("snapshot_store", &self.snapshot_store)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// More servers (of the same Imprint deployment), tried in order after the first one
    /// when a poll fails with a network error, a timeout or a 5xx; the client stays on the
    /// one that answers. Their payload links and the token go to whichever is current.
    pub fn fallback_urls<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.fallback_urls.extend(urls.into_iter().map(Into::into));
        self
    }

    /// An age identity file (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes them), read
    /// by `build`: payloads of end-to-end encrypted topics are decrypted with it after
    /// their checksum (the ciphertext's) is verified. The disk cache keeps the ciphertext.
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity_file = Some(path.into());
        self
    }

    /// Identities given in memory, instead of (or besides) [`ClientBuilder::identity_file`].
    pub fn identities(mut self, ids: crate::crypt::Identities) -> Self {
        self.identities = Some(ids);
        self
    }

    /// A bearer token (a consumer token in production; see the server's README).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into()).filter(|t: &String| !t.is_empty());
        self
    }

    /// This node's name in the consumer audit (default: the host name).
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// One of this node's labels (`region`, `app`, `cluster`, …): they decide which
    /// version it gets.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn labels<K: Into<String>, V: Into<String>>(mut self, labels: impl IntoIterator<Item = (K, V)>) -> Self {
        self.labels.extend(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Keep the last good payload of each topic here, and start from it when the server
    /// is unreachable. Large payloads of `subscribe_file` land here too (without a cache
    /// directory they go to a private temporary directory, removed when the client and
    /// its subscriptions are gone).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The server's payload object store (its `IMPRINT_OBJECT_STORE`: `s3://bucket/prefix`,
    /// `file:///dir`, `gs://…`, `az://…`; S3 credentials from the `AWS_*` variables). When
    /// the server is unreachable and a subscription has no disk cache to start from, it
    /// starts from the topic's snapshot there (`Source::Snapshot`): what `*` resolved to
    /// when the server's worker last wrote it.
    #[cfg(feature = "snapshots")]
    pub fn snapshot_store(mut self, url: impl Into<String>) -> Self {
        self.snapshot_store = Some(url.into());
        self
    }

    /// A copy of the server's keyring file (`imprint-server keys …`), read by `build`:
    /// snapshots of topics encrypted at rest are sealed under the topic's key, and open
    /// with it (docs/encryption.md, "Snapshots"). Without a key provider a sealed snapshot
    /// is not used (an error is logged; the subscription starts as with no snapshot).
    #[cfg(feature = "snapshots")]
    pub fn snapshot_keyring(mut self, path: impl Into<PathBuf>) -> Self {
        self.snapshot_keyring = Some(path.into());
        self
    }

    /// Any key provider (`imprint_client::seal::AwsKms` for a KMS key, or your own
    /// `KeyProvider`) for opening sealed snapshots; used besides `snapshot_keyring` when
    /// both are given (the keyring first).
    #[cfg(feature = "snapshots")]
    pub fn snapshot_key_provider(mut self, provider: Arc<dyn imprint_seal::KeyProvider>) -> Self {
        self.snapshot_keys = Some(provider);
        self
    }

    /// How long `subscribe_*` waits for the server's first answer before returning with
    /// the cached or default value (default 5 s). Zero returns at once.
    pub fn initial_wait(mut self, wait: Duration) -> Self {
        self.settings.initial_wait = wait;
        self
    }

    /// How long the server may hold a poll (default 30 s, at most 60 s).
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.settings.long_poll = wait.min(MAX_LONG_POLL);
        self
    }

    /// Bound of each request beyond the long-poll hold (default 30 s); also the bound of
    /// the silence between two chunks of a download.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self.settings.idle_timeout = timeout;
        self
    }

    /// Retry delays after network errors and 5xx: exponential from `min` to `max`, with
    /// jitter (default 0.5 s to 30 s). 4xx answers are retried after `2 × max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.min_backoff = min.max(Duration::from_millis(1));
        self.settings.max_backoff = max.max(self.settings.min_backoff);
        self.settings.client_error_retry = self.settings.max_backoff * 2;
        self
    }

    /// At start-up, when the newest version fails to apply, try this many older ones
    /// (newest first; default 3; 0 turns the fallback off).
    pub fn startup_fallback(mut self, versions: usize) -> Self {
        self.settings.startup_fallback = versions;
        self
    }

    /// While the server offers only a version that failed to apply here, ask it about
    /// newer ones this often (default 10 s) instead of long polling (the server answers a
    /// long poll at once while it has an update this node rejected).
    pub fn recheck_rejected(mut self, every: Duration) -> Self {
        self.settings.recheck_rejected = every.max(Duration::from_millis(100));
        self
    }

    /// Use this HTTP client (proxies, custom TLS roots, …). Its own timeouts apply on top.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    pub fn build(self) -> Result<Client> {
        let mut bases = Vec::new();
        for url in std::iter::once(&self.url).chain(&self.fallback_urls) {
            let base = url.trim().trim_end_matches('/').to_owned();
            let parsed = reqwest::Url::parse(&base).map_err(|e| Error::Config(format!("server URL {base:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::Config(format!("server URL {base:?} must be http:// or https://")));
            }
            bases.push(base);
        }
        let instance = self.instance.unwrap_or_else(default_instance);
        if instance.is_empty() || instance.len() > 256 || instance.chars().any(char::is_control) {
            return Err(Error::Config("the instance name must be 1-256 characters without control characters".into()));
        }
        let http = match self.http {
            Some(h) => h,
            None => reqwest::Client::builder()
                .user_agent(concat!("imprint-client/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| Error::Config(format!("HTTP client: {e}")))?,
        };
        let store = match self.cache_dir {
            Some(dir) => Store::new(dir, true),
            None => Store::new(
                std::env::temp_dir().join(format!(
                    "imprint-client-{}-{}",
                    std::process::id(),
                    hex::encode(rand::random::<[u8; 4]>())
                )),
                false,
            ),
        };
        let labels =
            imprint_domain::Labels::from_pairs(self.labels).map_err(|e| Error::Config(format!("labels: {e}")))?;
        #[cfg(feature = "snapshots")]
        if let Some(path) = &self.snapshot_keyring {
            // As the other clients and the agent: a keyring is for snapshots, and must exist
            // (the keyring loader reads a missing file as an empty keyring).
            if self.snapshot_store.is_none() {
                return Err(Error::Config("snapshot_keyring opens sealed snapshots: give snapshot_store too".into()));
            }
            if !path.is_file() {
                return Err(Error::Config(format!("snapshot keyring {}: no such file", path.display())));
            }
        }
        #[cfg(feature = "snapshots")]
        let snapshots = match &self.snapshot_store {
            Some(url) => {
                let keyring: Option<Arc<dyn imprint_seal::KeyProvider>> = match &self.snapshot_keyring {
                    Some(path) => Some(Arc::new(imprint_seal::LocalKeyring::open(path).map_err(Error::Config)?)),
                    None => None,
                };
                let keys = crate::snapshot::Providers::of(keyring.into_iter().chain(self.snapshot_keys.clone()));
                Some(crate::snapshot::Snapshots::open(url, keys)?)
            }
            None => None,
        };
        let identities = match (&self.identity_file, self.identities) {
            (Some(path), given) => {
                let read = crate::crypt::Identities::from_file(path).map_err(|e| Error::Config(e.to_string()))?;
                Some(match given {
                    Some(g) => g.join(&read),
                    None => read,
                })
            }
            (None, given) => given,
        };
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            identities,
            #[cfg(feature = "snapshots")]
            snapshots,
            cache_warned: AtomicBool::new(false),
            settings: self.settings,
            http,
            bases,
            current: std::sync::atomic::AtomicUsize::new(0),
            token: self.token,
            consumer: Consumer { instance, labels },
            store,
            slots: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            wake: Notify::new(),
            stop: stop.subscribe(),
            task: Mutex::new(None),
            served_regions: Mutex::new(Default::default()),
        });
        Ok(Client { inner, keep: Arc::new(KeepAlive { stop }) })
    }
}

/// The host name, as the default instance name.
fn default_instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "imprint-client".into())
}

/// A topic name as the server checks it (the domain's `TopicName`).
pub(crate) fn valid_topic(t: &str) -> bool {
    imprint_domain::TopicName::parse(t).is_ok()
}

/// An Imprint consumer: one background task long-polls every subscription of this
/// client in one request. Cheap to clone. Polling stops on [`Client::shutdown`] or when
/// the client and all its subscriptions are dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    keep: Arc<KeepAlive>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.base())
            .field("instance", &self.inner.consumer.instance)
            .field("labels", &self.inner.consumer.labels)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            fallback_urls: Vec::new(),
            token: None,
            instance: None,
            labels: BTreeMap::new(),
            cache_dir: None,
            snapshot_store: None,
            #[cfg(feature = "snapshots")]
            snapshot_keyring: None,
            #[cfg(feature = "snapshots")]
            snapshot_keys: None,
            settings: Settings::default(),
            http: None,
            identities: None,
            identity_file: None,
        }
    }

    /// The region whose copy of `topic`'s payload was downloaded last (servers with
    /// several regions, docs/regions.md); None before any such download.
    pub fn served_region(&self, topic: &str) -> Option<String> {
        self.inner.served_region(topic)
    }

    pub fn instance(&self) -> &str {
        &self.inner.consumer.instance
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.inner.consumer.labels.pairs()
    }

    /// A JSON payload deserialized into `T`. A payload that does not parse is a failed
    /// apply: the old value stays, the failure is reported.
    pub async fn subscribe_json<T>(&self, topic: &str, default: T) -> Result<Subscription<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.subscribe_with(topic, default, |bytes| serde_json::from_slice::<T>(bytes)).await
    }

    /// The payload's bytes turned into `T` by `apply`; an `Err` keeps the old value and
    /// is reported to the server (its `Display` is the message).
    pub async fn subscribe_with<T, E, F>(&self, topic: &str, default: T, apply: F) -> Result<Subscription<T>>
    where
        T: Send + Sync + 'static,
        E: Display,
        F: Fn(&[u8]) -> std::result::Result<T, E> + Send + Sync + 'static,
    {
        self.subscribe_payload_with(topic, default, move |p: &Payload<'_>| apply(p.bytes().unwrap_or_default())).await
    }

    /// As `subscribe_with`, with the version, checksum and metadata at hand.
    pub async fn subscribe_payload_with<T, E, F>(&self, topic: &str, default: T, apply: F) -> Result<Subscription<T>>
    where
        T: Send + Sync + 'static,
        E: Display,
        F: Fn(&Payload<'_>) -> std::result::Result<T, E> + Send + Sync + 'static,
    {
        let apply: ApplyFn<T> = Arc::new(move |p: &Payload<'_>| apply(p).map_err(|e| e.to_string()));
        self.subscribe_inner(topic, default, Kind::Memory, apply).await
    }

    /// The raw bytes of each version.
    pub async fn subscribe_bytes(&self, topic: &str) -> Result<Subscription<bytes::Bytes>> {
        self.subscribe_with(topic, bytes::Bytes::new(), |b| Ok::<_, std::convert::Infallible>(b.to_vec().into())).await
    }

    /// Large payloads: each version is streamed to a file (verified, then renamed into
    /// the cache directory) and `get()` is its path (`None` until a version applies).
    pub async fn subscribe_file(&self, topic: &str) -> Result<Subscription<Option<PathBuf>>> {
        self.subscribe_file_with(topic, None, |p: &Payload<'_>| {
            p.path().map(|p| Some(p.to_path_buf())).ok_or("no file")
        })
        .await
    }

    /// A file payload turned into `T` by `apply` (load a model, check a database, run
    /// a command…): an `Err` keeps the old value and is reported.
    pub async fn subscribe_file_with<T, E, F>(&self, topic: &str, default: T, apply: F) -> Result<Subscription<T>>
    where
        T: Send + Sync + 'static,
        E: Display,
        F: Fn(&Payload<'_>) -> std::result::Result<T, E> + Send + Sync + 'static,
    {
        let apply: ApplyFn<T> = Arc::new(move |p: &Payload<'_>| apply(p).map_err(|e| e.to_string()));
        self.subscribe_inner(topic, default, Kind::File, apply).await
    }

    async fn subscribe_inner<T: Send + Sync + 'static>(
        &self,
        topic: &str,
        default: T,
        kind: Kind,
        apply: ApplyFn<T>,
    ) -> Result<Subscription<T>> {
        if !valid_topic(topic) {
            return Err(Error::InvalidTopic(topic.to_owned()));
        }
        if self.inner.stopped() {
            return Err(Error::Shutdown);
        }
        let shared = Arc::new(Shared::new(topic, kind, default, apply));
        {
            let mut slots = lock(&self.inner.slots);
            if slots.get(topic).is_some_and(|w| w.strong_count() > 0) {
                return Err(Error::AlreadySubscribed(topic.to_owned()));
            }
            let slot: Arc<dyn Slot> = shared.clone();
            slots.insert(topic.to_owned(), Arc::downgrade(&slot));
        }
        self.start_from_cache(&shared).await;
        shared.state().ready = true;
        self.ensure_poller();
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        self.inner.wake.notify_waiters();
        let _ = tokio::time::timeout(self.inner.settings.initial_wait, shared.wait_settled()).await;
        Ok(Subscription { shared, _keep: self.keep.clone(), _files: self.inner.store.guard() })
    }

    /// Applies the cached payload of the topic, if any (it may fail to apply: a new
    /// version of the program may not read an old payload; then the default stays).
    async fn start_from_cache<T: Send + Sync + 'static>(&self, shared: &Arc<Shared<T>>) {
        let store = self.inner.store.clone();
        if !store.persistent() {
            return;
        }
        let slot = shared.clone();
        let topic = shared.topic().to_owned();
        let identities = self.inner.identities.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let (meta, path) = store.load(&topic)?;
            let bytes = match slot.kind() {
                Kind::Memory => match std::fs::read(&path) {
                    Ok(b) => Some(b),
                    Err(e) => return Some(Err(format!("reading {}: {e}", path.display()))),
                },
                Kind::File => None,
            };
            let data = match &bytes {
                Some(b) => Data::Bytes(b),
                None => Data::File(Path::new(&path)),
            };
            let payload = Payload {
                topic: &topic,
                version: meta.version,
                sha256: &meta.sha256,
                content_type: &meta.content_type,
                metadata: &meta.metadata,
                pinned: false,
                source: Source::Cache,
                data,
                identities: identities.as_ref(),
            };
            Some(crate::subscription::apply_decrypted(slot.as_ref(), &payload).map(|()| meta.version))
        })
        .await;
        match outcome {
            Ok(Some(Ok(version))) => {
                tracing::info!(topic = shared.topic(), version, "starting from the disk cache");
                metrics::gauge!("imprint_client_version", "topic" => shared.topic().to_owned()).set(version as f64);
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(topic = shared.topic(), error = %e, "the cached payload does not apply; ignoring it")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(topic = shared.topic(), error = %e, "reading the cache failed"),
        }
    }

    fn ensure_poller(&self) {
        let mut task = lock(&self.inner.task);
        if task.as_ref().is_none_or(|t| t.is_finished()) && !self.inner.stopped() {
            let inner = self.inner.clone();
            *task = Some(tokio::spawn(crate::poller::run(inner)));
        }
    }

    /// Stops the background task (an open long poll is abandoned) and waits for it, then
    /// sends the apply outcomes not reported yet (one short poll, at most 5 s). The
    /// subscriptions keep their last value (and their files: without a cache directory,
    /// the private temporary directory goes when the client and its subscriptions do).
    pub async fn shutdown(&self) {
        self.keep.stop.send_replace(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        crate::poller::flush_reports(&self.inner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_server_rule() {
        assert!(valid_topic("payments.methods"));
        assert!(valid_topic("0-a_b"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic("a/b"));
        assert!(!valid_topic("Caps"));
        assert!(!valid_topic(&"a".repeat(129)));
    }

    #[test]
    fn builder_checks_the_url_and_redacts_the_token() {
        assert!(matches!(Client::builder("ftp://x").build(), Err(Error::Config(_))));
        assert!(matches!(Client::builder("not a url").build(), Err(Error::Config(_))));
        let b = Client::builder("http://imprint:3000/").token("s3cret").instance("i-1");
        assert!(!format!("{b:?}").contains("s3cret"));
        let c = b.build().expect("builds");
        assert_eq!(c.inner.url("/api/v1/poll"), "http://imprint:3000/api/v1/poll");
        assert_eq!(c.instance(), "i-1");
        // The token goes to the configured servers only, by whole origin.
        assert!(c.inner.is_ours("http://imprint:3000/api/v1/topics/t/versions/1/data"));
        assert!(!c.inner.is_ours("http://imprint:3000.evil.example/steal"));
        assert!(!c.inner.is_ours("http://imprint:30000/x"));
        let two = Client::builder("http://a:1").fallback_urls(["http://b:2/"]).build().expect("builds");
        assert_eq!(two.inner.url("/x"), "http://a:1/x");
        two.inner.fail_over();
        assert_eq!(two.inner.url("/x"), "http://b:2/x");
        assert!(two.inner.is_ours("http://a:1/y") && two.inner.is_ours("http://b:2/y"));
        two.inner.fail_over();
        assert_eq!(two.inner.url("/x"), "http://a:1/x", "wraps around");
        assert!(matches!(Client::builder("http://a:1").fallback_urls(["nope"]).build(), Err(Error::Config(_))));
    }

    #[cfg(feature = "snapshots")]
    #[test]
    fn a_snapshot_keyring_needs_a_store_and_an_existing_file() {
        let dir = std::env::temp_dir().join(format!("imprint-client-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ring = dir.join("keyring.json");
        std::fs::write(&ring, r#"{"format": 1, "keys": {}}"#).unwrap();
        let store = format!("file://{}", dir.display());
        let Err(e) = Client::builder("http://a:1").snapshot_keyring(&ring).build() else { panic!("built") };
        assert!(e.to_string().contains("snapshot_store"), "{e}");
        let missing = Client::builder("http://a:1").snapshot_store(&store).snapshot_keyring(dir.join("missing.json"));
        let Err(e) = missing.build() else { panic!("built") };
        assert!(e.to_string().contains("no such file"), "{e}");
        assert!(Client::builder("http://a:1").snapshot_store(&store).snapshot_keyring(&ring).build().is_ok());
        std::fs::write(&ring, "not json").unwrap();
        let e = Client::builder("http://a:1").snapshot_store(&store).snapshot_keyring(&ring).build();
        assert!(matches!(e, Err(Error::Config(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
