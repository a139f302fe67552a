//! `/topics/:name`: the version timeline (100 a page), the active pins, and the forms
//! that pin a version and release one to more consumers.
use super::drafts::ChangeAct;
use super::{PinView, TopicHead, TopicHeader, VersionRow};
use crate::common::{error_text, human_size, short_time, ActionResult};
use imprint_domain::STALE_PIN_DAYS;
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicPage {
    pub head: TopicHead,
    /// 100 versions, newest first: the newest ones, or those older than the cursor.
    pub versions: Vec<VersionRow>,
    /// The cursor of the next (older) page, if any.
    pub next: Option<String>,
    /// This page is not the first one.
    pub paged: bool,
    pub pins: Vec<PinView>,
    /// The topic's scheduled changes (open change requests with a time), soonest first.
    #[serde(default)]
    pub scheduled: Vec<ScheduledRow>,
}

/// An open (pending or approved) change request of the topic that waits for its time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledRow {
    pub id: i64,
    pub summary: String,
    pub state: String,
    pub at: String,
    /// The caller is its author or an admin: the Withdraw button is shown.
    pub can_withdraw: bool,
}

#[server(prefix = "/console/fn")]
pub async fn load_topic(name: String, cursor: Option<String>) -> Result<TopicPage, ServerFnError> {
    use super::{head_of, pin_of, version_of};
    use crate::ssr::{imprint, load, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let name = load(topic_name(&name))?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    let now = imprint.now();
    let pins: Vec<PinView> = load(imprint.pins(&caller, &name, false, Some(500), None).await)?
        .items
        .into_iter()
        .map(|p| pin_of(p, now))
        .collect();
    let cursor = cursor.filter(|c| !c.is_empty());
    let versions = load(imprint.list_versions(&caller, &name, Some(100), cursor.as_deref()).await)?;
    let open = vec!["pending".to_owned(), "approved".to_owned()];
    let mut scheduled: Vec<ScheduledRow> = load(imprint.change_requests(&caller, Some(&name), open).await)?
        .into_iter()
        .filter_map(|r| {
            let at = r.at?;
            Some((at, r))
        })
        .map(|(at, r)| ScheduledRow {
            id: r.id,
            can_withdraw: r.author == caller.who() || caller.is_admin(),
            summary: r.summary,
            state: r.state,
            at: at.to_rfc3339(),
        })
        .collect();
    scheduled.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(TopicPage {
        head: head_of(&topic, &caller),
        versions: versions.items.into_iter().map(|v| version_of(v, &pins)).collect(),
        next: versions.next,
        paged: cursor.is_some(),
        pins,
        scheduled,
    })
}

#[server(prefix = "/console/fn")]
pub async fn set_pin(
    topic: String,
    selector: String,
    version: u64,
    reason: String,
    expires_in_hours: Option<String>,
    at: Option<String>,
) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let result = async {
        let imprint = imprint().map_err(|e| imprint_service::Error::Internal(e.to_string()))?;
        let selector = imprint_domain::Selector::parse(&selector)?;
        let expires_at = match expires_in_hours.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
            None => None,
            Some(h) => match h.parse::<f64>() {
                Ok(h) if h > 0.0 && h <= 24.0 * 365.0 => {
                    Some(imprint.now() + chrono::Duration::seconds((h * 3600.0).round() as i64))
                }
                _ => {
                    return Err(imprint_service::Error::invalid(
                        "expires in: a number of hours above 0 (at most a year), or empty for never",
                    ))
                }
            },
        };
        let version =
            imprint_domain::VersionNumber::new(version).map_err(|e| imprint_service::Error::invalid(e.to_string()))?;
        let input = imprint_service::PinInput { selector, version, reason, expires_at };
        let opts = imprint_service::change_control::ChangeOptions {
            at: crate::ssr::scheduled_at(at.as_deref())?,
            break_glass: None,
        };
        imprint.pin_controlled(&caller, &topic_name(&topic)?, input, opts).await
    }
    .await;
    let notice = match &result {
        Ok(imprint_service::change_control::Changed::Requested(cr)) => {
            format!("Change request #{} asked for: {} (approve it on the Drafts tab)", cr.id, cr.summary)
        }
        _ => "Pinned".to_owned(),
    };
    finish(result.map(|_| ()), None, Some(&notice))
}

#[server(prefix = "/console/fn")]
pub async fn remove_pin(topic: String, selector: String) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = async {
        let s = imprint_domain::Selector::parse(&selector)?;
        imprint.unpin(&caller, &topic_name(&topic)?, &s).await
    }
    .await;
    finish(result, None, Some("Pin removed"))
}

#[server(prefix = "/console/fn")]
pub async fn add_scope(topic: String, version: u64, selector: String, at: Option<String>) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = async {
        let s = imprint_domain::Selector::parse(&selector)?;
        let v =
            imprint_domain::VersionNumber::new(version).map_err(|e| imprint_service::Error::invalid(e.to_string()))?;
        let opts = imprint_service::change_control::ChangeOptions {
            at: crate::ssr::scheduled_at(at.as_deref())?,
            break_glass: None,
        };
        imprint.add_scope_controlled(&caller, &topic_name(&topic)?, v, s, opts).await
    }
    .await;
    let notice = match &result {
        Ok(imprint_service::change_control::Changed::Requested(cr)) => {
            format!("Change request #{} asked for: {} (approve it on the Drafts tab)", cr.id, cr.summary)
        }
        _ => "Scope added".to_owned(),
    };
    finish(result.map(|_| ()), None, Some(&notice))
}

/// `/topics/:name`: the version timeline and the active pins.
#[component]
pub fn TopicPageView() -> impl IntoView {
    let params = use_params_map();
    let name = move || params.read().get("name").unwrap_or_default();
    let query = leptos_router::hooks::use_query_map();
    let cursor = move || query.read().get("cursor");
    let pin_action = ServerAction::<SetPin>::new();
    let unpin_action = ServerAction::<RemovePin>::new();
    let scope_action = ServerAction::<AddScope>::new();
    let act = ServerAction::<ChangeAct>::new();
    let page = Resource::new(
        move || {
            (
                name(),
                cursor(),
                pin_action.version().get(),
                unpin_action.version().get(),
                scope_action.version().get(),
                act.version().get(),
            )
        },
        |(n, c, ..)| load_topic(n, c),
    );
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(p) => {
                        let topic = p.head.name.clone();
                        let latest = p.head.latest_version;
                        let (t_versions, t_pins, t_pin_form, t_scope_form, t_scheduled) = (topic.clone(), topic.clone(), topic.clone(), topic.clone(), topic);
                        view! {
                            <TopicHeader head=p.head.clone() active="versions"/>
                            <ActionResult value=move || pin_action.value().get() ok="Pinned"/>
                            <ActionResult value=move || unpin_action.value().get() ok="Pin removed"/>
                            <ActionResult value=move || scope_action.value().get() ok="Scope added"/>
                            <ActionResult value=move || act.value().get() ok="Withdrawn"/>
                            <div class="columns">
                                <section class="timeline" aria-label="Versions">
                                    <h2>"Versions"</h2>
                                    {(!p.scheduled.is_empty()).then(|| { let topic = t_scheduled.clone(); view! {
                                        <ul class="scheduled" aria-label="Scheduled changes">
                                            {p.scheduled.iter().cloned().map(move |r| view! { <ScheduledItem topic=topic.clone() r act/> }).collect_view()}
                                        </ul>
                                    }})}
                                    {p.paged.then(|| view! { <p class="pager"><a href=format!("/topics/{}", p.head.name) class="more">"← Newest versions"</a></p> })}
                                    {if p.versions.is_empty() {
                                        view! { <p class="empty">"Nothing published yet."</p> }.into_any()
                                    } else {
                                        view! { <ol class="versions">{p.versions.into_iter().map(move |v| view! { <VersionItem topic=t_versions.clone() v/> }).collect_view()}</ol> }.into_any()
                                    }}
                                    {p.next.clone().map(|c| view! {
                                        <p class="pager"><a href=format!("/topics/{}?cursor={}", p.head.name, urlencoding::encode(&c)) class="more">"Older versions →"</a></p>
                                    })}
                                </section>
                                <aside class="side">
                                    <section class="card" aria-label="Active pins">
                                        <h2>"Active pins"</h2>
                                        {if p.pins.is_empty() {
                                            view! { <p class="muted">"No active pins: every consumer gets the newest version released to it."</p> }.into_any()
                                        } else {
                                            view! {
                                                <table class="pins">
                                                    <thead><tr><th>"Selector"</th><th>"Version"</th><th>"Reason"</th><th></th></tr></thead>
                                                    <tbody>
                                                        {p.pins.into_iter().map(move |pin| { let topic = t_pins.clone(); view! {
                                                            <tr>
                                                                <td><code>{pin.selector.clone()}</code></td>
                                                                <td>{format!("v{}", pin.version)}</td>
                                                                <td>{pin.reason.clone()}
                                                                    <div class="muted small">{format!("{} · {}", pin.created_by, short_time(&pin.created_at))}</div>
                                                                    {pin.expires_at.clone().map(|e| view! { <div class="small pin-expiry">{format!("expires {}", short_time(&e))}</div> })}
                                                                    {pin.stale.then(|| view! { <div class="badge stale" title="pinned long ago without an expiry: ask its owner whether it is still needed">{format!("set over {STALE_PIN_DAYS} days ago, no expiry")}</div> })}
                                                                </td>
                                                                <td>
                                                                    <ActionForm action=unpin_action>
                                                                        <input type="hidden" name="topic" value=topic/>
                                                                        <input type="hidden" name="selector" value=pin.selector.clone()/>
                                                                        <button type="submit" class="secondary">"Unpin"</button>
                                                                    </ActionForm>
                                                                </td>
                                                            </tr>
                                                        }}).collect_view()}
                                                    </tbody>
                                                </table>
                                            }.into_any()
                                        }}
                                    </section>
                                    <section class="card" aria-label="Pin a version">
                                        <h2>"Pin a version"</h2>
                                        <ActionForm action=pin_action attr:class="stack" attr:id="pin-form">
                                            <input type="hidden" name="topic" value=t_pin_form/>
                                            <label>"Selector" <input type="text" name="selector" placeholder="region=eu-west-1 (or * for everyone)" required/></label>
                                            <label>"Version" <input type="number" name="version" min="1" value=latest.max(1).to_string() required/></label>
                                            <label>"Reason" <input type="text" name="reason" placeholder="why consumers must stay on it"/></label>
                                            <label>"Expires in (hours; empty: never)" <input type="number" name="expires_in_hours" step="any" placeholder="24"/></label>
                                            <label>"At (RFC 3339, optional: scheduled)" <input type="text" name="at" placeholder="2026-12-24T06:00:00Z"/></label>
                                            <button type="submit">"Pin"</button>
                                        </ActionForm>
                                    </section>
                                    <section class="card" aria-label="Add a scope">
                                        <h2>"Release a version to more consumers"</h2>
                                        <ActionForm action=scope_action attr:class="stack" attr:id="scope-form">
                                            <input type="hidden" name="topic" value=t_scope_form/>
                                            <label>"Version" <input type="number" name="version" min="1" value=latest.max(1).to_string() required/></label>
                                            <label>"Selector" <input type="text" name="selector" placeholder="cluster=api-canary" required/></label>
                                            <label>"At (RFC 3339, optional: scheduled)" <input type="text" name="at" placeholder="2026-12-24T06:00:00Z"/></label>
                                            <button type="submit">"Add scope"</button>
                                        </ActionForm>
                                    </section>
                                </aside>
                            </div>
                        }.into_any()
                    }
                }
            })}
        </Transition>
    }
}

/// "Scheduled: <summary> at <time> (change request #N, <state>)", with Withdraw (the Drafts
/// tab's `change_act`, back here) for its author and admins.
#[component]
fn ScheduledItem(topic: String, r: ScheduledRow, act: ServerAction<ChangeAct>) -> impl IntoView {
    let id = r.id.to_string();
    view! {
        <li class=format!("scheduled-change change-{}", r.state) id=format!("scheduled-{}", r.id)>
            <span class="badge scheduled">"scheduled"</span>
            " "
            <span class="scheduled-text">{format!("Scheduled: {} at {} (change request #{}, {})", r.summary, short_time(&r.at), r.id, r.state)}</span>
            {r.can_withdraw.then(|| view! {
                <ActionForm action=act attr:class="inline">
                    <input type="hidden" name="topic" value=topic/>
                    <input type="hidden" name="id" value=id/>
                    <input type="hidden" name="action" value="withdraw"/>
                    <input type="hidden" name="back" value="versions"/>
                    <button type="submit" class="secondary">"Withdraw"</button>
                </ActionForm>
            })}
        </li>
    }
}

#[component]
fn VersionItem(topic: String, v: VersionRow) -> impl IntoView {
    let href = format!("/topics/{topic}/versions/{}", v.version);
    let class = match (v.purged, v.rejected.is_some()) {
        (true, _) => "version purged",
        (false, true) => "version rejected",
        _ => "version",
    };
    view! {
        <li class=class id=format!("v{}", v.version)>
            <div class="version-head">
                <a href=href class="vnum">{format!("v{}", v.version)}</a>
                {v.pinned_by.iter().map(|s| view! { <span class="badge pin">{format!("pinned: {s}")}</span> }).collect_view()}
                {v.purged.then(|| view! { <span class="badge purged">"purged"</span> })}
                {v.rejected.is_some().then(|| view! { <span class="badge rejected">"rejected"</span> })}
                <span class="muted small">{format!("{} · {} · {}", short_time(&v.created_at), v.created_by, human_size(v.size))}</span>
            </div>
            {(!v.message.is_empty()).then(|| view! { <p class="message">{v.message.clone()}</p> })}
            {(!v.metadata.is_empty()).then(|| view! {
                <p class="meta">{v.metadata.iter().map(|(k, val)| view! { <span class="kv"><b>{k.clone()}</b>"="{val.clone()}</span> }).collect_view()}</p>
            })}
            <ul class="scopes">
                {if let Some(reasons) = &v.rejected {
                    view! { <li class="muted small rejected-why">{format!("rejected by the checks, never released: {}", reasons.join("; "))}</li> }.into_any()
                } else if v.scopes.is_empty() {
                    view! { <li class="muted small">"released to nobody yet"</li> }.into_any()
                } else {
                    v.scopes.iter().map(|s| view! {
                        <li><code>{s.selector.clone()}</code><span class="muted small">{format!(" {} · {}", short_time(&s.added_at), s.added_by)}</span></li>
                    }).collect_view().into_any()
                }}
            </ul>
        </li>
    }
}
