//! `imprint rollout start|list|show|pause|resume|advance|complete|cancel|watch`: roll a
//! version out stage by stage and steer it. Stages are written in the domain's one stage
//! syntax (`imprint_domain::parse_stage`); answers are read as the domain's `RolloutView`.
use crate::api::{chain, Api, CliError, CliResult};
use crate::cmd::change_control::print_if_requested;
use crate::cmd::{at_time, read, show};
use crate::fmt;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use imprint_domain::{RolloutAction, RolloutState, RolloutView, Stage, StageState, StageView};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Roll out a version (the topic's newest) stage by stage.
    Start {
        topic: String,
        version: u64,
        /// A stage: "SELECTOR [WAIT] [min_applied=R] [max_failure=R]", e.g. "cluster=canary 10m" (repeatable, in order).
        #[arg(long = "stage", value_name = "STAGE", required_unless_present = "plan")]
        stages: Vec<String>,
        /// Use this plan of the topic instead of --stage.
        #[arg(long, conflicts_with = "stages")]
        plan: Option<String>,
        /// Start it at this time (RFC 3339): a change request the server's scheduler applies then.
        #[arg(long)]
        at: Option<String>,
        /// Admins: start it now past a review rule and a change freeze, with this reason (audited).
        #[arg(long, value_name = "REASON")]
        break_glass: Option<String>,
    },
    /// A topic's rollouts, newest first.
    List {
        topic: String,
    },
    /// One rollout.
    Show {
        topic: String,
        id: i64,
    },
    /// Stop the clock (no stage is added while paused).
    Pause {
        topic: String,
        id: i64,
    },
    Resume {
        topic: String,
        id: i64,
    },
    /// Reach the next stage now.
    Advance {
        topic: String,
        id: i64,
    },
    /// Reach all stages now.
    Complete {
        topic: String,
        id: i64,
    },
    /// Stop the rollout; `--rollback` pins each reached stage to what it had before.
    Cancel {
        topic: String,
        id: i64,
        #[arg(long)]
        rollback: bool,
    },
    /// Follow a rollout until it ends (exit 0 when completed, 1 otherwise).
    Watch {
        topic: String,
        id: i64,
        /// Seconds between two looks (0.2-60).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Give up after this many seconds (exit 1).
        #[arg(long)]
        timeout: Option<u64>,
    },
}

/// A rollout as the API answers it: the domain's view beside its id and author.
#[derive(Deserialize)]
pub struct Rollout {
    pub id: i64,
    #[serde(flatten)]
    pub view: RolloutView,
    created_by: String,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct RolloutList {
    rollouts: Vec<Rollout>,
}

/// One `--stage`, in the domain's stage syntax.
fn stage_arg(s: &str) -> CliResult<Stage> {
    imprint_domain::parse_stage(s).map_err(|e| CliError::new(format!("--stage {s:?}: {e}")))
}

fn stage_state(s: StageState) -> &'static str {
    match s {
        StageState::Reached => "reached",
        StageState::Pending => "pending",
        StageState::Skipped => "skipped",
    }
}

fn reached(view: &RolloutView) -> usize {
    view.stages.iter().filter(|s| s.state == StageState::Reached).count()
}

fn rollout_line(r: &Rollout) -> String {
    let v = &r.view;
    let mut line = format!(
        "rollout {} of version {}: {} ({}/{} stages reached)",
        r.id,
        v.version,
        v.state.as_str(),
        reached(v),
        v.stages.len()
    );
    if let Some(reason) = &v.pause_reason {
        line.push_str(&format!(" — {reason}"));
    }
    line
}

/// `in 4m30s` until a stage is due; `-` when it has no due time.
fn due_in(s: &StageView) -> String {
    s.due_at.map(|d| format!("in {}", fmt::secs((d - Utc::now()).num_seconds()))).unwrap_or_else(|| "-".into())
}

fn print_rollout(r: Rollout) {
    println!("{}", rollout_line(&r));
    let rows: Vec<Vec<String>> = r
        .view
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let gate = match &s.gate {
                Some(g) => [("min_applied_ratio", g.min_applied_ratio()), ("max_failure_ratio", g.max_failure_ratio())]
                    .into_iter()
                    .filter_map(|(k, r)| r.map(|r| format!("{k}={r:?}")))
                    .collect::<Vec<_>>()
                    .join(" "),
                None => "-".into(),
            };
            vec![
                (i + 1).to_string(),
                s.selector.to_string(),
                fmt::secs(i64::try_from(s.wait_s).unwrap_or(i64::MAX)),
                stage_state(s.state).to_owned(),
                fmt::time(s.reached_at),
                due_in(s),
                gate,
            ]
        })
        .collect();
    fmt::table(&["STAGE", "SELECTOR", "WAIT", "STATE", "REACHED", "DUE", "GATE"], &rows);
}

pub async fn run(api: &Api, cmd: RolloutCmd, json_out: bool) -> CliResult<u8> {
    let (topic, id, action, body) = match cmd {
        RolloutCmd::Start { topic, version, stages, plan, at, break_glass } => {
            let mut body = match plan {
                Some(p) => json!({"version": version, "plan": p}),
                None => {
                    json!({"version": version, "stages": stages.iter().map(|s| stage_arg(s)).collect::<CliResult<Vec<_>>>()?})
                }
            };
            if let Some(t) = at {
                body["at"] = json!(at_time(&t)?);
            }
            if let Some(r) = break_glass {
                body["break_glass"] = json!(r);
            }
            let r = api.send_json(Method::POST, &["topics", &topic, "rollouts"], &body).await?;
            if let Some(done) = print_if_requested(&r, json_out) {
                return done;
            }
            return show(r, json_out, print_rollout);
        }
        RolloutCmd::List { topic } => {
            return show(api.get(&["topics", &topic, "rollouts"], &[]).await?, json_out, |list: RolloutList| {
                let rows: Vec<Vec<String>> = list
                    .rollouts
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.view.version.to_string(),
                            r.view.state.as_str().to_owned(),
                            format!("{}/{}", reached(&r.view), r.view.stages.len()),
                            fmt::time(Some(r.created_at)),
                            r.created_by.clone(),
                        ]
                    })
                    .collect();
                fmt::table(&["ID", "VERSION", "STATE", "STAGES", "STARTED", "BY"], &rows);
            });
        }
        RolloutCmd::Show { topic, id } => {
            let r = api.get(&["topics", &topic, "rollouts", &id.to_string()], &[]).await?;
            return show(r, json_out, print_rollout);
        }
        RolloutCmd::Watch { topic, id, interval, timeout } => {
            return watch(api, &topic, id, interval, timeout, json_out).await
        }
        RolloutCmd::Pause { topic, id } => (topic, id, RolloutAction::Pause, None),
        RolloutCmd::Resume { topic, id } => (topic, id, RolloutAction::Resume, None),
        RolloutCmd::Advance { topic, id } => (topic, id, RolloutAction::Advance, None),
        RolloutCmd::Complete { topic, id } => (topic, id, RolloutAction::Complete, None),
        RolloutCmd::Cancel { topic, id, rollback } => {
            (topic, id, RolloutAction::Cancel, rollback.then(|| json!({"rollback": true})))
        }
    };
    let segments = ["topics", topic.as_str(), "rollouts", &id.to_string(), action.as_str()];
    let rb = api.request(Method::POST, api.url(&segments, &[]));
    let rb = match &body {
        Some(b) => rb.json(b),
        None => rb,
    };
    let resp = api.send(rb.timeout(Duration::from_secs(60))).await?;
    let r: Value = resp.json().await.map_err(|e| CliError::new(format!("reading the answer: {}", chain(&e))))?;
    show(r, json_out, print_rollout)
}

/// Polls a rollout and prints each change until it is completed, cancelled or superseded.
async fn watch(api: &Api, topic: &str, id: i64, interval: f64, timeout: Option<u64>, json_out: bool) -> CliResult<u8> {
    let interval = Duration::from_secs_f64(if interval.is_finite() { interval.clamp(0.2, 60.0) } else { 2.0 });
    let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
    let mut last = String::new();
    let mut errors = 0u32;
    loop {
        match api.get(&["topics", topic, "rollouts", &id.to_string()], &[]).await {
            Ok(raw) => {
                errors = 0;
                let r: Rollout = read(raw.clone())?;
                let stages: Vec<String> =
                    r.view.stages.iter().map(|s| format!("{}:{}", s.selector, stage_state(s.state))).collect();
                let key = format!("{} {} {}", r.view.state.as_str(), stages.join(" "), fmt::opt(&r.view.pause_reason));
                if key != last {
                    last = key;
                    if json_out {
                        println!("{}", serde_json::to_string(&raw).unwrap_or_default());
                    } else {
                        let now = chrono::Local::now().format("%H:%M:%S");
                        let next = r.view.stages.iter().find(|s| s.state == StageState::Pending);
                        let due = next
                            .filter(|s| s.due_at.is_some())
                            .map(|s| format!("; next {} {}", s.selector, due_in(s)))
                            .unwrap_or_default();
                        println!("{now} {}{due}", rollout_line(&r));
                    }
                    let _ = std::io::stdout().flush();
                }
                match r.view.state {
                    RolloutState::Completed => return Ok(0),
                    RolloutState::Cancelled | RolloutState::Superseded => return Ok(1),
                    RolloutState::Running | RolloutState::Paused => {}
                }
            }
            Err(e) if e.status.is_some_and(|s| (400..500).contains(&s)) => return Err(e),
            Err(e) => {
                errors += 1;
                eprintln!("imprint: {} (retrying)", e.message);
                if errors >= 30 {
                    return Err(e);
                }
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            eprintln!("imprint: rollout {id} has not ended yet (timed out)");
            return Ok(1);
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `--stage` sends: the domain's stage, serialised as the API reads it.
    fn stage_json(s: &str) -> CliResult<Value> {
        stage_arg(s).map(|s| serde_json::to_value(s).expect("a stage serialises"))
    }

    #[test]
    fn stages() {
        let s = stage_json("cluster=canary,region=eu 10m min_applied=0.9 max_failures=0.05").expect("stage");
        assert_eq!(s["selector"], json!({"cluster": "canary", "region": "eu"}));
        assert_eq!(s["wait_s"], 600);
        assert_eq!(s["gate"]["min_applied_ratio"], 0.9);
        assert_eq!(s["gate"]["max_failure_ratio"], 0.05);
        assert_eq!(stage_json("*").expect("stage"), json!({"selector": {}, "wait_s": 0}));
        assert!(stage_json("nope 1m").is_err());
        assert!(stage_json("a=b 1m other=1").is_err());
    }
}
