//! The incremental rollout of docs/design.md: plans, and the state machine that widens a
//! version's release stage by stage as time passes or operators act.
//!
//! Pure: the current time and consumer health are parameters, and every operation returns
//! the [`Effect`]s the caller must apply (add a scope, create a pin) in the same
//! transaction that stores the new state. That is what makes rollouts durable and safe
//! with several replicas: the stored [`RolloutRecord`] is the whole state, due times are
//! absolute, and an operation on a stale copy is rejected by the caller's row lock or
//! compare-and-set, never by this module.
//!
//! Stage indices are 0-based everywhere in code and JSON; human-readable texts (errors,
//! pause reasons) count stages from 1, as the console does.
use crate::analysis::{validate_analyses, Analysis, AnalysisError};
use crate::Selector;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Pause reasons are stored and shown; an unbounded operator text has no business there.
const MAX_REASON_CHARS: usize = 1000;

// ---------------------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    #[error("{field} must be a number between 0.0 and 1.0, got {value}")]
    RatioOutOfRange { field: &'static str, value: f64 },
    #[error("a gate sets min_applied_ratio, max_failure_ratio, bake_s or min_reporting")]
    Empty,
    #[error("bake_s is at most 2592000 (30 days), got {0}")]
    BakeTooLong(u64),
}

/// A health condition on a stage: the rollout moves past the stage only when enough of
/// the stage's consumers have applied the version, and pauses itself when too many failed.
/// Valid by construction: ratios within 0.0..=1.0 (never NaN), at least one set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Gate {
    #[serde(skip_serializing_if = "Option::is_none")]
    min_applied_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_failure_ratio: Option<f64>,
    /// Bake time: once the gate passes, it must keep passing this many seconds (without a
    /// break) before the next stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    bake_s: Option<u64>,
    /// At least this many of the stage's nodes must hold or have reported on the version
    /// (`applied + failed`) before the gate passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    min_reporting: Option<u64>,
}

/// What the caller measured about the consumers of the rollout's topic whose labels match
/// one stage's selector: how many there are, how many hold the rollout's version, and how
/// many reported that applying it failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReading {
    pub matching: u64,
    pub applied: u64,
    pub failed: u64,
    /// How many hold the version or reported on applying it (a gate's `min_reporting`).
    #[serde(default)]
    pub reporting: u64,
}

/// What a gate says about a reading.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Pass,
    Hold,
    /// Too many failures: the ratio and the denominator it was computed over.
    Failing {
        failed: u64,
        of: u64,
        ratio: f64,
        max: f64,
    },
}

impl Gate {
    pub fn new(min_applied_ratio: Option<f64>, max_failure_ratio: Option<f64>) -> Result<Self, GateError> {
        for (field, r) in [("min_applied_ratio", min_applied_ratio), ("max_failure_ratio", max_failure_ratio)] {
            if let Some(value) = r {
                // `contains` is false for NaN, so NaN is rejected too.
                if !(0.0..=1.0).contains(&value) {
                    return Err(GateError::RatioOutOfRange { field, value });
                }
            }
        }
        if min_applied_ratio.is_none() && max_failure_ratio.is_none() {
            return Err(GateError::Empty);
        }
        // Kept to 6 decimals: such numbers survive a JSON round trip bit for bit (serde_json's
        // default parser is not exact for 17-digit ones), so a stored plan reloads equal.
        // `+ 0.0` turns -0.0 into 0.0.
        let keep = |r: Option<f64>| r.map(|v| (v * 1e6).round() / 1e6 + 0.0);
        Ok(Self {
            min_applied_ratio: keep(min_applied_ratio),
            max_failure_ratio: keep(max_failure_ratio),
            bake_s: None,
            min_reporting: None,
        })
    }

    /// A gate with a bake time and/or a minimum of reporting nodes (either alone is a
    /// gate too: `min_applied_ratio` and `max_failure_ratio` may then be `None`).
    pub fn with_bake(
        min_applied_ratio: Option<f64>,
        max_failure_ratio: Option<f64>,
        bake_s: Option<u64>,
        min_reporting: Option<u64>,
    ) -> Result<Self, GateError> {
        if let Some(b) = bake_s.filter(|b| *b > Plan::MAX_WAIT_S) {
            return Err(GateError::BakeTooLong(b));
        }
        let g = match Gate::new(min_applied_ratio, max_failure_ratio) {
            Err(GateError::Empty) if bake_s.is_some() || min_reporting.is_some() => {
                Gate { min_applied_ratio: None, max_failure_ratio: None, bake_s: None, min_reporting: None }
            }
            other => other?,
        };
        Ok(Gate { bake_s, min_reporting, ..g })
    }

    pub fn bake_s(&self) -> Option<u64> {
        self.bake_s
    }

    pub fn min_reporting(&self) -> Option<u64> {
        self.min_reporting
    }

    pub fn min_applied_ratio(&self) -> Option<f64> {
        self.min_applied_ratio
    }

    pub fn max_failure_ratio(&self) -> Option<f64> {
        self.max_failure_ratio
    }

    /// No reading → hold (no evidence either way: never advance blind, never pause on a
    /// guess). The denominator is the largest of the three counts, so readings taken by
    /// separate queries that disagree slightly still give ratios within 0..=1. With no
    /// consumer at all, a `min_applied_ratio` gate holds — nobody proved the version
    /// healthy — while a failure-only gate passes: nobody failed.
    fn evaluate(&self, reading: Option<GateReading>) -> Verdict {
        let Some(r) = reading else { return Verdict::Hold };
        let of = r.matching.max(r.applied).max(r.failed);
        if let Some(max) = self.max_failure_ratio {
            if of > 0 {
                let ratio = r.failed as f64 / of as f64;
                if ratio > max {
                    return Verdict::Failing { failed: r.failed, of, ratio, max };
                }
            }
        }
        if let Some(min) = self.min_applied_ratio {
            if of == 0 || (r.applied as f64 / of as f64) < min {
                return Verdict::Hold;
            }
        }
        if self.min_reporting.is_some_and(|min| r.reporting < min) {
            return Verdict::Hold;
        }
        Verdict::Pass
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateJson {
    #[serde(default)]
    min_applied_ratio: Option<f64>,
    #[serde(default)]
    max_failure_ratio: Option<f64>,
    #[serde(default)]
    bake_s: Option<u64>,
    #[serde(default)]
    min_reporting: Option<u64>,
}

impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let g = GateJson::deserialize(d)?;
        Gate::with_bake(g.min_applied_ratio, g.max_failure_ratio, g.bake_s, g.min_reporting)
            .map_err(serde::de::Error::custom)
    }
}

/// One step of a plan: add `selector` as a scope, then wait `wait_s` seconds (and for the
/// gate, if any) before the next stage. The last stage's wait and gate never matter: the
/// rollout completes the moment its last scope is added. `wait_s` is checked by
/// [`Plan::new`]; a stage on its own is just data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub selector: Selector,
    pub wait_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Prometheus analyses that must each succeed before the next stage, besides the wait
    /// and the gate (docs/validation.md). Absent in JSON: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analyses: Vec<Analysis>,
}

/// What a stage's analyses say to [`Rollout::tick_analysed`] (the service measures them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnalysisGate {
    /// Every analysis run succeeded: the stage may advance (when its wait and gate allow).
    Successful,
    /// Still measuring (or waiting to): the stage holds.
    Running,
    /// A run failed (or was inconclusive under `inconclusive: fail`): the rollout pauses
    /// with this reason, and the failure policy applies.
    Failed(String),
}

impl Stage {
    fn wait(&self) -> Duration {
        // Plan::new bounds wait_s by 30 days; the `min` only keeps the cast obviously exact.
        Duration::seconds(self.wait_s.min(Plan::MAX_WAIT_S) as i64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("a rollout plan needs at least one stage")]
    Empty,
    #[error("a rollout plan has at most 32 stages, this one has {0}")]
    TooManyStages(usize),
    /// `stage` is the 0-based index; the message counts from 1.
    #[error("stage {}: wait_s is at most 2592000 (30 days), got {wait_s}", .stage + 1)]
    WaitTooLong { stage: usize, wait_s: u64 },
    #[error("stage {}: {error}", .stage + 1)]
    Analysis { stage: usize, error: AnalysisError },
}

/// An ordered, non-empty list of at most [`Plan::MAX_STAGES`] stages, each waiting at most
/// [`Plan::MAX_WAIT_S`]. JSON: `{"stages": [{"selector": {...}, "wait_s": 600, "gate": {...}}]}`;
/// deserializing validates. Unknown fields inside a stage or gate are rejected (a typo
/// such as `"gates"` would otherwise silently drop a safety check); unknown fields beside
/// `stages` are ignored, so the plan can be read out of a larger request body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    stages: Vec<Stage>,
    /// What a failing gate does to a rollout of this plan; `None`: the topic's setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    on_failure: Option<crate::checks::OnFailure>,
}

impl Plan {
    pub const MAX_STAGES: usize = 32;
    pub const MAX_WAIT_S: u64 = 30 * 24 * 60 * 60;

    pub fn new(stages: Vec<Stage>) -> Result<Self, PlanError> {
        if stages.is_empty() {
            return Err(PlanError::Empty);
        }
        if stages.len() > Self::MAX_STAGES {
            return Err(PlanError::TooManyStages(stages.len()));
        }
        if let Some((stage, s)) = stages.iter().enumerate().find(|(_, s)| s.wait_s > Self::MAX_WAIT_S) {
            return Err(PlanError::WaitTooLong { stage, wait_s: s.wait_s });
        }
        for (stage, s) in stages.iter().enumerate() {
            validate_analyses(&s.analyses).map_err(|error| PlanError::Analysis { stage, error })?;
        }
        Ok(Self { stages, on_failure: None })
    }

    /// The plan, saying what a failing gate does (`None`: as the topic says).
    pub fn with_on_failure(self, on_failure: Option<crate::checks::OnFailure>) -> Self {
        Self { on_failure, ..self }
    }

    pub fn on_failure(&self) -> Option<crate::checks::OnFailure> {
        self.on_failure
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Number of stages (at least 1).
    pub fn stage_count(&self) -> usize {
        self.stages.len()
    }

    /// Whether any stage names an analysis (the server then needs a Prometheus).
    pub fn has_analyses(&self) -> bool {
        self.stages.iter().any(|s| !s.analyses.is_empty())
    }
}

#[derive(Deserialize)]
struct PlanJson {
    stages: Vec<Stage>,
    #[serde(default)]
    on_failure: Option<crate::checks::OnFailure>,
}

impl<'de> Deserialize<'de> for Plan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = PlanJson::deserialize(d)?;
        Plan::new(p.stages).map(|plan| plan.with_on_failure(p.on_failure)).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// Rollout states, actions, errors, effects
// ---------------------------------------------------------------------------------------

/// `Running` and `Paused` are active (retention keeps the version, a newer publish
/// supersedes it); the other three are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Running,
    Paused,
    Completed,
    Cancelled,
    Superseded,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] =
        [Self::Running, Self::Paused, Self::Completed, Self::Cancelled, Self::Superseded];

    /// The API and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RolloutState {
    type Err = RecordError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| RecordError(format!("unknown rollout state {:?}", s.chars().take(50).collect::<String>())))
    }
}

/// The actions a state may refuse (start and tick never are refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    Pause,
    Resume,
    Advance,
    Complete,
    Cancel,
    Supersede,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Advance => "advance",
            Self::Complete => "complete",
            Self::Cancel => "cancel",
            Self::Supersede => "supersede",
        }
    }
}

impl fmt::Display for RolloutAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// The API's 409 `invalid_state`.
    #[error("cannot {action} a {state} rollout")]
    InvalidState { action: RolloutAction, state: RolloutState },
}

/// A stored rollout that breaks the state machine's invariants (or an unknown state name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent rollout record: {0}")]
pub struct RecordError(String);

/// What the caller must do, in order, in the transaction that stores the new state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Add `selector` as a scope of `version` (the rollout's version), stamped with the
    /// operation's time. `stage` is the 0-based index of the stage reached.
    AddScope { stage: usize, selector: Selector, version: u64 },
    /// Rollback: pin `selector` to `version`, the version it resolved to just before the
    /// rollout started (not the rollout's version). `stage` is the first reached stage
    /// with that selector.
    Pin { stage: usize, selector: Selector, version: u64 },
}

// ---------------------------------------------------------------------------------------
// The rollout
// ---------------------------------------------------------------------------------------

/// One rollout of one version. Invariants (checked again by [`Rollout::from_record`]):
/// - `1 <= reached_at.len() <= stage count`, `reached_at` non-decreasing; stages are
///   reached strictly in plan order, so `reached_at[i]` is when stage i's scope was added;
/// - `Running`: a stage is left, `next_due` is set (absolute), nothing frozen;
/// - `Paused`: a stage is left, the remaining wait is frozen, no `next_due`;
/// - `Completed`: every stage reached; `Cancelled`/`Superseded`: some stage left;
///   final states have `ended_at` and neither due time nor frozen wait;
/// - `pause_reason` only while paused; `rolled_back` only when cancelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "RolloutRecord", try_from = "RolloutRecord")]
pub struct Rollout {
    version: u64,
    plan: Plan,
    state: RolloutState,
    reached_at: Vec<DateTime<Utc>>,
    next_due: Option<DateTime<Utc>>,
    remaining: Option<Duration>,
    pause_reason: Option<String>,
    ended_at: Option<DateTime<Utc>>,
    rolled_back: bool,
    /// Bake time: since when the current stage's gate has passed without a break.
    healthy_since: Option<DateTime<Utc>>,
}

/// The whole state of a rollout as plain data, one field per database column (`plan` as
/// JSON, `reached_at` as `timestamptz[]`, `remaining_ms` as `bigint`). Index `next_due`
/// for the scheduler: it is set exactly when the rollout is running.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub version: u64,
    pub plan: Plan,
    pub state: RolloutState,
    pub reached_at: Vec<DateTime<Utc>>,
    pub next_due: Option<DateTime<Utc>>,
    /// The frozen remaining wait while paused, in milliseconds.
    pub remaining_ms: Option<i64>,
    pub pause_reason: Option<String>,
    pub ended_at: Option<DateTime<Utc>>,
    pub rolled_back: bool,
    /// Bake time: since when the current stage's gate has passed without a break.
    #[serde(default)]
    pub healthy_since: Option<DateTime<Utc>>,
}

fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whole milliseconds, rounded up: a frozen wait is stored as `bigint` ms, and rounding
/// up means a pause never shortens a wait.
fn ceil_ms(d: Duration) -> Duration {
    if d <= Duration::zero() {
        return Duration::zero();
    }
    let ms = Duration::milliseconds(d.num_milliseconds());
    if ms < d {
        ms + Duration::milliseconds(1)
    } else {
        ms
    }
}

fn clip_reason(reason: Option<String>) -> Option<String> {
    reason.map(|r| r.chars().take(MAX_REASON_CHARS).collect())
}

/// `0.3` → `30%`, `0.125` → `12.5%`.
fn percent(r: f64) -> String {
    let p = (r * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

impl Rollout {
    /// Starts rolling `version` out: stage 0's scope is added at `now`; with a one-stage
    /// plan the rollout is completed at once.
    pub fn start(version: u64, plan: Plan, now: DateTime<Utc>) -> (Self, Vec<Effect>) {
        let mut r = Self {
            version,
            plan,
            state: RolloutState::Running,
            reached_at: Vec::new(),
            next_due: None,
            remaining: None,
            pause_reason: None,
            ended_at: None,
            rolled_back: false,
            healthy_since: None,
        };
        let effect = r.reach_next(now.trunc_subsecs(6));
        (r, vec![effect])
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn state(&self) -> RolloutState {
        self.state
    }

    /// Number of stages whose scope has been added (1 ..= stage count).
    pub fn reached(&self) -> usize {
        self.reached_at.len()
    }

    /// 0-based index of the last stage reached (`reached() - 1`): the stage the rollout
    /// is "at", whose wait and gate decide when the next one comes.
    pub fn current_stage(&self) -> usize {
        self.reached_at.len().saturating_sub(1)
    }

    /// When each reached stage's scope was added, in stage order.
    pub fn reached_at(&self) -> &[DateTime<Utc>] {
        &self.reached_at
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.reached_at.first().copied().unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// When the next stage is due; set exactly while running.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.next_due
    }

    /// The frozen remaining wait of the current stage; set exactly while paused.
    pub fn remaining_when_paused(&self) -> Option<Duration> {
        self.remaining
    }

    pub fn pause_reason(&self) -> Option<&str> {
        self.pause_reason.as_deref()
    }

    /// When the rollout became completed, cancelled or superseded.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.ended_at
    }

    /// Since when the current stage's gate has passed without a break (bake time).
    pub fn healthy_since(&self) -> Option<DateTime<Utc>> {
        self.healthy_since
    }

    /// Whether it was cancelled with rollback requested.
    pub fn rolled_back(&self) -> bool {
        self.rolled_back
    }

    /// The stage whose gate the next [`Rollout::tick`] consults first: the current stage,
    /// if the rollout is running and that stage has a gate. A caller that must fetch
    /// readings before calling `tick` (async I/O) fetches this one; `tick` asks about a
    /// later stage only after adding it in the same call (zero waits), and a `None` for
    /// that one just holds it until the next tick.
    pub fn gated_stage(&self) -> Option<usize> {
        let cur = self.current_stage();
        (self.state == RolloutState::Running && self.plan.stages[cur].gate.is_some()).then_some(cur)
    }

    /// Times never run backwards inside a rollout (replicas' clocks differ slightly), and
    /// are kept to the microsecond, as Postgres stores them, so a stored and reloaded
    /// rollout equals the one in memory.
    fn clamp(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let now = now.trunc_subsecs(6);
        self.reached_at.last().map_or(now, |&last| now.max(last))
    }

    fn deny(&self, action: RolloutAction) -> RolloutError {
        RolloutError::InvalidState { action, state: self.state }
    }

    fn require_active(&self, action: RolloutAction) -> Result<(), RolloutError> {
        if self.state.is_active() {
            Ok(())
        } else {
            Err(self.deny(action))
        }
    }

    fn end(&mut self, state: RolloutState, now: DateTime<Utc>) {
        self.state = state;
        self.ended_at = Some(now);
        self.next_due = None;
        self.remaining = None;
        self.pause_reason = None;
        self.healthy_since = None;
    }

    /// Adds the next stage at `now`. The new current stage's full wait starts now: as an
    /// absolute due time if running, as a frozen remainder if paused.
    fn reach_next(&mut self, now: DateTime<Utc>) -> Effect {
        let stage = self.reached_at.len();
        self.reached_at.push(now);
        self.healthy_since = None;
        let effect =
            Effect::AddScope { stage, selector: self.plan.stages[stage].selector.clone(), version: self.version };
        if self.reached_at.len() == self.plan.stages.len() {
            self.end(RolloutState::Completed, now);
        } else {
            let wait = self.plan.stages[stage].wait();
            match self.state {
                RolloutState::Paused => self.remaining = Some(wait),
                _ => self.next_due = Some(plus(now, wait)),
            }
        }
        effect
    }

    fn freeze(&mut self, now: DateTime<Utc>, reason: Option<String>) {
        let left = self.next_due.map_or(Duration::zero(), |due| due - now);
        self.remaining = Some(ceil_ms(left));
        self.next_due = None;
        self.pause_reason = clip_reason(reason);
        self.state = RolloutState::Paused;
        // A pause breaks the bake: it starts again once the rollout runs and is healthy.
        self.healthy_since = None;
    }

    /// The scheduler's step. On a running rollout: adds every stage that is due, in order,
    /// and pauses the rollout if the current stage's gate reports too many failures. Not
    /// running → nothing to do (a paused clock is stopped), `Ok` with no effects.
    ///
    /// Catch-up after downtime: the next stage is due at `next_due` (its predecessor's
    /// reached time plus its wait, shifted by pauses), and a stage added late is stamped
    /// with the actual time `now`; the following stage's wait starts from there. So each
    /// stage still gets its full observation window, and one tick adds at most one stage
    /// unless waits are zero — never a burst of stages after an outage.
    ///
    /// Gates: the current stage's gate is consulted through `health(stage index)` on every
    /// tick (at most once per stage per tick), whether or not the stage is due, so failures
    /// pause the rollout as soon as they are seen. A due stage whose gate holds stays due;
    /// each later tick checks it again. The failure check also applies after a resume: a
    /// rollout whose stage still fails pauses again, and the operator's way past is
    /// `advance` (or `cancel`).
    pub fn tick(
        &mut self,
        now: DateTime<Utc>,
        health: impl FnMut(usize) -> Option<GateReading>,
    ) -> Result<Vec<Effect>, RolloutError> {
        self.tick_analysed(now, health, |_| None)
    }

    /// [`Rollout::tick`] with the stages' analyses: `analysis(stage index)` says what the
    /// analyses of a stage that has some say (`None`: not measured, the stage holds). A
    /// failed analysis pauses the rollout with its reason, like a failing gate; a stage
    /// advances only when its wait is over, its gate passes and its analyses succeeded.
    pub fn tick_analysed(
        &mut self,
        now: DateTime<Utc>,
        mut health: impl FnMut(usize) -> Option<GateReading>,
        mut analysis: impl FnMut(usize) -> Option<AnalysisGate>,
    ) -> Result<Vec<Effect>, RolloutError> {
        let mut effects = Vec::new();
        if self.state != RolloutState::Running {
            return Ok(effects);
        }
        let now = self.clamp(now);
        while self.state == RolloutState::Running {
            let cur = self.current_stage();
            let Some(due) = self.next_due else { break };
            let stage = &self.plan.stages[cur];
            let ready = match stage.gate.map(|g| (g, g.evaluate(health(cur)))) {
                None => true,
                Some((g, Verdict::Pass)) => {
                    // Bake time: healthy since the first passing reading, unbroken.
                    let since = *self.healthy_since.get_or_insert(now);
                    g.bake_s.is_none_or(|b| now - since >= Duration::seconds(b.min(Plan::MAX_WAIT_S) as i64))
                }
                Some((_, Verdict::Hold)) => {
                    self.healthy_since = None;
                    false
                }
                Some((_, Verdict::Failing { failed, of, ratio, max })) => {
                    let reason = format!(
                        "stage {} ({}): {failed} of {of} nodes ({}) failed to apply v{}; max {}",
                        cur + 1,
                        stage.selector,
                        percent(ratio),
                        self.version,
                        percent(max),
                    );
                    self.freeze(now, Some(reason));
                    break;
                }
            };
            let analysed = if stage.analyses.is_empty() {
                true
            } else {
                match analysis(cur) {
                    Some(AnalysisGate::Successful) => true,
                    None | Some(AnalysisGate::Running) => false,
                    Some(AnalysisGate::Failed(why)) => {
                        let reason = format!("stage {} ({}): {why}", cur + 1, stage.selector);
                        self.freeze(now, Some(reason));
                        break;
                    }
                }
            };
            if !ready || !analysed || now < due {
                break;
            }
            effects.push(self.reach_next(now));
        }
        Ok(effects)
    }

    /// Running → paused: the clock stops, the remaining wait (never negative) is frozen.
    pub fn pause(&mut self, now: DateTime<Utc>, reason: Option<String>) -> Result<Vec<Effect>, RolloutError> {
        if self.state != RolloutState::Running {
            return Err(self.deny(RolloutAction::Pause));
        }
        let now = self.clamp(now);
        self.freeze(now, reason);
        Ok(Vec::new())
    }

    /// Paused → running: the frozen remaining wait continues from `now`. A stage whose
    /// wait had already run out is due at once and added by the next tick.
    pub fn resume(&mut self, now: DateTime<Utc>) -> Result<Vec<Effect>, RolloutError> {
        if self.state != RolloutState::Paused {
            return Err(self.deny(RolloutAction::Resume));
        }
        let now = self.clamp(now);
        self.next_due = Some(plus(now, self.remaining.take().unwrap_or_else(Duration::zero)));
        self.pause_reason = None;
        self.state = RolloutState::Running;
        Ok(Vec::new())
    }

    /// Operator override: add the next stage now, bypassing its wait and gate. A paused
    /// rollout stays paused (with the new stage's full wait frozen, and its reason kept);
    /// a running one continues with the new stage's full wait. Reaching the last stage
    /// completes the rollout either way.
    pub fn advance(&mut self, now: DateTime<Utc>) -> Result<Vec<Effect>, RolloutError> {
        self.require_active(RolloutAction::Advance)?;
        let now = self.clamp(now);
        Ok(vec![self.reach_next(now)])
    }

    /// Operator override: add every remaining stage now, in order → completed.
    pub fn complete(&mut self, now: DateTime<Utc>) -> Result<Vec<Effect>, RolloutError> {
        self.require_active(RolloutAction::Complete)?;
        let now = self.clamp(now);
        let mut effects = Vec::new();
        while self.state.is_active() {
            effects.push(self.reach_next(now));
        }
        Ok(effects)
    }

    /// Running or paused → cancelled: no further stage is added (scopes already added stay:
    /// history is append-only). With `rollback`, one `Pin` per distinct reached selector,
    /// in stage order, onto `previous(selector)`: the version that selector resolved to just
    /// before the rollout started (e.g. `TopicHistory::resolve_at(&selector.as_labels(),
    /// started_at - 1µs)`); `None` → no pin for that selector.
    pub fn cancel(
        &mut self,
        now: DateTime<Utc>,
        rollback: bool,
        mut previous: impl FnMut(&Selector) -> Option<u64>,
    ) -> Result<Vec<Effect>, RolloutError> {
        self.require_active(RolloutAction::Cancel)?;
        let now = self.clamp(now);
        let mut effects: Vec<Effect> = Vec::new();
        if rollback {
            for (stage, s) in self.plan.stages[..self.reached_at.len()].iter().enumerate() {
                // At most one active pin per (topic, selector): a plan repeating a
                // selector gets one pin for it.
                let seen = effects.iter().any(|e| matches!(e, Effect::Pin { selector, .. } if *selector == s.selector));
                if seen {
                    continue;
                }
                if let Some(version) = previous(&s.selector) {
                    effects.push(Effect::Pin { stage, selector: s.selector.clone(), version });
                }
            }
        }
        self.end(RolloutState::Cancelled, now);
        self.rolled_back = rollback;
        Ok(effects)
    }

    /// Running or paused → superseded: a newer version of the topic was published.
    pub fn supersede(&mut self, now: DateTime<Utc>) -> Result<Vec<Effect>, RolloutError> {
        self.require_active(RolloutAction::Supersede)?;
        let now = self.clamp(now);
        self.end(RolloutState::Superseded, now);
        Ok(Vec::new())
    }

    /// The API's shape of the rollout (the service adds `id`, `created_by`, `created_at`).
    pub fn view(&self) -> RolloutView {
        let reached = self.reached_at.len();
        // Running: the next stage is due at next_due exactly; later ones at the earliest
        // after the waits in between (gates and pauses can only delay them).
        let mut due = self.next_due;
        let stages = self
            .plan
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (state, reached_at, due_at) = if i < reached {
                    (StageState::Reached, Some(self.reached_at[i]), None)
                } else if self.state.is_active() {
                    let d = due;
                    due = due.map(|d| plus(d, s.wait()));
                    (StageState::Pending, None, d)
                } else {
                    (StageState::Skipped, None, None)
                };
                StageView {
                    selector: s.selector.clone(),
                    wait_s: s.wait_s,
                    gate: s.gate,
                    analyses: s.analyses.clone(),
                    state,
                    reached_at,
                    due_at,
                }
            })
            .collect();
        RolloutView {
            version: self.version,
            state: self.state,
            current_stage: self.current_stage(),
            reached,
            stages,
            pause_reason: self.pause_reason.clone(),
            remaining_wait_s: self.remaining.map(|d| {
                let ms = d.num_milliseconds().max(0) as u64;
                ms.div_ceil(1000)
            }),
            started_at: self.started_at(),
            ended_at: self.ended_at,
            rolled_back: self.rolled_back,
            healthy_since: self.healthy_since,
        }
    }

    pub fn to_record(&self) -> RolloutRecord {
        RolloutRecord {
            version: self.version,
            plan: self.plan.clone(),
            state: self.state,
            reached_at: self.reached_at.clone(),
            next_due: self.next_due,
            remaining_ms: self.remaining.map(|d| d.num_milliseconds()),
            pause_reason: self.pause_reason.clone(),
            ended_at: self.ended_at,
            rolled_back: self.rolled_back,
            healthy_since: self.healthy_since,
        }
    }

    /// Rebuilds a rollout from storage, refusing one that breaks the invariants listed on
    /// [`Rollout`]: the scheduler must never act on a state this machine cannot produce.
    pub fn from_record(r: RolloutRecord) -> Result<Self, RecordError> {
        let n = r.plan.stages.len();
        let reached = r.reached_at.len();
        let bad = |m: &str| Err(RecordError(m.to_owned()));
        if reached == 0 || reached > n {
            return bad("reached_at must hold between 1 and the number of stages");
        }
        if r.reached_at.windows(2).any(|w| w[0] > w[1]) {
            return bad("reached_at must be in time order");
        }
        use RolloutState::*;
        let (due, frozen, ended) = (r.next_due.is_some(), r.remaining_ms.is_some(), r.ended_at.is_some());
        let ok = match r.state {
            Running => reached < n && due && !frozen && !ended,
            Paused => reached < n && !due && frozen && !ended,
            Completed => reached == n && !due && !frozen && ended,
            Cancelled | Superseded => reached < n && !due && !frozen && ended,
        };
        if !ok {
            return bad(&format!(
                "a {} rollout with {reached} of {n} stages reached cannot have next_due {}, remaining_ms {} and ended_at {}",
                r.state,
                if due { "set" } else { "unset" },
                if frozen { "set" } else { "unset" },
                if ended { "set" } else { "unset" },
            ));
        }
        if r.remaining_ms.is_some_and(|ms| ms < 0) {
            return bad("remaining_ms cannot be negative");
        }
        if r.pause_reason.is_some() && r.state != Paused {
            return bad("only a paused rollout has a pause reason");
        }
        if r.rolled_back && r.state != Cancelled {
            return bad("only a cancelled rollout can be rolled back");
        }
        if r.healthy_since.is_some() && r.state != Running {
            return bad("only a running rollout bakes");
        }
        Ok(Self {
            version: r.version,
            plan: r.plan,
            state: r.state,
            reached_at: r.reached_at,
            next_due: r.next_due,
            remaining: r.remaining_ms.map(Duration::milliseconds),
            pause_reason: r.pause_reason,
            ended_at: r.ended_at,
            rolled_back: r.rolled_back,
            healthy_since: r.healthy_since,
        })
    }
}

impl From<Rollout> for RolloutRecord {
    fn from(r: Rollout) -> Self {
        r.to_record()
    }
}

impl TryFrom<RolloutRecord> for Rollout {
    type Error = RecordError;
    fn try_from(r: RolloutRecord) -> Result<Self, Self::Error> {
        Rollout::from_record(r)
    }
}

// ---------------------------------------------------------------------------------------
// The API view
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    Reached,
    Pending,
    /// Never reached because the rollout was cancelled or superseded first.
    Skipped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    pub selector: Selector,
    pub wait_s: u64,
    pub gate: Option<Gate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analyses: Vec<Analysis>,
    pub state: StageState,
    /// Set for reached stages.
    pub reached_at: Option<DateTime<Utc>>,
    /// Set for pending stages of a running rollout: exact for the next stage, the earliest
    /// possible time for later ones. Unset while paused (the clock is stopped) and for
    /// reached or skipped stages.
    pub due_at: Option<DateTime<Utc>>,
}

/// A rollout as the API and console show it. Serializes to docs/api.md's fields (`version`,
/// `state`, `current_stage`, `stages`) plus the extra ones below; the service flattens it
/// beside `id`, `created_by` and `created_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub version: u64,
    pub state: RolloutState,
    /// 0-based index of the last stage reached.
    pub current_stage: usize,
    /// Number of stages reached.
    pub reached: usize,
    pub stages: Vec<StageView>,
    pub pause_reason: Option<String>,
    /// While paused: the frozen wait before the next stage, in whole seconds rounded up.
    pub remaining_wait_s: Option<u64>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub rolled_back: bool,
    /// Bake time: since when the current stage's gate has passed without a break.
    #[serde(default)]
    pub healthy_since: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;
    use std::cell::RefCell;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().expect("valid time")
    }
    fn sel(s: &str) -> Selector {
        Selector::parse(s).expect("selector")
    }
    fn stage(s: &str, wait_s: u64) -> Stage {
        Stage { selector: sel(s), wait_s, gate: None, analyses: vec![] }
    }
    fn gated(s: &str, wait_s: u64, min: Option<f64>, max: Option<f64>) -> Stage {
        Stage { selector: sel(s), wait_s, gate: Some(Gate::new(min, max).expect("gate")), analyses: vec![] }
    }
    fn plan(stages: Vec<Stage>) -> Plan {
        Plan::new(stages).expect("plan")
    }
    /// docs/design.md's example: `cluster=api-canary` wait 10m → `region=us-east-1` wait 30m → `*`.
    fn example() -> Plan {
        plan(vec![stage("cluster=api-canary", 600), stage("region=us-east-1", 1800), stage("*", 0)])
    }
    fn no_health(_: usize) -> Option<GateReading> {
        None
    }
    fn reading(matching: u64, applied: u64, failed: u64) -> Option<GateReading> {
        Some(GateReading { matching, applied, failed, reporting: (applied + failed).min(matching) })
    }
    fn added(effects: &[Effect]) -> Vec<usize> {
        effects
            .iter()
            .map(|e| match e {
                Effect::AddScope { stage, .. } => *stage,
                Effect::Pin { .. } => panic!("unexpected pin {e:?}"),
            })
            .collect()
    }
    fn started(p: Plan) -> Rollout {
        Rollout::start(7, p, t(0)).0
    }

    fn analysed_plan() -> Plan {
        let a: Analysis = serde_json::from_value(
            json!({"name": "e", "query": "up", "interval_s": 1, "count": 1, "success": "result < 1"}),
        )
        .expect("analysis");
        plan(vec![Stage { selector: sel("a=1"), wait_s: 10, gate: None, analyses: vec![a] }, stage("*", 0)])
    }

    #[test]
    fn analyses_hold_a_stage_until_they_succeed_and_a_failed_one_pauses() {
        let mut r = started(analysed_plan());
        assert_eq!(r.tick(t(20), |_| None), Ok(vec![]), "not measured: the stage holds");
        assert_eq!(r.tick_analysed(t(20), |_| None, |_| Some(AnalysisGate::Running)), Ok(vec![]));
        assert_eq!(r.tick_analysed(t(5), |_| None, |_| Some(AnalysisGate::Successful)), Ok(vec![]), "wait not over");
        let e = r.tick_analysed(t(20), |_| None, |_| Some(AnalysisGate::Successful)).expect("tick");
        assert_eq!((added(&e), r.state()), (vec![1], RolloutState::Completed));

        let mut r = started(analysed_plan());
        // A failure pauses at once, before the wait is over.
        let e = r.tick_analysed(t(1), |_| None, |_| Some(AnalysisGate::Failed("analysis e failed".into())));
        assert_eq!(e, Ok(vec![]));
        assert_eq!(r.state(), RolloutState::Paused);
        assert_eq!(r.pause_reason(), Some("stage 1 (a=1): analysis e failed"));
    }

    #[test]
    fn plans_check_their_analyses() {
        let bad = json!({"stages": [{"selector": {}, "wait_s": 0, "analyses": [
            {"name": "e", "query": "up", "interval_s": 0, "count": 1, "success": "result < 1"}]}]});
        let e = serde_json::from_value::<Plan>(bad).expect_err("interval 0");
        assert!(e.to_string().contains("stage 1: analysis \"e\": interval_s"), "{e}");
        let old = json!({"stages": [{"selector": {}, "wait_s": 0}]});
        let p: Plan = serde_json::from_value(old.clone()).expect("a plan without analyses");
        assert_eq!(serde_json::to_value(&p).expect("json"), old, "no analyses: the JSON is as before");
        assert!(analysed_plan().has_analyses() && !p.has_analyses());
    }
    /// Stored and reloaded, through JSON and through the record: must be the same rollout.
    fn assert_round_trips(r: &Rollout) {
        let json = serde_json::to_string(r).expect("serialize");
        let back: Rollout = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(&back, r);
        assert_eq!(&Rollout::from_record(r.to_record()).expect("record"), r);
    }

    // ---- plans ----

    #[test]
    fn plan_validation() {
        assert_eq!(Plan::new(vec![]), Err(PlanError::Empty));
        assert_eq!(Plan::new(vec![stage("*", 0); 33]), Err(PlanError::TooManyStages(33)));
        assert!(Plan::new(vec![stage("*", 0); 32]).is_ok());
        let too_long = Plan::new(vec![stage("a=b", 60), stage("*", Plan::MAX_WAIT_S + 1)]);
        assert_eq!(too_long, Err(PlanError::WaitTooLong { stage: 1, wait_s: 2_592_001 }));
        assert_eq!(
            too_long.expect_err("too long").to_string(),
            "stage 2: wait_s is at most 2592000 (30 days), got 2592001"
        );
        assert!(Plan::new(vec![stage("*", Plan::MAX_WAIT_S)]).is_ok());
    }

    #[test]
    fn gate_validation() {
        assert_eq!(Gate::new(None, None), Err(GateError::Empty));
        for bad in [-0.1, 1.000_001, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Gate::new(Some(bad), None),
                Err(GateError::RatioOutOfRange { field: "min_applied_ratio", .. })
            ));
            assert!(matches!(
                Gate::new(Some(0.5), Some(bad)),
                Err(GateError::RatioOutOfRange { field: "max_failure_ratio", .. })
            ));
        }
        let g = Gate::new(Some(0.0), Some(1.0)).expect("bounds are inclusive");
        assert_eq!((g.min_applied_ratio(), g.max_failure_ratio()), (Some(0.0), Some(1.0)));
        assert!(Gate::new(None, Some(0.05)).is_ok());
        let g = Gate::new(Some(0.988_217_103_220_662_1), Some(-0.0)).expect("gate");
        assert_eq!((g.min_applied_ratio(), g.max_failure_ratio()), (Some(0.988_217), Some(0.0)));
        assert!(g.max_failure_ratio().is_some_and(|r| r.is_sign_positive()));
        assert!(Gate::new(Some(0.9), None).is_ok());
    }

    #[test]
    fn plan_json_shape() {
        let v = json!({"stages": [
            {"selector": {"cluster": "api-canary"}, "wait_s": 600, "gate": {"min_applied_ratio": 0.9, "max_failure_ratio": 0.05}},
            {"selector": {"region": "us-east-1"}, "wait_s": 1800, "gate": {"max_failure_ratio": 0.1}},
            {"selector": {}, "wait_s": 0}
        ]});
        let p: Plan = serde_json::from_value(v.clone()).expect("valid plan");
        assert_eq!(p.stage_count(), 3);
        assert_eq!(p.stages()[0].selector, sel("cluster=api-canary"));
        assert_eq!(p.stages()[1].gate, Some(Gate::new(None, Some(0.1)).expect("gate")));
        assert!(p.stages()[2].selector.is_all());
        assert_eq!(serde_json::to_value(&p).expect("serialize"), v, "serializes back to the same shape");
        // Beside `stages`, other fields (e.g. the request's `version`) are ignored.
        assert!(
            serde_json::from_value::<Plan>(json!({"version": 3, "stages": [{"selector": {}, "wait_s": 0}]})).is_ok()
        );
        // A null gate is no gate.
        assert!(
            serde_json::from_value::<Plan>(json!({"stages": [{"selector": {}, "wait_s": 0, "gate": null}]})).is_ok()
        );
    }

    #[test]
    fn plan_json_rejects_bad_input() {
        let bad = [
            json!({"stages": []}),
            json!({}),
            json!({"stages": [{"selector": {}}]}),
            json!({"stages": [{"selector": {}, "wait_s": -1}]}),
            json!({"stages": [{"selector": {}, "wait_s": 2_592_001}]}),
            json!({"stages": [{"selector": "region=eu", "wait_s": 0}]}),
            json!({"stages": [{"selector": {"a": ""}, "wait_s": 0}]}),
            json!({"stages": [{"selector": {}, "wait_s": 0, "gates": {"max_failure_ratio": 0.1}}]}),
            json!({"stages": [{"selector": {}, "wait_s": 0, "gate": {}}]}),
            json!({"stages": [{"selector": {}, "wait_s": 0, "gate": {"min_applied_ratio": 1.5}}]}),
            json!({"stages": [{"selector": {}, "wait_s": 0, "gate": {"min_applied": 0.5}}]}),
            json!({"stages": [{"selector": {}, "wait_s": 0, "gate": {"max_failure_ratio": "5%"}}]}),
            json!({"stages": vec![json!({"selector": {}, "wait_s": 0}); 33]}),
        ];
        for v in bad {
            assert!(serde_json::from_value::<Plan>(v.clone()).is_err(), "{v} should be rejected");
        }
        let err = serde_json::from_value::<Plan>(json!({"stages": []})).expect_err("empty");
        assert!(err.to_string().contains("at least one stage"), "{err}");
    }

    // ---- the basic course ----

    #[test]
    fn start_adds_stage_one_at_once() {
        let (r, effects) = Rollout::start(7, example(), t(0));
        assert_eq!(effects, vec![Effect::AddScope { stage: 0, selector: sel("cluster=api-canary"), version: 7 }]);
        assert_eq!(r.state(), RolloutState::Running);
        assert_eq!((r.reached(), r.current_stage()), (1, 0));
        assert_eq!(r.reached_at(), &[t(0)]);
        assert_eq!(r.started_at(), t(0));
        assert_eq!(r.next_due(), Some(t(600)));
        assert_eq!(r.remaining_when_paused(), None);
        assert_round_trips(&r);
    }

    #[test]
    fn single_stage_plan_completes_at_once() {
        let (r, effects) = Rollout::start(3, plan(vec![gated("*", 600, Some(1.0), None)]), t(5));
        assert_eq!(added(&effects), vec![0]);
        assert_eq!(r.state(), RolloutState::Completed);
        assert_eq!(r.ended_at(), Some(t(5)));
        assert_eq!(r.next_due(), None);
        assert_eq!(r.view().stages[0].state, StageState::Reached);
        assert_round_trips(&r);
    }

    #[test]
    fn each_wait_runs_after_its_own_stage() {
        let mut r = started(example());
        assert_eq!(r.tick(t(599), no_health), Ok(vec![]));
        let e = r.tick(t(600), no_health).expect("tick");
        assert_eq!(e, vec![Effect::AddScope { stage: 1, selector: sel("region=us-east-1"), version: 7 }]);
        assert_eq!(r.next_due(), Some(t(2400)), "stage 3 is due 30 min after stage 2 was reached");
        assert_eq!(r.tick(t(2399), no_health), Ok(vec![]));
        assert_eq!(added(&r.tick(t(2400), no_health).expect("tick")), vec![2]);
        assert_eq!(r.state(), RolloutState::Completed, "completed the moment the last scope is added");
        assert_eq!(r.reached_at(), &[t(0), t(600), t(2400)]);
        assert_eq!(r.ended_at(), Some(t(2400)));
        assert_eq!(r.tick(t(9999), no_health), Ok(vec![]), "a completed rollout has nothing to do");
        assert_round_trips(&r);
    }

    #[test]
    fn catch_up_after_a_long_gap_adds_one_stage_and_restarts_the_wait() {
        let mut r = started(example());
        // The server was down for a day.
        assert_eq!(added(&r.tick(t(86_400), no_health).expect("tick")), vec![1]);
        assert_eq!(r.reached_at(), &[t(0), t(86_400)], "stamped with when it was actually added");
        assert_eq!(r.next_due(), Some(t(86_400 + 1800)), "stage 2 still gets its full 30 minutes");
        assert_eq!(r.tick(t(86_401), no_health), Ok(vec![]));
        assert_eq!(added(&r.tick(t(88_200), no_health).expect("tick")), vec![2]);
        assert_eq!(r.state(), RolloutState::Completed);
    }

    #[test]
    fn zero_waits_add_several_stages_in_one_tick() {
        let mut r =
            started(plan(vec![stage("a=1", 60), stage("a=2", 0), stage("a=3", 0), stage("a=4", 60), stage("*", 0)]));
        assert_eq!(added(&r.tick(t(60), no_health).expect("tick")), vec![1, 2, 3]);
        assert_eq!(r.next_due(), Some(t(120)));
        assert_eq!(added(&r.tick(t(120), no_health).expect("tick")), vec![4]);
        assert_eq!(r.state(), RolloutState::Completed);
    }

    // ---- pause / resume ----

    #[test]
    fn pause_freezes_the_remaining_wait_and_resume_continues_it() {
        let mut r = started(example());
        assert_eq!(r.pause(t(100), Some("looks odd".into())), Ok(vec![]));
        assert_eq!(r.state(), RolloutState::Paused);
        assert_eq!(r.remaining_when_paused(), Some(Duration::seconds(500)));
        assert_eq!(r.next_due(), None);
        assert_eq!(r.pause_reason(), Some("looks odd"));
        assert_round_trips(&r);
        // The clock is stopped: however long the pause, nothing is added.
        assert_eq!(r.tick(t(100_000), no_health), Ok(vec![]));
        assert_eq!(r.view().remaining_wait_s, Some(500));
        assert_eq!(r.view().stages[1].due_at, None, "no due time while the clock is stopped");
        assert_eq!(r.resume(t(100_000)), Ok(vec![]));
        assert_eq!(r.state(), RolloutState::Running);
        assert_eq!(r.next_due(), Some(t(100_500)), "the 500 s left continue from the resume");
        assert_eq!(r.pause_reason(), None);
        assert_eq!(r.tick(t(100_499), no_health), Ok(vec![]));
        assert_eq!(added(&r.tick(t(100_500), no_health).expect("tick")), vec![1]);
        assert_round_trips(&r);
    }

    #[test]
    fn pausing_an_overdue_stage_freezes_zero_and_it_is_added_after_resume() {
        let mut r = started(example());
        r.pause(t(900), None).expect("pause");
        assert_eq!(r.remaining_when_paused(), Some(Duration::zero()), "never negative");
        r.resume(t(2000)).expect("resume");
        assert_eq!(r.next_due(), Some(t(2000)));
        assert_eq!(added(&r.tick(t(2000), no_health).expect("tick")), vec![1]);
    }

    #[test]
    fn sub_millisecond_waits_round_up_when_frozen() {
        let mut r = started(example());
        let at = t(100) + Duration::microseconds(1500);
        r.pause(at, None).expect("pause");
        // 499.9985 s left → 499.999 s frozen: a pause never shortens the wait.
        assert_eq!(r.remaining_when_paused(), Some(Duration::milliseconds(499_999)));
        assert_round_trips(&r);
        r.resume(t(200)).expect("resume");
        assert_eq!(r.next_due(), Some(t(699) + Duration::milliseconds(999)));
    }

    #[test]
    fn long_reasons_are_clipped() {
        let mut r = started(example());
        r.pause(t(1), Some("x".repeat(5000))).expect("pause");
        assert_eq!(r.pause_reason().map(|s| s.chars().count()), Some(MAX_REASON_CHARS));
    }

    // ---- operator overrides ----

    #[test]
    fn advance_while_running_adds_the_next_stage_and_restarts_the_clock() {
        let mut r = started(example());
        assert_eq!(added(&r.advance(t(10)).expect("advance")), vec![1]);
        assert_eq!(r.state(), RolloutState::Running);
        assert_eq!(r.next_due(), Some(t(1810)));
        assert_eq!(added(&r.advance(t(20)).expect("advance")), vec![2]);
        assert_eq!(r.state(), RolloutState::Completed);
        assert_eq!(
            r.advance(t(30)),
            Err(RolloutError::InvalidState { action: RolloutAction::Advance, state: RolloutState::Completed })
        );
    }

    #[test]
    fn advance_bypasses_gates() {
        let mut r = started(plan(vec![gated("a=1", 60, Some(1.0), None), stage("*", 0)]));
        assert_eq!(r.tick(t(60), |_| reading(10, 0, 0)), Ok(vec![]), "held by its gate");
        assert_eq!(added(&r.advance(t(61)).expect("advance")), vec![1]);
        assert_eq!(r.state(), RolloutState::Completed);
    }

    #[test]
    fn advance_while_paused_stays_paused_with_the_new_stage_full_wait() {
        let mut r = started(example());
        r.pause(t(100), Some("investigating".into())).expect("pause");
        assert_eq!(added(&r.advance(t(200)).expect("advance")), vec![1]);
        assert_eq!(r.state(), RolloutState::Paused);
        assert_eq!(r.reached_at(), &[t(0), t(200)]);
        assert_eq!(r.remaining_when_paused(), Some(Duration::seconds(1800)), "stage 2's full wait");
        assert_eq!(r.pause_reason(), Some("investigating"));
        assert_eq!(r.tick(t(10_000), no_health), Ok(vec![]), "still paused");
        assert_round_trips(&r);
        r.resume(t(300)).expect("resume");
        assert_eq!(r.next_due(), Some(t(2100)));
        // Advancing a paused rollout onto its last stage completes it.
        r.pause(t(400), None).expect("pause");
        assert_eq!(added(&r.advance(t(500)).expect("advance")), vec![2]);
        assert_eq!(r.state(), RolloutState::Completed);
        assert_eq!(r.pause_reason(), None);
        assert_eq!(r.remaining_when_paused(), None);
        assert_round_trips(&r);
    }

    #[test]
    fn complete_adds_every_remaining_stage_in_order() {
        for paused in [false, true] {
            let mut r = started(plan(vec![stage("a=1", 60), stage("a=2", 60), stage("a=3", 60), stage("*", 60)]));
            r.tick(t(60), no_health).expect("tick");
            if paused {
                r.pause(t(70), None).expect("pause");
            }
            let e = r.complete(t(80)).expect("complete");
            assert_eq!(added(&e), vec![2, 3]);
            assert!(matches!(&e[1], Effect::AddScope { selector, version: 7, .. } if selector.is_all()));
            assert_eq!(r.state(), RolloutState::Completed);
            assert_eq!(r.reached_at(), &[t(0), t(60), t(80), t(80)]);
            assert_eq!(r.ended_at(), Some(t(80)));
            assert_round_trips(&r);
        }
    }

    #[test]
    fn cancel_without_rollback_just_stops() {
        let mut r = started(example());
        assert_eq!(r.cancel(t(10), false, |_| Some(1)), Ok(vec![]));
        assert_eq!(r.state(), RolloutState::Cancelled);
        assert!(!r.rolled_back());
        assert_eq!(r.ended_at(), Some(t(10)));
        assert_eq!(r.next_due(), None);
        assert_eq!(r.tick(t(10_000), no_health), Ok(vec![]), "no further stages");
        let v = r.view();
        let states: Vec<StageState> = v.stages.iter().map(|s| s.state).collect();
        assert_eq!(states, vec![StageState::Reached, StageState::Skipped, StageState::Skipped]);
        assert_round_trips(&r);
    }

    #[test]
    fn cancel_with_rollback_pins_reached_stages_only_where_something_was_resolved() {
        let p =
            plan(vec![stage("cluster=canary", 60), stage("region=eu", 60), stage("cluster=canary", 60), stage("*", 0)]);
        let mut r = started(p);
        r.advance(t(1)).expect("advance");
        r.advance(t(2)).expect("advance");
        r.pause(t(3), Some("bad".into())).expect("pause");
        let asked = RefCell::new(Vec::new());
        let previous = |s: &Selector| {
            asked.borrow_mut().push(s.to_string());
            (s == &sel("cluster=canary")).then_some(5)
        };
        let e = r.cancel(t(4), true, previous).expect("cancel");
        // region=eu resolved to nothing before: no pin. `*` was never reached: not asked.
        // cluster=canary is reached twice but pinned once.
        assert_eq!(e, vec![Effect::Pin { stage: 0, selector: sel("cluster=canary"), version: 5 }]);
        assert_eq!(asked.into_inner(), vec!["cluster=canary", "region=eu"]);
        assert_eq!(r.state(), RolloutState::Cancelled);
        assert!(r.rolled_back());
        assert_eq!(r.pause_reason(), None);
        assert_round_trips(&r);

        let mut r = started(example());
        r.advance(t(1)).expect("advance");
        let e = r.cancel(t(2), true, |s| if s.is_all() { Some(1) } else { Some(6) }).expect("cancel");
        assert_eq!(
            e,
            vec![
                Effect::Pin { stage: 0, selector: sel("cluster=api-canary"), version: 6 },
                Effect::Pin { stage: 1, selector: sel("region=us-east-1"), version: 6 },
            ]
        );
    }

    #[test]
    fn supersede_ends_an_active_rollout() {
        for paused in [false, true] {
            let mut r = started(example());
            if paused {
                r.pause(t(1), None).expect("pause");
            }
            assert_eq!(r.supersede(t(2)), Ok(vec![]));
            assert_eq!(r.state(), RolloutState::Superseded);
            assert_eq!(r.ended_at(), Some(t(2)));
            assert_eq!(r.tick(t(10_000), no_health), Ok(vec![]));
            assert_eq!(r.view().stages[2].state, StageState::Skipped);
            assert_round_trips(&r);
        }
    }

    // ---- every action from every state ----

    /// A rollout of the example plan in each state, stage 1 reached.
    fn in_state(state: RolloutState) -> Rollout {
        let mut r = started(example());
        match state {
            RolloutState::Running => {}
            RolloutState::Paused => drop(r.pause(t(1), None)),
            RolloutState::Completed => drop(r.complete(t(1))),
            RolloutState::Cancelled => drop(r.cancel(t(1), false, |_| None)),
            RolloutState::Superseded => drop(r.supersede(t(1))),
        }
        assert_eq!(r.state(), state);
        r
    }

    fn act(r: &mut Rollout, a: RolloutAction, now: DateTime<Utc>) -> Result<Vec<Effect>, RolloutError> {
        match a {
            RolloutAction::Pause => r.pause(now, None),
            RolloutAction::Resume => r.resume(now),
            RolloutAction::Advance => r.advance(now),
            RolloutAction::Complete => r.complete(now),
            RolloutAction::Cancel => r.cancel(now, true, |_| Some(1)),
            RolloutAction::Supersede => r.supersede(now),
        }
    }

    #[test]
    fn transition_table() {
        use RolloutAction::*;
        use RolloutState::*;
        // (from, action) → the state after, or None when the action is refused.
        type Row = [(RolloutAction, Option<RolloutState>); 6];
        let table: [(RolloutState, Row); 5] = [
            (
                Running,
                [
                    (Pause, Some(Paused)),
                    (Resume, None),
                    (Advance, Some(Running)),
                    (Complete, Some(Completed)),
                    (Cancel, Some(Cancelled)),
                    (Supersede, Some(Superseded)),
                ],
            ),
            (
                Paused,
                [
                    (Pause, None),
                    (Resume, Some(Running)),
                    (Advance, Some(Paused)),
                    (Complete, Some(Completed)),
                    (Cancel, Some(Cancelled)),
                    (Supersede, Some(Superseded)),
                ],
            ),
            (
                Completed,
                [(Pause, None), (Resume, None), (Advance, None), (Complete, None), (Cancel, None), (Supersede, None)],
            ),
            (
                Cancelled,
                [(Pause, None), (Resume, None), (Advance, None), (Complete, None), (Cancel, None), (Supersede, None)],
            ),
            (
                Superseded,
                [(Pause, None), (Resume, None), (Advance, None), (Complete, None), (Cancel, None), (Supersede, None)],
            ),
        ];
        for (from, row) in table {
            for (action, expected) in row {
                let mut r = in_state(from);
                let before = r.clone();
                let result = act(&mut r, action, t(5));
                match expected {
                    Some(to) => {
                        assert!(result.is_ok(), "{action} from {from}: {result:?}");
                        assert_eq!(r.state(), to, "{action} from {from}");
                        assert_round_trips(&r);
                    }
                    None => {
                        assert_eq!(
                            result,
                            Err(RolloutError::InvalidState { action, state: from }),
                            "{action} from {from}"
                        );
                        assert_eq!(r, before, "a refused {action} changes nothing");
                    }
                }
            }
            // tick is never refused; off the running state it does nothing.
            let mut r = in_state(from);
            let before = r.clone();
            let e = r.tick(t(100_000), |_| reading(1, 1, 0)).expect("tick is never refused");
            if from == Running {
                assert_eq!(added(&e), vec![1]);
            } else {
                assert_eq!((e, &r), (vec![], &before), "tick on a {from} rollout");
            }
        }
    }

    #[test]
    fn invalid_state_message() {
        let mut r = in_state(RolloutState::Running);
        let err = r.resume(t(1)).expect_err("running");
        assert_eq!(err.to_string(), "cannot resume a running rollout");
        let mut r = in_state(RolloutState::Cancelled);
        assert_eq!(r.advance(t(1)).expect_err("cancelled").to_string(), "cannot advance a cancelled rollout");
    }

    // ---- gates ----

    #[test]
    fn gate_holds_a_due_stage_until_enough_applied() {
        let mut r = started(plan(vec![gated("cluster=canary", 600, Some(0.9), None), stage("*", 0)]));
        assert_eq!(r.gated_stage(), Some(0));
        assert_eq!(r.tick(t(600), |_| reading(10, 8, 0)), Ok(vec![]), "80% < 90%");
        assert_eq!(r.state(), RolloutState::Running);
        assert_eq!(r.next_due(), Some(t(600)), "stays due, checked again each tick");
        assert_eq!(r.tick(t(700), |_| None), Ok(vec![]), "no reading: hold");
        assert_eq!(r.tick(t(800), |_| reading(0, 0, 0)), Ok(vec![]), "nobody there: hold");
        // Enough applied but not yet due: the wait still counts.
        let mut early = started(plan(vec![gated("cluster=canary", 600, Some(0.9), None), stage("*", 0)]));
        assert_eq!(early.tick(t(599), |_| reading(10, 10, 0)), Ok(vec![]));
        // 9 of 10 = 90% ≥ 90%.
        assert_eq!(added(&r.tick(t(900), |_| reading(10, 9, 0)).expect("tick")), vec![1]);
        assert_eq!(r.reached_at(), &[t(0), t(900)]);
        assert_eq!(r.state(), RolloutState::Completed);
    }

    #[test]
    fn gate_is_asked_only_about_the_current_stage() {
        let mut r = started(plan(vec![
            gated("a=1", 0, Some(0.5), None),
            stage("a=2", 0),
            gated("a=3", 100, None, Some(0.1)),
            stage("*", 0),
        ]));
        let asked = RefCell::new(Vec::new());
        let e = r
            .tick(t(0), |i| {
                asked.borrow_mut().push(i);
                reading(2, 1, 0)
            })
            .expect("tick");
        assert_eq!(added(&e), vec![1, 2], "zero waits: several stages, each gate passing");
        assert_eq!(
            asked.into_inner(),
            vec![0, 2],
            "stage 1 has no gate; stage 2's gate checks failures even before due"
        );
        assert_eq!(r.gated_stage(), Some(2));
    }

    #[test]
    fn failure_only_gate_passes_with_no_consumers_but_holds_without_a_reading() {
        let mut r = started(plan(vec![gated("a=1", 60, None, Some(0.05)), stage("*", 0)]));
        assert_eq!(r.tick(t(60), |_| None), Ok(vec![]));
        assert_eq!(added(&r.tick(t(61), |_| reading(0, 0, 0)).expect("tick")), vec![1]);
    }

    #[test]
    fn gate_pauses_on_failures_with_the_reason() {
        let p = plan(vec![stage("cluster=canary", 60), gated("region=eu", 600, Some(0.5), Some(0.05)), stage("*", 0)]);
        let mut r = started(p);
        r.tick(t(60), no_health).expect("tick");
        // Failures pause the rollout as soon as they are seen, long before the stage is due.
        assert_eq!(r.tick(t(100), |_| reading(10, 5, 3)), Ok(vec![]));
        assert_eq!(r.state(), RolloutState::Paused);
        assert_eq!(r.pause_reason(), Some("stage 2 (region=eu): 3 of 10 nodes (30%) failed to apply v7; max 5%"));
        assert_eq!(r.remaining_when_paused(), Some(Duration::seconds(560)));
        assert_round_trips(&r);
        // Resuming while the stage still fails pauses it again on the next tick...
        r.resume(t(200)).expect("resume");
        r.tick(t(201), |_| reading(8, 7, 1)).expect("tick");
        assert_eq!(r.state(), RolloutState::Paused);
        assert_eq!(r.pause_reason(), Some("stage 2 (region=eu): 1 of 8 nodes (12.5%) failed to apply v7; max 5%"));
        // ...and once the nodes recover it proceeds normally.
        r.resume(t(300)).expect("resume");
        assert_eq!(r.tick(t(300), |_| reading(8, 8, 0)), Ok(vec![]), "not due yet");
        assert_eq!(r.state(), RolloutState::Running);
        assert_eq!(added(&r.tick(t(859), |_| reading(8, 8, 0)).expect("tick")), vec![2]);
        assert_eq!(r.state(), RolloutState::Completed);
    }

    #[test]
    fn bake_time_holds_a_stage_that_became_healthy_too_recently() {
        let gate = Gate::with_bake(Some(0.5), Some(0.1), Some(300), None).expect("gate");
        let p = plan(vec![
            Stage { selector: sel("cluster=canary"), wait_s: 60, gate: Some(gate), analyses: vec![] },
            stage("*", 0),
        ]);
        let mut r = started(p);
        // Not healthy yet at 100 s (due since 60 s): holds, no bake started.
        assert_eq!(r.tick(t(100), |_| reading(10, 2, 0)), Ok(vec![]));
        assert_eq!(r.healthy_since(), None);
        // Healthy from 200 s: the bake starts, and holds the stage until 500 s.
        assert_eq!(r.tick(t(200), |_| reading(10, 8, 0)), Ok(vec![]));
        assert_eq!(r.healthy_since(), Some(t(200)));
        assert_round_trips(&r);
        assert_eq!(r.tick(t(499), |_| reading(10, 9, 0)), Ok(vec![]), "baked 299 s of 300");
        // A break (below the threshold again) restarts the bake.
        assert_eq!(r.tick(t(450), |_| reading(10, 3, 0)), Ok(vec![]));
        assert_eq!(r.healthy_since(), None);
        assert_eq!(r.tick(t(600), |_| reading(10, 9, 0)), Ok(vec![]));
        assert_eq!(r.tick(t(899), |_| reading(10, 9, 0)), Ok(vec![]));
        assert_eq!(added(&r.tick(t(900), |_| reading(10, 9, 0)).expect("tick")), vec![1]);
        assert_eq!(r.state(), RolloutState::Completed);
        // Failures during the bake pause the rollout as ever (and end the bake).
        let gate = Gate::with_bake(None, Some(0.1), Some(300), None).expect("gate");
        let mut r = started(plan(vec![
            Stage { selector: sel("a=1"), wait_s: 0, gate: Some(gate), analyses: vec![] },
            stage("*", 0),
        ]));
        r.tick(t(10), |_| reading(10, 10, 0)).expect("tick");
        r.tick(t(20), |_| reading(10, 5, 5)).expect("tick");
        assert_eq!(r.state(), RolloutState::Paused);
        assert_eq!(r.healthy_since(), None);
    }

    #[test]
    fn min_reporting_holds_until_enough_nodes_reported() {
        let gate = Gate::with_bake(None, Some(0.5), None, Some(3)).expect("gate");
        let mut r = started(plan(vec![
            Stage { selector: sel("a=1"), wait_s: 0, gate: Some(gate), analyses: vec![] },
            stage("*", 0),
        ]));
        assert_eq!(r.tick(t(1), |_| reading(10, 2, 0)), Ok(vec![]), "2 of 3 reporting");
        assert_eq!(added(&r.tick(t(2), |_| reading(10, 2, 1)).expect("tick")), vec![1]);
        assert!(Gate::with_bake(None, None, None, Some(1)).is_ok(), "min_reporting alone is a gate");
        assert_eq!(Gate::with_bake(None, None, None, None), Err(GateError::Empty));
        assert_eq!(
            Gate::with_bake(None, None, Some(Plan::MAX_WAIT_S + 1), None),
            Err(GateError::BakeTooLong(2_592_001))
        );
        let parsed: Gate =
            serde_json::from_value(json!({"max_failure_ratio": 0.1, "bake_s": 60, "min_reporting": 2})).expect("gate");
        assert_eq!((parsed.bake_s(), parsed.min_reporting()), (Some(60), Some(2)));
        assert_eq!(
            serde_json::to_value(parsed).expect("json"),
            json!({"max_failure_ratio": 0.1, "bake_s": 60, "min_reporting": 2})
        );
        let p: Plan =
            serde_json::from_value(json!({"stages": [{"selector": {}, "wait_s": 0}], "on_failure": "rollback"}))
                .expect("plan");
        assert_eq!(p.on_failure(), Some(crate::checks::OnFailure::Rollback));
    }

    #[test]
    fn failure_ratio_exactly_at_the_maximum_does_not_pause() {
        let mut r = started(plan(vec![gated("a=1", 60, None, Some(0.25)), stage("*", 0)]));
        assert_eq!(added(&r.tick(t(60), |_| reading(4, 3, 1)).expect("tick")), vec![1]);
        let mut r = started(plan(vec![gated("a=1", 60, None, Some(0.0)), stage("*", 0)]));
        r.tick(t(1), |_| reading(1000, 999, 1)).expect("tick");
        assert_eq!(r.pause_reason(), Some("stage 1 (a=1): 1 of 1000 nodes (0.1%) failed to apply v7; max 0%"));
    }

    #[test]
    fn inconsistent_readings_keep_ratios_within_bounds() {
        // Counts from separate queries: more failures than matching consumers.
        let g = Gate::new(Some(0.5), Some(0.5)).expect("gate");
        assert!(matches!(g.evaluate(reading(0, 0, 3)), Verdict::Failing { of: 3, ratio, .. } if ratio == 1.0));
        assert_eq!(g.evaluate(reading(2, 4, 0)), Verdict::Pass);
    }

    #[test]
    fn last_stage_gate_and_wait_are_irrelevant() {
        let mut r = started(plan(vec![stage("a=1", 60), gated("*", 600, Some(1.0), Some(0.0))]));
        assert_eq!(added(&r.tick(t(60), |_| reading(10, 0, 10)).expect("tick")), vec![1]);
        assert_eq!(r.state(), RolloutState::Completed);
        assert_eq!(r.gated_stage(), None);
    }

    // ---- time, storage and the view ----

    #[test]
    fn times_never_run_backwards_and_are_kept_to_the_microsecond() {
        let mut r = Rollout::start(7, example(), t(0) + Duration::nanoseconds(1_234_567)).0;
        assert_eq!(r.reached_at(), &[t(0) + Duration::microseconds(1234)]);
        // A replica whose clock is behind.
        r.advance(t(-50)).expect("advance");
        assert_eq!(r.reached_at()[1], r.reached_at()[0]);
        assert_round_trips(&r);
    }

    #[test]
    fn records_that_break_invariants_are_refused() {
        let good = started(example()).to_record();
        type Breaker = Box<dyn Fn(&mut RolloutRecord)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("no stage reached", Box::new(|r| r.reached_at.clear())),
            ("more reached than stages", Box::new(|r| r.reached_at = vec![t(0); 4])),
            ("out of order", Box::new(|r| r.reached_at = vec![t(5), t(1)])),
            ("running without due", Box::new(|r| r.next_due = None)),
            ("running with frozen wait", Box::new(|r| r.remaining_ms = Some(5))),
            ("paused with due", Box::new(|r| r.state = RolloutState::Paused)),
            (
                "completed too early",
                Box::new(|r| {
                    r.state = RolloutState::Completed;
                    r.next_due = None;
                    r.ended_at = Some(t(1));
                }),
            ),
            (
                "cancelled without end",
                Box::new(|r| {
                    r.state = RolloutState::Cancelled;
                    r.next_due = None;
                }),
            ),
            ("reason while running", Box::new(|r| r.pause_reason = Some("x".into()))),
            ("rolled back while running", Box::new(|r| r.rolled_back = true)),
            (
                "negative frozen wait",
                Box::new(|r| {
                    r.state = RolloutState::Paused;
                    r.next_due = None;
                    r.remaining_ms = Some(-1);
                }),
            ),
        ];
        assert!(Rollout::from_record(good.clone()).is_ok());
        for (name, break_it) in cases {
            let mut rec = good.clone();
            break_it(&mut rec);
            assert!(Rollout::from_record(rec.clone()).is_err(), "{name}");
            let json = serde_json::to_value(&rec).expect("serialize");
            assert!(serde_json::from_value::<Rollout>(json).is_err(), "{name} (JSON)");
        }
    }

    #[test]
    fn record_json_shape_and_state_names() {
        let mut r = started(example());
        r.pause(t(100), Some("why".into())).expect("pause");
        let v = serde_json::to_value(&r).expect("serialize");
        assert_eq!(v["state"], "paused");
        assert_eq!(v["remaining_ms"], 500_000);
        assert_eq!(v["reached_at"], json!(["2023-11-14T22:13:20Z"]));
        assert_eq!(v["next_due"], json!(null));
        assert_eq!(v["plan"]["stages"][1]["wait_s"], 1800);
        for s in RolloutState::ALL {
            assert_eq!(s.as_str().parse::<RolloutState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).expect("serialize"), json!(s.as_str()));
        }
        assert!("Running".parse::<RolloutState>().is_err());
        assert_eq!(RolloutAction::Supersede.to_string(), "supersede");
    }

    #[test]
    fn view_matches_the_api_shape() {
        let mut r = started(plan(vec![
            gated("cluster=api-canary", 600, Some(0.9), None),
            stage("region=us-east-1", 1800),
            stage("region=eu", 60),
            stage("*", 0),
        ]));
        r.advance(t(100)).expect("advance");
        let v = r.view();
        assert_eq!((v.current_stage, v.reached, v.state), (1, 2, RolloutState::Running));
        let due: Vec<Option<DateTime<Utc>>> = v.stages.iter().map(|s| s.due_at).collect();
        assert_eq!(due, vec![None, None, Some(t(1900)), Some(t(1960))], "exact, then earliest possible");
        let json = serde_json::to_value(&v).expect("serialize");
        assert_eq!(json["state"], "running");
        assert_eq!(json["current_stage"], 1);
        assert_eq!(
            json["stages"][0],
            json!({"selector": {"cluster": "api-canary"}, "wait_s": 600, "gate": {"min_applied_ratio": 0.9},
                   "state": "reached", "reached_at": "2023-11-14T22:13:20Z", "due_at": null})
        );
        assert_eq!(json["stages"][2]["state"], "pending");
        assert_eq!(json["stages"][2]["due_at"], "2023-11-14T22:45:00Z");
        assert_eq!(json["stages"][3]["gate"], json!(null));
        assert_eq!(json["pause_reason"], json!(null));
        let back: RolloutView = serde_json::from_value(json).expect("the console reads it back");
        assert_eq!(back, v);

        r.complete(t(200)).expect("complete");
        let v = r.view();
        assert_eq!((v.current_stage, v.reached, v.state), (3, 4, RolloutState::Completed));
        assert!(v.stages.iter().all(|s| s.state == StageState::Reached && s.due_at.is_none()));
        assert_eq!(v.ended_at, Some(t(200)));
    }

    // ---- properties ----

    #[derive(Clone, Debug)]
    enum Op {
        Tick { matching: u64, applied: u64, failed: u64, known: bool },
        Pause,
        Resume,
        Advance,
        Complete,
        Cancel { rollback: bool },
        Supersede,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u64..6, 0u64..6, 0u64..3, proptest::bool::weighted(0.8))
                .prop_map(|(matching, applied, failed, known)| Op::Tick { matching, applied, failed, known }),
            2 => Just(Op::Pause),
            2 => Just(Op::Resume),
            2 => Just(Op::Advance),
            1 => Just(Op::Complete),
            1 => any::<bool>().prop_map(|rollback| Op::Cancel { rollback }),
            1 => Just(Op::Supersede),
        ]
    }

    const SELECTORS: [&str; 4] = ["*", "region=eu", "cluster=c1", "region=us"];

    fn stage_strategy() -> impl Strategy<Value = Stage> {
        let gate = prop_oneof![
            2 => Just(None),
            1 => (proptest::option::of(0.0f64..=1.0), proptest::option::of(0.0f64..=1.0))
                .prop_map(|(a, f)| Gate::new(a, f).ok()),
        ];
        (0..SELECTORS.len(), prop_oneof![Just(0u64), Just(1), Just(60), Just(600)], gate)
            .prop_map(|(s, wait_s, gate)| Stage { selector: sel(SELECTORS[s]), wait_s, gate, analyses: vec![] })
    }

    proptest! {
        /// Whatever operators do and whenever (clocks may even step back), stages are added
        /// in plan order, each exactly once, `reached` never decreases, a refused action
        /// changes nothing, a completed rollout has every stage reached, final states stay
        /// final, pins come only from a rollback and only for reached selectors, and every
        /// state survives storage.
        #[test]
        fn stages_are_added_in_order_exactly_once(
            stages in proptest::collection::vec(stage_strategy(), 1..6),
            ops in proptest::collection::vec((op(), -30i64..900), 0..40),
        ) {
            let p = plan(stages);
            let n = p.stage_count();
            let mut now = t(0);
            let (mut r, first) = Rollout::start(9, p.clone(), now);
            let mut added_so_far: Vec<usize> = Vec::new();
            let mut check_adds = |effects: &[Effect], r: &Rollout| -> Result<(), TestCaseError> {
                for e in effects {
                    if let Effect::AddScope { stage, selector, version } = e {
                        prop_assert_eq!(*stage, added_so_far.len(), "added out of order or twice");
                        prop_assert_eq!(selector, &p.stages()[*stage].selector);
                        prop_assert_eq!(*version, 9);
                        added_so_far.push(*stage);
                    }
                }
                prop_assert_eq!(added_so_far.len(), r.reached());
                Ok(())
            };
            check_adds(&first, &r)?;
            for (op, dt) in ops {
                now += Duration::seconds(dt);
                let before = r.clone();
                let result = match op {
                    Op::Tick { matching, applied, failed, known } => r.tick(now, |_| {
                        known.then_some(GateReading {
                            matching,
                            applied: applied.min(matching),
                            failed: failed.min(matching),
                            reporting: 0,
                        })
                    }),
                    Op::Pause => r.pause(now, Some("op".into())),
                    Op::Resume => r.resume(now),
                    Op::Advance => r.advance(now),
                    Op::Complete => r.complete(now),
                    Op::Cancel { rollback } => r.cancel(now, rollback, |s| (!s.is_all()).then_some(1)),
                    Op::Supersede => r.supersede(now),
                };
                match result {
                    Ok(effects) => {
                        check_adds(&effects, &r)?;
                        for e in &effects {
                            if let Effect::Pin { stage, selector, version } = e {
                                let rollback = matches!(op, Op::Cancel { rollback: true });
                                prop_assert!(rollback, "a pin outside a rollback");
                                prop_assert!(*stage < r.reached());
                                prop_assert_eq!(selector, &p.stages()[*stage].selector);
                                prop_assert!(!selector.is_all(), "previous() said None for *");
                                prop_assert_eq!(*version, 1);
                            }
                        }
                    }
                    Err(RolloutError::InvalidState { state, .. }) => {
                        prop_assert_eq!(state, before.state());
                        prop_assert_eq!(&r, &before, "a refused action changed the rollout");
                    }
                }
                prop_assert!(r.reached() >= before.reached(), "reached decreased");
                prop_assert!(r.reached_at().windows(2).all(|w| w[0] <= w[1]));
                prop_assert_eq!(r.state() == RolloutState::Completed, r.reached() == n);
                if !before.state().is_active() {
                    prop_assert_eq!(&r, &before, "a final state moved");
                }
                let v = r.view();
                prop_assert_eq!(v.current_stage + 1, r.reached());
                prop_assert_eq!(v.stages.iter().filter(|s| s.state == StageState::Reached).count(), r.reached());
                let stored = serde_json::to_string(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: Rollout = serde_json::from_str(&stored).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, &r);
            }
            // Finishing it by hand always reaches every stage.
            if r.state().is_active() {
                let effects = r.complete(now).map_err(|e| TestCaseError::fail(e.to_string()))?;
                check_adds(&effects, &r)?;
            }
            if r.state() == RolloutState::Completed {
                prop_assert_eq!(r.reached(), n);
                prop_assert_eq!(added_so_far, (0..n).collect::<Vec<_>>());
            }
        }

        /// Ticking a running, ungated rollout at arbitrary increasing times never adds a
        /// stage before its wait since the previous stage has elapsed.
        #[test]
        fn no_stage_before_its_wait(
            waits in proptest::collection::vec(0u64..300, 1..6),
            steps in proptest::collection::vec(0i64..400, 0..60),
        ) {
            let p = plan(waits.iter().map(|&w| stage("*", w)).collect());
            let (mut r, _) = Rollout::start(1, p, t(0));
            let mut now = t(0);
            for dt in steps {
                now += Duration::seconds(dt);
                r.tick(now, no_health).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (i, w) in r.reached_at().windows(2).enumerate() {
                    prop_assert!(w[1] - w[0] >= Duration::seconds(waits[i] as i64));
                }
                if let Some(due) = r.next_due() {
                    prop_assert!(due > now, "a due stage was left behind by a tick without gates");
                }
            }
        }
    }
}
