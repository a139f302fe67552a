//! What decided a version's fate, as the console shows it (docs/validation.md): why a kept
//! version was rejected (each failed check and its message), what a rollout's Prometheus
//! analyses measured over time (a table and a small inline SVG chart), and why the system
//! paused or rolled a rollout back (a banner with the audited evidence: the gate's
//! reading, the analyses' values, the pins the rollback set). Shared by the version page
//! (`version.rs`) and the rollout page (`rollouts.rs`); plain HTML, so it reads the same
//! with JavaScript off.
use crate::common::short_time;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// One analysis run of one rollout stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisView {
    /// 0-based stage index.
    pub stage: usize,
    pub name: String,
    /// `running`, `successful`, `failed` or `inconclusive`.
    pub verdict: String,
    pub points: Vec<PointView>,
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointView {
    pub at: String,
    pub value: Option<f64>,
    pub verdict: String,
    pub reason: Option<String>,
}

/// Why the system paused a rollout or rolled it back, as its audit entry
/// (`rollout.auto_pause`, `rollout.auto_rollback`) recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub rolled_back: bool,
    pub at: String,
    /// 1-based stage number.
    pub stage: Option<u64>,
    pub reason: String,
    /// The gate's reading: (matching, applied, failed, reporting).
    pub reading: Option<(u64, u64, u64, u64)>,
    /// Each analysis: (name, verdict, values).
    pub analyses: Vec<(String, String, Vec<Option<f64>>)>,
    /// The pins the rollback set: (selector, version).
    pub pins: Vec<(String, u64)>,
}

#[cfg(feature = "ssr")]
pub fn analysis_of(runs: &[imprint_service::model::AnalysisRun]) -> Vec<AnalysisView> {
    runs.iter()
        .map(|r| AnalysisView {
            stage: r.stage,
            name: r.name.clone(),
            verdict: serde_name(&r.verdict),
            points: r
                .measurements
                .iter()
                .map(|m| PointView {
                    at: m.at.to_rfc3339(),
                    value: m.value,
                    verdict: serde_name(&m.verdict),
                    reason: m.reason.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The serde name of a verdict (`"failed"`), without a second table of names.
#[cfg(feature = "ssr")]
fn serde_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The newest automatic pause or rollback evidence of each of `ids` (rollouts of
/// `topic`), from the audit log as the caller may read it.
#[cfg(feature = "ssr")]
pub async fn evidence_of(
    imprint: &imprint_service::Imprint,
    caller: &imprint_service::Caller,
    topic: &str,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, Evidence>, imprint_service::Error> {
    let mut out = std::collections::HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let filter = imprint_service::model::AuditFilter {
        topic: Some(topic.to_owned()),
        action: Some("rollout.auto_".to_owned()),
        limit: Some(200),
        ..Default::default()
    };
    for e in imprint.audit_log(caller, &filter).await?.items {
        let d = &e.details;
        let Some(id) = d["id"].as_i64().filter(|id| ids.contains(id)) else { continue };
        if out.contains_key(&id) {
            continue; // newest first: the first one seen is the latest
        }
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let r = &d["reading"];
        out.insert(
            id,
            Evidence {
                rolled_back: e.action == "rollout.auto_rollback",
                at: e.at.to_rfc3339(),
                stage: d["stage"].as_u64(),
                reason: d["reason"].as_str().unwrap_or_default().to_owned(),
                reading: r
                    .is_object()
                    .then(|| (n(&r["matching"]), n(&r["applied"]), n(&r["failed"]), n(&r["reporting"]))),
                analyses: d["analysis"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let values = a["values"].as_array().into_iter().flatten().map(|v| v.as_f64()).collect();
                        (
                            a["name"].as_str().unwrap_or_default().to_owned(),
                            a["verdict"].as_str().unwrap_or_default().to_owned(),
                            values,
                        )
                    })
                    .collect(),
                pins: d["pins"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let selector = imprint_domain::Selector::from_json(&p["selector"])
                            .map(|s| s.to_string())
                            .unwrap_or_else(|_| p["selector"].to_string());
                        (selector, n(&p["version"]))
                    })
                    .collect(),
            },
        );
    }
    Ok(out)
}

fn number(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.001 && v.abs() < 1e6) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        format!("{v:.3e}")
    }
}

/// Why a kept version was rejected: each failed `reject` check with its message.
#[component]
pub fn RejectedBanner(reasons: Vec<String>) -> impl IntoView {
    view! {
        <section class="card rejected-banner" aria-label="Rejected">
            <h2>"Rejected by the topic's checks"</h2>
            <p>"This version was refused when it was published and kept for you to look at (the topic's "
                <code>"keep_rejected"</code>" setting). It is never released: no consumer polls, resolves or downloads it, "
                "and it cannot be scoped, pinned or rolled out. Publish a corrected version, or publish this one again with "
                <em>"force"</em>" and a reason if the checks are wrong."</p>
            <ul class="rejected-reasons">
                {reasons.into_iter().map(|r| {
                    let (kind, message) = r.split_once(": ").map(|(k, m)| (k.to_owned(), m.to_owned())).unwrap_or((String::new(), r.clone()));
                    view! { <li><code>{kind}</code>" " {message}</li> }
                }).collect_view()}
            </ul>
        </section>
    }
}

/// Why the system paused or rolled back a rollout, with the evidence it recorded.
/// `show_reason: false` where the page states the reason already.
#[component]
pub fn EvidenceBanner(e: Evidence, #[prop(default = true)] show_reason: bool) -> impl IntoView {
    let what = if e.rolled_back { "Rolled back automatically" } else { "Paused automatically" };
    let class = if e.rolled_back { "evidence rollback-evidence" } else { "evidence pause-evidence" };
    view! {
        <div class=class role="status">
            <p class="evidence-title"><strong>{what}</strong>
                {e.stage.map(|s| format!(" at stage {s}"))}
                <span class="muted small">{format!(" · {}", short_time(&e.at))}</span></p>
            {show_reason.then(|| view! { <p class="evidence-reason">{e.reason.clone()}</p> })}
            <ul class="evidence-list">
                {e.reading.map(|(matching, applied, failed, reporting)| view! {
                    <li class="evidence-reading">{format!("Consumers: {matching} matching, {applied} applied, {failed} failed, {reporting} reporting")}</li>
                })}
                {e.analyses.iter().map(|(name, verdict, values)| {
                    let shown: Vec<String> = values.iter().map(|v| v.map(number).unwrap_or_else(|| "no value".into())).collect();
                    view! { <li class="evidence-analysis">{format!("Analysis {name}: {verdict} — measured {}", if shown.is_empty() { "nothing yet".to_owned() } else { shown.join(", ") })}</li> }
                }).collect_view()}
                {(!e.pins.is_empty()).then(|| view! {
                    <li class="evidence-pins">{format!("Pinned back: {}", e.pins.iter().map(|(s, v)| format!("{s} → v{v}")).collect::<Vec<_>>().join(", "))}</li>
                })}
            </ul>
        </div>
    }
}

/// A run's measurements over time: an inline SVG chart (a line through the values, a dot
/// per measurement coloured by its verdict) and the table of them.
#[component]
pub fn AnalysisRuns(runs: Vec<AnalysisView>, stages: Vec<String>) -> impl IntoView {
    (!runs.is_empty()).then(|| {
        view! {
            <div class="analysis-runs" aria-label="Analyses">
                <h3>"Analyses"</h3>
                {runs.into_iter().map(|r| {
                    let stage = stages.get(r.stage).cloned().unwrap_or_default();
                    view! {
                        <div class=format!("analysis-run run-{}", r.verdict)>
                            <p class="analysis-head">
                                <code>{r.name.clone()}</code>
                                {format!(" · stage {} ({stage}) ", r.stage + 1)}
                                <span class=format!("badge check-{}", r.verdict)>{r.verdict.clone()}</span>
                            </p>
                            <AnalysisChart points=r.points.clone()/>
                            <table class="analysis-table">
                                <thead><tr><th>"Measured"</th><th class="num">"Value"</th><th>"Verdict"</th><th>"Detail"</th></tr></thead>
                                <tbody>
                                    {r.points.into_iter().map(|p| view! {
                                        <tr class=format!("measurement m-{}", p.verdict)>
                                            <td>{short_time(&p.at)}</td>
                                            <td class="num">{p.value.map(number).unwrap_or_else(|| "—".into())}</td>
                                            <td><span class=format!("badge check-{}", p.verdict)>{p.verdict.clone()}</span></td>
                                            <td class="small">{p.reason.unwrap_or_default()}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }
                }).collect_view()}
            </div>
        }
    })
}

const CHART_W: f64 = 320.0;
const CHART_H: f64 = 80.0;
const PAD: f64 = 8.0;

#[component]
fn AnalysisChart(points: Vec<PointView>) -> impl IntoView {
    let values: Vec<f64> = points.iter().filter_map(|p| p.value).filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return view! { <p class="muted small">"No value measured yet."</p> }.into_any();
    }
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let n = points.len().max(2) - 1;
    let x = |i: usize| PAD + (CHART_W - 2.0 * PAD) * i as f64 / n as f64;
    let y = |v: f64| if hi > lo { CHART_H - PAD - (CHART_H - 2.0 * PAD) * (v - lo) / span } else { CHART_H / 2.0 };
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.value.filter(|v| v.is_finite()).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
        .collect();
    let label = format!("{} measurements from {} to {}", points.len(), number(lo), number(hi));
    view! {
        <svg class="analysis-chart" viewBox=format!("0 0 {CHART_W} {CHART_H}") width=CHART_W.to_string() height=CHART_H.to_string()
            role="img" aria-label=label>
            <line class="axis" x1=PAD.to_string() y1=(CHART_H - PAD).to_string() x2=(CHART_W - PAD).to_string() y2=(CHART_H - PAD).to_string()/>
            {if hi > lo {
                view! {
                    <text class="tick" x="2" y="10">{number(hi)}</text>
                    <text class="tick" x="2" y=(CHART_H - 1.0).to_string()>{number(lo)}</text>
                }.into_any()
            } else {
                view! { <text class="tick" x="2" y=(CHART_H / 2.0 - 6.0).to_string()>{number(hi)}</text> }.into_any()
            }}
            <polyline class="series" points=line.join(" ")/>
            {points.iter().enumerate().filter_map(|(i, p)| p.value.filter(|v| v.is_finite()).map(|v| view! {
                <circle class=format!("dot m-{}", p.verdict) cx=format!("{:.1}", x(i)) cy=format!("{:.1}", y(v)) r="3.5">
                    <title>{format!("{}: {} ({})", short_time(&p.at), number(v), p.verdict)}</title>
                </circle>
            })).collect_view()}
        </svg>
    }
    .into_any()
}

/// A stage of a rollout of this version, as the version page lists it: its consumer
/// gate (and the reading now, for the current stage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageCheck {
    pub selector: String,
    pub state: String,
    pub gate: Option<String>,
    pub health: Option<String>,
}

/// A rollout of the version: its state, each stage's gate, its analyses and why it
/// paused or rolled back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutChecks {
    pub id: i64,
    pub state: String,
    pub rolled_back: bool,
    pub pause_reason: Option<String>,
    pub end_reason: Option<String>,
    pub stages: Vec<StageCheck>,
    pub analysis: Vec<AnalysisView>,
    pub evidence: Option<Evidence>,
}

/// The version page's checks during its rollouts: consumer gates, analyses, evidence.
#[component]
pub fn VersionRolloutChecks(topic: String, rollouts: Vec<RolloutChecks>) -> impl IntoView {
    (!rollouts.is_empty()).then(|| {
        view! {
            <section class="card rollout-checks" aria-label="Checks during rollout">
                <h2>"Checks during rollout"</h2>
                {rollouts.into_iter().map(|r| {
                    let stages: Vec<String> = r.stages.iter().map(|s| s.selector.clone()).collect();
                    view! {
                        <div class="rollout-check">
                            <p><a href=format!("/topics/{topic}/rollouts#rollout-{}", r.id)>{format!("Rollout #{}", r.id)}</a>
                                " " <span class=format!("badge rollout-{}", r.state)>{r.state.clone()}</span>
                                {r.rolled_back.then(|| view! { " " <span class="badge pin">"rolled back"</span> })}</p>
                            {match r.evidence.clone() {
                                Some(e) => view! { <EvidenceBanner e/> }.into_any(),
                                None => view! {
                                    {r.pause_reason.clone().map(|why| view! { <p class="flash readonly pause-reason">{why}</p> })}
                                    {r.end_reason.clone().map(|why| view! { <p class="flash error rollback-reason">{why}</p> })}
                                }.into_any(),
                            }}
                            <table class="gates-table">
                                <thead><tr><th>"Stage"</th><th>"Selector"</th><th>"State"</th><th>"Consumer gate"</th><th>"Reading"</th></tr></thead>
                                <tbody>
                                    {r.stages.iter().enumerate().map(|(i, s)| view! {
                                        <tr>
                                            <td>{i + 1}</td>
                                            <td><code>{s.selector.clone()}</code></td>
                                            <td>{s.state.clone()}</td>
                                            <td>{s.gate.clone().unwrap_or_else(|| "none".into())}</td>
                                            <td class="small">{s.health.clone().unwrap_or_else(|| "—".into())}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            <AnalysisRuns runs=r.analysis.clone() stages/>
                        </div>
                    }
                }).collect_view()}
            </section>
        }
    })
}
