//! The `[relay]` table: relay mode's token (or token file), its bounds and its upstream
//! poll's hold.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::{bad, parse_duration};
use super::{ConfigError, Listen, RelayConfig, DEFAULT_RELAY_GROUPS, DEFAULT_RELAY_POLLS};

/// `[relay]`: serve the consumer API to downstream clients, agents and relays.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) max_groups: Option<usize>,
    pub(super) max_polls: Option<usize>,
    pub(super) wait: Option<String>,
}

/// `[relay]` validated (a relay serves on its listen address, so `listen` may not be off).
pub(super) fn validate(r: RawRelay, listen: &Listen) -> Result<RelayConfig, ConfigError> {
    let token = match (r.token, r.token_file) {
        (Some(_), Some(_)) => return Err(bad("relay.token_file", "give token or token_file, not both")),
        (Some(t), None) => t,
        (None, Some(f)) => std::fs::read_to_string(&f)
            .map_err(|e| bad("relay.token_file", format!("{}: {e}", f.display())))?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(bad(
                "relay.token",
                "missing: the relay token (kind relay) it polls upstream with, or relay.token_file",
            ))
        }
    };
    if token.is_empty() {
        return Err(bad("relay.token", "is empty"));
    }
    let max_groups = r.max_groups.unwrap_or(DEFAULT_RELAY_GROUPS);
    if max_groups == 0 || max_groups > imprint_protocol::MAX_RELAY_GROUPS {
        return Err(bad("relay.max_groups", format!("1 to {}", imprint_protocol::MAX_RELAY_GROUPS)));
    }
    let max_polls = r.max_polls.unwrap_or(DEFAULT_RELAY_POLLS);
    if max_polls == 0 || max_polls > 1_000_000 {
        return Err(bad("relay.max_polls", "1 to 1000000"));
    }
    let wait = match r.wait.as_deref() {
        None => Duration::from_secs(30),
        Some(w) => {
            let d = parse_duration("relay.wait", w)?;
            if d > Duration::from_secs(60) {
                return Err(bad("relay.wait", "at most 60s"));
            }
            d
        }
    };
    if matches!(listen, Listen::Off) {
        return Err(bad("listen", "a relay serves on its listen address: it cannot be off"));
    }
    Ok(RelayConfig { token, max_groups, max_polls, wait })
}
