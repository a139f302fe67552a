//! Versions: publish (JSON, raw body or multipart form), list and read versions, their
//! payload bytes, the retention preview, and adding a scope to a version.
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{
    parse_bool, parse_json, parse_limit, selector_json, ApiJson, ApiQuery, Auth, PageQuery, TopicPath, VersionPath,
};
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use imprint_service::change_control::{ChangeOptions, ChangeRequest, Changed, PublishControl};
use imprint_service::model::{Published, Scope, Version};
use imprint_service::{Error, Imprint};
use imprint_service::{Payload, PublishInput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new()
        .routes(routes!(publish, list_versions))
        .routes(routes!(get_version))
        .routes(routes!(version_data))
        .routes(routes!(version_regions))
        .routes(routes!(retention))
        .routes(routes!(add_scope))
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
    #[serde(default, deserialize_with = "imprint_service::double_option")]
    #[schema(value_type = Option<Object>)]
    pub rollout: Option<Option<Value>>,
    /// Publish even if a `reject` check fails (docs/validation.md); needs `force_reason`.
    #[serde(default)]
    pub force: Option<bool>,
    /// Why the checks are overridden (audited with their results).
    #[serde(default)]
    pub force_reason: Option<String>,
    /// Change control (docs/change-control.md): save as a draft (201 with the draft), released to nobody.
    #[serde(default)]
    pub draft: Option<bool>,
    /// Change control: release at this time (202 with the change request).
    #[serde(default)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Change control: admins only, a reason — released now past a review rule or a freeze.
    #[serde(default)]
    pub break_glass: Option<String>,
}

/// An existing object published as a version's payload.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// `s3://bucket/key`, `file:///path`, … inside the configured object store (the home
    /// region's, with several regions).
    pub url: String,
    /// Several regions (docs/regions.md): the same object's URL in other regions' stores,
    /// by region name (`{"us": "s3://imprint-us/external/ml/a.bin"}`). Each is checked as
    /// `url` is (inside that region's store, in the owner team's folder, the same bytes).
    #[serde(default)]
    pub locations: Option<BTreeMap<String, String>>,
}

impl PublishBody {
    fn into_input(mut self, control: &mut PublishControl) -> ApiResult<PublishInput> {
        *control = PublishControl {
            draft: self.draft.take().unwrap_or(false),
            at: self.at.take(),
            break_glass: self.break_glass.take(),
        };
        let payload = match (self.data, self.data_base64, self.object) {
            (Some(d), None, None) => Payload::Text(d),
            (None, None, Some(o)) => Payload::Object { url: o.url, locations: o.locations.unwrap_or_default() },
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
        let force = crate::payload::force(self.force.unwrap_or(false), self.force_reason)?;
        let rollout = crate::extract::rollout_request(self.rollout)?;
        Ok(PublishInput {
            force,
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
    /// RFC 3339: add it then (202, a change request the scheduler applies; docs/change-control.md).
    #[serde(default)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Admins: add it now past a review rule and a change freeze, with this reason (audited).
    #[serde(default)]
    pub break_glass: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<Version>,
    pub next: Option<String>,
}

/// Publish. `application/json` bodies are a `PublishBody`; any other content type is the
/// payload itself, with scopes, metadata and message in the query string
/// (`?scope=region=eu&meta.k=v&message=…&rollout=<plan>|none`).
#[utoipa::path(post, path = "/api/v1/topics/{topic}/versions", tag = "versions", params(("topic" = String, Path)),
    request_body(description = "JSON: a PublishBody (data, data_base64 or object). multipart/form-data: text parts message, scope (repeatable), meta.<key>, content_type, rollout, sha256, then the file part (last). Any other content type: the raw payload, streamed, with ?scope=, meta.<k>=, message=, rollout=, sha256= and the X-Imprint-Sha256 header",
        content((PublishBody = "application/json"), (Vec<u8> = "multipart/form-data"), (Vec<u8> = "application/octet-stream"))),
    responses((status = 201, body = Published, description = "published (with `draft: true`: the Draft)"),
              (status = 202, body = imprint_service::change_control::ChangeRequest, description = "the topic requires review, or `at` was given: a change request"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 423, body = ErrorBody, description = "change_frozen: inside a change-freeze window"),
              (status = 503, body = ErrorBody)))]
pub async fn publish(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    req: Request,
) -> ApiResult<Response> {
    let mut control = PublishControl::default();
    let input =
        crate::payload::publish_input(req, |body| parse_json::<PublishBody>(body)?.into_input(&mut control)).await?;
    // In its own task: a client that goes away mid-upload does not cancel the publish
    // half-way — it sees the body break off and cleans up (no version, no object).
    let task = tokio::spawn(async move { imprint.publish_controlled(&caller, &topic, input, control).await });
    let released = task.await.map_err(|e| Error::Internal(format!("publish task: {e}")))??;
    Ok(crate::api::change_control::released_response(released))
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
    let page = imprint.list_versions(&caller, &topic, parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
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
    Ok(Json(imprint.version(&caller, &topic, n).await?))
}

/// Where a version's object is (docs/regions.md): one row per region that holds it or
/// is still to get it (none for inline payloads and for versions from before regions).
#[derive(Serialize, ToSchema)]
pub struct VersionRegions {
    pub copies: Vec<imprint_service::model::ObjectCopy>,
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions/{n}/regions", tag = "versions",
    params(("topic" = String, Path), ("n" = u64, Path)),
    responses((status = 200, body = VersionRegions), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn version_regions(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    VersionPath(topic, n): VersionPath,
) -> ApiResult<Json<VersionRegions>> {
    // The version's own read rights (404 for a version that does not exist).
    imprint.version(&caller, &topic, n).await?;
    Ok(Json(VersionRegions { copies: imprint.version_copies(&caller, &topic, n).await? }))
}

/// The payload bytes, as the version's own content type (the one it was published with;
/// `application/octet-stream` when none was given), with `ETag: "<sha256>"`, a single
/// `Range` and `If-None-Match`. Payloads are served inert (`nosniff`, a sandboxing CSP,
/// `Content-Disposition: attachment` for types a browser would run).
#[utoipa::path(get, path = "/api/v1/topics/{topic}/versions/{n}/data", tag = "versions",
    params(("topic" = String, Path), ("n" = u64, Path),
           ("redirect" = Option<bool>, Query, description = "true: 307 to a presigned URL (S3 store with IMPRINT_PRESIGN=true)"),
           ("region" = Option<String>, Query, description = "the region whose copy to send (400: not configured; 404: no copy there yet)"),
           ("Range" = Option<String>, Header, description = "one byte range: bytes=a-b, bytes=a- or bytes=-n"),
           ("If-None-Match" = Option<String>, Header, description = "the ETag held: 304 if it is this payload's")),
    responses((status = 200, description = "the payload, in the version's own content type", body = Vec<u8>, content_type = "*/*",
               headers(("ETag" = String, description = "\"<sha256>\""), ("X-Imprint-Version" = u64),
                       ("Content-Length" = u64), ("Accept-Ranges" = String, description = "bytes"))),
              (status = 206, description = "the requested range of the payload, in the version's own content type",
               body = Vec<u8>, content_type = "*/*",
               headers(("Content-Range" = String, description = "bytes <first>-<last>/<size>"), ("ETag" = String))),
              (status = 304, description = "not modified: If-None-Match names this payload's ETag"),
              (status = 307, description = "?redirect=true on an S3 store with IMPRINT_PRESIGN=true: the payload is at the presigned URL in Location",
               headers(("Location" = String))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "version_rejected: the topic's checks rejected it (kept unreleased, never served)"),
              (status = 410, body = ErrorBody, description = "version_purged: retention purged the version's payload"),
              (status = 416, body = ErrorBody, description = "invalid_range; Content-Range: bytes */<size>"),
              (status = 503, body = ErrorBody)))]
pub async fn version_data(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    VersionPath(topic, n): VersionPath,
    ApiQuery(q): ApiQuery<DataQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let redirect = parse_bool(&q.redirect, "redirect")?;
    let p = match q.region.as_deref() {
        Some(region) => imprint.version_payload_in(&caller, &topic, n, region).await?,
        None => imprint.version_payload(&caller, &topic, n).await?,
    };
    let etag = format!("\"{}\"", p.sha256);
    let mut resp = crate::payload::payload_response(&imprint, p.clone(), &etag, None, &headers, redirect).await?;
    if let Some(r) = p.region.as_deref().and_then(|r| axum::http::HeaderValue::from_str(r).ok()) {
        resp.headers_mut().insert("X-Imprint-Region", r);
    }
    Ok(resp)
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
    let (versions, truncated) = imprint.retention_preview_bounded(&caller, &topic).await?;
    Ok(Json(RetentionList { versions, truncated }))
}

/// `?redirect=true`: answer 307 to a presigned URL (S3 store with `IMPRINT_PRESIGN=true`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataQuery {
    #[serde(default)]
    pub redirect: Option<String>,
    /// Which region's copy to send (docs/regions.md); default: the home region's.
    #[serde(default)]
    pub region: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/topics/{topic}/versions/{n}/scopes", tag = "versions",
    params(("topic" = String, Path), ("n" = u64, Path)), request_body = ScopeBody,
    responses((status = 201, body = Scope), (status = 200, body = Scope, description = "the version had this scope already"),
              (status = 202, body = ChangeRequest, description = "the topic requires review, or `at` was given: a change request"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody),
              (status = 423, body = ErrorBody, description = "a change freeze is in force")))]
pub async fn add_scope(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    VersionPath(topic, n): VersionPath,
    ApiJson(body): ApiJson<ScopeBody>,
) -> ApiResult<Response> {
    let selector = selector_json(&body.selector)?;
    let opts = ChangeOptions { at: body.at, break_glass: body.break_glass };
    match imprint.add_scope_controlled(&caller, &topic, n, selector, opts).await? {
        Changed::Done((scope, added)) => {
            Ok((if added { StatusCode::CREATED } else { StatusCode::OK }, Json(scope)).into_response())
        }
        Changed::Requested(cr) => Ok((StatusCode::ACCEPTED, Json(cr)).into_response()),
    }
}
