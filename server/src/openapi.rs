//! The served OpenAPI document (`GET /api/v1/openapi.json`): the info and shared
//! components here, every path from the router itself (`api::routes_and_doc`).
use crate::error::{ErrorBody, ErrorDetail};
use imprint_service::model::{Pin, Published, Retention, Scope, Topic, Version};
use imprint_service::poll::{Applied, Consumer, PollRequest, PollResponse, Update};
use imprint_service::{NewTopic, TopicPatch};
use std::sync::OnceLock;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

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

/// The whole document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| crate::api::routes_and_doc().1)
}
