//! A subscription: the latest good value of one topic, swapped atomically, with a stream
//! of changes; and the type-erased `Slot` the background poller drives.
use arc_swap::ArcSwap;
use futures::Stream;
use imprint_protocol::Applied as AppliedReport;
use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::watch;

/// Where a subscription's current value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The default given to `subscribe_*`: no version was ever applied.
    Default,
    /// The disk cache (`cache_dir`): the last version that applied in an earlier run.
    /// Becomes `Server` once a poll confirms that version is still the right one.
    Cache,
    /// An object-store snapshot (`ClientBuilder::snapshot_store`), read because the
    /// server was unreachable and there was no disk cache. Becomes `Server` once a poll
    /// confirms that version.
    Snapshot,
    /// Delivered (or confirmed) by the server.
    Server,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Cache => "cache",
            Source::Snapshot => "snapshot",
            Source::Server => "server",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One version's payload, as handed to an apply function: the bytes in memory
/// (`subscribe_with`, `subscribe_json`, `subscribe_payload_with`) or a file on disk
/// (`subscribe_file`, `subscribe_file_with`), with what the server says about it.
#[derive(Debug)]
pub struct Payload<'a> {
    pub(crate) topic: &'a str,
    pub(crate) version: u64,
    pub(crate) sha256: &'a str,
    pub(crate) content_type: &'a str,
    pub(crate) metadata: &'a BTreeMap<String, String>,
    pub(crate) pinned: bool,
    pub(crate) source: Source,
    pub(crate) data: Data<'a>,
    /// The client's identities, to decrypt a file payload of an end-to-end topic.
    pub(crate) identities: Option<&'a crate::crypt::Identities>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Data<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl<'a> Payload<'a> {
    pub fn topic(&self) -> &'a str {
        self.topic
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    /// SHA-256 (hex) of the payload, already verified.
    pub fn sha256(&self) -> &'a str {
        self.sha256
    }
    pub fn content_type(&self) -> &'a str {
        self.content_type
    }
    pub fn metadata(&self) -> &'a BTreeMap<String, String> {
        self.metadata
    }
    /// The version reaches this consumer through a pin.
    pub fn pinned(&self) -> bool {
        self.pinned
    }
    /// `Server` for a delivery, `Cache` when a node starts from its disk cache.
    pub fn source(&self) -> Source {
        self.source
    }
    /// The bytes, for in-memory subscriptions.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.data {
            Data::Bytes(b) => Some(b),
            Data::File(_) => None,
        }
    }
    /// The file, for file subscriptions. It stays in place until two newer versions
    /// have applied. For an end-to-end encrypted topic it is the ciphertext (the cache
    /// never holds plaintext): read the plaintext with [`Payload::open`].
    pub fn path(&self) -> Option<&'a Path> {
        match self.data {
            Data::File(p) => Some(p),
            Data::Bytes(_) => None,
        }
    }

    /// The payload is an age file (an end-to-end encrypted topic) still to be decrypted:
    /// only a file payload can be (in-memory payloads are handed over decrypted).
    pub fn encrypted(&self) -> bool {
        match self.data {
            Data::Bytes(b) => crate::crypt::is_age(b),
            Data::File(p) => {
                use std::io::Read;
                let mut head = [0u8; crate::crypt::AGE_MAGIC.len()];
                std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut head)).is_ok() && crate::crypt::is_age(&head)
            }
        }
    }

    /// A reader of the payload's plaintext, streamed: the file or bytes as they are, or
    /// for an encrypted payload decrypted with the client's identities (a read error
    /// then means the ciphertext was altered).
    pub fn open(&self) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
        let raw: Box<dyn std::io::Read + 'a> = match self.data {
            Data::Bytes(b) => Box::new(b),
            Data::File(p) => Box::new(std::fs::File::open(p)?),
        };
        if !self.encrypted() {
            return Ok(raw);
        }
        let ids = self
            .identities
            .ok_or_else(|| std::io::Error::other(crate::crypt::no_identity(self.topic, self.version)))?;
        Ok(Box::new(ids.decrypt_reader(raw).map_err(std::io::Error::other)?))
    }
}

/// How a subscription receives payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// In memory (the payload is read whole).
    Memory,
    /// Streamed to a file in the cache directory.
    File,
}

/// A delivered payload (from the server or a snapshot), verified, before it is applied.
#[derive(Debug)]
pub(crate) enum Fetched {
    Memory(Vec<u8>),
    /// In place in the topic's directory.
    File(std::path::PathBuf),
}

pub(crate) type ApplyFn<T> = Arc<dyn Fn(&Payload<'_>) -> Result<T, String> + Send + Sync>;

/// The value and what is known about it, swapped as one.
struct Held<T> {
    value: Arc<T>,
    version: Option<u64>,
    source: Source,
    sha256: Option<String>,
    pinned: bool,
}

impl<T> Clone for Held<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            version: self.version,
            source: self.source,
            sha256: self.sha256.clone(),
            pinned: self.pinned,
        }
    }
}

/// What the poller remembers per topic between polls.
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    /// (version, pinned) that failed to apply: not tried again until the server offers
    /// something else (a newer version, a pin).
    pub rejected: Option<(u64, bool)>,
    /// The server offers only the rejected version: left out of long polls (it would
    /// answer at once) and asked about on periodic short polls instead.
    pub stuck: bool,
    /// The outcome of the last apply, for the next poll.
    pub report: Option<AppliedReport>,
    /// Filled in by `subscribe_*` (cache read); the poller ignores the slot until then.
    pub ready: bool,
    /// The object-store snapshot was looked at (once per subscription).
    #[cfg_attr(not(feature = "snapshots"), allow(dead_code))]
    pub snapshot_tried: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One topic's state, shared by its `Subscription` handles and the poller.
pub(crate) struct Shared<T> {
    topic: String,
    kind: Kind,
    apply: ApplyFn<T>,
    current: ArcSwap<Held<T>>,
    changes: watch::Sender<Arc<T>>,
    state: Mutex<SlotState>,
    /// Set once the first poll that asked about this topic is over (whatever its outcome).
    settled: watch::Sender<bool>,
}

impl<T: Send + Sync + 'static> Shared<T> {
    pub fn new(topic: &str, kind: Kind, default: T, apply: ApplyFn<T>) -> Self {
        let value = Arc::new(default);
        let held = Held { value: value.clone(), version: None, source: Source::Default, sha256: None, pinned: false };
        Self {
            topic: topic.to_owned(),
            kind,
            apply,
            current: ArcSwap::from_pointee(held),
            changes: watch::channel(value).0,
            state: Mutex::new(SlotState::default()),
            settled: watch::channel(false).0,
        }
    }

    pub async fn wait_settled(&self) {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The poller's view of a subscription, whatever its value type.
pub(crate) trait Slot: Send + Sync {
    fn topic(&self) -> &str;
    fn kind(&self) -> Kind;
    fn version(&self) -> Option<u64>;
    fn sha256(&self) -> Option<String>;
    fn source(&self) -> Source;
    /// Runs the apply function (blocking: call it off the async threads) and, when it
    /// succeeds, swaps the value in.
    fn try_apply(&self, payload: &Payload<'_>) -> Result<(), String>;
    /// A poll says the version held is still the right one.
    fn confirm(&self);
    fn state(&self) -> MutexGuard<'_, SlotState>;
    fn settle(&self);
    fn is_settled(&self) -> bool;
}

impl<T: Send + Sync + 'static> Slot for Shared<T> {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn kind(&self) -> Kind {
        self.kind
    }
    fn version(&self) -> Option<u64> {
        self.current.load().version
    }
    fn sha256(&self) -> Option<String> {
        self.current.load().sha256.clone()
    }
    fn source(&self) -> Source {
        self.current.load().source
    }

    fn try_apply(&self, payload: &Payload<'_>) -> Result<(), String> {
        let value = Arc::new((self.apply)(payload)?);
        self.current.store(Arc::new(Held {
            value: value.clone(),
            version: Some(payload.version),
            source: payload.source,
            sha256: Some(payload.sha256.to_owned()),
            pinned: payload.pinned,
        }));
        self.changes.send_replace(value);
        Ok(())
    }

    fn confirm(&self) {
        let held = self.current.load();
        if held.version.is_some() && held.source != Source::Server {
            let mut confirmed = Held::clone(&held);
            confirmed.source = Source::Server;
            self.current.store(Arc::new(confirmed));
        }
    }

    fn state(&self) -> MutexGuard<'_, SlotState> {
        lock(&self.state)
    }

    fn settle(&self) {
        self.settled.send_if_modified(|s| !std::mem::replace(s, true));
    }

    fn is_settled(&self) -> bool {
        *self.settled.borrow()
    }
}

/// Keeps the background poller running while any handle (client or subscription) lives;
/// the last one dropped stops it.
pub(crate) struct KeepAlive {
    pub stop: watch::Sender<bool>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A topic kept up to date by the client. Cheap to clone; `get` never blocks and always
/// returns a valid value (the default until a version applies).
pub struct Subscription<T> {
    pub(crate) shared: Arc<Shared<T>>,
    pub(crate) _keep: Arc<KeepAlive>,
    /// Without a cache directory, downloaded files live in a private temporary
    /// directory: it stays while a subscription may hand out their paths.
    pub(crate) _files: Option<Arc<crate::cache::Scratch>>,
}

impl<T> Clone for Subscription<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), _keep: self._keep.clone(), _files: self._files.clone() }
    }
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.shared.current.load();
        f.debug_struct("Subscription")
            .field("topic", &self.shared.topic)
            .field("version", &held.version)
            .field("source", &held.source)
            .finish()
    }
}

/// A consistent view of a subscription: the value and the version it came from.
#[derive(Debug)]
pub struct Current<T> {
    pub value: Arc<T>,
    /// `None` for the default value.
    pub version: Option<u64>,
    pub source: Source,
    pub sha256: Option<String>,
    pub pinned: bool,
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.shared.current.load().value.clone()
    }

    /// The version of the current value (`None`: still the default).
    pub fn version(&self) -> Option<u64> {
        self.shared.current.load().version
    }

    /// Where the current value comes from.
    pub fn source(&self) -> Source {
        self.shared.current.load().source
    }

    /// Value, version and source read together.
    pub fn current(&self) -> Current<T> {
        let h = self.shared.current.load();
        Current {
            value: h.value.clone(),
            version: h.version,
            source: h.source,
            sha256: h.sha256.clone(),
            pinned: h.pinned,
        }
    }

    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The values applied from now on, as a `Stream` (the current one is not repeated).
    /// A slow reader skips to the newest value. The stream ends when every handle of the
    /// subscription is gone.
    pub fn changes(&self) -> Changes<T> {
        let mut rx = self.shared.changes.subscribe();
        rx.mark_unchanged();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            let v = rx.borrow_and_update().clone();
            Some((v, rx))
        });
        Changes { inner: Box::pin(stream) }
    }

    /// The underlying `watch` receiver, for `tokio::select!` loops that prefer it.
    pub fn watch(&self) -> watch::Receiver<Arc<T>> {
        self.shared.changes.subscribe()
    }
}

/// New values of a subscription (see `Subscription::changes`).
pub struct Changes<T> {
    inner: Pin<Box<dyn Stream<Item = Arc<T>> + Send>>,
}

impl<T> Changes<T> {
    /// The next value applied; `None` once the subscription is gone.
    pub async fn next(&mut self) -> Option<Arc<T>> {
        futures::StreamExt::next(&mut self.inner).await
    }
}

impl<T> Stream for Changes<T> {
    type Item = Arc<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<T>>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Applies a payload, decrypting in-memory bytes of an age file first (the plaintext
/// stays in memory: what is cached is the ciphertext, saved after this).
pub(crate) fn apply_decrypted(slot: &dyn Slot, p: &Payload<'_>) -> Result<(), String> {
    let Data::Bytes(b) = p.data else { return slot.try_apply(p) };
    if !crate::crypt::is_age(b) {
        return slot.try_apply(p);
    }
    let ids = p.identities.ok_or_else(|| crate::crypt::no_identity(p.topic, p.version))?;
    let plain = ids.decrypt(b).map_err(|e| e.to_string())?;
    let q = Payload { data: Data::Bytes(&plain), identities: None, ..*p };
    slot.try_apply(&q)
}
