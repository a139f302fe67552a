//! Topics: create, list (search, unused), read and change a topic's settings.
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_limit, ApiJson, ApiQuery, Auth, TopicPath};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_service::model::Topic;
use imprint_service::Imprint;
use imprint_service::{NewTopic, TopicPatch};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(create_topic, list_topics)).routes(routes!(get_topic, patch_topic))
}

#[derive(Deserialize)]
pub struct TopicsQuery {
    q: Option<String>,
    owner: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    unused_days: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<Topic>,
    pub next: Option<String>,
}

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
    Ok(Json(imprint.topic(&caller, &topic).await?))
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
    Ok(Json(imprint.update_topic(&caller, &topic, patch).await?))
}
