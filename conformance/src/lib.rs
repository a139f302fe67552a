//! The conformance suite's shared vocabulary: the adapter protocol's wire types (what the
//! harness posts to a per-language adapter and what it reads back) and the scenario format
//! (`scenarios/*.toml`). See `conformance/README.md` for both written down.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod adapter {
    //! The adapter protocol: `GET /`, `POST /clients`, `GET /clients/{id}/topics/{t}`,
    //! `POST /clients/{id}/shutdown`, `DELETE /clients/{id}`, `POST /cache/corrupt`.
    use super::*;

    /// `GET /`: who the adapter is and what it can do (scenarios that need a capability
    /// the adapter lacks are skipped and listed as such).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Capabilities {
        pub name: String,
        pub capabilities: Vec<String>,
    }

    /// `POST /clients`: build a client and subscribe it to `topics`; answers `{"id"}` once
    /// every `subscribe` has returned (each waits at most `initial_wait_ms`).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NewClient {
        pub url: String,
        #[serde(default)]
        pub token: Option<String>,
        pub instance: String,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub cache_dir: Option<String>,
        #[serde(default)]
        pub snapshot_store: Option<String>,
        /// A copy of the server's keyring file (capability `sealed_snapshots`): snapshot
        /// manifests of topics encrypted at rest open with it. Absent unless given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub snapshot_keyring: Option<String>,
        pub topics: Vec<TopicSpec>,
        #[serde(default)]
        pub settings: Settings,
    }

    /// One subscription: the decoder kind decides what `value` reads back as.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TopicSpec {
        pub name: String,
        pub decoder: Decoder,
        /// `json` only: the default value (else `null`).
        #[serde(default)]
        pub default: Option<Value>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Decoder {
        /// The payload parsed as JSON; a payload that is not JSON fails to apply. Value: the JSON.
        Json,
        /// The raw bytes. Value: the bytes as UTF-8 text (lossy); default `""`.
        Bytes,
        /// The payload as a file on disk. Value: `{"size", "sha256"}` of the file; default `null`.
        File,
    }

    /// Timings the harness shortens so the suite runs in seconds (all optional: the
    /// client's own default otherwise).
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Settings {
        pub long_poll_ms: Option<u64>,
        pub initial_wait_ms: Option<u64>,
        pub request_timeout_ms: Option<u64>,
        pub backoff_min_ms: Option<u64>,
        pub backoff_max_ms: Option<u64>,
        pub startup_fallback: Option<usize>,
        pub recheck_rejected_ms: Option<u64>,
    }

    /// `GET /clients/{id}/topics/{t}`: what `get()` and friends say now.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Observed {
        pub value: Value,
        pub version: Option<u64>,
        /// `server`, `cache`, `snapshot` or `default`.
        pub source: String,
        pub pinned: bool,
        /// Capability `listener`: how many times the change listener (registered right
        /// after `subscribe` returned) was called.
        #[serde(default)]
        pub changes: u64,
        /// Capability `listener`: the value the listener received last (`null`: none yet).
        #[serde(default)]
        pub last_change: Value,
        /// Capability `regions`: the region whose copy of the held version the client
        /// downloaded (`null`: none, e.g. an inline payload or one region).
        #[serde(default)]
        pub served_region: Option<String>,
    }

    /// The body of every failure answer: `{"error": "<message>"}`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Failure {
        pub error: String,
    }

    /// `POST /cache/corrupt`: spoil the cached payload of `topic` in `cache_dir` (the
    /// adapter knows its client's cache layout), keeping the recorded checksum.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CorruptCache {
        pub cache_dir: String,
        pub topic: String,
    }
}

/// One scenario file: what the server is set up with, what clients are told to do, and
/// what must be observed, as an ordered list of steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The file name without `.toml` (filled in by `load`).
    #[serde(skip)]
    pub name: String,
    /// Each step as written (`do = "expect", client = "a", …`), for failure messages
    /// (filled in by `load`).
    #[serde(skip)]
    pub step_texts: Vec<String>,
    pub description: String,
    /// Capabilities the adapter must offer (`GET /`), else the scenario is skipped.
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub server: ServerSetup,
    /// Per adapter name: why this scenario is expected to fail for it (it is run, and
    /// reported as known-failing, or as fixed if it passes).
    #[serde(default)]
    pub known_failing: BTreeMap<String, String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSetup {
    /// A local object store with snapshots written only by the `snapshot_pass` step.
    #[serde(default)]
    pub snapshots: bool,
    /// Two regions, `eu` (the home) and `us`, each an S3 server of its own (a moto
    /// process the harness starts; docs/regions.md): payloads past the inline limit are in
    /// both before a version commits. Needs `IMPRINT_TEST_MOTO_SERVER`.
    #[serde(default)]
    pub regions: bool,
    /// With `regions`: per-region public base URLs (`IMPRINT_REGION_URLS`, docs/regions.md):
    /// us's servers are a second server on the same database and stores, eu's an address
    /// nothing listens on, so `data_urls` are absolute and eu's refuses the connection.
    #[serde(default)]
    pub region_urls: bool,
    /// A keyring with the key `conformance` (docs/encryption.md, "At rest"): topics may be
    /// encrypted at rest (`create_topic` `at_rest = true`: payloads and snapshot manifests
    /// sealed), and clients may get a copy of it (`client.snapshot_keyring = true`).
    #[serde(default)]
    pub keyring: bool,
}

/// A payload to publish: text, or `size` deterministic bytes from `seed`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub size: Option<usize>,
    #[serde(default)]
    pub seed: Option<u8>,
}

/// Which requests through the fault proxy a count or a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// `POST /api/v1/poll`
    Poll,
    /// `GET …/versions/{n}/data`
    Data,
    /// Anything else (`GET …/versions` for the start-up fallback…).
    Other,
    /// Every request.
    Any,
}

/// What the fault proxy does to what passes through it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Forward everything unchanged.
    Pass,
    /// Close every new connection at once and answer requests on open ones with a reset
    /// (the server looks unreachable).
    Down,
    /// Answer the next `count` requests of `kind` with `status` (and `Retry-After` when given).
    Status { status: u16, kind: RequestKind, count: u32, retry_after_s: Option<u32> },
    /// Hang up on the next `count` requests of `kind` without an answer (the connection
    /// breaks after the status line, before any body: a reset as the client sees it).
    Reset { kind: RequestKind, count: u32 },
    /// Flip bytes in the body of the next `count` payload downloads (size unchanged).
    Corrupt { count: u32 },
    /// Flip a byte of every inline payload (`data_base64`) in the next `count` poll answers
    /// that carry one (size unchanged): the client must download it from `data_url` instead.
    CorruptInline { count: u32 },
    /// Cut the next `count` payload downloads off after half their body.
    Truncate { count: u32 },
    /// Never answer the next `count` requests of `kind` (the server hangs; the proxy gives
    /// up after 5 minutes with a 504): only the client's own time bound gets it out.
    Hang { kind: RequestKind, count: u32 },
    /// Rewrite `poll_after_ms` to `ms` in the next `count` successful poll answers (as a
    /// server at its long-poll capacity would answer).
    PollAfter { ms: u64, count: u32 },
    /// Delay every answer by `ms`.
    Delay { ms: u64 },
}

/// One step. Server steps change the server; client steps drive the adapter;
/// `expect_*` steps wait (up to the harness's hang guard) until they hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    CreateTopic {
        topic: String,
        #[serde(default)]
        inline_limit_bytes: Option<u64>,
        /// Only tokens of its team or naming it may read it.
        #[serde(default)]
        restricted: Option<bool>,
        /// Encrypted at rest under the key `conformance` (needs `server.keyring`).
        #[serde(default)]
        at_rest: Option<bool>,
    },
    /// A payload: `data` (text), or `size` deterministic bytes from `seed`.
    Publish {
        topic: String,
        #[serde(default)]
        data: Option<String>,
        #[serde(default)]
        size: Option<usize>,
        #[serde(default)]
        seed: Option<u8>,
        /// Selectors (`"region=eu"`; `"*"` for everyone) the version is released to; default everyone.
        #[serde(default)]
        scopes: Option<Vec<String>>,
    },
    AddScope {
        topic: String,
        version: u64,
        selector: String,
    },
    Pin {
        topic: String,
        selector: String,
        version: u64,
    },
    Unpin {
        topic: String,
        selector: String,
    },
    /// A consumer token `name`, optionally bound to labels (`"region=eu"`) and topics.
    ConsumerToken {
        name: String,
        #[serde(default)]
        labels: Option<String>,
        /// The (scenario-local) topics it may read; default all.
        #[serde(default)]
        topics: Option<Vec<String>>,
    },
    /// Writes the object-store snapshots now (`server.snapshots = true`).
    SnapshotPass,
    /// Shuts the server down (graceful, as SIGTERM); the proxy then finds nothing behind it.
    ServerStop,
    /// Starts the server again on the same database (the proxy follows it).
    ServerStart,
    /// `server.regions`: stops the S3 server of `region` (`eu` or `us`): that region is down.
    RegionStop {
        region: String,
    },
    /// `server.regions`: spoils every stored copy of `topic` in `region` (bytes flipped,
    /// size kept), so a client must notice by its SHA-256.
    CorruptRegion {
        region: String,
        topic: String,
    },
    /// The fault proxy's new fault (`mode = …` and its fields).
    Proxy(Fault),
    /// Zeroes the proxy's request counters.
    ResetCounts,
    /// Starts client `id` through the proxy.
    Client(ClientStep),
    /// Subscribes running client `client` to one more topic (capability `subscribe`);
    /// with `max_ms`, the subscribe must return within that long.
    Subscribe {
        client: String,
        topic: String,
        decoder: adapter::Decoder,
        #[serde(default)]
        default: Option<Value>,
        #[serde(default)]
        max_ms: Option<u64>,
    },
    /// Spoils `topic`'s cached payload in cache `cache` (through the adapter).
    CorruptCache {
        cache: String,
        topic: String,
    },
    /// `POST /clients/{id}/shutdown`; with `max_ms`, it must return within that long.
    Shutdown {
        client: String,
        #[serde(default)]
        max_ms: Option<u64>,
    },
    Drop {
        client: String,
    },
    Sleep {
        ms: u64,
    },
    /// Eventually `client`'s subscription to `topic` shows all that is given.
    Expect(Expectation),
    /// `client`'s subscription to `topic` shows all that is given now and for `ms` more.
    ExpectStays(Expectation),
    /// Eventually the consumer audit of `topic` has a row for `instance` with all that is given.
    ExpectAudit {
        topic: String,
        instance: String,
        #[serde(default)]
        version: Option<u64>,
        #[serde(default)]
        expected_version: Option<u64>,
        /// `true`: `last_error` is null; `false`: it is set.
        #[serde(default)]
        ok: Option<bool>,
        #[serde(default)]
        error_contains: Option<String>,
        /// The labels the row shows (`"region=eu,app=x"`; `""` for none).
        #[serde(default)]
        labels: Option<String>,
        /// The region the row says served the instance's download (`served_region`).
        #[serde(default)]
        served_region: Option<String>,
    },
    /// `topic`'s consumer audit has no row for `instance` (checked after the audit's flush).
    ExpectNoAudit {
        topic: String,
        instance: String,
    },
    /// The proxy counted between `min` and `max` requests of `kind` since the last reset.
    ExpectRequests {
        kind: RequestKind,
        #[serde(default)]
        min: Option<u64>,
        #[serde(default)]
        max: Option<u64>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientStep {
    pub id: String,
    pub instance: String,
    /// `"region=eu,app=x"`
    #[serde(default)]
    pub labels: Option<String>,
    /// The name of a `consumer_token` step's token, or any other text as a token the
    /// server never issued.
    #[serde(default)]
    pub token: Option<String>,
    /// A cache directory name: clients given the same name share the directory.
    #[serde(default)]
    pub cache: Option<String>,
    /// Read the server's object-store snapshots when the server is unreachable.
    #[serde(default)]
    pub snapshot: bool,
    /// Give the client a copy of the server's keyring for sealed snapshots (needs
    /// `server.keyring` and `snapshot`; capability `sealed_snapshots`).
    #[serde(default)]
    pub snapshot_keyring: bool,
    pub topics: Vec<ClientTopic>,
    #[serde(default)]
    pub settings: adapter::Settings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTopic {
    pub topic: String,
    pub decoder: adapter::Decoder,
    #[serde(default)]
    pub default: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub client: String,
    pub topic: String,
    #[serde(default)]
    pub value: Option<Value>,
    /// `file` decoder: the value is the file of `size` bytes from `seed`.
    #[serde(default)]
    pub file: Option<Payload>,
    /// A version number, or `"none"` for no version held.
    #[serde(default)]
    pub version: Option<VersionExpect>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub pinned: Option<bool>,
    /// Capability `listener`: the value the change listener received last.
    #[serde(default)]
    pub last_change: Option<Value>,
    /// Capability `listener`: how many times the change listener was called.
    #[serde(default)]
    pub changes: Option<u64>,
    /// Capability `regions`: the region whose copy the client says it downloaded.
    #[serde(default)]
    pub served_region: Option<String>,
    /// `expect_stays` only (and required there): for how long it must hold.
    #[serde(default)]
    pub ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum VersionExpect {
    Number(u64),
    None(NoVersion),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoVersion {
    None,
}

impl VersionExpect {
    pub fn matches(self, got: Option<u64>) -> bool {
        match self {
            VersionExpect::Number(n) => got == Some(n),
            VersionExpect::None(_) => got.is_none(),
        }
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every `*.toml` in `dir`, parsed, sorted by name; a file that does not parse is an error
/// naming it.
pub fn load(dir: &Path) -> Result<Vec<Scenario>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut s: Scenario = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            s.name = p.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let raw: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            s.step_texts = match raw.get("steps") {
                Some(toml::Value::Array(steps)) => steps.iter().map(step_text).collect(),
                _ => Vec::new(),
            };
            Ok(s)
        })
        .collect()
}

/// `do = "expect", client = "a", value = 1`: one step as written, `do` first.
fn step_text(step: &toml::Value) -> String {
    let Some(table) = step.as_table() else { return step.to_string() };
    let mut parts: Vec<String> = table.get("do").map(|d| format!("do = {d}")).into_iter().collect();
    parts.extend(table.iter().filter(|(k, _)| *k != "do").map(|(k, v)| format!("{k} = {v}")));
    let text = parts.join(", ");
    if text.chars().count() > 240 {
        format!("{}…", text.chars().take(240).collect::<String>())
    } else {
        text
    }
}

impl Scenario {
    /// Step `i` as written in the file (or as parsed, if that is not at hand).
    pub fn step_label(&self, i: usize) -> String {
        self.step_texts.get(i).cloned().or_else(|| self.steps.get(i).map(Step::label)).unwrap_or_default()
    }
}

impl Step {
    /// A short name for failure messages.
    pub fn label(&self) -> String {
        let dbg = format!("{self:?}");
        dbg.chars().take(160).collect()
    }
}
