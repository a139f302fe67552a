//! What every key provider does (docs/encryption.md, "Key providers"): whatever holds the
//! key-encryption keys (KEKs) wraps and unwraps 256-bit data keys behind one trait, and a
//! sealed stream is opened with any provider (`open_stream`).
use futures::future::BoxFuture;

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

/// A sealed payload's bytes as they stream from the store, opened: the header is read, its
/// data key unwrapped by `provider`, and the chunks decrypted as they come (about one chunk
/// in memory). A failure — the provider, or a chunk that does not authenticate — ends the
/// stream with an error, never with unauthenticated bytes.
pub fn open_stream(
    provider: std::sync::Arc<dyn KeyProvider>,
    sealed: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    use crate::format::{Header, Opener, SealError};
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
