//! Prometheus analyses of rollout stages (docs/validation.md, issue 24 part 3): the
//! scheduler measures the current stage's analyses whose interval has elapsed, stores
//! each measurement, and says what the runs conclude. The stored measurements are the
//! state (how many, when the last was taken): measuring happens under the rollout row's
//! lock in the tick's transaction, so a restart or another replica never measures twice
//! or loses count. The rules (conditions, verdicts) are `imprint_domain::analysis`.
use crate::error::Result;
use crate::model::{AnalysisMeasurement, AnalysisRun};
use crate::prometheus::PrometheusClient;
use crate::store;
use crate::store::analysis::MeasurementRow;
use chrono::{DateTime, Duration, Utc};
use imprint_domain::analysis::{Analysis, Inconclusive, RunVerdict, Verdict};
use imprint_domain::{AnalysisGate, Plan, Rollout, RolloutState};
use serde_json::{json, Value};
use sqlx::PgConnection;

/// A plan naming an analysis needs the server's Prometheus (`IMPRINT_PROMETHEUS_URL`).
pub(crate) fn require_prometheus(configured: bool, plan: &Plan) -> Result<()> {
    if configured || !plan.has_analyses() {
        return Ok(());
    }
    Err(crate::error::Error::invalid(
        "the plan names a Prometheus analysis, but this server has no Prometheus: set IMPRINT_PROMETHEUS_URL",
    ))
}

/// What the current stage's analyses say after this tick's measurements.
pub(crate) struct StageAnalysis {
    /// For the state machine: advance, hold, or fail (and the failure policy applies).
    pub gate: AnalysisGate,
    /// An inconclusive run under `inconclusive: pause`: the rollout pauses with this
    /// reason, and no failure policy applies (an operator decides).
    pub pause: Option<String>,
    /// The runs' names, verdicts and values (an automatic pause's or rollback's audit).
    pub evidence: Value,
    /// Whether this tick stored a measurement (the transaction must commit).
    pub measured: bool,
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Successful => "successful",
        Verdict::Failed => "failed",
        Verdict::Inconclusive => "inconclusive",
    }
}

fn parse_verdict(s: &str) -> Verdict {
    match s {
        "successful" => Verdict::Successful,
        "failed" => Verdict::Failed,
        _ => Verdict::Inconclusive,
    }
}

fn values(rows: &[&MeasurementRow]) -> Vec<Value> {
    rows.iter().map(|m| m.value.filter(|v| v.is_finite()).map_or(Value::Null, Value::from)).collect()
}

/// Measures the current stage's analyses that are due (in `conn`, the transaction holding
/// the rollout row's lock) and judges the runs. `None`: the rollout is not running or
/// its current stage has no analyses.
pub(crate) async fn measure_stage(
    conn: &mut PgConnection,
    prometheus: Option<&PrometheusClient>,
    rollout_id: i64,
    topic: &str,
    r: &Rollout,
    now: DateTime<Utc>,
) -> Result<Option<StageAnalysis>> {
    let stage = r.current_stage();
    let Some(s) = r.plan().stages().get(stage) else { return Ok(None) };
    if r.state() != RolloutState::Running || s.analyses.is_empty() {
        return Ok(None);
    }
    let stage_i = stage as i32;
    let mut rows = store::analysis::of_stage(conn, rollout_id, stage_i).await?;
    let selector = s.selector.to_string();
    let mut measured = false;
    for a in &s.analyses {
        let mine: Vec<&MeasurementRow> = rows.iter().filter(|m| m.analysis == a.name).collect();
        let verdicts: Vec<Verdict> = mine.iter().map(|m| parse_verdict(&m.verdict)).collect();
        if a.run_verdict(&verdicts) != RunVerdict::Running {
            continue;
        }
        let interval = Duration::seconds(a.interval_s as i64);
        if mine.last().is_some_and(|m| now - m.taken_at < interval) {
            continue;
        }
        let (value, reason) = match prometheus {
            None => (None, Some("IMPRINT_PROMETHEUS_URL is not set on the server".to_owned())),
            Some(p) => match p.query(&a.render_query(topic, r.version(), &selector)).await {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e.0)),
            },
        };
        let verdict = a.judge(value);
        let reason = reason.or_else(|| match (verdict, value) {
            (Verdict::Inconclusive, Some(v)) if v.is_nan() => Some("the query's value is NaN".to_owned()),
            (Verdict::Inconclusive, _) => Some("neither the success nor the failure condition holds".to_owned()),
            _ => None,
        });
        // NaN is stored as no value (its reason says so).
        let stored = value.filter(|v| !v.is_nan());
        store::analysis::insert(
            conn,
            rollout_id,
            stage_i,
            &a.name,
            now,
            stored,
            verdict_str(verdict),
            reason.as_deref(),
        )
        .await?;
        rows.push(MeasurementRow {
            rollout_id,
            stage: stage_i,
            analysis: a.name.clone(),
            taken_at: now,
            value: stored,
            verdict: verdict_str(verdict).to_owned(),
            reason,
        });
        measured = true;
        metrics::counter!("imprint_analysis_measurements_total", "verdict" => verdict_str(verdict)).increment(1);
    }
    let mut gate = AnalysisGate::Successful;
    let mut pause = None;
    let mut evidence = Vec::new();
    for a in &s.analyses {
        let mine: Vec<&MeasurementRow> = rows.iter().filter(|m| m.analysis == a.name).collect();
        let verdicts: Vec<Verdict> = mine.iter().map(|m| parse_verdict(&m.verdict)).collect();
        let run = a.run_verdict(&verdicts);
        let last_reason = mine.iter().rev().find_map(|m| m.reason.clone());
        evidence.push(json!({
            "name": a.name,
            "verdict": run,
            "values": values(&mine),
            "reason": last_reason,
        }));
        match run {
            RunVerdict::Successful => {}
            RunVerdict::Running => {
                if gate == AnalysisGate::Successful {
                    gate = AnalysisGate::Running;
                }
            }
            RunVerdict::Failed => {
                if !matches!(gate, AnalysisGate::Failed(_)) {
                    gate = AnalysisGate::Failed(failed_reason(a, &mine));
                }
            }
            RunVerdict::Inconclusive => {
                let why = format!(
                    "analysis {} is inconclusive: {}",
                    a.name,
                    last_reason.as_deref().unwrap_or("no reason recorded")
                );
                match a.inconclusive {
                    Inconclusive::Fail => {
                        if !matches!(gate, AnalysisGate::Failed(_)) {
                            gate = AnalysisGate::Failed(why);
                        }
                    }
                    Inconclusive::Pause => {
                        if gate == AnalysisGate::Successful {
                            gate = AnalysisGate::Running;
                        }
                        pause.get_or_insert(why);
                    }
                }
            }
        }
    }
    if matches!(gate, AnalysisGate::Failed(_)) {
        pause = None;
    }
    Ok(Some(StageAnalysis { gate, pause, evidence: Value::Array(evidence), measured }))
}

fn failed_reason(a: &Analysis, mine: &[&MeasurementRow]) -> String {
    let failed = mine.iter().filter(|m| m.verdict == "failed").count();
    let shown: Vec<String> =
        mine.iter().rev().take(5).rev().map(|m| m.value.map_or_else(|| "none".to_owned(), |v| v.to_string())).collect();
    format!(
        "analysis {} failed: {failed} of {} measurements failed `{}` (values {}; failure_limit {})",
        a.name,
        mine.len(),
        a.success,
        shown.join(", "),
        a.failure_limit
    )
}

/// The analyses' runs of one rollout for the API, from its stored measurements (oldest
/// first), in the plan's order of stages and analyses.
pub(crate) fn runs_of(plan: &Plan, rows: &[&MeasurementRow]) -> Vec<AnalysisRun> {
    let mut out = Vec::new();
    for (i, s) in plan.stages().iter().enumerate() {
        for a in &s.analyses {
            let mine: Vec<&&MeasurementRow> =
                rows.iter().filter(|m| m.stage as usize == i && m.analysis == a.name).collect();
            if mine.is_empty() {
                continue;
            }
            let verdicts: Vec<Verdict> = mine.iter().map(|m| parse_verdict(&m.verdict)).collect();
            out.push(AnalysisRun {
                stage: i,
                name: a.name.clone(),
                verdict: a.run_verdict(&verdicts),
                measurements: mine
                    .iter()
                    .map(|m| AnalysisMeasurement {
                        at: m.taken_at,
                        value: m.value,
                        verdict: parse_verdict(&m.verdict),
                        reason: m.reason.clone(),
                    })
                    .collect(),
            });
        }
    }
    out
}
