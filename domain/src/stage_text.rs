//! The one text form of a rollout plan and of the operator's rollout actions, read by the
//! console's rollout form, the CLI's `--stage` and `imprint rollout <action>`, and the API's
//! `POST …/rollouts/{id}/{action}`. One place decides what a stage line may say, so the
//! three surfaces cannot drift apart.
//!
//! A stage line is `SELECTOR [WAIT] [GATE…]`:
//! - `SELECTOR`: `key=value,key=value` (see [`Selector::parse`]), or `*` for every consumer;
//! - `WAIT`: how long the stage runs before the next one, `600` or `600s` (seconds), `10m`,
//!   `1h30m`, `2d` — units `s`, `m`, `h`, `d`, summed; absent means 0;
//! - `GATE`: `min_applied=R` and/or `max_failure=R`, ratios between 0 and 1 (the API's
//!   field names `min_applied_ratio` / `max_failure_ratio` and the spelling `max_failures`
//!   are accepted too).
//!
//! A plan is one stage per non-empty line; errors name the stage by its 1-based number.

use std::str::FromStr;

use crate::rollout::{Gate, GateError, Plan, PlanError, RolloutAction, Stage};
use crate::selector::{Selector, SelectorError};

/// Why a stage line, a plan text or an action word was refused. The messages are shown to
/// people as they are (console flash, CLI error, API `message`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StageTextError {
    #[error("an empty stage: give \"SELECTOR [WAIT] [min_applied=R] [max_failure=R]\", e.g. \"cluster=canary 10m\"")]
    Empty,
    #[error("invalid selector {text:?}: {source}")]
    Selector { text: String, source: SelectorError },
    #[error("{0:?} is not a wait such as 600, 30s, 10m or 1h30m")]
    Wait(String),
    #[error("{0:?} is not key=value (min_applied=R or max_failure=R)")]
    NotKeyValue(String),
    #[error("{0:?} is not a ratio between 0 and 1")]
    Ratio(String),
    #[error("unknown gate {0:?}: use min_applied=R or max_failure=R")]
    UnknownGate(String),
    #[error("{0}")]
    Gate(#[from] GateError),
    /// A plan-level error (no stage, too many, a wait too long).
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// `stage` counts from 1.
    #[error("stage {stage}: {error}")]
    InStage { stage: usize, error: Box<StageTextError> },
    #[error("unknown rollout action {0:?} (pause, resume, advance, complete, cancel)")]
    UnknownAction(String),
}

/// Parses a wait: `600`, `600s`, `10m`, `1h30m`, `2d` (units summed). Overflow is refused
/// rather than wrapped; the plan then bounds the total (see [`Plan::MAX_WAIT_S`]).
pub fn parse_wait(s: &str) -> Result<u64, StageTextError> {
    let bad = || StageTextError::Wait(s.chars().take(100).collect());
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let (mut total, mut num, mut any) = (0u64, None::<u64>, false);
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(num.unwrap_or(0).checked_mul(10).and_then(|n| n.checked_add(u64::from(d))).ok_or_else(bad)?);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n = num.take().ok_or_else(bad)?;
        total = n.checked_mul(unit).and_then(|x| total.checked_add(x)).ok_or_else(bad)?;
        any = true;
    }
    if num.is_some() || !any {
        return Err(bad());
    }
    Ok(total)
}

/// Parses one stage line (see the module comment).
pub fn parse_stage(line: &str) -> Result<Stage, StageTextError> {
    let mut words = line.split_whitespace();
    let text = words.next().ok_or(StageTextError::Empty)?;
    let selector = Selector::parse(text)
        .map_err(|source| StageTextError::Selector { text: text.chars().take(100).collect(), source })?;
    let mut wait_s = 0;
    let (mut applied, mut failure) = (None, None);
    for (i, word) in words.enumerate() {
        let Some((key, value)) = word.split_once('=') else {
            if i == 0 {
                wait_s = parse_wait(word)?;
                continue;
            }
            return Err(StageTextError::NotKeyValue(word.chars().take(100).collect()));
        };
        let ratio: f64 = value.parse().map_err(|_| StageTextError::Ratio(value.chars().take(100).collect()))?;
        match key {
            "min_applied" | "min_applied_ratio" => applied = Some(ratio),
            "max_failure" | "max_failures" | "max_failure_ratio" => failure = Some(ratio),
            _ => return Err(StageTextError::UnknownGate(key.chars().take(100).collect())),
        }
    }
    let gate = match (applied, failure) {
        (None, None) => None,
        (a, f) => Some(Gate::new(a, f)?),
    };
    Ok(Stage { selector, wait_s, gate, analyses: Vec::new() })
}

/// Parses a plan: one stage per non-empty line, checked as a whole by [`Plan::new`].
pub fn parse_plan<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Plan, StageTextError> {
    let stages = lines
        .into_iter()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| parse_stage(l).map_err(|e| StageTextError::InStage { stage: i + 1, error: Box::new(e) }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan::new(stages)?)
}

/// The stage as a line [`parse_stage`] reads back to the same stage.
pub fn format_stage(stage: &Stage) -> String {
    let selector = stage.selector.to_string();
    let mut out = if selector.is_empty() { "*".to_owned() } else { selector };
    out.push(' ');
    out.push_str(&format_wait(stage.wait_s));
    if let Some(g) = &stage.gate {
        if let Some(r) = g.min_applied_ratio() {
            out.push_str(&format!(" min_applied={r}"));
        }
        if let Some(r) = g.max_failure_ratio() {
            out.push_str(&format!(" max_failure={r}"));
        }
    }
    out
}

/// A wait in the largest units that say it exactly: `0s`, `90s`, `10m`, `1h30m`, `2d`.
pub fn format_wait(mut s: u64) -> String {
    if s == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

/// The actions an operator may ask for by name. `supersede` is the system's own (a newer
/// rollout of the topic replaces a running one) and is refused here.
impl FromStr for RolloutAction {
    type Err = StageTextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pause" => Ok(Self::Pause),
            "resume" => Ok(Self::Resume),
            "advance" => Ok(Self::Advance),
            "complete" => Ok(Self::Complete),
            "cancel" => Ok(Self::Cancel),
            other => Err(StageTextError::UnknownAction(other.chars().take(100).collect())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn waits() {
        assert_eq!(parse_wait("600").unwrap(), 600);
        assert_eq!(parse_wait("600s").unwrap(), 600);
        assert_eq!(parse_wait("10m").unwrap(), 600);
        assert_eq!(parse_wait("1h30m").unwrap(), 5_400);
        assert_eq!(parse_wait("2d").unwrap(), 172_800);
        for bad in ["", "m", "10x", "1h30", "-5", "1.5h", "99999999999999999999s", "307445734561825861h"] {
            assert!(parse_wait(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn stages() {
        let s = parse_stage("cluster=canary,region=eu 10m min_applied=0.9 max_failures=0.05").unwrap();
        assert_eq!(s.selector, Selector::parse("cluster=canary,region=eu").unwrap());
        assert_eq!(s.wait_s, 600);
        assert_eq!(s.gate, Some(Gate::new(Some(0.9), Some(0.05)).unwrap()));
        let all = parse_stage("*").unwrap();
        assert_eq!((all.selector, all.wait_s, all.gate), (Selector::default(), 0, None));
        // The wait may be left out before the gates.
        assert_eq!(parse_stage("a=b max_failure=0.1").unwrap().wait_s, 0);
        assert_eq!(parse_stage("a=b 5 min_applied_ratio=1").unwrap().gate, Some(Gate::new(Some(1.0), None).unwrap()));

        assert_eq!(parse_stage("   "), Err(StageTextError::Empty));
        assert!(matches!(parse_stage("nope 1m"), Err(StageTextError::Selector { .. })));
        assert!(matches!(parse_stage("a=b 1m other=1"), Err(StageTextError::UnknownGate(k)) if k == "other"));
        assert!(matches!(parse_stage("a=b 1m 2m"), Err(StageTextError::NotKeyValue(_))));
        assert!(matches!(parse_stage("a=b 1m min_applied=lots"), Err(StageTextError::Ratio(_))));
        assert!(matches!(parse_stage("a=b 1m min_applied=1.5"), Err(StageTextError::Gate(_))));
        assert!(matches!(parse_stage("a=b soon"), Err(StageTextError::Wait(_))));
    }

    #[test]
    fn plans() {
        let plan = parse_plan("cluster=canary 10m\n\n  region=eu 1h max_failure=0.1\n*".lines()).unwrap();
        assert_eq!(plan.stages().len(), 3);
        assert_eq!(plan.stages()[1].wait_s, 3_600);
        let err = parse_plan("a=b\nc=d soon".lines()).unwrap_err();
        assert_eq!(err.to_string(), "stage 2: \"soon\" is not a wait such as 600, 30s, 10m or 1h30m");
        assert!(matches!(parse_plan("\n \n".lines()), Err(StageTextError::Plan(PlanError::Empty))));
        assert!(matches!(parse_plan(["a=b 31d"]), Err(StageTextError::Plan(PlanError::WaitTooLong { .. }))));
    }

    #[test]
    fn actions() {
        for a in [
            RolloutAction::Pause,
            RolloutAction::Resume,
            RolloutAction::Advance,
            RolloutAction::Complete,
            RolloutAction::Cancel,
        ] {
            assert_eq!(a.as_str().parse::<RolloutAction>().unwrap(), a);
        }
        assert!("supersede".parse::<RolloutAction>().is_err(), "not an operator action");
        assert!("Pause".parse::<RolloutAction>().is_err());
    }

    proptest! {
        #[test]
        fn formatted_stages_read_back(
            pairs in proptest::collection::btree_map("[a-z][a-z0-9_]{0,6}", "[a-z0-9]{1,6}", 0..3),
            wait_s in 0u64..=Plan::MAX_WAIT_S,
            applied in proptest::option::of(0u32..=100),
            failure in proptest::option::of(0u32..=100),
        ) {
            let gate = match (applied, failure) {
                (None, None) => None,
                (a, f) => Some(Gate::new(a.map(|x| f64::from(x) / 100.0), f.map(|x| f64::from(x) / 100.0)).unwrap()),
            };
            let stage = Stage { selector: Selector::from_pairs(pairs).unwrap(), wait_s, gate, analyses: Vec::new() };
            let line = format_stage(&stage);
            prop_assert_eq!(parse_stage(&line).unwrap(), stage, "{}", line);
        }
    }
}
