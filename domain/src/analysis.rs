//! Prometheus analysis of a rollout stage (docs/validation.md, issue 24 part 3), in the
//! manner of Argo Rollouts' AnalysisTemplate: a named PromQL query run every `interval_s`
//! while a stage bakes, `count` times; each measurement (one number) is judged by the
//! `success` / `failure` conditions, and the run's verdict follows from the measurements.
//!
//! Pure: the condition grammar (deliberately tiny — `result` compared with a number, joined
//! by `&&` / `||`, with parentheses; no general evaluator), the query's placeholder
//! substitution with PromQL string escaping, one measurement's verdict and the run's.
//! Running the query (HTTP) is the service's.
use serde::{Deserialize, Serialize};
use std::fmt;

/// At most this many analyses per stage.
pub const MAX_ANALYSES: usize = 8;
/// The longest query, in bytes.
pub const MAX_QUERY_LEN: usize = 4096;
/// The longest condition, in bytes.
pub const MAX_CONDITION_LEN: usize = 256;
/// At most this many comparisons in one condition.
pub const MAX_COMPARISONS: usize = 16;
/// Bounds of `interval_s`.
pub const MIN_INTERVAL_S: u64 = 1;
pub const MAX_INTERVAL_S: u64 = 3600;
/// Bounds of `count`.
pub const MAX_COUNT: u32 = 100;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    #[error("analysis name must be 1-64 characters of a-z, 0-9, '-' or '_' (got {0:?})")]
    Name(String),
    #[error("analysis {name:?}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("analysis {0:?} is named twice in one stage")]
    Duplicate(String),
    #[error("a stage names at most {MAX_ANALYSES} analyses")]
    TooMany,
}

/// What an inconclusive measurement (no data, Prometheus unreachable, NaN, neither
/// condition true) does to the stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inconclusive {
    /// The rollout pauses with the reason (an operator decides).
    #[default]
    Pause,
    /// It counts as a failure: the topic's or plan's `on_failure` applies.
    Fail,
}

/// One analysis as a plan names it (the wire form; [`Analysis::validate`] checks it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    pub name: String,
    /// PromQL; `{{topic}}`, `{{version}}` and `{{selector}}` are substituted, escaped for a
    /// PromQL string literal (put them inside `"…"` or `'…'`).
    pub query: String,
    pub interval_s: u64,
    pub count: u32,
    pub success: Condition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Condition>,
    /// How many failed measurements the run tolerates (default 0: the first fails it).
    #[serde(default)]
    pub failure_limit: u32,
    #[serde(default)]
    pub inconclusive: Inconclusive,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Analysis {
    /// The checks of one analysis beyond its conditions' grammar (which deserializing
    /// already enforced).
    pub fn validate(&self) -> Result<(), AnalysisError> {
        if !valid_name(&self.name) {
            return Err(AnalysisError::Name(self.name.clone()));
        }
        let bad = |reason: String| AnalysisError::Invalid { name: self.name.clone(), reason };
        if self.query.trim().is_empty() {
            return Err(bad("query is empty".into()));
        }
        if self.query.len() > MAX_QUERY_LEN {
            return Err(bad(format!("query is longer than {MAX_QUERY_LEN} bytes")));
        }
        if let Some(p) = unknown_placeholder(&self.query) {
            return Err(bad(format!(
                "query has unknown placeholder {{{{{p}}}}} (known: {{{{topic}}}}, {{{{version}}}}, {{{{selector}}}})"
            )));
        }
        if !(MIN_INTERVAL_S..=MAX_INTERVAL_S).contains(&self.interval_s) {
            return Err(bad(format!("interval_s must be {MIN_INTERVAL_S}..={MAX_INTERVAL_S}")));
        }
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(bad(format!("count must be 1..={MAX_COUNT}")));
        }
        if self.failure_limit >= self.count {
            return Err(bad("failure_limit must be below count".into()));
        }
        Ok(())
    }

    /// The query with its placeholders substituted.
    pub fn render_query(&self, topic: &str, version: u64, selector: &str) -> String {
        render_query(&self.query, topic, version, selector)
    }

    /// One measurement's verdict: `None` is no number (no data, an error, NaN).
    /// As Argo: the failure condition wins; else success; else, with no failure condition,
    /// failed; with one, inconclusive.
    pub fn judge(&self, value: Option<f64>) -> Verdict {
        let Some(v) = value.filter(|v| !v.is_nan()) else {
            return Verdict::Inconclusive;
        };
        if let Some(f) = &self.failure {
            if f.eval(v) {
                return Verdict::Failed;
            }
        }
        if self.success.eval(v) {
            Verdict::Successful
        } else if self.failure.is_none() {
            Verdict::Failed
        } else {
            Verdict::Inconclusive
        }
    }

    /// The run's verdict so far from its measurements' verdicts, oldest first: failed once
    /// more than `failure_limit` measurements failed; inconclusive at the first inconclusive
    /// measurement; successful after `count` measurements; else still running.
    pub fn run_verdict(&self, measurements: &[Verdict]) -> RunVerdict {
        let failed = measurements.iter().filter(|v| **v == Verdict::Failed).count();
        if failed > self.failure_limit as usize {
            return RunVerdict::Failed;
        }
        if measurements.contains(&Verdict::Inconclusive) {
            return RunVerdict::Inconclusive;
        }
        if measurements.len() >= self.count as usize {
            RunVerdict::Successful
        } else {
            RunVerdict::Running
        }
    }
}

/// A stage's analyses: each valid, names unique, at most [`MAX_ANALYSES`].
pub fn validate_analyses(list: &[Analysis]) -> Result<(), AnalysisError> {
    if list.len() > MAX_ANALYSES {
        return Err(AnalysisError::TooMany);
    }
    for (i, a) in list.iter().enumerate() {
        a.validate()?;
        if list[..i].iter().any(|b| b.name == a.name) {
            return Err(AnalysisError::Duplicate(a.name.clone()));
        }
    }
    Ok(())
}

/// One measurement's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Successful,
    Failed,
    Inconclusive,
}

/// A run's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunVerdict {
    Running,
    Successful,
    Failed,
    Inconclusive,
}

const PLACEHOLDERS: [&str; 3] = ["topic", "version", "selector"];

fn unknown_placeholder(q: &str) -> Option<String> {
    let mut rest = q;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            return Some(after.chars().take(20).collect());
        };
        let name = after[..j].trim();
        if !PLACEHOLDERS.contains(&name) {
            return Some(name.to_string());
        }
        rest = &after[j + 2..];
    }
    None
}

/// Escapes a value for a PromQL string literal (double- or single-quoted): backslash,
/// both quotes and control characters.
pub fn escape_promql(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Substitutes `{{topic}}`, `{{version}}`, `{{selector}}` (spaces inside the braces
/// allowed), each escaped by [`escape_promql`]; anything else is left as it is.
pub fn render_query(q: &str, topic: &str, version: u64, selector: &str) -> String {
    let mut out = String::with_capacity(q.len() + 32);
    let mut rest = q;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            out.push_str(&rest[i..]);
            return out;
        };
        match after[..j].trim() {
            "topic" => out.push_str(&escape_promql(topic)),
            "version" => out.push_str(&version.to_string()),
            "selector" => out.push_str(&escape_promql(selector)),
            _ => out.push_str(&rest[i..i + 2 + j + 2]),
        }
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    out
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
    fn apply(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
            Op::Ne => a != b,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Cmp(Op, f64),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    fn eval(&self, v: f64) -> bool {
        match self {
            Expr::Cmp(op, n) => op.apply(v, *n),
            Expr::And(a, b) => a.eval(v) && b.eval(v),
            Expr::Or(a, b) => a.eval(v) || b.eval(v),
        }
    }
}

/// A condition on a measurement, e.g. `result < 0.01 || result == 0`: `result` compared
/// with a finite number by `<` `<=` `>` `>=` `==` `!=`, joined by `&&` (binds tighter) and
/// `||`, parentheses allowed. Kept as its source text on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("condition {source_text:?}: {reason}")]
pub struct ConditionError {
    source_text: String,
    reason: String,
}

impl Condition {
    pub fn parse(s: &str) -> Result<Self, ConditionError> {
        let err = |reason: String| ConditionError { source_text: s.chars().take(80).collect(), reason };
        if s.len() > MAX_CONDITION_LEN {
            return Err(err(format!("longer than {MAX_CONDITION_LEN} bytes")));
        }
        let tokens = tokenize(s).map_err(err)?;
        let mut p = Parser { tokens: &tokens, pos: 0, comparisons: 0, depth: 0 };
        let expr = p.or().map_err(err)?;
        if p.pos != tokens.len() {
            return Err(err(format!("unexpected {} after the condition", tokens[p.pos])));
        }
        Ok(Condition { source: s.trim().to_string(), expr })
    }

    /// Whether a (non-NaN) measurement satisfies the condition.
    pub fn eval(&self, value: f64) -> bool {
        self.expr.eval(value)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Condition::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Result,
    Num(f64),
    Op(Op),
    And,
    Or,
    Open,
    Close,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Result => f.write_str("'result'"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Op(op) => write!(f, "'{}'", op.as_str()),
            Tok::And => f.write_str("'&&'"),
            Tok::Or => f.write_str("'||'"),
            Tok::Open => f.write_str("'('"),
            Tok::Close => f.write_str("')'"),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let two = b.get(i..i + 2);
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let (tok, len) = match (c, two) {
            (_, Some(b"&&")) => (Tok::And, 2),
            (_, Some(b"||")) => (Tok::Or, 2),
            (_, Some(b"<=")) => (Tok::Op(Op::Le), 2),
            (_, Some(b">=")) => (Tok::Op(Op::Ge), 2),
            (_, Some(b"==")) => (Tok::Op(Op::Eq), 2),
            (_, Some(b"!=")) => (Tok::Op(Op::Ne), 2),
            (b'<', _) => (Tok::Op(Op::Lt), 1),
            (b'>', _) => (Tok::Op(Op::Gt), 1),
            (b'(', _) => (Tok::Open, 1),
            (b')', _) => (Tok::Close, 1),
            _ if s[i..].starts_with("result")
                && !b.get(i + 6).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') =>
            {
                (Tok::Result, 6)
            }
            (b'0'..=b'9' | b'.' | b'-' | b'+', _) => {
                let mut j = i + 1;
                while j < b.len()
                    && (b[j].is_ascii_digit()
                        || b[j] == b'.'
                        || b[j] == b'e'
                        || b[j] == b'E'
                        || ((b[j] == b'-' || b[j] == b'+') && matches!(b[j - 1], b'e' | b'E')))
                {
                    j += 1;
                }
                let text = &s[i..j];
                let n: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
                if !n.is_finite() {
                    return Err(format!("{text:?} is not a finite number"));
                }
                (Tok::Num(n), j - i)
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(format!(
                    "unexpected {ch:?} at byte {i} (only `result`, numbers, < <= > >= == !=, &&, || and parentheses)"
                ));
            }
        };
        out.push(tok);
        i += len;
    }
    if out.is_empty() {
        return Err("empty".into());
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Tok],
    pos: usize,
    comparisons: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.atom()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.atom()?));
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Tok::Open) => {
                self.depth += 1;
                if self.depth > MAX_COMPARISONS {
                    return Err("too deeply nested".into());
                }
                self.pos += 1;
                let e = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err("missing ')'".into());
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(e)
            }
            Some(Tok::Result) => {
                self.pos += 1;
                let op = match self.peek() {
                    Some(Tok::Op(op)) => *op,
                    Some(t) => return Err(format!("expected a comparison (< <= > >= == !=) after 'result', got {t}")),
                    None => return Err("expected a comparison after 'result'".into()),
                };
                self.pos += 1;
                let n = match self.peek() {
                    Some(Tok::Num(n)) => *n,
                    Some(t) => return Err(format!("expected a number after '{}', got {t}", op.as_str())),
                    None => return Err(format!("expected a number after '{}'", op.as_str())),
                };
                self.pos += 1;
                self.comparisons += 1;
                if self.comparisons > MAX_COMPARISONS {
                    return Err(format!("more than {MAX_COMPARISONS} comparisons"));
                }
                Ok(Expr::Cmp(op, n))
            }
            Some(t) => Err(format!("expected 'result' or '(', got {t}")),
            None => Err("expected 'result' or '(' at the end".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Condition {
        Condition::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn comparisons() {
        assert!(c("result < 0.01").eval(0.001));
        assert!(!c("result < 0.01").eval(0.01));
        assert!(c("result <= 0.01").eval(0.01));
        assert!(c("result > -1").eval(0.0));
        assert!(c("result >= 1e-3").eval(0.001));
        assert!(c("result == 0").eval(0.0));
        assert!(c("result != 0").eval(2.0));
        assert!(c("result<5").eval(4.0));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let e = c("result < 1 || result > 5 && result < 6");
        assert!(e.eval(0.5));
        assert!(e.eval(5.5));
        assert!(!e.eval(7.0));
        assert!(!e.eval(3.0));
        let p = c("(result < 1 || result > 5) && result < 6");
        assert!(!p.eval(7.0));
        assert!(p.eval(0.5));
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "",
            "   ",
            "result",
            "result <",
            "result < x",
            "0.01 > result",
            "result < 0.01 &&",
            "result < 0.01 & result > 0",
            "result = 1",
            "(result < 1",
            "result < 1)",
            "results < 1",
            "result < NaN",
            "result < inf",
            "result < 1e999",
            "len(result) < 1",
            "result < 1; drop",
            "result < 1 result < 2",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long = vec!["result < 1"; 17].join(" || ");
        assert!(Condition::parse(&long).is_err());
        let deep = format!("{}result < 1{}", "(".repeat(40), ")".repeat(40));
        assert!(Condition::parse(&deep).is_err());
    }

    #[test]
    fn condition_roundtrips_as_its_text() {
        let a: Analysis = serde_json::from_value(serde_json::json!({
            "name": "errors", "query": "sum(x{version=\"{{version}}\"})", "interval_s": 5, "count": 3,
            "success": "result < 0.01", "failure": "result >= 0.05"
        }))
        .unwrap();
        assert_eq!(a.inconclusive, Inconclusive::Pause);
        a.validate().unwrap();
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["success"], "result < 0.01");
        let err = serde_json::from_value::<Analysis>(serde_json::json!({
            "name": "e", "query": "x", "interval_s": 5, "count": 3, "success": "result <"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("result <"), "{err}");
    }

    #[test]
    fn substitution_escapes_for_promql_strings() {
        let q = r#"rate(errs{topic="{{topic}}",version="{{ version }}",sel='{{selector}}'}[1m]) {{other}}"#;
        let out = render_query(q, "prices", 7, r#"a="b",c='d'\"#);
        assert_eq!(out, r#"rate(errs{topic="prices",version="7",sel='a=\"b\",c=\'d\'\\'}[1m]) {{other}}"#);
        assert_eq!(escape_promql("x\ny"), "x\\ny");
        assert_eq!(render_query("{{topic", "t", 1, ""), "{{topic");
    }

    fn analysis(success: &str, failure: Option<&str>, count: u32, limit: u32) -> Analysis {
        Analysis {
            name: "errors".into(),
            query: "x".into(),
            interval_s: 1,
            count,
            success: c(success),
            failure: failure.map(c),
            failure_limit: limit,
            inconclusive: Inconclusive::Pause,
        }
    }

    #[test]
    fn validation() {
        let mut a = analysis("result < 1", None, 3, 0);
        a.validate().unwrap();
        a.query = "x{{ nope }}".into();
        assert!(a.validate().unwrap_err().to_string().contains("nope"));
        a.query = "x".into();
        a.count = 0;
        assert!(a.validate().is_err());
        a.count = 3;
        a.failure_limit = 3;
        assert!(a.validate().is_err());
        a.failure_limit = 0;
        a.interval_s = 0;
        assert!(a.validate().is_err());
        a.interval_s = 1;
        a.name = "Bad Name".into();
        assert!(a.validate().is_err());
        let b = analysis("result < 1", None, 3, 0);
        assert!(matches!(validate_analyses(&[b.clone(), b]), Err(AnalysisError::Duplicate(_))));
    }

    #[test]
    fn judging_measurements() {
        let only_success = analysis("result < 0.01", None, 3, 0);
        assert_eq!(only_success.judge(Some(0.001)), Verdict::Successful);
        assert_eq!(only_success.judge(Some(0.5)), Verdict::Failed);
        assert_eq!(only_success.judge(None), Verdict::Inconclusive);
        assert_eq!(only_success.judge(Some(f64::NAN)), Verdict::Inconclusive);
        let both = analysis("result < 0.01", Some("result >= 0.05"), 3, 0);
        assert_eq!(both.judge(Some(0.02)), Verdict::Inconclusive);
        assert_eq!(both.judge(Some(0.05)), Verdict::Failed);
        // the failure condition wins when both hold
        let overlap = analysis("result < 1", Some("result > 0.5"), 3, 0);
        assert_eq!(overlap.judge(Some(0.7)), Verdict::Failed);
    }

    #[test]
    fn run_verdicts() {
        use Verdict::*;
        let a = analysis("result < 1", None, 3, 1);
        assert_eq!(a.run_verdict(&[]), RunVerdict::Running);
        assert_eq!(a.run_verdict(&[Successful, Failed]), RunVerdict::Running);
        assert_eq!(a.run_verdict(&[Successful, Failed, Successful]), RunVerdict::Successful);
        assert_eq!(a.run_verdict(&[Failed, Failed]), RunVerdict::Failed);
        assert_eq!(a.run_verdict(&[Successful, Inconclusive]), RunVerdict::Inconclusive);
        let strict = analysis("result < 1", None, 2, 0);
        assert_eq!(strict.run_verdict(&[Failed]), RunVerdict::Failed);
        assert_eq!(strict.run_verdict(&[Successful, Successful]), RunVerdict::Successful);
    }
}
