//! Key providers for envelope encryption at rest (docs/encryption.md, "Key providers"):
//! whatever holds the key-encryption keys (KEKs) wraps and unwraps 256-bit data keys
//! behind one trait. Built: the local keyring file (the embedded default). Documented for
//! AWS KMS, Vault transit, GCP and Azure KMS, not built yet.
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
}
