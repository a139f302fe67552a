//! Topic settings: description, owner, retention, inline limit, content type, JSON
//! Schema, rollout plans, restricted access, whose reports gates trust, and the Apollo,
//! OpenFeature and Spring Cloud Config bindings.
use super::{TopicHead, TopicHeader};
use crate::common::{error_text, ActionResult};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub head: TopicHead,
    pub description: String,
    pub owner: String,
    pub max_versions: Option<u32>,
    pub max_age_days: Option<u32>,
    pub inline_limit_bytes: u64,
    pub max_size_bytes: u64,
    /// Live versions outside the retention policy: (version, created, size, what the
    /// janitor does: `purge` or why it keeps it).
    pub retention_next: Vec<(u64, String, u64, String)>,
    pub content_type: String,
    pub json_schema: String,
    pub plans: String,
    pub default_plan: String,
    pub restricted: bool,
    pub anonymous_reports: bool,
    pub apollo_app_id: String,
    pub apollo_namespace: String,
    pub apollo_secret_set: bool,
    /// Where Apollo clients point their config-service URL (this server + `/apollo`).
    pub apollo_url: String,
    /// OpenFeature (OFREP) providers evaluate the topic as a flag.
    pub ofrep: bool,
    pub ofrep_flag_key: String,
    pub ofrep_field: String,
    pub spring_application: String,
    pub spring_profile: String,
    /// Where Spring Cloud Config clients point their config server URI (this server + `/spring`).
    pub spring_url: String,
    pub teams: Vec<String>,
}

#[server(prefix = "/console/fn")]
pub async fn load_settings(name: String) -> Result<Settings, ServerFnError> {
    use crate::ssr::{imprint, load, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let name = load(topic_name(&name))?;
    let t = load(imprint.topic(&caller, &name).await)?;
    let teams = load(imprint.teams(&caller).await)?.into_iter().map(|t| t.name).collect();
    Ok(Settings {
        head: super::head_of(&t, &caller),
        description: t.description.clone(),
        owner: t.owner.clone(),
        max_versions: t.retention.max_versions,
        max_age_days: t.retention.max_age_days,
        inline_limit_bytes: t.inline_limit_bytes,
        max_size_bytes: t.max_size_bytes,
        retention_next: load(imprint.retention_preview(&caller, &name).await)?
            .into_iter()
            .map(|i| (i.version, i.created_at.to_rfc3339(), i.size, i.action))
            .collect(),
        content_type: t.content_type.clone().unwrap_or_default(),
        json_schema: t.json_schema.as_ref().and_then(|s| serde_json::to_string_pretty(s).ok()).unwrap_or_default(),
        plans: if t.plans.is_empty() {
            String::new()
        } else {
            serde_json::to_string_pretty(&t.plans).unwrap_or_default()
        },
        default_plan: t.default_plan.clone().unwrap_or_default(),
        restricted: t.restricted,
        anonymous_reports: t.anonymous_reports,
        apollo_app_id: t.apollo.as_ref().map(|a| a.app_id.clone()).unwrap_or_default(),
        apollo_namespace: t.apollo.as_ref().map(|a| a.namespace.clone()).unwrap_or_default(),
        apollo_secret_set: t.apollo.as_ref().is_some_and(|a| a.secret_set),
        ofrep: t.ofrep.is_some(),
        ofrep_flag_key: t.ofrep.as_ref().map(|o| o.flag_key.clone()).unwrap_or_default(),
        ofrep_field: t.ofrep.as_ref().and_then(|o| o.field.clone()).unwrap_or_default(),
        apollo_url: server_url("apollo"),
        spring_application: t.spring.as_ref().map(|b| b.application.clone()).unwrap_or_default(),
        spring_profile: t.spring.as_ref().and_then(|b| b.profile.clone()).unwrap_or_default(),
        spring_url: server_url("spring"),
        teams,
    })
}

/// This server's URL under `/{under}` (Apollo's config service, Spring's config server),
/// as the browser reached it.
#[cfg(feature = "ssr")]
fn server_url(under: &str) -> String {
    let host = use_context::<http::request::Parts>()
        .and_then(|p| {
            let h = p.headers.get("x-forwarded-host").or_else(|| p.headers.get(http::header::HOST))?;
            h.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_else(|| "imprint:3000".into());
    format!("http://{host}/{under}")
}

#[server(prefix = "/console/fn")]
#[allow(clippy::too_many_arguments)]
pub async fn save_settings(
    topic: String,
    description: String,
    owner: String,
    max_versions: String,
    max_age_days: String,
    inline_limit_bytes: String,
    max_size_bytes: Option<String>,
    content_type: String,
    json_schema: String,
    plans: String,
    default_plan: String,
    restricted: Option<String>,
    anonymous_reports: Option<String>,
    apollo_app_id: Option<String>,
    apollo_namespace: Option<String>,
    apollo_secret: Option<String>,
    apollo_secret_clear: Option<String>,
    ofrep: Option<String>,
    ofrep_flag_key: Option<String>,
    ofrep_field: Option<String>,
    spring_application: Option<String>,
    spring_profile: Option<String>,
) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    use imprint_service::model::Retention;
    use imprint_service::{Error, TopicPatch};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let patch = (|| -> Result<TopicPatch, Error> {
        let num = |field: &str, s: &str| -> Result<Option<u64>, Error> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<u64>().map(Some).map_err(|_| Error::invalid(format!("{field} must be a whole number")))
        };
        let json = |field: &str, s: &str| -> Result<Option<serde_json::Value>, Error> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            serde_json::from_str(s).map(Some).map_err(|e| Error::invalid(format!("{field} is not valid JSON: {e}")))
        };
        let plans = match json("plans", &plans)? {
            None => Some(Default::default()),
            Some(v) => Some(serde_json::from_value(v).map_err(|e| Error::invalid(format!("plans: {e}")))?),
        };
        Ok(TopicPatch {
            // Checks are set through the API (docs/validation.md); the form leaves them.
            checks: None,
            on_failure: None,
            keep_rejected: None,
            // Regions are set through the API (docs/regions.md); the form leaves them.
            regions: None,
            min_regions: None,
            description: Some(description.trim().to_owned()),
            owner: Some(owner.trim().to_owned()),
            retention: Some(Retention {
                max_versions: num("max versions", &max_versions)?.map(|v| v.min(u32::MAX as u64) as u32),
                max_age_days: num("max age", &max_age_days)?.map(|v| v.min(u32::MAX as u64) as u32),
            }),
            inline_limit_bytes: num("inline limit", &inline_limit_bytes)?,
            max_size_bytes: num("largest payload", max_size_bytes.as_deref().unwrap_or(""))?,
            content_type: Some(Some(content_type.trim().to_owned()).filter(|c| !c.is_empty())),
            json_schema: Some(json("JSON Schema", &json_schema)?),
            plans,
            default_plan: Some(Some(default_plan.trim().to_owned()).filter(|d| !d.is_empty())),
            // An unchecked box is not sent at all.
            restricted: Some(restricted.is_some_and(|v| v == "on" || v == "true")),
            anonymous_reports: Some(anonymous_reports.is_some_and(|v| v == "on" || v == "true")),
            apollo: {
                let app = apollo_app_id.as_deref().map(str::trim).unwrap_or("");
                let ns = apollo_namespace.as_deref().map(str::trim).unwrap_or("");
                let secret = apollo_secret.filter(|s| !s.is_empty());
                let clear = apollo_secret_clear.is_some_and(|v| v == "on" || v == "true");
                if app.is_empty() && ns.is_empty() {
                    Some(None)
                } else {
                    Some(Some(imprint_service::model::ApolloBindingInput {
                        app_id: app.to_owned(),
                        namespace: ns.to_owned(),
                        // Blank keeps the current secret; the box removes it.
                        secret: if clear { Some(String::new()) } else { secret },
                    }))
                }
            },
            ofrep: if ofrep.is_some_and(|v| v == "on" || v == "true") {
                let text = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
                Some(Some(imprint_service::model::OfrepBindingInput {
                    flag_key: text(ofrep_flag_key),
                    field: text(ofrep_field),
                }))
            } else {
                Some(None)
            },
            spring: {
                let app = spring_application.as_deref().map(str::trim).unwrap_or("");
                let profile = spring_profile.as_deref().map(str::trim).filter(|p| !p.is_empty());
                if app.is_empty() && profile.is_none() {
                    Some(None)
                } else {
                    Some(Some(imprint_service::model::SpringBinding {
                        application: app.to_owned(),
                        profile: profile.map(str::to_owned),
                    }))
                }
            },
            // Set through the API or the CLI (docs/encryption.md); the form keeps it.
            encryption: None,
        })
    })();
    let result = match patch.and_then(|p| Ok((topic_name(&topic)?, p))) {
        Ok((topic, p)) => imprint.update_topic(&caller, &topic, p).await.map(|_| ()),
        Err(e) => Err(e),
    };
    finish(result, None, Some("Settings saved"))
}

#[component]
pub fn SettingsPage() -> impl IntoView {
    let params = use_params_map();
    let action = ServerAction::<SaveSettings>::new();
    let page = Resource::new(
        move || (params.read().get("name").unwrap_or_default(), action.version().get()),
        |(n, _)| load_settings(n),
    );
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(s) => view! {
                        <TopicHeader head=s.head.clone() active="settings"/>
                        <ActionResult value=move || action.value().get() ok="Settings saved"/>
                        <ActionForm action=action attr:class="stack settings" attr:id="settings-form">
                            <input type="hidden" name="topic" value=s.head.name.clone()/>
                            <label>"Description" <input type="text" name="description" value=s.description.clone()/></label>
                            <label>"Owner team"
                                <select name="owner">
                                    <option value="" selected=s.owner.is_empty()>"— none (admins only) —"</option>
                                    {s.teams.iter().map(|t| view! { <option value=t.clone() selected=*t == s.owner>{t.clone()}</option> }).collect_view()}
                                </select>
                            </label>
                            <fieldset class="row">
                                <legend>"Retention"</legend>
                                <label>"Keep newest versions" <input type="number" min="1" name="max_versions" value=s.max_versions.map(|v| v.to_string())/></label>
                                <label>"Keep versions younger than (days)" <input type="number" min="1" name="max_age_days" value=s.max_age_days.map(|v| v.to_string())/></label>
                            </fieldset>
                            <RetentionNext items=s.retention_next.clone()/>
                            <label>"Inline limit (bytes; larger payloads go to the object store)" <input type="number" min="1" name="inline_limit_bytes" value=s.inline_limit_bytes.to_string()/></label>
                            <label>"Largest payload (bytes)" <input type="number" min="1" name="max_size_bytes" value=s.max_size_bytes.to_string()/></label>
                            <label>"Content type" <input type="text" name="content_type" placeholder="application/json" value=s.content_type.clone()/></label>
                            <label>"JSON Schema (publishes must satisfy it; empty: none)" <textarea name="json_schema" rows="8" class="mono">{s.json_schema.clone()}</textarea></label>
                            <label>"Rollout plans (JSON: {\"name\": {\"stages\": [{\"selector\": {...}, \"wait_s\": 600}]}})" <textarea name="plans" rows="6" class="mono">{s.plans.clone()}</textarea></label>
                            <label>"Default plan" <input type="text" name="default_plan" value=s.default_plan.clone()/></label>
                            <fieldset class="stack">
                                <legend>"Access and trust"</legend>
                                <label class="check">
                                    <input type="checkbox" name="restricted" id="restricted" checked=s.restricted/>
                                    " Restricted: read and polled only with a token allowed on this topic (its team's, or a consumer token naming it)"
                                </label>
                                <label class="check">
                                    <input type="checkbox" name="anonymous_reports" id="anonymous_reports" checked=s.anonymous_reports/>
                                    " Count anonymous consumers' reports in rollout health gates (off: only consumers polling with a token count)"
                                </label>
                            </fieldset>
                            <fieldset class="stack" id="apollo">
                                <legend>"Apollo clients"</legend>
                                <p class="muted">"Unchanged Apollo clients read this topic as a namespace of an Apollo app: scopes, pins and rollouts reach them as they reach native consumers (their cluster, label, ip and data center are the labels cluster, label, ip and dc). Leave both empty for none."</p>
                                <div class="row">
                                    <label>"Apollo app id" <input type="text" name="apollo_app_id" value=s.apollo_app_id.clone()/></label>
                                    <label>"Apollo namespace" <input type="text" name="apollo_namespace" placeholder="application" value=s.apollo_namespace.clone()/></label>
                                </div>
                                <label>{if s.apollo_secret_set { "Apollo secret (set; blank keeps it)" } else { "Apollo secret (optional: clients then sign their requests)" }}
                                    <input type="password" name="apollo_secret" autocomplete="new-password"/>
                                </label>
                                {s.apollo_secret_set.then(|| view! { <label class="check"><input type="checkbox" name="apollo_secret_clear"/>" remove the secret"</label> })}
                                {(!s.apollo_app_id.is_empty()).then(|| view! {
                                    <p class="hint apollo-hint">"Connect an Apollo client: config service URL "<code>{s.apollo_url.clone()}</code>", app id "<code>{s.apollo_app_id.clone()}</code>", namespace "<code>{s.apollo_namespace.clone()}</code>"."</p>
                                })}
                            </fieldset>
                            <fieldset class="stack" id="ofrep">
                                <legend>"OpenFeature"</legend>
                                <p class="muted">"OpenFeature providers (OFREP) evaluate this topic as a flag: its value is the resolved version's JSON payload (or one top-level field of it), the evaluation context's attributes are the consumer's labels and its targetingKey the instance."</p>
                                <label class="check">
                                    <input type="checkbox" name="ofrep" id="ofrep_enabled" checked=s.ofrep/>
                                    " Serve as an OpenFeature flag"
                                </label>
                                <div class="row">
                                    <label>"Flag key" <input type="text" name="ofrep_flag_key" placeholder={s.head.name.clone()} value=s.ofrep_flag_key.clone()/></label>
                                    <label>"Payload field (optional)" <input type="text" name="ofrep_field" placeholder="the whole payload" value=s.ofrep_field.clone()/></label>
                                </div>
                            </fieldset>
                            <fieldset class="stack" id="spring">
                                <legend>"Spring Cloud Config clients"</legend>
                                <p class="muted">"Unchanged Spring Cloud Config clients read this topic as a property source of an application (application \"application\": of every application; no profile: of every profile). Their profile is the label profile, so scopes, pins and rollouts reach them as they reach native consumers. Leave both empty for none."</p>
                                <div class="row">
                                    <label>"Spring application" <input type="text" name="spring_application" value=s.spring_application.clone()/></label>
                                    <label>"Spring profile" <input type="text" name="spring_profile" placeholder="every profile" value=s.spring_profile.clone()/></label>
                                </div>
                                {(!s.spring_application.is_empty()).then(|| view! {
                                    <p class="hint spring-hint">"Connect a Spring Cloud Config client: config server URI "<code>{s.spring_url.clone()}</code>", spring.application.name "<code>{s.spring_application.clone()}</code>{(!s.spring_profile.is_empty()).then(|| view! { ", profile "<code>{s.spring_profile.clone()}</code> })}"; a token goes in as the password."</p>
                                })}
                            </fieldset>
                            <button type="submit">"Save settings"</button>
                        </ActionForm>
                    }.into_any(),
                }
            })}
        </Transition>
    }
}

/// What the retention policy does next: the live versions outside it.
#[component]
fn RetentionNext(items: Vec<(u64, String, u64, String)>) -> impl IntoView {
    let purge = items.iter().filter(|i| i.3 == "purge").count();
    let why = |a: &str| match a {
        "purge" => "purged by the next janitor pass",
        "pinned" => "kept: pinned",
        "in_rollout" => "kept: being rolled out",
        "still_resolved" => "kept: still what one of its scopes resolves to",
        "in_snapshot" => "kept: the snapshot clients start from names it",
        _ => "kept",
    };
    view! {
        <div class="retention-next" id="retention-next">
            {if items.is_empty() {
                view! { <p class="muted small">"Retention purges nothing now: every live version is within the policy."</p> }.into_any()
            } else {
                view! {
                    <p class="small">{format!("Outside the policy: {} version(s), {purge} to purge next.", items.len())}</p>
                    <ul class="small">
                        {items.iter().map(|(v, at, size, action)| view! {
                            <li class=if action == "purge" { "purge" } else { "kept" }>
                                {format!("v{v} · {} · {} — {}", crate::common::short_time(at), crate::common::human_size(*size), why(action))}
                            </li>
                        }).collect_view()}
                    </ul>
                }.into_any()
            }}
        </div>
    }
}
