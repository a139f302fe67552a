//! What a request to the relay carries — the bearer token, a JSON body, `?labels=`, an
//! instance name — read as the server reads it, and the error answers (the server's shape).

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_domain::Labels;
use imprint_protocol::RelayError;
use serde::Deserialize;
use serde_json::json;

pub(super) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

pub(super) fn refused(e: &RelayError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    error(status, &e.code, e.message.clone())
}

pub(super) fn bearer(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    let Some(v) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    v.to_str().ok().and_then(imprint_protocol::bearer_token).map(|t| Some(t.to_owned())).ok_or_else(|| {
        Box::new(error(StatusCode::UNAUTHORIZED, "unauthorized", "the Authorization header must be `Bearer <token>`"))
    })
}

pub(super) fn valid_instance(i: &str) -> bool {
    !i.is_empty() && i.len() <= 256 && !i.chars().any(char::is_control)
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid_request", format!("malformed JSON body: {e}"))))
}

/// `?labels=region=eu,app=x` as the server reads it.
#[derive(Deserialize)]
pub(super) struct LabelsQuery {
    labels: Option<String>,
}

pub(super) fn labels_of(q: &LabelsQuery) -> Result<Labels, Box<Response>> {
    Labels::parse(q.labels.as_deref().unwrap_or(""))
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid_labels", e.to_string())))
}
