//! Pins: hold the consumers of a selector on one version, remove a pin, list pins.
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_bool, parse_limit, selector_json, ApiJson, ApiQuery, Auth, TopicPath};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use imprint_domain::{Selector, VersionNumber};
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
}

#[derive(Deserialize)]
pub struct SelectorQuery {
    selector: Option<String>,
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
    responses((status = 200, body = Pin), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 410, body = ErrorBody)))]
pub async fn put_pin(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiJson(body): ApiJson<PinBody>,
) -> ApiResult<Json<Pin>> {
    let selector = match &body.selector {
        None | Some(Value::Null) => return Err(ApiError::invalid("selector is required ({} pins everyone)")),
        Some(v) => selector_json(v)?,
    };
    let version = VersionNumber::new(body.version).map_err(|e| ApiError::invalid(e.to_string()))?;
    let input = PinInput { selector, version, reason: body.reason.unwrap_or_default(), expires_at: body.expires_at };
    Ok(Json(imprint.pin(&caller, &topic, input).await?))
}

#[utoipa::path(delete, path = "/api/v1/topics/{topic}/pins", tag = "pins",
    params(("topic" = String, Path), ("selector" = String, Query, description = "the pin's selector, `*` for everyone")),
    responses((status = 204, description = "removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_pin(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<SelectorQuery>,
) -> ApiResult<StatusCode> {
    let selector = q.selector.ok_or_else(|| ApiError::invalid("?selector= is required (`*` for everyone)"))?;
    let selector = Selector::parse(&selector).map_err(Error::from)?;
    imprint.unpin(&caller, &topic, &selector).await?;
    Ok(StatusCode::NO_CONTENT)
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
