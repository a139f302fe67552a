//! The consumers of a topic: which node holds which version, who lags, who failed.
use super::plaintext_reads::{PlaintextReadAudit, PlaintextReadView};
use super::{TopicHead, TopicHeader};
use crate::common::{error_text, short_time};
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
    /// The last version it tried failed to apply.
    pub failed: bool,
    /// Polled with a token; anonymous reports do not count for rollout gates.
    pub authenticated: bool,
    /// The relay it polls, when it reaches the server through one (docs/agent.md).
    pub relayed_by: Option<String>,
    /// The region whose copy served its last applied download (docs/regions.md).
    #[serde(default)]
    pub served_region: Option<String>,
}

/// Nodes shown per page of the node list.
#[cfg(feature = "ssr")]
pub const NODES_PER_PAGE: u64 = 100;

/// How the newest version spread over its nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PropagationView {
    pub version: u64,
    pub total: u64,
    pub seconds_to_reach: Vec<f64>,
}

/// One row of the grouped view: (value, total, per version held, lagging, failed).
pub type GroupRow = (String, u64, Vec<(String, u64)>, u64, u64);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumersPage {
    pub head: TopicHead,
    pub propagation: Option<PropagationView>,
    pub nodes: Vec<NodeRow>,
    pub by_version: Vec<(String, u64)>,
    pub total: u64,
    /// Zero-based page of the node list, and how many pages there are.
    pub page: u64,
    pub pages: u64,
    pub group_by: Option<String>,
    pub label_keys: Vec<String>,
    /// One row per value of `group_by`: (value, total, per version held, lagging, failed).
    pub groups: Vec<GroupRow>,
    /// The versions held across the groups (the matrix's columns), newest first.
    pub group_versions: Vec<String>,
    pub stale_minutes: i64,
    /// The plaintext-read audit, for an at-rest topic's publishers and admins (`plaintext_reads.rs`).
    #[serde(default)]
    pub plaintext_reads: Option<Vec<PlaintextReadView>>,
}

#[server(prefix = "/console/fn")]
pub async fn load_consumers(
    name: String,
    labels: Option<String>,
    lagging: Option<String>,
    group_by: Option<String>,
    page: Option<u64>,
) -> Result<ConsumersPage, ServerFnError> {
    use crate::ssr::{imprint, load, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let name = load(topic_name(&name))?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    let labels = match labels.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => Some(imprint_domain::Selector::parse(l).map_err(|e| ServerFnError::new(format!("labels: {e}")))?),
    };
    let filter = imprint_service::model::ConsumerFilter {
        labels,
        version: None,
        lagging_only: lagging.is_some_and(|l| l == "true" || l == "on"),
        limit: Some(NODES_PER_PAGE as u32),
        cursor: page.filter(|p| *p > 0).map(|p| imprint_service::cursor::encode((p * NODES_PER_PAGE) as i64)),
        group_by: group_by.clone().filter(|g| !g.trim().is_empty()),
    };
    let list = load(imprint.consumers(&caller, &name, &filter).await)?;
    let mut by_version: Vec<(String, u64)> = list.by_version.into_iter().collect();
    by_version.sort_by_key(|v| std::cmp::Reverse(v.1));
    let propagation = match topic.latest_version {
        0 => None,
        v => {
            let p = load(imprint.propagation(&caller, &name, v).await)?;
            Some(PropagationView { version: p.version, total: p.total, seconds_to_reach: p.seconds_to_reach })
        }
    };
    let mut group_versions: Vec<String> = list
        .groups
        .iter()
        .flat_map(|g| g.by_version.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    group_versions.sort_by_key(|v| std::cmp::Reverse(v.parse::<u64>().unwrap_or(0)));
    let head = super::head_of(&topic, &caller);
    let plaintext_reads = load(super::plaintext_reads::plaintext_reads_of(&imprint, &caller, &name, &head).await)?;
    Ok(ConsumersPage {
        propagation,
        plaintext_reads,
        head,
        total: list.total,
        page: page.unwrap_or(0),
        pages: list.total.div_ceil(NODES_PER_PAGE),
        group_by: filter.group_by.clone(),
        label_keys: list.label_keys,
        groups: list
            .groups
            .into_iter()
            .map(|g| (g.value, g.total, g.by_version.into_iter().collect(), g.lagging, g.failed))
            .collect(),
        group_versions,
        stale_minutes: imprint_service::consumers::STALE_AFTER_MINUTES,
        by_version,
        nodes: list
            .consumers
            .into_iter()
            .map(|c| NodeRow {
                instance: c.instance,
                labels: c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                version: c.version,
                expected: c.expected_version,
                lagging: c.lagging,
                last_seen: c.last_seen.to_rfc3339(),
                failed: c.last_applied_ok == Some(false),
                last_error: c.last_error,
                authenticated: c.authenticated,
                relayed_by: c.relayed_by,
                served_region: c.served_region,
            })
            .collect(),
    })
}

#[component]
pub fn ConsumersPageView() -> impl IntoView {
    let params = use_params_map();
    let q = use_query_map();
    let live = crate::live::live_changes(move || params.read().get("name").unwrap_or_default());
    let page = Resource::new(
        move || {
            (
                live.get(),
                params.read().get("name").unwrap_or_default(),
                q.read().get("labels"),
                q.read().get("lagging"),
                q.read().get("group_by"),
                q.read().get("page").and_then(|p| p.parse::<u64>().ok()),
            )
        },
        |(_, n, l, g, by, page)| load_consumers(n, l, g, by, page),
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
                        {p.plaintext_reads.clone().map(|rows| view! { <PlaintextReadAudit rows=rows/> })}
                        <form method="get" action=format!("/topics/{}/consumers", p.head.name) class="inline">
                            <label>"Labels" <input type="text" name="labels" placeholder="region=eu-west-1" value=move || q.read().get("labels")/></label>
                            <label class="check"><input type="checkbox" name="lagging" value="true" checked=move || q.read().get("lagging").is_some()/>" lagging only"</label>
                            <label>"Group by"
                                <select name="group_by">
                                    <option value="" selected=p.group_by.is_none()>"— no grouping —"</option>
                                    {p.label_keys.iter().map(|k| view! { <option value=k.clone() selected=p.group_by.as_deref() == Some(k.as_str())>{k.clone()}</option> }).collect_view()}
                                </select>
                            </label>
                            <button type="submit">"Filter"</button>
                        </form>
                        {p.group_by.clone().map(|key| view! { <GroupMatrix key=key groups=p.groups.clone() versions=p.group_versions.clone()/> })}
                        <table class="consumers">
                            <thead><tr><th>"Instance"</th><th>"Labels"</th><th>"Holds"</th><th>"Should hold"</th><th>"Last seen"</th><th>"Last error"</th></tr></thead>
                            <tbody>
                                {p.nodes.into_iter().map(|n| view! {
                                    <tr class=if n.failed { "failed" } else if n.lagging { "lagging" } else { "" }>
                                        <td>{n.instance.clone()}{n.failed.then(|| view! { " " <span class="badge failed">"failed"</span> })}{n.lagging.then(|| view! { " " <span class="badge lag">"lagging"</span> })}{(!n.authenticated).then(|| view! { " " <span class="badge anon" title="polled without a token: its reports do not count for rollout gates">"anonymous"</span> })}{n.relayed_by.clone().map(|r| view! { " " <span class="badge relay" title=format!("reports through the relay {r}")>{format!("via {r}")}</span> })}</td>
                                        <td><code class="small">{n.labels.clone()}</code></td>
                                        <td class="held">{v(n.version)}{n.served_region.clone().map(|r| view! { " " <span class="badge region" title=format!("its last download came from the {r} region's copy")>{format!("from {r}")}</span> })}</td>
                                        <td>{v(n.expected)}</td>
                                        <td class="nowrap">{short_time(&n.last_seen)}</td>
                                        <td class="error-text">{n.last_error.clone().unwrap_or_default()}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                        <Pager page=p.page pages=p.pages/>
                        <p class="muted small">{format!("{} node(s), trouble first (failed, lagging, not seen for {} min). A node lags when it holds another version than it should for more than a grace period.", p.total, p.stale_minutes)}</p>
                    }.into_any(),
                }
            })}
        </Transition>
    }
}

/// Previous / next links over the node list, keeping the other query parameters.
#[component]
fn Pager(page: u64, pages: u64) -> impl IntoView {
    let q = use_query_map();
    let href = move |p: u64| {
        let mut pairs: Vec<(String, String)> = q
            .read()
            .clone()
            .into_iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.push(("page".into(), p.to_string()));
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", urlencoding::encode(v))).collect();
        format!("?{}", query.join("&"))
    };
    (pages > 1).then(|| {
        view! {
            <nav class="pager" aria-label="Node pages">
                {(page > 0).then(|| view! { <a href=href(page - 1) rel="prev">"← newer trouble"</a> })}
                <span class="muted small">{format!("page {} of {pages}", page + 1)}</span>
                {(page + 1 < pages).then(|| view! { <a href=href(page + 1) rel="next">"more →"</a> })}
            </nav>
        }
    })
}

/// Label value × version held, with lagging and failed nodes per value.
#[component]
fn GroupMatrix(key: String, groups: Vec<GroupRow>, versions: Vec<String>) -> impl IntoView {
    let label = |v: &str| if v == "none" { "none".to_owned() } else { format!("v{v}") };
    view! {
        <section class="card" aria-label="Consumers by label">
            <h2>{format!("Consumers by {key}")}</h2>
            <table class="group-matrix">
                <thead><tr>
                    <th>{key.clone()}</th><th class="num">"nodes"</th>
                    {versions.iter().map(|v| view! { <th class="num">{label(v)}</th> }).collect_view()}
                    <th class="num">"lagging"</th><th class="num">"failed"</th>
                </tr></thead>
                <tbody>
                    {groups.into_iter().map(|(value, total, by_version, lagging, failed)| {
                        let class = if failed > 0 { "failed" } else if lagging > 0 { "lagging" } else { "" };
                        let cells = versions.iter().map(|v| {
                            let n = by_version.iter().find(|(x, _)| x == v).map(|(_, n)| *n).unwrap_or(0);
                            view! { <td class="num">{if n == 0 { String::new() } else { n.to_string() }}</td> }
                        }).collect_view();
                        view! {
                            <tr class=class data-value=value.clone()>
                                <td>{if value.is_empty() { view! { <span class="muted">"(no label)"</span> }.into_any() } else { view! { <code>{value.clone()}</code> }.into_any() }}</td>
                                <td class="num total">{total}</td>
                                {cells}
                                <td class="num lagging-count">{lagging}</td>
                                <td class="num failed-count">{failed}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
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
