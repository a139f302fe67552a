//! The errors an operation can end with, and what each means to a caller — its HTTP
//! status, its stable error code and the message shown — decided here once: the API
//! (`server/src/error.rs`) and the console (`app/src/ssr.rs`) both answer with these.
use imprint_domain::{SelectorError, TopicNameError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidTopicName(#[from] TopicNameError),
    #[error("invalid selector: {0}")]
    InvalidSelector(#[from] SelectorError),
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("topic {topic:?} has no version {version}")]
    VersionNotFound { topic: String, version: u64 },
    #[error("version {version} of topic {topic:?} has been purged by retention")]
    VersionPurged { topic: String, version: u64 },
    #[error("topic {topic:?} has no active pin on selector {selector}")]
    PinNotFound { topic: String, selector: String },
    #[error("topic {topic:?} has no rollout {id}")]
    RolloutNotFound { topic: String, id: i64 },
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidState(String),
    /// A concurrent change got there first (a unique or foreign key constraint said no).
    #[error("{0}")]
    Conflict(String),
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { size: u64, limit: u64 },
    /// The payload is not what the topic accepts (its JSON Schema, its Apollo binding).
    #[error("{0}")]
    SchemaViolation(String),
    /// A payload for an end-to-end encrypted topic is not an age file fit for its recipients.
    #[error("{0}")]
    NotEncrypted(String),
    /// Something other than a topic, version, pin or rollout is not there.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("storage is unavailable; try again later")]
    StorageUnavailable(#[source] sqlx::Error),
    /// A commit that failed in a way that leaves its outcome unknown (the connection
    /// broke, a deferred check failed): nothing it would have named may be deleted.
    #[error("storage is unavailable; the change may or may not have been made: look before trying again")]
    CommitUnknown(#[source] sqlx::Error),
    /// The object store failed or is unreachable; nothing was committed.
    #[error("the object store is unavailable ({0}); nothing was stored, try again later")]
    ObjectStoreUnavailable(String),
    #[error("the payload's SHA-256 is {actual}, not the {expected} that was given")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("no object at {0}")]
    ObjectNotFound(String),
    #[error("a user named {0:?} exists already")]
    UserExists(String),
    #[error("a team named {0:?} exists already")]
    TeamExists(String),
    #[error("user {0:?} does not exist")]
    UserNotFound(String),
    #[error("team {0:?} does not exist")]
    TeamNotFound(String),
    /// A webhook subscription (or one of its deliveries) is not there, or not the caller's.
    #[error("{0}")]
    WebhookNotFound(String),
    /// Sign-in throttling: too many failed attempts for this username or client.
    #[error("too many failed sign-in attempts; try again in {retry_after_s} s")]
    TooManyAttempts { retry_after_s: u64 },
    #[error("no version of topic {0:?} is released to these labels")]
    NoVersionInScope(String),
    /// The server holds as many open requests as its caps allow (try again later).
    #[error("{0}")]
    Busy(String),
    /// A `Range` that is not one satisfiable byte range of a payload of `size` bytes.
    #[error("the Range header is not a satisfiable single byte range")]
    RangeNotSatisfiable { size: u64 },
    /// The server has as many live console streams open as it may.
    #[error("{0}")]
    TooManyStreams(String),
    /// The client's address holds as many connections as it may (refused by the listener).
    #[error("too many connections from this address; retry later")]
    TooManyConnections,
    /// A pre-release check with `on_fail: reject` failed (docs/validation.md): nothing was
    /// stored; `results` is every check's result (the error's `details`).
    /// With the topic's `keep_rejected`, `stored` is the number of the rejected version
    /// kept for its owner to look at (never released).
    #[error("the version was rejected by the topic's checks: {message}{}", stored.map(|v| format!(" (kept unreleased as rejected version {v})")).unwrap_or_default())]
    ValidationFailed { message: String, results: Vec<imprint_domain::checks::CheckResult>, stored: Option<u64> },
    /// The version was rejected by its topic's checks and kept (`keep_rejected`): it is
    /// never released, pinned, rolled out, served or downloaded.
    #[error("version {version} of topic {topic:?} was rejected by the topic's checks: it is never released, pinned, rolled out or served")]
    VersionRejected { topic: String, version: u64 },
    /// No candidate at a validator's download URL: expired, its checks done, or never offered.
    #[error("no candidate at this URL: it expired or its checks are done")]
    CandidateNotFound,
    /// A draft, change request or freeze window is not there (or not the caller's to see).
    #[error("{0}")]
    DraftNotFound(String),
    #[error("{0}")]
    ChangeRequestNotFound(String),
    #[error("{0}")]
    FreezeNotFound(String),
    /// A release inside an active change-freeze window (the message names it).
    #[error("{0}")]
    ChangeFrozen(String),
    /// A release on a topic that requires review, not through a change request.
    #[error("{0}")]
    ReviewRequired(String),
    /// Fair serving (server/src/fairness.rs): the caller's application has as many
    /// requests in flight as its adaptive limit allows, and its brief wait for a place ran
    /// out. Answered 429 with `Retry-After`.
    #[error("this application has too many requests in flight; retry in {retry_after_s} s")]
    Overloaded { retry_after_s: u64 },
    /// The key provider of at-rest encryption cannot be reached (a KMS that is down):
    /// nothing was stored; try again later.
    #[error("{0}")]
    KeyUnavailable(String),
    /// A sealed payload in storage did not authenticate (altered or truncated): nothing of
    /// it is served.
    #[error("{0}")]
    PayloadAltered(String),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
    }

    /// A version number the service itself holds (a row or the serving state), as the
    /// newtype: never 0, so an internal error if it ever were.
    pub fn known_version(n: u64) -> Result<imprint_domain::VersionNumber> {
        imprint_domain::VersionNumber::new(n).map_err(|e| Error::Internal(format!("stored version {n}: {e}")))
    }

    /// The HTTP status of this failure, the same for the API and the console.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Error::InvalidTopicName(_) | Error::InvalidSelector(_) | Error::InvalidRequest(_) => S::BAD_REQUEST,
            Error::Unauthorized(_) => S::UNAUTHORIZED,
            Error::Forbidden(_) => S::FORBIDDEN,
            Error::TopicNotFound(_)
            | Error::VersionNotFound { .. }
            | Error::PinNotFound { .. }
            | Error::RolloutNotFound { .. }
            | Error::NoVersionInScope(_)
            | Error::UserNotFound(_)
            | Error::TeamNotFound(_)
            | Error::WebhookNotFound(_)
            | Error::CandidateNotFound
            | Error::NotFound(_) => S::NOT_FOUND,
            Error::TopicExists(_)
            | Error::InvalidState(_)
            | Error::Conflict(_)
            | Error::UserExists(_)
            | Error::TeamExists(_) => S::CONFLICT,
            Error::VersionPurged { .. } => S::GONE,
            Error::PayloadTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            Error::SchemaViolation(_)
            | Error::ChecksumMismatch { .. }
            | Error::ObjectNotFound(_)
            | Error::NotEncrypted(_)
            | Error::ValidationFailed { .. } => S::UNPROCESSABLE_ENTITY,
            Error::RangeNotSatisfiable { .. } => S::RANGE_NOT_SATISFIABLE,
            Error::TooManyAttempts { .. } | Error::TooManyConnections | Error::Overloaded { .. } => {
                S::TOO_MANY_REQUESTS
            }
            Error::Busy(_)
            | Error::TooManyStreams(_)
            | Error::StorageUnavailable(_)
            | Error::CommitUnknown(_)
            | Error::ObjectStoreUnavailable(_)
            | Error::KeyUnavailable(_) => S::SERVICE_UNAVAILABLE,
            Error::PayloadAltered(_) => S::INTERNAL_SERVER_ERROR,
            Error::ChangeFrozen(_) => S::LOCKED,
            Error::DraftNotFound(_) | Error::ChangeRequestNotFound(_) | Error::FreezeNotFound(_) => S::NOT_FOUND,
            Error::ReviewRequired(_) => S::CONFLICT,
            Error::VersionRejected { .. } => S::CONFLICT,
            Error::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable error code (`docs/api.md` lists them).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidTopicName(_) => "invalid_topic_name",
            Error::InvalidSelector(_) => "invalid_selector",
            Error::InvalidRequest(_) => "invalid_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::TopicNotFound(_) => "topic_not_found",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::PinNotFound { .. } => "pin_not_found",
            Error::RolloutNotFound { .. } => "rollout_not_found",
            Error::NoVersionInScope(_) => "no_version_in_scope",
            Error::UserNotFound(_) => "user_not_found",
            Error::TeamNotFound(_) => "team_not_found",
            Error::WebhookNotFound(_) => "webhook_not_found",
            Error::NotFound(_) => "not_found",
            Error::TopicExists(_) => "topic_exists",
            Error::InvalidState(_) => "invalid_state",
            Error::Conflict(_) => "conflict",
            Error::UserExists(_) => "user_exists",
            Error::TeamExists(_) => "team_exists",
            Error::VersionPurged { .. } => "version_purged",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::SchemaViolation(_) => "schema_violation",
            Error::NotEncrypted(_) => "not_encrypted",
            Error::ValidationFailed { .. } => "validation_failed",
            Error::CandidateNotFound => "candidate_not_found",
            Error::ChecksumMismatch { .. } => "checksum_mismatch",
            Error::ObjectNotFound(_) => "object_not_found",
            Error::RangeNotSatisfiable { .. } => "invalid_range",
            Error::TooManyAttempts { .. } => "too_many_attempts",
            Error::Busy(_) => "busy",
            Error::TooManyStreams(_) => "too_many_streams",
            Error::TooManyConnections => "too_many_connections",
            Error::Overloaded { .. } => "overloaded",
            Error::StorageUnavailable(_) | Error::CommitUnknown(_) | Error::ObjectStoreUnavailable(_) => {
                "storage_unavailable"
            }
            Error::ChangeFrozen(_) => "change_frozen",
            Error::DraftNotFound(_) => "draft_not_found",
            Error::ChangeRequestNotFound(_) => "change_request_not_found",
            Error::FreezeNotFound(_) => "freeze_not_found",
            Error::ReviewRequired(_) => "review_required",
            Error::KeyUnavailable(_) => "key_unavailable",
            Error::PayloadAltered(_) => "payload_altered",
            Error::VersionRejected { .. } => "version_rejected",
            Error::Internal(_) => "internal",
        }
    }

    /// What the caller is told. An internal error's detail is never shown (it goes to the
    /// log: see `log`); every other message is written for the caller.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error; see the server log".to_owned(),
            e => e.to_string(),
        }
    }

    /// Structured details shown with the message, for the errors that have them: a
    /// rejected version's check results (`{"checks": [...]}`).
    pub fn details(&self) -> Option<serde_json::Value> {
        match self {
            Error::ValidationFailed { results, stored: None, .. } => Some(serde_json::json!({ "checks": results })),
            Error::ValidationFailed { results, stored: Some(v), .. } => {
                Some(serde_json::json!({ "checks": results, "version": v }))
            }
            Error::VersionRejected { version, .. } => Some(serde_json::json!({ "version": version })),
            _ => None,
        }
    }

    /// Logs what the caller is not shown: an internal error's detail, and why storage is
    /// unavailable. `context` says where it happened (`"api"`, `"console action"`, …).
    pub fn log(&self, context: &str) {
        match self {
            Error::Internal(detail) => tracing::error!(detail, context, "internal error"),
            Error::StorageUnavailable(source) => tracing::warn!(error = %source, context, "storage unavailable"),
            _ => {}
        }
    }
}

impl From<imprint_domain::RolloutError> for Error {
    fn from(e: imprint_domain::RolloutError) -> Self {
        Error::InvalidState(e.to_string())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Error::StorageUnavailable(e),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // admin_shutdown, crash_shutdown, cannot_connect_now, too many connections
                Some("57P01") | Some("57P02") | Some("57P03") | Some("53300") | Some("08006") | Some("08003")
                | Some("08001") => Error::StorageUnavailable(e),
                _ => match db.constraint().and_then(|c| constraint_error(c, db.message())) {
                    Some(mapped) => mapped,
                    None => Error::Internal(e.to_string()),
                },
            },
            _ => Error::Internal(e.to_string()),
        }
    }
}

/// What a violated constraint means, in the service's terms. Every constraint and unique
/// index of the schema is named here (a test compares this list with the database), so
/// no violation ends up as an internal error.
pub(crate) fn constraint_error(constraint: &str, detail: &str) -> Option<Error> {
    let conflict = |m: &str| Some(Error::Conflict(m.to_owned()));
    let invalid = |m: &str| Some(Error::InvalidRequest(m.to_owned()));
    match constraint {
        "topics_name_key" => conflict("a topic with this name exists already"),
        "topics_pkey" | "versions_pkey" | "pins_pkey" | "api_tokens_pkey" | "rollouts_pkey" | "users_pkey"
        | "teams_pkey" | "audit_log_pkey" => conflict("the row was created concurrently; try again"),
        "scopes_pkey" => conflict("the version has this scope already"),
        "team_members_pkey" => conflict("the user is in the team already"),
        "consumers_pkey" => conflict("the consumer was recorded concurrently; try again"),
        "plaintext_reads_pkey" => conflict("the read was counted concurrently; try again"),
        "pins_one_active" => conflict("another pin on this selector was set at the same time; try again"),
        "rollouts_one_active" => conflict("another rollout of this topic is active"),
        "api_tokens_active_name" => conflict("an active token with this name exists already"),
        "api_tokens_token_hash_key" => conflict("this token value is in use already"),
        "users_username_key" => conflict("a user with this name exists already"),
        "teams_name_key" => conflict("a team with this name exists already"),
        "topics_retention_max_versions_check" => invalid("retention.max_versions must be at least 1"),
        "topics_retention_max_age_days_check" => invalid("retention.max_age_days must be at least 1"),
        "topics_inline_limit_bytes_check" => invalid("inline_limit_bytes must be at least 1"),
        "topics_max_size_bytes_check" => invalid("max_size_bytes must be at least 1"),
        "versions_object_key" => invalid("an object payload has an object key"),
        "stray_objects_pkey" => conflict("this object is queued for deletion already"),
        "object_copies_pkey" => conflict("this copy is recorded already"),
        "object_copies_state" => Some(Error::Internal("an object copy's state is pending or done".into())),
        "object_copies_version_fkey" => conflict("the version of this copy is gone"),
        "topics_min_regions" => Some(Error::invalid("min_regions must be at least 1")),
        "snapshots_pkey" => conflict("the snapshot was recorded concurrently; try again"),
        "pins_expiry_after_creation" => invalid("expires_at must be after the pin is set"),
        "versions_version_check" => invalid("versions start at 1"),
        "versions_size_check" => invalid("a size cannot be negative"),
        "versions_sha256_check" => invalid("sha256 must be 64 lowercase hex digits"),
        "versions_storage_check" | "versions_check" => invalid("a payload is stored inline or in the object store"),
        "rollouts_state_check" => invalid("not a rollout state"),
        "api_tokens_kind_check" => invalid("a token kind is admin, publisher, consumer or relay"),
        "topics_apollo_complete" => invalid("an Apollo binding has both an app_id and a namespace"),
        "topics_apollo_binding" => conflict("another topic is bound to this Apollo app and namespace"),
        "topics_ofrep_complete" => invalid("an OpenFeature field needs a flag key"),
        "topics_ofrep_flag_key" => conflict("another topic is bound to this OpenFeature flag key"),
        "topics_spring_complete" => invalid("a Spring binding with a profile names its application"),
        "topics_spring_binding" => conflict("another topic is bound to this Spring application and profile"),
        "users_username_check" => invalid("not a valid username"),
        "teams_name_check" => invalid("not a valid team name"),
        "versions_topic_id_fkey"
        | "pins_topic_id_fkey"
        | "consumers_topic_id_fkey"
        | "snapshots_topic_id_fkey"
        | "plaintext_reads_topic_id_fkey" => conflict("the topic does not exist (any more)"),
        "scopes_topic_id_version_fkey" | "pins_topic_id_version_fkey" | "rollouts_topic_id_version_fkey" => {
            conflict("the version does not exist (any more)")
        }
        "team_members_team_id_fkey" => conflict("the team does not exist (any more)"),
        "team_members_user_id_fkey" => conflict("the user does not exist (any more)"),
        "webhook_subscriptions_pkey" | "webhook_events_pkey" | "webhook_events_id_key" | "webhook_deliveries_pkey" => {
            conflict("the row was created concurrently; try again")
        }
        "webhook_deliveries_subscription_id_event_seq_key" => conflict("this event is queued for this webhook already"),
        "webhook_subscriptions_url_check" => invalid("a webhook URL has 1 to 2048 characters"),
        "webhook_subscriptions_description_check" => invalid("a webhook description has at most 1000 characters"),
        "webhook_subscriptions_one_scope" => invalid("a webhook is for one topic, one team or everything, not several"),
        "webhook_deliveries_state_check" => invalid("a delivery is pending, delivered or failed"),
        "webhook_subscriptions_topic_id_fkey" => conflict("the topic does not exist (any more)"),
        "webhook_deliveries_subscription_id_fkey" => conflict("the webhook does not exist (any more)"),
        "webhook_deliveries_event_seq_fkey" => conflict("the event does not exist (any more)"),
        "drafts_pkey" | "change_requests_pkey" | "freezes_pkey" | "topic_reviews_pkey" => {
            conflict("the row was created concurrently; try again")
        }
        "change_approvals_pkey" => conflict("this approver approved the change already"),
        "drafts_state" => invalid("a draft is open, released or discarded"),
        "topic_reviews_approvals" => invalid("required_approvals is 1 to 10"),
        "change_requests_kind" => invalid("not a change kind"),
        "change_requests_state" => invalid("not a change request state"),
        "freezes_one_scope" => invalid("a freeze is global, for a team or for a topic, not several"),
        "drafts_topic_id_fkey"
        | "topic_reviews_topic_id_fkey"
        | "change_requests_topic_id_fkey"
        | "freezes_topic_id_fkey" => conflict("the topic does not exist (any more)"),
        "change_requests_draft_id_fkey" => conflict("the draft does not exist (any more)"),
        "change_approvals_request_id_fkey" => conflict("the change request does not exist (any more)"),
        // Pre-release checks (docs/validation.md).
        "topic_validation_pkey" | "version_checks_pkey" | "validation_candidates_pkey" => {
            conflict("the row was created concurrently; try again")
        }
        "validation_candidates_check" => invalid("a candidate is held inline or as an object, not both"),
        "topic_validation_topic_id_fkey" | "validation_candidates_topic_id_fkey" => {
            conflict("the topic does not exist (any more)")
        }
        "version_checks_topic_id_version_fkey" => conflict("the version does not exist (any more)"),
        // Rollout analyses (docs/validation.md).
        "analysis_measurements_pkey" => conflict("the row was created concurrently; try again"),
        "analysis_measurements_rollout_id_fkey" => conflict("the rollout does not exist (any more)"),
        // keep_rejected: the triggers behind the service's own refusal (409 version_rejected).
        "versions_not_rejected" => Some(Error::InvalidState(
            "the version was rejected by its topic's checks: it is never released, pinned or rolled out".into(),
        )),
        _ => {
            tracing::warn!(constraint, detail, "unmapped constraint violation");
            None
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An outbound request's error with its sources (reqwest hides the cause in them), each
/// said once; webhook deliveries, external validators (`checks`)
/// and Prometheus analyses (`prometheus`) report it.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        source = inner.source();
    }
    s
}
