//! `/topics/:name/matrix`: the scope matrix (which selector gets which version, computed by
//! the service) and "what does a consumer with these labels see", now or at a time.
use super::{TopicHead, TopicHeader};
use crate::common::{error_text, short_time};
use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

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
    use crate::ssr::{imprint, load, require_user, topic_name};
    use imprint_domain::Labels;
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let name = load(topic_name(&name))?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    // Computed by the service (imprint_service::matrix): rows, columns, what each row resolves to.
    let m = load(imprint.scope_matrix(&caller, &name).await)?;
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
            let r = load(imprint.resolve(&caller, &name, &parsed, at_time).await)?;
            Some(Answer {
                labels: parsed.to_string(),
                at: at_time.map(|t| t.to_rfc3339()),
                version: r.map(|r| r.version),
                pinned: r.is_some_and(|r| r.pinned),
            })
        }
    };
    Ok(Matrix { head: super::head_of(&topic, &caller), columns, rows, answer })
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
