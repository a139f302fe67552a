//! The `/api/v1` routes, one file per feature — `topics`, `versions`, `pins`, `rollouts`,
//! `consumers` (poll, latest, resolve, the consumer audit), `relay` (what relays call), `webhooks` (change-event subscriptions), `ops` (health, readiness,
//! metrics) and `doc` (the OpenAPI document) — each holding its handlers, its request and
//! response types and its routes. Handlers take typed request parts (see `extract`), call
//! the service and map the answer. Routes are registered through `utoipa_axum`, so every
//! route is in the OpenAPI document by construction. To add an endpoint: a handler with
//! its `#[utoipa::path]` in its feature's file, listed in that file's `routes()`.
pub mod at_rest;
pub mod blobs;
pub mod change_control;
pub mod checks;
pub mod consumers;
pub mod doc;
pub mod ops;
pub mod pins;
pub mod relay;
pub mod rollouts;
pub mod topics;
pub mod versions;
pub mod webhooks;

use crate::error::ApiError;
use crate::extract::MAX_BODY_BYTES;
use imprint_service::Imprint;
use utoipa_axum::router::OpenApiRouter;

/// The API routes and the OpenAPI document describing exactly them.
pub fn routes_and_doc() -> (axum::Router<Imprint>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(doc::base())
        .merge(topics::routes())
        .merge(versions::routes())
        .merge(pins::routes())
        .merge(rollouts::routes())
        .merge(consumers::routes())
        .merge(blobs::routes())
        .merge(relay::routes())
        .merge(webhooks::routes())
        .merge(checks::routes())
        .merge(change_control::routes())
        .merge(at_rest::routes())
        .merge(ops::routes())
        .merge(doc::routes())
        // OpenFeature's protocol (`/ofrep/v1`, server/src/ofrep.rs) is documented here too.
        .merge(crate::ofrep::routes())
        // Spring Cloud Config's protocol (server/src/spring.rs), documented here too.
        .merge(crate::spring::routes())
        .split_for_parts();
    let router = router
        .route("/api/v1/{*rest}", axum::routing::any(api_not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::Extension(doc::Served::new(&doc)));
    (router, doc)
}

pub fn routes() -> axum::Router<Imprint> {
    routes_and_doc().0
}

async fn api_not_found() -> ApiError {
    ApiError::not_found("no such API endpoint; see /api/v1/openapi.json")
}
