//! The consumers of a topic: which node holds which version, who lags, who failed.
use crate::common::{error_text, short_time};
use crate::topic::{TopicHead, TopicHeader};
use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub instance: String,
    pub labels: String,
    pub version: Option<u64>,
    pub expected: Option<u64>,
    pub lagging: bool,
    pub last_seen: String,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumersPage {
    pub head: TopicHead,
    pub nodes: Vec<NodeRow>,
    pub by_version: Vec<(String, u64)>,
    pub total: u64,
}

#[server(prefix = "/console/fn")]
pub async fn load_consumers(
    name: String,
    labels: Option<String>,
    lagging: Option<String>,
) -> Result<ConsumersPage, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let topic = load(imprint.topic(&name).await)?;
    let labels = match labels.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => Some(imprint_domain::Selector::parse(l).map_err(|e| ServerFnError::new(format!("labels: {e}")))?),
    };
    let filter = imprint_service::audit::ConsumerFilter {
        labels,
        version: None,
        lagging_only: lagging.is_some_and(|l| l == "true" || l == "on"),
    };
    let list = load(imprint.consumers(&name, &filter).await)?;
    let mut by_version: Vec<(String, u64)> = list.by_version.into_iter().collect();
    by_version.sort_by(|a, b| b.1.cmp(&a.1));
    Ok(ConsumersPage {
        head: crate::topic::head_of(&topic, &caller),
        total: list.total,
        by_version,
        nodes: list
            .consumers
            .into_iter()
            .take(1000)
            .map(|c| NodeRow {
                instance: c.instance,
                labels: c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                version: c.version,
                expected: c.expected_version,
                lagging: c.lagging,
                last_seen: c.last_seen.to_rfc3339(),
                last_error: c.last_error,
            })
            .collect(),
    })
}

#[component]
pub fn ConsumersPageView() -> impl IntoView {
    let params = use_params_map();
    let q = use_query_map();
    let page = Resource::new(
        move || (params.read().get("name").unwrap_or_default(), q.read().get("labels"), q.read().get("lagging")),
        |(n, l, g)| load_consumers(n, l, g),
    );
    let v = |x: Option<u64>| x.map(|v| format!("v{v}")).unwrap_or_else(|| "—".into());
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(p) => view! {
                        <TopicHeader head=p.head.clone() active="consumers"/>
                        <section class="card" aria-label="Versions held">
                            <h2>"Versions held"</h2>
                            {if p.by_version.is_empty() {
                                view! { <p class="muted">"Nobody has polled this topic yet."</p> }.into_any()
                            } else {
                                view! { <p class="counts">{p.by_version.iter().map(|(ver, n)| view! {
                                    <span class="count"><b>{if ver == "none" { "none".to_owned() } else { format!("v{ver}") }}</b>{format!(" {n} node{}", if *n == 1 { "" } else { "s" })}</span>
                                }).collect_view()}</p> }.into_any()
                            }}
                        </section>
                        <form method="get" action=format!("/topics/{}/consumers", p.head.name) class="inline">
                            <label>"Labels" <input type="text" name="labels" placeholder="region=eu-west-1"/></label>
                            <label class="check"><input type="checkbox" name="lagging" value="true"/>" lagging only"</label>
                            <button type="submit">"Filter"</button>
                        </form>
                        <table class="consumers">
                            <thead><tr><th>"Instance"</th><th>"Labels"</th><th>"Holds"</th><th>"Should hold"</th><th>"Last seen"</th><th>"Last error"</th></tr></thead>
                            <tbody>
                                {p.nodes.into_iter().map(|n| view! {
                                    <tr class=if n.lagging { "lagging" } else { "" }>
                                        <td>{n.instance.clone()}{n.lagging.then(|| view! { " " <span class="badge lag">"lagging"</span> })}</td>
                                        <td><code class="small">{n.labels.clone()}</code></td>
                                        <td class="held">{v(n.version)}</td>
                                        <td>{v(n.expected)}</td>
                                        <td class="nowrap">{short_time(&n.last_seen)}</td>
                                        <td class="error-text">{n.last_error.clone().unwrap_or_default()}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                        <p class="muted small">{format!("{} node(s) shown. A node lags when it holds another version than it should for more than a grace period.", p.total)}</p>
                    }.into_any(),
                }
            })}
        </Transition>
    }
}
