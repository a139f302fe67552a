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

/// A keyset cursor over (rank, time, name): the row the next page starts after.
pub fn encode_key(rank: i32, at: chrono::DateTime<chrono::Utc>, name: &str) -> String {
    ENGINE.encode(format!("k{rank}.{}.{name}", at.timestamp_micros()))
}

/// A cursor of either form: `Ok(Err(offset))` for the offset form of `encode`,
/// `Ok(Ok((rank, time, name)))` for `encode_key`.
#[allow(clippy::type_complexity)]
pub fn decode_any(s: &str) -> Result<std::result::Result<(i32, chrono::DateTime<chrono::Utc>, String), i64>> {
    let bad = || Error::invalid("cursor is not one this server returned");
    let text = ENGINE.decode(s).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
    if let Some(k) = text.strip_prefix('k') {
        let mut parts = k.splitn(3, '.');
        let rank = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        let at = parts
            .next()
            .and_then(|t| t.parse().ok())
            .and_then(chrono::DateTime::from_timestamp_micros)
            .ok_or_else(bad)?;
        let name = parts.next().ok_or_else(bad)?.to_owned();
        return Ok(Ok((rank, at, name)));
    }
    decode(s).map(Err)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keyset_cursors_round_trip() {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time");
        let c = super::encode_key(2, at, "node.a.b");
        assert_eq!(super::decode_any(&c).expect("cursor"), Ok((2, at, "node.a.b".to_owned())));
        assert_eq!(super::decode_any(&super::encode(40)).expect("cursor"), Err(40));
        assert!(super::decode_any("???").is_err());
    }
}
