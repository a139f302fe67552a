//! Change control (docs/change-control.md): drafts, four-eyes review of releases, scheduled
//! changes and change freezes. A draft is a payload stored, checksummed and validated like a
//! version but released to nobody; releasing it is a publish (`versions::publish_with`) whose
//! transaction also closes the draft and, for a change request, moves the request to
//! `applied` — so an approved change is applied exactly once, atomically, as its author.
//! The freeze and review gates sit in that same transaction, under the topic's lock
//! (`release_gate::check`), so every publishing path (API, console, gRPC) honours them; scope
//! adds, rollout starts and pins call the same gate in their own transactions, and become
//! change requests of kinds `scope`, `rollout` and `pin` here (`unpin` only when scheduled).
//!
//! Freezes do not hold pins and unpins: they are how incidents are mitigated (rolling a fleet
//! back to a known version). A review rule holds a pin, but an admin's break glass pins now.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{Pin, PlanChoice, Published, RolloutInfo, RolloutRequest, Scope};
use crate::pins::PinInput;
use crate::release_gate::{break_glass_reason, check_reason, schedule_of, Gate};
use crate::store;
use crate::store::change_control as st;
use crate::validation::Validation;
use crate::versions::{Control, Payload, PublishInput};
use bytes::Bytes;
use chrono::{DateTime, NaiveTime, Utc};
use imprint_domain::freeze::Schedule;
use imprint_domain::{DiffLine, Selector, TopicName, VersionNumber};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// How far ahead a change may be scheduled.
pub const MAX_SCHEDULE_DAYS: i64 = 366;
/// Lines per side a draft's diff compares (beyond: no line diff, only the checksums).
const MAX_DIFF_LINES: usize = 20_000;
/// At most this many freeze windows exist.
const MAX_FREEZES: usize = 1000;

/// A draft: a payload not released yet.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Draft {
    pub id: i64,
    pub topic: String,
    /// `open`, `released` (then `released_version` is set) or `discarded`.
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub message: String,
    pub metadata: BTreeMap<String, String>,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub released_version: Option<u64>,
}

/// A draft's payload, as a new draft or a replacement.
pub struct DraftInput {
    pub payload: Bytes,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub message: String,
    pub sha256: Option<String>,
}

/// One line of a diff: `op` is `same`, `added` or `removed`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DiffEntry {
    pub op: &'static str,
    pub line: String,
}

/// A draft compared with what one scope's consumers get now.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ScopeDiff {
    /// The scope (`{}`: everyone), as labels resolved.
    #[schema(value_type = Object)]
    pub selector: Value,
    /// The version these labels resolve to now (none: nothing released to them yet).
    pub live_version: Option<u64>,
    pub live_sha256: Option<String>,
    /// The draft's payload is byte for byte the live one.
    pub identical: bool,
    /// The line diff live → draft (JSON pretty-printed with sorted keys); absent for
    /// binary payloads, payloads in the object store, or ones too large to diff.
    pub lines: Option<Vec<DiffEntry>>,
    pub note: Option<String>,
}

/// Who approves a topic's releases: the members (users and tokens) of one team, or named users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
}

/// A topic's review rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRule {
    /// 1 to 10 distinct approvers other than the author.
    pub required_approvals: u32,
    pub approvers: Approvers,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Approval {
    pub approver: String,
    pub approved_at: DateTime<Utc>,
}

/// A change waiting for approvals or its time, or what became of it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChangeRequest {
    pub id: i64,
    pub topic: String,
    /// `release`: the draft's payload released to `scopes` (with `rollout`); `scope`: `scopes`
    /// added to `version`; `rollout`: a rollout of `version` with `rollout`'s plan; `pin`:
    /// `selector` pinned to `version`; `unpin`: `selector`'s pin removed (only scheduled).
    pub kind: String,
    /// What the change is, in words ("add scope region=eu to v4", "pin region=eu to v3").
    pub summary: String,
    /// The version a `scope`, `rollout` or `pin` request is about (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The selector of a `pin` or `unpin` request (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub selector: Option<Value>,
    /// `pending` (approvals missing), `approved` (waits for `at`, if given), `applied`,
    /// `rejected`, `withdrawn`, `expired` (`at` came before the approvals), `failed`.
    pub state: String,
    pub draft_id: Option<i64>,
    /// The release's scopes (`null`: the publish default).
    #[schema(value_type = Option<Vec<Object>>)]
    pub scopes: Option<Value>,
    #[schema(value_type = Object)]
    pub rollout: Value,
    pub author: String,
    pub message: String,
    pub required_approvals: u32,
    pub approvals: Vec<Approval>,
    /// Applied by the scheduler at this time (once approved).
    pub at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why it was rejected, expired or failed.
    pub reason: Option<String>,
    pub applied_version: Option<u64>,
    /// The draft's checksum and size (the checks passed when it was saved: drafts are
    /// validated like versions).
    pub draft_sha256: Option<String>,
    pub draft_size: Option<u64>,
}

/// What a release (or a publish) came to.
pub enum Released {
    /// Released now: a version.
    Published(Published),
    /// Became a change request (review, or `at`).
    Requested(ChangeRequest),
    /// Saved as a draft.
    Draft(Draft),
}

/// A release of a draft.
pub struct ReleaseInput {
    pub scopes: Option<Vec<Selector>>,
    pub rollout: RolloutRequest,
    pub message: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub break_glass: Option<String>,
}

/// Release options of a publish (beside `PublishInput`).
#[derive(Default)]
pub struct PublishControl {
    pub draft: bool,
    pub at: Option<DateTime<Utc>>,
    pub break_glass: Option<String>,
}

/// What a scope add, rollout start, pin or unpin came to.
pub enum Changed<T> {
    /// Done now.
    Done(T),
    /// Became a change request (the topic requires review, or `at`).
    Requested(Box<ChangeRequest>),
}

/// Change-control options of a scope add, rollout start, pin or unpin.
#[derive(Clone, Debug, Default)]
pub struct ChangeOptions {
    /// Apply it then (a change request the scheduler applies).
    pub at: Option<DateTime<Utc>>,
    /// An admin's reason to do it now past a review rule and a freeze.
    pub break_glass: Option<String>,
}

/// A change request's change in words.
fn summary_of(kind: &str, draft: Option<i64>, change: &Value) -> String {
    let sel = |v: Option<&Value>| {
        v.and_then(|v| Selector::from_json(v).ok()).map_or_else(|| "?".to_owned(), |s| s.to_string())
    };
    let version = change.get("version").and_then(Value::as_u64).unwrap_or_default();
    let scopes = || match change.get("scopes") {
        Some(Value::Array(items)) if items.is_empty() => "nobody".to_owned(),
        Some(Value::Array(items)) => items.iter().map(|v| sel(Some(v))).collect::<Vec<_>>().join(", "),
        _ => "*".to_owned(),
    };
    match kind {
        "scope" => format!("add scope {} to v{version}", scopes()),
        "rollout" => match change.pointer("/rollout/name").and_then(Value::as_str) {
            Some(plan) => format!("start rollout of v{version} (plan {plan})"),
            None => format!("start rollout of v{version}"),
        },
        "pin" => format!("pin {} to v{version}", sel(change.get("selector"))),
        "unpin" => format!("unpin {}", sel(change.get("selector"))),
        _ => format!("release draft #{} to {}", draft.unwrap_or_default(), scopes()),
    }
}

/// A change-freeze window.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Freeze {
    pub id: i64,
    pub name: String,
    /// `global`, `team` or `topic`.
    pub scope: String,
    pub team: Option<String>,
    pub topic: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub recurring: Option<RecurringWindow>,
    /// In force now.
    pub active: bool,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecurringWindow {
    /// `mon` … `sun`: the days the window starts on.
    pub days: Vec<String>,
    /// Local `HH:MM`.
    pub from: String,
    /// Local `HH:MM`; not after `from`: the window runs overnight.
    pub to: String,
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub tz: String,
}

/// A new freeze window.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFreeze {
    pub name: String,
    /// Only this team's topics (else global, or `topic`).
    #[serde(default)]
    pub team: Option<String>,
    /// Only this topic.
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub to: Option<DateTime<Utc>>,
    #[serde(default)]
    pub recurring: Option<RecurringWindow>,
}

fn draft_of(topic: &str, r: st::DraftRow) -> Draft {
    Draft {
        id: r.id,
        topic: topic.to_owned(),
        state: r.state,
        created_at: r.created_at,
        created_by: r.created_by,
        updated_at: r.updated_at,
        message: r.message,
        metadata: r.metadata.0,
        content_type: r.content_type,
        size: r.size as u64,
        sha256: r.sha256,
        released_version: r.released_version.map(|v| v as u64),
    }
}

fn freeze_of(r: st::FreezeRow, now: DateTime<Utc>) -> Result<Freeze> {
    let s = schedule_of(&r)?;
    let scope = match (&r.team, &r.topic) {
        (Some(_), _) => "team",
        (_, Some(_)) => "topic",
        _ => "global",
    };
    let recurring = match (&r.days, &r.local_from, &r.local_to, &r.tz) {
        (Some(days), Some(from), Some(to), Some(tz)) => {
            Some(RecurringWindow { days: days.clone(), from: from.clone(), to: to.clone(), tz: tz.clone() })
        }
        _ => None,
    };
    Ok(Freeze {
        id: r.id,
        name: r.name,
        scope: scope.into(),
        team: r.team,
        topic: r.topic,
        from: r.starts_at,
        to: r.ends_at,
        recurring,
        active: s.active_at(now),
        description: s.describe(),
        created_at: r.created_at,
        created_by: r.created_by,
    })
}

/// The author of a change request as the caller its change is applied as: recorded as
/// the author (`created_by`), with the rights the author had on the topic when asking.
fn acting_as(author: &str, admin: bool, owner: &str) -> Caller {
    match author.split_once(':') {
        Some(("user", name)) => Caller::User { id: 0, name: name.to_owned(), admin, teams: vec![owner.to_owned()] },
        Some(("token", name)) => Caller::Token { name: name.to_owned(), admin, team: Some(owner.to_owned()) },
        _ => Caller::System,
    }
}

fn may_approve(rule: &st::ReviewRow, caller: &Caller) -> bool {
    match (&rule.approver_team, caller) {
        (Some(team), Caller::User { teams, .. }) => teams.contains(team),
        (Some(team), Caller::Token { team: Some(t), .. }) => t == team,
        (None, Caller::User { name, .. }) => rule.approver_users.contains(name),
        _ => false,
    }
}

fn rollout_json(r: &RolloutRequest) -> Value {
    match r {
        RolloutRequest::TopicDefault => json!({"kind": "default"}),
        RolloutRequest::None => json!({"kind": "none"}),
        RolloutRequest::Plan(PlanChoice::Named(n)) => json!({"kind": "named", "name": n}),
        RolloutRequest::Plan(PlanChoice::Inline(p)) => json!({"kind": "plan", "plan": p}),
    }
}

fn rollout_of(v: &Value) -> Result<RolloutRequest> {
    Ok(match v.get("kind").and_then(Value::as_str) {
        Some("none") => RolloutRequest::None,
        Some("named") => RolloutRequest::Plan(PlanChoice::Named(
            v.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
        )),
        Some("plan") => RolloutRequest::Plan(PlanChoice::Inline(
            serde_json::from_value(v.get("plan").cloned().unwrap_or_default())
                .map_err(|e| Error::Internal(format!("stored plan: {e}")))?,
        )),
        _ => RolloutRequest::TopicDefault,
    })
}

fn is_release(scopes: &Option<Vec<Selector>>, rollout: &RolloutRequest, default_plan: bool) -> bool {
    match (scopes, rollout) {
        (Some(s), RolloutRequest::None) => !s.is_empty(),
        (Some(s), RolloutRequest::TopicDefault) => !s.is_empty() || default_plan,
        _ => true,
    }
}

fn check_at(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<()> {
    if let Some(at) = at {
        if at <= now {
            return Err(Error::invalid("at must be in the future"));
        }
        if at > now + chrono::Duration::days(MAX_SCHEDULE_DAYS) {
            return Err(Error::invalid(format!("at is at most {MAX_SCHEDULE_DAYS} days ahead")));
        }
    }
    Ok(())
}

impl Imprint {
    // ---- drafts ----

    /// Checks and stores a draft's payload (inline: at most the topic's inline limit).
    async fn checked_draft(&self, t: &store::topics::TopicRef, input: &DraftInput) -> Result<(String, String)> {
        crate::versions::check_metadata(&input.metadata)?;
        if input.message.chars().count() > 4096 {
            return Err(Error::invalid("message has at most 4096 characters"));
        }
        if let Some(ct) = &input.content_type {
            crate::topics::check_content_type(ct)?;
        }
        let size = input.payload.len() as u64;
        let limit = (t.inline_limit as u64).min(t.max_size as u64);
        if size > limit {
            return Err(Error::PayloadTooLarge { size, limit });
        }
        let sha256 = hex::encode(Sha256::digest(&input.payload));
        let expected = input.sha256.as_deref().map(crate::versions::check_sha256).transpose()?;
        crate::versions::verify_sha256(expected.as_deref(), &sha256)?;
        if let Some(rules) = Validation::of(t)? {
            let bytes = input.payload.clone();
            tokio::task::spawn_blocking(move || rules.validate(&bytes))
                .await
                .map_err(|e| Error::Internal(format!("validation did not finish: {e}")))??;
        }
        let default_ct = if serde_json::from_slice::<serde::de::IgnoredAny>(&input.payload).is_ok() {
            "application/json"
        } else if std::str::from_utf8(&input.payload).is_ok() {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        let ct = input.content_type.clone().or(t.content_type.clone()).unwrap_or_else(|| default_ct.to_owned());
        Ok((sha256, ct))
    }

    /// A writable topic (publishers of its team, admins): drafts are never shown to readers.
    async fn writable_topic(&self, caller: &Caller, topic: &TopicName) -> Result<store::topics::TopicRef> {
        let mut conn = self.pool().acquire().await?;
        let t = store::topics::require(&mut conn, topic, false).await?;
        caller.require_write(&t.name, &t.owner)?;
        Ok(t)
    }

    pub async fn create_draft(&self, caller: &Caller, topic: &TopicName, input: DraftInput) -> Result<Draft> {
        let t = self.writable_topic(caller, topic).await?;
        let (sha256, ct) = self.checked_draft(&t, &input).await?;
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let now = self.now();
        let who = caller.who();
        // At rest (docs/encryption.md): a draft's bytes are sealed like a version's.
        let at_rest = crate::sealed::at_rest_key(&mut tx, t.id).await?;
        let stored = match &at_rest {
            Some(k) => self.seal_bytes(k, &input.payload).await?,
            None => input.payload.clone(),
        };
        let new = st::NewDraft {
            topic_id: t.id,
            at: now,
            by: &who,
            message: &input.message,
            metadata: &input.metadata,
            content_type: &ct,
            sha256: &sha256,
            data: &stored,
            size: input.payload.len() as u64,
            sealed: at_rest.is_some(),
        };
        let id = st::insert_draft(&mut tx, new).await?;
        let details = json!({"draft": id, "size": input.payload.len(), "sha256": sha256, "message": input.message});
        store::audit(&mut tx, now, &who, "draft.create", Some(&t.name), details).await?;
        tx.commit().await?;
        self.draft(caller, topic, id).await
    }

    pub async fn drafts(&self, caller: &Caller, topic: &TopicName) -> Result<Vec<Draft>> {
        let t = self.writable_topic(caller, topic).await?;
        Ok(st::open_drafts(self.pool(), t.id).await?.into_iter().map(|r| draft_of(&t.name, r)).collect())
    }

    pub async fn draft(&self, caller: &Caller, topic: &TopicName, id: i64) -> Result<Draft> {
        let t = self.writable_topic(caller, topic).await?;
        let row = st::draft(self.pool(), t.id, id)
            .await?
            .ok_or_else(|| Error::DraftNotFound(format!("topic {:?} has no draft {id}", t.name)))?;
        Ok(draft_of(&t.name, row))
    }

    /// An open draft's payload bytes.
    pub async fn draft_payload(&self, caller: &Caller, topic: &TopicName, id: i64) -> Result<(Draft, Bytes)> {
        let d = self.draft(caller, topic, id).await?;
        let (data, sealed) = st::draft_data(self.pool(), id)
            .await?
            .ok_or_else(|| Error::InvalidState(format!("draft {id} is {}: its payload is gone", d.state)))?;
        Ok((d, self.open_bytes(Bytes::from(data), sealed).await?))
    }

    pub async fn replace_draft(&self, caller: &Caller, topic: &TopicName, id: i64, input: DraftInput) -> Result<Draft> {
        let t = self.writable_topic(caller, topic).await?;
        let (sha256, ct) = self.checked_draft(&t, &input).await?;
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let now = self.now();
        let who = caller.who();
        // At rest (docs/encryption.md): a draft's bytes are sealed like a version's.
        let at_rest = crate::sealed::at_rest_key(&mut tx, t.id).await?;
        let stored = match &at_rest {
            Some(k) => self.seal_bytes(k, &input.payload).await?,
            None => input.payload.clone(),
        };
        let new = st::NewDraft {
            topic_id: t.id,
            at: now,
            by: &who,
            message: &input.message,
            metadata: &input.metadata,
            content_type: &ct,
            sha256: &sha256,
            data: &stored,
            size: input.payload.len() as u64,
            sealed: at_rest.is_some(),
        };
        if !st::replace_draft(&mut tx, id, new).await? {
            return Err(self.not_open(&mut tx, &t, id).await);
        }
        // A pending request reviewed the old payload: it goes back to no approvals.
        st::reset_approvals(&mut tx, id).await?;
        let details = json!({"draft": id, "size": input.payload.len(), "sha256": sha256});
        store::audit(&mut tx, now, &who, "draft.update", Some(&t.name), details).await?;
        tx.commit().await?;
        self.draft(caller, topic, id).await
    }

    async fn not_open(&self, conn: &mut PgConnection, t: &store::topics::TopicRef, id: i64) -> Error {
        match st::draft(&mut *conn, t.id, id).await {
            Ok(Some(d)) => Error::InvalidState(format!("draft {id} is {}, not open", d.state)),
            Ok(None) => Error::DraftNotFound(format!("topic {:?} has no draft {id}", t.name)),
            Err(e) => e,
        }
    }

    pub async fn discard_draft(&self, caller: &Caller, topic: &TopicName, id: i64) -> Result<Draft> {
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        if !st::close_draft(&mut tx, id, "discarded", None).await? {
            return Err(self.not_open(&mut tx, &t, id).await);
        }
        let now = self.now();
        let who = caller.who();
        // Its open requests go with it.
        let open: Vec<i64> = st::open_requests_of_draft(&mut tx, id).await?;
        for r in open {
            st::transition(
                &mut tx,
                r,
                &["pending", "approved"],
                "withdrawn",
                now,
                Some("the draft was discarded"),
                None,
            )
            .await?;
            store::audit(&mut tx, now, &who, "change.withdraw", Some(&t.name), json!({"request": r, "draft": id}))
                .await?;
        }
        store::audit(&mut tx, now, &who, "draft.discard", Some(&t.name), json!({"draft": id})).await?;
        tx.commit().await?;
        self.draft(caller, topic, id).await
    }

    /// The draft compared with what each scope's labels resolve to now (default: `{}`).
    pub async fn draft_diff(
        &self,
        caller: &Caller,
        topic: &TopicName,
        id: i64,
        scopes: Vec<Selector>,
    ) -> Result<Vec<ScopeDiff>> {
        if scopes.len() > 16 {
            return Err(Error::invalid("at most 16 scopes per diff"));
        }
        let (d, bytes) = self.draft_payload(caller, topic, id).await?;
        let t = self.writable_topic(caller, topic).await?;
        let scopes = if scopes.is_empty() { vec![Selector::all()] } else { scopes };
        let mut out = Vec::new();
        for s in scopes {
            let live = self.resolve(caller, topic, &s.as_labels(), None).await?;
            let mut diff = ScopeDiff {
                selector: s.to_json(),
                live_version: live.as_ref().map(|r| r.version),
                live_sha256: None,
                identical: false,
                lines: None,
                note: None,
            };
            let old: Vec<u8> = match &live {
                None => Vec::new(),
                Some(r) => {
                    let row = store::versions::data(self.pool(), t.id, r.version as i64).await?;
                    match row {
                        Some(row) => {
                            diff.live_sha256 = Some(row.sha256.clone());
                            diff.identical = row.sha256 == d.sha256;
                            match row.inline_data {
                                Some(b) => self.open_bytes(Bytes::from(b), row.sealed).await?.to_vec(),
                                None => {
                                    diff.note =
                                        Some("the live payload is in the object store: compare the checksums".into());
                                    out.push(diff);
                                    continue;
                                }
                            }
                        }
                        None => Vec::new(),
                    }
                }
            };
            let (a, b) = (imprint_domain::render_payload(&old, 64), imprint_domain::render_payload(&bytes, 64));
            match (a.text(), b.text()) {
                (Some(a), Some(b)) => match imprint_domain::diff_lines(a, b, MAX_DIFF_LINES) {
                    Some(lines) => {
                        diff.lines = Some(
                            lines
                                .into_iter()
                                .map(|l| match l {
                                    DiffLine::Same(line) => DiffEntry { op: "same", line },
                                    DiffLine::Added(line) => DiffEntry { op: "added", line },
                                    DiffLine::Removed(line) => DiffEntry { op: "removed", line },
                                })
                                .collect(),
                        )
                    }
                    None => diff.note = Some("too large to diff line by line".into()),
                },
                _ => diff.note = Some("binary payload: compare the checksums".into()),
            }
            out.push(diff);
        }
        Ok(out)
    }

    /// Releases a draft: now (a version), or as a change request (the topic requires
    /// review, or `at` is given). `break_glass` (admins, with a reason) releases now past a
    /// review rule and a freeze.
    pub async fn release_draft(
        &self,
        caller: &Caller,
        topic: &TopicName,
        id: i64,
        input: ReleaseInput,
    ) -> Result<Released> {
        let (d, bytes) = self.draft_payload(caller, topic, id).await?;
        if d.state != "open" {
            return Err(Error::InvalidState(format!("draft {id} is {}, not open", d.state)));
        }
        let t = self.writable_topic(caller, topic).await?;
        let now = self.now();
        check_at(input.at, now)?;
        if let Some(s) = &input.scopes {
            if s.len() > 64 {
                return Err(Error::invalid("at most 64 scopes per publish"));
            }
        }
        let break_glass = input.break_glass.as_deref().map(|r| check_reason(r, "a break glass")).transpose()?;
        if break_glass.is_some() && !caller.is_admin() {
            return Err(Error::Forbidden("only admins may break glass".into()));
        }
        if break_glass.is_some() && input.at.is_some() {
            return Err(Error::invalid("a break glass releases now: it takes no at"));
        }
        let review = st::review(self.pool(), t.id).await?;
        let release = is_release(&input.scopes, &input.rollout, t.default_plan.is_some());
        let message = input.message.unwrap_or_else(|| d.message.clone());
        if break_glass.is_none() && (input.at.is_some() || (review.is_some() && release)) {
            let required = review.as_ref().map(|r| r.required_approvals).unwrap_or(0);
            let scopes = input.scopes.as_ref().map(|s| Value::Array(s.iter().map(Selector::to_json).collect()));
            let change = json!({"scopes": scopes, "rollout": rollout_json(&input.rollout)});
            let mut tx = self.pool().begin().await?;
            let t = store::topics::require(&mut tx, topic, true).await?;
            caller.require_write(&t.name, &t.owner)?;
            if st::open_requests_of_draft(&mut tx, id).await?.into_iter().next().is_some() {
                return Err(Error::InvalidState(format!(
                    "draft {id} has an open change request already: withdraw it first"
                )));
            }
            let who = caller.who();
            let state = if required == 0 { "approved" } else { "pending" };
            let rid = st::insert_request(
                &mut tx,
                st::NewRequest {
                    topic_id: t.id,
                    kind: "release",
                    draft_id: Some(id),
                    change: change.clone(),
                    author: &who,
                    author_admin: caller.is_admin(),
                    message: &message,
                    required_approvals: required,
                    state,
                    at: input.at,
                    now,
                },
            )
            .await?;
            let details = json!({"request": rid, "draft": id, "required_approvals": required, "at": input.at,
                                 "scopes": change["scopes"], "sha256": d.sha256});
            store::audit(&mut tx, now, &who, "change.request", Some(&t.name), details).await?;
            tx.commit().await?;
            return Ok(Released::Requested(self.change_request_view(rid).await?));
        }
        if break_glass.is_none() {
            let mut conn = self.pool().acquire().await?;
            if st::has_open_request(&mut conn, id).await? {
                return Err(Error::InvalidState(format!(
                    "draft {id} has an open change request: withdraw it first (or an admin breaks glass)"
                )));
            }
        }
        let publish = PublishInput {
            payload: Payload::Binary(bytes),
            content_type: Some(d.content_type.clone()),
            metadata: d.metadata.clone(),
            scopes: input.scopes,
            message,
            rollout: input.rollout,
            sha256: Some(d.sha256.clone()),
            // The topic's pre-release checks run on release like on any publish
            // (docs/validation.md); a draft is not forced past them.
            force: None,
        };
        let control = Control { draft: Some(id), request: None, break_glass };
        Ok(Released::Published(self.publish_with(caller, topic, publish, control).await?))
    }

    /// A publish with change control: as a draft (`draft`), as a change request (the topic
    /// requires review, or `at`), past review and freeze (`break_glass`), or plainly.
    pub async fn publish_controlled(
        &self,
        caller: &Caller,
        topic: &TopicName,
        input: PublishInput,
        control: PublishControl,
    ) -> Result<Released> {
        let plain = !control.draft && control.at.is_none() && control.break_glass.is_none();
        if matches!(caller, Caller::Anonymous) {
            return Err(Error::Unauthorized("publishing needs a bearer token".into()));
        }
        if plain {
            let t = self.writable_topic(caller, topic).await?;
            let reviewed = st::review(self.pool(), t.id).await?.is_some()
                && is_release(&input.scopes, &input.rollout, t.default_plan.is_some());
            if !reviewed {
                return Ok(Released::Published(self.publish(caller, topic, input).await?));
            }
        }
        if control.break_glass.is_some() && !control.draft && control.at.is_none() {
            let reason = check_reason(control.break_glass.as_deref().unwrap_or_default(), "a break glass")?;
            if !caller.is_admin() {
                return Err(Error::Forbidden("only admins may break glass".into()));
            }
            let c = Control { draft: None, request: None, break_glass: Some(reason) };
            return Ok(Released::Published(self.publish_with(caller, topic, input, c).await?));
        }
        // Through a draft: the payload must be held in memory (the JSON form).
        let payload = match input.payload {
            Payload::Text(s) => Bytes::from(s),
            Payload::Binary(b) => b,
            _ => return Err(Error::ReviewRequired(
                "drafts, reviewed and scheduled releases take the payload inline (the JSON form: data or data_base64)"
                    .into(),
            )),
        };
        let draft = self
            .create_draft(
                caller,
                topic,
                DraftInput {
                    payload,
                    content_type: input.content_type,
                    metadata: input.metadata,
                    message: input.message,
                    sha256: input.sha256,
                },
            )
            .await?;
        if control.draft {
            return Ok(Released::Draft(draft));
        }
        let release = ReleaseInput {
            scopes: input.scopes,
            rollout: input.rollout,
            message: None,
            at: control.at,
            break_glass: control.break_glass,
        };
        self.release_draft(caller, topic, draft.id, release).await
    }

    // ---- scope adds, rollout starts, pins and unpins under change control ----

    /// Makes a change request of `kind` when the change waits: for `at`, or (`reviewed`) for
    /// the topic's review rule. `None`: nothing holds it, do it now. Refuses a break glass
    /// with `at` (a break glass acts now).
    #[allow(clippy::too_many_arguments)]
    async fn held_change(
        &self,
        caller: &Caller,
        topic: &TopicName,
        kind: &str,
        change: Value,
        version: Option<VersionNumber>,
        reviewed: bool,
        message: &str,
        opts: &ChangeOptions,
    ) -> Result<Option<ChangeRequest>> {
        let now = self.now();
        check_at(opts.at, now)?;
        if opts.break_glass.is_some() {
            if opts.at.is_some() {
                return Err(Error::invalid("a break glass acts now: it takes no at"));
            }
            return Ok(None);
        }
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let review = if reviewed { st::review(&mut *tx, t.id).await? } else { None };
        if opts.at.is_none() && review.is_none() {
            return Ok(None);
        }
        // What it is about exists now (a request for a missing version is refused at once).
        if let Some(v) = version {
            store::versions::require_live(&mut tx, &t, v.get()).await?;
        }
        let required = review.as_ref().map(|r| r.required_approvals).unwrap_or(0);
        let who = caller.who();
        let rid = st::insert_request(
            &mut tx,
            st::NewRequest {
                topic_id: t.id,
                kind,
                draft_id: None,
                change: change.clone(),
                author: &who,
                author_admin: caller.is_admin(),
                message,
                required_approvals: required,
                state: if required == 0 { "approved" } else { "pending" },
                at: opts.at,
                now,
            },
        )
        .await?;
        let details = json!({"request": rid, "kind": kind, "required_approvals": required, "at": opts.at,
                             "change": change});
        store::audit(&mut tx, now, &who, "change.request", Some(&t.name), details).await?;
        tx.commit().await?;
        Ok(Some(self.change_request_view(rid).await?))
    }

    /// Adds a scope to a version now, or as a change request (`scope`) on a reviewed topic
    /// or with `at`; a freeze refuses it (423) unless an admin breaks glass.
    pub async fn add_scope_controlled(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
        selector: Selector,
        opts: ChangeOptions,
    ) -> Result<Changed<(Scope, bool)>> {
        let break_glass = break_glass_reason(caller, opts.break_glass.as_deref())?;
        let change = json!({"version": version.get(), "scopes": [selector.to_json()]});
        if let Some(cr) = self.held_change(caller, topic, "scope", change, Some(version), true, "", &opts).await? {
            return Ok(Changed::Requested(Box::new(cr)));
        }
        let gate = Gate { request: None, break_glass };
        Ok(Changed::Done(self.add_scope_gated(caller, topic, version, selector, gate).await?))
    }

    /// Starts a rollout now, or as a change request (`rollout`) on a reviewed topic or with
    /// `at`; a freeze refuses it (423) unless an admin breaks glass.
    pub async fn start_rollout_controlled(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
        choice: PlanChoice,
        opts: ChangeOptions,
    ) -> Result<Changed<RolloutInfo>> {
        let break_glass = break_glass_reason(caller, opts.break_glass.as_deref())?;
        let rollout = rollout_json(&RolloutRequest::Plan(choice.clone()));
        let change = json!({"version": version.get(), "rollout": rollout});
        if let Some(cr) = self.held_change(caller, topic, "rollout", change, Some(version), true, "", &opts).await? {
            return Ok(Changed::Requested(Box::new(cr)));
        }
        let gate = Gate { request: None, break_glass };
        Ok(Changed::Done(self.start_rollout_gated(caller, topic, version, choice, gate).await?))
    }

    /// Pins now, or as a change request (`pin`) on a reviewed topic or with `at`. Freezes
    /// never hold a pin; an admin's break glass pins now past a review rule (incidents).
    pub async fn pin_controlled(
        &self,
        caller: &Caller,
        topic: &TopicName,
        input: PinInput,
        opts: ChangeOptions,
    ) -> Result<Changed<Pin>> {
        let break_glass = break_glass_reason(caller, opts.break_glass.as_deref())?;
        if let (Some(at), Some(exp)) = (opts.at, input.expires_at) {
            if exp <= at {
                return Err(Error::invalid("expires_at must be after at"));
            }
        }
        if input.reason.chars().count() > 1024 {
            return Err(Error::invalid("reason has at most 1024 characters"));
        }
        let change = json!({"selector": input.selector.to_json(), "version": input.version.get(),
                            "reason": input.reason, "expires_at": input.expires_at});
        let reason = input.reason.clone();
        if let Some(cr) =
            self.held_change(caller, topic, "pin", change, Some(input.version), true, &reason, &opts).await?
        {
            return Ok(Changed::Requested(Box::new(cr)));
        }
        let gate = Gate { request: None, break_glass };
        Ok(Changed::Done(self.pin_gated(caller, topic, input, gate).await?))
    }

    /// Unpins now, or at `at` (a change request the scheduler applies; no review holds an
    /// unpin, and it needs no break glass).
    pub async fn unpin_controlled(
        &self,
        caller: &Caller,
        topic: &TopicName,
        selector: &Selector,
        opts: ChangeOptions,
    ) -> Result<Changed<()>> {
        if opts.break_glass.is_some() {
            return Err(Error::invalid("an unpin is never held: it takes no break_glass"));
        }
        let change = json!({"selector": selector.to_json()});
        if let Some(cr) = self.held_change(caller, topic, "unpin", change, None, false, "", &opts).await? {
            return Ok(Changed::Requested(Box::new(cr)));
        }
        Ok(Changed::Done(self.unpin_gated(caller, topic, selector, Gate::default()).await?))
    }

    // ---- the publish transaction's end (its gate is `release_gate::check`) ----

    /// In the publish transaction, once version `version` is written: closes the draft,
    /// applies the request (exactly once: only an `approved` one moves), audits a break glass.
    pub(crate) async fn finish_release(
        &self,
        conn: &mut PgConnection,
        t: &store::topics::TopicRef,
        control: &Control,
        version: i64,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if let Some(d) = control.draft {
            if !st::close_draft(&mut *conn, d, "released", Some(version)).await? {
                return Err(Error::Conflict(format!("draft {d} was released or discarded meanwhile")));
            }
            // Released otherwise than by its request (a break glass): its open requests end.
            for other in st::open_requests_of_draft(&mut *conn, d).await? {
                if Some(other) == control.request {
                    continue;
                }
                let reason = format!("draft {d} was released as version {version} directly");
                st::transition(&mut *conn, other, &["pending", "approved"], "withdrawn", now, Some(&reason), None)
                    .await?;
                let details = json!({"request": other, "draft": d, "reason": reason});
                store::audit(&mut *conn, now, who, "change.withdraw", Some(&t.name), details).await?;
            }
        }
        let gate = Gate { request: control.request, break_glass: control.break_glass.clone() };
        let details = json!({"draft": control.draft});
        crate::release_gate::finish(&mut *conn, &t.name, &gate, "release", Some(version), who, now, details).await?;
        Ok(())
    }

    // ---- review ----

    pub async fn review_rule(&self, caller: &Caller, topic: &TopicName) -> Result<Option<ReviewRule>> {
        let t = self.writable_topic(caller, topic).await?;
        Ok(st::review(self.pool(), t.id).await?.map(|r| ReviewRule {
            required_approvals: r.required_approvals as u32,
            approvers: match r.approver_team {
                Some(team) => Approvers { team: Some(team), users: None },
                None => Approvers { team: None, users: Some(r.approver_users) },
            },
        }))
    }

    /// Sets (or with `None` removes) a topic's review rule. Admins only: a team must not
    /// lift its own four-eyes rule.
    pub async fn set_review_rule(
        &self,
        caller: &Caller,
        topic: &TopicName,
        rule: Option<ReviewRule>,
    ) -> Result<Option<ReviewRule>> {
        if !caller.is_admin() {
            let t = self.writable_topic(caller, topic).await?;
            return Err(Error::Forbidden(format!("only admins set the review rule of topic {:?}", t.name)));
        }
        let row = match &rule {
            None => None,
            Some(r) => {
                if !(1..=10).contains(&r.required_approvals) {
                    return Err(Error::invalid("required_approvals is 1 to 10"));
                }
                match (&r.approvers.team, &r.approvers.users) {
                    (Some(team), None) => {
                        if team.is_empty() || team.len() > 64 {
                            return Err(Error::invalid("approvers.team is a team name"));
                        }
                        Some(st::ReviewRow {
                            required_approvals: r.required_approvals as i32,
                            approver_team: Some(team.clone()),
                            approver_users: vec![],
                        })
                    }
                    (None, Some(users)) => {
                        if users.len() < r.required_approvals as usize || users.len() > 100 {
                            return Err(Error::invalid(
                                "approvers.users names at least required_approvals users (at most 100)",
                            ));
                        }
                        if users.iter().any(|u| u.is_empty() || u.len() > 64) {
                            return Err(Error::invalid("approvers.users are usernames"));
                        }
                        Some(st::ReviewRow {
                            required_approvals: r.required_approvals as i32,
                            approver_team: None,
                            approver_users: users.clone(),
                        })
                    }
                    _ => return Err(Error::invalid("approvers is {\"team\": …} or {\"users\": […]}")),
                }
            }
        };
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        let now = self.now();
        let who = caller.who();
        st::set_review(&mut tx, t.id, row.as_ref(), now, &who).await?;
        store::audit(&mut tx, now, &who, "topic.update", Some(&t.name), json!({"review": rule})).await?;
        tx.commit().await?;
        Ok(rule)
    }

    async fn change_request_view(&self, id: i64) -> Result<ChangeRequest> {
        let mut conn = self.pool().acquire().await?;
        let r = st::request(&mut conn, id, false)
            .await?
            .ok_or_else(|| Error::ChangeRequestNotFound(format!("no change request {id}")))?;
        self.view_of(&mut conn, r).await
    }

    async fn view_of(&self, conn: &mut PgConnection, r: st::RequestRow) -> Result<ChangeRequest> {
        let approvals = st::approvals(&mut *conn, r.id)
            .await?
            .into_iter()
            .map(|a| Approval { approver: a.approver, approved_at: a.approved_at })
            .collect();
        let draft = match r.draft_id {
            Some(d) => st::draft(&mut *conn, r.topic_id, d).await?,
            None => None,
        };
        Ok(ChangeRequest {
            id: r.id,
            topic: r.topic,
            summary: summary_of(&r.kind, r.draft_id, &r.change),
            version: match r.kind.as_str() {
                "release" => None,
                _ => r.change.get("version").and_then(Value::as_u64),
            },
            selector: r.change.get("selector").cloned(),
            kind: r.kind,
            state: r.state,
            draft_id: r.draft_id,
            scopes: r.change.get("scopes").cloned().filter(|v| !v.is_null()),
            rollout: r.change.get("rollout").cloned().unwrap_or_default(),
            author: r.author,
            message: r.message,
            required_approvals: r.required_approvals as u32,
            approvals,
            at: r.at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            reason: r.reason,
            applied_version: r.applied_version.map(|v| v as u64),
            draft_sha256: draft.as_ref().map(|d| d.sha256.clone()),
            draft_size: draft.as_ref().map(|d| d.size as u64),
        })
    }

    /// May the caller see this request: writers of its topic and its approvers.
    async fn may_see(&self, conn: &mut PgConnection, caller: &Caller, r: &st::RequestRow) -> Result<bool> {
        if caller.require_write(&r.topic, &r.owner).is_ok() {
            return Ok(true);
        }
        Ok(st::review(&mut *conn, r.topic_id).await?.is_some_and(|rule| may_approve(&rule, caller)))
    }

    /// Change requests the caller may see (writers of the topic, its approvers), newest first.
    pub async fn change_requests(
        &self,
        caller: &Caller,
        topic: Option<&TopicName>,
        states: Vec<String>,
    ) -> Result<Vec<ChangeRequest>> {
        self.require_staff(caller)?;
        let mut conn = self.pool().acquire().await?;
        let topic_id = match topic {
            Some(t) => Some(store::topics::require(&mut conn, t, false).await?.id),
            None => None,
        };
        let mut out = Vec::new();
        for r in st::requests(&mut *conn, topic_id, &states, 200).await? {
            if self.may_see(&mut conn, caller, &r).await? {
                out.push(self.view_of(&mut conn, r).await?);
            }
        }
        Ok(out)
    }

    fn require_staff(&self, caller: &Caller) -> Result<()> {
        match caller {
            Caller::Anonymous => Err(Error::Unauthorized("change requests need a bearer token".into())),
            Caller::Consumer { name, .. } => {
                Err(Error::Forbidden(format!("token {name:?} is a consumer token: it cannot see change requests")))
            }
            _ => Ok(()),
        }
    }

    pub async fn change_request(&self, caller: &Caller, id: i64) -> Result<ChangeRequest> {
        self.require_staff(caller)?;
        let mut conn = self.pool().acquire().await?;
        let r = st::request(&mut conn, id, false).await?;
        match r {
            Some(r) if self.may_see(&mut conn, caller, &r).await? => self.view_of(&mut conn, r).await,
            _ => Err(Error::ChangeRequestNotFound(format!("no change request {id}"))),
        }
    }

    /// Approves: the approval that completes the count applies the change (unless it waits
    /// for `at`), in a transaction of its own as the author, exactly once.
    pub async fn approve_change(&self, caller: &Caller, id: i64) -> Result<ChangeRequest> {
        self.require_staff(caller)?;
        let mut tx = self.pool().begin().await?;
        let r = self.visible_request(&mut tx, caller, id).await?;
        let rule = st::review(&mut *tx, r.topic_id).await?;
        if !rule.as_ref().is_some_and(|rule| may_approve(rule, caller)) {
            return Err(Error::Forbidden(format!("{} is not an approver of topic {:?}", caller.who(), r.topic)));
        }
        let who = caller.who();
        if who == r.author {
            return Err(Error::Forbidden("the author of a change cannot approve it".into()));
        }
        if r.state != "pending" {
            return Err(Error::InvalidState(format!("change request {id} is {}, not pending", r.state)));
        }
        let now = self.now();
        if !st::approve(&mut tx, id, &who, now).await? {
            return Err(Error::Conflict(format!("{who} approved change request {id} already")));
        }
        let count = st::approvals(&mut *tx, id).await?.len() as i32;
        let complete = count >= r.required_approvals;
        if complete {
            st::transition(&mut tx, id, &["pending"], "approved", now, None, None).await?;
        }
        let details = json!({"request": id, "approvals": count, "of": r.required_approvals});
        store::audit(&mut tx, now, &who, "change.approve", Some(&r.topic), details).await?;
        tx.commit().await?;
        if complete && r.at.is_none() {
            self.apply_change(id).await?;
        }
        self.change_request_view(id).await
    }

    async fn visible_request(&self, conn: &mut PgConnection, caller: &Caller, id: i64) -> Result<st::RequestRow> {
        match st::request(&mut *conn, id, true).await? {
            Some(r) if self.may_see(&mut *conn, caller, &r).await? => Ok(r),
            _ => Err(Error::ChangeRequestNotFound(format!("no change request {id}"))),
        }
    }

    /// Rejects with a reason (any approver): nothing is applied, the draft stays open.
    pub async fn reject_change(&self, caller: &Caller, id: i64, reason: &str) -> Result<ChangeRequest> {
        self.require_staff(caller)?;
        let reason = check_reason(reason, "a rejection")?;
        let mut tx = self.pool().begin().await?;
        let r = self.visible_request(&mut tx, caller, id).await?;
        let rule = st::review(&mut *tx, r.topic_id).await?;
        if !rule.as_ref().is_some_and(|rule| may_approve(rule, caller)) {
            return Err(Error::Forbidden(format!("{} is not an approver of topic {:?}", caller.who(), r.topic)));
        }
        let now = self.now();
        if !st::transition(&mut tx, id, &["pending", "approved"], "rejected", now, Some(&reason), None).await? {
            return Err(Error::InvalidState(format!("change request {id} is {}, not open", r.state)));
        }
        let who = caller.who();
        store::audit(&mut tx, now, &who, "change.reject", Some(&r.topic), json!({"request": id, "reason": reason}))
            .await?;
        tx.commit().await?;
        self.change_request_view(id).await
    }

    /// Withdraws (the author, or an admin) a pending or scheduled request: nothing is applied.
    pub async fn withdraw_change(&self, caller: &Caller, id: i64) -> Result<ChangeRequest> {
        self.require_staff(caller)?;
        let mut tx = self.pool().begin().await?;
        let r = self.visible_request(&mut tx, caller, id).await?;
        let who = caller.who();
        if who != r.author && !caller.is_admin() {
            return Err(Error::Forbidden("only the author (or an admin) withdraws a change request".into()));
        }
        let now = self.now();
        if !st::transition(&mut tx, id, &["pending", "approved"], "withdrawn", now, None, None).await? {
            return Err(Error::InvalidState(format!("change request {id} is {}, not open", r.state)));
        }
        store::audit(&mut tx, now, &who, "change.withdraw", Some(&r.topic), json!({"request": id})).await?;
        tx.commit().await?;
        self.change_request_view(id).await
    }

    /// Applies an approved request as its author. A refusal (a freeze, the draft gone, a
    /// validation that now fails) marks it `failed` with the reason; a concurrent apply
    /// (another approver, another replica) makes this one a no-op.
    async fn apply_change(&self, id: i64) -> Result<()> {
        let mut conn = self.pool().acquire().await?;
        let Some(r) = st::request(&mut conn, id, false).await? else { return Ok(()) };
        drop(conn);
        if r.state != "approved" {
            return Ok(());
        }
        let topic = TopicName::parse(&r.topic).map_err(|e| Error::Internal(e.to_string()))?;
        let as_author = acting_as(&r.author, r.author_admin, &r.owner);
        let gate = Gate { request: Some(id), break_glass: None };
        let outcome = match r.kind.as_str() {
            "release" => self.apply_release(&r, &as_author, &topic).await,
            kind => self.apply_other(kind, &r.change, &as_author, &topic, gate).await,
        };
        match outcome {
            Ok(_) => Ok(()),
            // Applied by someone else meanwhile, or storage trouble: the state says which.
            Err(Error::Conflict(_)) => Ok(()),
            Err(e @ (Error::StorageUnavailable(_) | Error::CommitUnknown(_) | Error::ObjectStoreUnavailable(_))) => {
                Err(e)
            }
            Err(e) => {
                let mut tx = self.pool().begin().await?;
                let now = self.now();
                let reason = e.public_message();
                if st::transition(&mut tx, id, &["approved"], "failed", now, Some(&reason), None).await? {
                    let details = json!({"request": id, "reason": reason, "code": e.code()});
                    store::audit(&mut tx, now, "system", "change.apply", Some(&r.topic), details).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Applies a `release` request: its draft published as the author.
    async fn apply_release(&self, r: &st::RequestRow, as_author: &Caller, topic: &TopicName) -> Result<()> {
        let id = r.id;
        let draft_id = r.draft_id.ok_or_else(|| Error::InvalidState("the request has no draft".into()))?;
        let (data, sealed) = st::draft_data(self.pool(), draft_id)
            .await?
            .ok_or_else(|| Error::InvalidState(format!("draft {draft_id} is no longer open")))?;
        let data = self.open_bytes(Bytes::from(data), sealed).await?;
        let d = st::draft(self.pool(), r.topic_id, draft_id)
            .await?
            .ok_or_else(|| Error::InvalidState(format!("draft {draft_id} is gone")))?;
        let scopes = match r.change.get("scopes") {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| Selector::from_json(v).map_err(|e| Error::Internal(e.to_string())))
                    .collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        let input = PublishInput {
            payload: Payload::Binary(data),
            content_type: Some(d.content_type),
            metadata: d.metadata.0,
            scopes,
            message: r.message.clone(),
            rollout: rollout_of(r.change.get("rollout").unwrap_or(&Value::Null))?,
            sha256: Some(d.sha256),
            force: None,
        };
        let control = Control { draft: Some(draft_id), request: Some(id), break_glass: None };
        self.publish_with(as_author, topic, input, control).await.map(|_| ())
    }

    /// Applies a `scope`, `rollout`, `pin` or `unpin` request as the author, through the
    /// gate that moves it to `applied` in the change's transaction.
    async fn apply_other(
        &self,
        kind: &str,
        change: &Value,
        as_author: &Caller,
        topic: &TopicName,
        gate: Gate,
    ) -> Result<()> {
        let bad = |what: &str| Error::Internal(format!("stored {kind} change has no valid {what}"));
        let version = || {
            change
                .get("version")
                .and_then(Value::as_u64)
                .and_then(|v| VersionNumber::new(v).ok())
                .ok_or_else(|| bad("version"))
        };
        let selector = |v: Option<&Value>| v.and_then(|v| Selector::from_json(v).ok()).ok_or_else(|| bad("selector"));
        match kind {
            "scope" => {
                let sel = selector(change.pointer("/scopes/0"))?;
                self.add_scope_gated(as_author, topic, version()?, sel, gate).await.map(|_| ())
            }
            "rollout" => {
                let RolloutRequest::Plan(choice) = rollout_of(change.get("rollout").unwrap_or(&Value::Null))? else {
                    return Err(bad("plan"));
                };
                self.start_rollout_gated(as_author, topic, version()?, choice, gate).await.map(|_| ())
            }
            "pin" => {
                let input = PinInput {
                    selector: selector(change.get("selector"))?,
                    version: version()?,
                    reason: change.get("reason").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    expires_at: change
                        .get("expires_at")
                        .and_then(|v| serde_json::from_value::<Option<DateTime<Utc>>>(v.clone()).ok())
                        .flatten(),
                };
                self.pin_gated(as_author, topic, input, gate).await.map(|_| ())
            }
            "unpin" => self.unpin_gated(as_author, topic, &selector(change.get("selector"))?, gate).await,
            other => Err(Error::Internal(format!("unknown change request kind {other:?}"))),
        }
    }

    /// The scheduler's pass (leader only): applies approved requests whose time came and
    /// expires pending ones whose time came first. Returns how many it handled.
    pub async fn tick_changes(&self) -> Result<usize> {
        let now = self.now();
        let due = st::due(self.pool(), now).await?;
        let n = due.len();
        for (id, state) in due {
            if state == "approved" {
                self.apply_change(id).await?;
            } else {
                let mut tx = self.pool().begin().await?;
                let reason = "its time came before its approvals were complete: it did not run";
                if st::transition(&mut tx, id, &["pending"], "expired", now, Some(reason), None).await? {
                    let topic: Option<String> = st::topic_of_request(&mut tx, id).await?;
                    store::audit(&mut tx, now, "system", "change.expire", topic.as_deref(), json!({"request": id}))
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(n)
    }

    // ---- freezes ----

    /// Every freeze window (any signed-in caller but consumers: they are operational facts).
    pub async fn freezes(&self, caller: &Caller) -> Result<Vec<Freeze>> {
        self.require_staff(caller)?;
        let now = self.now();
        st::freezes(self.pool(), None).await?.into_iter().map(|r| freeze_of(r, now)).collect()
    }

    /// The freeze windows in force now for a topic (the overview's banner).
    pub async fn active_freezes(&self, caller: &Caller, topic: &TopicName) -> Result<Vec<Freeze>> {
        let t = self.readable_topic(caller, topic).await?;
        let now = self.now();
        let all = st::freezes(self.pool(), Some((t.id, &t.owner))).await?;
        Ok(all
            .into_iter()
            .map(|r| freeze_of(r, now))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|f| f.active)
            .collect())
    }

    /// Creates a freeze window: global ones by admins, a team's by its members or admins,
    /// a topic's by its writers.
    pub async fn create_freeze(&self, caller: &Caller, f: NewFreeze) -> Result<Freeze> {
        self.require_staff(caller)?;
        let name = f.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(Error::invalid("a freeze has a name of 1 to 200 characters"));
        }
        let schedule = match (&f.from, &f.to, &f.recurring) {
            (Some(from), Some(to), None) => Schedule::once(*from, *to),
            (None, None, Some(r)) => Schedule::recurring(&r.days, &r.from, &r.to, &r.tz),
            (None, None, None) | (Some(_), None, None) | (None, Some(_), None) => {
                Err(imprint_domain::freeze::FreezeError::Missing)
            }
            _ => Err(imprint_domain::freeze::FreezeError::Both),
        }
        .map_err(|e| Error::invalid(e.to_string()))?;
        let mut tx = self.pool().begin().await?;
        let topic_id = match (&f.team, &f.topic) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("a freeze is global, for a team or for a topic, not both"))
            }
            (None, Some(topic)) => {
                let name = TopicName::parse(topic).map_err(Error::from)?;
                let t = store::topics::require(&mut tx, &name, false).await?;
                caller.require_write(&t.name, &t.owner)?;
                Some(t.id)
            }
            (Some(team), None) => {
                caller.require_write("(team freeze)", team)?;
                None
            }
            (None, None) => {
                if !caller.is_admin() {
                    return Err(Error::Forbidden("only admins create global freezes".into()));
                }
                None
            }
        };
        if st::freezes(&mut *tx, None).await?.len() >= MAX_FREEZES {
            return Err(Error::invalid(format!("at most {MAX_FREEZES} freeze windows exist")));
        }
        let now = self.now();
        let who = caller.who();
        let (days, lf, lt, tz) = match &schedule {
            Schedule::Recurring(r) => (
                Some(r.days.iter().map(|d| imprint_domain::freeze::day_name(*d).to_owned()).collect::<Vec<_>>()),
                Some(fmt_time(r.from)),
                Some(fmt_time(r.to)),
                Some(r.tz.name().to_owned()),
            ),
            Schedule::Once { .. } => (None, None, None, None),
        };
        let id = st::insert_freeze(
            &mut tx,
            st::NewFreeze {
                name,
                team: f.team.as_deref(),
                topic_id,
                starts_at: f.from,
                ends_at: f.to,
                days,
                local_from: lf.as_deref(),
                local_to: lt.as_deref(),
                tz: tz.as_deref(),
                at: now,
                by: &who,
            },
        )
        .await?;
        let details = json!({"freeze": id, "name": name, "team": f.team, "window": schedule.describe()});
        store::audit(&mut tx, now, &who, "freeze.create", f.topic.as_deref(), details).await?;
        tx.commit().await?;
        let row = st::freeze(self.pool(), id).await?.ok_or_else(|| Error::FreezeNotFound(format!("no freeze {id}")))?;
        freeze_of(row, now)
    }

    pub async fn delete_freeze(&self, caller: &Caller, id: i64) -> Result<()> {
        self.require_staff(caller)?;
        let mut tx = self.pool().begin().await?;
        let Some(f) = st::freeze(&mut *tx, id).await? else {
            return Err(Error::FreezeNotFound(format!("no freeze {id}")));
        };
        match (&f.team, &f.topic) {
            (Some(team), _) => caller.require_write("(team freeze)", team)?,
            (None, Some(topic)) => {
                let name = TopicName::parse(topic).map_err(Error::from)?;
                let t = store::topics::require(&mut tx, &name, false).await?;
                caller.require_write(&t.name, &t.owner)?;
            }
            (None, None) if !caller.is_admin() => {
                return Err(Error::Forbidden("only admins delete global freezes".into()))
            }
            _ => {}
        }
        st::delete_freeze(&mut tx, id).await?;
        let now = self.now();
        store::audit(
            &mut tx,
            now,
            &caller.who(),
            "freeze.delete",
            f.topic.as_deref(),
            json!({"freeze": id, "name": f.name}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn fmt_time(t: NaiveTime) -> String {
    t.format("%H:%M").to_string()
}
