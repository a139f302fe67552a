//! Envelope encryption at rest (docs/encryption.md, "At rest"): the sealed format of a
//! payload. A fresh random 256-bit data key per payload encrypts it with AES-256-GCM in
//! 64 KiB chunks (the STREAM construction, big-endian 32-bit counter, last-chunk flag: a
//! chunk altered, moved, dropped or cut off fails to open); the data key is wrapped by a
//! key-encryption key of a key provider (the `keys` module) and travels in a small header:
//!
//! ```text
//! "IMPRAR" 0x01                  magic and format version (7 bytes)
//! u8 n, key id (n bytes, UTF-8)  the provider's key id
//! u32 BE                         the key-encryption key's version (0: the provider's own)
//! u16 BE m, wrapped key (m)      the data key as the provider wrapped it
//! u32 BE                         plaintext chunk size (65536)
//! 7 bytes                        the STREAM nonce prefix (random)
//! chunks                         each ≤ chunk size + 16 (tag), the last one flagged
//! ```
//!
//! Every chunk's associated data is the magic, the format version, the chunk size and the
//! nonce prefix — not the wrapped key, so a rewrap (`keys rotate --rewrap`) replaces the
//! header's key fields and leaves every chunk's bytes as they are. The wrapped key is
//! authenticated by the provider's own AEAD.
//!
//! Everything here is synchronous and holds at most about one chunk: `Sealer` and `Opener`
//! take bytes as they come and give back what is ready, so payloads of any size stream.
use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{generic_array::GenericArray, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use bytes::{Bytes, BytesMut};

pub const MAGIC: &[u8; 6] = b"IMPRAR";
pub const FORMAT_VERSION: u8 = 1;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// Bytes an AES-GCM tag adds to a chunk.
pub const TAG: usize = 16;
pub const NONCE_PREFIX: usize = 7;
/// The largest wrapped key a header holds (AWS KMS ciphertext blobs are ~200 bytes).
pub const MAX_WRAPPED: usize = 4096;
/// A key id: 1-255 bytes of `A-Z a-z 0-9 . _ - : /` (local ids, KMS ARNs and aliases).
pub const MAX_KEY_ID: usize = 255;

/// A sealed payload that cannot be opened: said plainly, never wrong bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not an at-rest sealed payload (bad magic)")]
    NotSealed,
    #[error("sealed payload format version {0} is not known to this server")]
    UnknownFormat(u8),
    #[error("the sealed payload's header is malformed: {0}")]
    BadHeader(&'static str),
    #[error("the sealed payload failed authentication at chunk {0}: it was altered, truncated or reordered")]
    Altered(u64),
    #[error("the sealed payload ends inside its header")]
    Truncated,
}

pub fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?} is not a key id (1-{MAX_KEY_ID} of A-Z a-z 0-9 . _ - : /)"))
    }
}

/// The header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key_id: String,
    pub key_version: u32,
    pub wrapped: Vec<u8>,
    pub nonce_prefix: [u8; NONCE_PREFIX],
}

impl Header {
    /// A header for a fresh data key (a random nonce prefix).
    pub fn new(key_id: &str, key_version: u32, wrapped: Vec<u8>) -> Self {
        use rand::RngCore;
        let mut nonce_prefix = [0u8; NONCE_PREFIX];
        rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
        Self { key_id: key_id.to_owned(), key_version, wrapped, nonce_prefix }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(7 + 1 + self.key_id.len() + 4 + 2 + self.wrapped.len() + 4 + NONCE_PREFIX);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.key_id.len() as u8);
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&(self.wrapped.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.wrapped);
        out.extend_from_slice(&(CHUNK as u32).to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        out
    }

    /// The header at the start of `buf` and its length; `Ok(None)` when `buf` ends
    /// before the header does (read more).
    pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, SealError> {
        let mut at = 0usize;
        let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
            let s = buf.get(*at..*at + n)?;
            *at += n;
            Some(s)
        };
        let start = buf.len().min(MAGIC.len());
        if buf[..start] != MAGIC[..start] {
            return Err(SealError::NotSealed);
        }
        let Some(_) = take(&mut at, MAGIC.len()) else { return Ok(None) };
        let Some(v) = take(&mut at, 1) else { return Ok(None) };
        if v[0] != FORMAT_VERSION {
            return Err(SealError::UnknownFormat(v[0]));
        }
        let Some(n) = take(&mut at, 1) else { return Ok(None) };
        let Some(id) = take(&mut at, n[0] as usize) else { return Ok(None) };
        let key_id = std::str::from_utf8(id).map_err(|_| SealError::BadHeader("key id is not UTF-8"))?.to_owned();
        check_key_id(&key_id).map_err(|_| SealError::BadHeader("bad key id"))?;
        let Some(kv) = take(&mut at, 4) else { return Ok(None) };
        let key_version = u32::from_be_bytes(kv.try_into().expect("4 bytes"));
        let Some(m) = take(&mut at, 2) else { return Ok(None) };
        let m = u16::from_be_bytes(m.try_into().expect("2 bytes")) as usize;
        if m == 0 || m > MAX_WRAPPED {
            return Err(SealError::BadHeader("wrapped key length"));
        }
        let Some(wrapped) = take(&mut at, m) else { return Ok(None) };
        let wrapped = wrapped.to_vec();
        let Some(c) = take(&mut at, 4) else { return Ok(None) };
        if u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize != CHUNK {
            return Err(SealError::BadHeader("chunk size"));
        }
        let Some(np) = take(&mut at, NONCE_PREFIX) else { return Ok(None) };
        let nonce_prefix = np.try_into().expect("7 bytes");
        Ok(Some((Header { key_id, key_version, wrapped, nonce_prefix }, at)))
    }

    /// What every chunk authenticates besides itself.
    fn aad(&self) -> Vec<u8> {
        let mut a = Vec::with_capacity(7 + 4 + NONCE_PREFIX);
        a.extend_from_slice(MAGIC);
        a.push(FORMAT_VERSION);
        a.extend_from_slice(&(CHUNK as u32).to_be_bytes());
        a.extend_from_slice(&self.nonce_prefix);
        a
    }
}

/// The sealed size of a payload of `plain` bytes under a header of `header_len` bytes.
pub fn sealed_len(header_len: usize, plain: u64) -> u64 {
    // Whole chunks, the last one flagged; an empty payload is one empty chunk.
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    header_len as u64 + plain + chunks * TAG as u64
}

/// Encrypts a payload as it comes: `push` plaintext, write what it returns, then `finish`.
pub struct Sealer {
    enc: Option<EncryptorBE32<Aes256Gcm>>,
    aad: Vec<u8>,
    header: Option<Vec<u8>>,
    buf: BytesMut,
}

impl Sealer {
    pub fn new(data_key: &[u8; 32], header: &Header) -> Self {
        let aead = Aes256Gcm::new(GenericArray::from_slice(data_key));
        let enc = EncryptorBE32::from_aead(aead, GenericArray::from_slice(&header.nonce_prefix));
        Self { enc: Some(enc), aad: header.aad(), header: Some(header.encode()), buf: BytesMut::new() }
    }

    /// Sealed bytes ready so far (the header first); holds back at most one chunk.
    pub fn push(&mut self, plain: &[u8]) -> Bytes {
        let mut out = BytesMut::from(self.header.take().unwrap_or_default().as_slice());
        self.buf.extend_from_slice(plain);
        let enc = self.enc.as_mut().expect("not finished");
        while self.buf.len() > CHUNK {
            let chunk = self.buf.split_to(CHUNK);
            let sealed =
                enc.encrypt_next(Payload { msg: &chunk, aad: &self.aad }).expect("AES-GCM seals any chunk of 64 KiB");
            out.extend_from_slice(&sealed);
        }
        out.freeze()
    }

    /// The rest: the last (flagged) chunk.
    pub fn finish(mut self) -> Bytes {
        let mut out = BytesMut::from(self.header.take().unwrap_or_default().as_slice());
        let enc = self.enc.take().expect("not finished");
        let sealed =
            enc.encrypt_last(Payload { msg: &self.buf, aad: &self.aad }).expect("AES-GCM seals the last chunk");
        out.extend_from_slice(&sealed);
        out.freeze()
    }
}

/// Seals a whole payload held in memory (inline payloads, snapshot manifests).
pub fn seal(data_key: &[u8; 32], header: &Header, plain: &[u8]) -> Bytes {
    let mut s = Sealer::new(data_key, header);
    let mut out = BytesMut::from(&s.push(plain)[..]);
    out.extend_from_slice(&s.finish());
    out.freeze()
}

/// Decrypts the chunks after a header: `push` sealed bytes, use what it returns, then
/// `finish`. Nothing it returns is unauthenticated; a failure is an error, never bytes.
pub struct Opener {
    dec: Option<DecryptorBE32<Aes256Gcm>>,
    aad: Vec<u8>,
    buf: BytesMut,
    chunk: u64,
}

impl Opener {
    pub fn new(data_key: &[u8; 32], header: &Header) -> Self {
        let aead = Aes256Gcm::new(GenericArray::from_slice(data_key));
        let dec = DecryptorBE32::from_aead(aead, GenericArray::from_slice(&header.nonce_prefix));
        Self { dec: Some(dec), aad: header.aad(), buf: BytesMut::new(), chunk: 0 }
    }

    pub fn push(&mut self, sealed: &[u8]) -> Result<Bytes, SealError> {
        self.buf.extend_from_slice(sealed);
        let mut out = BytesMut::new();
        let dec = self.dec.as_mut().ok_or(SealError::Altered(self.chunk))?;
        while self.buf.len() > CHUNK + TAG {
            let chunk = self.buf.split_to(CHUNK + TAG);
            let plain = dec.decrypt_next(Payload { msg: &chunk, aad: &self.aad });
            let Ok(plain) = plain else {
                self.dec = None;
                return Err(SealError::Altered(self.chunk));
            };
            self.chunk += 1;
            out.extend_from_slice(&plain);
        }
        Ok(out.freeze())
    }

    pub fn finish(mut self) -> Result<Bytes, SealError> {
        let dec = self.dec.take().ok_or(SealError::Altered(self.chunk))?;
        dec.decrypt_last(Payload { msg: &self.buf, aad: &self.aad })
            .map(Bytes::from)
            .map_err(|_| SealError::Altered(self.chunk))
    }
}

/// Where a plaintext byte range of a sealed payload lies (HTTP `Range` on a sealed object):
/// plaintext offset `p` is in chunk `p / CHUNK`, which starts at sealed offset
/// `header + chunk × (CHUNK + TAG)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpan {
    /// The first chunk the range touches.
    pub first_chunk: u64,
    /// The sealed bytes to read: whole chunks `first_chunk..=` the range's last one.
    pub sealed: std::ops::Range<u64>,
    /// Plaintext bytes of the first chunk before the range starts.
    pub skip: u64,
    /// Whether the range's last chunk is the payload's last (flagged) one.
    pub ends_last: bool,
}

/// The chunks holding plaintext bytes `range` (non-empty, within `plain` bytes) of a payload
/// sealed under a header of `header_len` bytes.
pub fn chunk_span(header_len: usize, plain: u64, range: std::ops::Range<u64>) -> ChunkSpan {
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    let first = range.start / CHUNK as u64;
    let last = (range.end.saturating_sub(1) / CHUNK as u64).min(chunks - 1);
    let at = |c: u64| header_len as u64 + c * (CHUNK + TAG) as u64;
    let end = if last == chunks - 1 { sealed_len(header_len, plain) } else { at(last + 1) };
    ChunkSpan {
        first_chunk: first,
        sealed: at(first)..end,
        skip: range.start - first * CHUNK as u64,
        ends_last: last == chunks - 1,
    }
}

/// Decrypts whole chunks of a sealed payload starting at chunk `span.first_chunk` (the
/// STREAM positioned there): `push` the sealed bytes of `span.sealed` as they come, then
/// `finish`. Like `Opener`, nothing unauthenticated is ever returned.
pub struct RangeOpener {
    stream: aes_gcm::aead::stream::StreamBE32<Aes256Gcm>,
    aad: Vec<u8>,
    buf: BytesMut,
    chunk: u64,
    ends_last: bool,
    failed: bool,
}

impl RangeOpener {
    pub fn new(data_key: &[u8; 32], header: &Header, span: &ChunkSpan) -> Self {
        use aes_gcm::aead::stream::NewStream;
        let aead = Aes256Gcm::new(GenericArray::from_slice(data_key));
        let stream = aes_gcm::aead::stream::StreamBE32::from_aead(aead, GenericArray::from_slice(&header.nonce_prefix));
        Self {
            stream,
            aad: header.aad(),
            buf: BytesMut::new(),
            chunk: span.first_chunk,
            ends_last: span.ends_last,
            failed: false,
        }
    }

    fn open_chunk(&mut self, sealed: &[u8], last: bool) -> Result<Vec<u8>, SealError> {
        use aes_gcm::aead::stream::StreamPrimitive;
        let position = u32::try_from(self.chunk).map_err(|_| SealError::Altered(self.chunk))?;
        let plain = self.stream.decrypt(position, last, Payload { msg: sealed, aad: &self.aad });
        let Ok(plain) = plain else {
            self.failed = true;
            return Err(SealError::Altered(self.chunk));
        };
        self.chunk += 1;
        Ok(plain)
    }

    pub fn push(&mut self, sealed: &[u8]) -> Result<Bytes, SealError> {
        if self.failed {
            return Err(SealError::Altered(self.chunk));
        }
        self.buf.extend_from_slice(sealed);
        let mut out = BytesMut::new();
        while self.buf.len() > CHUNK + TAG {
            let chunk = self.buf.split_to(CHUNK + TAG);
            out.extend_from_slice(&self.open_chunk(&chunk, false)?);
        }
        Ok(out.freeze())
    }

    /// The range's last chunk (flagged as the payload's last when it is).
    pub fn finish(mut self) -> Result<Bytes, SealError> {
        if self.failed {
            return Err(SealError::Altered(self.chunk));
        }
        let rest = std::mem::take(&mut self.buf);
        if rest.is_empty() && !self.ends_last {
            return Ok(Bytes::new());
        }
        let last = self.ends_last;
        self.open_chunk(&rest, last).map(Bytes::from)
    }
}

/// Opens a whole sealed payload held in memory with its (unwrapped) data key.
pub fn open(data_key: &[u8; 32], sealed: &[u8]) -> Result<Bytes, SealError> {
    let (header, at) = Header::parse(sealed)?.ok_or(SealError::Truncated)?;
    let mut o = Opener::new(data_key, &header);
    let mut out = BytesMut::from(&o.push(&sealed[at..])?[..]);
    out.extend_from_slice(&o.finish()?);
    Ok(out.freeze())
}

/// The header of a sealed payload with other key fields (a rewrap): the chunks, which do
/// not authenticate the key fields, are kept byte for byte.
pub fn rewrapped(sealed: &[u8], key_id: &str, key_version: u32, wrapped: Vec<u8>) -> Result<Vec<u8>, SealError> {
    let (old, at) = Header::parse(sealed)?.ok_or(SealError::Truncated)?;
    let new = Header { key_id: key_id.to_owned(), key_version, wrapped, nonce_prefix: old.nonce_prefix };
    let mut out = new.encode();
    out.extend_from_slice(&sealed[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn header() -> Header {
        Header::new("payments", 3, vec![9; 60])
    }

    fn plain(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_chunk_boundary() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17] {
            let h = header();
            let p = plain(n);
            let s = seal(&key(1), &h, &p);
            assert_eq!(s.len() as u64, sealed_len(h.encode().len(), n as u64), "size {n}");
            assert_eq!(open(&key(1), &s).unwrap(), p, "size {n}");
            if n >= 32 {
                assert!(!s.windows(32).any(|w| w == &p[..32]), "plaintext shows in the sealed bytes");
            }
        }
    }

    #[test]
    fn streams_in_any_pieces() {
        let h = header();
        let p = plain(5 * CHUNK + 1234);
        let mut s = Sealer::new(&key(2), &h);
        let mut sealed = Vec::new();
        for piece in p.chunks(7777) {
            sealed.extend_from_slice(&s.push(piece));
        }
        sealed.extend_from_slice(&s.finish());
        assert_eq!(sealed, seal(&key(2), &h, &p).to_vec());
        let (parsed, at) = Header::parse(&sealed).unwrap().unwrap();
        assert_eq!(parsed, h);
        let mut o = Opener::new(&key(2), &parsed);
        let mut out = Vec::new();
        for piece in sealed[at..].chunks(1000) {
            out.extend_from_slice(&o.push(piece).unwrap());
        }
        out.extend_from_slice(&o.finish().unwrap());
        assert_eq!(out, p);
    }

    #[test]
    fn a_flipped_byte_in_any_chunk_fails_and_says_so() {
        let h = header();
        let p = plain(3 * CHUNK);
        let s = seal(&key(3), &h, &p).to_vec();
        let at = h.encode().len();
        for (chunk, offset) in [(0u64, at + 5), (1, at + CHUNK + TAG + 100), (2, s.len() - 1)] {
            let mut t = s.clone();
            t[offset] ^= 0x01;
            let err = open(&key(3), &t).unwrap_err();
            assert_eq!(err, SealError::Altered(chunk));
            assert!(err.to_string().contains("altered"));
        }
    }

    #[test]
    fn cut_dropped_or_wrong_key_fail() {
        let h = header();
        let p = plain(2 * CHUNK + 10);
        let s = seal(&key(4), &h, &p).to_vec();
        let at = h.encode().len();
        // cut after the first whole chunk: that chunk was not the last one
        assert!(open(&key(4), &s[..at + CHUNK + TAG]).is_err());
        // nothing after the header
        assert!(open(&key(4), &s[..at]).is_err());
        // a chunk dropped
        let mut dropped = s[..at].to_vec();
        dropped.extend_from_slice(&s[at + CHUNK + TAG..]);
        assert!(open(&key(4), &dropped).is_err());
        assert!(matches!(open(&key(5), &s), Err(SealError::Altered(0))));
        // inside the header
        assert_eq!(open(&key(4), &s[..10]), Err(SealError::Truncated));
        assert_eq!(open(&key(4), b"plain text"), Err(SealError::NotSealed));
    }

    #[test]
    fn rewrap_keeps_the_chunks() {
        let h = header();
        let p = plain(CHUNK + 5);
        let s = seal(&key(6), &h, &p);
        let r = rewrapped(&s, "payments", 4, vec![7; 80]).unwrap();
        let (nh, at) = Header::parse(&r).unwrap().unwrap();
        assert_eq!((nh.key_version, nh.wrapped.len()), (4, 80));
        assert_eq!(&r[at..], &s[h.encode().len()..]);
        assert_eq!(open(&key(6), &r).unwrap(), p);
    }

    #[test]
    fn any_range_opens_from_its_own_chunks_only() {
        let h = header();
        let hl = h.encode().len();
        let n = 3 * CHUNK + 500;
        let p = plain(n);
        let s = seal(&key(7), &h, &p);
        let ranges = [
            0..1,
            10..20,
            CHUNK as u64 - 3..CHUNK as u64 + 3,
            0..n as u64,
            n as u64 - 1..n as u64,
            CHUNK as u64..2 * CHUNK as u64,
        ];
        for r in ranges {
            let span = chunk_span(hl, n as u64, r.clone());
            let mut o = RangeOpener::new(&key(7), &h, &span);
            let mut out = Vec::new();
            for piece in s[span.sealed.start as usize..span.sealed.end as usize].chunks(5000) {
                out.extend_from_slice(&o.push(piece).unwrap());
            }
            out.extend_from_slice(&o.finish().unwrap());
            let got = &out[span.skip as usize..span.skip as usize + (r.end - r.start) as usize];
            assert_eq!(got, &p[r.start as usize..r.end as usize], "range {r:?}");
        }
        // A flipped byte inside the range's chunks fails; one outside does not matter.
        let span = chunk_span(hl, n as u64, CHUNK as u64 + 5..CHUNK as u64 + 9);
        let mut t = s.to_vec();
        t[hl + 3] ^= 1; // chunk 0
        let mut o = RangeOpener::new(&key(7), &h, &span);
        let mut out = o.push(&t[span.sealed.start as usize..span.sealed.end as usize]).unwrap().to_vec();
        out.extend_from_slice(&o.finish().unwrap());
        assert_eq!(&out[5..9], &p[CHUNK + 5..CHUNK + 9]);
        t[span.sealed.start as usize + 7] ^= 1; // chunk 1
        let mut o = RangeOpener::new(&key(7), &h, &span);
        let r = o.push(&t[span.sealed.start as usize..span.sealed.end as usize]).and_then(|_| o.finish());
        assert_eq!(r, Err(SealError::Altered(1)));
        // The last chunk must carry the last flag: a range ending there cut short fails.
        let span = chunk_span(hl, n as u64, n as u64 - 10..n as u64);
        let o = RangeOpener::new(&key(7), &h, &span);
        assert!(o.finish().is_err(), "nothing of the flagged last chunk");
    }

    #[test]
    fn header_parse_wants_more_then_refuses_garbage() {
        let e = header().encode();
        for n in 0..e.len() {
            assert_eq!(Header::parse(&e[..n]), Ok(None), "prefix {n}");
        }
        let mut bad = e.clone();
        bad[6] = 9;
        assert_eq!(Header::parse(&bad), Err(SealError::UnknownFormat(9)));
        assert!(check_key_id("alias/prod-key").is_ok());
        assert!(check_key_id("").is_err() && check_key_id("a b").is_err());
    }
}
