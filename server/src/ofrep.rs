//! The OpenFeature Remote Evaluation Protocol (OFREP 0.3) under `/ofrep/v1`: a provider's
//! base URL is this server's (`http://imprint:3000`). `POST /ofrep/v1/evaluate/flags/{key}`
//! evaluates one flag, `POST /ofrep/v1/evaluate/flags` every flag the caller may read
//! (with an `ETag`; `If-None-Match` → 304), and `GET /ofrep/v1/events` is the
//! server-sent event stream the bulk answer points to (`eventStreams`): a
//! `refetchEvaluation` message whenever a flag the caller may read changes. What a flag
//! evaluates to is decided by the service (`imprint_service::ofrep`); this file holds the
//! protocol's shapes. Tokens are the API's (`Authorization: Bearer …`; polls' rules).
use crate::error::ApiError;
use crate::extract::{ClientAddr, Credential, PollAuth};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use imprint_service::ofrep::{OfrepContext, OfrepErrorCode, OfrepResult};
use imprint_service::{Caller, Error, Imprint};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest evaluation request body (a context is at most 32 labels of 4096 bytes).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Event streams open at once on this server, and how long one lasts (providers reconnect).
pub const MAX_STREAMS: usize = 1000;
const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// Changes within this window are one event (a rollout stage is several).
const COALESCE: Duration = Duration::from_millis(250);
/// What a stream is counted as among the requests held open.
const STREAM_BYTES: usize = 8 * 1024;
/// The event stream's path, as the bulk answer gives it.
pub const EVENTS_PATH: &str = "/ofrep/v1/events";
/// Seconds of client inactivity after which a provider closes the stream (OFREP's default).
const INACTIVITY_DELAY_S: u64 = 120;

static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(evaluate_flag)).routes(routes!(evaluate_flags)).routes(routes!(events))
}

/// An evaluation request: the evaluation context. `targetingKey` is the consumer
/// instance; every other attribute (a string, number or boolean) is a consumer label.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluationRequest {
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"targetingKey": "checkout-7f9c", "region": "eu-west-1"}))]
    pub context: Option<serde_json::Value>,
}

/// A flag evaluated. `value` is absent when nothing is released to the context's labels
/// (reason `DISABLED`: the provider uses the code's default).
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationSuccess {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<serde_json::Value>,
    /// `STATIC` (the release to every consumer), `TARGETING_MATCH` (a scope or pin whose
    /// selector matched the labels) or `DISABLED` (nothing released to these labels).
    pub reason: &'static str,
    /// `v<n>`: the version resolved (`none` when nothing is).
    pub variant: String,
    /// `topic`, `version`, `pinned` (a pin decided it).
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<&'static str, serde_json::Value>,
}

/// A flag that could not be evaluated (404 `FLAG_NOT_FOUND`, 400 otherwise).
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationFailure {
    pub key: String,
    /// `FLAG_NOT_FOUND`, `PARSE_ERROR`, `INVALID_CONTEXT` or `GENERAL`.
    #[serde(rename = "errorCode")]
    pub error_code: &'static str,
    #[serde(rename = "errorDetails")]
    pub error_details: String,
}

/// Every flag the caller may read, each evaluated or failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkEvaluationSuccess {
    #[schema(value_type = Vec<Object>)]
    pub flags: Vec<serde_json::Value>,
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<&'static str, serde_json::Value>,
    #[serde(rename = "eventStreams")]
    pub event_streams: Vec<EventStream>,
}

/// Where a provider follows changes: this server's `GET /ofrep/v1/events` (its origin is
/// the provider's base URL).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventStream {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub endpoint: EventStreamEndpoint,
    #[serde(rename = "inactivityDelaySec")]
    pub inactivity_delay_sec: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventStreamEndpoint {
    #[serde(rename = "requestUri")]
    pub request_uri: &'static str,
}

/// A whole request refused (400: its body or context is invalid).
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkEvaluationFailure {
    #[serde(rename = "errorCode")]
    pub error_code: &'static str,
    #[serde(rename = "errorDetails")]
    pub error_details: String,
}

/// 5xx: the server could not evaluate (storage down, too busy).
#[derive(Debug, Serialize, ToSchema)]
pub struct GeneralErrorResponse {
    #[serde(rename = "errorDetails")]
    pub error_details: String,
}

/// A service error the protocol gives no shape of its own (401, 403, 429) as the API's
/// error body; a 5xx in OFREP's `{"errorDetails"}` (with the API's headers, Retry-After).
fn service_error(e: Error) -> Response {
    let details = e.public_message();
    let mut resp = ApiError(e).into_response();
    if resp.status().is_server_error() {
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = serde_json::to_vec(&GeneralErrorResponse { error_details: details }).unwrap_or_default();
        resp = Response::from_parts(parts, Body::from(body));
    }
    resp
}

/// The request's context, or the protocol's 400 (`PARSE_ERROR`, `INVALID_CONTEXT`) as
/// `(code, details)`; a body over `MAX_REQUEST_BYTES` is 413.
async fn read_context(body: Body) -> Result<OfrepContext, (StatusCode, OfrepErrorCode, String)> {
    let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES).await.map_err(|_| {
        let details = format!("an evaluation request has at most {MAX_REQUEST_BYTES} bytes");
        (StatusCode::PAYLOAD_TOO_LARGE, OfrepErrorCode::General, details)
    })?;
    let req: EvaluationRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        EvaluationRequest { context: None }
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            let details = format!("the body must be JSON {{\"context\": {{\"targetingKey\": …, …}}}}: {e}");
            (StatusCode::BAD_REQUEST, OfrepErrorCode::ParseError, details)
        })?
    };
    OfrepContext::parse(req.context.as_ref())
        .map_err(|details| (StatusCode::BAD_REQUEST, OfrepErrorCode::InvalidContext, details))
}

fn success(e: imprint_service::ofrep::OfrepEvaluation) -> EvaluationSuccess {
    let mut metadata = BTreeMap::from([("topic", serde_json::json!(e.topic)), ("pinned", serde_json::json!(e.pinned))]);
    if let Some(v) = e.version {
        metadata.insert("version", serde_json::json!(v));
    }
    EvaluationSuccess { variant: e.variant(), key: e.key, value: e.value, reason: e.reason.as_str(), metadata }
}

fn failure(f: imprint_service::ofrep::OfrepFailure) -> EvaluationFailure {
    EvaluationFailure { key: f.key, error_code: f.code.as_str(), error_details: f.details }
}

/// Evaluates one flag for the request's context: the resolved version's JSON payload (or
/// its bound field) as the value, `v<n>` as the variant. A flag the caller may not read
/// is not found, like one that does not exist. The evaluation is recorded in the consumer
/// audit under the context's `targetingKey`.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "openfeature",
    params(("key" = String, Path, description = "the flag key (a topic's ofrep.flag_key)")),
    request_body = EvaluationRequest,
    responses((status = 200, body = EvaluationSuccess),
              (status = 400, body = EvaluationFailure, description = "PARSE_ERROR (the body, or a payload that is not JSON), INVALID_CONTEXT, GENERAL (e.g. a payload too big for a flag)"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = EvaluationFailure, description = "FLAG_NOT_FOUND"),
              (status = 413, body = EvaluationFailure),
              (status = 500, body = GeneralErrorResponse), (status = 503, body = GeneralErrorResponse)))]
pub async fn evaluate_flag(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    ClientAddr(client): ClientAddr,
    Path(key): Path<String>,
    body: Body,
) -> Response {
    let ctx = match read_context(body).await {
        Ok(c) => c,
        Err((status, code, details)) => {
            return (status, Json(EvaluationFailure { key, error_code: code.as_str(), error_details: details }))
                .into_response()
        }
    };
    match imprint.ofrep_evaluate(&caller, client, &ctx, &key).await {
        Err(e) => service_error(e),
        Ok(Ok(e)) => Json(success(e)).into_response(),
        Ok(Err(f)) => {
            let status =
                if f.code == OfrepErrorCode::FlagNotFound { StatusCode::NOT_FOUND } else { StatusCode::BAD_REQUEST };
            (status, Json(failure(f))).into_response()
        }
    }
}

/// The ETag of a bulk answer: a digest of its flags (so it changes exactly when an
/// evaluation does).
fn etag_of(flags: &[serde_json::Value]) -> String {
    let bytes = serde_json::to_vec(flags).unwrap_or_default();
    format!("\"{}\"", &hex::encode(sha2::Sha256::digest(&bytes))[..32])
}

/// Whether `If-None-Match` names this ETag (or is `*`); weak tags compare alike.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    })
}

/// Evaluates every flag the caller may read (restricted topics only with a token allowed
/// on them), sorted by key, at most 1000. Answers with an `ETag`; a request whose
/// `If-None-Match` names it gets 304. `eventStreams` points to `GET /ofrep/v1/events`.
/// The SSE re-fetch parameters (`flagConfigEtag`, `flagConfigLastModified`) are accepted
/// and not needed: every answer is evaluated from the current state.
#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "openfeature",
    params(("If-None-Match" = Option<String>, Header, description = "the ETag of a previous answer: 304 if unchanged"),
           ("flagConfigEtag" = Option<String>, Query, description = "from an event; accepted, not needed"),
           ("flagConfigLastModified" = Option<String>, Query, description = "from an event; accepted, not needed")),
    request_body = EvaluationRequest,
    responses((status = 200, body = BulkEvaluationSuccess, headers(("ETag" = String))),
              (status = 304, description = "not modified: If-None-Match names the current ETag", headers(("ETag" = String))),
              (status = 400, body = BulkEvaluationFailure, description = "PARSE_ERROR or INVALID_CONTEXT"),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 413, body = BulkEvaluationFailure),
              (status = 500, body = GeneralErrorResponse), (status = 503, body = GeneralErrorResponse)))]
pub async fn evaluate_flags(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ctx = match read_context(body).await {
        Ok(c) => c,
        Err((status, code, details)) => {
            return (status, Json(BulkEvaluationFailure { error_code: code.as_str(), error_details: details }))
                .into_response()
        }
    };
    let results: Vec<OfrepResult> = match imprint.ofrep_evaluate_all(&caller, client, &ctx).await {
        Ok(r) => r,
        Err(e) => return service_error(e),
    };
    let flags: Vec<serde_json::Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(e) => serde_json::to_value(success(e)),
            Err(f) => serde_json::to_value(failure(f)),
        })
        .map(|v| v.unwrap_or_default())
        .collect();
    let etag = etag_of(&flags);
    let etag_header = HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    if none_match(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_header)]).into_response();
    }
    let body = BulkEvaluationSuccess {
        metadata: BTreeMap::from([("flags", serde_json::json!(flags.len()))]),
        flags,
        event_streams: vec![EventStream {
            kind: "sse",
            endpoint: EventStreamEndpoint { request_uri: EVENTS_PATH },
            inactivity_delay_sec: INACTIVITY_DELAY_S,
        }],
    };
    ([(header::ETAG, etag_header)], Json(body)).into_response()
}

struct StreamSlot;
impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an open stream keeps: who it is for, its credential (rechecked on revocations)
/// and its places.
struct Held {
    imprint: Imprint,
    caller: Caller,
    credential: Option<String>,
    _slot: StreamSlot,
    _place: imprint_service::long_polls::LongPollPlace,
}

/// Server-sent events: `event: message`, `data: {"type": "refetchEvaluation",
/// "lastModified": <unix s>}` whenever a flag the caller may read changes (publishes,
/// scopes, pins, rollout stages, settings); the provider then evaluates again. Bounded:
/// 1000 streams per server (counted among the requests held open), each for at most 10
/// minutes (providers reconnect), ended when the server drains or the token is revoked.
#[utoipa::path(get, path = "/ofrep/v1/events", tag = "openfeature",
    responses((status = 200, description = "text/event-stream of refetchEvaluation messages", content_type = "text/event-stream", body = String),
              (status = 401, body = crate::error::ErrorBody), (status = 503, body = GeneralErrorResponse)))]
pub async fn events(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    ClientAddr(client): ClientAddr,
    Credential(credential): Credential,
) -> Response {
    if let Err(e) = imprint.ofrep_require_follower(&caller) {
        return service_error(e);
    }
    let busy = || {
        service_error(Error::TooManyStreams(
            "this server holds as many open event streams as it may; poll the bulk evaluation instead".into(),
        ))
    };
    if OPEN_STREAMS.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
        return busy();
    }
    let slot = StreamSlot;
    let anonymous = matches!(caller, Caller::Anonymous).then_some(client).flatten();
    let Some(place) = imprint.long_poll_place(STREAM_BYTES, anonymous) else { return busy() };
    let changes = imprint.state().changes();
    let draining = imprint.draining();
    let revoked = imprint.revocations();
    let deadline = tokio::time::Instant::now() + MAX_LIFETIME;
    let held = Held { imprint, caller, credential, _slot: slot, _place: place };
    let stream = futures::stream::unfold(
        (changes, draining, revoked, held, 0u64),
        move |(mut changes, mut draining, mut revoked, held, id)| async move {
            loop {
                if *draining.borrow() {
                    return None;
                }
                let first = tokio::select! {
                    r = changes.recv() => r,
                    _ = draining.changed() => return None,
                    _ = tokio::time::sleep_until(deadline) => return None,
                    _ = revoked.changed() => {
                        held.imprint.recheck_credential(held.credential.as_deref()).ok()?;
                        continue;
                    }
                };
                let relevant = match first {
                    Ok(names) => held.imprint.ofrep_flags_among(&held.caller, &names),
                    // Fell behind: anything may have changed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                if !relevant {
                    continue;
                }
                tokio::time::sleep(COALESCE).await;
                while changes.try_recv().is_ok() {}
                let data = serde_json::json!({
                    "type": "refetchEvaluation",
                    "lastModified": held.imprint.now().timestamp(),
                })
                .to_string();
                let event = Event::default().event("message").id((id + 1).to_string()).data(data);
                return Some((Ok::<_, std::convert::Infallible>(event), (changes, draining, revoked, held, id + 1)));
            }
        },
    );
    Sse::new(stream.boxed()).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
