//! The JSON of `POST /api/v1/poll` and of the versions list, as this client sends and
//! reads it (API.md). Unknown fields in answers are ignored: the server may add fields.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub(crate) struct PollRequest {
    pub consumer: Consumer,
    /// Each topic asked about and the version held (`None`: none yet).
    pub topics: BTreeMap<String, Option<u64>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, AppliedReport>,
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Consumer {
    pub instance: String,
    pub labels: BTreeMap<String, String>,
}

/// The outcome of applying one version, reported on the next poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct AppliedReport {
    pub version: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PollResponse {
    #[serde(default)]
    pub updates: BTreeMap<String, Update>,
    #[serde(default)]
    pub missing: BTreeMap<String, String>,
    #[serde(default)]
    pub poll_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Update {
    pub version: u64,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub data_base64: Option<String>,
    #[serde(default)]
    pub data_url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct VersionList {
    pub versions: Vec<VersionInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct VersionInfo {
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

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ScopeInfo {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

impl VersionInfo {
    /// Was this version ever released to a consumer with `labels` (one of its scopes
    /// matches them)? Pins are not considered.
    pub fn released_to(&self, labels: &BTreeMap<String, String>) -> bool {
        self.scopes.iter().any(|s| s.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    pub fn into_update(self, topic: &str) -> Update {
        Update {
            version: self.version,
            pinned: false,
            metadata: self.metadata,
            content_type: self.content_type,
            size: self.size,
            sha256: self.sha256,
            data_base64: None,
            data_url: Some(format!("/api/v1/topics/{topic}/versions/{}/data", self.version)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_match_labels_like_selectors() {
        let v: VersionInfo = serde_json::from_str(
            r#"{"version": 3, "size": 1, "sha256": "ab", "scopes": [{"selector": {"region": "eu", "app": "a"}}],
                "extra": true}"#,
        )
        .expect("parses with unknown fields");
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(v.released_to(&labels(&[("region", "eu"), ("app", "a"), ("x", "y")])));
        assert!(!v.released_to(&labels(&[("region", "eu")])));
        let everyone: VersionInfo =
            serde_json::from_str(r#"{"version": 1, "size": 1, "sha256": "ab", "scopes": [{"selector": {}}]}"#)
                .expect("parses");
        assert!(everyone.released_to(&BTreeMap::new()));
    }
}
