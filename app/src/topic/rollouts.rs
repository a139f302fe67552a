//! The rollout panel of a topic: running and past rollouts as stage pipelines with their
//! countdowns and gates, the operator's buttons, and a form to start one.
use super::{TopicHead, TopicHeader};
use crate::common::{error_text, short_time, ActionResult};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRow {
    pub selector: String,
    pub wait_s: u64,
    pub gate: Option<String>,
    /// For the current stage of an active rollout: what its consumers report.
    pub health: Option<String>,
    pub state: String,
    pub reached_at: Option<String>,
    pub due_in_s: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRow {
    pub id: i64,
    pub version: u64,
    pub state: String,
    pub stages: Vec<StageRow>,
    pub pause_reason: Option<String>,
    pub remaining_wait_s: Option<u64>,
    pub rolled_back: bool,
    /// Why the system rolled it back (an automatic rollback's evidence).
    pub end_reason: Option<String>,
    /// Its stages' Prometheus analyses, measured so far (`checks.rs` shows them).
    pub analysis: Vec<super::checks::AnalysisView>,
    /// What the system recorded when it paused or rolled it back on its own.
    pub evidence: Option<super::checks::Evidence>,
    pub created_by: String,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutsPage {
    pub head: TopicHead,
    pub rollouts: Vec<RolloutRow>,
}

#[server(prefix = "/console/fn")]
pub async fn load_rollouts(name: String) -> Result<RolloutsPage, ServerFnError> {
    use crate::ssr::{imprint, load, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let name = load(topic_name(&name))?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    let rollouts = rollout_rows(&imprint, &caller, &name, None).await?;
    Ok(RolloutsPage { head: super::head_of(&topic, &caller), rollouts })
}

/// The topic's rollouts as the console shows them (only those of `version`, if given):
/// stages with their gates and the current one's reading, analyses, automatic evidence.
#[cfg(feature = "ssr")]
pub(crate) async fn rollout_rows(
    imprint: &imprint_service::Imprint,
    caller: &imprint_service::Caller,
    name: &imprint_domain::TopicName,
    version: Option<u64>,
) -> Result<Vec<RolloutRow>, ServerFnError> {
    use crate::ssr::load;
    let now = imprint.now();
    let mut rollouts: Vec<RolloutRow> = Vec::new();
    let items: Vec<_> = load(imprint.rollouts(caller, name, Some(500), None).await)?
        .items
        .into_iter()
        .filter(|r| version.is_none_or(|v| r.view.version == v))
        .collect();
    let ids: Vec<i64> =
        items.iter().filter(|r| r.view.pause_reason.is_some() || r.end_reason.is_some()).map(|r| r.id).collect();
    let mut evidence = load(super::checks::evidence_of(imprint, caller, name.as_str(), &ids).await)?;
    for r in items {
        let active = r.view.state.is_active();
        let current = r.view.current_stage;
        let health = match r.view.stages.get(current) {
            Some(s) if active => {
                let g = load(imprint.stage_health(caller, name, &s.selector, r.view.version).await)?;
                Some(format!(
                    "{} of {} matching nodes applied v{}, {} failed",
                    g.applied, g.matching, r.view.version, g.failed
                ))
            }
            _ => None,
        };
        rollouts.push(RolloutRow {
            id: r.id,
            version: r.view.version,
            state: r.view.state.to_string(),
            stages: r
                .view
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| StageRow {
                    health: if i == current { health.clone() } else { None },
                    selector: s.selector.to_string(),
                    wait_s: s.wait_s,
                    gate: s.gate.as_ref().map(|g| {
                        let mut parts = vec![];
                        if let Some(a) = g.min_applied_ratio() {
                            parts.push(format!("≥{:.0}% applied", a * 100.0));
                        }
                        if let Some(f) = g.max_failure_ratio() {
                            parts.push(format!("≤{:.0}% failed", f * 100.0));
                        }
                        if let Some(n) = g.min_reporting() {
                            parts.push(format!("≥{n} reporting"));
                        }
                        if let Some(b) = g.bake_s() {
                            parts.push(format!("bake {}", imprint_domain::format_wait(b)));
                        }
                        parts.join(", ")
                    }),
                    state: serde_json::to_value(s.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    reached_at: s.reached_at.map(|t| t.to_rfc3339()),
                    due_in_s: s.due_at.map(|d| (d - now).num_seconds().max(0)),
                })
                .collect(),
            pause_reason: r.view.pause_reason.clone(),
            remaining_wait_s: r.view.remaining_wait_s,
            rolled_back: r.view.rolled_back,
            end_reason: r.end_reason.clone(),
            analysis: super::checks::analysis_of(&r.analysis),
            // Only the evidence of why it stands as it does now (not of an earlier pause).
            evidence: evidence.remove(&r.id).filter(|e| {
                r.view.pause_reason.as_deref() == Some(e.reason.as_str())
                    || r.end_reason.as_deref().is_some_and(|end| end.contains(e.reason.as_str()))
            }),
            created_by: r.created_by,
            created_at: r.created_at.to_rfc3339(),
        });
    }
    Ok(rollouts)
}

/// Reads the form's stage lines in the one stage syntax (`imprint_domain::parse_plan`).
#[cfg(feature = "ssr")]
fn parse_stages(text: &str) -> Result<imprint_domain::Plan, imprint_service::Error> {
    imprint_domain::parse_plan(text.lines()).map_err(|e| imprint_service::Error::invalid(e.to_string()))
}

#[server(prefix = "/console/fn")]
pub async fn start_rollout(
    topic: String,
    version: u64,
    stages: String,
    at: Option<String>,
) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = async {
        let plan = parse_stages(&stages)?;
        let v =
            imprint_domain::VersionNumber::new(version).map_err(|e| imprint_service::Error::invalid(e.to_string()))?;
        let choice = imprint_service::PlanChoice::Inline(plan);
        let opts = imprint_service::change_control::ChangeOptions {
            at: crate::ssr::scheduled_at(at.as_deref())?,
            break_glass: None,
        };
        imprint.start_rollout_controlled(&caller, &topic_name(&topic)?, v, choice, opts).await
    }
    .await;
    let notice = match &result {
        Ok(imprint_service::change_control::Changed::Requested(cr)) => {
            format!("Change request #{} asked for: {} (approve it on the Drafts tab)", cr.id, cr.summary)
        }
        _ => "Rollout started".to_owned(),
    };
    finish(result.map(|_| ()), None, Some(&notice))
}

#[server(prefix = "/console/fn")]
pub async fn rollout_act(
    topic: String,
    id: i64,
    action: String,
    rollback: Option<String>,
) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = async {
        let a = action
            .parse::<imprint_domain::RolloutAction>()
            .map_err(|e| imprint_service::Error::invalid(e.to_string()))?;
        let rollback = rollback.is_some_and(|r| r == "true");
        imprint.rollout_action(&caller, &topic_name(&topic)?, id, a, rollback).await.map(|_| ())
    }
    .await;
    finish(result, None, Some("Rollout updated"))
}

fn countdown(s: i64) -> String {
    match s {
        0 => "due now".to_owned(),
        s if s < 120 => format!("in {s}s"),
        s if s < 7200 => format!("in {}m {}s", s / 60, s % 60),
        s => format!("in {}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[component]
pub fn RolloutsPageView() -> impl IntoView {
    let params = use_params_map();
    let start = ServerAction::<StartRollout>::new();
    let act = ServerAction::<RolloutAct>::new();
    let live = crate::live::live_changes(move || params.read().get("name").unwrap_or_default());
    crate::live::provide_ticker();
    let page = Resource::new(
        move || (params.read().get("name").unwrap_or_default(), start.version().get(), act.version().get(), live.get()),
        |(n, ..)| load_rollouts(n),
    );
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(p) => {
                        let topic = p.head.name.clone();
                        let latest = p.head.latest_version;
                        let t_form = topic.clone();
                        view! {
                            <TopicHeader head=p.head.clone() active="rollouts"/>
                            <ActionResult value=move || start.value().get() ok="Rollout started"/>
                            <ActionResult value=move || act.value().get() ok="Rollout updated"/>
                            {if p.rollouts.is_empty() {
                                view! { <p class="empty">"No rollouts yet."</p> }.into_any()
                            } else {
                                p.rollouts.into_iter().map(move |r| { let topic = topic.clone(); view! { <RolloutCard topic r act/> } }).collect_view().into_any()
                            }}
                            <section class="card" aria-label="Start a rollout">
                                <h2>"Roll out the newest version"</h2>
                                <ActionForm action=start attr:class="stack" attr:id="rollout-form">
                                    <input type="hidden" name="topic" value=t_form/>
                                    <label>"Version" <input type="number" name="version" min="1" value=latest.max(1).to_string() required/></label>
                                    <label>"Stages, one per line: selector, wait (600, 10m, 1h30m), optional gates"
                                        <textarea name="stages" rows="4" class="mono" required
                                            placeholder="cluster=api-canary 10m min_applied=0.9 max_failure=0.05\nregion=us-east-1 30m\n*"></textarea>
                                    </label>
                                    <label>"At (RFC 3339, optional: scheduled)" <input type="text" name="at" placeholder="2026-12-24T06:00:00Z"/></label>
                                    <button type="submit">"Start rollout"</button>
                                </ActionForm>
                            </section>
                        }.into_any()
                    }
                }
            })}
        </Transition>
    }
}

#[component]
fn RolloutCard(topic: String, r: RolloutRow, act: ServerAction<RolloutAct>) -> impl IntoView {
    let ticker = use_context::<crate::live::Ticker>();
    let active = r.state == "running" || r.state == "paused";
    let id = r.id.to_string();
    let buttons: Vec<(&'static str, &'static str, bool)> = match r.state.as_str() {
        "running" => vec![
            ("pause", "Pause", false),
            ("advance", "Advance", false),
            ("complete", "Complete", false),
            ("cancel", "Cancel", false),
            ("cancel", "Cancel and roll back", true),
        ],
        "paused" => vec![
            ("resume", "Resume", false),
            ("advance", "Advance", false),
            ("complete", "Complete", false),
            ("cancel", "Cancel", false),
            ("cancel", "Cancel and roll back", true),
        ],
        _ => vec![],
    };
    view! {
        <section class=format!("card rollout rollout-{}", r.state) id=format!("rollout-{}", r.id) aria-label=format!("Rollout {}", r.id)>
            <h2>
                {format!("Rollout #{} of v{}", r.id, r.version)}
                " " <span class=format!("badge rollout-{}", r.state)>{r.state.clone()}</span>
                {r.rolled_back.then(|| view! { " " <span class="badge pin">"rolled back"</span> })}
            </h2>
            <p class="muted small">{format!("started {} by {}", short_time(&r.created_at), r.created_by)}</p>
            {r.pause_reason.clone().map(|why| view! { <p class="flash readonly pause-reason">{why}</p> })}
            {r.end_reason.clone().map(|why| view! { <p class="flash error rollback-reason" role="status">{why}</p> })}
            {r.evidence.clone().map(|e| view! { <super::checks::EvidenceBanner e show_reason=false/> })}
            <ol class="pipeline">
                {r.stages.iter().enumerate().map(|(i, s)| view! {
                    <li class=format!("stage {}", s.state)>
                        <div class="stage-n">{format!("Stage {}", i + 1)}</div>
                        <code>{s.selector.clone()}</code>
                        <div class="small due">{match (&s.reached_at, s.due_in_s) {
                            (Some(at), _) => format!("reached {}", short_time(at)).into_any(),
                            // Ticks down in the browser from when the data was loaded.
                            (None, Some(d)) => {
                                let base = ticker.map(|t| t.0.get_untracked()).unwrap_or(0);
                                (move || format!("due {}", countdown((d - (ticker.map(|t| t.0.get()).unwrap_or(0) - base)).max(0)))).into_any()
                            }
                            (None, None) if s.state == "skipped" => "skipped".into_any(),
                            (None, None) => "waiting".into_any(),
                        }}</div>
                        {(i + 1 < r.stages.len()).then(|| view! { <div class="muted small">{format!("then wait {}", imprint_domain::format_wait(s.wait_s))}</div> })}
                        {s.gate.clone().map(|g| view! { <div class="small gate">{format!("gate: {g}")}</div> })}
                        {s.health.clone().map(|h| view! { <div class="small health">{h}</div> })}
                    </li>
                }).collect_view()}
            </ol>
            <super::checks::AnalysisRuns runs=r.analysis.clone() stages=r.stages.iter().map(|s| s.selector.clone()).collect()/>
            {r.remaining_wait_s.map(|s| view! { <p class="muted small">{format!("Paused with {s}s left before the next stage.")}</p> })}
            {active.then(|| view! {
                <div class="actions">
                    {buttons.into_iter().map(move |(action, label, rollback)| { let (topic, id) = (topic.clone(), id.clone()); view! {
                        <ActionForm action=act>
                            <input type="hidden" name="topic" value=topic/>
                            <input type="hidden" name="id" value=id/>
                            <input type="hidden" name="action" value=action/>
                            {rollback.then(|| view! { <input type="hidden" name="rollback" value="true"/> })}
                            <button type="submit" class=if action == "cancel" { "danger" } else { "secondary" }>{label}</button>
                        </ActionForm>
                    }}).collect_view()}
                </div>
            })}
        </section>
    }
}
