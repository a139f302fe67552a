//! What relays call (docs/agent.md "Relay mode"; the rules in `imprint_service::relay`):
//! the batch poll, the batched downstream reports, and the payload download for a group.
//! All three need a relay token; every group and report is authorized as the downstream
//! consumer's own token.
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_labels, ApiJson, ApiQuery, PollAuth, VersionPath};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use imprint_protocol::{
    RelayPollRequest, RelayPollResponse, RelayReports, RelayReportsAnswer, DOWNSTREAM_TOKEN_HEADER,
};
use imprint_service::relay::RelayPollAnswer;
use imprint_service::{Error, Imprint};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest relay poll or report batch: a thousand groups of many topics fit.
pub const MAX_RELAY_BODY_BYTES: usize = 4 * 1024 * 1024;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(relay_poll)).routes(routes!(relay_reports)).routes(routes!(relay_data))
}

/// One long poll for every downstream group of a relay: each group (labels + the
/// downstream token) is authorized and resolved as that consumer; held until a group's
/// resolution differs from the one the relay holds (or a held topic has nothing to give,
/// or a group's token is refused), at most `wait_ms`.
#[utoipa::path(post, path = "/api/v1/relay/poll", tag = "relays", request_body = RelayPollRequest,
    responses((status = 200, body = RelayPollResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn relay_poll(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    ApiJson(req): ApiJson<RelayPollRequest, MAX_RELAY_BODY_BYTES>,
) -> ApiResult<Json<RelayPollAnswer>> {
    Ok(Json(imprint.relay_poll(&caller, req).await?))
}

/// Downstream consumers' reports, batched by a relay: recorded in the consumer audit under
/// each consumer's own instance and labels, as its own token, with `relayed_by`.
#[utoipa::path(post, path = "/api/v1/relay/reports", tag = "relays", request_body = RelayReports,
    responses((status = 200, body = RelayReportsAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn relay_reports(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    ApiJson(req): ApiJson<RelayReports, MAX_RELAY_BODY_BYTES>,
) -> ApiResult<Json<RelayReportsAnswer>> {
    Ok(Json(imprint.relay_reports(&caller, req).await?))
}

#[derive(Deserialize)]
pub struct RelayDataQuery {
    labels: Option<String>,
}

/// A version's payload for a group: served only when the group's labels, as its
/// downstream token (header `X-Imprint-Downstream-Token`; none: anonymous), resolve to
/// that version now. Answered like `…/versions/{n}/data` (`Range`, `If-None-Match`).
#[utoipa::path(get, path = "/api/v1/relay/topics/{topic}/versions/{n}/data", tag = "relays",
    params(("topic" = String, Path), ("n" = u64, Path),
           ("labels" = Option<String>, Query, description = "the group's labels: region=eu-west-1,app=checkout"),
           ("X-Imprint-Downstream-Token" = Option<String>, Header, description = "the group's downstream token"),
           ("Range" = Option<String>, Header, description = "one byte range: bytes=a-b, bytes=a- or bytes=-n")),
    responses((status = 200, description = "the payload, in the version's own content type", body = Vec<u8>,
               content_type = "*/*",
               headers(("ETag" = String, description = "\"<sha256>\""), ("X-Imprint-Version" = u64),
                       ("Content-Length" = u64), ("Accept-Ranges" = String, description = "bytes"))),
              (status = 206, description = "the requested range of the payload", body = Vec<u8>, content_type = "*/*",
               headers(("Content-Range" = String, description = "bytes <first>-<last>/<size>"), ("ETag" = String))),
              (status = 304, description = "not modified"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 410, body = ErrorBody), (status = 416, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn relay_data(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    VersionPath(topic, n): VersionPath,
    ApiQuery(q): ApiQuery<RelayDataQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let labels = parse_labels(&q.labels)?;
    let token = match headers.get(DOWNSTREAM_TOKEN_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Error::invalid(format!("{DOWNSTREAM_TOKEN_HEADER} must be a token")))?
                .to_owned(),
        ),
    };
    let p = imprint.relay_payload(&caller, token.as_deref(), &topic, n, &labels).await?;
    let etag = format!("\"{}\"", p.sha256);
    crate::payload::payload_response(&imprint, p, &etag, None, &headers, false).await
}
