//! Rollouts: start one (stages inline or a named plan), list and read them, and the
//! actions on a running one (pause, resume, advance, complete, cancel with rollback).
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{
    parse_limit, parse_plan, ActionPath, ApiJson, ApiQuery, Auth, OptionalJson, PageQuery, RolloutPath, TopicPath,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_domain::{RolloutAction, VersionNumber};
use imprint_service::change_control::{ChangeOptions, ChangeRequest, Changed};
use imprint_service::Imprint;
use imprint_service::{PlanChoice, RolloutInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new()
        .routes(routes!(start_rollout, list_rollouts))
        .routes(routes!(get_rollout))
        .routes(routes!(rollout_action))
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
    /// RFC 3339: start it then (202, a change request the scheduler applies; docs/change-control.md).
    #[serde(default)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Admins: start it now past a review rule and a change freeze, with this reason (audited).
    #[serde(default)]
    pub break_glass: Option<String>,
}

/// `POST …/rollouts/{id}/{action}` (optional body).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutActionBody {
    /// Cancel only: pin each reached stage's selector to what it resolved to before the rollout.
    #[serde(default)]
    pub rollback: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutInfo>,
    pub next: Option<String>,
}

/// Starts a rollout of the topic's newest version. Stage 1's scope is added at once.
#[utoipa::path(post, path = "/api/v1/topics/{topic}/rollouts", tag = "rollouts", params(("topic" = String, Path)),
    request_body = RolloutBody,
    responses((status = 201, body = RolloutInfo),
              (status = 202, body = ChangeRequest, description = "the topic requires review, or `at` was given: a change request"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 423, body = ErrorBody, description = "a change freeze is in force")))]
pub async fn start_rollout(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
    ApiJson(body): ApiJson<RolloutBody>,
) -> ApiResult<Response> {
    let version = VersionNumber::new(body.version).map_err(|e| ApiError::invalid(e.to_string()))?;
    let choice = match (body.stages.filter(|s| !s.is_null()), body.plan) {
        (Some(stages), None) => PlanChoice::Inline(parse_plan(&json!({"stages": stages}))?),
        (None, Some(name)) => PlanChoice::Named(name),
        _ => return Err(ApiError::invalid("give either stages or the name of a plan")),
    };
    let opts = ChangeOptions { at: body.at, break_glass: body.break_glass };
    match imprint.start_rollout_controlled(&caller, &topic, version, choice, opts).await? {
        Changed::Done(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Changed::Requested(cr) => Ok((StatusCode::ACCEPTED, Json(cr)).into_response()),
    }
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
    let page = imprint.rollouts(&caller, &topic, parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
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
    Ok(Json(imprint.rollout(&caller, &topic, id).await?))
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
    let action: RolloutAction =
        action.parse().map_err(|e: imprint_domain::StageTextError| ApiError::invalid(e.to_string()))?;
    let rollback = match body.and_then(|b| b.rollback) {
        None => false,
        Some(b) if action == RolloutAction::Cancel => b,
        Some(_) => return Err(ApiError::invalid("rollback applies to cancel only")),
    };
    Ok(Json(imprint.rollout_action(&caller, &topic, id, action, rollback).await?))
}
