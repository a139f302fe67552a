//! End-to-end encrypted topics (docs/encryption.md): payloads are age v1 files encrypted
//! to the topic's X25519 recipients. Publishers encrypt ([`encrypt`], [`encrypt_to`]);
//! consumers decrypt with the identities handed to them out of band ([`Identities`]).
//! The checksum a consumer verifies is the ciphertext's; age authenticates the plaintext
//! (a tampered chunk fails decryption). The CLI and the agent use this module too.
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// The first line of every age v1 file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// Whether bytes start like an age v1 file (binary, not armored).
pub fn is_age(prefix: &[u8]) -> bool {
    prefix.starts_with(AGE_MAGIC)
}

/// Why encrypting or decrypting failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("{0}")]
    Key(String),
    #[error("cannot decrypt the payload: {0}")]
    Decrypt(String),
    #[error("cannot encrypt the payload: {0}")]
    Encrypt(String),
}

/// age X25519 identities (secret keys, `AGE-SECRET-KEY-1…`), as an identity file holds
/// them (one a line; blank lines and `#` comments skipped, as age-keygen writes them).
#[derive(Clone)]
pub struct Identities(Arc<Vec<age::x25519::Identity>>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} key(s), not shown)", self.0.len())
    }
}

/// Identity files are small: a larger one is refused rather than read.
const MAX_IDENTITY_FILE: u64 = 1 << 20;

impl Identities {
    pub fn parse(text: &str) -> Result<Self, CryptError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.parse::<age::x25519::Identity>().map_err(|e| {
                CryptError::Key(format!("line {} is not an age X25519 identity (AGE-SECRET-KEY-1…): {e}", n + 1))
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(CryptError::Key("no age identity (AGE-SECRET-KEY-1…) in it".into()));
        }
        Ok(Self(Arc::new(keys)))
    }

    pub fn from_file(path: &Path) -> Result<Self, CryptError> {
        let what = |e: &dyn std::fmt::Display| CryptError::Key(format!("identity file {}: {e}", path.display()));
        let f = std::fs::File::open(path).map_err(|e| what(&e))?;
        let mut text = String::new();
        f.take(MAX_IDENTITY_FILE + 1).read_to_string(&mut text).map_err(|e| what(&e))?;
        if text.len() as u64 > MAX_IDENTITY_FILE {
            return Err(what(&"larger than 1 MiB"));
        }
        Self::parse(&text).map_err(|e| what(&e))
    }

    /// These identities and `other`'s.
    pub fn join(&self, other: &Identities) -> Identities {
        Identities(Arc::new(self.0.iter().chain(other.0.iter()).cloned().collect()))
    }

    /// The public keys (`age1…`) of these identities.
    pub fn recipients(&self) -> Vec<String> {
        self.0.iter().map(|i| i.to_public().to_string()).collect()
    }

    /// A reader of the plaintext of the age file `input` (streamed: memory stays flat).
    /// Errors while reading mean the ciphertext was altered or cut short.
    pub fn decrypt_reader<R: Read>(&self, input: R) -> Result<impl Read, CryptError> {
        let d = age::Decryptor::new_buffered(BufReader::new(input)).map_err(decrypt_error)?;
        d.decrypt(self.0.iter().map(|i| i as &dyn age::Identity)).map_err(decrypt_error)
    }

    /// The plaintext of a whole age file held in memory.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut out = Vec::with_capacity(ciphertext.len());
        self.decrypt_reader(ciphertext)?.read_to_end(&mut out).map_err(|e| decrypt_error(&e))?;
        Ok(out)
    }
}

fn decrypt_error(e: impl std::fmt::Display) -> CryptError {
    let msg = e.to_string();
    if msg.contains("No matching keys") || msg.to_ascii_lowercase().contains("no matching") {
        CryptError::Decrypt("none of the given identities is a recipient of this payload".into())
    } else {
        CryptError::Decrypt(format!("{msg} (the ciphertext was altered, cut short or is not an age file)"))
    }
}

fn parse_recipients(recipients: &[String]) -> Result<Vec<age::x25519::Recipient>, CryptError> {
    if recipients.is_empty() {
        return Err(CryptError::Key("no recipients to encrypt to".into()));
    }
    recipients
        .iter()
        .map(|r| {
            r.trim()
                .parse::<age::x25519::Recipient>()
                .map_err(|e| CryptError::Key(format!("{r:?} is not an age X25519 recipient (age1…): {e}")))
        })
        .collect()
}

/// Copies `input` to `output` as an age file encrypted to every recipient (streamed).
/// Returns the bytes written.
pub fn encrypt_to<R: BufRead, W: Write>(recipients: &[String], mut input: R, output: W) -> Result<u64, CryptError> {
    let keys = parse_recipients(recipients)?;
    let enc = age::Encryptor::with_recipients(keys.iter().map(|k| k as &dyn age::Recipient))
        .map_err(|e| CryptError::Encrypt(e.to_string()))?;
    let mut counted = Counted { inner: output, n: 0 };
    let mut w = enc.wrap_output(&mut counted).map_err(|e| CryptError::Encrypt(e.to_string()))?;
    io::copy(&mut input, &mut w).map_err(|e| CryptError::Encrypt(e.to_string()))?;
    w.finish().map_err(|e| CryptError::Encrypt(e.to_string()))?;
    Ok(counted.n)
}

/// A whole plaintext encrypted to every recipient.
pub fn encrypt(recipients: &[String], plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::with_capacity(plaintext.len() + 512);
    encrypt_to(recipients, plaintext, &mut out)?;
    Ok(out)
}

struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The error of an encrypted payload reaching a client without identities.
pub(crate) fn no_identity(topic: &str, version: u64) -> String {
    format!(
        "version {version} of {topic:?} is end-to-end encrypted (age) and this client has no identity to decrypt it: \
         give it one (ClientBuilder::identity_file, the agent's identity_file, imprint get --identity)"
    )
}

/// A fresh identity and its recipient (for tests and `imprint keygen`): (secret, public).
pub fn generate() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    (id.to_string().expose_secret().to_owned(), id.to_public().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let (secret, public) = generate();
        let (other, _) = generate();
        let ct = encrypt(std::slice::from_ref(&public), b"{\"card\": true}").unwrap();
        assert!(is_age(&ct));
        assert!(!ct.windows(4).any(|w| w == b"card"));
        let ids = Identities::parse(&format!("# created: now\n{secret}\n")).unwrap();
        assert_eq!(ids.recipients(), vec![public]);
        assert_eq!(ids.decrypt(&ct).unwrap(), b"{\"card\": true}");
        let wrong = Identities::parse(&other).unwrap();
        assert!(wrong.decrypt(&ct).unwrap_err().to_string().contains("none of the given identities"));
        let mut tampered = ct.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(ids.decrypt(&tampered).unwrap_err().to_string().contains("altered"));
        assert!(Identities::parse("# nothing\n").is_err());
        assert!(encrypt(&["age1nope".into()], b"x").is_err());
    }
}
