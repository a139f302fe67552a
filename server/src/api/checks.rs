//! Pre-release checks (docs/validation.md): where an external validator downloads the
//! candidate it is asked about. The URL's token is the credential (random, short-lived,
//! one candidate, gone when the checks are done); nothing else is reachable with it.
use crate::error::{ApiResult, ErrorBody};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use imprint_service::Imprint;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(candidate))
}

/// A candidate version's payload, for the external validator its publish is asking: the
/// `download_url` of a validation request. Served inert, as version payloads are.
#[utoipa::path(get, path = "/api/v1/validation/candidates/{token}", tag = "versions",
    params(("token" = String, Path, description = "the token of the download_url (64 hex digits)")),
    responses((status = 200, description = "the candidate's payload, in its content type", body = Vec<u8>, content_type = "*/*",
               headers(("ETag" = String, description = "\"<sha256>\""))),
              (status = 206, description = "a byte range of it", body = Vec<u8>, content_type = "*/*"),
              (status = 404, body = ErrorBody, description = "candidate_not_found: expired, done, or never offered")))]
pub async fn candidate(
    State(imprint): State<Imprint>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = imprint.validation_candidate(&token).await?;
    let etag = format!("\"{}\"", p.sha256);
    crate::payload::payload_response(&imprint, p, &etag, None, &headers, false).await
}
