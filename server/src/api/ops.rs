//! Operations endpoints every process answers: liveness, readiness and Prometheus metrics.
use crate::error::ApiError;
use axum::extract::State;
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_service::Imprint;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub postgres: bool,
    pub state_loaded: bool,
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "metrics in the Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(imprint): State<Imprint>) -> Response {
    if !imprint.config().metrics_on_public_listener {
        return ApiError::not_found("metrics are served on their own listener (IMPRINT_METRICS_ADDR)").into_response();
    }
    metrics_text().await
}

/// The metrics themselves, for the metrics listener (`metrics_router`).
pub async fn metrics_text() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics_handle().render()).into_response()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Postgres is reachable and the serving state is loaded.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(imprint): State<Imprint>) -> Response {
    let db = imprint.ready().await;
    let loaded = imprint.state().is_loaded();
    let status = if db && loaded { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness {
        status: if status == StatusCode::OK { "ready" } else { "not_ready" }.into(),
        postgres: db,
        state_loaded: loaded,
    };
    (status, Json(body)).into_response()
}
