//! What consumers get and who they are: the poll, a topic's resolved payload (`latest`),
//! resolution as the API answers it (`resolve`, also as of a past time), and the
//! consumer audit of a topic.
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_bool, parse_labels, parse_limit, parse_time, ApiJson, ApiQuery, Auth, PollAuth, TopicPath};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use imprint_domain::Selector;
use imprint_service::model::ConsumerFilter;
use imprint_service::payloads::{PayloadBody, VersionPayload};
use imprint_service::{Error, Imprint};
use imprint_service::{PollRequest, PollResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new()
        .routes(routes!(poll))
        .routes(routes!(latest))
        .routes(routes!(resolve))
        .routes(routes!(consumers))
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
pub struct ConsumersQuery {
    labels: Option<String>,
    version: Option<String>,
    lagging: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    group_by: Option<String>,
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
    let (r, truncated) = imprint.resolve_bounded(&caller, &topic, &labels, at).await?;
    Ok(Json(Resolved {
        topic: topic.to_string(),
        version: r.map(|r| r.version),
        pinned: r.is_some_and(|r| r.pinned),
        at,
        truncated,
    }))
}

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

/// The resolved payload of one topic: the curl-friendly way to consume. Answered like
/// `…/versions/{n}/data` (the version's own content type, a single `Range`,
/// `If-None-Match`), with `ETag: "v<n>"` and `X-Imprint-Pinned`.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/latest", tag = "consumers",
    params(("topic" = String, Path), ("labels" = Option<String>, Query, description = "region=eu-west-1,app=checkout"),
           ("Range" = Option<String>, Header, description = "one byte range: bytes=a-b, bytes=a- or bytes=-n"),
           ("If-None-Match" = Option<String>, Header, description = "the ETag held: 304 if it is still the resolved version")),
    responses((status = 200, description = "the resolved version's payload, in its own content type", body = Vec<u8>,
               content_type = "*/*",
               headers(("ETag" = String, description = "\"v<n>\""), ("X-Imprint-Version" = u64),
                       ("X-Imprint-Pinned" = bool), ("Content-Length" = u64), ("Accept-Ranges" = String, description = "bytes"))),
              (status = 206, description = "the requested range of the payload, in its own content type", body = Vec<u8>,
               content_type = "*/*",
               headers(("Content-Range" = String, description = "bytes <first>-<last>/<size>"), ("ETag" = String))),
              (status = 304, description = "not modified: If-None-Match names the resolved version's ETag"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such topic, or no version released to these labels"),
              (status = 410, body = ErrorBody, description = "version_purged: retention purged the resolved version's payload"),
              (status = 416, body = ErrorBody, description = "invalid_range; Content-Range: bytes */<size>"),
              (status = 503, body = ErrorBody)))]
pub async fn latest(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    TopicPath(topic): TopicPath,
    ApiQuery(q): ApiQuery<LabelsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let labels = parse_labels(&q.labels)?;
    let (v, pinned) = imprint.latest(&caller, &topic, &labels)?;
    let etag = format!("\"v{}\"", v.version);
    let inline = |body: Bytes| VersionPayload {
        version: v.version,
        content_type: v.content_type.clone(),
        sha256: v.sha256.clone(),
        size: body.len() as u64,
        body: PayloadBody::Inline(body),
        region: None,
    };
    let p = match &v.payload {
        Some(p) => inline(p.clone()),
        // Not modified: no need to look the payload up (the answer is a 304 either way).
        None if crate::payload::if_none_match(&headers, &etag) => inline(Bytes::new()),
        None => imprint.version_payload(&caller, &topic, imprint_service::Error::known_version(v.version)?).await?,
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
    let version = q.version.as_deref().map(crate::extract::parse_version).transpose()?.map(u64::from);
    let lagging_only = parse_bool(&q.lagging, "lagging")?;
    let limit = Some(parse_limit(&q.limit)?.unwrap_or(500));
    let group_by = q.group_by.filter(|g| !g.is_empty());
    if group_by.as_ref().is_some_and(|g| g.len() > 128) {
        return Err(ApiError::invalid("group_by is a label key (at most 128 characters)"));
    }
    let grouped = group_by.is_some();
    let filter = ConsumerFilter { labels, version, lagging_only, limit, cursor: q.cursor, group_by };
    let list = imprint.consumers(&caller, &topic, &filter).await?;
    Ok(Json(ConsumerList {
        consumers: list.consumers,
        by_version: list.by_version,
        total: list.total,
        next: list.next,
        groups: grouped.then_some(list.groups),
        label_keys: list.label_keys,
    }))
}
