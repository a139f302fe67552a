//! Webhooks: the subscriptions the signed-in user may manage, a form to create one (its
//! secret shown once), and each one's delivery log (status, latency, the receiver's
//! answer) with a Redeliver button. The service checks every right.
use crate::common::{error_text, short_time, ActionResult, Flash, SecretResult, SecretShownOnce};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookRow {
    pub id: i64,
    pub url: String,
    pub scope: String,
    pub events: String,
    pub enabled: bool,
    pub description: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhooksData {
    pub hooks: Vec<WebhookRow>,
    /// A subscription created by a form post without JavaScript: (id, secret), shown once.
    pub new_secret: Option<(i64, String)>,
}

/// The new secret never goes into logs or panic messages.
impl std::fmt::Debug for WebhooksData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksData").field("hooks", &self.hooks).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub topic: Option<String>,
    pub event_time: String,
    pub state: String,
    pub attempts: i32,
    pub status: Option<i32>,
    pub latency_ms: Option<i32>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub next_attempt_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveriesData {
    pub hook: WebhookRow,
    pub deliveries: Vec<DeliveryRow>,
}

#[cfg(feature = "ssr")]
const NEW_SECRET_KEY: &str = "new_webhook_secret";

#[cfg(feature = "ssr")]
fn row_of(w: imprint_service::webhooks::Webhook) -> WebhookRow {
    WebhookRow {
        id: w.id,
        scope: match (&w.topic, &w.team) {
            (Some(t), _) => format!("topic {t}"),
            (None, Some(t)) => format!("team {t}"),
            (None, None) => "every topic".into(),
        },
        events: if w.event_types.is_empty() { "all".into() } else { w.event_types.join(", ") },
        url: w.url,
        enabled: w.enabled,
        description: w.description,
    }
}

#[server(prefix = "/console/fn")]
pub async fn load_webhooks() -> Result<WebhooksData, ServerFnError> {
    use crate::ssr::{imprint, load, require_user, session};
    let (_, caller) = require_user().await?;
    let page = load(imprint()?.webhooks(&caller, Some(500), None).await)?;
    let new_secret = session().await?.remove::<(i64, String)>(NEW_SECRET_KEY).await.ok().flatten();
    Ok(WebhooksData { hooks: page.items.into_iter().map(row_of).collect(), new_secret })
}

#[server(prefix = "/console/fn")]
pub async fn load_deliveries(id: i64) -> Result<DeliveriesData, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let hook = row_of(load(imprint.webhook(&caller, id).await)?);
    let page = load(imprint.webhook_deliveries(&caller, id, None, Some(200), None).await)?;
    let deliveries = page
        .items
        .into_iter()
        .map(|d| DeliveryRow {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            topic: d.topic,
            event_time: d.event_time.to_rfc3339(),
            state: d.state,
            attempts: d.attempts,
            status: d.last_status,
            latency_ms: d.last_latency_ms,
            response: d.last_response,
            error: d.last_error,
            next_attempt_at: d.next_attempt_at.map(|t| t.to_rfc3339()),
        })
        .collect();
    Ok(DeliveriesData { hook, deliveries })
}

/// Creates a subscription; `scope` is `topic`, `team` or `all` (with `name` for the first
/// two), `events` comma-separated (empty: all). Returns the secret (shown once).
#[server(prefix = "/console/fn")]
pub async fn create_webhook(
    url: String,
    scope: String,
    name: String,
    events: String,
    description: String,
    allow_private: Option<String>,
) -> Result<String, ServerFnError> {
    use crate::ssr::{finish, imprint, is_form_post, require_user, session};
    let (_, caller) = require_user().await?;
    let name = name.trim().to_owned();
    let (topic, team) = match scope.as_str() {
        "topic" => (Some(name), None),
        "team" => (None, Some(name)),
        _ => (None, None),
    };
    let new = imprint_service::webhooks::NewWebhook {
        url: url.trim().to_owned(),
        description: description.trim().to_owned(),
        topic,
        team,
        event_types: events.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect(),
        allow_private: allow_private.is_some(),
        enabled: true,
    };
    let r = imprint()?.create_webhook(&caller, new).await.map(|w| (w.id, w.secret.unwrap_or_default()));
    if let (Ok(created), true) = (&r, is_form_post()) {
        // Without JavaScript the page reloads: carry the secret in the session, not the URL.
        let _ = session().await?.insert(NEW_SECRET_KEY, created.clone()).await;
    }
    finish(r.map(|(_, s)| s), None, None)
}

#[server(prefix = "/console/fn")]
pub async fn delete_webhook(id: i64) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    finish(imprint()?.delete_webhook(&caller, id).await, None, Some("Webhook deleted"))
}

#[server(prefix = "/console/fn")]
pub async fn set_webhook_enabled(id: i64, enabled: bool) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let patch = imprint_service::webhooks::WebhookPatch { enabled: Some(enabled), ..Default::default() };
    let r = imprint()?.update_webhook(&caller, id, patch).await.map(|_| ());
    finish(r, None, Some(if enabled { "Webhook enabled" } else { "Webhook disabled" }))
}

#[server(prefix = "/console/fn")]
pub async fn redeliver(id: i64, delivery: i64) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let r = imprint()?.redeliver(&caller, id, delivery).await.map(|_| ());
    finish(r, None, Some("Queued for redelivery"))
}

#[component]
pub fn WebhooksPage() -> impl IntoView {
    let create = ServerAction::<CreateWebhook>::new();
    let delete = ServerAction::<DeleteWebhook>::new();
    let enable = ServerAction::<SetWebhookEnabled>::new();
    let data = Resource::new(
        move || (create.version().get(), delete.version().get(), enable.version().get()),
        |_| load_webhooks(),
    );
    view! {
        <Title text="Webhooks"/>
        <section class="page-head"><h1>"Webhooks"</h1></section>
        <p class="muted">"Change events are POSTed as CloudEvents, signed per Standard Webhooks (docs/webhooks.md)."</p>
        <Flash/>
        <ActionResult value=move || delete.value().get() ok="Webhook deleted"/>
        <ActionResult value=move || enable.value().get() ok="Webhook updated"/>
        <SecretResult value=move || create.value().get() what="Webhook created. Its signing secret"/>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(d) => view! {
                        {d.new_secret.clone().map(|(id, secret)| view! {
                            <SecretShownOnce what=format!("Webhook {id} created. Its signing secret") secret/>
                        })}
                        <section class="card" aria-label="Subscriptions">
                            <h2>"Subscriptions"</h2>
                            {if d.hooks.is_empty() { Some(view! { <p class="empty">"No webhooks yet."</p> }) } else { None }}
                            <table class="webhooks">
                                <thead><tr><th>"Id"</th><th>"URL"</th><th>"Scope"</th><th>"Events"</th><th>"State"</th><th></th></tr></thead>
                                <tbody>
                                    {d.hooks.into_iter().map(|h| view! {
                                        <tr>
                                            <td>{h.id}</td>
                                            <td><a href=format!("/webhooks/{}", h.id)>{h.url.clone()}</a>{(!h.description.is_empty()).then(|| view! { <div class="muted small">{h.description.clone()}</div> })}</td>
                                            <td>{h.scope.clone()}</td>
                                            <td>{h.events.clone()}</td>
                                            <td>{if h.enabled { "enabled" } else { "disabled" }}</td>
                                            <td class="nowrap">
                                                <a href=format!("/webhooks/{}", h.id) class="button secondary">"Deliveries"</a>
                                                <ActionForm action=enable attr:class="inline">
                                                    <input type="hidden" name="id" value=h.id.to_string()/>
                                                    <input type="hidden" name="enabled" value=(!h.enabled).to_string()/>
                                                    <button type="submit" class="secondary">{if h.enabled { "Disable" } else { "Enable" }}</button>
                                                </ActionForm>
                                                <ActionForm action=delete attr:class="inline">
                                                    <input type="hidden" name="id" value=h.id.to_string()/>
                                                    <button type="submit" class="secondary">"Delete"</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </section>
                        <section class="card" aria-label="New webhook">
                            <h2>"New webhook"</h2>
                            <ActionForm action=create attr:class="inline" attr:id="create-webhook">
                                <input type="url" name="url" placeholder="https://hooks.example.com/imprint" aria-label="Webhook URL" required/>
                                <select name="scope" aria-label="Webhook scope">
                                    <option value="topic">"one topic"</option>
                                    <option value="team">"a team's topics"</option>
                                    <option value="all">"every topic (admins)"</option>
                                </select>
                                <input type="text" name="name" placeholder="topic or team" aria-label="Topic or team"/>
                                <input type="text" name="events" placeholder="events (empty: all): version.published, pin.set" aria-label="Event types"/>
                                <input type="text" name="description" placeholder="description" aria-label="Webhook description"/>
                                <label class="check"><input type="checkbox" name="allow_private" value="on"/>" private addresses (admins)"</label>
                                <button type="submit">"Create webhook"</button>
                            </ActionForm>
                        </section>
                    }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
pub fn WebhookPage() -> impl IntoView {
    let params = use_params_map();
    let again = ServerAction::<Redeliver>::new();
    let id = move || params.read().get("id").and_then(|i| i.parse::<i64>().ok()).unwrap_or(0);
    let data = Resource::new(move || (id(), again.version().get()), |(id, _)| load_deliveries(id));
    view! {
        <Title text="Webhook deliveries"/>
        <section class="page-head"><h1>{move || format!("Webhook {}", id())}</h1><a href="/webhooks">"← all webhooks"</a></section>
        <Flash/>
        <ActionResult value=move || again.value().get() ok="Queued for redelivery"/>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(d) => { let hook_id = d.hook.id; view! {
                        <p>{format!("{} · {} · events: {} · {}", d.hook.url, d.hook.scope, d.hook.events, if d.hook.enabled { "enabled" } else { "disabled" })}</p>
                        <section class="card" aria-label="Delivery log">
                            <h2>"Delivery log"</h2>
                            {if d.deliveries.is_empty() { Some(view! { <p class="empty">"Nothing delivered yet."</p> }) } else { None }}
                            <table class="deliveries">
                                <thead><tr><th>"Event"</th><th>"Topic"</th><th>"When (UTC)"</th><th>"State"</th><th>"Tries"</th><th>"Status"</th><th>"Latency"</th><th>"Answer"</th><th></th></tr></thead>
                                <tbody>
                                    {d.deliveries.into_iter().map(|x| view! {
                                        <tr class=format!("delivery {}", x.state)>
                                            <td><code title=x.event_id.clone()>{x.event_type.clone()}</code></td>
                                            <td>{x.topic.clone().map(|t| view! { <a href=format!("/topics/{t}")>{t.clone()}</a> })}</td>
                                            <td class="nowrap">{short_time(&x.event_time)}</td>
                                            <td>{x.state.clone()}{x.next_attempt_at.as_deref().map(|n| format!(" (next {})", short_time(n)))}</td>
                                            <td>{x.attempts}</td>
                                            <td>{x.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into())}</td>
                                            <td>{x.latency_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into())}</td>
                                            <td class="details"><code class="small">{x.error.clone().unwrap_or_default()}{x.response.clone().filter(|r| !r.is_empty()).map(|r| format!(" — {r}"))}</code></td>
                                            <td>
                                                <ActionForm action=again>
                                                    <input type="hidden" name="id" value=hook_id.to_string()/>
                                                    <input type="hidden" name="delivery" value=x.id.to_string()/>
                                                    <button type="submit" class="secondary">"Redeliver"</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </section>
                    }.into_any() }
                }
            })}
        </Transition>
    }
}
