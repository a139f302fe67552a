//! Opaque cursors for newest-first lists: the key the next page starts below.
use crate::error::{Error, Result};
use base64::Engine;

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub fn encode(n: i64) -> String {
    ENGINE.encode(format!("c{n}"))
}

pub fn decode(s: &str) -> Result<i64> {
    ENGINE
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix('c').and_then(|n| n.parse().ok()))
        .ok_or_else(|| Error::invalid("cursor is not one this server returned"))
}

/// A page size: 1-500, 50 when not given.
pub fn limit(l: Option<u32>) -> Result<i64> {
    match l {
        None => Ok(50),
        Some(l @ 1..=500) => Ok(i64::from(l)),
        Some(l) => Err(Error::invalid(format!("limit must be between 1 and 500, not {l}"))),
    }
}
