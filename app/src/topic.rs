//! The topic page and its tabs: version timeline, pins, publishing, the scope matrix,
//! and settings. Every action is a server function that authorizes the caller.
use crate::common::{error_text, human_size, short_time, ActionResult, Flash};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinView {
    pub selector: String,
    pub version: u64,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
    /// When the pin stops applying by itself, if it does.
    pub expires_at: Option<String>,
    /// Set long ago (more than `STALE_PIN_DAYS`) and never expiring: worth a second look.
    pub stale: bool,
}

/// Pins older than this without an expiry are flagged: a forgotten pin holds a scope back.
pub const STALE_PIN_DAYS: i64 = 7;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScopeView {
    pub selector: String,
    pub added_at: String,
    pub added_by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRow {
    pub version: u64,
    pub created_at: String,
    pub created_by: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub message: String,
    pub metadata: Vec<(String, String)>,
    pub scopes: Vec<ScopeView>,
    pub purged: bool,
    /// Selectors of active pins holding consumers on this version.
    pub pinned_by: Vec<String>,
    /// `inline` (in Postgres) or `object` (the object store).
    pub storage: String,
    pub object_url: Option<String>,
    /// Published as a pointer to an existing object (never deleted by Imprint).
    pub object_registered: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicHead {
    pub name: String,
    pub description: String,
    pub owner: String,
    pub latest_version: u64,
    pub last_published_at: Option<String>,
    pub rollout_state: Option<String>,
    pub can_write: bool,
}

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
}

#[cfg(feature = "ssr")]
pub fn head_of(t: &imprint_service::model::Topic, caller: &imprint_service::Caller) -> TopicHead {
    convert::head(t, caller)
}

#[cfg(feature = "ssr")]
pub fn pin_of(p: imprint_service::model::Pin) -> PinView {
    convert::pin(p)
}

#[cfg(feature = "ssr")]
pub fn version_of(v: imprint_service::model::Version, pins: &[PinView]) -> VersionRow {
    convert::version(v, pins)
}

#[cfg(feature = "ssr")]
mod convert {
    use super::*;
    use imprint_service::model::{Pin, Topic, Version};

    pub fn head(t: &Topic, caller: &imprint_service::Caller) -> TopicHead {
        TopicHead {
            name: t.name.clone(),
            description: t.description.clone(),
            owner: t.owner.clone(),
            latest_version: t.latest_version,
            last_published_at: t.last_published_at.map(|d| d.to_rfc3339()),
            rollout_state: t.rollout_state.clone(),
            can_write: caller.require_write(&t.name, &t.owner).is_ok(),
        }
    }

    pub fn pin(p: Pin) -> PinView {
        PinView {
            selector: p.selector.to_string(),
            version: p.version,
            reason: p.reason,
            created_by: p.created_by,
            created_at: p.created_at.to_rfc3339(),
            expires_at: p.expires_at.map(|e| e.to_rfc3339()),
            stale: p.expires_at.is_none() && chrono::Utc::now() - p.created_at > chrono::Duration::days(STALE_PIN_DAYS),
        }
    }

    pub fn version(v: Version, pins: &[PinView]) -> VersionRow {
        VersionRow {
            version: v.version,
            created_at: v.created_at.to_rfc3339(),
            created_by: v.created_by,
            size: v.size,
            sha256: v.sha256,
            content_type: v.content_type,
            message: v.message,
            metadata: v.metadata.into_iter().collect(),
            scopes: v
                .scopes
                .into_iter()
                .map(|s| ScopeView {
                    selector: s.selector.to_string(),
                    added_at: s.added_at.to_rfc3339(),
                    added_by: s.added_by,
                })
                .collect(),
            purged: v.purged,
            pinned_by: pins.iter().filter(|p| p.version == v.version).map(|p| p.selector.clone()).collect(),
            storage: v.storage,
            object_url: v.object_url,
            object_registered: v.object_registered,
        }
    }
}

#[server(prefix = "/console/fn")]
pub async fn load_topic(name: String, cursor: Option<String>) -> Result<TopicPage, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    let pins: Vec<PinView> =
        load(imprint.pins(&caller, &name, false, Some(500), None).await)?.items.into_iter().map(convert::pin).collect();
    let cursor = cursor.filter(|c| !c.is_empty());
    let versions = load(imprint.list_versions(&caller, &name, Some(100), cursor.as_deref()).await)?;
    Ok(TopicPage {
        head: convert::head(&topic, &caller),
        versions: versions.items.into_iter().map(|v| convert::version(v, &pins)).collect(),
        next: versions.next,
        paged: cursor.is_some(),
        pins,
    })
}

#[server(prefix = "/console/fn")]
pub async fn set_pin(
    topic: String,
    selector: String,
    version: u64,
    reason: String,
    expires_in_hours: Option<String>,
) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let result = async {
        let selector = imprint_domain::Selector::parse(&selector)?;
        let expires_at = match expires_in_hours.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
            None => None,
            Some(h) => match h.parse::<f64>() {
                Ok(h) if h > 0.0 && h <= 24.0 * 365.0 => {
                    Some(chrono::Utc::now() + chrono::Duration::seconds((h * 3600.0).round() as i64))
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
        imprint()
            .map_err(|e| imprint_service::Error::Internal(e.to_string()))?
            .pin(&caller, &topic, imprint_service::PinInput { selector, version, reason, expires_at })
            .await
    }
    .await;
    finish(result.map(|_| ()), None, Some("Pinned"))
}

#[server(prefix = "/console/fn")]
pub async fn remove_pin(topic: String, selector: String) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = match imprint_domain::Selector::parse(&selector) {
        Ok(s) => imprint.unpin(&caller, &topic, &s).await,
        Err(e) => Err(e.into()),
    };
    finish(result, None, Some("Pin removed"))
}

#[server(prefix = "/console/fn")]
pub async fn add_scope(topic: String, version: u64, selector: String) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = match imprint_domain::Selector::parse(&selector) {
        Ok(s) => match imprint_domain::VersionNumber::new(version) {
            Ok(v) => imprint.add_scope(&caller, &topic, v, s).await.map(|_| ()),
            Err(e) => Err(imprint_service::Error::invalid(e.to_string())),
        },
        Err(e) => Err(e.into()),
    };
    finish(result, None, Some("Scope added"))
}

/// The tabs of a topic.
#[component]
pub fn TopicTabs(name: String, active: &'static str) -> impl IntoView {
    let tabs = [
        ("versions", ""),
        ("publish", "/publish"),
        ("matrix", "/matrix"),
        ("rollouts", "/rollouts"),
        ("consumers", "/consumers"),
        ("settings", "/settings"),
    ];
    view! {
        <nav class="tabs" aria-label="Topic">
            {tabs.into_iter().map(|(label, suffix)| {
                let href = format!("/topics/{name}{suffix}");
                let class = if label == active { "tab active" } else { "tab" };
                view! { <a href=href class=class>{label}</a> }
            }).collect_view()}
        </nav>
    }
}

#[component]
pub fn TopicHeader(head: TopicHead, active: &'static str) -> impl IntoView {
    let name = head.name.clone();
    view! {
        <Title text=head.name.clone()/>
        <section class="page-head topic-head">
            <div>
                <h1 class="topic-name">{head.name.clone()}</h1>
                <p class="muted">{head.description.clone()}</p>
            </div>
            <dl class="facts">
                <div><dt>"Owner"</dt><dd title="the team whose members and tokens may change this topic">{if head.owner.is_empty() { "no team (admins only)".to_owned() } else { head.owner.clone() }}</dd></div>
                <div><dt>"Latest"</dt><dd class="latest">{if head.latest_version == 0 { "—".into() } else { format!("v{}", head.latest_version) }}</dd></div>
                <div><dt>"Last publish"</dt><dd>{head.last_published_at.as_deref().map(short_time).unwrap_or_else(|| "never".into())}</dd></div>
                {head.rollout_state.clone().map(|s| view! { <div><dt>"Rollout"</dt><dd><span class=format!("badge rollout-{s}")>{s.clone()}</span></dd></div> })}
            </dl>
        </section>
        {(!head.can_write).then(|| view! {
            <p class="flash readonly">{format!("Read only: changes to this topic need membership of team “{}” (or admin).", head.owner)}</p>
        })}
        <TopicTabs name active/>
        <Flash/>
    }
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
    let page = Resource::new(
        move || {
            (name(), cursor(), pin_action.version().get(), unpin_action.version().get(), scope_action.version().get())
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
                        let (t_versions, t_pins, t_pin_form, t_scope_form) = (topic.clone(), topic.clone(), topic.clone(), topic);
                        view! {
                            <TopicHeader head=p.head.clone() active="versions"/>
                            <ActionResult value=move || pin_action.value().get() ok="Pinned"/>
                            <ActionResult value=move || unpin_action.value().get() ok="Pin removed"/>
                            <ActionResult value=move || scope_action.value().get() ok="Scope added"/>
                            <div class="columns">
                                <section class="timeline" aria-label="Versions">
                                    <h2>"Versions"</h2>
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
                                            <button type="submit">"Pin"</button>
                                        </ActionForm>
                                    </section>
                                    <section class="card" aria-label="Add a scope">
                                        <h2>"Release a version to more consumers"</h2>
                                        <ActionForm action=scope_action attr:class="stack" attr:id="scope-form">
                                            <input type="hidden" name="topic" value=t_scope_form/>
                                            <label>"Version" <input type="number" name="version" min="1" value=latest.max(1).to_string() required/></label>
                                            <label>"Selector" <input type="text" name="selector" placeholder="cluster=api-canary" required/></label>
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

#[component]
fn VersionItem(topic: String, v: VersionRow) -> impl IntoView {
    let href = format!("/topics/{topic}/versions/{}", v.version);
    let class = if v.purged { "version purged" } else { "version" };
    view! {
        <li class=class id=format!("v{}", v.version)>
            <div class="version-head">
                <a href=href class="vnum">{format!("v{}", v.version)}</a>
                {v.pinned_by.iter().map(|s| view! { <span class="badge pin">{format!("pinned: {s}")}</span> }).collect_view()}
                {v.purged.then(|| view! { <span class="badge purged">"purged"</span> })}
                <span class="muted small">{format!("{} · {} · {}", short_time(&v.created_at), v.created_by, human_size(v.size))}</span>
            </div>
            {(!v.message.is_empty()).then(|| view! { <p class="message">{v.message.clone()}</p> })}
            {(!v.metadata.is_empty()).then(|| view! {
                <p class="meta">{v.metadata.iter().map(|(k, val)| view! { <span class="kv"><b>{k.clone()}</b>"="{val.clone()}</span> }).collect_view()}</p>
            })}
            <ul class="scopes">
                {if v.scopes.is_empty() {
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

// ---- publish ----

#[server(prefix = "/console/fn")]
pub async fn publish_form(
    topic: String,
    data: String,
    content_type: String,
    message: String,
    metadata: String,
    scopes: String,
    rollout: Option<String>,
) -> Result<u64, ServerFnError> {
    use crate::ssr::{finish, imprint, require_user};
    use imprint_service::{Error, Payload, PublishInput, RolloutRequest};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let parsed = (|| -> Result<PublishInput, Error> {
        let ct = content_type.trim();
        if ct.starts_with("application/json") {
            serde_json::from_str::<serde_json::Value>(&data)
                .map_err(|e| Error::invalid(format!("the payload is not valid JSON: {e}")))?;
        }
        let mut meta = std::collections::BTreeMap::new();
        for line in metadata.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| Error::invalid(format!("metadata line {line:?} is not key=value")))?;
            meta.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let scope_lines: Vec<&str> = scopes.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let scopes = if scope_lines.is_empty() {
            None
        } else if scope_lines == ["none"] {
            Some(vec![])
        } else {
            Some(scope_lines.iter().map(|l| imprint_domain::Selector::parse(l)).collect::<Result<Vec<_>, _>>()?)
        };
        Ok(PublishInput {
            payload: Payload::Text(data),
            content_type: (!ct.is_empty()).then(|| ct.to_owned()),
            metadata: meta,
            scopes,
            message,
            rollout: match rollout.as_deref().map(str::trim).unwrap_or("") {
                "" => RolloutRequest::TopicDefault,
                "none" => RolloutRequest::None,
                name => RolloutRequest::Plan(imprint_service::PlanChoice::Named(name.to_owned())),
            },
            sha256: None,
        })
    })();
    let result = match parsed {
        Ok(input) => imprint.publish(&caller, &topic, input).await.map(|p| p.version),
        Err(e) => Err(e),
    };
    let then = result.as_ref().ok().map(|v| format!("/topics/{topic}#v{v}"));
    let notice = result.as_ref().ok().map(|v| format!("Published v{v}"));
    finish(result, then, notice.as_deref())
}

#[component]
pub fn PublishPage() -> impl IntoView {
    let params = use_params_map();
    let name = move || params.read().get("name").unwrap_or_default();
    let page = Resource::new(name, |n| load_topic(n, None));
    let action = ServerAction::<PublishForm>::new();
    let (json_error, set_json_error) = signal(None::<String>);
    let (is_json, set_is_json) = signal(true);
    let check = move |text: String| {
        set_json_error.set(if is_json.get_untracked() {
            serde_json::from_str::<serde_json::Value>(&text).err().map(|e| format!("Not valid JSON: {e}"))
        } else {
            None
        })
    };
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(p) => {
                        let topic = p.head.name.clone();
                        view! {
                        <TopicHeader head=p.head.clone() active="publish"/>
                        {move || action.value().get().and_then(|r| r.err()).map(|e| view! { <p class="flash error" role="alert">{error_text(&e)}</p> })}
                        <ActionForm action=action attr:class="stack publish" attr:id="publish-form">
                            <input type="hidden" name="topic" value=p.head.name.clone()/>
                            <label>"Payload"
                                <textarea name="data" rows="14" class="mono" required
                                    on:input=move |ev| check(event_target_value(&ev))></textarea>
                            </label>
                            {move || json_error.get().map(|e| view! { <p class="hint error" role="alert">{e}</p> })}
                            <label>"Content type"
                                <select name="content_type" on:change=move |ev| { set_is_json.set(event_target_value(&ev) == "application/json"); set_json_error.set(None); }>
                                    <option value="application/json" selected>"application/json"</option>
                                    <option value="text/plain; charset=utf-8">"text/plain"</option>
                                    <option value="">"topic default"</option>
                                </select>
                            </label>
                            <label>"Message" <input type="text" name="message" placeholder="what changed and why"/></label>
                            <label>"Metadata (one key=value per line)" <textarea name="metadata" rows="3" class="mono" placeholder="build=1234"></textarea></label>
                            <label>"Scopes (one selector per line; empty: everyone, or the topic's default rollout plan; none: nobody yet)"
                                <textarea name="scopes" rows="3" class="mono" placeholder="*"></textarea>
                            </label>
                            <label>"Rollout plan (a plan name from the settings; empty: the topic's default plan; none: no rollout)"
                                <input type="text" name="rollout" placeholder="canary-first"/>
                            </label>
                            <button type="submit" disabled=move || json_error.get().is_some()>"Publish"</button>
                        </ActionForm>
                        <UploadForm topic=topic/>
                    }.into_any()
                    }
                }
            })}
        </Transition>
    }
}

/// A file of any size, streamed to the server (and on to the object store when it is
/// larger than the topic's inline limit). Without JavaScript a plain multipart post;
/// with it, `/upload.js` sends it with a progress bar of the bytes sent.
#[component]
fn UploadForm(topic: String) -> impl IntoView {
    // A refused upload posted without JavaScript comes back here with its reason.
    let q = leptos_router::hooks::use_query_map();
    view! {
        <h3 id="upload">"Or upload a file"</h3>
        {move || q.read().get("upload_error").map(|e| view! { <p class="flash error" role="alert">{e}</p> })}
        <p class="muted small">"Any size up to the topic's largest payload; files beyond the inline limit are kept in the object store."</p>
        <form method="post" action=format!("/console/upload/{topic}") enctype="multipart/form-data"
            class="stack publish" id="upload-form">
            <label>"Message" <input type="text" name="message" placeholder="what changed and why"/></label>
            <label>"Content type"
                <select name="content_type">
                    <option value="" selected>"from the file (or the topic default)"</option>
                    <option value="application/json">"application/json"</option>
                    <option value="application/octet-stream">"application/octet-stream"</option>
                    <option value="text/plain; charset=utf-8">"text/plain"</option>
                </select>
            </label>
            <label>"Scope (one selector; empty: everyone, or the topic's default rollout plan)"
                <input type="text" name="scope" class="mono" placeholder="*"/>
            </label>
            <label>"Rollout plan (empty: the topic's default plan; none: no rollout)"
                <input type="text" name="rollout" placeholder="canary-first"/>
            </label>
            // The file goes last: the server streams it as it arrives.
            <label>"File" <input type="file" name="file" required/></label>
            <progress class="upload-progress" max="1" value="0" hidden></progress>
            <p class="upload-status muted small" role="status"></p>
            <button type="submit">"Upload and publish"</button>
        </form>
    }
}

// ---- scope matrix ----

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatrixCell {
    pub released: bool,
    pub resolved: bool,
    pub pinned: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatrixRow {
    pub selector: String,
    pub cells: Vec<MatrixCell>,
    pub resolves_to: Option<u64>,
    pub pinned: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub head: TopicHead,
    pub columns: Vec<u64>,
    pub rows: Vec<MatrixRow>,
    /// The "what does a consumer see" answer, when labels were given.
    pub answer: Option<Answer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub labels: String,
    pub at: Option<String>,
    pub version: Option<u64>,
    pub pinned: bool,
}

#[server(prefix = "/console/fn")]
pub async fn load_matrix(name: String, labels: Option<String>, at: Option<String>) -> Result<Matrix, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    use imprint_domain::Labels;
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    // Computed by the service (imprint_service::matrix): rows, columns, what each row resolves to.
    let m = load(imprint.scope_matrix(&caller, &topic.name).await)?;
    let columns = m.columns;
    let rows = m
        .rows
        .into_iter()
        .map(|r| MatrixRow {
            selector: r.selector.to_string(),
            cells: r
                .cells
                .into_iter()
                .map(|c| MatrixCell { released: c.released, resolved: c.resolved, pinned: c.pinned })
                .collect(),
            resolves_to: r.resolves_to,
            pinned: r.pinned,
        })
        .collect();
    let answer = match labels.filter(|l| !l.trim().is_empty()) {
        None => None,
        Some(l) => {
            let parsed = Labels::parse(&l).map_err(|e| ServerFnError::new(format!("labels: {e}")))?;
            let at_time = match at.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
                None => None,
                Some(a) => Some(
                    parse_console_time(a)
                        .ok_or_else(|| ServerFnError::new(format!("{a:?} is not a time such as 2026-11-22 03:12")))?,
                ),
            };
            let r = load(imprint.resolve(&caller, &topic.name, &parsed, at_time).await)?;
            Some(Answer {
                labels: parsed.to_string(),
                at: at_time.map(|t| t.to_rfc3339()),
                version: r.map(|r| r.version),
                pinned: r.is_some_and(|r| r.pinned),
            })
        }
    };
    Ok(Matrix { head: convert::head(&topic, &caller), columns, rows, answer })
}

/// Accepts RFC 3339 or the browser's `datetime-local` form (`2026-11-22T03:12`, UTC).
#[cfg(feature = "ssr")]
fn parse_console_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDateTime, TimeZone, Utc};
    chrono::DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).ok().or_else(|| {
        ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .and_then(|n| Utc.from_local_datetime(&n).single())
    })
}

#[component]
pub fn MatrixPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let name = move || params.read().get("name").unwrap_or_default();
    let page = Resource::new(
        move || (name(), query.read().get("labels"), query.read().get("at")),
        |(n, l, a)| load_matrix(n, l, a),
    );
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(m) => {
                        let action = format!("/topics/{}/matrix", m.head.name);
                        let cols = m.columns.clone();
                        view! {
                            <TopicHeader head=m.head.clone() active="matrix"/>
                            <section class="card resolve-box" aria-label="What does a consumer see">
                                <h2>"What does a consumer see?"</h2>
                                <form method="get" action=action class="inline">
                                    <label>"Labels" <input type="text" name="labels" placeholder="region=eu-west-1,app=checkout" value=m.answer.as_ref().map(|a| a.labels.clone())/></label>
                                    <label>"At (UTC, optional)" <input type="text" name="at" placeholder="2026-11-22 03:12"/></label>
                                    <button type="submit">"Resolve"</button>
                                </form>
                                {m.answer.clone().map(|a| view! {
                                    <p class="answer" role="status">
                                        {match a.version {
                                            Some(v) => format!("{} {} v{v}{}", if a.labels == "*" { "A consumer with no labels" } else { "Consumers with" }, if a.labels == "*" { "gets".to_owned() } else { format!("{} get", a.labels) }, if a.pinned { " (pinned)" } else { "" }),
                                            None => format!("Consumers with {} get nothing: no version is released to them.", a.labels),
                                        }}
                                        {a.at.map(|t| format!(" — as of {}", short_time(&t)))}
                                    </p>
                                })}
                            </section>
                            {if m.rows.is_empty() {
                                view! { <p class="empty">"No scopes or pins yet."</p> }.into_any()
                            } else {
                                view! {
                                    <div class="matrix-wrap">
                                    <table class="matrix">
                                        <thead>
                                            <tr>
                                                <th>"Selector"</th>
                                                <th>"Resolves to now"</th>
                                                {cols.iter().map(|v| view! { <th class="num">{format!("v{v}")}</th> }).collect_view()}
                                            </tr>
                                        </thead>
                                        <tbody>
                                            {m.rows.into_iter().map(|r| view! {
                                                <tr>
                                                    <td><code>{r.selector.clone()}</code></td>
                                                    <td class="now">{match r.resolves_to {
                                                        Some(v) => format!("v{v}{}", if r.pinned { " (pinned)" } else { "" }),
                                                        None => "—".into(),
                                                    }}</td>
                                                    {r.cells.into_iter().map(|c| {
                                                        let mut class = vec!["cell"];
                                                        if c.released { class.push("released"); }
                                                        if c.resolved { class.push("resolved"); }
                                                        if c.pinned { class.push("pinned"); }
                                                        let label = [(c.released, "released"), (c.resolved, "current"), (c.pinned, "pinned")]
                                                            .iter().filter(|(on, _)| *on).map(|(_, l)| *l).collect::<Vec<_>>().join(" · ");
                                                        view! { <td class=class.join(" ") title=label.clone()>{label.clone()}</td> }
                                                    }).collect_view()}
                                                </tr>
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                    </div>
                                    <p class="muted small">"released: the version has this selector as a scope · current: the version this selector resolves to now · pinned: an active pin holds it there"</p>
                                }.into_any()
                            }}
                        }.into_any()
                    }
                }
            })}
        </Transition>
    }
}
