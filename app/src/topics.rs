//! The topic list: search, owner, latest version, last publish, active pins.
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

/// One row of the topic list, as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicRow {
    pub name: String,
    pub description: String,
    pub owner: String,
    pub latest_version: u64,
    pub last_published_at: Option<String>,
    pub active_pins: u64,
    pub consumers: u64,
    pub last_polled_at: Option<String>,
    /// End-to-end encrypted (docs/encryption.md).
    #[serde(default)]
    pub encrypted: bool,
    /// Encrypted at rest by the server (docs/encryption.md).
    #[serde(default)]
    pub at_rest: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicList {
    pub rows: Vec<TopicRow>,
    pub owners: Vec<String>,
}

/// Lists topics for a signed-in user (every signed-in user may read every topic).
#[server(prefix = "/console/fn")]
pub async fn list_topics(q: Option<String>, owner: Option<String>) -> Result<TopicList, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let page = load(imprint.list_topics(&caller, q.as_deref(), owner.as_deref(), Some(500), None).await)?;
    let owners = load(imprint.teams(&caller).await)?.into_iter().map(|t| t.name).collect();
    Ok(TopicList { owners, rows: page.items.into_iter().map(row_of).collect() })
}

#[cfg(feature = "ssr")]
fn row_of(t: imprint_service::model::Topic) -> TopicRow {
    TopicRow {
        name: t.name,
        description: t.description,
        owner: t.owner,
        latest_version: t.latest_version,
        last_published_at: t.last_published_at.map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        active_pins: t.active_pins,
        consumers: t.consumers,
        last_polled_at: t.last_polled_at.map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string()),
        encrypted: t.encryption.as_ref().is_some_and(|e| e.end_to_end()),
        at_rest: t.encryption.as_ref().is_some_and(|e| e.at_rest_key().is_some()),
    }
}

#[component]
pub fn TopicsPage() -> impl IntoView {
    let query = use_query_map();
    let q = move || query.read().get("q").filter(|q| !q.is_empty());
    let owner = move || query.read().get("owner").filter(|o| !o.is_empty());
    let topics = Resource::new(move || (q(), owner()), |(q, o)| list_topics(q, o));
    view! {
        <Title text="Topics"/>
        <section class="page-head">
            <h1>"Topics"</h1>
            <form method="get" action="/" class="search" role="search">
                <input type="search" name="q" placeholder="Search name, description, owner" value=q aria-label="Search topics"/>
                <input type="text" name="owner" placeholder="owner team" value=owner aria-label="Owner" list="owners"/>
                <button type="submit">"Search"</button>
            </form>
        </section>
        // The overview only on the plain home page (not on search results).
        {move || (q().is_none() && owner().is_none()).then(|| view! { <crate::overview::OverviewPanel/> })}
        <Transition fallback=|| view! { <p class="muted">"Loading topics…"</p> }>
            {move || Suspend::new(async move {
                match topics.await {
                    Err(e) => view! { <p class="flash error" role="alert">{format!("Could not load topics: {}", crate::common::error_text(&e))}</p> }.into_any(),
                    Ok(list) if list.rows.is_empty() => view! {
                        <div class="empty">
                            <p>"No topics yet."</p>
                            <p class="muted">"Create one with " <code>"POST /api/v1/topics"</code> "."</p>
                        </div>
                    }.into_any(),
                    Ok(list) => view! {
                        <datalist id="owners">{list.owners.iter().map(|o| view! { <option value=o.clone()/> }).collect_view()}</datalist>
                        <TopicTable rows=list.rows/>
                    }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn TopicTable(rows: Vec<TopicRow>) -> impl IntoView {
    view! {
        <table class="topics">
            <thead>
                <tr>
                    <th>"Topic"</th>
                    <th>"Owner"</th>
                    <th class="num">"Latest"</th>
                    <th>"Last publish"</th>
                    <th class="num">"Consumers"</th>
                    <th>"Pins"</th>
                </tr>
            </thead>
            <tbody>
                {rows.into_iter().map(|t| view! {
                    <tr>
                        <td>
                            <a class="topic-name" href=format!("/topics/{}", t.name)>{t.name.clone()}</a>
                            <div class="muted small">{t.description.clone()}</div>
                        </td>
                        <td>{if t.owner.is_empty() { view! { <span class="muted" title="no owner team: only admins may change it">"admins only"</span> }.into_any() } else { t.owner.clone().into_any() }}</td>
                        <td class="num latest">{if t.latest_version == 0 { "—".to_owned() } else { t.latest_version.to_string() }}</td>
                        <td class="muted">{t.last_published_at.clone().unwrap_or_else(|| "never".to_owned())}</td>
                        <td class="num consumers">{t.consumers}</td>
                        <td>{(t.active_pins > 0).then(|| view! {
                            <span class="badge pin">{format!("{} pinned", t.active_pins)}</span>
                        })}{t.encrypted.then(|| view! {
                            " " <span class="badge encrypted" title="end-to-end encrypted: the server holds ciphertext only">"encrypted"</span>
                        })}{t.at_rest.then(|| view! {
                            " " <span class="badge encrypted" title="encrypted at rest: Postgres and the object store hold sealed bytes; allowed readers get plaintext">"at rest"</span>
                        })}</td>
                    </tr>
                }).collect_view()}
            </tbody>
        </table>
    }
}

/// Topics nobody polled for N days (or ever).
#[server(prefix = "/console/fn")]
pub async fn list_unused(days: u32) -> Result<Vec<TopicRow>, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    let (_, caller) = require_user().await?;
    Ok(load(imprint()?.unused_topics(&caller, days, Some(500), None).await)?.items.into_iter().map(row_of).collect())
}

#[component]
pub fn UnusedPage() -> impl IntoView {
    let query = use_query_map();
    let days = move || query.read().get("days").and_then(|d| d.parse::<u32>().ok()).unwrap_or(7);
    let rows = Resource::new(days, list_unused);
    view! {
        <Title text="Unused topics"/>
        <section class="page-head">
            <h1>"Unused topics"</h1>
            <form method="get" action="/unused" class="inline">
                <label>"Not polled for (days)" <input type="number" name="days" min="1" value=move || days().to_string()/></label>
                <button type="submit">"Show"</button>
            </form>
        </section>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match rows.await {
                    Err(e) => view! { <p class="flash error" role="alert">{crate::common::error_text(&e)}</p> }.into_any(),
                    Ok(rows) if rows.is_empty() => view! { <p class="empty">"Every topic was polled recently."</p> }.into_any(),
                    Ok(rows) => view! {
                        <table class="unused">
                            <thead><tr><th>"Topic"</th><th>"Owner"</th><th>"Last polled"</th><th>"Last publish"</th></tr></thead>
                            <tbody>
                                {rows.into_iter().map(|t| view! {
                                    <tr>
                                        <td><a class="topic-name" href=format!("/topics/{}", t.name)>{t.name.clone()}</a></td>
                                        <td>{t.owner.clone()}</td>
                                        <td class="last-polled">{t.last_polled_at.clone().unwrap_or_else(|| "never".into())}</td>
                                        <td class="muted">{t.last_published_at.clone().unwrap_or_else(|| "never".into())}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                }
            })}
        </Transition>
    }
}
