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
    /// Polled with a token; anonymous reports do not count for rollout gates.
    pub authenticated: bool,
}

/// How the newest version spread over its nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PropagationView {
    pub version: u64,
    pub total: u64,
    pub seconds_to_reach: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumersPage {
    pub head: TopicHead,
    pub propagation: Option<PropagationView>,
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
    let topic = load(imprint.topic(&caller, &name).await)?;
    let labels = match labels.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => Some(imprint_domain::Selector::parse(l).map_err(|e| ServerFnError::new(format!("labels: {e}")))?),
    };
    let filter = imprint_service::model::ConsumerFilter {
        labels,
        version: None,
        lagging_only: lagging.is_some_and(|l| l == "true" || l == "on"),
        limit: None,
        cursor: None,
    };
    let list = load(imprint.consumers(&caller, &name, &filter).await)?;
    let mut by_version: Vec<(String, u64)> = list.by_version.into_iter().collect();
    by_version.sort_by(|a, b| b.1.cmp(&a.1));
    let propagation = match topic.latest_version {
        0 => None,
        v => {
            let p = load(imprint.propagation(&caller, &name, v).await)?;
            Some(PropagationView { version: p.version, total: p.total, seconds_to_reach: p.seconds_to_reach })
        }
    };
    Ok(ConsumersPage {
        propagation,
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
                authenticated: c.authenticated,
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
                        {p.propagation.clone().map(|pr| view! { <PropagationChart p=pr/> })}
                        <form method="get" action=format!("/topics/{}/consumers", p.head.name) class="inline">
                            <label>"Labels" <input type="text" name="labels" placeholder="region=eu-west-1" value=move || q.read().get("labels")/></label>
                            <label class="check"><input type="checkbox" name="lagging" value="true" checked=move || q.read().get("lagging").is_some()/>" lagging only"</label>
                            <button type="submit">"Filter"</button>
                        </form>
                        <table class="consumers">
                            <thead><tr><th>"Instance"</th><th>"Labels"</th><th>"Holds"</th><th>"Should hold"</th><th>"Last seen"</th><th>"Last error"</th></tr></thead>
                            <tbody>
                                {p.nodes.into_iter().map(|n| view! {
                                    <tr class=if n.lagging { "lagging" } else { "" }>
                                        <td>{n.instance.clone()}{n.lagging.then(|| view! { " " <span class="badge lag">"lagging"</span> })}{(!n.authenticated).then(|| view! { " " <span class="badge anon" title="polled without a token: its reports do not count for rollout gates">"anonymous"</span> })}</td>
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

fn human_secs(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// A server-rendered SVG: the share of the version's nodes holding it, over time since publish.
#[component]
fn PropagationChart(p: PropagationView) -> impl IntoView {
    const W: f64 = 640.0;
    const H: f64 = 160.0;
    let n = p.seconds_to_reach.len();
    let total = p.total.max(1) as f64;
    let span = p.seconds_to_reach.last().copied().unwrap_or(0.0).max(1.0);
    // A step line: at each node's arrival the share rises by one node.
    let mut points = vec![format!("0,{H}")];
    for (i, s) in p.seconds_to_reach.iter().enumerate() {
        let x = s / span * W;
        points.push(format!("{x:.1},{:.1}", H - (i as f64) / total * H));
        points.push(format!("{x:.1},{:.1}", H - ((i + 1) as f64) / total * H));
    }
    points.push(format!("{W},{:.1}", H - (n as f64) / total * H));
    let at = |q: f64| -> Option<String> {
        let need = (q * total).ceil() as usize;
        (need >= 1 && need <= n).then(|| human_secs(p.seconds_to_reach[need - 1]))
    };
    let summary = format!(
        "v{}: {} of {} nodes ({:.0}%) hold it{}{}",
        p.version,
        n,
        p.total,
        n as f64 / total * 100.0,
        at(0.5).map(|t| format!(" · 50% after {t}")).unwrap_or_default(),
        at(0.9).map(|t| format!(" · 90% after {t}")).unwrap_or_default(),
    );
    view! {
        <section class="card propagation" aria-label="Propagation">
            <h2>"Propagation of the newest version"</h2>
            <p class="summary">{summary}</p>
            {(n > 0).then(|| view! {
                <svg viewBox=format!("-40 -10 {} {}", W + 60.0, H + 40.0) class="chart" role="img" aria-label="share of nodes holding the version over time">
                    <line x1="0" y1=H.to_string() x2=W.to_string() y2=H.to_string() class="axis"/>
                    <line x1="0" y1="0" x2="0" y2=H.to_string() class="axis"/>
                    <text x="-6" y="4" class="tick" text-anchor="end">"100%"</text>
                    <text x="-6" y=(H + 4.0).to_string() class="tick" text-anchor="end">"0%"</text>
                    <text x="0" y=(H + 18.0).to_string() class="tick">"publish"</text>
                    <text x=W.to_string() y=(H + 18.0).to_string() class="tick" text-anchor="end">{format!("+{}", human_secs(span))}</text>
                    <polyline points=points.join(" ") class="line"/>
                </svg>
            })}
        </section>
    }
}
