//! Pins: hold the consumers of a selector on one version, remove a pin, list pins.
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_bool, parse_limit, selector_json, ApiJson, ApiQuery, Auth, TopicPath};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use imprint_domain::{Selector, VersionNumber};
use imprint_service::change_control::{ChangeOptions, ChangeRequest, Changed};
use imprint_service::model::Pin;
use imprint_service::PinInput;
use imprint_service::{Error, Imprint};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(list_pins, put_pin, delete_pin))
}

/// `PUT …/pins`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// The consumers pinned: `{"region": "eu-west-1"}`; `{}` pins everyone.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub selector: Option<Value>,
    pub version: u64,
    #[serde(default)]
    pub reason: Option<String>,
    /// RFC 3339: the pin stops applying then (removed by `expiry`, audited).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// RFC 3339: pin then (202, a change request the scheduler applies; docs/change-control.md).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// Admins: pin now past the topic's review rule, with this reason (audited). Freezes never
    /// hold pins.
    #[serde(default)]
    pub break_glass: Option<String>,
}

#[derive(Deserialize)]
pub struct SelectorQuery {
    selector: Option<String>,
    /// RFC 3339: unpin then (a change request the scheduler applies).
    at: Option<String>,
}

#[derive(Deserialize)]
pub struct AllQuery {
    all: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PinList {
    pub pins: Vec<Pin>,
    pub next: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/topics/{topic}/pins", tag = "pins", params(("topic" = String, Path)),
    request_body = PinBody,
    responses((status = 200, body = Pin),
              (status = 202, body = ChangeRequest, description = "the topic requires review, or `at` was given: a change request"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub async fn put_pin(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiJson(body): ApiJson<PinBody>,
) -> ApiResult<Response> {
    let selector = match &body.selector {
        None | Some(Value::Null) => return Err(ApiError::invalid("selector is required ({} pins everyone)")),
        Some(v) => selector_json(v)?,
    };
    let version = VersionNumber::new(body.version).map_err(|e| ApiError::invalid(e.to_string()))?;
    let input = PinInput { selector, version, reason: body.reason.unwrap_or_default(), expires_at: body.expires_at };
    let opts = ChangeOptions { at: body.at, break_glass: body.break_glass };
    match imprint.pin_controlled(&caller, &topic, input, opts).await? {
        Changed::Done(pin) => Ok(Json(pin).into_response()),
        Changed::Requested(cr) => Ok((StatusCode::ACCEPTED, Json(cr)).into_response()),
    }
}

#[utoipa::path(delete, path = "/api/v1/topics/{topic}/pins", tag = "pins",
    params(("topic" = String, Path), ("selector" = String, Query, description = "the pin's selector, `*` for everyone"),
           ("at" = Option<String>, Query, description = "RFC 3339: unpin then (202, a change request)")),
    responses((status = 204, description = "removed"),
              (status = 202, body = ChangeRequest, description = "`at` was given: a change request"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_pin(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<SelectorQuery>,
) -> ApiResult<Response> {
    let selector = q.selector.ok_or_else(|| ApiError::invalid("?selector= is required (`*` for everyone)"))?;
    let selector = Selector::parse(&selector).map_err(Error::from)?;
    let at = match q.at.as_deref() {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| ApiError::invalid(format!("at is an RFC 3339 time: {e}")))?
                .with_timezone(&Utc),
        ),
    };
    match imprint.unpin_controlled(&caller, &topic, &selector, ChangeOptions { at, break_glass: None }).await? {
        Changed::Done(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Changed::Requested(cr) => Ok((StatusCode::ACCEPTED, Json(cr)).into_response()),
    }
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/pins", tag = "pins",
    params(("topic" = String, Path), ("all" = Option<bool>, Query, description = "include removed pins"),
           ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = PinList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_pins(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<AllQuery>,
) -> ApiResult<Json<PinList>> {
    let all = parse_bool(&q.all, "all")?;
    let page = imprint.pins(&caller, &topic, all, parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
    Ok(Json(PinList { pins: page.items, next: page.next }))
}
