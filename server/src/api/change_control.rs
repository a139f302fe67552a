//! Change control (docs/change-control.md): drafts (`/topics/{t}/drafts…`), a topic's
//! review rule (`/topics/{t}/review`), change requests (`/change-requests…`) and change
//! freezes (`/freezes…`, `/topics/{t}/freezes`).
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{selector_json, ApiJson, Auth, DraftPath, TopicPath};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use imprint_domain::{Selector, TopicName};
use imprint_service::change_control::{
    ChangeRequest, Draft, DraftInput, Freeze, NewFreeze, ReleaseInput, Released, ReviewRule, ScopeDiff,
};
use imprint_service::model::Published;
use imprint_service::{Error, Imprint};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new()
        .routes(routes!(create_draft, list_drafts))
        .routes(routes!(get_draft, replace_draft, discard_draft))
        .routes(routes!(draft_diff))
        .routes(routes!(release_draft))
        .routes(routes!(get_review, set_review, delete_review))
        .routes(routes!(list_change_requests))
        .routes(routes!(get_change_request))
        .routes(routes!(approve_change_request))
        .routes(routes!(reject_change_request))
        .routes(routes!(withdraw_change_request))
        .routes(routes!(list_freezes, create_freeze))
        .routes(routes!(delete_freeze))
        .routes(routes!(topic_freezes))
}

/// The answer to a publish or a release: 201 with the version (or the draft), 202 with the
/// change request it became.
pub fn released_response(r: Released) -> Response {
    match r {
        Released::Published(p) => (StatusCode::CREATED, Json(p)).into_response(),
        Released::Draft(d) => (StatusCode::CREATED, Json(d)).into_response(),
        Released::Requested(c) => (StatusCode::ACCEPTED, Json(c)).into_response(),
    }
}

/// A draft's payload (new, or replacing its payload).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftBody {
    /// The payload as UTF-8 text (give this or `data_base64`).
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub data_base64: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

impl DraftBody {
    fn into_input(self) -> ApiResult<DraftInput> {
        let payload = match (self.data, self.data_base64) {
            (Some(d), None) => bytes::Bytes::from(d),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| ApiError::invalid(format!("data_base64 is not valid base64: {e}")))?
                .into(),
            (None, None) => return Err(ApiError::invalid("the payload is missing: send data or data_base64")),
            _ => return Err(ApiError::invalid("send data or data_base64, not both")),
        };
        Ok(DraftInput {
            payload,
            content_type: self.content_type,
            metadata: self.metadata.unwrap_or_default(),
            message: self.message.unwrap_or_default(),
            sha256: self.sha256,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct DraftList {
    pub drafts: Vec<Draft>,
}

#[utoipa::path(post, path = "/api/v1/topics/{topic}/drafts", tag = "change control", params(("topic" = String, Path)),
    request_body = DraftBody,
    responses((status = 201, body = Draft), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn create_draft(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiJson(body): ApiJson<DraftBody>,
) -> ApiResult<Response> {
    let d = imprint.create_draft(&caller, &topic, body.into_input()?).await?;
    Ok((StatusCode::CREATED, Json(d)).into_response())
}

/// The topic's open drafts (its writers only: a draft is released to nobody).
#[utoipa::path(get, path = "/api/v1/topics/{topic}/drafts", tag = "change control", params(("topic" = String, Path)),
    responses((status = 200, body = DraftList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn list_drafts(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
) -> ApiResult<Json<DraftList>> {
    Ok(Json(DraftList { drafts: imprint.drafts(&caller, &topic).await? }))
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/drafts/{id}", tag = "change control",
    params(("topic" = String, Path), ("id" = i64, Path)),
    responses((status = 200, body = Draft), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_draft(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    DraftPath(topic, id): DraftPath,
) -> ApiResult<Json<Draft>> {
    Ok(Json(imprint.draft(&caller, &topic, id).await?))
}

/// Replaces an open draft's payload (checked and validated again; approvals of its open
/// change request are reset).
#[utoipa::path(put, path = "/api/v1/topics/{topic}/drafts/{id}", tag = "change control",
    params(("topic" = String, Path), ("id" = i64, Path)), request_body = DraftBody,
    responses((status = 200, body = Draft), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn replace_draft(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    DraftPath(topic, id): DraftPath,
    ApiJson(body): ApiJson<DraftBody>,
) -> ApiResult<Json<Draft>> {
    Ok(Json(imprint.replace_draft(&caller, &topic, id, body.into_input()?).await?))
}

/// Discards an open draft (its payload goes; its open change requests are withdrawn).
#[utoipa::path(delete, path = "/api/v1/topics/{topic}/drafts/{id}", tag = "change control",
    params(("topic" = String, Path), ("id" = i64, Path)),
    responses((status = 200, body = Draft), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn discard_draft(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    DraftPath(topic, id): DraftPath,
) -> ApiResult<Json<Draft>> {
    Ok(Json(imprint.discard_draft(&caller, &topic, id).await?))
}

#[derive(Serialize, ToSchema)]
pub struct DraftDiff {
    pub draft: Draft,
    pub scopes: Vec<ScopeDiff>,
}

/// The draft against what each scope's labels resolve to now: `?scope=region=eu` (repeatable;
/// `key=value,key=value` per scope; none: everyone, `{}`).
#[utoipa::path(get, path = "/api/v1/topics/{topic}/drafts/{id}/diff", tag = "change control",
    params(("topic" = String, Path), ("id" = i64, Path), ("scope" = Option<String>, Query, description = "repeatable: region=eu,app=x")),
    responses((status = 200, body = DraftDiff), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn draft_diff(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    DraftPath(topic, id): DraftPath,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<DraftDiff>> {
    let mut scopes = Vec::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        if k != "scope" {
            return Err(ApiError::invalid(format!("unknown query parameter {k:?} (scope= is the only one)")));
        }
        scopes.push(Selector::parse(&v).map_err(Error::from)?);
    }
    let draft = imprint.draft(&caller, &topic, id).await?;
    let scopes = imprint.draft_diff(&caller, &topic, id, scopes).await?;
    Ok(Json(DraftDiff { draft, scopes }))
}

/// How a draft is released.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// Selectors it is released to; default `[{}]` (everyone), or none with a rollout.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub scopes: Option<Vec<Value>>,
    /// As a publish's `rollout`.
    #[serde(default, deserialize_with = "imprint_service::double_option")]
    #[schema(value_type = Option<Object>)]
    pub rollout: Option<Option<Value>>,
    /// The version's message (default: the draft's).
    #[serde(default)]
    pub message: Option<String>,
    /// Apply at this time (the scheduler does; approvals must be complete by then).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// Admins only, a reason: released now past a review rule or a freeze (audited, flagged,
    /// a `change.break_glass` event).
    #[serde(default)]
    pub break_glass: Option<String>,
}

/// Releases a draft: 201 with the new version, or 202 with the change request it became
/// (the topic requires review, or `at` was given).
#[utoipa::path(post, path = "/api/v1/topics/{topic}/drafts/{id}/release", tag = "change control",
    params(("topic" = String, Path), ("id" = i64, Path)), request_body = ReleaseBody,
    responses((status = 201, body = Published), (status = 202, body = ChangeRequest),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 423, body = ErrorBody, description = "change_frozen: inside a change-freeze window")))]
pub async fn release_draft(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    DraftPath(topic, id): DraftPath,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> ApiResult<Response> {
    let scopes = body.scopes.map(|items| items.iter().map(selector_json).collect::<ApiResult<Vec<_>>>()).transpose()?;
    let input = ReleaseInput {
        scopes,
        rollout: crate::extract::rollout_request(body.rollout)?,
        message: body.message,
        at: body.at,
        break_glass: body.break_glass,
    };
    Ok(released_response(imprint.release_draft(&caller, &topic, id, input).await?))
}

/// A topic's review rule; `null`: releases need no approval.
#[derive(Serialize, ToSchema)]
pub struct ReviewAnswer {
    pub review: Option<ReviewRule>,
}

#[utoipa::path(get, path = "/api/v1/topics/{topic}/review", tag = "change control", params(("topic" = String, Path)),
    responses((status = 200, body = ReviewAnswer), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_review(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
) -> ApiResult<Json<ReviewAnswer>> {
    Ok(Json(ReviewAnswer { review: imprint.review_rule(&caller, &topic).await? }))
}

/// Sets the review rule (admins): `{"required_approvals": 2, "approvers": {"team": "sre"}}`
/// or `{"approvers": {"users": ["ann", "bob"]}}`.
#[utoipa::path(put, path = "/api/v1/topics/{topic}/review", tag = "change control", params(("topic" = String, Path)),
    request_body = ReviewRule,
    responses((status = 200, body = ReviewAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_review(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiJson(body): ApiJson<ReviewRule>,
) -> ApiResult<Json<ReviewAnswer>> {
    Ok(Json(ReviewAnswer { review: imprint.set_review_rule(&caller, &topic, Some(body)).await? }))
}

#[utoipa::path(delete, path = "/api/v1/topics/{topic}/review", tag = "change control", params(("topic" = String, Path)),
    responses((status = 200, body = ReviewAnswer), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn delete_review(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
) -> ApiResult<Json<ReviewAnswer>> {
    Ok(Json(ReviewAnswer { review: imprint.set_review_rule(&caller, &topic, None).await? }))
}

#[derive(Serialize, ToSchema)]
pub struct ChangeRequestList {
    pub change_requests: Vec<ChangeRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestQuery {
    #[serde(default)]
    pub topic: Option<String>,
    /// Comma-separated states.
    #[serde(default)]
    pub state: Option<String>,
}

/// Change requests the caller may see (its topics' writers and approvers), newest first (200).
#[utoipa::path(get, path = "/api/v1/change-requests", tag = "change control",
    params(("topic" = Option<String>, Query), ("state" = Option<String>, Query, description = "comma-separated: pending,approved,…")),
    responses((status = 200, body = ChangeRequestList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_change_requests(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<RequestQuery>,
) -> ApiResult<Json<ChangeRequestList>> {
    const STATES: [&str; 7] = ["pending", "approved", "applied", "rejected", "withdrawn", "expired", "failed"];
    let topic = q.topic.as_deref().map(TopicName::parse).transpose().map_err(Error::from)?;
    let mut states = Vec::new();
    for s in q.state.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !STATES.contains(&s) {
            return Err(ApiError::invalid(format!("{s:?} is not a state ({})", STATES.join(", "))));
        }
        states.push(s.to_owned());
    }
    Ok(Json(ChangeRequestList { change_requests: imprint.change_requests(&caller, topic.as_ref(), states).await? }))
}

fn request_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid(format!("{id:?} is not a change request id")))
}

#[utoipa::path(get, path = "/api/v1/change-requests/{id}", tag = "change control", params(("id" = i64, Path)),
    responses((status = 200, body = ChangeRequest), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_change_request(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ChangeRequest>> {
    Ok(Json(imprint.change_request(&caller, request_id(&id)?).await?))
}

/// Approves (an approver of the topic, not the author). The approval that completes the
/// count applies the change now (or at its `at`), once, as its author.
#[utoipa::path(post, path = "/api/v1/change-requests/{id}/approve", tag = "change control", params(("id" = i64, Path)),
    responses((status = 200, body = ChangeRequest), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve_change_request(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ChangeRequest>> {
    Ok(Json(imprint.approve_change(&caller, request_id(&id)?).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub reason: String,
}

/// Rejects with a reason (any approver): nothing changes, the draft stays open.
#[utoipa::path(post, path = "/api/v1/change-requests/{id}/reject", tag = "change control", params(("id" = i64, Path)),
    request_body = RejectBody,
    responses((status = 200, body = ChangeRequest), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reject_change_request(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectBody>,
) -> ApiResult<Json<ChangeRequest>> {
    Ok(Json(imprint.reject_change(&caller, request_id(&id)?, &body.reason).await?))
}

/// Withdraws (the author or an admin) a pending or scheduled request.
#[utoipa::path(post, path = "/api/v1/change-requests/{id}/withdraw", tag = "change control", params(("id" = i64, Path)),
    responses((status = 200, body = ChangeRequest), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn withdraw_change_request(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<ChangeRequest>> {
    Ok(Json(imprint.withdraw_change(&caller, request_id(&id)?).await?))
}

#[derive(Serialize, ToSchema)]
pub struct FreezeList {
    pub freezes: Vec<Freeze>,
}

#[utoipa::path(get, path = "/api/v1/freezes", tag = "change control",
    responses((status = 200, body = FreezeList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_freezes(State(imprint): State<Imprint>, Auth(caller): Auth) -> ApiResult<Json<FreezeList>> {
    Ok(Json(FreezeList { freezes: imprint.freezes(&caller).await? }))
}

/// Creates a freeze window: `{"name", "from", "to"}` (one-off, UTC instants) or
/// `{"name", "recurring": {"days": ["sat","sun"], "from": "00:00", "to": "23:59", "tz": "Europe/Berlin"}}`;
/// with `team` or `topic` it holds only those topics (else all: admins only).
#[utoipa::path(post, path = "/api/v1/freezes", tag = "change control", request_body = NewFreeze,
    responses((status = 201, body = Freeze), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_freeze(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    ApiJson(body): ApiJson<NewFreeze>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(imprint.create_freeze(&caller, body).await?)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/freezes/{id}", tag = "change control", params(("id" = i64, Path)),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_freeze(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = id.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| ApiError::invalid("not a freeze id"))?;
    imprint.delete_freeze(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The freeze windows in force now for a topic (global, its team's, its own).
#[utoipa::path(get, path = "/api/v1/topics/{topic}/freezes", tag = "change control", params(("topic" = String, Path)),
    responses((status = 200, body = FreezeList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn topic_freezes(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
) -> ApiResult<Json<FreezeList>> {
    Ok(Json(FreezeList { freezes: imprint.active_freezes(&caller, &topic).await? }))
}
