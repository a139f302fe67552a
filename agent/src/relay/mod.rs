//! Relay mode (docs/agent.md "Relay mode"): the agent serves the consumer half of the
//! server's API to downstream clients, agents and relays — `POST /api/v1/poll`, the payload
//! downloads its answers' `data_url`s name, `GET /api/v1/topics/{t}/latest`, and
//! `POST /api/v1/relay/poll` / `/relay/reports` / the relay payload download for relays
//! below it — answering from its own state.
//!
//! Resolution and authorization stay the server's. Downstream consumers are kept in
//! *groups*, one per distinct (labels, bearer token); ONE upstream relay poll carries every
//! group, and the server resolves each as a consumer with those labels and that token
//! would be. A group holds, per topic, the exact resolution the server gave (version and
//! whether a pin chose it) and the verified payload in `state_dir/relay/`; a downstream
//! poll is answered from its group with the same update rule as the server's
//! (`imprint_domain::is_update`). Parked downstream polls wake when their group changes.
//! Downstream reports are batched upstream every second (each consumer under its own
//! instance, labels and token, marked `relayed_by` this relay). A relay below this one
//! folds its groups into these, so relays chain.
//!
//! The files: this one holds the relay's state (its groups, the served payloads, the
//! counters) and its limits; `routes` the router, `start` and `/relay/status`; `groups`
//! joining a group and answering from it; `upstream` the one upstream relay poll and how an
//! answer is applied; `payloads` fetching and verifying a payload and serving it (ETag,
//! Range); `downstream` the consumer endpoints (poll with parking, latest, data); `below`
//! the endpoints a relay below calls (relay poll, relay data); `reports` the report queue
//! and its upstream batches; `request` what a request carries and the error answers.

mod below;
mod downstream;
mod groups;
mod payloads;
mod reports;
mod request;
mod routes;
mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imprint_domain::{Labels, Resolution};
use imprint_protocol::{RelayError, RelayReport, Update};
use tokio::sync::{watch, Notify, Semaphore};

use crate::config::RelayConfig;

/// Largest downstream poll body (as the server's) and relay poll / report batch.
pub const MAX_POLL_BODY: usize = 256 * 1024;
pub const MAX_RELAY_BODY: usize = 4 * 1024 * 1024;
/// Topics one downstream poll names at most (as the server).
pub const MAX_TOPICS_PER_POLL: usize = 2_000;
/// How long a downstream request waits for its group's first answer from upstream.
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// A group's refusal (a bad token, labels a token may not claim) is kept this long, then
/// asked again.
pub const REFUSAL_KEPT: Duration = Duration::from_secs(10);
/// A group no downstream request used for this long is dropped.
pub const GROUP_IDLE: Duration = Duration::from_secs(600);
/// Downstream reports waiting to go upstream at most (beyond: dropped, counted).
pub const MAX_QUEUED_REPORTS: usize = 100_000;
/// Bound of one upstream payload download, and of its pause between two chunks.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

type Key = (Labels, Option<String>);

/// A version as this relay serves it: the server's update and the verified payload file.
#[derive(Debug)]
struct Served {
    update: Update,
    file: PathBuf,
}

#[derive(Debug, Clone)]
enum State_ {
    /// Not answered by upstream yet.
    Pending,
    Serving(Arc<Served>),
    Missing(String),
}

#[derive(Debug)]
struct TopicEntry {
    /// The resolution upstream gave (sent back as what this relay holds).
    known: Option<Resolution>,
    state: State_,
}

struct Group {
    topics: BTreeMap<String, TopicEntry>,
    refused: Option<(RelayError, Instant)>,
    last_used: Instant,
    /// Bumped on every change of this group's answers.
    seq: watch::Sender<u64>,
}

impl Group {
    fn new() -> Self {
        Group { topics: BTreeMap::new(), refused: None, last_used: Instant::now(), seq: watch::channel(0).0 }
    }

    fn bump(&self) {
        self.seq.send_modify(|n| *n += 1);
    }
}

/// What `/relay/status` tells (tests and operators read it).
#[derive(Default)]
struct Stats {
    upstream_polls: AtomicU64,
    upstream_open: AtomicU64,
    upstream_errors: AtomicU64,
    downstream_polls: AtomicU64,
    parked: AtomicU64,
    reports_sent: AtomicU64,
    report_batches: AtomicU64,
    reports_dropped: AtomicU64,
    downloads: AtomicU64,
}

pub struct Relay {
    /// `server`, then the `servers` after it: the one in use is `current`; a failed upstream
    /// poll moves to the next.
    upstreams: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    token: String,
    instance: String,
    config: RelayConfig,
    dir: PathBuf,
    http: reqwest::Client,
    groups: Mutex<HashMap<Key, Group>>,
    /// Groups or topics were added: the upstream poll is sent again with them.
    regroup: Notify,
    /// Bumped whenever any group changes (relay polls from below wait on it).
    any: watch::Sender<u64>,
    reports: Mutex<HashMap<String, RelayReport>>,
    parked: Arc<Semaphore>,
    stats: Stats,
    stop: watch::Receiver<bool>,
}

impl Relay {
    pub fn new(
        upstreams: &[String],
        instance: &str,
        config: RelayConfig,
        state_dir: &Path,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, String> {
        let dir = state_dir.join("relay");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("relay HTTP client: {e}"))?;
        Ok(Arc::new(Relay {
            upstreams: upstreams.iter().map(|u| u.trim_end_matches('/').to_owned()).collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
            token: config.token.clone(),
            instance: instance.to_owned(),
            parked: Arc::new(Semaphore::new(config.max_polls)),
            config,
            dir,
            http,
            groups: Mutex::new(HashMap::new()),
            regroup: Notify::new(),
            any: watch::channel(0).0,
            reports: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            stop,
        }))
    }

    /// The upstream in use.
    fn upstream(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.upstreams.len().max(1);
        self.upstreams.get(i).map_or("", String::as_str)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Group>> {
        self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
