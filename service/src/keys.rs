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
//!
//! The providers and the sealed format live in `imprint-seal` (shared with the Rust client,
//! which opens sealed snapshots); this module adds the server's bounded cache of unwrapped
//! data keys (`Keys`) and re-exports the rest.
use futures::future::BoxFuture;
pub use imprint_seal::{
    open_stream, random_key, AwsKms, DataKey, KeyEntry, KeyError, KeyInfo, KeyProvider, Keyring, LocalKeyring,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::path::PathBuf;

    fn b64() -> base64::engine::GeneralPurpose {
        base64::engine::general_purpose::STANDARD
    }
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
