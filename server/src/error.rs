//! The one HTTP error type: API.md's `{"error": {"code", "message"}}` with the right
//! status. What a service error means in HTTP is decided here, and only here.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_service::Error;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The error body of every failed API request.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `invalid_request`, `topic_not_found`, …
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// The HTTP status and API error code of a service error.
pub fn status_and_code(e: &Error) -> (StatusCode, &'static str) {
    match e {
        Error::InvalidTopicName(_) => (StatusCode::BAD_REQUEST, "invalid_topic_name"),
        Error::InvalidSelector(_) => (StatusCode::BAD_REQUEST, "invalid_selector"),
        Error::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        Error::TopicNotFound(_) => (StatusCode::NOT_FOUND, "topic_not_found"),
        Error::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
        Error::PinNotFound { .. } => (StatusCode::NOT_FOUND, "pin_not_found"),
        Error::RolloutNotFound { .. } => (StatusCode::NOT_FOUND, "rollout_not_found"),
        Error::NoVersionInScope(_) => (StatusCode::NOT_FOUND, "no_version_in_scope"),
        Error::UserNotFound(_) => (StatusCode::NOT_FOUND, "user_not_found"),
        Error::TeamNotFound(_) => (StatusCode::NOT_FOUND, "team_not_found"),
        Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        Error::TopicExists(_) => (StatusCode::CONFLICT, "topic_exists"),
        Error::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
        Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        Error::UserExists(_) => (StatusCode::CONFLICT, "user_exists"),
        Error::TeamExists(_) => (StatusCode::CONFLICT, "team_exists"),
        Error::VersionPurged { .. } => (StatusCode::GONE, "version_purged"),
        Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        Error::SchemaViolation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "schema_violation"),
        Error::TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
        Error::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        Error::StorageUnavailable(_) | Error::CommitUnknown(_) | Error::ObjectStoreUnavailable(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
        }
        Error::ChecksumMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch"),
        Error::ObjectNotFound(_) => (StatusCode::UNPROCESSABLE_ENTITY, "object_not_found"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError(Error::invalid(msg))
    }

    pub fn with_code(status: StatusCode, code: &str, message: &str) -> Response {
        (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(&self.0);
        // Internal details are logged, never shown to clients.
        let message = match &self.0 {
            Error::Internal(detail) => {
                tracing::error!(detail, "internal error");
                "internal error; see the server log".to_owned()
            }
            Error::StorageUnavailable(source) => {
                tracing::warn!(error = %source, "storage unavailable");
                self.0.to_string()
            }
            e => e.to_string(),
        };
        let mut resp = ApiError::with_code(status, code, &message);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
