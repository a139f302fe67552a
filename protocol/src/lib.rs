//! The wire protocol, defined once: the JSON of `POST /api/v1/poll` (request, answer,
//! updates, applied reports), the snapshot manifest, the error body, the versions list and
//! the `data_url` format. The server, the Rust client and the CLI all use these types, so
//! changing a field breaks their builds rather than their behaviour. Answers tolerate
//! unknown fields (a server may add some); requests do not.
#![forbid(unsafe_code)]
use imprint_domain::Labels;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest a poll may be held open (`wait_ms`).
pub const MAX_WAIT_MS: u64 = 60_000;

/// Where one version's payload is downloaded from (relative to the server's base URL).
pub fn data_url(topic: &str, version: u64) -> String {
    format!("/api/v1/topics/{topic}/versions/{version}/data")
}

/// The topic and version a `data_url` names, when it is one of this server's (`None` for
/// anything else, e.g. a presigned URL to the store).
pub fn parse_data_url(url: &str) -> Option<(&str, u64)> {
    let rest = url.strip_prefix("/api/v1/topics/")?;
    let rest = rest.strip_suffix("/data")?;
    let (topic, version) = rest.split_once("/versions/")?;
    if topic.is_empty() || topic.contains('/') {
        return None;
    }
    let version: u64 = version.parse().ok()?;
    (version != 0).then_some((topic, version))
}

/// Who polls: its instance (one process or node) and its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub instance: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub labels: Labels,
}

/// The outcome of applying one version, reported on the next poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub version: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The region whose copy the client downloaded (one of the update's `data_urls`,
    /// docs/regions.md); absent for inline payloads, one region, or a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// The body of `POST /api/v1/poll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub consumer: Consumer,
    /// Each subscribed topic and the version held (`null`: none yet).
    pub topics: BTreeMap<String, Option<u64>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, Applied>,
    /// Hold the request up to this long (0-60000 ms) until an update exists.
    #[serde(default)]
    pub wait_ms: u64,
}

/// One update of a poll answer: the version a consumer should hold now. Readers default
/// the fields a server always sends (the document says they are required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Update {
    pub version: u64,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub pinned: bool,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    /// The payload, for small payloads (at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Where to download the payload (see [`data_url`]).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub data_url: String,
    /// Where each region's copy of the payload is, the consumer's own region first, then
    /// the server's preference order (docs/regions.md); `data_url` is the first of them.
    /// Absent with one region (and for inline payloads): use `data_url`. A client tries
    /// them in order, moving to the next on a connect error, a 5xx or a checksum mismatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_urls: Vec<DataUrl>,
}

/// One region's copy of a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataUrl {
    pub region: String,
    pub url: String,
}

impl Update {
    /// The URLs to download the payload from, in the order to try them (`data_urls`, or
    /// `data_url` alone as region `None`).
    pub fn download_urls(&self) -> Vec<(Option<&str>, &str)> {
        if self.data_urls.is_empty() {
            vec![(None, self.data_url.as_str())]
        } else {
            self.data_urls.iter().map(|d| (Some(d.region.as_str()), d.url.as_str())).collect()
        }
    }
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollResponse {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub updates: BTreeMap<String, Update>,
    /// Topics with nothing to give: `topic_not_found`, `no_version_in_scope`, `forbidden`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub missing: BTreeMap<String, String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub poll_after_ms: u64,
}

/// The error body of every failed API request: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `invalid_request`, `topic_not_found`, …
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Structured details, for the errors that have them (`validation_failed`: every
    /// check's result, `{"checks": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub details: Option<serde_json::Value>,
}

/// A snapshot manifest, `snapshots/<topic>.json` in the payload store (`format` 1):
/// what `*` (a node with no labels) resolves to. Exactly one of `data_base64` and
/// `object` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub topic: String,
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub published_at: chrono::DateTime<chrono::Utc>,
    pub written_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// The payload's key relative to the store's URL (`topics/<topic>/<n>/<sha256>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The object is stored sealed at rest (docs/encryption.md, "At rest"): its bytes are
    /// the sealed format and open with the topic's key; `size` and `sha256` are the
    /// plaintext's. Only ever set inside a `SealedManifest`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub object_sealed: bool,
}

/// The manifest format this crate reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// The manifest of a topic encrypted at rest, in place of a `Manifest` at
/// `snapshots/<topic>.json`: `sealed` is the base64 of the `Manifest`'s JSON in the sealed
/// format (a fresh data key wrapped by the topic's key; docs/encryption.md), so the store
/// never holds the payload, its metadata or its checksum in the clear. A node holding the
/// key (a copy of the keyring, or KMS access) opens it; an inline payload is inside it,
/// an object is named with `object_sealed` and is opened chunk by chunk as it streams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SealedManifest {
    pub format: u32,
    pub topic: String,
    /// The provider's key id the manifest's data key is wrapped by (also in the sealed
    /// header; here so a node can say which key it lacks).
    pub key: String,
    pub sealed: String,
}

/// `GET /api/v1/topics/{topic}/versions`, as consumers read it (the fields they use).
#[derive(Debug, Clone, Deserialize)]
pub struct VersionList {
    pub versions: Vec<VersionInfo>,
}

/// One version of the list.
#[derive(Debug, Clone, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub scopes: Vec<ScopeInfo>,
    #[serde(default)]
    pub purged: bool,
}

/// A scope of a version: the selector it was released to.
#[derive(Debug, Clone, Deserialize)]
pub struct ScopeInfo {
    #[serde(default)]
    pub selector: imprint_domain::Selector,
}

impl VersionInfo {
    /// Was this version ever released to a consumer with `labels` (one of its scopes
    /// matches them)? Pins are not considered.
    pub fn released_to(&self, labels: &Labels) -> bool {
        self.scopes.iter().any(|s| s.selector.matches(labels))
    }

    /// The update a consumer gets when it starts from this version (downloaded, never inline).
    pub fn into_update(self, topic: &str) -> Update {
        Update {
            data_url: data_url(topic, self.version),
            version: self.version,
            pinned: false,
            metadata: self.metadata,
            content_type: self.content_type,
            size: self.size,
            sha256: self.sha256,
            data_base64: None,
            data_urls: Vec::new(),
        }
    }
}

// ---- relays (docs/agent.md "Relay mode"): the batch poll and the batched reports ----

/// The most groups one relay poll carries, and the most topics over all of its groups.
pub const MAX_RELAY_GROUPS: usize = 1_000;
pub const MAX_RELAY_TOPICS: usize = 20_000;
/// The most reports one `POST /api/v1/relay/reports` carries.
pub const MAX_RELAY_REPORTS: usize = 5_000;

/// Who relays: the relay's own instance (shown as `relayed_by` in the consumer audit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RelayIdentity {
    pub instance: String,
}

/// What a relay holds for one topic of a group: the resolution the server last gave it
/// (`null` in the map: nothing yet, or the topic has nothing to give).
pub use imprint_domain::Resolution;

/// One group of a relay poll: downstream consumers with the same labels and the same
/// credential, resolved by the server exactly as one consumer with those would be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RelayGroup {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub labels: Labels,
    /// The bearer token the downstream consumers presented (as they presented it), or
    /// none: the group is authorized as that token, never as the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Each topic and the resolution the relay holds for it (`null`: none).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, Object>))]
    pub topics: BTreeMap<String, Option<Resolution>>,
}

/// The body of `POST /api/v1/relay/poll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RelayPollRequest {
    pub relay: RelayIdentity,
    pub groups: Vec<RelayGroup>,
    /// Hold the request up to this long (0-60000 ms) until some group has a change.
    #[serde(default)]
    pub wait_ms: u64,
}

/// One group's answer (same position as in the request): every topic whose resolution
/// differs from the one the relay holds (`updates`, with `pinned`), the topics with
/// nothing to give (`missing`), or why the group's credential was refused (`error`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayGroupAnswer {
    #[serde(default)]
    pub updates: BTreeMap<String, Update>,
    #[serde(default)]
    pub missing: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RelayError>,
}

/// A refused group or report: the status the downstream consumer would have got, with
/// the error's code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The answer to a relay poll.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayPollResponse {
    #[serde(default)]
    pub groups: Vec<RelayGroupAnswer>,
    #[serde(default)]
    pub poll_after_ms: u64,
}

/// One downstream consumer's report, as a relay forwards it: what its poll said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RelayReport {
    pub consumer: Consumer,
    /// The token the consumer polled with (it is authorized as that token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub topics: BTreeMap<String, Option<u64>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, Applied>,
    /// The relay the consumer polls (set by the first relay; a relay that forwards a
    /// downstream relay's batch keeps it). Absent: the caller's `relay.instance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
}

/// The body of `POST /api/v1/relay/reports`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RelayReports {
    pub relay: RelayIdentity,
    pub reports: Vec<RelayReport>,
}

/// What the server did with a batch of reports: how many topic reports it recorded, and
/// each refusal (the report's position, the topic if only that topic was refused).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayReportsAnswer {
    pub recorded: u64,
    #[serde(default)]
    pub refused: Vec<RelayRefusal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayRefusal {
    pub report: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub error: RelayError,
}

/// Where a relay downloads a version's payload for a group (`?labels=` the group's
/// labels, header [`DOWNSTREAM_TOKEN_HEADER`] its token): the server serves it only if the
/// group resolves to that version now.
pub fn relay_data_url(topic: &str, version: u64) -> String {
    format!("/api/v1/relay/topics/{topic}/versions/{version}/data")
}

/// The header carrying a group's downstream token on a relay's payload download.
pub const DOWNSTREAM_TOKEN_HEADER: &str = "x-imprint-downstream-token";

/// The token an `Authorization` value carries: `Bearer <token>` (or `bearer`), trimmed, not
/// empty. `None` for anything else. How every surface reads a token (HTTP API, gRPC
/// metadata, a relay's local endpoint).
pub fn bearer_token(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_one_way() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        for bad in ["Bearer", "Bearer   ", "Basic abc", "abc", "BEARER abc", ""] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn scopes_match_labels_like_selectors() {
        let v: VersionInfo = serde_json::from_str(
            r#"{"version": 3, "size": 1, "sha256": "ab", "scopes": [{"selector": {"region": "eu", "app": "a"}}],
                "extra": true}"#,
        )
        .expect("parses with unknown fields");
        let labels = |pairs: &[(&str, &str)]| Labels::from_pairs(pairs.iter().copied()).expect("valid labels");
        assert!(v.released_to(&labels(&[("region", "eu"), ("app", "a"), ("x", "y")])));
        assert!(!v.released_to(&labels(&[("region", "eu")])));
        let everyone: VersionInfo =
            serde_json::from_str(r#"{"version": 1, "size": 1, "sha256": "ab", "scopes": [{"selector": {}}]}"#)
                .expect("parses");
        assert!(everyone.released_to(&Labels::default()));
    }

    #[test]
    fn data_urls_are_built_and_read_back_one_way() {
        let url = data_url("payments.model", 7);
        assert_eq!(url, "/api/v1/topics/payments.model/versions/7/data");
        assert_eq!(parse_data_url(&url), Some(("payments.model", 7)));
        assert_eq!(parse_data_url("/api/v1/topics/t/versions/0/data"), None);
        assert_eq!(parse_data_url("https://s3.example/x"), None);
    }

    #[test]
    fn a_poll_request_round_trips_and_refuses_unknown_fields() {
        let json = r#"{"consumer":{"instance":"n1","labels":{"region":"eu"}},"topics":{"a":null,"b":3},
            "applied":{"b":{"version":3,"ok":false,"error":"bad"}},"wait_ms":100}"#;
        let req: PollRequest = serde_json::from_str(json).expect("parses");
        let again: PollRequest =
            serde_json::from_str(&serde_json::to_string(&req).expect("serialises")).expect("parses");
        assert_eq!(req, again);
        assert!(serde_json::from_str::<PollRequest>(r#"{"consumer":{"instance":"n"},"topics":{},"x":1}"#).is_err());
    }
}
