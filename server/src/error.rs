//! The one HTTP error type: API.md's `{"error": {"code", "message"}}` with the right status.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_service::Error;
use serde_json::json;

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

    pub fn with_code(status: StatusCode, code: &str, message: &str) -> Response {
        (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
        let mut resp = ApiError::with_code(status, self.0.code(), &message);
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
