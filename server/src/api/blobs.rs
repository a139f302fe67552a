//! Content-addressed payloads: `GET /api/v1/blobs/sha256/{hash}`, the bytes of any live
//! version whose payload has this SHA-256, so a CDN or a relay can carry big payloads by
//! a URL that never changes. Unrestricted payloads are `Cache-Control: public, max-age=
//! 31536000, immutable`; a payload only restricted topics hold needs the rights of one of
//! them and is `private`. Served inert, like every payload (server/src/payload.rs).
use crate::error::{ApiResult, ErrorBody};
use crate::extract::PollAuth;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use imprint_service::Imprint;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(blob))
}

/// What a publicly readable blob may be cached as: its URL names its bytes.
pub const PUBLIC_CACHE: &str = "public, max-age=31536000, immutable";
/// A blob only restricted topics hold: the caller's own cache may keep it, no shared one.
pub const PRIVATE_CACHE: &str = "private, max-age=31536000, immutable";

/// A payload by its SHA-256, with `ETag: "<sha256>"`, a single `Range` and `If-None-Match`.
#[utoipa::path(get, path = "/api/v1/blobs/sha256/{hash}", tag = "versions",
    params(("hash" = String, Path, description = "the payload's SHA-256, 64 hex digits"),
           ("Range" = Option<String>, Header, description = "one byte range: bytes=a-b, bytes=a- or bytes=-n"),
           ("If-None-Match" = Option<String>, Header, description = "the ETag held: 304 if it is this blob's")),
    responses((status = 200, description = "the payload, in the content type of a version holding it", body = Vec<u8>,
               content_type = "*/*",
               headers(("ETag" = String, description = "\"<sha256>\""), ("Cache-Control" = String,
                        description = "public, max-age=31536000, immutable (private, … when only restricted topics hold it)"),
                       ("Content-Length" = u64), ("Accept-Ranges" = String, description = "bytes"))),
              (status = 206, description = "the requested range", body = Vec<u8>, content_type = "*/*",
               headers(("Content-Range" = String, description = "bytes <first>-<last>/<size>"), ("ETag" = String))),
              (status = 304, description = "not modified: If-None-Match names this blob's ETag"),
              (status = 400, body = ErrorBody, description = "not a SHA-256"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no live version holds a payload with this SHA-256"),
              (status = 416, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn blob(
    State(imprint): State<Imprint>,
    PollAuth(caller): PollAuth,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let b = imprint.blob(&caller, &hash).await?;
    let etag = format!("\"{}\"", b.payload.sha256);
    let mut resp = crate::payload::payload_response(&imprint, b.payload, &etag, None, &headers, false).await?;
    let h = resp.headers_mut();
    // The same bytes whichever version holds them: no version header, cached for good.
    h.remove("X-Imprint-Version");
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(if b.public { PUBLIC_CACHE } else { PRIVATE_CACHE }));
    Ok(resp)
}
