//! The OpenFeature Remote Evaluation Protocol (OFREP) on top of topics: a topic bound to a
//! flag key (its `ofrep` setting) is evaluated as a flag. The evaluation context's
//! attributes are the consumer's labels and its `targetingKey` the instance, so the
//! ordinary resolution rule (scopes, pins, rollouts) decides the version; the flag's value
//! is that version's JSON payload (or one top-level field of it), its variant the version.
//! Answered from memory, like polls, and recorded in the consumer audit like a poll.
use crate::audit::{Reporter, Seen};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::serving::ServingTopic;
use imprint_domain::Labels;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest payload evaluated as a flag: bigger ones are refused (read them with
/// imprint-agent or the poll API instead). Flags are small; this keeps every answer small.
pub const MAX_FLAG_PAYLOAD_BYTES: u64 = 64 * 1024;
/// A bulk evaluation answers at most this many flags (the first by flag key).
pub const MAX_BULK_FLAGS: usize = 1000;
/// A bulk evaluation's values add up to at most this many payload bytes; flags past it are
/// answered with an error that says to evaluate them one at a time.
pub const MAX_BULK_PAYLOAD_BYTES: u64 = 4 * 1024 * 1024;

/// Who is evaluating: the evaluation context, read as a consumer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfrepContext {
    /// `targetingKey`: the consumer instance (the audit records evaluations under it).
    pub instance: Option<String>,
    /// The other attributes: the consumer's labels (strings, numbers and booleans).
    pub labels: Labels,
}

impl OfrepContext {
    /// Reads a request's `context` (absent: no targeting key, no labels). Attributes are
    /// labels under the label rules (keys, values, at most 32 pairs and 4096 bytes);
    /// numbers and booleans count as their text. Err: why the context is invalid.
    pub fn parse(context: Option<&Value>) -> std::result::Result<Self, String> {
        let map = match context {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Object(m)) => m,
            Some(_) => return Err("context must be a JSON object".into()),
        };
        let mut instance = None;
        let mut pairs = BTreeMap::new();
        for (k, v) in map {
            if k == "targetingKey" {
                let Value::String(t) = v else { return Err("targetingKey must be a string".into()) };
                if t.is_empty() || t.len() > 256 || t.chars().any(char::is_control) {
                    return Err("targetingKey must be 1-256 characters without control characters".into());
                }
                instance = Some(t.clone());
                continue;
            }
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "context attribute {:?} must be a string, number or boolean (attributes are consumer labels)",
                        k.chars().take(100).collect::<String>()
                    ))
                }
            };
            pairs.insert(k.clone(), text);
        }
        let labels = Labels::from_pairs(pairs).map_err(|e| format!("context attributes are consumer labels: {e}"))?;
        Ok(Self { instance, labels })
    }
}

/// Why a flag was resolved to its value (OpenFeature's resolution reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfrepReason {
    /// The release (or pin) for every consumer decided it.
    Static,
    /// A scope (or pin) whose selector matched the context's labels decided it.
    TargetingMatch,
    /// Nothing is released to these labels: the provider uses the code's default.
    Disabled,
}

impl OfrepReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfrepReason::Static => "STATIC",
            OfrepReason::TargetingMatch => "TARGETING_MATCH",
            OfrepReason::Disabled => "DISABLED",
        }
    }
}

/// OFREP's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfrepErrorCode {
    FlagNotFound,
    ParseError,
    InvalidContext,
    General,
}

impl OfrepErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OfrepErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            OfrepErrorCode::ParseError => "PARSE_ERROR",
            OfrepErrorCode::InvalidContext => "INVALID_CONTEXT",
            OfrepErrorCode::General => "GENERAL",
        }
    }
}

/// One flag evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct OfrepEvaluation {
    pub key: String,
    /// None: nothing is released to these labels (reason `DISABLED`).
    pub value: Option<Value>,
    pub reason: OfrepReason,
    /// The resolved version (None: nothing resolved).
    pub version: Option<u64>,
    pub pinned: bool,
    pub topic: String,
}

impl OfrepEvaluation {
    /// `v<n>`, or `none` when nothing is released to these labels.
    pub fn variant(&self) -> String {
        self.version.map_or_else(|| "none".to_owned(), |v| format!("v{v}"))
    }
}

/// A flag that could not be evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfrepFailure {
    pub key: String,
    pub code: OfrepErrorCode,
    pub details: String,
}

pub type OfrepResult = std::result::Result<OfrepEvaluation, OfrepFailure>;

fn not_found(key: &str) -> OfrepFailure {
    OfrepFailure {
        key: key.to_owned(),
        code: OfrepErrorCode::FlagNotFound,
        details: format!("flag {:?} was not found", key.chars().take(200).collect::<String>()),
    }
}

impl Imprint {
    /// Evaluates flag `key` for this context. Err: the caller may not evaluate at all (a
    /// token is required, or a consumer token's bound labels are not claimed). A flag the
    /// caller may not read is not found, exactly like one that does not exist.
    pub async fn ofrep_evaluate(
        &self,
        caller: &Caller,
        client: Option<std::net::IpAddr>,
        ctx: &OfrepContext,
        key: &str,
    ) -> Result<OfrepResult> {
        self.require_poller(caller, ctx.labels.pairs())?;
        let Some(t) = self.state().ofrep_topic(key).filter(|t| readable(caller, t)) else {
            return Ok(Err(not_found(key)));
        };
        let (result, seen) = self.evaluate_flag(&t, key, ctx, u64::MAX).await;
        self.count_plaintext_flag(caller, &t, &result);
        self.record_ofrep(caller, client, ctx, seen.into_iter().collect());
        Ok(result)
    }

    /// Evaluates every flag the caller may read (by flag key, at most `MAX_BULK_FLAGS`).
    pub async fn ofrep_evaluate_all(
        &self,
        caller: &Caller,
        client: Option<std::net::IpAddr>,
        ctx: &OfrepContext,
    ) -> Result<Vec<OfrepResult>> {
        self.require_poller(caller, ctx.labels.pairs())?;
        let mut budget = MAX_BULK_PAYLOAD_BYTES;
        let mut out = Vec::new();
        let mut seen_all = Vec::new();
        for t in self.state().ofrep_topics().into_iter().filter(|t| readable(caller, t)).take(MAX_BULK_FLAGS) {
            let Some(key) = t.ofrep.as_ref().map(|o| o.flag_key.clone()) else { continue };
            let (result, seen) = self.evaluate_flag(&t, &key, ctx, budget).await;
            self.count_plaintext_flag(caller, &t, &result);
            if let Ok(OfrepEvaluation { version: Some(v), .. }) = &result {
                budget = budget.saturating_sub(t.served.get(v).map_or(0, |s| s.size));
            }
            seen_all.extend(seen);
            out.push(result);
        }
        self.record_ofrep(caller, client, ctx, seen_all);
        Ok(out)
    }

    /// At rest: a flag value taken from a sealed version is a plaintext read by the
    /// caller (docs/encryption.md), counted like a poll's.
    fn count_plaintext_flag(&self, caller: &Caller, t: &ServingTopic, result: &OfrepResult) {
        if let Ok(OfrepEvaluation { value: Some(_), version: Some(v), .. }) = result {
            if t.served.get(v).is_some_and(|s| s.sealed) {
                self.plaintext_reads().record(t.id, *v, caller, self.now());
            }
        }
    }

    /// May this caller follow flag changes (the event stream)? The same rule as polls,
    /// without labels: a consumer token bound to labels is checked when it evaluates.
    pub fn ofrep_require_follower(&self, caller: &Caller) -> Result<()> {
        self.require_poller(caller, &BTreeMap::new()).or_else(|e| match (e, caller) {
            (Error::Forbidden(_), Caller::Consumer { .. }) => Ok(()),
            (e, _) => Err(e),
        })
    }

    /// Whether any of these changed topics is a flag this caller may read.
    pub fn ofrep_flags_among(&self, caller: &Caller, changed: &[String]) -> bool {
        changed.iter().any(|n| self.state().get(n).is_some_and(|t| t.ofrep.is_some() && readable(caller, &t)))
    }

    /// Notes evaluations in the consumer audit (instance: the targeting key), like a poll;
    /// an evaluation without a targeting key is not recorded.
    fn record_ofrep(&self, caller: &Caller, client: Option<std::net::IpAddr>, ctx: &OfrepContext, seen: Vec<Seen>) {
        let Some(instance) = ctx.instance.as_deref() else { return };
        if !self.config().audit_enabled || seen.is_empty() {
            return;
        }
        let principal = caller.principal();
        let who = Reporter {
            instance,
            labels: ctx.labels.pairs(),
            principal: principal.as_deref(),
            relayed_by: None,
            at: self.now(),
        };
        self.audit().record_from(&who, client, seen);
    }
}

fn readable(caller: &Caller, t: &ServingTopic) -> bool {
    caller.require_read(t.name.as_str(), &t.owner, t.restricted).is_ok()
}

impl Imprint {
    /// One flag for this context, and what the audit records of it. `budget`: the payload
    /// bytes a bulk answer still has room for.
    async fn evaluate_flag(
        &self,
        t: &Arc<ServingTopic>,
        key: &str,
        ctx: &OfrepContext,
        budget: u64,
    ) -> (OfrepResult, Option<Seen>) {
        let fail = |code, details: String| OfrepFailure { key: key.to_owned(), code, details };
        let Some((r, selector)) = t.index.resolve_matched(&ctx.labels) else {
            let seen = Seen { topic_id: t.id, version: None, expected: None, applied: None, published_at: None };
            let e = OfrepEvaluation {
                key: key.to_owned(),
                value: None,
                reason: OfrepReason::Disabled,
                version: None,
                pinned: false,
                topic: t.name.to_string(),
            };
            return (Ok(e), Some(seen));
        };
        let reason = if selector.is_all() { OfrepReason::Static } else { OfrepReason::TargetingMatch };
        let served = t.served.get(&r.version);
        let seen = Seen {
            topic_id: t.id,
            version: Some(r.version),
            expected: Some(r.version),
            applied: None,
            published_at: served.map(|v| v.created_at),
        };
        let Some(served) = served else {
            return (
                Err(fail(OfrepErrorCode::General, format!("version {} is not loaded yet; try again", r.version))),
                None,
            );
        };
        let too_big = |limit: u64| {
            format!(
                "version {} of topic {} is {} bytes, over the {limit} bytes evaluated as an OpenFeature flag: \
             read it with imprint-agent (or the poll API) instead",
                r.version, t.name, served.size
            )
        };
        if served.size > MAX_FLAG_PAYLOAD_BYTES {
            return (Err(fail(OfrepErrorCode::General, too_big(MAX_FLAG_PAYLOAD_BYTES))), Some(seen));
        }
        if served.size > budget {
            let details = format!(
            "the bulk answer has room for {MAX_BULK_PAYLOAD_BYTES} payload bytes in all: evaluate flag {key:?} on its own"
        );
            return (Err(fail(OfrepErrorCode::General, details)), Some(seen));
        }
        // Small payloads are in memory; one in the object store is read from there.
        let payload = match served.payload.clone() {
            Some(p) => p,
            None => match Error::known_version(r.version) {
                Ok(n) => match self.version_data(&Caller::System, &t.name, n).await {
                    Ok((p, _, _)) => p,
                    Err(e) => {
                        let details = format!("the payload of version {} of topic {}: {e}", r.version, t.name);
                        return (Err(fail(OfrepErrorCode::General, details)), Some(seen));
                    }
                },
                Err(e) => return (Err(fail(OfrepErrorCode::General, e.to_string())), Some(seen)),
            },
        };
        let value: Value = match serde_json::from_slice(&payload) {
            Ok(v) => v,
            Err(e) => {
                let details = format!(
                    "version {} of topic {} is not JSON ({e}): an OpenFeature flag's value is JSON; \
                 read other payloads with imprint-agent",
                    r.version, t.name
                );
                return (Err(fail(OfrepErrorCode::ParseError, details)), Some(seen));
            }
        };
        let value = match t.ofrep.as_ref().and_then(|o| o.field.as_deref()) {
            None => value,
            Some(field) => match value {
                Value::Object(mut m) if m.contains_key(field) => m.remove(field).unwrap_or_default(),
                _ => {
                    let details = format!(
                        "version {} of topic {} has no top-level field {field:?} (the flag's value)",
                        r.version, t.name
                    );
                    return (Err(fail(OfrepErrorCode::ParseError, details)), Some(seen));
                }
            },
        };
        let e = OfrepEvaluation {
            key: key.to_owned(),
            value: Some(value),
            reason,
            version: Some(r.version),
            pinned: r.pinned,
            topic: t.name.to_string(),
        };
        (Ok(e), Some(seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contexts_read_as_consumers() {
        let c = OfrepContext::parse(Some(&json!({"targetingKey": "node-1", "region": "eu", "tier": 2, "beta": true})))
            .expect("valid");
        assert_eq!(c.instance.as_deref(), Some("node-1"));
        assert_eq!(c.labels.get("region"), Some("eu"));
        assert_eq!(c.labels.get("tier"), Some("2"));
        assert_eq!(c.labels.get("beta"), Some("true"));
        assert_eq!(OfrepContext::parse(None).expect("none"), OfrepContext::default());
        for bad in [
            json!({"targetingKey": 3}),
            json!({"targetingKey": ""}),
            json!({"nested": {"a": 1}}),
            json!({"list": [1]}),
            json!({"bad key!": "x"}),
            json!([1, 2]),
        ] {
            assert!(OfrepContext::parse(Some(&bad)).is_err(), "{bad}");
        }
        let many: serde_json::Map<String, Value> = (0..40).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(OfrepContext::parse(Some(&Value::Object(many))).is_err());
    }
}
