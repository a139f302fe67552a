//! Object-store snapshots: the server's worker keeps `snapshots/<topic>.json` in its
//! payload store, naming what `*` resolves to (version, checksum, inline bytes or the
//! key of the payload's object in the same store). A client configured with that
//! store's URL (`ClientBuilder::snapshot_store`) reads it when the server is
//! unreachable and the subscription has nothing better (no disk cache): the value then
//! has `Source::Snapshot`, and the first poll that reaches the server confirms or
//! replaces it.
//!
//! A topic encrypted at rest has a sealed manifest (`SealedManifest`, docs/encryption.md
//! "Snapshots"): it opens with the key provider(s) the client was given
//! (`ClientBuilder::snapshot_keyring`, `snapshot_key_provider`), and the object it names is
//! opened chunk by chunk as it streams; the plaintext is then checked against the size and
//! SHA-256 the manifest names. Without the key it is an error (logged; not used).
use crate::cache::Store;
use crate::error::{Error, Result};
use crate::subscription::{Fetched, Kind};
use base64::Engine;
use futures::StreamExt;
use imprint_protocol::{Manifest, SealedManifest, MANIFEST_FORMAT};
use imprint_seal::{KeyError, KeyProvider};
use object_store::path::Path;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The store the snapshots are read from.
pub(crate) struct Snapshots {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    keys: Option<Arc<Providers>>,
}

/// The key providers a client opens sealed snapshots with, tried in order: the first one
/// that knows the key id unwraps.
pub(crate) struct Providers(Vec<Arc<dyn KeyProvider>>);

impl Providers {
    pub fn of(providers: impl IntoIterator<Item = Arc<dyn KeyProvider>>) -> Option<Arc<Self>> {
        let all: Vec<_> = providers.into_iter().collect();
        (!all.is_empty()).then(|| Arc::new(Self(all)))
    }
}

impl KeyProvider for Providers {
    fn kind(&self) -> &'static str {
        "client"
    }

    fn wrap<'a>(
        &'a self,
        _key_id: &'a str,
        _key: &'a [u8; 32],
    ) -> futures::future::BoxFuture<'a, std::result::Result<(u32, Vec<u8>), KeyError>> {
        Box::pin(async { Err(KeyError::Refused("a client only opens sealed snapshots".into())) })
    }

    fn unwrap<'a>(
        &'a self,
        key_id: &'a str,
        key_version: u32,
        wrapped: &'a [u8],
    ) -> futures::future::BoxFuture<'a, std::result::Result<[u8; 32], KeyError>> {
        Box::pin(async move {
            let mut last = KeyError::UnknownKey(format!("no key provider knows key {key_id:?}"));
            for p in &self.0 {
                match p.unwrap(key_id, key_version, wrapped).await {
                    Ok(k) => return Ok(k),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").field("url", &self.url).finish()
    }
}

impl Snapshots {
    /// `file:///dir`, `s3://bucket/prefix` (credentials and endpoint from the standard
    /// `AWS_*` variables), `gs://bucket/prefix`, `az://container/prefix`: the server's
    /// `IMPRINT_OBJECT_STORE`.
    pub fn open(url: &str, keys: Option<Arc<Providers>>) -> Result<Self> {
        let bad = |e: String| Error::Config(format!("snapshot store {url:?}: {e}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let prefix = Path::from(parsed.path().trim_matches('/'));
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| bad("not an absolute file URL".into()))?;
                let local =
                    object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
                return Ok(Self { store: Arc::new(local), prefix: Path::default(), url: url.to_owned(), keys });
            }
            "s3" | "s3a" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env().with_url(url).build().map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "abfs" | "abfss" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => return Err(bad(format!("unsupported scheme {other:?} (use file://, s3://, gs:// or az://)"))),
        };
        Ok(Self { store, prefix, url: url.to_owned(), keys })
    }

    fn key(&self, rest: &str) -> Path {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend(rest.split('/').filter(|p| !p.is_empty()).map(str::to_owned));
        Path::from_iter(parts)
    }

    /// The store's URL, as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The manifest of `topic`, `None` when there is none.
    pub async fn manifest(&self, topic: &str) -> Result<Option<Manifest>> {
        let key = self.key(&format!("snapshots/{topic}.json"));
        let bytes = match self.store.get(&key).await {
            Ok(r) => r.bytes().await.map_err(|e| Error::Snapshot(format!("manifest: {e}")))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::Snapshot(format!("manifest: {e}"))),
        };
        let m = self.parse(topic, &bytes).await?;
        if m.format != MANIFEST_FORMAT || m.topic != topic {
            return Err(Error::Snapshot(format!("manifest of {topic}: format {} for {:?}", m.format, m.topic)));
        }
        Ok(Some(m))
    }
}

impl Snapshots {
    /// A manifest's JSON, opened first when it is sealed.
    async fn parse(&self, topic: &str, bytes: &[u8]) -> Result<Manifest> {
        let bad = |e: String| Error::Snapshot(format!("manifest of {topic}: {e}"));
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if json.get("sealed").is_none() {
            return serde_json::from_value(json).map_err(|e| bad(e.to_string()));
        }
        let sealed: SealedManifest = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
        let Some(keys) = &self.keys else {
            return Err(bad(format!(
                "it is sealed at rest under key {:?} and this client has no key provider for it \
                 (ClientBuilder::snapshot_keyring or snapshot_key_provider; the agent's snapshot_keyring)",
                sealed.key
            )));
        };
        let raw =
            base64::engine::general_purpose::STANDARD.decode(sealed.sealed.trim()).map_err(|e| bad(e.to_string()))?;
        let (h, _) = imprint_seal::format::Header::parse(&raw)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("the sealed manifest ends inside its header".into()))?;
        let key = keys
            .unwrap(&h.key_id, h.key_version, &h.wrapped)
            .await
            .map_err(|e| bad(format!("its data key (key {:?}) did not unwrap: {e}", h.key_id)))?;
        let plain = imprint_seal::format::open(&key, &raw).map_err(|e| bad(e.to_string()))?;
        let m: Manifest = serde_json::from_slice(&plain).map_err(|e| bad(e.to_string()))?;
        Ok(m)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The snapshot's payload, checked against its size and SHA-256 (a file payload is
/// placed in `store`).
pub(crate) async fn payload(store: &Store, snapshots: &Snapshots, kind: Kind, m: &Manifest) -> Result<Fetched> {
    let bytes = match (&m.data_base64, &m.object) {
        (Some(b64), _) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| Error::Snapshot(format!("data_base64: {e}")))?,
        (None, Some(object)) => {
            if object.split('/').any(|p| p == ".." || p == ".") {
                return Err(Error::Snapshot(format!("object key {object:?}")));
            }
            return stream_object(store, snapshots, kind, m, &snapshots.key(object)).await;
        }
        (None, None) => return Err(Error::Snapshot("the snapshot has neither data_base64 nor object".into())),
    };
    if bytes.len() as u64 != m.size {
        return Err(Error::Size { expected: m.size, actual: bytes.len() as u64 });
    }
    let actual = sha256_hex(&bytes);
    if actual != m.sha256 {
        return Err(Error::Checksum { expected: m.sha256.clone(), actual });
    }
    match kind {
        Kind::Memory => Ok(Fetched::Memory(bytes)),
        Kind::File => {
            let store = store.clone();
            let (topic, version, sha) = (m.topic.clone(), m.version, m.sha256.clone());
            let path = tokio::task::spawn_blocking(move || store.write_payload(&topic, version, &sha, &bytes))
                .await
                .map_err(|e| Error::Snapshot(format!("writing the payload: {e}")))??;
            Ok(Fetched::File(path))
        }
    }
}

/// Streams an object payload into memory or a temporary file (renamed into place only
/// once it verifies).
async fn stream_object(store: &Store, snapshots: &Snapshots, kind: Kind, m: &Manifest, key: &Path) -> Result<Fetched> {
    let got = snapshots.store.get(key).await.map_err(|e| Error::Snapshot(format!("object {key}: {e}")))?;
    let raw = got.into_stream().map(|r| r.map_err(std::io::Error::other)).boxed();
    let mut stream = match (m.object_sealed, &snapshots.keys) {
        (false, _) => raw,
        // Opened as it streams; a chunk that does not authenticate ends it with an error.
        (true, Some(keys)) => imprint_seal::open_stream(keys.clone(), raw),
        (true, None) => return Err(Error::Snapshot(format!("object {key} is sealed and there is no key"))),
    };
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut memory = Vec::new();
    let mut file = None;
    if kind == Kind::File {
        store.prepare(&m.topic)?;
        let tmp = store.temp_path(&m.topic);
        let f = tokio::fs::File::create(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
        file = Some((f, tmp));
    }
    let outcome: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::Snapshot(format!("object {key}: {e}")))?;
            len += chunk.len() as u64;
            if len > m.size {
                return Err(Error::Size { expected: m.size, actual: len });
            }
            hasher.update(&chunk);
            match &mut file {
                Some((f, tmp)) => f.write_all(&chunk).await.map_err(|e| Error::io(&*tmp, e))?,
                None => memory.extend_from_slice(&chunk),
            }
        }
        if len != m.size {
            return Err(Error::Size { expected: m.size, actual: len });
        }
        let actual = hex::encode(hasher.finalize_reset());
        if actual != m.sha256 {
            return Err(Error::Checksum { expected: m.sha256.clone(), actual });
        }
        if let Some((f, tmp)) = &mut file {
            f.sync_all().await.map_err(|e| Error::io(&*tmp, e))?;
        }
        Ok(())
    }
    .await;
    match (outcome, file) {
        (Ok(()), None) => Ok(Fetched::Memory(memory)),
        (Ok(()), Some((_, tmp))) => {
            let store = store.clone();
            let (topic, version, sha) = (m.topic.clone(), m.version, m.sha256.clone());
            let path = tokio::task::spawn_blocking(move || store.adopt_file(&topic, version, &sha, &tmp))
                .await
                .map_err(|e| Error::Snapshot(format!("moving the payload into place: {e}")))??;
            Ok(Fetched::File(path))
        }
        (Err(e), Some((_, tmp))) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}
