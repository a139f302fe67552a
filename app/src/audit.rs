//! The audit log: every operator action, newest first, with filters.
use crate::common::{error_text, short_time};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub topic: Option<String>,
    pub details: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditPageData {
    pub rows: Vec<AuditRow>,
    pub next: Option<String>,
}

#[server(prefix = "/console/fn")]
pub async fn load_audit(
    topic: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    cursor: Option<String>,
) -> Result<AuditPageData, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    let (_, caller) = require_user().await?;
    let nonempty = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let filter = imprint_service::model::AuditFilter {
        topic: nonempty(topic),
        actor: nonempty(actor),
        action: nonempty(action),
        limit: Some(100),
        cursor: nonempty(cursor),
    };
    let page = load(imprint()?.audit_log(&caller, &filter).await)?;
    Ok(AuditPageData {
        rows: page
            .items
            .into_iter()
            .map(|e| AuditRow {
                at: e.at.to_rfc3339(),
                actor: e.actor,
                action: e.action,
                topic: e.topic,
                details: serde_json::to_string(&e.details).unwrap_or_default(),
            })
            .collect(),
        next: page.next,
    })
}

#[component]
pub fn AuditPage() -> impl IntoView {
    let q = use_query_map();
    let get = move |k: &str| q.read().get(k);
    let page = Resource::new(
        move || (get("topic"), get("actor"), get("action"), get("cursor")),
        |(t, a, x, c)| load_audit(t, a, x, c),
    );
    view! {
        <Title text="Audit log"/>
        <section class="page-head">
            <h1>"Audit log"</h1>
            <form method="get" action="/audit" class="inline filters" role="search">
                <input type="text" name="topic" placeholder="topic" value=move || get("topic") aria-label="Topic"/>
                <input type="text" name="actor" placeholder="who (user:alice, token:ci)" value=move || get("actor") aria-label="Actor"/>
                <input type="text" name="action" placeholder="action (pin., version.publish)" value=move || get("action") aria-label="Action"/>
                <button type="submit">"Filter"</button>
            </form>
        </section>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(p) if p.rows.is_empty() => view! { <p class="empty">"No matching entries."</p> }.into_any(),
                    Ok(p) => {
                        let next = p.next.clone().map(|c| {
                            let mut params: Vec<String> = ["topic", "actor", "action"].iter()
                                .filter_map(|k| get(k).map(|v| format!("{k}={}", urlencoding::encode(&v)))).collect();
                            params.push(format!("cursor={}", urlencoding::encode(&c)));
                            format!("/audit?{}", params.join("&"))
                        });
                        view! {
                            <table class="audit">
                                <thead><tr><th>"When (UTC)"</th><th>"Who"</th><th>"Action"</th><th>"Topic"</th><th>"What changed"</th></tr></thead>
                                <tbody>
                                    {p.rows.into_iter().map(|r| view! {
                                        <tr>
                                            <td class="nowrap">{short_time(&r.at)}</td>
                                            <td>{r.actor.clone()}</td>
                                            <td><code>{r.action.clone()}</code></td>
                                            <td>{r.topic.clone().map(|t| view! { <a href=format!("/topics/{t}")>{t.clone()}</a> })}</td>
                                            <td class="details"><code class="small">{r.details.clone()}</code></td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            {next.map(|href| view! { <p><a href=href class="more">"Older entries →"</a></p> })}
                        }.into_any()
                    }
                }
            })}
        </Transition>
    }
}
