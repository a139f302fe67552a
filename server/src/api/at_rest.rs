//! Encryption at rest (docs/encryption.md): the audit of plaintext reads of an at-rest
//! topic (`/topics/{t}/plaintext-reads`), for its publishers and admins.
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Auth, TopicPath};
use axum::extract::State;
use axum::Json;
use imprint_service::plaintext_reads::PlaintextRead;
use imprint_service::Imprint;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(plaintext_reads))
}

#[derive(Serialize, ToSchema)]
pub struct PlaintextReads {
    /// Per version and reader: how many plaintext reads, the first and the last (newest
    /// first, at most 1000).
    pub reads: Vec<PlaintextRead>,
}

/// Who read the plaintext of which version of an at-rest topic (polls and `/latest`
/// answered with the payload, downloads, previews), counted per reader.
#[utoipa::path(get, path = "/api/v1/topics/{topic}/plaintext-reads", tag = "topics", params(("topic" = String, Path)),
    responses((status = 200, body = PlaintextReads), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn plaintext_reads(
    State(imprint): State<Imprint>,
    Auth(caller): Auth,
    TopicPath(topic): TopicPath,
) -> ApiResult<Json<PlaintextReads>> {
    Ok(Json(PlaintextReads { reads: imprint.plaintext_read_audit(&caller, &topic).await? }))
}
