//! The value parsers the tables share: a refusal naming its key, durations (bounded),
//! file owners (by name or number) and the listen address.

use std::time::Duration;

use super::{ConfigError, Listen, MAX_TIMEOUT};

pub(super) fn bad(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

/// `10s`, `1m30s`, `500ms` (humantime), bounded by [`MAX_TIMEOUT`].
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text)
        .map_err(|e| bad(key, format!("{text:?} is not a duration such as 10s: {e}")))?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(bad(key, format!("{text:?} must be more than 0 and at most 10m")));
    }
    Ok(d)
}

/// `user`, `user:group`, `:group`, by name (`/etc/passwd`, `/etc/group`) or number.
pub fn parse_owner(text: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let lookup = |name: &str, file: &str| -> Result<Option<u32>, String> {
        if name.is_empty() {
            return Ok(None);
        }
        if let Ok(n) = name.parse::<u32>() {
            return Ok(Some(n));
        }
        let table = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        table
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(2).and_then(|id| id.parse().ok()))
            .map(Some)
            .ok_or_else(|| {
                format!("no {} named {name:?} in {file}", if file.ends_with("group") { "group" } else { "user" })
            })
    };
    let owner = (lookup(user, "/etc/passwd")?, lookup(group.unwrap_or(""), "/etc/group")?);
    if owner == (None, None) {
        return Err(format!("{text:?} names no user or group"));
    }
    Ok(owner)
}

pub(super) fn parse_listen(text: &str) -> Result<Listen, ConfigError> {
    if text == "off" {
        return Ok(Listen::Off);
    }
    if let Some(p) = text.strip_prefix("unix:") {
        return Ok(Listen::Unix(p.into()));
    }
    text.parse().map(Listen::Tcp).map_err(|_| bad("listen", format!("{text:?} is not host:port, unix:/path or off")))
}
