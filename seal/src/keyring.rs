//! The local keyring file (`IMPRINT_KEYRING`, default `$IMPRINT_HOME/keyring.json`, mode 0600):
//! `{"format": 1, "keys": {"<id>": {"primary": 2, "versions": {"1": "<base64 KEK>", "2": …}}}}`.
//! A data key is wrapped as `nonce (12) ‖ AES-256-GCM(KEK, data key) ‖ tag (16)` with the
//! associated data `imprint-keyring-v1 ‖ 0 ‖ key id ‖ 0 ‖ version (u32 BE)`: a wrapped key
//! moved to another id or version does not unwrap. Rotation adds a version and makes it the
//! primary (new data keys); old versions stay for unwrapping until retired. The server reads
//! it (`imprint-server keys …`), and so can a consumer node given a copy (snapshots).
use crate::format::check_key_id;
use crate::provider::{random_key, KeyError, KeyProvider};
use aes_gcm::aead::{generic_array::GenericArray, Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

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

pub(crate) fn b64() -> base64::engine::GeneralPurpose {
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
