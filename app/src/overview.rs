//! The overview on the console's home: what is happening across all topics right now —
//! active rollouts (auto-paused ones and why), lagging nodes, recent publishes, pins
//! worth a look, topics nobody reads. Each line links to where it is acted on.
use crate::common::short_time;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutLine {
    pub topic: String,
    pub id: i64,
    pub version: u64,
    pub state: String,
    pub reached: usize,
    pub stages: usize,
    pub pause_reason: Option<String>,
    pub next_due: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinLine {
    pub topic: String,
    pub selector: String,
    pub version: u64,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverviewView {
    pub rollouts: Vec<RolloutLine>,
    pub lagging: Vec<(String, i64)>,
    /// (topic, version, by, at)
    pub recent: Vec<(String, u64, String, String)>,
    pub pins: Vec<PinLine>,
    pub stale_pin_days: i64,
    pub unread: Vec<String>,
    pub unread_days: u32,
    /// Change-freeze windows in force now (docs/change-control.md): name, scope, window.
    pub freezes: Vec<String>,
}

#[server(prefix = "/console/fn")]
pub async fn load_overview() -> Result<OverviewView, ServerFnError> {
    use crate::ssr::{imprint, load, require_user};
    let (_, caller) = require_user().await?;
    let o = load(imprint()?.overview(&caller).await)?;
    let freezes = load(imprint()?.freezes(&caller).await)?
        .into_iter()
        .filter(|f| f.active)
        .map(|f| {
            let scope = match (&f.team, &f.topic) {
                (Some(t), _) => format!("team {t}"),
                (_, Some(t)) => format!("topic {t}"),
                _ => "all topics".to_owned(),
            };
            format!("{} — {scope}, {}", f.name, f.description)
        })
        .collect();
    Ok(OverviewView {
        freezes,
        rollouts: o
            .rollouts
            .into_iter()
            .map(|r| RolloutLine {
                topic: r.topic,
                id: r.id,
                version: r.view.version,
                state: format!("{:?}", r.view.state).to_lowercase(),
                reached: r.view.reached,
                stages: r.view.stages.len(),
                pause_reason: r.view.pause_reason,
                next_due: r.view.stages.iter().find_map(|s| s.due_at).map(|d| d.to_rfc3339()),
            })
            .collect(),
        lagging: o.lagging,
        recent: o.recent_publishes.into_iter().map(|p| (p.topic, p.version, p.by, p.at.to_rfc3339())).collect(),
        pins: o
            .pins
            .into_iter()
            .map(|p| PinLine {
                topic: p.topic,
                selector: p.selector,
                version: p.version,
                reason: p.reason,
                created_by: p.created_by,
                created_at: p.created_at.to_rfc3339(),
                expires_at: p.expires_at.map(|e| e.to_rfc3339()),
            })
            .collect(),
        stale_pin_days: imprint_domain::STALE_PIN_DAYS,
        unread: o.unread,
        unread_days: imprint_service::overview::UNREAD_DAYS,
    })
}

/// The overview panel (the home page shows it above the topic list).
#[component]
pub fn OverviewPanel() -> impl IntoView {
    let live = crate::live::live_changes(|| "*".to_owned());
    let overview = Resource::new(move || live.get(), |_| load_overview());
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading the overview…"</p> }>
            {move || Suspend::new(async move {
                match overview.await {
                    Err(e) => view! { <p class="flash error" role="alert">{crate::common::error_text(&e)}</p> }.into_any(),
                    Ok(o) => view! { <Panels o=o/> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Panels(o: OverviewView) -> impl IntoView {
    let none = |what: &'static str| view! { <p class="muted small">{what}</p> };
    view! {
        {(!o.freezes.is_empty()).then(|| view! {
            <div class="flash error freeze-banner" role="status" id="overview-freezes">
                <strong>"Change freeze in force: "</strong>
                {o.freezes.join("; ")}
                " — releases are refused (admins may break glass); pins still work."
            </div>
        })}
        <section class="overview" aria-label="Overview">
            <div class="card" id="overview-rollouts">
                <h2>"Rollouts in progress"</h2>
                {if o.rollouts.is_empty() { none("No rollout is running or paused.").into_any() } else { view! {
                    <ul class="lines">{o.rollouts.iter().map(|r| view! {
                        <li class=format!("rollout {}", r.state)>
                            <a href=format!("/topics/{}/rollouts", r.topic)><code>{r.topic.clone()}</code>{format!(" v{} · rollout #{}", r.version, r.id)}</a>
                            " " <span class=format!("badge state {}", r.state)>{r.state.clone()}</span>
                            <span class="muted small">{format!(" stage {} of {}", r.reached, r.stages)}</span>
                            {r.pause_reason.clone().map(|p| view! { <div class="small pause-reason">{p}</div> })}
                            {r.next_due.clone().map(|d| view! { <div class="muted small">{format!("next stage due {}", short_time(&d))}</div> })}
                        </li>
                    }).collect_view()}</ul>
                }.into_any() }}
            </div>
            <div class="card" id="overview-lagging">
                <h2>"Lagging nodes"</h2>
                {if o.lagging.is_empty() { none("No node lags behind the version it should hold.").into_any() } else { view! {
                    <ul class="lines">{o.lagging.iter().map(|(t, n)| view! {
                        <li><a href=format!("/topics/{t}/consumers?lagging=true")><code>{t.clone()}</code></a>{format!(" — {n} node{} lagging", if *n == 1 { "" } else { "s" })}</li>
                    }).collect_view()}</ul>
                }.into_any() }}
            </div>
            <div class="card" id="overview-pins">
                <h2>"Pins worth a look"</h2>
                {if o.pins.is_empty() { none("No pin is old or about to expire.").into_any() } else { view! {
                    <ul class="lines">{o.pins.iter().map(|p| view! {
                        <li>
                            <a href=format!("/topics/{}", p.topic)><code>{p.topic.clone()}</code></a>
                            {format!(" {} → v{}", p.selector, p.version)}
                            <div class="muted small">{format!("by {} on {}{}", p.created_by, short_time(&p.created_at),
                                if p.reason.is_empty() { String::new() } else { format!(": {}", p.reason) })}</div>
                            <div class="small pin-expiry">{match &p.expires_at {
                                Some(e) => format!("expires {}", short_time(e)),
                                None => format!("set over {} days ago and never expires", o.stale_pin_days),
                            }}</div>
                        </li>
                    }).collect_view()}</ul>
                }.into_any() }}
            </div>
            <div class="card" id="overview-recent">
                <h2>"Recent publishes"</h2>
                {if o.recent.is_empty() { none("Nothing published yet.").into_any() } else { view! {
                    <ul class="lines">{o.recent.iter().map(|(t, v, by, at)| view! {
                        <li><a href=format!("/topics/{t}/versions/{v}")><code>{t.clone()}</code>{format!(" v{v}")}</a>
                            <span class="muted small">{format!(" {} · {}", short_time(at), by)}</span></li>
                    }).collect_view()}</ul>
                }.into_any() }}
            </div>
            <div class="card" id="overview-unread">
                <h2>"Not read lately"</h2>
                {if o.unread.is_empty() { none("Every topic was polled lately.").into_any() } else { view! {
                    <p class="small">{format!("Not polled for {} days: ", o.unread_days)}
                        {o.unread.iter().map(|t| view! { <a href=format!("/topics/{t}/consumers")><code>{t.clone()}</code></a>" " }).collect_view()}
                        <a href=format!("/unused?days={}", o.unread_days)>"(all)"</a>
                    </p>
                }.into_any() }}
            </div>
        </section>
    }
}
