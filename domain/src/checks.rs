//! Checks a candidate version passes before it is released (docs/validation.md): a topic's
//! ordered list of [`Check`]s, each `reject` or `warn` on failure. Pure: what a check says
//! about a candidate and the previous version (sizes, record counts, content type), and how
//! the outcomes combine. The external validator's call is the service's; its answer is
//! turned into a [`CheckResult`] here too, so every result has one shape.
use serde::{Deserialize, Serialize};

/// How a stored secret is shown; sent back unchanged, it keeps the stored secret.
pub const REDACTED: &str = "********";
/// At most this many checks per topic.
pub const MAX_CHECKS: usize = 16;
/// The longest external-validator timeout.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// The default external-validator timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Messages (a validator's reason) are clipped to this many characters.
pub const MAX_MESSAGE_CHARS: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The candidate's content type is one of `allowed`.
    ContentType,
    /// The size changed by at most `max_pct` percent from the previous version's.
    SizeChangePct,
    /// The record count (JSON array length, JSON object key count, or non-empty lines)
    /// changed by at most `max_pct` percent from the previous version's.
    RecordCountChangePct,
    /// The candidate is not empty (no bytes, `[]`, `{}`, only blank lines) unless the
    /// previous version was empty too.
    NotEmpty,
    /// A webhook that answers `{"accept": bool, "reason": "..."}`.
    External,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::ContentType => "content_type",
            CheckKind::SizeChangePct => "size_change_pct",
            CheckKind::RecordCountChangePct => "record_count_change_pct",
            CheckKind::NotEmpty => "not_empty",
            CheckKind::External => "external",
        }
    }
}

/// What a failed check does to the publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    #[default]
    Reject,
    Warn,
}

/// What an external validator that does not answer in time counts as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    Reject,
    Accept,
}

/// What a rollout gate that fails (too many consumer failures) does: pause the rollout
/// (the operator decides) or roll it back (cancel it and pin the previous version on
/// every stage reached).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Pause,
    Rollback,
}

/// A topic's validation settings, stored as one JSON document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicChecks {
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A publish the checks reject is stored unreleased, marked rejected with every
    /// result, for its owner to look at (it is never released, pinned, rolled out or
    /// served); otherwise nothing is stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_rejected: bool,
}

/// One configured check. Which fields apply depends on `type`; [`Check::validate`] says
/// which are missing or out of place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    #[serde(default)]
    pub on_fail: OnFail,
    /// `size_change_pct`, `record_count_change_pct`: the largest change allowed, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pct: Option<f64>,
    /// `content_type`: the allowed types (compared without parameters, case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// `external`: where the candidate is POSTed (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
    /// `external`: the URL may be a private or loopback address (set by administrators only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
    /// `external`: the Standard Webhooks signing secret (`whsec_` + base64) its requests
    /// are signed with; shown as `********`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("checks[{index}] ({kind}): {message}")]
pub struct CheckError {
    pub index: usize,
    pub kind: &'static str,
    pub message: String,
}

impl Check {
    /// A configured list of checks is usable: within bounds, each with exactly the fields
    /// its type needs.
    pub fn validate_all(checks: &[Check]) -> Result<(), CheckError> {
        if checks.len() > MAX_CHECKS {
            return Err(CheckError {
                index: MAX_CHECKS,
                kind: "checks",
                message: format!("a topic has at most {MAX_CHECKS} checks"),
            });
        }
        checks.iter().enumerate().try_for_each(|(i, c)| c.validate(i))
    }

    fn validate(&self, index: usize) -> Result<(), CheckError> {
        let err = |m: &str| Err(CheckError { index, kind: self.kind.as_str(), message: m.to_owned() });
        let pct = matches!(self.kind, CheckKind::SizeChangePct | CheckKind::RecordCountChangePct);
        let external = self.kind == CheckKind::External;
        match self.max_pct {
            Some(p) if pct && !(0.0..=1_000_000.0).contains(&p) => return err("max_pct must be between 0 and 1000000"),
            Some(_) if !pct => return err("max_pct applies to size_change_pct and record_count_change_pct only"),
            None if pct => return err("max_pct is required"),
            _ => {}
        }
        match &self.allowed {
            Some(a)
                if self.kind == CheckKind::ContentType
                    && (a.is_empty() || a.len() > 32 || a.iter().any(|t| t.is_empty() || t.len() > 255)) =>
            {
                return err("allowed is 1-32 content types of 1-255 characters")
            }
            Some(_) if self.kind == CheckKind::ContentType => {}
            Some(_) => return err("allowed applies to content_type only"),
            None if self.kind == CheckKind::ContentType => return err("allowed is required"),
            None => {}
        }
        if !external
            && (self.url.is_some()
                || self.timeout_ms.is_some()
                || self.on_timeout.is_some()
                || self.allow_private
                || self.secret.is_some())
        {
            return err("url, timeout_ms, on_timeout, allow_private and secret apply to external only");
        }
        if external {
            let Some(url) = &self.url else { return err("url is required") };
            if url.len() > 2048 || !(url.starts_with("http://") || url.starts_with("https://")) {
                return err("url is an http:// or https:// URL of at most 2048 characters");
            }
            match self.secret.as_deref() {
                None => return err("secret is required: a whsec_… Standard Webhooks secret the validator verifies"),
                Some(s) if !s.starts_with("whsec_") || s.len() < 30 || s.len() > 200 => {
                    return err("secret is whsec_ followed by at least 24 base64 characters")
                }
                _ => {}
            }
            if self.timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS) {
                return err(&format!("timeout_ms is between 1 and {MAX_TIMEOUT_MS}"));
            }
        }
        Ok(())
    }

    /// The check as shown: a secret is `********`.
    pub fn redacted(&self) -> Check {
        Check { secret: self.secret.as_ref().map(|_| REDACTED.to_owned()), ..self.clone() }
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    /// Not applicable to this candidate (no previous version, records not countable).
    Skipped,
}

/// One check's result, as stored with the version and shown in a 422's details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's place in the topic's list (0-based).
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: CheckKind,
    pub status: Status,
    pub on_fail: OnFail,
    pub message: String,
}

impl CheckResult {
    pub fn new(index: usize, check: &Check, status: Status, message: impl Into<String>) -> Self {
        let message: String = message.into().chars().take(MAX_MESSAGE_CHARS).collect();
        Self { index, kind: check.kind, status, on_fail: check.on_fail, message }
    }

    /// Failed with `on_fail: reject`.
    pub fn rejects(&self) -> bool {
        self.status == Status::Failed && self.on_fail == OnFail::Reject
    }

    /// Failed with `on_fail: warn`.
    pub fn warns(&self) -> bool {
        self.status == Status::Failed && self.on_fail == OnFail::Warn
    }
}

/// What the publisher is checked against: the candidate…
pub struct Candidate<'a> {
    pub content_type: &'a str,
    pub size: u64,
    /// The bytes, when held in memory (always for inline payloads).
    pub bytes: Option<&'a [u8]>,
}

/// …and the previous version (the topic's latest), if any.
pub struct Previous {
    pub version: u64,
    pub size: u64,
    /// Its record count, when countable.
    pub records: Option<u64>,
}

/// The record count of a payload: a JSON array's length, a JSON object's key count, or
/// (any other UTF-8 text) its non-blank lines. `None`: not countable (a JSON scalar, bytes
/// that are not UTF-8).
pub fn record_count(bytes: &[u8]) -> Option<u64> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return match v {
            serde_json::Value::Array(a) => Some(a.len() as u64),
            serde_json::Value::Object(o) => Some(o.len() as u64),
            _ => None,
        };
    }
    let text = std::str::from_utf8(bytes).ok()?;
    Some(text.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

/// `|new - old| / old` in percent; `None` when `old` is 0 (no base to compare against).
pub fn change_pct(old: u64, new: u64) -> Option<f64> {
    (old > 0).then(|| (new as f64 - old as f64).abs() / old as f64 * 100.0)
}

fn pct_text(p: f64) -> String {
    let r = (p * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}%")
    } else {
        format!("{r:.1}%")
    }
}

fn essence(ct: &str) -> String {
    ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The result of a local check (every kind but `external`, which is `None`).
pub fn evaluate(index: usize, check: &Check, c: &Candidate<'_>, prev: Option<&Previous>) -> Option<CheckResult> {
    let r = |status, message: String| Some(CheckResult::new(index, check, status, message));
    match check.kind {
        CheckKind::External => None,
        CheckKind::ContentType => {
            let allowed = check.allowed.as_deref().unwrap_or_default();
            let got = essence(c.content_type);
            if allowed.iter().any(|a| essence(a) == got) {
                r(Status::Passed, format!("content type {got} is allowed"))
            } else {
                r(Status::Failed, format!("content type {got} is not one of {}", allowed.join(", ")))
            }
        }
        CheckKind::SizeChangePct => {
            let max = check.max_pct.unwrap_or(0.0);
            let Some(p) = prev else { return r(Status::Skipped, "no previous version to compare with".into()) };
            match change_pct(p.size, c.size) {
                None => r(Status::Skipped, format!("previous version v{} was empty", p.version)),
                Some(pct) if pct > max => r(
                    Status::Failed,
                    format!(
                        "size changed by {} ({} → {} bytes) vs v{}; at most {} allowed",
                        pct_text(pct),
                        p.size,
                        c.size,
                        p.version,
                        pct_text(max)
                    ),
                ),
                Some(pct) => r(Status::Passed, format!("size changed by {} vs v{}", pct_text(pct), p.version)),
            }
        }
        CheckKind::RecordCountChangePct => {
            let max = check.max_pct.unwrap_or(0.0);
            let Some(p) = prev else { return r(Status::Skipped, "no previous version to compare with".into()) };
            let Some(old) = p.records else {
                return r(Status::Skipped, format!("the records of v{} are not countable", p.version));
            };
            let Some(new) = c.bytes.and_then(record_count) else {
                return r(Status::Skipped, "the candidate's records are not countable".into());
            };
            match change_pct(old, new) {
                None => r(Status::Skipped, format!("previous version v{} had no records", p.version)),
                Some(pct) if pct > max => r(
                    Status::Failed,
                    format!(
                        "record count varied by {} ({old} → {new}) vs v{}; at most {} allowed",
                        pct_text(pct),
                        p.version,
                        pct_text(max)
                    ),
                ),
                Some(pct) => r(Status::Passed, format!("record count varied by {} ({old} → {new})", pct_text(pct))),
            }
        }
        CheckKind::NotEmpty => {
            let empty = c.size == 0 || c.bytes.and_then(record_count) == Some(0);
            let prev_empty = prev.is_some_and(|p| p.size == 0 || p.records == Some(0));
            if empty && !prev_empty {
                r(Status::Failed, "the payload is empty and the previous version was not".into())
            } else if empty {
                r(Status::Passed, "empty, as the previous version was".into())
            } else {
                r(Status::Passed, "not empty".into())
            }
        }
    }
}

/// An external validator's outcome as a result: its answer, or what a timeout or an
/// unreachable validator counts as (a timeout follows `on_timeout`; a validator that is
/// down or answers nonsense fails the check).
pub enum ExternalOutcome {
    Answered { accept: bool, reason: String },
    TimedOut,
    Unreachable(String),
}

pub fn external_result(index: usize, check: &Check, outcome: ExternalOutcome) -> CheckResult {
    let (status, message) = match outcome {
        ExternalOutcome::Answered { accept: true, reason } => (Status::Passed, format!("accepted: {reason}")),
        ExternalOutcome::Answered { accept: false, reason } => (Status::Failed, format!("rejected: {reason}")),
        ExternalOutcome::TimedOut => match check.on_timeout.unwrap_or_default() {
            OnTimeout::Accept => {
                (Status::Passed, format!("no answer within {} ms; accepted (on_timeout)", check.timeout_ms()))
            }
            OnTimeout::Reject => {
                (Status::Failed, format!("no answer within {} ms; rejected (on_timeout)", check.timeout_ms()))
            }
        },
        ExternalOutcome::Unreachable(e) => (Status::Failed, format!("validator unreachable: {e}")),
    };
    CheckResult::new(index, check, status, message)
}

/// Whether the results reject the candidate, and a one-line summary of why.
pub fn rejection(results: &[CheckResult]) -> Option<String> {
    let failed = rejection_reasons(results);
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// Each rejecting result as `type: message`, in the topic's order.
pub fn rejection_reasons(results: &[CheckResult]) -> Vec<String> {
    results.iter().filter(|r| r.rejects()).map(|r| format!("{}: {}", r.kind.as_str(), r.message)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn check(json: serde_json::Value) -> Check {
        serde_json::from_value(json).expect("a check")
    }

    fn cand(bytes: &[u8]) -> Candidate<'_> {
        Candidate { content_type: "application/json", size: bytes.len() as u64, bytes: Some(bytes) }
    }

    #[test]
    fn record_counts_of_arrays_objects_and_lines() {
        assert_eq!(record_count(b"[1,2,3]"), Some(3));
        assert_eq!(record_count(br#"{"a":1,"b":2}"#), Some(2));
        assert_eq!(record_count(b"a\n\nb\n  \nc"), Some(3));
        assert_eq!(record_count(b"42"), None);
        assert_eq!(record_count(&[0xff, 0xfe]), None);
    }

    #[test]
    fn record_count_halving_fails_with_the_numbers() {
        let c = check(serde_json::json!({"type": "record_count_change_pct", "max_pct": 25}));
        let prev = Previous { version: 3, size: 10, records: Some(4) };
        let r = evaluate(0, &c, &cand(b"[1,2]"), Some(&prev)).expect("local");
        assert_eq!(r.status, Status::Failed);
        assert!(r.rejects());
        assert_eq!(r.message, "record count varied by 50% (4 → 2) vs v3; at most 25% allowed");
        let ok = evaluate(0, &c, &cand(b"[1,2,3,4,5]"), Some(&prev)).expect("local");
        assert_eq!(ok.status, Status::Passed, "{}", ok.message);
        let first = evaluate(0, &c, &cand(b"[1]"), None).expect("local");
        assert_eq!(first.status, Status::Skipped);
    }

    #[test]
    fn size_change_and_warn() {
        let c = check(serde_json::json!({"type": "size_change_pct", "max_pct": 10, "on_fail": "warn"}));
        let prev = Previous { version: 1, size: 100, records: None };
        let big = vec![b'x'; 150];
        let r = evaluate(2, &c, &cand(&big), Some(&prev)).expect("local");
        assert!(r.warns() && !r.rejects());
        assert_eq!(r.index, 2);
        assert!(rejection(&[r]).is_none(), "a warning does not reject");
    }

    #[test]
    fn not_empty_and_content_type() {
        let c = check(serde_json::json!({"type": "not_empty"}));
        let prev = Previous { version: 1, size: 5, records: Some(2) };
        assert_eq!(evaluate(0, &c, &cand(b"[]"), Some(&prev)).unwrap().status, Status::Failed);
        assert_eq!(evaluate(0, &c, &cand(b""), None).unwrap().status, Status::Failed);
        let empty_prev = Previous { version: 1, size: 0, records: None };
        assert_eq!(evaluate(0, &c, &cand(b""), Some(&empty_prev)).unwrap().status, Status::Passed);
        let ct = check(serde_json::json!({"type": "content_type", "allowed": ["application/json"]}));
        let text = Candidate { content_type: "text/plain; charset=utf-8", size: 1, bytes: Some(b"x") };
        let r = evaluate(0, &ct, &text, None).unwrap();
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.message, "content type text/plain is not one of application/json");
        let json = Candidate { content_type: "Application/JSON; charset=utf-8", size: 1, bytes: None };
        assert_eq!(evaluate(0, &ct, &json, None).unwrap().status, Status::Passed);
    }

    #[test]
    fn external_outcomes_follow_the_timeout_policy() {
        let mut c = check(
            serde_json::json!({"type": "external", "url": "https://v.example/x", "timeout_ms": 100, "secret": SECRET}),
        );
        assert!(external_result(0, &c, ExternalOutcome::TimedOut).rejects());
        c.on_timeout = Some(OnTimeout::Accept);
        assert_eq!(external_result(0, &c, ExternalOutcome::TimedOut).status, Status::Passed);
        assert!(external_result(0, &c, ExternalOutcome::Unreachable("refused".into())).rejects());
        let no = external_result(0, &c, ExternalOutcome::Answered { accept: false, reason: "bad rows".into() });
        assert_eq!(no.message, "rejected: bad rows");
        assert_eq!(rejection(&[no]).as_deref(), Some("external: rejected: bad rows"));
    }

    #[test]
    fn configurations_are_checked() {
        let bad = [
            serde_json::json!({"type": "size_change_pct"}),
            serde_json::json!({"type": "size_change_pct", "max_pct": -1}),
            serde_json::json!({"type": "not_empty", "max_pct": 3}),
            serde_json::json!({"type": "content_type"}),
            serde_json::json!({"type": "external"}),
            serde_json::json!({"type": "external", "url": "ftp://x"}),
            serde_json::json!({"type": "external", "url": "http://x", "timeout_ms": 0, "secret": SECRET}),
            serde_json::json!({"type": "external", "url": "http://x"}),
            serde_json::json!({"type": "external", "url": "http://x", "secret": "short"}),
            serde_json::json!({"type": "not_empty", "url": "http://x"}),
        ];
        for b in bad {
            let c = check(b.clone());
            assert!(Check::validate_all(&[c]).is_err(), "{b}");
        }
        assert!(serde_json::from_value::<Check>(serde_json::json!({"type": "nope"})).is_err());
        assert!(serde_json::from_value::<Check>(serde_json::json!({"type": "not_empty", "x": 1})).is_err());
        let ok = check(
            serde_json::json!({"type": "external", "url": "https://v.example", "on_timeout": "accept", "secret": SECRET}),
        );
        assert!(Check::validate_all(&[ok]).is_ok());
        assert!(Check::validate_all(&vec![check(serde_json::json!({"type": "not_empty"})); 17]).is_err());
    }
}
