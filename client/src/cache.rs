//! The disk cache: per topic, the last payload that applied, so a node whose server is
//! unreachable at start-up starts from it. Also where downloaded files land.
//!
//! Layout: `<dir>/<topic>/v<version>-<sha256 prefix>.bin` (the payload, written once) and
//! `<dir>/<topic>/meta.json` (which file is current, with its version and SHA-256).
//! Every write goes to a `.tmp-*` file that is synced, then renamed: a crash leaves the
//! old state or the new one, never half of either. The previous payload file is kept
//! (a reader that was handed its path a moment ago can still open it); older ones go.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const META: &str = "meta.json";
const TMP_PREFIX: &str = ".tmp-";
/// Temporary files older than this are left-overs of a crash (or of another process).
const STALE_TMP: Duration = Duration::from_secs(3600);

/// What `meta.json` records about the cached payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CacheMeta {
    pub topic: String,
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The payload file's name inside the topic's directory.
    pub file: String,
    /// Unix seconds.
    pub saved_at: u64,
}

/// A directory of per-topic payloads. `persistent: false` is a private temporary
/// directory (no cache configured): files land there, but nothing is read back at start,
/// and it is removed once nothing (client, poller, subscription) can refer to it.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    root: PathBuf,
    persistent: bool,
    scratch: Option<Arc<Scratch>>,
}

/// Removes a private temporary directory when the last holder goes.
#[derive(Debug)]
pub(crate) struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; not every platform can open a directory, which is fine.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Store {
    pub fn new(root: PathBuf, persistent: bool) -> Self {
        let scratch = (!persistent).then(|| Arc::new(Scratch(root.clone())));
        Self { root, persistent, scratch }
    }

    /// Keeps a private temporary directory alive (for subscriptions holding its files).
    pub fn guard(&self) -> Option<Arc<Scratch>> {
        self.scratch.clone()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn persistent(&self) -> bool {
        self.persistent
    }

    pub fn topic_dir(&self, topic: &str) -> PathBuf {
        // Topic names are validated (`[a-z0-9][a-z0-9._-]*`): never `.`/`..`, never a `/`.
        self.root.join(topic)
    }

    /// Creates the topic's directory and removes stale temporary files in it.
    pub fn prepare(&self, topic: &str) -> Result<PathBuf> {
        let dir = self.topic_dir(topic);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
                if name.to_string_lossy().starts_with(TMP_PREFIX) && old.is_some_and(|a| a > STALE_TMP) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(dir)
    }

    /// A fresh temporary path in the topic's directory (for a download in progress).
    pub fn temp_path(&self, topic: &str) -> PathBuf {
        self.topic_dir(topic).join(format!("{TMP_PREFIX}{}", random_suffix()))
    }

    pub fn file_name(version: u64, sha256: &str) -> String {
        let short: String = sha256.chars().take(16).collect();
        format!("v{version}-{short}.bin")
    }

    /// Writes `bytes` as the topic's payload file (atomically) and returns its path.
    pub fn write_payload(&self, topic: &str, version: u64, sha256: &str, bytes: &[u8]) -> Result<PathBuf> {
        let dir = self.prepare(topic)?;
        let path = dir.join(Self::file_name(version, sha256));
        if path.exists() {
            return Ok(path);
        }
        let tmp = self.temp_path(topic);
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir);
        Ok(path)
    }

    /// Moves a downloaded (and verified) temporary file into place; returns its path.
    pub fn adopt_file(&self, topic: &str, version: u64, sha256: &str, tmp: &Path) -> Result<PathBuf> {
        let dir = self.prepare(topic)?;
        let path = dir.join(Self::file_name(version, sha256));
        fs::rename(tmp, &path).map_err(io(&path))?;
        sync_dir(&dir);
        Ok(path)
    }

    /// Records `meta` (whose `file` is already in place) as the topic's current payload,
    /// and removes payload files other than it and the one it replaces.
    pub fn commit(&self, meta: &CacheMeta) -> Result<()> {
        let dir = self.prepare(&meta.topic)?;
        let previous = self.read_meta(&meta.topic).map(|m| m.file);
        let tmp = self.temp_path(&meta.topic);
        let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Protocol(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        let target = dir.join(META);
        fs::rename(&tmp, &target).map_err(io(&target))?;
        sync_dir(&dir);
        let keep = [Some(meta.file.clone()), previous];
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".bin") && !keep.iter().flatten().any(|k| *k == name) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn read_meta(&self, topic: &str) -> Option<CacheMeta> {
        let bytes = fs::read(self.topic_dir(topic).join(META)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The cached payload of `topic`, if there is one whose file still has the recorded
    /// SHA-256 (a damaged cache is ignored, with a warning).
    pub fn load(&self, topic: &str) -> Option<(CacheMeta, PathBuf)> {
        if !self.persistent {
            return None;
        }
        let meta = self.read_meta(topic)?;
        if meta.topic != topic || meta.file.contains(['/', '\\']) || meta.file.starts_with('.') {
            tracing::warn!(topic, "ignoring a cache entry that names another topic or file");
            return None;
        }
        let path = self.topic_dir(topic).join(&meta.file);
        match sha256_file(&path) {
            Ok((sha, size)) if sha == meta.sha256 && size == meta.size => Some((meta, path)),
            Ok((sha, _)) => {
                tracing::warn!(topic, path = %path.display(), expected = %meta.sha256, actual = %sha,
                    "ignoring a damaged cache entry");
                None
            }
            Err(e) => {
                tracing::warn!(topic, path = %path.display(), error = %e, "cannot read the cached payload");
                None
            }
        }
    }
}

/// SHA-256 (hex) and size of a file.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imprint-client-cache-test-{}", random_suffix()));
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn meta(store: &Store, topic: &str, version: u64, bytes: &[u8]) -> CacheMeta {
        let path = store.write_payload(topic, version, &sha(bytes), bytes).expect("write");
        CacheMeta {
            topic: topic.into(),
            version,
            sha256: sha(bytes),
            size: bytes.len() as u64,
            content_type: "text/plain".into(),
            metadata: BTreeMap::new(),
            file: path.file_name().expect("name").to_string_lossy().into_owned(),
            saved_at: unix_now(),
        }
    }

    #[test]
    fn saves_loads_and_prunes() {
        let root = scratch();
        let store = Store::new(root.clone(), true);
        assert!(store.load("a").is_none());
        for v in 1..=3u64 {
            let bytes = format!("payload {v}");
            let m = meta(&store, "a", v, bytes.as_bytes());
            store.commit(&m).expect("commit");
        }
        let (m, path) = store.load("a").expect("cached");
        assert_eq!(m.version, 3);
        assert_eq!(fs::read(&path).expect("read"), b"payload 3");
        let bins: Vec<_> = fs::read_dir(store.topic_dir("a"))
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
            .collect();
        assert_eq!(bins.len(), 2, "the current and the previous payload are kept");

        // A damaged payload is not trusted.
        fs::write(&path, b"payload X").expect("damage");
        assert!(store.load("a").is_none());
        // A non-persistent store never starts anything from disk.
        assert!(Store::new(root.clone(), false).load("a").is_none());
        let _ = fs::remove_dir_all(root);
    }
}
