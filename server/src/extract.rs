//! Typed request parts: who is calling, path parameters parsed into their newtypes, JSON
//! bodies into serde types (unknown fields refused), query strings. Every failure is an
//! API error (`{"error": {...}}`), never axum's plain-text rejection. Also the query-string
//! values and JSON parts (selectors, plans) several endpoints share.
use crate::error::{ApiError, ApiResult};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use imprint_domain::{Labels, Plan, Selector, TopicName, VersionNumber};
use imprint_service::{Caller, Error, Imprint};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// Largest request body accepted (base64 of the largest inline payload, with room to spare).
pub const MAX_BODY_BYTES: usize = 12 * 1024 * 1024;
/// Largest poll body: thousands of topics fit; a poll is never a payload.
pub const MAX_POLL_BODY_BYTES: usize = 256 * 1024;

/// Who is calling: `Authorization: Bearer …`, anonymous without the header. A header
/// that is present but wrong is a 401, on reads as on writes.
pub struct Auth(pub Caller);

impl FromRequestParts<Imprint> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, imprint: &Imprint) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Ok(Auth(imprint.authenticate(token.as_deref()).await?))
    }
}

/// Who is polling: like `Auth`, but a token looked up in the last few seconds is not
/// looked up again (consumers poll often; a revoked token stops working within seconds).
pub struct PollAuth(pub Caller);

impl FromRequestParts<Imprint> for PollAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, imprint: &Imprint) -> Result<Self, Self::Rejection> {
        match bearer(parts)? {
            None => Ok(PollAuth(Caller::Anonymous)),
            Some(token) => Ok(PollAuth(imprint.authenticate_cached(&token).await?)),
        }
    }
}

pub(crate) fn bearer(parts: &Parts) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(imprint_protocol::bearer_token)
        .map(|t| Some(t.to_owned()))
        .ok_or_else(|| ApiError(Error::Unauthorized("the Authorization header must be `Bearer <token>`".into())))
}

/// The path parameters by name.
async fn path_params(parts: &mut Parts) -> Result<HashMap<String, String>, ApiError> {
    let axum::extract::Path(params) = axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::invalid(format!("bad path: {e}")))?;
    Ok(params)
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    params.get(name).map(String::as_str).ok_or_else(|| ApiError(Error::Internal(format!("route has no {{{name}}}"))))
}

fn topic_of(params: &HashMap<String, String>) -> Result<TopicName, ApiError> {
    Ok(TopicName::parse(param(params, "topic")?).map_err(Error::from)?)
}

/// A version number: 1, 2, 3, …
pub fn parse_version(n: &str) -> Result<VersionNumber, ApiError> {
    VersionNumber::parse(n).map_err(|_| ApiError::invalid(format!("{n:?} is not a version number (1, 2, 3, …)")))
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| ApiError::invalid(format!("{id:?} is not a rollout id")))
}

/// `{topic}`
pub struct TopicPath(pub TopicName);

impl<S: Send + Sync> FromRequestParts<S> for TopicPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(TopicPath(topic_of(&path_params(parts).await?)?))
    }
}

/// `{topic}/versions/{n}`
pub struct VersionPath(pub TopicName, pub VersionNumber);

impl<S: Send + Sync> FromRequestParts<S> for VersionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let p = path_params(parts).await?;
        Ok(VersionPath(topic_of(&p)?, parse_version(param(&p, "n")?)?))
    }
}

/// `{topic}/rollouts/{id}` (and `/{action}`, read separately)
pub struct RolloutPath(pub TopicName, pub i64);

impl<S: Send + Sync> FromRequestParts<S> for RolloutPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let p = path_params(parts).await?;
        Ok(RolloutPath(topic_of(&p)?, parse_id(param(&p, "id")?)?))
    }
}

/// `{topic}/drafts/{id}`
pub struct DraftPath(pub TopicName, pub i64);

impl<S: Send + Sync> FromRequestParts<S> for DraftPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let p = path_params(parts).await?;
        let id = param(&p, "id")?;
        let id = id
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::invalid(format!("{id:?} is not a draft id")))?;
        Ok(DraftPath(topic_of(&p)?, id))
    }
}

/// The `{action}` of a rollout action path.
pub struct ActionPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ActionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ActionPath(param(&path_params(parts).await?, "action")?.to_owned()))
    }
}

/// The request body, at most `MAX_BODY_BYTES`.
pub async fn body_bytes(req: Request) -> Result<Bytes, ApiError> {
    body_bytes_limited(req, MAX_BODY_BYTES).await
}

/// The request body, at most `limit` bytes (413 beyond, without reading further).
pub async fn body_bytes_limited(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError(Error::PayloadTooLarge { size: limit as u64 + 1, limit: limit as u64 });
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let limit = limit.min(MAX_BODY_BYTES);
    axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = s.source();
        }
        ApiError::invalid(format!("could not read the request body: {e}"))
    })
}

/// Parses a JSON body into `T` (whose serde attributes refuse unknown fields).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
}

/// A JSON body of type `T`, of at most `MAX` bytes.
pub struct ApiJson<T, const MAX: usize = MAX_BODY_BYTES>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const MAX: usize> FromRequest<S> for ApiJson<T, MAX> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiJson(parse_json(&body_bytes_limited(req, MAX).await?)?))
    }
}

/// An optional JSON body: absent (or only whitespace) is `None`.
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let body = body_bytes(req).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        Ok(OptionalJson(Some(parse_json(&body)?)))
    }
}

/// The query string as a typed struct (`serde_urlencoded`); failures are API errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q).map(ApiQuery).map_err(|e| ApiError::invalid(format!("bad query string: {e}")))
    }
}

/// The SHA-256 of the request's bearer token, if it has one: what a request held open
/// re-checks when tokens are revoked.
pub struct Credential(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Credential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Credential(bearer(parts)?.map(|t| imprint_service::auth::hash_token(&t))))
    }
}

/// The client's address: the one behind trusted proxies (`ClientIp`, set by the full
/// router), else the peer of the connection.
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let behind = parts.extensions.get::<imprint_service::auth::ClientIp>().map(|c| c.0);
        let peer = || parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientAddr(behind.or_else(peer)))
    }
}

// ---- query-string values and JSON parts shared by several endpoints ----

/// `?limit=` (the service checks the range).
pub fn parse_limit(l: &Option<String>) -> ApiResult<Option<u32>> {
    l.as_deref()
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| ApiError::invalid(format!("limit must be a number between 1 and 500, not {l:?}")))
        })
        .transpose()
}

/// An RFC 3339 time (`?at=`).
pub fn parse_time(s: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| ApiError::invalid(format!("{s:?} is not an RFC 3339 time such as 2026-11-22T03:12:00Z")))
}

/// A flag: absent, `false` or `0` is false; `true`, `1` or empty is true.
pub fn parse_bool(v: &Option<String>, key: &str) -> ApiResult<bool> {
    match v.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(ApiError::invalid(format!("{key} must be true or false, not {v:?}"))),
    }
}

/// `?labels=region=eu-west-1,app=checkout` (absent: no labels).
pub fn parse_labels(v: &Option<String>) -> ApiResult<Labels> {
    Ok(Labels::parse(v.as_deref().unwrap_or("")).map_err(Error::from)?)
}

/// `?limit=&cursor=` of a list.
#[derive(Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// A selector given as a JSON object (`{"region": "eu-west-1"}`; `{}` is everyone).
pub fn selector_json(v: &Value) -> ApiResult<Selector> {
    Ok(Selector::from_json(v).map_err(Error::from)?)
}

/// A rollout plan given as JSON (`{"stages": [...]}`).
pub fn parse_plan(v: &Value) -> ApiResult<Plan> {
    serde_json::from_value(v.clone()).map_err(|e| ApiError::invalid(format!("invalid rollout plan: {e}")))
}

/// A publish's (or a release's) `rollout`: absent, the topic's default; `null` or
/// `"none"`, none; a plan name; an inline plan.
pub fn rollout_request(v: Option<Option<Value>>) -> ApiResult<imprint_service::RolloutRequest> {
    Ok(match v {
        None => imprint_service::RolloutRequest::TopicDefault,
        Some(None) => imprint_service::RolloutRequest::None,
        Some(Some(Value::String(name))) if name == "none" => imprint_service::RolloutRequest::None,
        Some(Some(Value::String(name))) => {
            imprint_service::RolloutRequest::Plan(imprint_service::PlanChoice::Named(name))
        }
        Some(Some(plan @ Value::Object(_))) => {
            imprint_service::RolloutRequest::Plan(imprint_service::PlanChoice::Inline(parse_plan(&plan)?))
        }
        Some(Some(_)) => {
            return Err(ApiError::invalid("rollout must be a plan ({\"stages\": [...]}), a plan name, or null"))
        }
    })
}
