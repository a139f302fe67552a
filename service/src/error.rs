//! The errors an operation can end with, each with the API's error code and status.
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
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { size: u64, limit: u64 },
    #[error("payload does not satisfy the topic's JSON Schema: {0}")]
    SchemaViolation(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("storage is unavailable; try again later")]
    StorageUnavailable(#[source] sqlx::Error),
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
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidTopicName(_) => "invalid_topic_name",
            Error::InvalidSelector(_) => "invalid_selector",
            Error::TopicNotFound(_) => "topic_not_found",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::VersionPurged { .. } => "version_purged",
            Error::PinNotFound { .. } => "pin_not_found",
            Error::RolloutNotFound { .. } => "rollout_not_found",
            Error::TopicExists(_) => "topic_exists",
            Error::InvalidState(_) => "invalid_state",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::SchemaViolation(_) => "schema_violation",
            Error::InvalidRequest(_) => "invalid_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::StorageUnavailable(_) => "storage_unavailable",
            Error::NoVersionInScope(_) => "no_version_in_scope",
            Error::UserExists(_) => "user_exists",
            Error::TeamExists(_) => "team_exists",
            Error::UserNotFound(_) => "user_not_found",
            Error::TeamNotFound(_) => "team_not_found",
            Error::TooManyAttempts { .. } => "too_many_attempts",
            Error::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidTopicName(_) | Error::InvalidSelector(_) | Error::InvalidRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::TopicNotFound(_)
            | Error::VersionNotFound { .. }
            | Error::PinNotFound { .. }
            | Error::RolloutNotFound { .. }
            | Error::NoVersionInScope(_)
            | Error::UserNotFound(_)
            | Error::TeamNotFound(_) => 404,
            Error::TopicExists(_) | Error::InvalidState(_) | Error::UserExists(_) | Error::TeamExists(_) => 409,
            Error::VersionPurged { .. } => 410,
            Error::PayloadTooLarge { .. } => 413,
            Error::SchemaViolation(_) => 422,
            Error::TooManyAttempts { .. } => 429,
            Error::StorageUnavailable(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
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
                _ => Error::Internal(e.to_string()),
            },
            _ => Error::Internal(e.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
