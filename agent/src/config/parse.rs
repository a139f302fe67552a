//! Reading a config: the file's text as written (TOML; an unknown key or a bad value is
//! refused with its line), the `IMPRINT_AGENT_*` overrides, then validation — the top-level
//! keys here, the `[[subscription]]` and `[relay]` tables in their own files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::relay::{self, RawRelay};
use super::subscription::{self, RawSubscription};
use super::values::{bad, parse_listen};
use super::{Config, ConfigError, DEFAULT_LISTEN};

/// What a config file says, as written (durations and modes still text).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<String>,
    #[serde(default)]
    servers: Vec<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    failover_dir: Option<PathBuf>,
    snapshot_store: Option<String>,
    snapshot_keyring: Option<PathBuf>,
    identity_file: Option<PathBuf>,
    instance: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "subscription")]
    subscriptions: Vec<RawSubscription>,
    relay: Option<RawRelay>,
}

impl Config {
    /// Reads `path`, then applies `IMPRINT_AGENT_*` overrides from `env`.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read the config {}: {e}", path.display())))?;
        Self::parse(&text, env).map_err(|ConfigError(m)| ConfigError(format!("{}: {m}", path.display())))
    }

    /// Parses a config text; `env` looks up the overrides (`IMPRINT_AGENT_SERVER`,
    /// `IMPRINT_AGENT_TOKEN`, `IMPRINT_AGENT_TOKEN_FILE`, `IMPRINT_AGENT_STATE_DIR`,
    /// `IMPRINT_AGENT_LISTEN`, `IMPRINT_AGENT_INSTANCE`).
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let what = e.message().trim().to_owned();
            ConfigError(match line {
                Some(l) => format!("line {l}: {what}"),
                None => what,
            })
        })?;
        if let Some(v) = env("IMPRINT_AGENT_SERVER") {
            raw.server = Some(v);
            raw.servers.clear();
        }
        if let Some(v) = env("IMPRINT_AGENT_TOKEN") {
            raw.token = Some(v);
            raw.token_file = None;
        }
        if let Some(v) = env("IMPRINT_AGENT_TOKEN_FILE") {
            raw.token_file = Some(v.into());
            raw.token = None;
        }
        if let Some(v) = env("IMPRINT_AGENT_STATE_DIR") {
            raw.state_dir = Some(v.into());
        }
        if let Some(v) = env("IMPRINT_AGENT_LISTEN") {
            raw.listen = Some(v);
        }
        if let Some(v) = env("IMPRINT_AGENT_SNAPSHOT_KEYRING") {
            raw.snapshot_keyring = Some(v.into());
        }
        if let Some(v) = env("IMPRINT_AGENT_IDENTITY_FILE") {
            raw.identity_file = Some(v.into());
        }
        if let Some(v) = env("IMPRINT_AGENT_INSTANCE") {
            raw.instance = Some(v);
        }
        if let Some(v) = env("IMPRINT_AGENT_RELAY_TOKEN") {
            let r = raw.relay.get_or_insert(RawRelay {
                token: None,
                token_file: None,
                max_groups: None,
                max_polls: None,
                wait: None,
            });
            r.token = Some(v);
            r.token_file = None;
        }
        raw.validate()
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let (server, fallback_servers) = match (self.server, self.servers) {
            (Some(_), v) if !v.is_empty() => return Err(bad("servers", "give server or servers, not both")),
            (Some(s), _) => (s, Vec::new()),
            (None, v) if v.is_empty() => {
                return Err(bad("server", "missing: the Imprint server's URL, e.g. \"http://imprint:3000\""))
            }
            (None, mut v) => {
                if v.len() > 16 {
                    return Err(bad("servers", "at most 16"));
                }
                let first = v.remove(0);
                (first, v)
            }
        };
        for s in std::iter::once(&server).chain(&fallback_servers) {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(bad("server", format!("{s:?} is not an http:// or https:// URL")));
            }
        }
        let token = match (self.token, self.token_file) {
            (Some(_), Some(_)) => return Err(bad("token_file", "give token or token_file, not both")),
            (Some(t), None) => Some(t),
            (None, Some(f)) => {
                let t = std::fs::read_to_string(&f).map_err(|e| bad("token_file", format!("{}: {e}", f.display())))?;
                Some(t.trim().to_owned())
            }
            (None, None) => None,
        };
        if token.as_deref().is_some_and(str::is_empty) {
            return Err(bad("token", "is empty"));
        }
        let state_dir =
            self.state_dir.ok_or_else(|| bad("state_dir", "missing: where the agent keeps versions and its id"))?;
        let listen = parse_listen(self.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        imprint_domain::Labels::from_pairs(self.labels.clone()).map_err(|e| bad("labels", e))?;
        if let Some(i) = &self.instance {
            if i.is_empty() || i.len() > 200 || i.chars().any(char::is_control) {
                return Err(bad("instance", "must be 1 to 200 printable characters"));
            }
        }
        if self.snapshot_keyring.is_some() && self.snapshot_store.is_none() {
            return Err(bad("snapshot_keyring", "opens sealed snapshots: give snapshot_store too"));
        }
        let subscriptions = subscription::validate_all(self.subscriptions)?;
        let relay = match self.relay {
            None => None,
            Some(r) => Some(relay::validate(r, &listen)?),
        };
        if subscriptions.is_empty() && relay.is_none() {
            return Err(bad("subscription", "missing: at least one [[subscription]] with a topic (or [relay])"));
        }
        Ok(Config {
            server,
            fallback_servers,
            token,
            state_dir,
            listen,
            failover_dir: self.failover_dir,
            snapshot_store: self.snapshot_store,
            snapshot_keyring: self.snapshot_keyring,
            identity_file: self.identity_file,
            instance: self.instance,
            labels: self.labels,
            subscriptions,
            relay,
        })
    }
}
