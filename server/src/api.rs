//! The `/api/v1` handlers: parse the request, call the service, map the result.
use crate::error::{ApiError, ApiResult};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use imprint_domain::{Labels, Plan, RolloutAction, Selector};
use imprint_service::model::{Pin, Published, Scope, Topic, Version};
use imprint_service::{
    Caller, Error, Imprint, NewTopic, Payload, PinInput, PlanChoice, PollRequest, PollResponse, PublishInput,
    RolloutInfo, RolloutRequest, TopicPatch,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Largest request body accepted (base64 of the largest inline payload, with room to spare).
pub const MAX_BODY_BYTES: usize = 12 * 1024 * 1024;

pub fn routes() -> Router<Imprint> {
    Router::new()
        .route("/api/v1/topics", post(create_topic).get(list_topics))
        .route("/api/v1/topics/{topic}", get(get_topic).patch(patch_topic))
        .route("/api/v1/topics/{topic}/versions", post(publish).get(list_versions))
        .route("/api/v1/topics/{topic}/versions/{n}", get(get_version))
        .route("/api/v1/topics/{topic}/versions/{n}/data", get(version_data))
        .route("/api/v1/topics/{topic}/versions/{n}/scopes", post(add_scope))
        .route("/api/v1/topics/{topic}/resolve", get(resolve))
        .route("/api/v1/topics/{topic}/pins", get(list_pins).put(put_pin).delete(delete_pin))
        .route("/api/v1/topics/{topic}/latest", get(latest))
        .route("/api/v1/topics/{topic}/consumers", get(consumers))
        .route("/api/v1/topics/{topic}/rollouts", post(start_rollout).get(list_rollouts))
        .route("/api/v1/topics/{topic}/rollouts/{id}", get(get_rollout))
        .route("/api/v1/topics/{topic}/rollouts/{id}/{action}", post(rollout_action))
        .route("/api/v1/poll", post(poll))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/{*rest}", axum::routing::any(api_not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn api_not_found() -> Response {
    ApiError::with_code(StatusCode::NOT_FOUND, "not_found", "no such API endpoint; see /api/v1/openapi.json")
}

async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

// ---- request helpers ----

/// The caller named by `Authorization: Bearer …` (anonymous without the header).
pub async fn caller(imprint: &Imprint, headers: &HeaderMap) -> ApiResult<Caller> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Caller::Anonymous);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError(Error::Unauthorized("the Authorization header must be `Bearer <token>`".into())))?;
    Ok(imprint.authenticate(Some(token)).await?)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError(Error::PayloadTooLarge { size: MAX_BODY_BYTES as u64 + 1, limit: MAX_BODY_BYTES as u64 })
        }
        _ => ApiError::invalid(format!("could not read the request body: {e}")),
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
}

fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn query_one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn parse_limit(pairs: &[(String, String)]) -> ApiResult<Option<u32>> {
    query_one(pairs, "limit")
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| ApiError::invalid(format!("limit must be a number between 1 and 500, not {l:?}")))
        })
        .transpose()
}

fn parse_version(n: &str) -> ApiResult<u64> {
    n.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid(format!("{n:?} is not a version number (1, 2, 3, …)")))
}

fn parse_time(s: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| ApiError::invalid(format!("{s:?} is not an RFC 3339 time such as 2026-11-22T03:12:00Z")))
}

fn selector_json(v: &Value) -> ApiResult<Selector> {
    Ok(Selector::from_json(v).map_err(Error::from)?)
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn string_field(obj: &serde_json::Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("{key} must be a string"))),
    }
}

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
}

#[derive(Serialize, ToSchema)]
pub struct ConsumerList {
    pub consumers: Vec<imprint_service::model::ConsumerInfo>,
    /// Number of consumers (matching the label filter) per version held; `none` for no version.
    pub by_version: BTreeMap<String, u64>,
    pub total: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Resolved {
    pub topic: String,
    pub version: Option<u64>,
    pub pinned: bool,
    pub at: Option<DateTime<Utc>>,
}

// ---- topics ----

#[utoipa::path(post, path = "/api/v1/topics", request_body = NewTopic, tag = "topics",
    responses((status = 201, body = Topic), (status = 400), (status = 401), (status = 403), (status = 409)))]
pub async fn create_topic(
    State(imprint): State<Imprint>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = caller(&imprint, &headers).await?;
    let body = body_bytes(body)?;
    let input: NewTopic = parse_json(&body)?;
    let topic = imprint.create_topic(&caller, input).await?;
    Ok((StatusCode::CREATED, Json(topic)).into_response())
}

#[utoipa::path(get, path = "/api/v1/topics", tag = "topics",
    params(("q" = Option<String>, Query, description = "search name, description, owner"),
           ("owner" = Option<String>, Query), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query),
    ("unused_days" = Option<u32>, Query, description = "only topics nobody polled for this many days (or ever); not paginated")),
    responses((status = 200, body = TopicList)))]
pub async fn list_topics(State(imprint): State<Imprint>, RawQuery(q): RawQuery) -> ApiResult<Json<TopicList>> {
    let pairs = query_pairs(&q);
    if let Some(days) = query_one(&pairs, "unused_days") {
        let days = days
            .parse::<u32>()
            .map_err(|_| ApiError::invalid(format!("unused_days must be a number of days, not {days:?}")))?;
        return Ok(Json(TopicList { topics: imprint.unused_topics(days).await?, next: None }));
    }
    let page = imprint
        .list_topics(
            query_one(&pairs, "q"),
            query_one(&pairs, "owner"),
            parse_limit(&pairs)?,
            query_one(&pairs, "cursor"),
        )
        .await?;
    Ok(Json(TopicList { topics: page.items, next: page.next }))
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}", tag = "topics", responses((status = 200, body = Topic), (status = 404)))]
pub async fn get_topic(State(imprint): State<Imprint>, Path(topic): Path<String>) -> ApiResult<Json<Topic>> {
    Ok(Json(imprint.topic(&topic).await?))
}

#[utoipa::path(patch, path = "/api/v1/topics/{topic}", request_body = TopicPatch, tag = "topics",
    responses((status = 200, body = Topic), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn patch_topic(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Topic>> {
    let caller = caller(&imprint, &headers).await?;
    let patch: TopicPatch = parse_json(&body_bytes(body)?)?;
    Ok(Json(imprint.update_topic(&caller, &topic, patch).await?))
}

// ---- versions ----

/// Publish. `application/json` bodies carry `data` or `data_base64`; any other content
/// type is the payload itself, with scopes, metadata and message in the query string.
#[utoipa::path(post, path = "/api/v1/topics/{topic}/versions", tag = "versions",
    request_body(content = Object, description = "JSON form: {data | data_base64, metadata?, scopes?, message?, content_type?}; or a raw body with ?scope=&meta.k=&message="),
    responses((status = 201, body = Published), (status = 400), (status = 401), (status = 403), (status = 404),
              (status = 413), (status = 422), (status = 503)))]
pub async fn publish(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = caller(&imprint, &headers).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let is_json = content_type
        .as_deref()
        .is_some_and(|c| c.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    let body = body_bytes(body)?;
    let input = if is_json { json_publish(&body)? } else { raw_publish(&q, content_type, body)? };
    let published = imprint.publish(&caller, &topic, input).await?;
    Ok((StatusCode::CREATED, Json(published)).into_response())
}

fn json_publish(body: &[u8]) -> ApiResult<PublishInput> {
    let v: Value = parse_json(body)?;
    let obj = v.as_object().ok_or_else(|| ApiError::invalid("the body must be a JSON object"))?;
    for key in obj.keys() {
        if !["data", "data_base64", "metadata", "scopes", "message", "content_type", "rollout"].contains(&key.as_str())
        {
            return Err(ApiError::invalid(format!("unknown field {key:?}")));
        }
    }
    let payload = match (string_field(obj, "data")?, string_field(obj, "data_base64")?) {
        (Some(d), None) => Payload::Text(d),
        (None, Some(b)) => Payload::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| ApiError::invalid(format!("data_base64 is not valid base64: {e}")))?
                .into(),
        ),
        (Some(_), Some(_)) => return Err(ApiError::invalid("send either data or data_base64, not both")),
        (None, None) => return Err(ApiError::invalid("the payload is missing: send data (UTF-8 text) or data_base64")),
    };
    let metadata = match field(obj, "metadata") {
        None => BTreeMap::new(),
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|_| ApiError::invalid("metadata must be an object of string values"))?,
    };
    let scopes = match field(obj, "scopes") {
        None => None,
        Some(Value::Array(items)) => Some(items.iter().map(selector_json).collect::<ApiResult<Vec<_>>>()?),
        Some(_) => {
            return Err(ApiError::invalid("scopes must be an array of selectors such as [{\"region\": \"eu-west-1\"}]"))
        }
    };
    let rollout = match obj.get("rollout") {
        None => RolloutRequest::TopicDefault,
        Some(Value::Null) => RolloutRequest::None,
        Some(Value::String(name)) if name == "none" => RolloutRequest::None,
        Some(Value::String(name)) => RolloutRequest::Plan(PlanChoice::Named(name.clone())),
        Some(plan @ Value::Object(_)) => RolloutRequest::Plan(PlanChoice::Inline(parse_plan(plan)?)),
        Some(_) => return Err(ApiError::invalid("rollout must be a plan ({\"stages\": [...]}), a plan name, or null")),
    };
    Ok(PublishInput {
        payload,
        content_type: string_field(obj, "content_type")?,
        metadata,
        scopes,
        message: string_field(obj, "message")?.unwrap_or_default(),
        rollout,
    })
}

fn parse_plan(v: &Value) -> ApiResult<Plan> {
    serde_json::from_value(v.clone()).map_err(|e| ApiError::invalid(format!("invalid rollout plan: {e}")))
}

fn raw_publish(q: &Option<String>, content_type: Option<String>, body: Bytes) -> ApiResult<PublishInput> {
    let mut scopes = Vec::new();
    let mut metadata = BTreeMap::new();
    let mut message = String::new();
    let mut rollout = RolloutRequest::TopicDefault;
    for (k, v) in query_pairs(q) {
        if k == "scope" {
            scopes.push(Selector::parse(&v).map_err(Error::from)?);
        } else if let Some(key) = k.strip_prefix("meta.") {
            metadata.insert(key.to_owned(), v);
        } else if k == "message" {
            message = v;
        } else if k == "rollout" {
            rollout = if v == "none" { RolloutRequest::None } else { RolloutRequest::Plan(PlanChoice::Named(v)) };
        } else {
            return Err(ApiError::invalid(format!(
                "unknown query parameter {k:?} (use scope=, meta.<key>=, message=, rollout=)"
            )));
        }
    }
    // curl's default for --data is form encoding, which is never what a payload is.
    let content_type = content_type.filter(|c| !c.starts_with("application/x-www-form-urlencoded"));
    Ok(PublishInput {
        payload: Payload::Binary(body),
        content_type,
        metadata,
        scopes: if scopes.is_empty() { None } else { Some(scopes) },
        message,
        rollout,
    })
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions", tag = "versions",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = VersionList), (status = 404)))]
pub async fn list_versions(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<VersionList>> {
    let pairs = query_pairs(&q);
    let page = imprint.list_versions(&topic, parse_limit(&pairs)?, query_one(&pairs, "cursor")).await?;
    Ok(Json(VersionList { versions: page.items, next: page.next }))
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions/{n}", tag = "versions", responses((status = 200, body = Version), (status = 404)))]
pub async fn get_version(
    State(imprint): State<Imprint>,
    Path((topic, n)): Path<(String, String)>,
) -> ApiResult<Json<Version>> {
    Ok(Json(imprint.version(&topic, parse_version(&n)?).await?))
}

/// The payload bytes, with `ETag: "<sha256>"`, single `Range` requests and `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions/{n}/data", tag = "versions",
    responses((status = 200, description = "payload bytes"), (status = 206), (status = 304), (status = 404), (status = 410), (status = 416)))]
pub async fn version_data(
    State(imprint): State<Imprint>,
    Path((topic, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let n = parse_version(&n)?;
    let (data, content_type, sha) = imprint.version_data(&topic, n).await?;
    let etag = format!("\"{sha}\"");
    Ok(payload_response(data, &content_type, &etag, n, None, &headers))
}

/// Builds a payload response honouring `If-None-Match` and a single-range `Range`.
fn payload_response(
    data: Bytes,
    content_type: &str,
    etag: &str,
    version: u64,
    pinned: Option<bool>,
    headers: &HeaderMap,
) -> Response {
    let mut builder = Response::builder()
        .header(header::ETAG, etag)
        .header("X-Imprint-Version", version.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(p) = pinned {
        builder = builder.header("X-Imprint-Pinned", p.to_string());
    }
    let matches_etag = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches_etag {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).unwrap_or_default();
    }
    builder = builder.header(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    let len = data.len() as u64;
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        return match parse_range(range, len) {
            Some((start, end)) => builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .body(Body::from(data.slice(start as usize..=end as usize)))
                .unwrap_or_default(),
            None => {
                let mut r = ApiError::with_code(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid_range",
                    "the Range header is not a satisfiable single byte range",
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
        };
    }
    builder.status(StatusCode::OK).body(Body::from(data)).unwrap_or_default()
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` → inclusive (start, end); None if unsatisfiable.
fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() { len - 1 } else { b.parse::<u64>().ok()?.min(len - 1) };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

#[utoipa::path(post, path = "/api/v1/topics/{topic}/versions/{n}/scopes", tag = "versions",
    request_body(content = Object, description = "{\"selector\": {\"region\": \"eu-west-1\"}}"),
    responses((status = 201, body = Scope), (status = 200, body = Scope, description = "the version had this scope already"),
              (status = 400), (status = 401), (status = 403), (status = 404), (status = 410)))]
pub async fn add_scope(
    State(imprint): State<Imprint>,
    Path((topic, n)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = caller(&imprint, &headers).await?;
    let n = parse_version(&n)?;
    let v: Value = parse_json(&body_bytes(body)?)?;
    let selector = v.get("selector").ok_or_else(|| ApiError::invalid("the body must be {\"selector\": {...}}"))?;
    let selector = selector_json(selector)?;
    let (scope, added) = imprint.add_scope(&caller, &topic, n, selector).await?;
    Ok((if added { StatusCode::CREATED } else { StatusCode::OK }, Json(scope)).into_response())
}

// ---- resolution ----

#[utoipa::path(get, path = "/api/v1/topics/{topic}/resolve", tag = "resolution",
    params(("labels" = Option<String>, Query, description = "region=eu-west-1,app=checkout"),
           ("at" = Option<String>, Query, description = "RFC 3339 time: resolve as things stood then")),
    responses((status = 200, body = Resolved), (status = 400), (status = 404)))]
pub async fn resolve(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Resolved>> {
    let pairs = query_pairs(&q);
    let labels = Labels::parse(query_one(&pairs, "labels").unwrap_or("")).map_err(Error::from)?;
    let at = query_one(&pairs, "at").map(parse_time).transpose()?;
    let r = imprint.resolve(&topic, &labels, at)?;
    Ok(Json(Resolved { topic, version: r.map(|r| r.version), pinned: r.is_some_and(|r| r.pinned), at }))
}

// ---- pins ----

#[utoipa::path(put, path = "/api/v1/topics/{topic}/pins", tag = "pins",
    request_body(content = Object, description = "{\"selector\": {...}, \"version\": n, \"reason\": \"…\"}"),
    responses((status = 200, body = Pin), (status = 400), (status = 401), (status = 403), (status = 404), (status = 410)))]
pub async fn put_pin(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Pin>> {
    let caller = caller(&imprint, &headers).await?;
    let v: Value = parse_json(&body_bytes(body)?)?;
    let obj = v.as_object().ok_or_else(|| ApiError::invalid("the body must be a JSON object"))?;
    let selector = selector_json(
        field(obj, "selector").ok_or_else(|| ApiError::invalid("selector is required ({} pins everyone)"))?,
    )?;
    let version = field(obj, "version")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid("version must be a version number (1, 2, 3, …)"))?;
    let reason = string_field(obj, "reason")?.unwrap_or_default();
    Ok(Json(imprint.pin(&caller, &topic, PinInput { selector, version, reason }).await?))
}

#[utoipa::path(delete, path = "/api/v1/topics/{topic}/pins", tag = "pins",
    params(("selector" = String, Query, description = "the pin's selector, `*` for everyone")),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn delete_pin(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let caller = caller(&imprint, &headers).await?;
    let pairs = query_pairs(&q);
    let selector =
        query_one(&pairs, "selector").ok_or_else(|| ApiError::invalid("?selector= is required (`*` for everyone)"))?;
    let selector = Selector::parse(selector).map_err(Error::from)?;
    imprint.unpin(&caller, &topic, &selector).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/pins", tag = "pins",
    params(("all" = Option<bool>, Query, description = "include removed pins")),
    responses((status = 200, body = PinList), (status = 404)))]
pub async fn list_pins(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<PinList>> {
    let pairs = query_pairs(&q);
    let all = parse_bool(&pairs, "all")?;
    Ok(Json(PinList { pins: imprint.pins(&topic, all).await? }))
}

// ---- consumers ----

#[utoipa::path(post, path = "/api/v1/poll", tag = "consumers", request_body = PollRequest,
    responses((status = 200, body = PollResponse), (status = 400)))]
pub async fn poll(
    State(imprint): State<Imprint>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PollResponse>> {
    let req: PollRequest = parse_json(&body_bytes(body)?)?;
    Ok(Json(imprint.poll(req).await?))
}

/// The resolved payload of one topic: the curl-friendly way to consume.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/latest", tag = "consumers",
    params(("labels" = Option<String>, Query, description = "region=eu-west-1,app=checkout")),
    responses((status = 200, description = "payload bytes with X-Imprint-Version, X-Imprint-Pinned, ETag \"v<n>\""),
              (status = 304), (status = 404)))]
pub async fn latest(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let pairs = query_pairs(&q);
    let labels = Labels::parse(query_one(&pairs, "labels").unwrap_or("")).map_err(Error::from)?;
    let (v, pinned) = imprint.latest(&topic, &labels)?;
    let etag = format!("\"v{}\"", v.version);
    let data = match &v.payload {
        Some(p) => p.clone(),
        None if headers.get(header::IF_NONE_MATCH).is_some_and(|h| h.to_str().is_ok_and(|h| h.contains(&etag))) => {
            Bytes::new()
        }
        None => imprint.version_data(&topic, v.version).await?.0,
    };
    Ok(payload_response(data, &v.content_type, &etag, v.version, Some(pinned), &headers))
}

/// Who consumes a topic: per instance the version held and the version it should hold.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/consumers", tag = "consumers",
    params(("labels" = Option<String>, Query, description = "only consumers with these labels, e.g. region=eu-west-1"),
           ("version" = Option<u64>, Query, description = "only consumers holding this version"),
           ("lagging" = Option<bool>, Query, description = "only consumers lagging behind their expected version")),
    responses((status = 200, body = ConsumerList), (status = 400), (status = 404)))]
pub async fn consumers(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ConsumerList>> {
    let pairs = query_pairs(&q);
    let labels = query_one(&pairs, "labels").map(Selector::parse).transpose().map_err(Error::from)?;
    let version = query_one(&pairs, "version").map(parse_version).transpose()?;
    let lagging_only = parse_bool(&pairs, "lagging")?;
    let filter = imprint_service::audit::ConsumerFilter { labels, version, lagging_only };
    let list = imprint.consumers(&topic, &filter).await?;
    Ok(Json(ConsumerList { consumers: list.consumers, by_version: list.by_version, total: list.total }))
}

fn parse_bool(pairs: &[(String, String)], key: &str) -> ApiResult<bool> {
    match query_one(pairs, key) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::invalid(format!("{key} must be true or false, not {v:?}"))),
    }
}

// ---- rollouts ----

#[derive(Serialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutInfo>,
}

/// Starts a rollout of the topic's newest version: `{"version", "stages": [...]}` or
/// `{"version", "plan": "<name of one of the topic's plans>"}`. Stage 1's scope is added at once.
#[utoipa::path(post, path = "/api/v1/topics/{topic}/rollouts", tag = "rollouts",
    request_body(content = Object, description = "{\"version\": n, \"stages\": [{\"selector\": {...}, \"wait_s\": 600, \"gate\"?: {\"min_applied_ratio\"?: 0.9, \"max_failure_ratio\"?: 0.05}}]} or {\"version\": n, \"plan\": \"name\"}"),
    responses((status = 201, body = RolloutInfo), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
pub async fn start_rollout(
    State(imprint): State<Imprint>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = caller(&imprint, &headers).await?;
    let v: Value = parse_json(&body_bytes(body)?)?;
    let obj = v.as_object().ok_or_else(|| ApiError::invalid("the body must be a JSON object"))?;
    let version = field(obj, "version")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid("version must be a version number (1, 2, 3, …)"))?;
    let choice = match (field(obj, "stages"), string_field(obj, "plan")?) {
        (Some(stages), None) => PlanChoice::Inline(parse_plan(&json!({"stages": stages}))?),
        (None, Some(name)) => PlanChoice::Named(name),
        _ => return Err(ApiError::invalid("give either stages or the name of a plan")),
    };
    let info = imprint.start_rollout(&caller, &topic, version, choice).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/rollouts", tag = "rollouts",
    responses((status = 200, body = RolloutList), (status = 404)))]
pub async fn list_rollouts(State(imprint): State<Imprint>, Path(topic): Path<String>) -> ApiResult<Json<RolloutList>> {
    Ok(Json(RolloutList { rollouts: imprint.rollouts(&topic).await? }))
}

fn parse_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| ApiError::invalid(format!("{id:?} is not a rollout id")))
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/rollouts/{id}", tag = "rollouts",
    responses((status = 200, body = RolloutInfo), (status = 404)))]
pub async fn get_rollout(
    State(imprint): State<Imprint>,
    Path((topic, id)): Path<(String, String)>,
) -> ApiResult<Json<RolloutInfo>> {
    Ok(Json(imprint.rollout(&topic, parse_id(&id)?).await?))
}

/// `pause`, `resume`, `advance` (next stage now), `complete` (all stages now), `cancel`
/// (body `{"rollback": true}` pins each reached stage's selector to what it resolved to
/// before the rollout).
#[utoipa::path(post, path = "/api/v1/topics/{topic}/rollouts/{id}/{action}", tag = "rollouts",
    request_body(content = Option<Object>, description = "cancel only: {\"rollback\": true}"),
    responses((status = 200, body = RolloutInfo), (status = 400), (status = 401), (status = 403), (status = 404), (status = 409)))]
pub async fn rollout_action(
    State(imprint): State<Imprint>,
    Path((topic, id, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RolloutInfo>> {
    let caller = caller(&imprint, &headers).await?;
    let id = parse_id(&id)?;
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
    let body = body_bytes(body)?;
    let rollback = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let v: Value = parse_json(&body)?;
        match v.get("rollback") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) if action == RolloutAction::Cancel => *b,
            Some(Value::Bool(_)) => return Err(ApiError::invalid("rollback applies to cancel only")),
            Some(_) => return Err(ApiError::invalid("rollback must be true or false")),
        }
    };
    Ok(Json(imprint.rollout_action(&caller, &topic, id, action, rollback).await?))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: Postgres is reachable and the serving state is loaded.
pub async fn readyz(State(imprint): State<Imprint>) -> Response {
    let db = imprint.ready().await;
    let loaded = imprint.state().is_loaded();
    let status = if db && loaded { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if status == StatusCode::OK { "ready" } else { "not_ready" }, "postgres": db, "state_loaded": loaded})))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-3", 10), Some((0, 3)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-4", 10), Some((6, 9)));
        assert_eq!(parse_range("bytes=-40", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=4-2", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
