//! Key providers for envelope encryption at rest (docs/encryption.md, "Key providers"):
//! whatever holds the key-encryption keys (KEKs) wraps and unwraps 256-bit data keys
//! behind one trait. Built: the local keyring file (the embedded default) and AWS KMS
//! (`AwsKms`). Documented for Vault transit, GCP and Azure KMS, not built.
//!
//! The keyring file (`IMPRINT_KEYRING`, default `$IMPRINT_HOME/keyring.json`, mode 0600):
//! `{"format": 1, "keys": {"<id>": {"primary": 2, "versions": {"1": "<base64 KEK>", "2": …}}}}`.
//! A data key is wrapped as `nonce (12) ‖ AES-256-GCM(KEK, data key) ‖ tag (16)` with the
//! associated data `imprint-keyring-v1 ‖ 0 ‖ key id ‖ 0 ‖ version (u32 BE)`: a wrapped key
//! moved to another id or version does not unwrap. Rotation adds a version and makes it the
//! primary (new data keys); old versions stay for unwrapping until retired.
use crate::at_rest::check_key_id;
use aes_gcm::aead::{generic_array::GenericArray, Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The provider cannot be reached (a KMS that is down): try again later.
    #[error("the key provider is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    UnknownKey(String),
    /// The wrapped key did not unwrap: altered, or not wrapped by this key.
    #[error("{0}")]
    Refused(String),
}

/// A fresh data key and how the provider wrapped it.
pub struct DataKey {
    pub key: [u8; 32],
    pub key_version: u32,
    pub wrapped: Vec<u8>,
}

/// What every key provider does. `key_version` is the KEK version a wrapped key was made
/// with (0 for providers that track versions inside their own ciphertext, like KMS).
pub trait KeyProvider: Send + Sync + 'static {
    /// `local`, `aws-kms`, …
    fn kind(&self) -> &'static str;
    /// Wraps `key` under the key's current primary version.
    fn wrap<'a>(&'a self, key_id: &'a str, key: &'a [u8; 32]) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>>;
    fn unwrap<'a>(
        &'a self,
        key_id: &'a str,
        key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyError>>;
    /// A fresh random data key, wrapped (KMS: one `GenerateDataKey` call).
    fn generate<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            let key = random_key();
            let (key_version, wrapped) = self.wrap(key_id, &key).await?;
            Ok(DataKey { key, key_version, wrapped })
        })
    }
    /// A wrapped key under the key's current primary version (`keys rotate --rewrap`).
    fn rewrap<'a>(
        &'a self,
        key_id: &'a str,
        key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        Box::pin(async move {
            let key = self.unwrap(key_id, key_version, wrapped).await?;
            self.wrap(key_id, &key).await
        })
    }
}

pub fn random_key() -> [u8; 32] {
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

const WRAP_AAD: &[u8] = b"imprint-keyring-v1";
const NONCE: usize = 12;

fn wrap_aad(key_id: &str, version: u32) -> Vec<u8> {
    let mut a = WRAP_AAD.to_vec();
    a.push(0);
    a.extend_from_slice(key_id.as_bytes());
    a.push(0);
    a.extend_from_slice(&version.to_be_bytes());
    a
}

/// The keyring file's contents.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyring {
    pub format: u32,
    pub keys: BTreeMap<String, KeyEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub primary: u32,
    /// version → base64 of the 32-byte KEK
    pub versions: BTreeMap<u32, String>,
}

/// One key as `keys list` shows it (never the key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub primary: u32,
    pub versions: Vec<u32>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Keyring {
    /// Reads a keyring file; a missing file is an empty keyring.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Keyring { format: 1, ..Default::default() })
            }
            Err(e) => return Err(format!("reading the keyring {}: {e}", path.display())),
        };
        let k: Keyring =
            serde_json::from_str(&text).map_err(|e| format!("the keyring {} is not valid: {e}", path.display()))?;
        if k.format != 1 {
            return Err(format!("the keyring {} has format {}, this server reads 1", path.display(), k.format));
        }
        for (id, e) in &k.keys {
            if !e.versions.contains_key(&e.primary) {
                return Err(format!("key {id:?} of the keyring names primary version {} that it lacks", e.primary));
            }
        }
        Ok(k)
    }

    /// Writes the keyring whole (a temporary file renamed over it), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let mut f = o.open(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("writing the keyring {}: {e}", path.display()))
    }

    /// A new key (version 1).
    pub fn create(&mut self, id: &str) -> Result<(), String> {
        check_key_id(id)?;
        if self.keys.contains_key(id) {
            return Err(format!("the keyring has a key {id:?} already (rotate it)"));
        }
        let versions = BTreeMap::from([(1, b64().encode(random_key()))]);
        self.keys.insert(id.to_owned(), KeyEntry { primary: 1, versions });
        Ok(())
    }

    /// A new primary version of a key; the old ones stay for unwrapping. Returns it.
    pub fn rotate(&mut self, id: &str) -> Result<u32, String> {
        let e = self.keys.get_mut(id).ok_or_else(|| format!("the keyring has no key {id:?}"))?;
        let next = e.versions.keys().next_back().copied().unwrap_or(0) + 1;
        e.versions.insert(next, b64().encode(random_key()));
        e.primary = next;
        Ok(next)
    }

    /// Removes an old version (after a rewrap moved every data key off it).
    pub fn retire(&mut self, id: &str, version: u32) -> Result<(), String> {
        let e = self.keys.get_mut(id).ok_or_else(|| format!("the keyring has no key {id:?}"))?;
        if version == e.primary {
            return Err(format!("version {version} is the primary of key {id:?}: rotate first"));
        }
        e.versions.remove(&version).map(|_| ()).ok_or_else(|| format!("key {id:?} has no version {version}"))
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|(id, e)| KeyInfo {
                id: id.clone(),
                primary: e.primary,
                versions: e.versions.keys().copied().collect(),
            })
            .collect()
    }

    fn kek(&self, id: &str, version: Option<u32>) -> Result<(u32, [u8; 32]), KeyError> {
        let e = self.keys.get(id).ok_or_else(|| KeyError::UnknownKey(format!("the keyring has no key {id:?}")))?;
        let v = version.unwrap_or(e.primary);
        let k = e
            .versions
            .get(&v)
            .ok_or_else(|| KeyError::UnknownKey(format!("key {id:?} has no version {v} (retired?)")))?;
        let bytes = b64().decode(k).map_err(|e| KeyError::UnknownKey(format!("key {id:?} version {v}: {e}")))?;
        let kek: [u8; 32] =
            bytes.try_into().map_err(|_| KeyError::UnknownKey(format!("key {id:?} version {v} is not 32 bytes")))?;
        Ok((v, kek))
    }
}

/// The local keyring as a key provider. It re-reads its file when the file changed (one
/// `stat` per use), so `imprint-server keys create|rotate|retire` reach a running server.
pub struct LocalKeyring {
    path: PathBuf,
    ring: RwLock<(Option<std::time::SystemTime>, Keyring)>,
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl LocalKeyring {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let at = modified(&path);
        let ring = Keyring::load(&path)?;
        Ok(Self { path, ring: RwLock::new((at, ring)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        self.ring.read().expect("keyring lock").1.list()
    }

    fn kek(&self, id: &str, version: Option<u32>) -> Result<(u32, [u8; 32]), KeyError> {
        let now = modified(&self.path);
        if self.ring.read().expect("keyring lock").0 != now {
            let fresh = Keyring::load(&self.path).map_err(KeyError::Unavailable)?;
            *self.ring.write().expect("keyring lock") = (now, fresh);
        }
        self.ring.read().expect("keyring lock").1.kek(id, version)
    }
}

impl KeyProvider for LocalKeyring {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn wrap<'a>(&'a self, key_id: &'a str, key: &'a [u8; 32]) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        Box::pin(async move {
            let (version, kek) = self.kek(key_id, None)?;
            let nonce: [u8; NONCE] = random_key()[..NONCE].try_into().expect("12 bytes");
            let aad = wrap_aad(key_id, version);
            let ct = Aes256Gcm::new(GenericArray::from_slice(&kek))
                .encrypt(GenericArray::from_slice(&nonce), Payload { msg: key, aad: &aad })
                .map_err(|_| KeyError::Refused("wrapping a data key failed".into()))?;
            let mut out = nonce.to_vec();
            out.extend_from_slice(&ct);
            Ok((version, out))
        })
    }

    fn unwrap<'a>(
        &'a self,
        key_id: &'a str,
        key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyError>> {
        Box::pin(async move {
            let (version, kek) = self.kek(key_id, Some(key_version))?;
            let refused = || {
                KeyError::Refused(format!(
                    "the data key does not unwrap with key {key_id:?} version {version}: altered or not its own"
                ))
            };
            if wrapped.len() != NONCE + 32 + 16 {
                return Err(refused());
            }
            let aad = wrap_aad(key_id, version);
            let plain = Aes256Gcm::new(GenericArray::from_slice(&kek))
                .decrypt(GenericArray::from_slice(&wrapped[..NONCE]), Payload { msg: &wrapped[NONCE..], aad: &aad })
                .map_err(|_| refused())?;
            plain.try_into().map_err(|_| refused())
        })
    }
}

/// How many unwrapped data keys `Keys` keeps, and for how long (`IMPRINT_KEY_CACHE_ENTRIES`,
/// `IMPRINT_KEY_CACHE_SECS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCacheLimits {
    pub max_entries: usize,
    pub ttl: std::time::Duration,
}

impl Default for KeyCacheLimits {
    fn default() -> Self {
        Self { max_entries: 1024, ttl: std::time::Duration::from_secs(300) }
    }
}

type CacheKey = (String, u32, Vec<u8>);

struct KeyCache {
    entries: std::collections::HashMap<CacheKey, (chrono::DateTime<chrono::Utc>, [u8; 32])>,
    /// Insertion order, oldest first: what goes when the cache is full.
    order: std::collections::VecDeque<CacheKey>,
}

/// The server's key provider (`IMPRINT_KEY_PROVIDER`), with a bounded, short-lived cache of
/// unwrapped data keys in front of its `unwrap`: reading a version again (a poll's serving
/// load, a download) does not call a KMS each time. At most `max_entries` keys, each for at
/// most `ttl` after it was unwrapped (or generated); failures are never cached; `wrap`,
/// `generate` and `rewrap` always reach the provider. The cache lives in this process'
/// memory only (never written anywhere). Cheap to clone (shared).
#[derive(Clone)]
pub struct Keys {
    provider: std::sync::Arc<dyn KeyProvider>,
    limits: KeyCacheLimits,
    clock: crate::clock::SharedClock,
    cache: std::sync::Arc<std::sync::Mutex<KeyCache>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("provider", &self.provider.kind()).field("limits", &self.limits).finish()
    }
}

impl Keys {
    pub fn new(provider: std::sync::Arc<dyn KeyProvider>, limits: KeyCacheLimits) -> Self {
        Self::with_clock(provider, limits, std::sync::Arc::new(crate::clock::SystemClock))
    }

    /// `new` with the time taken from `clock` (tests move it instead of waiting).
    pub fn with_clock(
        provider: std::sync::Arc<dyn KeyProvider>,
        limits: KeyCacheLimits,
        clock: crate::clock::SharedClock,
    ) -> Self {
        let cache = KeyCache { entries: Default::default(), order: Default::default() };
        Self { provider, limits, clock, cache: std::sync::Arc::new(std::sync::Mutex::new(cache)) }
    }

    /// The provider's kind (`local`, `aws-kms`).
    pub fn kind(&self) -> &'static str {
        self.provider.kind()
    }

    pub fn limits(&self) -> KeyCacheLimits {
        self.limits
    }

    /// Unwrapped data keys held now (expired ones included until they are next looked up
    /// or pushed out).
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).entries.len()
    }

    fn lookup(&self, k: &CacheKey) -> Option<[u8; 32]> {
        let now = self.clock.now();
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, key) = *c.entries.get(k)?;
        let ttl = chrono::Duration::from_std(self.limits.ttl).unwrap_or(chrono::Duration::MAX);
        if now.signed_duration_since(at) < ttl {
            return Some(key);
        }
        if let Some(mut gone) = c.entries.remove(k) {
            gone.1.fill(0);
        }
        c.order.retain(|o| o != k);
        None
    }

    fn remember(&self, k: CacheKey, key: [u8; 32]) {
        if self.limits.max_entries == 0 || self.limits.ttl.is_zero() {
            return;
        }
        let now = self.clock.now();
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.entries.insert(k.clone(), (now, key)).is_none() {
            c.order.push_back(k);
        }
        while c.entries.len() > self.limits.max_entries {
            let Some(oldest) = c.order.pop_front() else { break };
            if let Some(mut gone) = c.entries.remove(&oldest) {
                gone.1.fill(0);
            }
        }
    }
}

/// Why a sealed payload could not be opened (or rewrapped).
#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Sealed(#[from] crate::at_rest::SealError),
}

impl Keys {
    /// `plain` sealed under a fresh data key of `key_id` (one provider call: `generate`).
    pub async fn seal(&self, key_id: &str, plain: &[u8]) -> Result<bytes::Bytes, KeyError> {
        let dk = self.generate(key_id).await?;
        let header = crate::at_rest::Header::new(key_id, dk.key_version, dk.wrapped);
        Ok(crate::at_rest::seal(&dk.key, &header, plain))
    }

    /// Sealed bytes held whole (an inline payload) opened: the data key unwrapped (from
    /// the cache when it is there), every chunk authenticated.
    pub async fn open(&self, sealed: &[u8]) -> Result<bytes::Bytes, AtRestError> {
        use crate::at_rest::{Header, SealError};
        let (h, _) = Header::parse(sealed)?.ok_or(SealError::Truncated)?;
        let key = self.unwrap(&h.key_id, h.key_version, &h.wrapped).await?;
        Ok(crate::at_rest::open(&key, sealed)?)
    }

    /// A sealed object's stream opened as it comes (`open_stream` with this provider).
    pub fn open_stream(
        &self,
        sealed: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    ) -> futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
        open_stream(std::sync::Arc::new(self.clone()), sealed)
    }

    /// Sealed bytes with their data key rewrapped under the key's current primary version
    /// (one provider call: `rewrap`); the chunks are kept byte for byte.
    pub async fn rewrap_sealed(&self, sealed: &[u8]) -> Result<Vec<u8>, AtRestError> {
        use crate::at_rest::{Header, SealError};
        let (h, _) = Header::parse(sealed)?.ok_or(SealError::Truncated)?;
        let (version, wrapped) = self.rewrap(&h.key_id, h.key_version, &h.wrapped).await?;
        Ok(crate::at_rest::rewrapped(sealed, &h.key_id, version, wrapped)?)
    }
}

impl KeyProvider for Keys {
    fn kind(&self) -> &'static str {
        self.provider.kind()
    }

    fn wrap<'a>(&'a self, key_id: &'a str, key: &'a [u8; 32]) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        self.provider.wrap(key_id, key)
    }

    fn unwrap<'a>(
        &'a self,
        key_id: &'a str,
        key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyError>> {
        Box::pin(async move {
            let k = (key_id.to_owned(), key_version, wrapped.to_vec());
            if let Some(key) = self.lookup(&k) {
                metrics::counter!("imprint_key_cache_hits_total").increment(1);
                return Ok(key);
            }
            metrics::counter!("imprint_key_cache_misses_total").increment(1);
            let key = self.provider.unwrap(key_id, key_version, wrapped).await?;
            self.remember(k, key);
            Ok(key)
        })
    }

    fn generate<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            let dk = self.provider.generate(key_id).await?;
            self.remember((key_id.to_owned(), dk.key_version, dk.wrapped.clone()), dk.key);
            Ok(dk)
        })
    }

    fn rewrap<'a>(
        &'a self,
        key_id: &'a str,
        key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        self.provider.rewrap(key_id, key_version, wrapped)
    }
}

/// A sealed payload's bytes as they stream from the store, opened: the header is read, its
/// data key unwrapped by `provider`, and the chunks decrypted as they come (about one chunk
/// in memory). A failure — the provider, or a chunk that does not authenticate — ends the
/// stream with an error, never with unauthenticated bytes.
pub fn open_stream(
    provider: std::sync::Arc<dyn KeyProvider>,
    sealed: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    use crate::at_rest::{Header, Opener, SealError};
    use futures::StreamExt;
    enum At {
        Header(bytes::BytesMut),
        Body(Box<Opener>),
        Done,
    }
    let invalid = |e: SealError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let state = (sealed, At::Header(bytes::BytesMut::new()), provider);
    futures::stream::try_unfold(state, move |(mut s, mut at, p)| async move {
        loop {
            match at {
                At::Done => return Ok(None),
                At::Header(mut buf) => {
                    match s.next().await.transpose()? {
                        None => return Err(invalid(SealError::Truncated)),
                        Some(b) => buf.extend_from_slice(&b),
                    }
                    match Header::parse(&buf).map_err(invalid)? {
                        None => at = At::Header(buf),
                        Some((h, start)) => {
                            let key =
                                p.unwrap(&h.key_id, h.key_version, &h.wrapped).await.map_err(std::io::Error::other)?;
                            let mut o = Box::new(Opener::new(&key, &h));
                            let out = o.push(&buf[start..]).map_err(invalid)?;
                            at = At::Body(o);
                            if !out.is_empty() {
                                return Ok(Some((out, (s, at, p))));
                            }
                        }
                    }
                }
                At::Body(mut o) => match s.next().await.transpose()? {
                    Some(b) => {
                        let out = o.push(&b).map_err(invalid)?;
                        at = At::Body(o);
                        if !out.is_empty() {
                            return Ok(Some((out, (s, at, p))));
                        }
                    }
                    None => return Ok(Some(((*o).finish().map_err(invalid)?, (s, At::Done, p)))),
                },
            }
        }
    })
    .boxed()
}

/// AWS KMS as a key provider, over its JSON protocol (`X-Amz-Target: TrentService.…`)
/// signed with SigV4 on the workspace's `hmac`/`sha2` (no AWS SDK: it brings aws-lc-sys).
/// Data keys come from `GenerateDataKey`, unwrap with `Decrypt`, rewrap with `ReEncrypt`;
/// KMS keeps the key versions itself (`key_version` is 0). Every data key is bound to its
/// key id by the encryption context `{"imprint-key": <key id>}`. A KMS that cannot be
/// reached or answers 5xx is `KeyError::Unavailable` (publishing answers 503).
pub struct AwsKms {
    endpoint: url::Url,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    http: reqwest::Client,
}

impl AwsKms {
    /// `endpoint`: `None` for `https://kms.<region>.amazonaws.com/`.
    pub fn new(
        endpoint: Option<&str>,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> Result<Self, String> {
        let endpoint = endpoint.map(str::to_owned).unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com/"));
        let endpoint = url::Url::parse(&endpoint).map_err(|e| format!("KMS endpoint {endpoint:?}: {e}"))?;
        if endpoint.host_str().is_none() {
            return Err(format!("KMS endpoint {endpoint} has no host"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            endpoint,
            region: region.to_owned(),
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: session_token.map(str::to_owned),
            http,
        })
    }

    /// One signed KMS call: the action's JSON answer, or the error it maps to.
    pub async fn call(&self, action: &str, body: serde_json::Value) -> Result<serde_json::Value, KeyError> {
        let body = serde_json::to_vec(&body).map_err(|e| KeyError::Refused(e.to_string()))?;
        let now = chrono::Utc::now();
        let headers = sigv4::sign(
            &sigv4::Request {
                host: &host_of(&self.endpoint),
                path: self.endpoint.path(),
                target: &format!("TrentService.{action}"),
                body: &body,
                session_token: self.session_token.as_deref(),
            },
            &sigv4::Credentials {
                region: &self.region,
                service: "kms",
                access_key_id: &self.access_key_id,
                secret_access_key: &self.secret_access_key,
            },
            now,
        );
        let mut req = self.http.post(self.endpoint.clone()).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| KeyError::Unavailable(format!("AWS KMS {action}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| KeyError::Unavailable(format!("AWS KMS {action}: {e}")))?;
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(KeyError::Unavailable(format!("AWS KMS {action} answered {status}")));
        }
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| KeyError::Unavailable(format!("AWS KMS {action} answered {status} with no JSON")))?;
        if !status.is_success() {
            let kind = json.get("__type").and_then(|t| t.as_str()).unwrap_or("");
            let kind = kind.rsplit('#').next().unwrap_or(kind);
            let msg = json.get("message").or(json.get("Message")).and_then(|m| m.as_str()).unwrap_or("");
            let what = format!("AWS KMS {action}: {kind} {msg}");
            return Err(match kind {
                "NotFoundException" | "DisabledException" | "KMSInvalidStateException" => KeyError::UnknownKey(what),
                "KMSInternalException" | "DependencyTimeoutException" | "ThrottlingException" => {
                    KeyError::Unavailable(what)
                }
                _ => KeyError::Refused(what),
            });
        }
        Ok(json)
    }

    fn context(key_id: &str) -> serde_json::Value {
        serde_json::json!({"imprint-key": key_id})
    }
}

fn host_of(u: &url::Url) -> String {
    match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_owned(),
    }
}

fn b64_field(json: &serde_json::Value, field: &str) -> Result<Vec<u8>, KeyError> {
    json.get(field)
        .and_then(|v| v.as_str())
        .and_then(|s| b64().decode(s).ok())
        .ok_or_else(|| KeyError::Refused(format!("AWS KMS answered without a base64 {field}")))
}

fn key32(v: Vec<u8>) -> Result<[u8; 32], KeyError> {
    v.try_into().map_err(|_| KeyError::Refused("AWS KMS returned a data key that is not 32 bytes".into()))
}

impl KeyProvider for AwsKms {
    fn kind(&self) -> &'static str {
        "aws-kms"
    }

    fn wrap<'a>(&'a self, key_id: &'a str, key: &'a [u8; 32]) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        Box::pin(async move {
            let body = serde_json::json!({"KeyId": key_id, "Plaintext": b64().encode(key), "EncryptionContext": Self::context(key_id)});
            let r = self.call("Encrypt", body).await?;
            Ok((0, b64_field(&r, "CiphertextBlob")?))
        })
    }

    fn unwrap<'a>(
        &'a self,
        key_id: &'a str,
        _key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyError>> {
        Box::pin(async move {
            let body = serde_json::json!({"KeyId": key_id, "CiphertextBlob": b64().encode(wrapped), "EncryptionContext": Self::context(key_id)});
            let r = self.call("Decrypt", body).await?;
            key32(b64_field(&r, "Plaintext")?)
        })
    }

    fn generate<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            let body =
                serde_json::json!({"KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": Self::context(key_id)});
            let r = self.call("GenerateDataKey", body).await?;
            Ok(DataKey {
                key: key32(b64_field(&r, "Plaintext")?)?,
                key_version: 0,
                wrapped: b64_field(&r, "CiphertextBlob")?,
            })
        })
    }

    fn rewrap<'a>(
        &'a self,
        key_id: &'a str,
        _key_version: u32,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "CiphertextBlob": b64().encode(wrapped),
                "SourceKeyId": key_id,
                "SourceEncryptionContext": Self::context(key_id),
                "DestinationKeyId": key_id,
                "DestinationEncryptionContext": Self::context(key_id),
            });
            let r = self.call("ReEncrypt", body).await?;
            Ok((0, b64_field(&r, "CiphertextBlob")?))
        })
    }
}

/// AWS Signature Version 4 for one JSON-protocol POST (the headers to send).
mod sigv4 {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    pub struct Request<'a> {
        pub host: &'a str,
        pub path: &'a str,
        pub target: &'a str,
        pub body: &'a [u8],
        pub session_token: Option<&'a str>,
    }

    pub struct Credentials<'a> {
        pub region: &'a str,
        pub service: &'a str,
        pub access_key_id: &'a str,
        pub secret_access_key: &'a str,
    }

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    pub fn sign(r: &Request<'_>, c: &Credentials<'_>, now: chrono::DateTime<chrono::Utc>) -> Vec<(String, String)> {
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let payload_hash = hex::encode(Sha256::digest(r.body));
        // Sorted by name, lower case.
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/x-amz-json-1.1".into()),
            ("host".into(), r.host.into()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        if let Some(t) = r.session_token {
            headers.push(("x-amz-security-token".into(), t.into()));
        }
        headers.push(("x-amz-target".into(), r.target.into()));
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
        let path = if r.path.is_empty() { "/" } else { r.path };
        let canonical = format!("POST\n{path}\n\n{canonical_headers}\n{signed}\n{payload_hash}");
        let scope = format!("{date}/{}/{}/aws4_request", c.region, c.service);
        let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical)));
        let k = hmac(format!("AWS4{}", c.secret_access_key).as_bytes(), date.as_bytes());
        let k = hmac(&k, c.region.as_bytes());
        let k = hmac(&k, c.service.as_bytes());
        let k = hmac(&k, b"aws4_request");
        let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
        headers.retain(|(k, _)| k != "host");
        headers.push((
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
                c.access_key_id
            ),
        ));
        headers
    }

    #[cfg(test)]
    #[test]
    fn matches_the_aws_documented_signing_key_derivation() {
        // AWS's SigV4 documentation example: secret "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        // 20120215, us-east-1, iam → signing key f4780e2d…
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"iam");
        let k = hmac(&k, b"aws4_request");
        assert_eq!(hex::encode(k), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::at_rest;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imprint-keys-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("keyring.json")
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn create_rotate_rewrap_retire_keeps_every_payload_readable() {
        let path = temp_path("rotate");
        let mut ring = Keyring::load(&path).unwrap();
        ring.create("payments").unwrap();
        assert!(ring.create("payments").is_err());
        ring.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let p = LocalKeyring::open(&path).unwrap();
        let plain = b"card numbers, 4111 1111 1111 1111".repeat(5000);
        let dk = block(p.generate("payments")).unwrap();
        assert_eq!(dk.key_version, 1);
        let header = at_rest::Header::new("payments", dk.key_version, dk.wrapped.clone());
        let sealed = at_rest::seal(&dk.key, &header, &plain);

        // rotate (by another process: the running provider re-reads the file)
        let mut ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.rotate("payments").unwrap(), 2);
        ring.save(&path).unwrap();
        let dk2 = block(p.generate("payments")).unwrap();
        assert_eq!(dk2.key_version, 2, "new data keys use the new primary");
        // the old version still unwraps
        let (h, _) = at_rest::Header::parse(&sealed).unwrap().unwrap();
        let k = block(p.unwrap(&h.key_id, h.key_version, &h.wrapped)).unwrap();
        assert_eq!(at_rest::open(&k, &sealed).unwrap(), plain);

        // rewrap: the header changes, the chunks do not
        let (v, w) = block(p.rewrap(&h.key_id, h.key_version, &h.wrapped)).unwrap();
        assert_eq!(v, 2);
        let resealed = at_rest::rewrapped(&sealed, "payments", v, w).unwrap();
        let (_, old_at) = at_rest::Header::parse(&sealed).unwrap().unwrap();
        let (_, new_at) = at_rest::Header::parse(&resealed).unwrap().unwrap();
        assert_eq!(&resealed[new_at..], &sealed[old_at..], "the chunks are untouched");

        // retire version 1: the rewrapped payload still opens, the old header no longer
        let mut ring = Keyring::load(&path).unwrap();
        assert!(ring.retire("payments", 2).is_err(), "the primary cannot be retired");
        ring.retire("payments", 1).unwrap();
        ring.save(&path).unwrap();
        let p = LocalKeyring::open(&path).unwrap();
        let (h2, _) = at_rest::Header::parse(&resealed).unwrap().unwrap();
        let k2 = block(p.unwrap(&h2.key_id, h2.key_version, &h2.wrapped)).unwrap();
        assert_eq!(at_rest::open(&k2, &resealed).unwrap(), plain);
        assert!(matches!(block(p.unwrap(&h.key_id, h.key_version, &h.wrapped)), Err(KeyError::UnknownKey(_))));
        assert_eq!(p.list(), vec![KeyInfo { id: "payments".into(), primary: 2, versions: vec![2] }]);
        // the key material is in the file, no data key or plaintext is
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&b64().encode(dk.key)));
    }

    #[test]
    fn a_wrapped_key_is_bound_to_its_key_and_version() {
        let path = temp_path("bound");
        let mut ring = Keyring::load(&path).unwrap();
        ring.create("a").unwrap();
        ring.create("b").unwrap();
        ring.save(&path).unwrap();
        let p = LocalKeyring::open(&path).unwrap();
        let dk = block(p.generate("a")).unwrap();
        assert_eq!(block(p.unwrap("a", 1, &dk.wrapped)).unwrap(), dk.key);
        assert!(matches!(block(p.unwrap("b", 1, &dk.wrapped)), Err(KeyError::Refused(_))));
        let mut flipped = dk.wrapped.clone();
        flipped[20] ^= 1;
        assert!(matches!(block(p.unwrap("a", 1, &flipped)), Err(KeyError::Refused(_))));
        assert!(matches!(block(p.generate("nope")), Err(KeyError::UnknownKey(_))));
        assert!(ring.create("bad id").is_err());
    }
    #[test]
    fn open_stream_decrypts_as_bytes_come_and_fails_on_a_flipped_byte() {
        use futures::StreamExt;
        let path = temp_path("stream");
        let mut ring = Keyring::load(&path).unwrap();
        ring.create("s").unwrap();
        ring.save(&path).unwrap();
        let p: std::sync::Arc<dyn KeyProvider> = std::sync::Arc::new(LocalKeyring::open(&path).unwrap());
        let plain: Vec<u8> = (0..3 * at_rest::CHUNK + 999).map(|i| (i % 253) as u8).collect();
        let dk = block(p.generate("s")).unwrap();
        let sealed = at_rest::seal(&dk.key, &at_rest::Header::new("s", dk.key_version, dk.wrapped), &plain).to_vec();
        let read = |bytes: Vec<u8>| {
            let pieces: Vec<std::io::Result<bytes::Bytes>> =
                bytes.chunks(1000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            let s = open_stream(p.clone(), futures::stream::iter(pieces).boxed());
            block(s.collect::<Vec<_>>())
        };
        let got: Vec<u8> = read(sealed.clone()).into_iter().map(Result::unwrap).flat_map(|b| b.to_vec()).collect();
        assert_eq!(got, plain);
        let mut tampered = sealed.clone();
        let n = tampered.len();
        tampered[n - 70_000] ^= 0x80;
        let parts = read(tampered);
        let err = parts.iter().find_map(|r| r.as_ref().err()).expect("a tampered chunk fails");
        assert!(err.to_string().contains("altered"), "{err}");
        // what came out before the error is only the chunks that authenticated
        let before: usize = parts.iter().filter_map(|r| r.as_ref().ok()).map(|b| b.len()).sum();
        assert!(before < plain.len() && before.is_multiple_of(at_rest::CHUNK));
        assert!(read(sealed[..20].to_vec()).iter().any(Result::is_err), "cut inside the header");
    }

    /// moto's KMS (`eval "$(./dev s3-start)"`: the same endpoint as its S3).
    fn moto() -> Option<AwsKms> {
        let Ok(endpoint) = std::env::var("IMPRINT_TEST_S3_ENDPOINT") else {
            assert!(std::env::var("CI").is_err(), "CI runs the KMS tests: IMPRINT_TEST_S3_ENDPOINT is not set");
            eprintln!("IMPRINT_TEST_S3_ENDPOINT is not set: skipping the AWS KMS test (eval \"$(./dev s3-start)\")");
            return None;
        };
        Some(AwsKms::new(Some(&endpoint), "us-east-1", "test", "test", None).unwrap())
    }

    #[tokio::test]
    async fn aws_kms_wraps_unwraps_and_rewraps_on_moto() {
        let Some(kms) = moto() else { return };
        let created = kms.call("CreateKey", serde_json::json!({"Description": "imprint test"})).await.unwrap();
        let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
        let dk = kms.generate(&key_id).await.unwrap();
        assert_ne!(dk.wrapped, dk.key.to_vec());
        assert_eq!(kms.unwrap(&key_id, 0, &dk.wrapped).await.unwrap(), dk.key);
        let header = at_rest::Header::new(&key_id, 0, dk.wrapped.clone());
        let sealed = at_rest::seal(&dk.key, &header, b"secret payload");
        let (h, _) = at_rest::Header::parse(&sealed).unwrap().unwrap();
        let k = kms.unwrap(&h.key_id, h.key_version, &h.wrapped).await.unwrap();
        assert_eq!(&at_rest::open(&k, &sealed).unwrap()[..], b"secret payload");
        // rewrap (ReEncrypt) and wrap (Encrypt) give blobs that unwrap to the same key
        let (_, rewrapped) = kms.rewrap(&key_id, 0, &dk.wrapped).await.unwrap();
        assert_eq!(kms.unwrap(&key_id, 0, &rewrapped).await.unwrap(), dk.key);
        let (_, wrapped) = kms.wrap(&key_id, &dk.key).await.unwrap();
        assert_eq!(kms.unwrap(&key_id, 0, &wrapped).await.unwrap(), dk.key);
        // an unknown key is not "unavailable"
        let missing = kms.generate("00000000-0000-0000-0000-000000000000").await;
        assert!(matches!(missing, Err(KeyError::UnknownKey(_))), "{:?}", missing.err());
    }

    #[tokio::test]
    async fn a_kms_that_cannot_be_reached_is_unavailable() {
        // a port nothing listens on
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let kms = AwsKms::new(Some(&dead), "us-east-1", "test", "test", None).unwrap();
        let e = kms.generate("alias/any").await.err().expect("no KMS there");
        assert!(matches!(e, KeyError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("unavailable"));
    }

    /// Counts the unwraps that reach it.
    struct Counting(LocalKeyring, std::sync::atomic::AtomicUsize);

    impl KeyProvider for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn wrap<'a>(&'a self, id: &'a str, key: &'a [u8; 32]) -> BoxFuture<'a, Result<(u32, Vec<u8>), KeyError>> {
            self.0.wrap(id, key)
        }
        fn unwrap<'a>(&'a self, id: &'a str, v: u32, w: &'a [u8]) -> BoxFuture<'a, Result<[u8; 32], KeyError>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.unwrap(id, v, w)
        }
    }

    #[test]
    fn the_key_cache_is_bounded_expires_and_never_caches_failures() {
        let path = temp_path("cache");
        let mut ring = Keyring::load(&path).unwrap();
        ring.create("k").unwrap();
        ring.save(&path).unwrap();
        let inner = std::sync::Arc::new(Counting(LocalKeyring::open(&path).unwrap(), Default::default()));
        let calls = || inner.1.load(std::sync::atomic::Ordering::SeqCst);
        let clock = crate::clock::ManualClock::new(chrono::Utc::now());
        let limits = KeyCacheLimits { max_entries: 2, ttl: std::time::Duration::from_secs(60) };
        let keys = Keys::with_clock(inner.clone(), limits, std::sync::Arc::new(clock.clone()));
        // wrapped by the provider itself: not cached yet
        let wrapped: Vec<(u32, Vec<u8>, [u8; 32])> = (0..3)
            .map(|_| {
                let k = random_key();
                let (v, w) = block(inner.wrap("k", &k)).unwrap();
                (v, w, k)
            })
            .collect();
        let (v0, w0, k0) = &wrapped[0];
        assert_eq!(block(keys.unwrap("k", *v0, w0)).unwrap(), *k0);
        assert_eq!(block(keys.unwrap("k", *v0, w0)).unwrap(), *k0);
        assert_eq!(calls(), 1, "the second unwrap came from the cache");
        // the bound: a third key pushes out the oldest
        for (v, w, k) in &wrapped[1..] {
            assert_eq!(block(keys.unwrap("k", *v, w)).unwrap(), *k);
        }
        assert_eq!((calls(), keys.cached()), (3, 2));
        assert_eq!(block(keys.unwrap("k", *v0, w0)).unwrap(), *k0);
        assert_eq!(calls(), 4, "the oldest key had been pushed out");
        // the time limit
        let (v2, w2, k2) = &wrapped[2];
        block(keys.unwrap("k", *v2, w2)).unwrap();
        assert_eq!(calls(), 4);
        clock.advance(chrono::Duration::seconds(61));
        assert_eq!(block(keys.unwrap("k", *v2, w2)).unwrap(), *k2);
        assert_eq!(calls(), 5, "an expired key is unwrapped again");
        // a cached key answers only for its exact (id, version, wrapped bytes)
        let mut altered = w2.clone();
        altered[20] ^= 1;
        assert!(matches!(block(keys.unwrap("k", *v2, &altered)), Err(KeyError::Refused(_))));
        assert!(matches!(block(keys.unwrap("k", *v2, &altered)), Err(KeyError::Refused(_))));
        assert_eq!(calls(), 7, "failures are not cached");
        assert!(block(keys.unwrap("other", *v2, w2)).is_err());
        // generated keys are cached: reading back what was just sealed needs no unwrap
        let dk = block(keys.generate("k")).unwrap();
        let before = calls();
        assert_eq!(block(keys.unwrap("k", dk.key_version, &dk.wrapped)).unwrap(), dk.key);
        assert_eq!(calls(), before);
        // a cache of 0 entries keeps nothing
        let none = KeyCacheLimits { max_entries: 0, ..limits };
        let uncached = Keys::with_clock(inner.clone(), none, std::sync::Arc::new(clock));
        block(uncached.unwrap("k", *v0, w0)).unwrap();
        block(uncached.unwrap("k", *v0, w0)).unwrap();
        assert_eq!((calls(), uncached.cached()), (before + 2, 0));
        assert!(format!("{keys:?}").contains("counting") && !format!("{keys:?}").contains(&hex::encode(k0)));
    }

    #[tokio::test]
    async fn keys_seal_open_and_rewrap_whole_payloads_and_refuse_altered_ones() {
        let path = temp_path("seal");
        let mut ring = Keyring::load(&path).unwrap();
        ring.create("k").unwrap();
        ring.save(&path).unwrap();
        let keys = Keys::new(std::sync::Arc::new(LocalKeyring::open(&path).unwrap()), KeyCacheLimits::default());
        let plain = b"MARKER-at-rest ".repeat(10_000);
        let sealed = keys.seal("k", &plain).await.unwrap();
        assert!(!sealed.windows(14).any(|w| w == b"MARKER-at-rest"), "the sealed bytes hold no plaintext");
        assert_eq!(keys.open(&sealed).await.unwrap(), plain);
        let streamed: Vec<u8> = {
            use futures::StreamExt;
            let chunks: Vec<std::io::Result<bytes::Bytes>> =
                sealed.chunks(1000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            let opened: Vec<_> = keys.open_stream(futures::stream::iter(chunks).boxed()).collect().await;
            opened.into_iter().map(Result::unwrap).flat_map(|b| b.to_vec()).collect()
        };
        assert_eq!(streamed, plain);
        let mut altered = sealed.to_vec();
        let last = altered.len() - 3;
        altered[last] ^= 1;
        let e = keys.open(&altered).await.unwrap_err();
        assert!(matches!(e, AtRestError::Sealed(crate::at_rest::SealError::Altered(_))), "{e}");
        assert!(matches!(keys.open(b"plain bytes").await, Err(AtRestError::Sealed(_))));
        // rotate, rewrap: the new header names version 2, the chunks are the same bytes,
        // and after version 1 is retired the rewrapped payload still opens
        let mut ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.rotate("k").unwrap(), 2);
        ring.save(&path).unwrap();
        let rewrapped = keys.rewrap_sealed(&sealed).await.unwrap();
        let (old, a) = crate::at_rest::Header::parse(&sealed).unwrap().unwrap();
        let (new, b) = crate::at_rest::Header::parse(&rewrapped).unwrap().unwrap();
        assert_eq!((old.key_version, new.key_version), (1, 2));
        assert_eq!(sealed[a..], rewrapped[b..]);
        ring.retire("k", 1).unwrap();
        ring.save(&path).unwrap();
        let fresh = Keys::new(std::sync::Arc::new(LocalKeyring::open(&path).unwrap()), KeyCacheLimits::default());
        assert_eq!(fresh.open(&rewrapped).await.unwrap(), plain);
        assert!(matches!(fresh.open(&sealed).await, Err(AtRestError::Key(_))), "version 1 is gone");
    }
}
