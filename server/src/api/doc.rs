//! The served OpenAPI document (`GET /api/v1/openapi.json`): the info and shared
//! components here, every path from the feature files' routes (`super::routes_and_doc`
//! merges them and hands the result to the handler).
use crate::error::{ErrorBody, ErrorDetail};
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use imprint_service::model::{Pin, Published, Retention, Scope, Topic, Version};
use imprint_service::poll::{Applied, Consumer, PollRequest, PollResponse, Update};
use imprint_service::Imprint;
use imprint_service::{NewTopic, TopicPatch};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Imprint API", version = "1",
         description = "Publish versioned datasets to many consumers. Errors are {\"error\": {\"code\", \"message\"}} \
                        (ErrorBody). Writes need `Authorization: Bearer <token>`; polling and GETs are open. Request \
                        bodies refuse unknown fields. Lists are newest first with ?limit= (1-500, default 50) and an \
                        opaque ?cursor= from `next`. Long polls (`wait_ms` > 0) answer with poll_after_ms = 0: poll \
                        again at once."),
    components(schemas(Topic, Retention, NewTopic, TopicPatch, Version, Scope, Published, Pin, PollRequest, PollResponse,
                       Consumer, Applied, Update, ErrorBody, ErrorDetail, imprint_service::RolloutInfo,
                       imprint_service::model::ConsumerInfo)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The document without paths (the router adds them).
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn routes() -> OpenApiRouter<Imprint> {
    OpenApiRouter::new().routes(routes!(openapi))
}

/// The document as served: built by `super::routes_and_doc` from the routes themselves,
/// handed to the `openapi` handler as a request extension (serialised once).
#[derive(Clone)]
pub struct Served(Bytes);

impl Served {
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Self {
        Served(serde_json::to_vec(doc).unwrap_or_default().into())
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", content_type = "application/json")))]
pub async fn openapi(Extension(Served(doc)): Extension<Served>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}
