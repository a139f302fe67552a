//! The release gate (docs/change-control.md): under a topic's row lock, before a release is
//! written, a change freeze in force refuses it (423) and a review rule refuses a release that
//! is not an approved change request being applied (409), unless an admin breaks glass with a
//! reason. Once the release is written, `finish` moves its change request from `approved` to
//! `applied` in the same transaction (so it is applied exactly once) and audits a break glass.
//!
//! It takes primitives only (the topic's row, the caller, the transaction) and knows no
//! feature module, so publish (`versions`), scope adds (`version_reads`), rollout starts
//! (`rollouts`) and pins (`pins`) all call it without an import circle; `change_control`
//! builds the change requests on top.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store;
use crate::store::change_control as st;
use chrono::{DateTime, Utc};
use imprint_domain::freeze::Schedule;
use serde_json::{json, Value};
use sqlx::PgConnection;

/// What a gated change carries besides itself: the change request it applies, an admin's
/// break-glass reason.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    pub request: Option<i64>,
    pub break_glass: Option<String>,
}

/// Which holds apply to a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holds {
    /// A release (publish, scope add, rollout start): freezes and review rules hold it.
    FreezeAndReview,
    /// A pin: review rules hold it, freezes do not (pins are how incidents are mitigated).
    ReviewOnly,
    /// Not a release (a publish to nobody, an unpin): nothing holds it.
    Nothing,
}

/// A stored freeze window's schedule.
pub(crate) fn schedule_of(r: &st::FreezeRow) -> Result<Schedule> {
    match (&r.starts_at, &r.ends_at, &r.days) {
        (Some(from), Some(to), _) => Ok(Schedule::once(*from, *to).map_err(|e| Error::Internal(e.to_string()))?),
        (_, _, Some(days)) => Schedule::recurring(
            days,
            r.local_from.as_deref().unwrap_or_default(),
            r.local_to.as_deref().unwrap_or_default(),
            r.tz.as_deref().unwrap_or_default(),
        )
        .map_err(|e| Error::Internal(format!("stored freeze {}: {e}", r.id))),
        _ => Err(Error::Internal(format!("stored freeze {} has no schedule", r.id))),
    }
}

/// A break-glass (or rejection) reason: trimmed, 1 to 1000 characters.
pub(crate) fn check_reason(reason: &str, what: &str) -> Result<String> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(Error::invalid(format!("{what} needs a reason")));
    }
    if r.chars().count() > 1000 {
        return Err(Error::invalid(format!("a {what} reason has at most 1000 characters")));
    }
    Ok(r.to_owned())
}

/// A break glass asked for by `caller`: its checked reason (admins only).
pub(crate) fn break_glass_reason(caller: &Caller, reason: Option<&str>) -> Result<Option<String>> {
    let Some(reason) = reason else { return Ok(None) };
    let reason = check_reason(reason, "a break glass")?;
    if !caller.is_admin() {
        return Err(Error::Forbidden("only admins may break glass".into()));
    }
    Ok(Some(reason))
}

/// Under the topic's lock (`topic_id`, `topic`, `owner` from its locked row), before the
/// change `what` ("releases", "scope adds", …) is written: refuses it inside an active
/// freeze window (423) and, on a reviewed topic, unless it applies an approved request
/// (409) — an admin's break glass passes both.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn check(
    conn: &mut PgConnection,
    topic_id: i64,
    topic: &str,
    owner: &str,
    caller: &Caller,
    gate: &Gate,
    holds: Holds,
    now: DateTime<Utc>,
) -> Result<()> {
    if holds == Holds::Nothing {
        return Ok(());
    }
    if gate.break_glass.is_some() {
        if !caller.is_admin() {
            return Err(Error::Forbidden("only admins may break glass".into()));
        }
        return Ok(());
    }
    if holds == Holds::FreezeAndReview {
        for f in st::freezes(&mut *conn, Some((topic_id, owner))).await? {
            let s = schedule_of(&f)?;
            if s.active_at(now) {
                return Err(Error::ChangeFrozen(format!(
                    "releases of topic {topic:?} are frozen by change freeze {:?} (id {}, {}); an admin may break glass with a reason",
                    f.name,
                    f.id,
                    s.describe()
                )));
            }
        }
    }
    if gate.request.is_none() {
        if let Some(r) = st::review(&mut *conn, topic_id).await? {
            return Err(Error::ReviewRequired(format!(
                "topic {topic:?} requires {} approval(s) for releases: this change becomes a change request through the API (or an admin breaks glass)",
                r.required_approvals
            )));
        }
    }
    Ok(())
}

/// In the change's transaction, once it is written: applies its request (exactly once:
/// only an `approved` one moves to `applied`, recording `version`) and audits a break glass
/// (`change.break_glass`, with `details`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish(
    conn: &mut PgConnection,
    topic: &str,
    gate: &Gate,
    kind: &str,
    version: Option<i64>,
    who: &str,
    now: DateTime<Utc>,
    details: Value,
) -> Result<()> {
    if let Some(r) = gate.request {
        if !st::transition(&mut *conn, r, &["approved"], "applied", now, None, version).await? {
            return Err(Error::Conflict(format!("change request {r} was applied or closed meanwhile")));
        }
        let mut d = json!({"request": r, "kind": kind, "version": version});
        merge(&mut d, &details);
        store::audit(&mut *conn, now, who, "change.apply", Some(topic), d).await?;
    }
    if let Some(reason) = &gate.break_glass {
        let mut d = json!({"reason": reason, "kind": kind, "version": version});
        merge(&mut d, &details);
        store::audit(&mut *conn, now, who, "change.break_glass", Some(topic), d).await?;
    }
    Ok(())
}

fn merge(into: &mut Value, from: &Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            a.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}
