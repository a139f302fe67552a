//! The payload object store (`IMPRINT_OBJECT_STORE`) through the `object_store` crate:
//! a local directory by default, S3 / GCS / Azure in production. Imprint keeps its own
//! objects under the store's prefix:
//! - `uploads/<random>` while a publish streams in (claimed or swept within the hour);
//! - `topics/<topic>/<version>/<sha256>` once the version commits (written once, never
//!   overwritten: the version number is unique and assigned under the topic's lock).
//!
//! - `snapshots/<topic>.json`: the manifest of what `*` resolves to, kept by the worker
//!   (the `snapshots` module) for clients that start while the server is unreachable.
//!
//! Registered objects (pointers published to objects that already exist) must live in
//! the registration area (`IMPRINT_REGISTER_AREA`, default `external`), under a folder
//! named after the topic's owning team: `external/<team>/…`. They are never deleted. A
//! registered key has exactly one spelling (no empty or dot segments, no percent-escapes,
//! backslashes or control characters) and, on a local store, may not be a symlink out of
//! its team's folder: so no publisher can point a version at another team's payload,
//! an upload or a snapshot manifest.
use crate::error::{Error, Result};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::ObjectStore;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How long a presigned download URL stays valid.
pub const PRESIGN_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
pub struct Objects {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// The store's URL without a trailing slash (`file:///srv/imprint`, `s3://bucket/prefix`).
    base: String,
    /// Where Imprint's keys start inside `store`.
    prefix: Path,
    /// Set when presigned downloads are on (S3 with `IMPRINT_PRESIGN=true`).
    signer: Option<Arc<dyn Signer>>,
    /// The largest object the store moves server-side (S3's CopyObject: 5 GiB); larger
    /// uploads keep their upload key.
    move_limit: Option<u64>,
    /// The canonical directory of a local store (symlinks of registered keys are resolved
    /// against it).
    local_root: Option<std::path::PathBuf>,
    /// Objects fsynced so far (`sync`).
    syncs: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Objects").field("url", &self.inner.base).field("presign", &self.presigns()).finish()
    }
}

impl Default for Objects {
    /// An in-memory store: for tests that do not look at payload storage.
    fn default() -> Self {
        Self::from_parts(Arc::new(object_store::memory::InMemory::new()), "memory://".into(), Path::default(), None)
    }
}

fn unavailable(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { path, .. } => Error::ObjectNotFound(path),
        e => Error::ObjectStoreUnavailable(e.to_string()),
    }
}

pub(crate) fn store_error(e: object_store::Error) -> Error {
    unavailable(e)
}

impl Objects {
    fn from_parts(store: Arc<dyn ObjectStore>, base: String, prefix: Path, signer: Option<Arc<dyn Signer>>) -> Self {
        Self::with_move_limit(store, base, prefix, signer, None)
    }

    fn with_move_limit(
        store: Arc<dyn ObjectStore>,
        base: String,
        prefix: Path,
        signer: Option<Arc<dyn Signer>>,
        move_limit: Option<u64>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                base,
                prefix,
                signer,
                move_limit,
                local_root: None,
                syncs: Default::default(),
            }),
        }
    }

    /// A local directory (created if missing).
    pub fn local(dir: &std::path::Path) -> std::result::Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .with_automatic_cleanup(true);
        let base = url::Url::from_directory_path(&dir)
            .map_err(|()| format!("{} is not an absolute path", dir.display()))?
            .to_string();
        let inner = Inner {
            store: Arc::new(fs),
            base: base.trim_end_matches('/').to_owned(),
            prefix: Path::default(),
            signer: None,
            move_limit: None,
            local_root: Some(dir),
            syncs: Default::default(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Opens the store a URL names. Cloud stores take their settings from the standard
    /// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and then from `options` (the same
    /// keys, e.g. `aws_endpoint`), which win.
    pub fn open(url: &str, options: &[(String, String)], presign: bool) -> std::result::Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let prefix_of = |u: &url::Url| Path::from(u.path().trim_matches('/'));
        let bucket_base = |u: &url::Url| {
            let p = u.path().trim_matches('/');
            let host = u.host_str().unwrap_or_default();
            if p.is_empty() {
                format!("{}://{host}", u.scheme())
            } else {
                format!("{}://{host}/{p}", u.scheme())
            }
        };
        match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| format!("{url:?} is not an absolute file URL"))?;
                if presign {
                    return Err("IMPRINT_PRESIGN needs an S3 store".into());
                }
                Self::local(&dir)
            }
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                // Imprint's own keys: how long a failing region is retried before the
                // request fails (a region that is down should fail fast: consumers fail over).
                let mut retry = object_store::RetryConfig::default();
                let mut options = options.to_vec();
                options.retain(|(k, v)| match k.as_str() {
                    "max_retries" => v.parse().map(|n| retry.max_retries = n).is_err(),
                    "retry_timeout_secs" => {
                        v.parse().map(|n| retry.retry_timeout = std::time::Duration::from_secs(n)).is_err()
                    }
                    _ => true,
                });
                b = b.with_retry(retry);
                for (k, v) in &options {
                    let key = k.parse().map_err(|e| format!("S3 option {k:?}: {e}"))?;
                    b = b.with_config(key, v);
                }
                let s3 = Arc::new(b.build().map_err(|e| format!("S3 store {url:?}: {e}"))?);
                let signer: Option<Arc<dyn Signer>> = presign.then(|| s3.clone() as Arc<dyn Signer>);
                Ok(Self::with_move_limit(s3, bucket_base(&parsed), prefix_of(&parsed), signer, Some(5 << 30)))
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
                for (k, v) in options {
                    let key = k.parse().map_err(|e| format!("GCS option {k:?}: {e}"))?;
                    b = b.with_config(key, v);
                }
                if presign {
                    return Err("IMPRINT_PRESIGN needs an S3 store".into());
                }
                let gcs = Arc::new(b.build().map_err(|e| format!("GCS store {url:?}: {e}"))?);
                Ok(Self::from_parts(gcs, bucket_base(&parsed), prefix_of(&parsed), None))
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
                for (k, v) in options {
                    let key = k.parse().map_err(|e| format!("Azure option {k:?}: {e}"))?;
                    b = b.with_config(key, v);
                }
                if presign {
                    return Err("IMPRINT_PRESIGN needs an S3 store".into());
                }
                let az = Arc::new(b.build().map_err(|e| format!("Azure store {url:?}: {e}"))?);
                Ok(Self::from_parts(az, bucket_base(&parsed), prefix_of(&parsed), None))
            }
            other => Err(format!("unsupported object store scheme {other:?} (use file://, s3://, gs:// or az://)")),
        }
    }

    /// The store's URL (without credentials).
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    pub fn presigns(&self) -> bool {
        self.inner.signer.is_some()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    fn under_prefix(&self, rest: &str) -> Path {
        let mut parts: Vec<String> = self.inner.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend(rest.split('/').map(str::to_owned));
        Path::from_iter(parts)
    }

    /// `rest` (a key relative to the store's URL) under this store's prefix.
    pub(crate) fn key_under_prefix(&self, rest: &str) -> Path {
        self.under_prefix(rest)
    }

    /// A fresh key for an upload in progress.
    pub(crate) fn staging_key(&self) -> Path {
        let id: [u8; 16] = rand::random();
        self.under_prefix(&format!("uploads/{}", hex::encode(id)))
    }

    /// The key of a committed version's object.
    pub(crate) fn version_key(&self, topic: &str, version: u64, sha256: &str) -> Path {
        self.under_prefix(&format!("topics/{topic}/{version}/{sha256}"))
    }

    /// The key of a topic's snapshot manifest.
    pub fn snapshot_key(&self, topic: &str) -> Path {
        self.under_prefix(&format!("snapshots/{topic}.json"))
    }

    /// A key relative to the store's URL (what a client configured with that URL reads).
    pub fn relative(&self, key: &str) -> String {
        let prefix = self.inner.prefix.as_ref();
        key.strip_prefix(prefix).unwrap_or(key).trim_start_matches('/').to_owned()
    }

    /// Writes a small object whole (atomically: readers see the old or the new one).
    pub(crate) async fn put(&self, key: &Path, body: object_store::PutPayload) -> Result<()> {
        self.inner.store.put(key, body).await.map_err(unavailable)?;
        Ok(())
    }

    /// The URL of a key, as users see it.
    pub fn url_of(&self, key: &str) -> String {
        let prefix = self.inner.prefix.as_ref();
        let rest = key.strip_prefix(prefix).unwrap_or(key).trim_start_matches('/');
        format!("{}/{rest}", self.inner.base)
    }

    /// The key of a URL a publisher of `team` registers: it must name an object inside
    /// this store, in `area/<team>/`, spelled one way only (see the module comment). The
    /// messages never print the store's own location.
    pub(crate) fn key_of_url(&self, url: &str, area: &str, team: &str) -> Result<Path> {
        let rest = url
            .strip_prefix(self.inner.base.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| Error::Forbidden(format!("{url:?} is outside the configured object store")))?;
        let plain = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.contains(['%', '\\', '?', '#'])
                && !seg.chars().any(char::is_control)
        };
        if !rest.split('/').all(plain) {
            return Err(Error::invalid(format!(
                "{url:?} is not a plain object key: no empty or dot segments, percent-escapes, backslashes, '?', '#' or control characters"
            )));
        }
        let folder = format!("{area}/{team}/");
        if !rest.starts_with(&folder) || rest.len() == folder.len() {
            return Err(Error::Forbidden(format!(
                "registered objects of team {team:?} live under {folder} of the object store; {url:?} is not there"
            )));
        }
        let rel = Path::parse(rest).map_err(|e| Error::invalid(format!("{url:?}: {e}")))?;
        if rel.as_ref() != rest {
            return Err(Error::invalid(format!("{url:?} is not a plain object key")));
        }
        Ok(self.under_prefix(rel.as_ref()))
    }

    /// On a local store: the file behind `key` (a key from `key_of_url`) must really be
    /// in `area/<team>/` once symlinks are resolved. Other stores have no links.
    pub(crate) async fn check_registered_target(&self, key: &Path, area: &str, team: &str) -> Result<()> {
        let Some(root) = &self.inner.local_root else { return Ok(()) };
        let mut file = root.clone();
        file.extend(key.parts().map(|p| p.as_ref().to_owned()));
        let mut folder = root.clone();
        folder.extend(area.split('/'));
        folder.push(team);
        let (file, folder) = (tokio::fs::canonicalize(&file).await, tokio::fs::canonicalize(&folder).await);
        match (file, folder) {
            (Ok(f), Ok(d)) if f.starts_with(&d) && f != d => Ok(()),
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::ObjectNotFound(key.to_string())),
            _ => Err(Error::Forbidden(format!(
                "the object {key} leads outside {area}/{team}/ of the object store (a link); register the file itself"
            ))),
        }
    }

    /// A URL that downloads `key` without credentials for `PRESIGN_TTL`, when enabled.
    pub async fn presigned(&self, key: &str) -> Result<Option<String>> {
        let Some(signer) = &self.inner.signer else { return Ok(None) };
        let url = signer.signed_url(http_get(), &Path::from(key), PRESIGN_TTL).await.map_err(unavailable)?;
        Ok(Some(url.to_string()))
    }

    /// Deletes an object; one that is not there counts as deleted.
    pub(crate) async fn delete(&self, key: &Path) -> Result<()> {
        match self.inner.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Size of an object (`ObjectNotFound` when absent).
    pub(crate) async fn size(&self, key: &Path) -> Result<u64> {
        Ok(self.inner.store.head(key).await.map_err(unavailable)?.size)
    }

    /// Can an object of `size` bytes be moved to its version key? (S3 copies at most
    /// 5 GiB in one request; a larger upload stays at its upload key.)
    pub(crate) fn can_move(&self, size: u64) -> bool {
        self.inner.move_limit.is_none_or(|l| size <= l)
    }

    /// Makes an object durable: on a local store its file and the directory naming it are
    /// fsynced (a version must never commit naming bytes a crash could take back); cloud
    /// stores acknowledge a write only once it is durable.
    pub(crate) async fn sync(&self, key: &Path) -> Result<()> {
        let Some(root) = &self.inner.local_root else { return Ok(()) };
        let mut file = root.clone();
        file.extend(key.parts().map(|p| p.as_ref().to_owned()));
        let io = |e: std::io::Error| Error::ObjectStoreUnavailable(format!("cannot make {key} durable: {e}"));
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(io)?;
        self.inner.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Objects made durable by `sync` so far (local stores).
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves an upload to its final key, refusing to overwrite where the store can.
    pub(crate) async fn claim(&self, from: &Path, to: &Path) -> Result<()> {
        match self.inner.store.rename_if_not_exists(from, to).await {
            Ok(()) => Ok(()),
            // S3 without a conditional-copy setting: the final key is unique per version
            // anyway (assigned under the topic's lock), so a plain move is safe.
            Err(object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented) => {
                self.inner.store.rename(from, to).await.map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

fn http_get() -> http::Method {
    http::Method::GET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_urls_must_be_inside_the_store_and_outside_its_own_areas() {
        let o = Objects::from_parts(
            Arc::new(object_store::memory::InMemory::new()),
            "s3://bucket/imprint".into(),
            Path::from("imprint"),
            None,
        );
        let key = |url: &str| o.key_of_url(url, "external", "blue");
        assert_eq!(key("s3://bucket/imprint/external/blue/a.bin").unwrap().as_ref(), "imprint/external/blue/a.bin");
        assert!(matches!(key("s3://other/imprint/a"), Err(Error::Forbidden(_))));
        assert!(matches!(key("s3://bucket/imprintx/a"), Err(Error::Forbidden(_))));
        assert!(matches!(key("s3://bucket/a"), Err(Error::Forbidden(_))));
        assert!(matches!(key("s3://bucket/imprint/topics/t/1/x"), Err(Error::Forbidden(_))));
        assert!(matches!(key("s3://bucket/imprint/uploads/x"), Err(Error::Forbidden(_))));
        assert!(matches!(key("s3://bucket/imprint/snapshots/a.b.json"), Err(Error::Forbidden(_))));
        assert!(matches!(key("s3://bucket/imprint/external/red/a.bin"), Err(Error::Forbidden(_))));
        assert!(matches!(key("s3://bucket/imprint/external/blue/"), Err(Error::InvalidRequest(_))));
        assert!(matches!(key("s3://bucket/imprint/external/blue"), Err(Error::Forbidden(_))));
        // One spelling per key: the review's `//snapshots/…` and every other way round.
        for url in [
            "s3://bucket/imprint//snapshots/red.json",
            "s3://bucket/imprint//external/blue/a",
            "s3://bucket/imprint/external//blue/a",
            "s3://bucket/imprint/external/blue/../red/a",
            "s3://bucket/imprint/external/blue/./a",
            "s3://bucket/imprint/external/blue/%2e%2e/red/a",
            "s3://bucket/imprint/external/blue/..%2Fred%2Fa",
            "s3://bucket/imprint/external/blue/a\\..\\..\\red",
            "s3://bucket/imprint/external/blue/a\tb",
            "s3://bucket/imprint/external/blue/a?x=1",
        ] {
            assert!(matches!(key(url), Err(Error::InvalidRequest(_))), "{url}");
        }
        assert_eq!(o.snapshot_key("a.b").as_ref(), "imprint/snapshots/a.b.json");
        assert_eq!(o.relative("imprint/topics/a.b/3/ff"), "topics/a.b/3/ff");
        assert!(key("s3://bucket/imprint/a/../topics/x").is_err());
        assert!(key("s3://bucket/imprint/").is_err());
        assert_eq!(o.version_key("a.b", 3, "ff").as_ref(), "imprint/topics/a.b/3/ff");
        assert!(o.staging_key().as_ref().starts_with("imprint/uploads/"));
        assert_eq!(o.url_of("imprint/models/a.bin"), "s3://bucket/imprint/models/a.bin");
    }
}
