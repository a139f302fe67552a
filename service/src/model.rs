//! The shapes operations return: they serialise to the JSON of docs/api.md as they are.
use chrono::{DateTime, Utc};
use imprint_domain::{Plan, RolloutView, Selector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep at most this many newest versions.
    pub max_versions: Option<u32>,
    /// Keep versions younger than this many days.
    pub max_age_days: Option<u32>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Topic {
    pub name: String,
    pub description: String,
    pub owner: String,
    pub retention: Retention,
    pub inline_limit_bytes: u64,
    /// Larger payloads are refused (413).
    pub max_size_bytes: u64,
    pub content_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<serde_json::Value>,
    /// Highest committed version number (0: nothing published yet).
    pub latest_version: u64,
    pub last_published_at: Option<DateTime<Utc>>,
    pub active_pins: u64,
    /// State of the newest rollout, if any.
    pub rollout_state: Option<String>,
    /// Named rollout plans.
    #[schema(value_type = Object)]
    pub plans: BTreeMap<String, imprint_domain::Plan>,
    /// The plan a publish uses when it names none.
    pub default_plan: Option<String>,
    /// Consumers recorded by the audit (not yet expired).
    pub consumers: u64,
    /// When a consumer last polled this topic (to the minute); null: never.
    pub last_polled_at: Option<DateTime<Utc>>,
    /// Read and polled only with a token (or by a user) allowed on it.
    pub restricted: bool,
    /// Health gates count reports of anonymous consumers too.
    pub anonymous_reports: bool,
    /// Unchanged Apollo clients read this topic as this app's namespace (under `/apollo`).
    pub apollo: Option<ApolloBinding>,
    /// OpenFeature (OFREP) providers evaluate this topic as a flag (under `/ofrep/v1`).
    pub ofrep: Option<OfrepBinding>,
    /// Unchanged Spring Cloud Config clients read this topic as a property source of this
    /// application (and profile) under `/spring`.
    pub spring: Option<SpringBinding>,
    /// End-to-end encryption (docs/encryption.md): payloads are age files for these recipients.
    pub encryption: Option<Encryption>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    /// Pre-release checks, in order (docs/validation.md); an external validator's
    /// secret is shown as `********`.
    #[schema(value_type = Vec<Object>)]
    pub checks: Vec<imprint_domain::checks::Check>,
    /// What a failing rollout gate does: `pause` (the default) or `rollback`.
    #[schema(value_type = String)]
    pub on_failure: imprint_domain::checks::OnFailure,
    /// A publish the checks reject is kept unreleased, marked rejected (docs/validation.md).
    pub keep_rejected: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Scope {
    #[schema(value_type = Object)]
    pub selector: Selector,
    pub added_at: DateTime<Utc>,
    pub added_by: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Version {
    pub topic: String,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
    pub message: String,
    /// `inline` (bytes in Postgres) or `object` (object store).
    pub storage: String,
    /// Where an object payload lives (`s3://…`, `file:///…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_url: Option<String>,
    /// The object was registered (published as a pointer): Imprint never deletes it.
    pub object_registered: bool,
    /// The stored payload is sealed at rest (docs/encryption.md); `size` and `sha256` are
    /// the plaintext's.
    pub sealed: bool,
    pub scopes: Vec<Scope>,
    pub purged: bool,
    pub purged_at: Option<DateTime<Utc>>,
    /// Its pre-release check results, when the topic had checks (docs/validation.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<VersionChecks>,
    /// Rejected by the topic's checks and kept unreleased (`keep_rejected`): why. Such a
    /// version is never released, pinned, rolled out, served or downloaded. `null`: not rejected.
    pub rejected: Option<Rejection>,
}

/// Why a kept version was rejected: each `reject` check that failed, as `type: message`
/// (the whole results are in `checks`).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct Rejection {
    pub reasons: Vec<String>,
}

/// Every pre-release check's result of a version, and who overrode a rejection.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, ToSchema)]
pub struct VersionChecks {
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<imprint_domain::checks::CheckResult>,
    /// A rejecting result was overridden (`force`) by this caller…
    pub forced_by: Option<String>,
    /// …for this reason.
    pub force_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Published {
    pub topic: String,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub scopes: Vec<Scope>,
    pub storage: String,
    /// The rollout this publish started, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutInfo>,
    /// The pre-release check results, when the topic has checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<VersionChecks>,
    /// The failed `warn` checks' messages (also in `checks`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Pin {
    #[schema(value_type = Object)]
    pub selector: Selector,
    pub version: u64,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    pub removed_by: Option<String>,
    /// When the pin stops applying by itself (removed by `expiry`); null: never.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ApiToken {
    pub name: String,
    pub is_admin: bool,
    /// `admin`, `publisher` or `consumer`.
    pub kind: String,
    pub team: Option<String>,
    /// Consumer tokens: labels every poll with the token must claim.
    pub labels: BTreeMap<String, String>,
    /// Consumer tokens: restricted topics it may read besides its team's.
    pub topics: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A page of a newest-first list and the cursor of the next page.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// One consumer of a topic, as the audit knows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConsumerInfo {
    pub instance: String,
    /// Polled with a token: its reports count for health gates.
    pub authenticated: bool,
    /// `token:<name>` of an authenticated consumer.
    pub principal: Option<String>,
    /// The relay instance its last report came through (absent for a direct poll).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relayed_by: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The version the instance reported holding at its last poll.
    pub version: Option<u64>,
    /// What its labels resolve to now.
    pub expected_version: Option<u64>,
    /// Holds another version than expected, and has for longer than the grace period.
    pub lagging: bool,
    pub version_since: Option<DateTime<Utc>>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last_applied_version: Option<u64>,
    pub last_applied_ok: Option<bool>,
    /// Message of the last failed apply; null after a success.
    pub last_error: Option<String>,
    pub last_applied_at: Option<DateTime<Utc>>,
    /// The region whose copy served the last applied download, as the client reported it
    /// (docs/regions.md); null for inline payloads, one region, a failure, or a client
    /// that does not report it.
    pub served_region: Option<String>,
}

/// A console user. The password hash never leaves the service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    /// Names of the teams the user belongs to, sorted.
    pub teams: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub disabled: bool,
}

/// A team: topics it owns may be changed by its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Team {
    pub name: String,
    pub description: String,
    /// Usernames of the members, sorted.
    pub members: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// One operator action as the audit log recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who acted: `user:<name>`, `token:<name>`, `system` or `anonymous`.
    pub actor: String,
    /// What was done, `<object>.<verb>`: `version.publish`, `pin.set`, `user.create`, …
    pub action: String,
    pub topic: Option<String>,
    /// What changed; the shape depends on the action.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// Which audit entries to list; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct AuditFilter {
    /// Only entries about this topic.
    pub topic: Option<String>,
    /// Only entries by this actor (exact, e.g. `user:alice`).
    pub actor: Option<String>,
    /// Only actions starting with this (`pin.` matches `pin.set` and `pin.remove`).
    pub action: Option<String>,
    /// 1–500, default 50.
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// A rollout as the API returns it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RolloutInfo {
    pub id: i64,
    pub topic: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub view: RolloutView,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Why the system ended it: an automatic rollback's evidence (docs/validation.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The stages' Prometheus analyses measured so far (docs/validation.md).
    pub analysis: Vec<AnalysisRun>,
}

/// One analysis of one stage of a rollout: its run's verdict and measurements.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AnalysisRun {
    /// 0-based index of the stage (as `current_stage`).
    pub stage: usize,
    pub name: String,
    /// `running`, `successful`, `failed` or `inconclusive`.
    #[schema(value_type = String)]
    pub verdict: imprint_domain::analysis::RunVerdict,
    pub measurements: Vec<AnalysisMeasurement>,
}

/// One measurement of an analysis.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AnalysisMeasurement {
    pub at: DateTime<Utc>,
    /// The query's number; `null` when there was none (see `reason`) or it was NaN.
    pub value: Option<f64>,
    /// `successful`, `failed` or `inconclusive`.
    #[schema(value_type = String)]
    pub verdict: imprint_domain::analysis::Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a rollout is asked for: an inline plan or the name of one of the topic's plans.
#[derive(Clone, Debug)]
pub enum PlanChoice {
    Inline(Plan),
    Named(String),
}

/// Whether a publish starts a rollout.
#[derive(Clone, Debug, Default)]
pub enum RolloutRequest {
    /// The topic's default plan, if it has one.
    #[default]
    TopicDefault,
    /// No rollout, whatever the topic's default.
    None,
    Plan(PlanChoice),
}

/// How a version reached its consumers (see `Imprint::propagation`).
#[derive(Clone, Debug)]
pub struct Propagation {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    /// Nodes that hold the version or should hold it.
    pub total: u64,
    /// For each node holding it, seconds from the publish until the audit saw it there, sorted.
    pub seconds_to_reach: Vec<f64>,
}

/// Filters for the consumer list.
#[derive(Clone, Debug, Default)]
pub struct ConsumerFilter {
    pub labels: Option<Selector>,
    pub version: Option<u64>,
    pub lagging_only: bool,
    /// Page size (1-500); `None`: every match at once (the console's overview).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Count the matching consumers per value of this label key (and version held).
    pub group_by: Option<String>,
}

#[derive(Clone)]
pub struct ConsumerList {
    /// Trouble first: failed to apply, then lagging, then not seen lately, then the rest
    /// (each most recently seen first).
    pub consumers: Vec<ConsumerInfo>,
    pub by_version: BTreeMap<String, u64>,
    /// Consumers matching the filter (all pages).
    pub total: u64,
    pub next: Option<String>,
    /// With `group_by`: one row per label value (`""`: consumers without the label).
    pub groups: Vec<LabelGroup>,
    /// The label keys the topic's consumers carry (what `group_by` can take).
    pub label_keys: Vec<String>,
}

/// Consumers with one value of a label: how many hold which version, lag, failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LabelGroup {
    pub value: String,
    pub total: u64,
    /// Per version held (`none`: nothing yet).
    pub by_version: BTreeMap<String, u64>,
    pub lagging: u64,
    pub failed: u64,
}

/// How Apollo clients address a topic. The secret is write-only: answers only say
/// whether one is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApolloBinding {
    pub app_id: String,
    pub namespace: String,
    /// Requests for this app must be signed (`Authorization: Apollo …`, `Timestamp`).
    pub secret_set: bool,
}

/// An Apollo binding to set: `secret` absent keeps the current one, `""` removes it.
#[derive(Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApolloBindingInput {
    pub app_id: String,
    pub namespace: String,
    #[serde(default)]
    pub secret: Option<String>,
}

/// The secret never reaches a log: `Debug` says only whether one is given.
impl std::fmt::Debug for ApolloBindingInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApolloBindingInput")
            .field("app_id", &self.app_id)
            .field("namespace", &self.namespace)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How OpenFeature (OFREP) providers address a topic: as flag `flag_key`, whose value is
/// the resolved version's JSON payload or its top-level field `field`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct OfrepBinding {
    pub flag_key: String,
    /// The payload's top-level field that is the flag's value (absent: the whole payload).
    pub field: Option<String>,
}

/// An OpenFeature binding to set: `flag_key` absent is the topic's name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfrepBindingInput {
    #[serde(default)]
    pub flag_key: Option<String>,
    #[serde(default)]
    pub field: Option<String>,
}

/// How Spring Cloud Config clients address a topic: a property source of `application`
/// (`application`: of every application, as Spring's `application.yml`) for `profile`
/// (absent: every profile, as `{application}.yml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpringBinding {
    pub application: String,
    #[serde(default)]
    pub profile: Option<String>,
}

/// How a topic's payloads are encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionMode {
    /// Payloads are age v1 files encrypted to `recipients`; the server never sees plaintext.
    EndToEnd,
    /// The server seals what it stores (envelope encryption under `key` of its key
    /// provider) and serves plaintext to allowed readers.
    AtRest,
}

/// A topic's encryption: `{"mode": "end_to_end", "recipients": ["age1…"]}` or
/// `{"mode": "at_rest", "key": "<key id>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    pub mode: EncryptionMode,
    /// age X25519 recipients (`age1…`): every payload is encrypted to each of them
    /// (end to end only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The key provider's key id that wraps the data keys (at rest only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Encryption {
    /// End to end: the server holds only ciphertext and never reads plaintext.
    pub fn end_to_end(&self) -> bool {
        self.mode == EncryptionMode::EndToEnd
    }

    /// At rest: the key id payloads are sealed under.
    pub fn at_rest_key(&self) -> Option<&str> {
        (self.mode == EncryptionMode::AtRest).then_some(self.key.as_deref()).flatten()
    }
}

/// Where a version's payload is, to send it.
#[derive(Clone)]
pub enum PayloadBody {
    Inline(bytes::Bytes),
    /// An object in the store (its key), streamed from there.
    Object(String),
    /// A sealed object (an at-rest topic's, docs/encryption.md): streamed from the store
    /// and opened chunk by chunk on the way out (never presigned, no byte ranges).
    Sealed(String),
    /// Sealed inline bytes, not opened yet: `version_payload` opens them once the caller's
    /// rights are checked (so a caller without rights never makes the provider work).
    SealedInline(bytes::Bytes),
}

/// One region's copy of a version's object (docs/regions.md).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ObjectCopy {
    pub region: String,
    /// The home region: publishes stream there; it holds the object from the commit on.
    pub home: bool,
    /// `done` (the region holds it) or `pending` (the worker is still to copy it).
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// A registered object's URL in this region (the publisher's object; docs/regions.md);
    /// None for objects Imprint stored.
    pub url: Option<String>,
}

/// A version's payload as `…/data`, `/latest` and blobs send it.
#[derive(Clone)]
pub struct VersionPayload {
    pub version: u64,
    pub content_type: String,
    pub sha256: String,
    pub size: u64,
    pub body: PayloadBody,
    /// The region whose store holds `body`'s object key (None: the home region).
    pub region: Option<String>,
}

/// One row of the audit as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PlaintextRead {
    pub version: u64,
    /// `token:<name>`, `user:<name>` or `anonymous`.
    pub reader: String,
    pub reads: u64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}
