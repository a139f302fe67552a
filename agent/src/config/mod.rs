//! The agent's configuration file (TOML) and its environment overrides (`IMPRINT_AGENT_*`).
//! The key names are fixed by the issue that introduced the agent (add, don't rename); every
//! key is documented in `agent/README.md`. Unknown keys are refused with their line, so a typo
//! never silently turns a feature off.
//!
//! The files: this one holds the validated configuration the agent runs with; `parse`
//! reads a file (TOML, errors with their line), applies the environment overrides and
//! validates the top-level keys; `subscription` the `[[subscription]]` tables; `relay` the
//! `[relay]` table; `values` the value parsers they share (durations, owners, listen).

mod parse;
mod relay;
mod subscription;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod values;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: String,
    /// `servers` after the first: tried in order when the current one fails.
    pub fallback_servers: Vec<String>,
    pub token: Option<String>,
    pub state_dir: PathBuf,
    pub listen: Listen,
    pub failover_dir: Option<PathBuf>,
    pub snapshot_store: Option<String>,
    /// A copy of the server's keyring file: snapshot manifests of topics encrypted at rest
    /// are sealed, and open with it (docs/encryption.md, "At rest" → "Snapshots").
    pub snapshot_keyring: Option<PathBuf>,
    /// An age identity file: payloads of end-to-end encrypted topics are decrypted with it
    /// (docs/encryption.md); the files written are plaintext, mode 0600.
    pub identity_file: Option<PathBuf>,
    /// Set in the file; otherwise the id persisted in the state directory.
    pub instance: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub subscriptions: Vec<Subscription>,
    /// Relay mode (`[relay]`), if on.
    pub relay: Option<RelayConfig>,
}

/// Relay mode: the agent also serves `POST /api/v1/poll`, payload downloads,
/// `GET /api/v1/topics/{t}/latest` and the relay endpoints on its `listen` address.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The relay token (kind `relay`) it polls and reports upstream with.
    pub token: String,
    /// Distinct (labels, token) groups it carries upstream at most.
    pub max_groups: usize,
    /// Downstream long polls parked at once at most.
    pub max_polls: usize,
    /// How long the upstream relay poll is held (at most 60 s).
    pub wait: Duration,
}

pub const DEFAULT_RELAY_GROUPS: usize = 256;
pub const DEFAULT_RELAY_POLLS: usize = 20_000;

/// Where the local HTTP endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
    /// `listen = "off"`: files only.
    Off,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub topic: String,
    /// The file the payload is installed as (absent: served over HTTP only).
    pub path: Option<PathBuf>,
    /// Unix permission bits of the installed file (default 0644).
    pub mode: u32,
    /// Owner (uid, gid) of the installed file; `None` keeps the agent's.
    pub owner: Option<(Option<u32>, Option<u32>)>,
    pub check: Option<String>,
    pub reload: Option<String>,
    /// Bound of each of `check` and `reload`.
    pub timeout: Duration,
    /// Versions kept in the state directory besides the current one.
    pub keep: usize,
    /// `/readyz` waits for this subscription to hold a version.
    pub required: bool,
    /// Served on the AWS AppConfig Agent's path too: (application, environment, profile).
    pub appconfig: Option<(String, String, String)>,
    /// Render the (JSON) payload through this template into `path`.
    pub template: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_KEEP: usize = 100;

/// A config the agent refuses: the message names the key and, when known, the line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
