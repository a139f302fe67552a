//! End-to-end encrypted topics (docs/encryption.md): the rules the server can check
//! without any key. Payloads are age v1 files (<https://age-encryption.org/v1>) encrypted
//! to the topic's X25519 recipients. An X25519 stanza does not name its recipient, so the
//! server checks what the header shows: it is an age v1 header, it parses, it holds
//! exactly as many X25519 stanzas as the topic has recipients, and no other stanza types
//! (a passphrase, SSH or plugin stanza) besides the "grease" stanzas age writers add.

/// An age header is read from at most this many first bytes of a payload (a topic has at
/// most [`MAX_RECIPIENTS`] recipients; an X25519 stanza is about 100 bytes).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A topic lists at most this many recipients.
pub const MAX_RECIPIENTS: usize = 64;

const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";

/// What an age v1 header holds, as far as a server without keys can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeHeader {
    /// The number of `X25519` recipient stanzas.
    pub x25519: usize,
    /// The tags of the other stanzas, grease included, in order.
    pub other: Vec<String>,
    /// The header's length in bytes (the payload nonce and chunks follow).
    pub len: usize,
}

/// Why a payload is not an age v1 file fit for a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the payload is not an age v1 file (it does not start with \"age-encryption.org/v1\"); this topic is end-to-end encrypted: encrypt it to the topic's recipients (`imprint publish` does)")]
    NotAge,
    #[error("the payload's age header does not parse: {0}")]
    Malformed(String),
    #[error("the payload's age header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("the payload is encrypted to {found} X25519 recipient(s); this topic has {expected}: encrypt it to the topic's current recipients")]
    RecipientCount { found: usize, expected: usize },
    #[error("the payload's age header has a {0:?} stanza; this topic accepts X25519 recipients only")]
    OtherStanza(String),
}

fn malformed(msg: &str) -> HeaderError {
    HeaderError::Malformed(msg.to_owned())
}

fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/'
}

/// Parses the age v1 header at the start of `prefix` (the first bytes of a payload).
/// `Ok(None)`: `prefix` ends inside the header (give it more bytes, up to
/// [`MAX_HEADER_BYTES`]); with `complete` (`prefix` is the whole payload) that is an error.
pub fn parse_header(prefix: &[u8], complete: bool) -> Result<Option<AgeHeader>, HeaderError> {
    let short = VERSION_LINE.len().min(prefix.len());
    if prefix[..short] != VERSION_LINE[..short] {
        return Err(HeaderError::NotAge);
    }
    let incomplete = || {
        if complete {
            Err(malformed("the payload ends inside its header"))
        } else if prefix.len() >= MAX_HEADER_BYTES {
            Err(HeaderError::TooLong)
        } else {
            Ok(None)
        }
    };
    if prefix.len() < VERSION_LINE.len() {
        if complete {
            return Err(HeaderError::NotAge);
        }
        return incomplete();
    }
    let mut pos = VERSION_LINE.len();
    let mut x25519 = 0;
    let mut other = Vec::new();
    // Each line, without its '\n'; None when the prefix ends before the line does.
    let line = |pos: usize| -> Option<&[u8]> {
        let rest = prefix.get(pos..)?;
        let end = rest.iter().position(|&b| b == b'\n')?;
        Some(&rest[..end])
    };
    loop {
        if pos >= MAX_HEADER_BYTES {
            return Err(HeaderError::TooLong);
        }
        let Some(l) = line(pos) else { return incomplete() };
        pos += l.len() + 1;
        if let Some(mac) = l.strip_prefix(b"--- ") {
            if mac.len() != 43 || !mac.iter().copied().all(is_b64) {
                return Err(malformed("the MAC line is not 43 base64 characters"));
            }
            if pos > MAX_HEADER_BYTES {
                return Err(HeaderError::TooLong);
            }
            return Ok(Some(AgeHeader { x25519, other, len: pos }));
        }
        let Some(args) = l.strip_prefix(b"-> ") else {
            return Err(malformed("a line is neither a stanza (\"-> \") nor the MAC (\"--- \")"));
        };
        let args: Vec<&[u8]> = args.split(|&b| b == b' ').collect();
        if args.iter().any(|a| a.is_empty() || !a.iter().all(|b| (33..=126).contains(b))) {
            return Err(malformed("a stanza's arguments are not printable, space-separated words"));
        }
        let tag = String::from_utf8_lossy(args[0]).into_owned();
        if tag == "X25519" {
            if args.len() != 2 || args[1].len() != 43 || !args[1].iter().copied().all(is_b64) {
                return Err(malformed("an X25519 stanza does not have one 43-character share"));
            }
            x25519 += 1;
        } else {
            other.push(tag);
        }
        // The body: full 64-column lines, ended by a shorter (possibly empty) one.
        loop {
            let Some(b) = line(pos) else { return incomplete() };
            pos += b.len() + 1;
            if b.len() > 64 || !b.iter().copied().all(is_b64) {
                return Err(malformed("a stanza body line is not base64 of at most 64 columns"));
            }
            if b.len() < 64 {
                break;
            }
            if pos >= MAX_HEADER_BYTES {
                return Err(HeaderError::TooLong);
            }
        }
    }
}

/// Whether a parsed header fits a topic with `recipients` X25519 recipients: exactly that
/// many X25519 stanzas, and no other stanzas but grease (`<anything>-grease`).
pub fn check_header(h: &AgeHeader, recipients: usize) -> Result<(), HeaderError> {
    if let Some(t) = h.other.iter().find(|t| !t.ends_with("-grease")) {
        return Err(HeaderError::OtherStanza(t.clone()));
    }
    if h.x25519 != recipients {
        return Err(HeaderError::RecipientCount { found: h.x25519, expected: recipients });
    }
    Ok(())
}

const BECH32: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn polymod(values: &[u8]) -> u32 {
    const GEN: [u32; 5] = [0x3b6a_57b2, 0x2650_8e6d, 0x1ea1_19fa, 0x3d42_33dd, 0x2a14_62b3];
    let mut chk: u32 = 1;
    for &v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

/// An age X25519 recipient (`age1…`, Bech32 of a 32-byte public key), checked: its
/// characters, its checksum and its length. Returns it lowercased.
pub fn check_recipient(s: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("recipient {s:?} is not an age X25519 recipient (age1…): {why}"));
    let lower = s.trim().to_ascii_lowercase();
    if s.trim() != lower && s.trim() != lower.to_ascii_uppercase() {
        return bad("mixed case");
    }
    let Some(data) = lower.strip_prefix("age1") else { return bad("it does not start with age1") };
    // 32 bytes are 52 five-bit groups (plus padding bits), then 6 checksum characters.
    if data.len() != 58 {
        return bad("it is not 62 characters long");
    }
    let mut values: Vec<u8> = vec![3, 3, 3, 0, 1, 7, 5]; // hrp "age" expanded
    for c in data.bytes() {
        match BECH32.iter().position(|&b| b == c) {
            Some(v) => values.push(v as u8),
            None => return bad("it has a character outside Bech32's alphabet"),
        }
    }
    if polymod(&values) != 1 {
        return bad("its checksum is wrong");
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example recipient of age's README.
    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn header(stanzas: &str) -> Vec<u8> {
        format!("age-encryption.org/v1\n{stanzas}--- {}\n", "A".repeat(43)).into_bytes()
    }

    const X: &str =
        "-> X25519 TEiF0ypqr+bpvcqXNyCVJpL7OuwPdVwPL7KQEbFDOCc\nEmECAEcKN+n/Vs9SbWiV+Hu0r+E8R77DdWYyd83nw7U\n";

    #[test]
    fn recipients_are_checked() {
        assert_eq!(check_recipient(RECIPIENT).as_deref(), Ok(RECIPIENT));
        assert_eq!(check_recipient(&RECIPIENT.to_ascii_uppercase()).as_deref(), Ok(RECIPIENT));
        let mut wrong = RECIPIENT.to_owned();
        wrong.replace_range(10..11, "q");
        assert!(check_recipient(&wrong).unwrap_err().contains("checksum"));
        assert!(check_recipient("age1abc").is_err());
        assert!(check_recipient("ssh-ed25519 AAAA").is_err());
    }

    #[test]
    fn headers_parse_and_count_stanzas() {
        let mut two = header(&format!("{X}{X}-> 1-grease a\n\n"));
        two.extend_from_slice(b"payload bytes");
        let h = parse_header(&two, true).unwrap().unwrap();
        assert_eq!((h.x25519, h.other.as_slice()), (2, ["1-grease".to_owned()].as_slice()));
        assert_eq!(&two[h.len..], b"payload bytes");
        assert!(check_header(&h, 2).is_ok());
        assert_eq!(check_header(&h, 3), Err(HeaderError::RecipientCount { found: 2, expected: 3 }));
        // Cut short: more bytes are wanted, unless that was the whole payload.
        assert_eq!(parse_header(&two[..40], false), Ok(None));
        assert!(matches!(parse_header(&two[..40], true), Err(HeaderError::Malformed(_))));
        assert_eq!(parse_header(b"age-enc", false), Ok(None));
    }

    #[test]
    fn plaintext_and_other_stanzas_are_refused() {
        assert_eq!(parse_header(b"{\"card\": true}", true), Err(HeaderError::NotAge));
        assert_eq!(parse_header(b"", false), Ok(None));
        let scrypt = header("-> scrypt c2FsdHNhbHRzYWx0c2FsdA 18\nAAAA\n");
        let h = parse_header(&scrypt, true).unwrap().unwrap();
        assert_eq!(check_header(&h, 0), Err(HeaderError::OtherStanza("scrypt".into())));
        let bad_body = header("-> X25519 TEiF0ypqr+bpvcqXNyCVJpL7OuwPdVwPL7KQEbFDOCc\n%%%\n");
        assert!(matches!(parse_header(&bad_body, true), Err(HeaderError::Malformed(_))));
        let junk = b"age-encryption.org/v1\nhello\n";
        assert!(matches!(parse_header(junk, true), Err(HeaderError::Malformed(_))));
        let endless = [
            VERSION_LINE,
            "-> X25519 TEiF0ypqr+bpvcqXNyCVJpL7OuwPdVwPL7KQEbFDOCc\n".as_bytes(),
            &[b'A'; 64][..],
            b"\n",
        ]
        .concat()
        .into_iter()
        .chain(std::iter::repeat_n(b"A".repeat(64).into_iter().chain([b'\n']), 2000).flatten())
        .collect::<Vec<u8>>();
        assert_eq!(parse_header(&endless, false), Err(HeaderError::TooLong));
    }
}
