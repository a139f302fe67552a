//! Webhooks (docs/webhooks.md): subscriptions to change events, secret rotation, the
//! delivery log and redelivery. Rights: admins for global subscriptions, a team's members
//! and tokens for the team's and its topics' (the service checks).
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_limit, ApiJson, ApiQuery, Auth, OptionalJson, PageQuery};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use imprint_service::webhooks::{Delivery, NewWebhook, Webhook, WebhookPatch};
use imprint_service::Imprint;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

/// `POST /api/v1/webhooks`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// Where events are POSTed: http(s), public addresses only unless `allow_private`.
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Only this topic's events.
    #[serde(default)]
    pub topic: Option<String>,
    /// Only the events of this team's topics. Neither topic nor team: every topic's (admins).
    #[serde(default)]
    pub team: Option<String>,
    /// Only these event types (`version.published`, `scope.added`, `pin.set`, `pin.removed`,
    /// `rollout.started|advanced|paused|resumed|completed|cancelled`, `topic.created|changed`);
    /// absent or empty: all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Deliveries may go to loopback, private and link-local addresses (admins only).
    #[serde(default)]
    pub allow_private: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// `PATCH /api/v1/webhooks/{id}`: what is given changes.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatchBody {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub allow_private: Option<bool>,
    pub enabled: Option<bool>,
}

/// `POST /api/v1/webhooks/{id}/rotate`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the previous secret keeps signing too (default 86400, at most 604800).
    pub previous_valid_secs: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
    pub next: Option<String>,
}

#[derive(Deserialize)]
pub struct DeliveryQuery {
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_id(id: &str, what: &str) -> ApiResult<i64> {
    id.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| ApiError::invalid(format!("{id:?} is not a {what} id")))
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = WebhookBody,
    responses((status = 201, body = Webhook, description = "created; `secret` is shown only here"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn create_webhook(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    ApiJson(b): ApiJson<WebhookBody, { 64 * 1024 }>,
) -> ApiResult<(StatusCode, Json<Webhook>)> {
    let new = NewWebhook {
        url: b.url,
        description: b.description,
        topic: b.topic,
        team: b.team,
        event_types: b.event_types,
        allow_private: b.allow_private,
        enabled: b.enabled,
    };
    Ok((StatusCode::CREATED, Json(imprint.create_webhook(&caller, new).await?)))
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = WebhookList, description = "the subscriptions the caller may manage, by id"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_webhooks(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<WebhookList>> {
    let page = imprint.webhooks(&caller, parse_limit(&q.limit)?, q.cursor.as_deref()).await?;
    Ok(Json(WebhookList { webhooks: page.items, next: page.next }))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = i64, Path)),
    responses((status = 200, body = Webhook), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_webhook(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(imprint.webhook(&caller, parse_id(&id, "webhook")?).await?))
}

#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = i64, Path)),
    request_body = WebhookPatchBody,
    responses((status = 200, body = Webhook), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_webhook(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<WebhookPatchBody, { 64 * 1024 }>,
) -> ApiResult<Json<Webhook>> {
    let patch = WebhookPatch {
        url: b.url,
        description: b.description,
        event_types: b.event_types,
        allow_private: b.allow_private,
        enabled: b.enabled,
    };
    Ok(Json(imprint.update_webhook(&caller, parse_id(&id, "webhook")?, patch).await?))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", params(("id" = i64, Path)),
    responses((status = 204, description = "deleted, with its queued deliveries"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    imprint.delete_webhook(&caller, parse_id(&id, "webhook")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate", tag = "webhooks", params(("id" = i64, Path)),
    request_body(content = Option<RotateBody>, description = "optional"),
    responses((status = 200, body = Webhook, description = "the new `secret`; the previous one signs too until `previous_secret_expires_at`"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rotate_secret(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<RotateBody>,
) -> ApiResult<Json<Webhook>> {
    let overlap = b.and_then(|b| b.previous_valid_secs).map(std::time::Duration::from_secs);
    Ok(Json(imprint.rotate_webhook_secret(&caller, parse_id(&id, "webhook")?, overlap).await?))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = i64, Path), ("state" = Option<String>, Query, description = "pending, delivered or failed"),
           ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = DeliveryList, description = "the delivery log, newest first"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deliveries(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    let id = parse_id(&id, "webhook")?;
    let page = imprint
        .webhook_deliveries(&caller, id, q.state.as_deref(), parse_limit(&q.limit)?, q.cursor.as_deref())
        .await?;
    Ok(Json(DeliveryList { deliveries: page.items, next: page.next }))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver", tag = "webhooks",
    params(("id" = i64, Path), ("delivery" = i64, Path)),
    responses((status = 200, body = Delivery, description = "pending again, with fresh retries"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn redeliver(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult<Json<Delivery>> {
    let (id, delivery) = (parse_id(&id, "webhook")?, parse_id(&delivery, "delivery")?);
    Ok(Json(imprint.redeliver(&caller, id, delivery).await?))
}
