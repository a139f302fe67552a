//! The served OpenAPI document (`GET /api/v1/openapi.json`).
use crate::api;
use imprint_service::model::{Pin, Published, Retention, Scope, Topic, Version};
use imprint_service::poll::{Applied, Consumer, PollRequest, PollResponse, Update};
use imprint_service::{NewTopic, TopicPatch};
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
         description = "Publish versioned datasets to many consumers. Errors are {\"error\": {\"code\", \"message\"}}. \
                        Writes need `Authorization: Bearer <token>`; polling and GETs are open. Lists are newest first \
                        with ?limit= (1-500, default 50) and an opaque ?cursor= from `next`. Long polls (`wait_ms` > 0) \
                        answer with poll_after_ms = 0: poll again at once."),
    paths(api::create_topic, api::list_topics, api::get_topic, api::patch_topic, api::publish, api::list_versions,
          api::get_version, api::version_data, api::add_scope, api::resolve, api::put_pin, api::delete_pin, api::list_pins,
          api::poll, api::latest, api::consumers, api::start_rollout, api::list_rollouts, api::get_rollout,
          api::rollout_action),
    components(schemas(Topic, Retention, NewTopic, TopicPatch, Version, Scope, Published, Pin, PollRequest, PollResponse,
                       Consumer, Applied, Update, api::TopicList, api::VersionList, api::PinList, api::Resolved, api::ConsumerList, api::RolloutList, imprint_service::RolloutInfo,
                       imprint_service::model::ConsumerInfo)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
