//! The `/api/v1` handlers: typed request parts in (see `extract`), a service call, the
//! answer out. Routes are registered through `utoipa_axum`, so every route is in the
//! OpenAPI document by construction.
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{
    parse_json, ActionPath, ApiJson, ApiQuery, Auth, OptionalJson, PollAuth, RolloutPath, TopicPath, VersionPath,
    MAX_BODY_BYTES,
};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use imprint_domain::{Labels, Plan, RolloutAction, Selector};
use imprint_service::model::{ConsumerFilter, Pin, Published, Scope, Topic, Version};
use imprint_service::payloads::{PayloadBody, VersionPayload};
use imprint_service::{
    Error, Imprint, NewTopic, Payload, PinInput, PlanChoice, PollRequest, PollResponse, PublishInput, RolloutInfo,
    RolloutRequest, TopicPatch,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The API routes and the OpenAPI document describing exactly them.
pub fn routes_and_doc() -> (axum::Router<Imprint>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(create_topic, list_topics))
        .routes(routes!(get_topic, patch_topic))
        .routes(routes!(publish, list_versions))
        .routes(routes!(get_version))
        .routes(routes!(version_data))
        .routes(routes!(retention))
        .routes(routes!(add_scope))
        .routes(routes!(resolve))
        .routes(routes!(list_pins, put_pin, delete_pin))
        .routes(routes!(latest))
        .routes(routes!(consumers))
        .routes(routes!(start_rollout, list_rollouts))
        .routes(routes!(get_rollout))
        .routes(routes!(rollout_action))
        .routes(routes!(poll))
        .routes(routes!(openapi))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .split_for_parts();
    let router = router
        .route("/api/v1/{*rest}", axum::routing::any(api_not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    (router, doc)
}

pub fn routes() -> axum::Router<Imprint> {
    routes_and_doc().0
}

async fn api_not_found() -> ApiError {
    ApiError::not_found("no such API endpoint; see /api/v1/openapi.json")
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", content_type = "application/json")))]
pub async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

// ---- request bodies (unknown fields are refused, naming the field) ----

fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The JSON form of a publish.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// The payload as UTF-8 text (give this or `data_base64`).
    #[serde(default)]
    pub data: Option<String>,
    /// The payload, base64.
    #[serde(default)]
    pub data_base64: Option<String>,
    /// Instead of data: register an object that already exists in the configured store.
    #[serde(default)]
    pub object: Option<ObjectRef>,
    /// The payload's SHA-256 (hex): verified, 422 `checksum_mismatch` otherwise.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Selectors the version is released to; default `[{}]` (everyone), or none with a rollout.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub scopes: Option<Vec<Value>>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// A plan (`{"stages": [...]}`), a plan name, `"none"` or `null` (no rollout); absent:
    /// the topic's default plan.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub rollout: Option<Option<Value>>,
}

/// An existing object published as a version's payload.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// `s3://bucket/key`, `file:///path`, … inside the configured object store.
    pub url: String,
}

fn selector_json(v: &Value) -> ApiResult<Selector> {
    Ok(Selector::from_json(v).map_err(Error::from)?)
}

fn parse_plan(v: &Value) -> ApiResult<Plan> {
    serde_json::from_value(v.clone()).map_err(|e| ApiError::invalid(format!("invalid rollout plan: {e}")))
}

impl PublishBody {
    fn into_input(self) -> ApiResult<PublishInput> {
        let payload = match (self.data, self.data_base64, self.object) {
            (Some(d), None, None) => Payload::Text(d),
            (None, None, Some(o)) => Payload::Object { url: o.url },
            (None, Some(b), None) => Payload::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| ApiError::invalid(format!("data_base64 is not valid base64: {e}")))?
                    .into(),
            ),
            (None, None, None) => {
                return Err(ApiError::invalid(
                    "the payload is missing: send data (UTF-8 text), data_base64 or object ({\"url\": …})",
                ))
            }
            _ => return Err(ApiError::invalid("send one of data, data_base64 or object, not several")),
        };
        let scopes =
            self.scopes.map(|items| items.iter().map(selector_json).collect::<ApiResult<Vec<_>>>()).transpose()?;
        let rollout = match self.rollout {
            None => RolloutRequest::TopicDefault,
            Some(None) => RolloutRequest::None,
            Some(Some(Value::String(name))) if name == "none" => RolloutRequest::None,
            Some(Some(Value::String(name))) => RolloutRequest::Plan(PlanChoice::Named(name)),
            Some(Some(plan @ Value::Object(_))) => RolloutRequest::Plan(PlanChoice::Inline(parse_plan(&plan)?)),
            Some(Some(_)) => {
                return Err(ApiError::invalid("rollout must be a plan ({\"stages\": [...]}), a plan name, or null"))
            }
        };
        Ok(PublishInput {
            payload,
            content_type: self.content_type,
            metadata: self.metadata.unwrap_or_default(),
            scopes,
            message: self.message.unwrap_or_default(),
            rollout,
            sha256: self.sha256,
        })
    }
}

/// `POST …/versions/{n}/scopes`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeBody {
    /// `{"region": "eu-west-1"}`; `{}` is everyone.
    #[schema(value_type = Object)]
    pub selector: Value,
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

/// `POST …/rollouts`: stages inline, or the name of one of the topic's plans.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    pub version: u64,
    /// `[{"selector": {...}, "wait_s": 600, "gate"?: {"min_applied_ratio"?: 0.9, "max_failure_ratio"?: 0.05}}]`
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub stages: Option<Value>,
    #[serde(default)]
    pub plan: Option<String>,
}

/// `POST …/rollouts/{id}/{action}` (optional body).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutActionBody {
    /// Cancel only: pin each reached stage's selector to what it resolved to before the rollout.
    #[serde(default)]
    pub rollback: Option<bool>,
}

// ---- query strings ----

fn parse_limit(l: &Option<String>) -> ApiResult<Option<u32>> {
    l.as_deref()
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| ApiError::invalid(format!("limit must be a number between 1 and 500, not {l:?}")))
        })
        .transpose()
}

fn parse_time(s: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| ApiError::invalid(format!("{s:?} is not an RFC 3339 time such as 2026-11-22T03:12:00Z")))
}

fn parse_bool(v: &Option<String>, key: &str) -> ApiResult<bool> {
    match v.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::invalid(format!("{key} must be true or false, not {v:?}"))),
    }
}

fn parse_labels(v: &Option<String>) -> ApiResult<Labels> {
    Ok(Labels::parse(v.as_deref().unwrap_or("")).map_err(Error::from)?)
}

#[derive(Deserialize)]
pub struct TopicsQuery {
    q: Option<String>,
    owner: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    unused_days: Option<String>,
}

#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
pub struct ResolveQuery {
    labels: Option<String>,
    at: Option<String>,
}

#[derive(Deserialize)]
pub struct LabelsQuery {
    labels: Option<String>,
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

#[derive(Deserialize)]
pub struct ConsumersQuery {
    labels: Option<String>,
    version: Option<String>,
    lagging: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    group_by: Option<String>,
}

// ---- responses ----

#[derive(Serialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<Topic>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<Version>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PinList {
    pub pins: Vec<Pin>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ConsumerList {
    pub consumers: Vec<imprint_service::model::ConsumerInfo>,
    /// Number of consumers (matching the label filter) per version held; `none` for no version.
    pub by_version: BTreeMap<String, u64>,
    /// Consumers matching every filter (all pages).
    pub total: u64,
    pub next: Option<String>,
    /// With `?group_by=<label key>`: per value of that label, versions held, lagging, failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<imprint_service::model::LabelGroup>>,
    /// Label keys the topic's consumers carry.
    pub label_keys: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Resolved {
    pub topic: String,
    pub version: Option<u64>,
    pub pinned: bool,
    pub at: Option<DateTime<Utc>>,
    /// With `at`: the topic had more versions or pins in effect then than one answer
    /// reads (2 000), and only the newest were considered. Absent when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutInfo>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub postgres: bool,
    pub state_loaded: bool,
}

// ---- topics ----

#[utoipa::path(post, path = "/api/v1/topics", request_body = NewTopic, tag = "topics",
    responses((status = 201, body = Topic), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_topic(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    ApiJson(input): ApiJson<NewTopic>,
) -> ApiResult<Response> {
    let topic = imprint.create_topic(&caller, input).await?;
    Ok((StatusCode::CREATED, Json(topic)).into_response())
}

#[utoipa::path(get, path = "/api/v1/topics", tag = "topics",
    params(("q" = Option<String>, Query, description = "search name, description, owner"),
           ("owner" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query),
    ("unused_days" = Option<u32>, Query, description = "only topics nobody polled for this many days (or ever), oldest poll first")),
    responses((status = 200, body = TopicList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_topics(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    ApiQuery(q): ApiQuery<TopicsQuery>,
) -> ApiResult<Json<TopicList>> {
    if let Some(days) = &q.unused_days {
        let days = days
            .parse::<u32>()
            .map_err(|_| ApiError::invalid(format!("unused_days must be a number of days, not {days:?}")))?;
        let page = imprint.unused_topics(&caller, days, parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
        return Ok(Json(TopicList { topics: page.items, next: page.next }));
    }
    let page = imprint
        .list_topics(&caller, q.q.as_deref(), q.owner.as_deref(), parse_limit(&q.limit)?, q.cursor.as_deref())
        .await?;
    Ok(Json(TopicList { topics: page.items, next: page.next }))
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}", tag = "topics", params(("topic" = String, Path)),
    responses((status = 200, body = Topic), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_topic(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
) -> ApiResult<Json<Topic>> {
    Ok(Json(imprint.topic(&caller, topic.as_str()).await?))
}

#[utoipa::path(patch, path = "/api/v1/topics/{topic}", request_body = TopicPatch, tag = "topics",
    params(("topic" = String, Path)),
    responses((status = 200, body = Topic), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_topic(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiJson(patch): ApiJson<TopicPatch>,
) -> ApiResult<Json<Topic>> {
    Ok(Json(imprint.update_topic(&caller, topic.as_str(), patch).await?))
}

// ---- versions ----

/// Publish. `application/json` bodies are a `PublishBody`; any other content type is the
/// payload itself, with scopes, metadata and message in the query string
/// (`?scope=region=eu&meta.k=v&message=…&rollout=<plan>|none`).
#[utoipa::path(post, path = "/api/v1/topics/{topic}/versions", tag = "versions", params(("topic" = String, Path)),
    request_body(description = "JSON: a PublishBody (data, data_base64 or object). multipart/form-data: text parts message, scope (repeatable), meta.<key>, content_type, rollout, sha256, then the file part (last). Any other content type: the raw payload, streamed, with ?scope=, meta.<k>=, message=, rollout=, sha256= and the X-Imprint-Sha256 header",
        content((PublishBody = "application/json"), (Vec<u8> = "multipart/form-data"), (Vec<u8> = "application/octet-stream"))),
    responses((status = 201, body = Published), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn publish(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    req: Request,
) -> ApiResult<Response> {
    let input = crate::payload::publish_input(req, |body| parse_json::<PublishBody>(body)?.into_input()).await?;
    // In its own task: a client that goes away mid-upload does not cancel the publish
    // half-way — it sees the body break off and cleans up (no version, no object).
    let task = tokio::spawn(async move { imprint.publish(&caller, topic.as_str(), input).await });
    let published = task.await.map_err(|e| Error::Internal(format!("publish task: {e}")))??;
    Ok((StatusCode::CREATED, Json(published)).into_response())
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions", tag = "versions",
    params(("topic" = String, Path), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = VersionList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_versions(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<VersionList>> {
    let page = imprint.list_versions(&caller, topic.as_str(), parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
    Ok(Json(VersionList { versions: page.items, next: page.next }))
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions/{n}", tag = "versions",
    params(("topic" = String, Path), ("n" = u64, Path)),
    responses((status = 200, body = Version), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_version(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    VersionPath(topic, n): VersionPath,
) -> ApiResult<Json<Version>> {
    Ok(Json(imprint.version(&caller, topic.as_str(), n).await?))
}

/// The payload bytes, with `ETag: "<sha256>"`, single `Range` requests and `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions/{n}/data", tag = "versions",
    params(("topic" = String, Path), ("n" = u64, Path),
           ("redirect" = Option<bool>, Query, description = "true: 307 to a presigned URL (S3 store with IMPRINT_PRESIGN=true)")),
    responses((status = 200, description = "payload bytes", body = Vec<u8>, content_type = "application/octet-stream"),
              (status = 206, description = "the requested range"), (status = 304, description = "not modified"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody),
              (status = 416, body = ErrorBody)))]
pub async fn version_data(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    VersionPath(topic, n): VersionPath,
    ApiQuery(q): ApiQuery<DataQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let redirect = parse_bool(&q.redirect, "redirect")?;
    let p = imprint.version_payload(&caller, topic.as_str(), n).await?;
    let etag = format!("\"{}\"", p.sha256);
    crate::payload::payload_response(&imprint, p, &etag, None, &headers, redirect).await
}

/// What the retention policy will purge next: the live versions outside the policy,
/// oldest first, each with `purge` or the reason it is kept.
#[derive(Serialize, ToSchema)]
pub struct RetentionList {
    pub versions: Vec<imprint_service::janitor::RetentionItem>,
    /// The topic has more live versions than one answer considers (2 000): only the
    /// newest were.
    pub truncated: bool,
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/retention", tag = "versions", params(("topic" = String, Path)),
    responses((status = 200, body = RetentionList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn retention(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
) -> ApiResult<Json<RetentionList>> {
    let (versions, truncated) = imprint.retention_preview_bounded(&caller, topic.as_str()).await?;
    Ok(Json(RetentionList { versions, truncated }))
}

/// `?redirect=true`: answer 307 to a presigned URL (S3 store with `IMPRINT_PRESIGN=true`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataQuery {
    #[serde(default)]
    pub redirect: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/topics/{topic}/versions/{n}/scopes", tag = "versions",
    params(("topic" = String, Path), ("n" = u64, Path)), request_body = ScopeBody,
    responses((status = 201, body = Scope), (status = 200, body = Scope, description = "the version had this scope already"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn add_scope(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    VersionPath(topic, n): VersionPath,
    ApiJson(body): ApiJson<ScopeBody>,
) -> ApiResult<Response> {
    let selector = selector_json(&body.selector)?;
    let (scope, added) = imprint.add_scope(&caller, topic.as_str(), n, selector).await?;
    Ok((if added { StatusCode::CREATED } else { StatusCode::OK }, Json(scope)).into_response())
}

// ---- resolution ----

#[utoipa::path(get, path = "/api/v1/topics/{topic}/resolve", tag = "resolution",
    params(("topic" = String, Path), ("labels" = Option<String>, Query, description = "region=eu-west-1,app=checkout"),
           ("at" = Option<String>, Query, description = "RFC 3339 time: resolve as things stood then")),
    responses((status = 200, body = Resolved), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn resolve(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<ResolveQuery>,
) -> ApiResult<Json<Resolved>> {
    let labels = parse_labels(&q.labels)?;
    let at = q.at.as_deref().map(parse_time).transpose()?;
    let (r, truncated) = imprint.resolve_bounded(&caller, topic.as_str(), &labels, at).await?;
    Ok(Json(Resolved {
        topic: topic.to_string(),
        version: r.map(|r| r.version),
        pinned: r.is_some_and(|r| r.pinned),
        at,
        truncated,
    }))
}

// ---- pins ----

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
    if body.version == 0 {
        return Err(ApiError::invalid("version must be a version number (1, 2, 3, …)"));
    }
    let input = PinInput {
        selector,
        version: body.version,
        reason: body.reason.unwrap_or_default(),
        expires_at: body.expires_at,
    };
    Ok(Json(imprint.pin(&caller, topic.as_str(), input).await?))
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
    imprint.unpin(&caller, topic.as_str(), &selector).await?;
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
    let page = imprint.pins(&caller, topic.as_str(), all, parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
    Ok(Json(PinList { pins: page.items, next: page.next }))
}

// ---- consumers ----

#[utoipa::path(post, path = "/api/v1/poll", tag = "consumers", request_body = PollRequest,
    responses((status = 200, body = PollResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
pub async fn poll(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    crate::extract::ClientAddr(client): crate::extract::ClientAddr,
    crate::extract::Credential(credential): crate::extract::Credential,
    ApiJson(mut req): ApiJson<PollRequest, { crate::extract::MAX_POLL_BODY_BYTES }>,
) -> ApiResult<Json<PollResponse>> {
    req.client = client;
    req.credential = credential;
    Ok(Json(imprint.poll(&caller, req).await?))
}

/// The resolved payload of one topic: the curl-friendly way to consume.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/latest", tag = "consumers",
    params(("topic" = String, Path), ("labels" = Option<String>, Query, description = "region=eu-west-1,app=checkout")),
    responses((status = 200, description = "payload bytes with X-Imprint-Version, X-Imprint-Pinned, ETag \"v<n>\"",
               body = Vec<u8>, content_type = "application/octet-stream"),
              (status = 304, description = "not modified"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn latest(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<LabelsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let labels = parse_labels(&q.labels)?;
    let (v, pinned) = imprint.latest(&caller, topic.as_str(), &labels)?;
    let etag = format!("\"v{}\"", v.version);
    let inline = |body: Bytes| VersionPayload {
        version: v.version,
        content_type: v.content_type.clone(),
        sha256: v.sha256.clone(),
        size: body.len() as u64,
        body: PayloadBody::Inline(body),
    };
    let p = match &v.payload {
        Some(p) => inline(p.clone()),
        // Not modified: no need to look the payload up (the answer is a 304 either way).
        None if crate::payload::if_none_match(&headers, &etag) => inline(Bytes::new()),
        None => imprint.version_payload(&caller, topic.as_str(), v.version).await?,
    };
    crate::payload::payload_response(&imprint, p, &etag, Some(pinned), &headers, false).await
}

/// Who consumes a topic: per instance the version held and the version it should hold.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/consumers", tag = "consumers",
    params(("topic" = String, Path),
           ("labels" = Option<String>, Query, description = "only consumers with these labels, e.g. region=eu-west-1"),
           ("version" = Option<u64>, Query, description = "only consumers holding this version"),
           ("lagging" = Option<bool>, Query, description = "only consumers lagging behind their expected version"),
           ("group_by" = Option<String>, Query, description = "a label key: count consumers per value of it (groups)"),
           ("limit" = Option<u32>, Query, description = "1-500, default 500"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ConsumerList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn consumers(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<ConsumersQuery>,
) -> ApiResult<Json<ConsumerList>> {
    let labels = q.labels.as_deref().map(Selector::parse).transpose().map_err(Error::from)?;
    let version = q.version.as_deref().map(crate::extract::parse_version).transpose()?;
    let lagging_only = parse_bool(&q.lagging, "lagging")?;
    let limit = Some(parse_limit(&q.limit)?.unwrap_or(500));
    let group_by = q.group_by.filter(|g| !g.is_empty());
    if group_by.as_ref().is_some_and(|g| g.len() > 128) {
        return Err(ApiError::invalid("group_by is a label key (at most 128 characters)"));
    }
    let grouped = group_by.is_some();
    let filter = ConsumerFilter { labels, version, lagging_only, limit, cursor: q.cursor, group_by };
    let list = imprint.consumers(&caller, topic.as_str(), &filter).await?;
    Ok(Json(ConsumerList {
        consumers: list.consumers,
        by_version: list.by_version,
        total: list.total,
        next: list.next,
        groups: grouped.then_some(list.groups),
        label_keys: list.label_keys,
    }))
}

// ---- rollouts ----

/// Starts a rollout of the topic's newest version. Stage 1's scope is added at once.
#[utoipa::path(post, path = "/api/v1/topics/{topic}/rollouts", tag = "rollouts", params(("topic" = String, Path)),
    request_body = RolloutBody,
    responses((status = 201, body = RolloutInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start_rollout(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiJson(body): ApiJson<RolloutBody>,
) -> ApiResult<Response> {
    if body.version == 0 {
        return Err(ApiError::invalid("version must be a version number (1, 2, 3, …)"));
    }
    let choice = match (body.stages.filter(|s| !s.is_null()), body.plan) {
        (Some(stages), None) => PlanChoice::Inline(parse_plan(&json!({"stages": stages}))?),
        (None, Some(name)) => PlanChoice::Named(name),
        _ => return Err(ApiError::invalid("give either stages or the name of a plan")),
    };
    let info = imprint.start_rollout(&caller, topic.as_str(), body.version, choice).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/rollouts", tag = "rollouts",
    params(("topic" = String, Path), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = RolloutList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_rollouts(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<RolloutList>> {
    let page = imprint.rollouts(&caller, topic.as_str(), parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
    Ok(Json(RolloutList { rollouts: page.items, next: page.next }))
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/rollouts/{id}", tag = "rollouts",
    params(("topic" = String, Path), ("id" = i64, Path)),
    responses((status = 200, body = RolloutInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_rollout(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    RolloutPath(topic, id): RolloutPath,
) -> ApiResult<Json<RolloutInfo>> {
    Ok(Json(imprint.rollout(&caller, topic.as_str(), id).await?))
}

/// `pause`, `resume`, `advance` (next stage now), `complete` (all stages now), `cancel`
/// (body `{"rollback": true}` pins each reached stage's selector to what it resolved to
/// before the rollout).
#[utoipa::path(post, path = "/api/v1/topics/{topic}/rollouts/{id}/{action}", tag = "rollouts",
    params(("topic" = String, Path), ("id" = i64, Path),
           ("action" = String, Path, description = "pause, resume, advance, complete or cancel")),
    request_body(content = Option<RolloutActionBody>, description = "cancel only: {\"rollback\": true}"),
    responses((status = 200, body = RolloutInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rollout_action(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    RolloutPath(topic, id): RolloutPath,
    ActionPath(action): ActionPath,
    OptionalJson(body): OptionalJson<RolloutActionBody>,
) -> ApiResult<Json<RolloutInfo>> {
    let action = match action.as_str() {
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        "advance" => RolloutAction::Advance,
        "complete" => RolloutAction::Complete,
        "cancel" => RolloutAction::Cancel,
        other => {
            return Err(ApiError::invalid(format!(
                "unknown rollout action {other:?}: pause, resume, advance, complete or cancel"
            )))
        }
    };
    let rollback = match body.and_then(|b| b.rollback) {
        None => false,
        Some(b) if action == RolloutAction::Cancel => b,
        Some(_) => return Err(ApiError::invalid("rollback applies to cancel only")),
    };
    Ok(Json(imprint.rollout_action(&caller, topic.as_str(), id, action, rollback).await?))
}

// ---- operations ----

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "metrics in the Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(imprint): State<Imprint>) -> Response {
    if !imprint.config().metrics_on_public_listener {
        return ApiError::not_found("metrics are served on their own listener (IMPRINT_METRICS_ADDR)").into_response();
    }
    metrics_text().await
}

/// The metrics themselves, for the metrics listener (`metrics_router`).
pub async fn metrics_text() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics_handle().render()).into_response()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Postgres is reachable and the serving state is loaded.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(imprint): State<Imprint>) -> Response {
    let db = imprint.ready().await;
    let loaded = imprint.state().is_loaded();
    let status = if db && loaded { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness {
        status: if status == StatusCode::OK { "ready" } else { "not_ready" }.into(),
        postgres: db,
        state_loaded: loaded,
    };
    (status, Json(body)).into_response()
}
