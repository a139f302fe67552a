//! The errors an operation can end with, in the service's terms. What they mean in HTTP
//! (status and error code) is decided by the server crate.
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
    /// Sign-in throttling: too many failed attempts for this username or client.
    #[error("too many failed sign-in attempts; try again in {retry_after_s} s")]
    TooManyAttempts { retry_after_s: u64 },
    #[error("no version of topic {0:?} is released to these labels")]
    NoVersionInScope(String),
    /// The server holds as many open requests as its caps allow (try again later).
    #[error("{0}")]
    Busy(String),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
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
        "snapshots_pkey" => conflict("the snapshot was recorded concurrently; try again"),
        "pins_expiry_after_creation" => invalid("expires_at must be after the pin is set"),
        "versions_version_check" => invalid("versions start at 1"),
        "versions_size_check" => invalid("a size cannot be negative"),
        "versions_sha256_check" => invalid("sha256 must be 64 lowercase hex digits"),
        "versions_storage_check" | "versions_check" => invalid("a payload is stored inline or in the object store"),
        "rollouts_state_check" => invalid("not a rollout state"),
        "api_tokens_kind_check" => invalid("a token kind is admin, publisher or consumer"),
        "topics_apollo_complete" => invalid("an Apollo binding has both an app_id and a namespace"),
        "topics_apollo_binding" => conflict("another topic is bound to this Apollo app and namespace"),
        "users_username_check" => invalid("not a valid username"),
        "teams_name_check" => invalid("not a valid team name"),
        "versions_topic_id_fkey" | "pins_topic_id_fkey" | "consumers_topic_id_fkey" | "snapshots_topic_id_fkey" => {
            conflict("the topic does not exist (any more)")
        }
        "scopes_topic_id_version_fkey" | "pins_topic_id_version_fkey" | "rollouts_topic_id_version_fkey" => {
            conflict("the version does not exist (any more)")
        }
        "team_members_team_id_fkey" => conflict("the team does not exist (any more)"),
        "team_members_user_id_fkey" => conflict("the user does not exist (any more)"),
        _ => {
            tracing::warn!(constraint, detail, "unmapped constraint violation");
            None
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
