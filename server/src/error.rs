//! The one HTTP error type: a service error as the protocol's `ErrorBody`,
//! `{"error": {"code", "message"}}` (docs/api.md).
//! Its status, code and message are the service error's own (`imprint_service::Error::
//! status`, `code`, `public_message`), so the console answers the same failure alike;
//! this file adds only the headers that go with a status.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
/// The error body of every failed API request, the wire protocol's (one definition for
/// the server, the client and the OpenAPI document).
pub use imprint_protocol::{ErrorBody, ErrorDetail};
use imprint_service::Error;

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError(Error::invalid(msg))
    }

    /// A request for something this server does not answer (an unknown API path, a role
    /// or listener it does not serve): 404 `not_found`, with a message saying where to go.
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError(Error::NotFound(msg.into()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        e.log("api");
        let status = e.status();
        let body = ErrorBody {
            error: ErrorDetail { code: e.code().to_owned(), message: e.public_message(), details: e.details() },
        };
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Error::Overloaded { retry_after_s } = e {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        if let Error::RangeNotSatisfiable { size } = e {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The trailing metadata entry a failed gRPC call carries the API's error code in (also in
/// the status details as a `google.rpc.ErrorInfo` whose reason is the code).
pub const GRPC_ERROR_CODE_KEY: &str = "imprint-error-code";
/// The `google.rpc.ErrorInfo` domain of Imprint's gRPC errors.
pub const GRPC_ERROR_DOMAIN: &str = "imprint";

/// The gRPC status code of a service error, from its HTTP status (proto/imprint/v1/
/// imprint.proto says which is which), with the few codes gRPC has a closer word for.
pub fn grpc_code(e: &Error) -> tonic::Code {
    use tonic::Code;
    match e {
        Error::TopicExists(_) | Error::UserExists(_) | Error::TeamExists(_) => return Code::AlreadyExists,
        Error::ObjectNotFound(_) => return Code::FailedPrecondition,
        _ => {}
    }
    match e.status().as_u16() {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 410 => Code::NotFound,
        409 => Code::FailedPrecondition,
        413 | 429 => Code::ResourceExhausted,
        416 => Code::OutOfRange,
        503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// A service error as a gRPC status: `grpc_code`, the API's message, and the API's error
/// code in the `imprint-error-code` metadata and a `google.rpc.ErrorInfo` detail.
pub fn grpc_status(e: Error) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    e.log("grpc");
    let code = e.code();
    let details = ErrorDetails::with_error_info(code, GRPC_ERROR_DOMAIN, std::collections::HashMap::new());
    let mut status = tonic::Status::with_error_details(grpc_code(&e), e.public_message(), details);
    status.metadata_mut().insert(GRPC_ERROR_CODE_KEY, tonic::metadata::MetadataValue::from_static(code));
    status
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        grpc_status(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;
    use axum::response::IntoResponse;
    use imprint_service::Error;

    /// One error of every kind, with the status and code docs/api.md gives it.
    fn every_kind() -> Vec<(Error, u16, &'static str)> {
        let s = String::new;
        vec![
            (Error::InvalidTopicName(imprint_domain::TopicName::parse("").unwrap_err()), 400, "invalid_topic_name"),
            (Error::InvalidSelector(imprint_domain::Selector::parse("=").unwrap_err()), 400, "invalid_selector"),
            (Error::TopicNotFound(s()), 404, "topic_not_found"),
            (Error::VersionNotFound { topic: s(), version: 1 }, 404, "version_not_found"),
            (Error::VersionPurged { topic: s(), version: 1 }, 410, "version_purged"),
            (Error::PinNotFound { topic: s(), selector: s() }, 404, "pin_not_found"),
            (Error::RolloutNotFound { topic: s(), id: 1 }, 404, "rollout_not_found"),
            (Error::WebhookNotFound("webhook 1 does not exist".into()), 404, "webhook_not_found"),
            (Error::TopicExists(s()), 409, "topic_exists"),
            (Error::InvalidState(s()), 409, "invalid_state"),
            (Error::Conflict(s()), 409, "conflict"),
            (Error::PayloadTooLarge { size: 2, limit: 1 }, 413, "payload_too_large"),
            (Error::SchemaViolation(s()), 422, "schema_violation"),
            (Error::NotFound(s()), 404, "not_found"),
            (Error::InvalidRequest(s()), 400, "invalid_request"),
            (Error::Unauthorized(s()), 401, "unauthorized"),
            (Error::Forbidden(s()), 403, "forbidden"),
            (Error::StorageUnavailable(sqlx::Error::PoolTimedOut), 503, "storage_unavailable"),
            (Error::CommitUnknown(sqlx::Error::PoolTimedOut), 503, "storage_unavailable"),
            (Error::ObjectStoreUnavailable(s()), 503, "storage_unavailable"),
            (Error::ChecksumMismatch { expected: s(), actual: s() }, 422, "checksum_mismatch"),
            (Error::ObjectNotFound(s()), 422, "object_not_found"),
            (Error::UserExists(s()), 409, "user_exists"),
            (Error::TeamExists(s()), 409, "team_exists"),
            (Error::UserNotFound(s()), 404, "user_not_found"),
            (Error::TeamNotFound(s()), 404, "team_not_found"),
            (Error::TooManyAttempts { retry_after_s: 1 }, 429, "too_many_attempts"),
            (Error::NoVersionInScope(s()), 404, "no_version_in_scope"),
            (Error::Busy(s()), 503, "busy"),
            (Error::RangeNotSatisfiable { size: 1 }, 416, "invalid_range"),
            (Error::TooManyStreams(s()), 503, "too_many_streams"),
            (Error::TooManyConnections, 429, "too_many_connections"),
            (Error::ValidationFailed { message: s(), results: vec![], stored: None }, 422, "validation_failed"),
            (Error::VersionRejected { topic: s(), version: 1 }, 409, "version_rejected"),
            (Error::CandidateNotFound, 404, "candidate_not_found"),
            (Error::Overloaded { retry_after_s: 1 }, 429, "overloaded"),
            (Error::Internal("secret detail".into()), 500, "internal"),
            (Error::NotEncrypted(s()), 422, "not_encrypted"),
            (Error::DraftNotFound(s()), 404, "draft_not_found"),
            (Error::ChangeRequestNotFound(s()), 404, "change_request_not_found"),
            (Error::FreezeNotFound(s()), 404, "freeze_not_found"),
            (Error::ChangeFrozen(s()), 423, "change_frozen"),
            (Error::ReviewRequired(s()), 409, "review_required"),
            (Error::KeyUnavailable(s()), 503, "key_unavailable"),
            (Error::PayloadAltered(s()), 500, "payload_altered"),
        ]
    }

    /// Which kind an error is; a new variant does not compile until it is named here,
    /// and the test fails until `every_kind` has one of it.
    fn kind(e: &Error) -> usize {
        match e {
            Error::InvalidTopicName(_) => 0,
            Error::InvalidSelector(_) => 1,
            Error::TopicNotFound(_) => 2,
            Error::VersionNotFound { .. } => 3,
            Error::VersionPurged { .. } => 4,
            Error::PinNotFound { .. } => 5,
            Error::RolloutNotFound { .. } => 6,
            Error::TopicExists(_) => 7,
            Error::InvalidState(_) => 8,
            Error::Conflict(_) => 9,
            Error::PayloadTooLarge { .. } => 10,
            Error::SchemaViolation(_) => 11,
            Error::NotFound(_) => 12,
            Error::InvalidRequest(_) => 13,
            Error::Unauthorized(_) => 14,
            Error::Forbidden(_) => 15,
            Error::StorageUnavailable(_) => 16,
            Error::CommitUnknown(_) => 17,
            Error::ObjectStoreUnavailable(_) => 18,
            Error::ChecksumMismatch { .. } => 19,
            Error::ObjectNotFound(_) => 20,
            Error::UserExists(_) => 21,
            Error::TeamExists(_) => 22,
            Error::UserNotFound(_) => 23,
            Error::TeamNotFound(_) => 24,
            Error::TooManyAttempts { .. } => 25,
            Error::NoVersionInScope(_) => 26,
            Error::Busy(_) => 27,
            Error::RangeNotSatisfiable { .. } => 28,
            Error::TooManyStreams(_) => 29,
            Error::Internal(_) => 30,
            Error::TooManyConnections => 31,
            Error::WebhookNotFound(_) => 32,
            Error::NotEncrypted(_) => 33,
            Error::ValidationFailed { .. } => 34,
            Error::CandidateNotFound => 35,
            Error::DraftNotFound(_) => 36,
            Error::ChangeRequestNotFound(_) => 37,
            Error::FreezeNotFound(_) => 38,
            Error::ChangeFrozen(_) => 39,
            Error::ReviewRequired(_) => 40,
            Error::Overloaded { .. } => 41,
            Error::KeyUnavailable(_) => 42,
            Error::PayloadAltered(_) => 43,
            Error::VersionRejected { .. } => 44,
        }
    }

    #[tokio::test]
    async fn every_error_has_one_status_and_code_in_the_api_and_the_console() {
        let cases = every_kind();
        let mut kinds: Vec<usize> = cases.iter().map(|(e, _, _)| kind(e)).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, (0..=44).collect::<Vec<_>>(), "every kind of error, once");
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e:?}");
            let message = e.public_message();
            assert!(!message.contains("secret detail"), "an internal error's detail is not shown");
            // The console answers a failed action with the same status and message.
            let console = imprint_app::ssr::refusal(&e, "test");
            assert_eq!((console.0.as_u16(), console.1.as_str()), (status, message.as_str()), "{e:?}");
            // And the API with the same status, code and message, in the one error body.
            let resp = ApiError(e).into_response();
            assert_eq!(resp.status().as_u16(), status);
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let mut expected = serde_json::json!({"error": {"code": code, "message": message}});
            if code == "validation_failed" {
                expected["error"]["details"] = serde_json::json!({"checks": []});
            }
            if code == "version_rejected" {
                expected["error"]["details"] = serde_json::json!({"version": 1});
            }
            assert_eq!(body, expected);
        }
    }

    /// Over gRPC every error carries the same code and message, and a status code that
    /// follows its HTTP status.
    #[test]
    fn every_error_has_a_grpc_status_with_the_api_code() {
        use tonic::Code;
        use tonic_types::StatusExt;
        for (e, http, code) in every_kind() {
            let message = e.public_message();
            let status = super::grpc_status(e);
            let expected = match (http, code) {
                (409, c) if c.ends_with("_exists") => Code::AlreadyExists,
                (422, "object_not_found") => Code::FailedPrecondition,
                (400 | 422, _) => Code::InvalidArgument,
                (401, _) => Code::Unauthenticated,
                (403, _) => Code::PermissionDenied,
                (404 | 410, _) => Code::NotFound,
                (409, _) => Code::FailedPrecondition,
                (413 | 429, _) => Code::ResourceExhausted,
                (416, _) => Code::OutOfRange,
                (503, _) => Code::Unavailable,
                _ => Code::Internal,
            };
            assert_eq!(status.code(), expected, "{code}");
            assert_eq!(status.message(), message);
            let meta = status.metadata().get(super::GRPC_ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
            assert_eq!(meta, Some(code));
            let info = status.get_details_error_info().expect("an ErrorInfo detail");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (code, super::GRPC_ERROR_DOMAIN));
        }
    }
}
