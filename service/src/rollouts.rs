//! Incremental rollouts: starting them, operator actions, and the durable scheduler that
//! adds each stage's scope when it is due. The state machine itself is pure
//! (`imprint_domain::Rollout`); this module stores it, applies its effects in the same
//! transaction, and feeds health gates from the consumer audit.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{Page, PlanChoice, RolloutInfo};
use crate::release_gate::{self, Gate, Holds};
use crate::store::analysis::MeasurementRow;
use crate::store::rollouts::RolloutRow;
use crate::{cursor, store};
use chrono::{DateTime, Duration, Utc};
use imprint_domain::{Effect, GateReading, Plan, Rollout, RolloutAction, RolloutState, Selector, TopicName};
use serde_json::{json, Value};
use sqlx::PgConnection;

/// Consumers seen within this window count for health gates.
const GATE_WINDOW_SECS: i64 = 300;

fn info_of(topic: &str, r: &RolloutRow, rollout: &Rollout, measurements: &[MeasurementRow]) -> RolloutInfo {
    let mine: Vec<&MeasurementRow> = measurements.iter().filter(|m| m.rollout_id == r.id).collect();
    RolloutInfo {
        analysis: crate::analysis::runs_of(rollout.plan(), &mine),
        id: r.id,
        topic: topic.to_owned(),
        view: rollout.view(),
        created_by: r.created_by.clone(),
        created_at: r.created_at,
        end_reason: r.end_reason.clone(),
    }
}

/// Where a rollout's effects are applied and by whom: `who` stamps the scopes and pins
/// (`added_by`, `created_by`), `actor` is the audit log's actor.
struct EffectCtx<'a> {
    topic_id: i64,
    topic: &'a str,
    rollout_id: i64,
    who: &'a str,
    actor: &'a str,
    now: DateTime<Utc>,
}

/// Applies what the state machine asked for, in the transaction that stores its state:
/// reaching a stage is adding a scope, exactly like an operator would, and each effect
/// is audited like the operator action it stands for. `r` is the rollout after the step.
async fn apply_effects(conn: &mut PgConnection, cx: &EffectCtx<'_>, effects: &[Effect], r: &Rollout) -> Result<()> {
    let rollout_id = cx.rollout_id;
    for e in effects {
        match e {
            Effect::AddScope { selector, version, stage } => {
                let added = store::versions::insert_scopes(
                    conn,
                    cx.topic_id,
                    *version as i64,
                    std::slice::from_ref(selector),
                    cx.now,
                    cx.who,
                )
                .await?;
                let details = json!({
                    "id": rollout_id,
                    "version": version,
                    "stage": stage + 1,
                    // the plan's stage count: `stage == of` is the last (webhooks' rollout.completed)
                    "of": r.plan().stage_count(),
                    "selector": selector.to_string(),
                    // false: the version had this scope already (e.g. from its publish)
                    "scope_added": added > 0,
                    "state": r.state().as_str(),
                });
                store::audit(conn, cx.now, cx.actor, "rollout.stage", Some(cx.topic), details).await?;
                metrics::counter!("imprint_rollout_stages_total").increment(1);
                tracing::info!(rollout_id, stage = stage + 1, %selector, version, "rollout stage reached");
            }
            Effect::Pin { selector, version, stage } => {
                // The same path as an operator's pin: the topic row is locked by the
                // caller, and the replaced pin is recorded.
                let reason = format!("rollback of rollout #{rollout_id} (stage {})", stage + 1);
                let replaced =
                    store::pins::replace(conn, cx.topic_id, selector, *version as i64, &reason, cx.who, cx.now, None)
                        .await?;
                let details = json!({
                    "selector": selector.to_string(),
                    "version": version,
                    "reason": reason,
                    "replaced": replaced,
                    "rollout": rollout_id,
                });
                store::audit(conn, cx.now, cx.actor, "pin.set", Some(cx.topic), details).await?;
            }
        }
    }
    Ok(())
}

/// Supersedes any active rollout of the topic: version `by_version` is being published.
pub(crate) async fn supersede_active(
    conn: &mut PgConnection,
    topic_id: i64,
    topic: &str,
    by_version: u64,
    now: DateTime<Utc>,
    who: &str,
) -> Result<()> {
    for row in store::rollouts::active_for_update(conn, topic_id).await? {
        let mut r = row.rollout()?;
        r.supersede(now)?;
        store::rollouts::update(conn, row.id, &r, now).await?;
        let details =
            json!({"id": row.id, "version": r.version(), "by_version": by_version, "state": r.state().as_str()});
        store::audit(conn, now, who, "rollout.supersede", Some(topic), details).await?;
    }
    Ok(())
}

/// Resolves a plan choice against the topic's named plans.
async fn plan_for(conn: &mut PgConnection, topic_id: i64, choice: PlanChoice) -> Result<Plan> {
    match choice {
        PlanChoice::Inline(p) => Ok(p),
        PlanChoice::Named(name) => {
            let plan = store::topics::plan(conn, topic_id, &name)
                .await?
                .ok_or_else(|| Error::invalid(format!("the topic has no plan named {name:?}")))?;
            serde_json::from_value(plan).map_err(|e| Error::Internal(format!("stored plan {name:?}: {e}")))
        }
    }
}

/// Starts a rollout inside a transaction that holds the topic row lock. Returns its id.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_tx(
    conn: &mut PgConnection,
    topic_id: i64,
    topic: &str,
    version: u64,
    choice: PlanChoice,
    who: &str,
    now: DateTime<Utc>,
    has_prometheus: bool,
) -> Result<i64> {
    let plan = plan_for(conn, topic_id, choice).await?;
    crate::analysis::require_prometheus(has_prometheus, &plan)?;
    supersede_active(conn, topic_id, topic, version, now, who).await?;
    let stages = serde_json::to_value(plan.stages()).map_err(|e| Error::Internal(format!("plan as JSON: {e}")))?;
    let (rollout, effects) = Rollout::start(version, plan, now);
    let id = store::rollouts::insert(conn, topic_id, &rollout, who, now).await?;
    store::audit(conn, now, who, "rollout.start", Some(topic), json!({"id": id, "version": version, "stages": stages}))
        .await?;
    let cx = EffectCtx { topic_id, topic, rollout_id: id, who, actor: who, now };
    apply_effects(conn, &cx, &effects, &rollout).await?;
    metrics::counter!("imprint_rollouts_started_total").increment(1);
    Ok(id)
}

impl Imprint {
    /// Rolls out the topic's newest version with the given plan.
    #[tracing::instrument(skip(self, choice))]
    pub async fn start_rollout(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: imprint_domain::VersionNumber,
        choice: PlanChoice,
    ) -> Result<RolloutInfo> {
        self.start_rollout_gated(caller, topic, version, choice, Gate::default()).await
    }

    /// `start_rollout` through the release gate (a freeze or a review rule holds it),
    /// applying the change request `gate.request` or breaking glass.
    pub(crate) async fn start_rollout_gated(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: imprint_domain::VersionNumber,
        choice: PlanChoice,
        gate: Gate,
    ) -> Result<RolloutInfo> {
        let version = version.get();
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        store::versions::require_live(&mut tx, &t, version).await?;
        if version as i64 != t.latest_version {
            return Err(Error::InvalidState(format!(
                "only the newest version ({}) of {} can be rolled out, not {version}",
                t.latest_version, t.name
            )));
        }
        if store::rollouts::version_active(&mut tx, t.id, version as i64).await? {
            return Err(Error::InvalidState(format!("version {version} of {} is being rolled out already", t.name)));
        }
        let now = self.now();
        release_gate::check(&mut tx, t.id, &t.name, &t.owner, caller, &gate, Holds::FreezeAndReview, now).await?;
        let who = caller.who();
        let has_prometheus = self.config().prometheus.is_some();
        let id = start_tx(&mut tx, t.id, &t.name, version, choice, &who, now, has_prometheus).await?;
        let marks = json!({"rollout": id});
        release_gate::finish(&mut tx, &t.name, &gate, "rollout", Some(version as i64), &who, now, marks).await?;
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        self.rollout(caller, topic, id).await
    }

    /// A topic's rollouts, newest first, a page at a time.
    pub async fn rollouts(
        &self,
        caller: &Caller,
        topic: &TopicName,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<RolloutInfo>> {
        let limit = cursor::limit(limit)?;
        let before = cursor.map(cursor::decode).transpose()?;
        let t = self.readable_topic(caller, topic).await?;
        let rows = store::rollouts::list(self.pool(), t.id, before, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = if more { rows.last().map(|r| cursor::encode(r.id)) } else { None };
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let measurements = store::analysis::of_rollouts(self.pool(), &ids).await?;
        let items =
            rows.iter().map(|r| Ok(info_of(&t.name, r, &r.rollout()?, &measurements))).collect::<Result<_>>()?;
        Ok(Page { items, next })
    }

    pub async fn rollout(&self, caller: &Caller, topic: &TopicName, id: i64) -> Result<RolloutInfo> {
        let t = self.readable_topic(caller, topic).await?;
        let row = store::rollouts::get(self.pool(), t.id, id)
            .await?
            .ok_or_else(|| Error::RolloutNotFound { topic: t.name.clone(), id })?;
        let measurements = store::analysis::of_rollouts(self.pool(), &[id]).await?;
        Ok(info_of(&t.name, &row, &row.rollout()?, &measurements))
    }

    /// How the consumers matching a stage are doing with a version (what its gate reads).
    pub async fn stage_health(
        &self,
        caller: &Caller,
        topic: &TopicName,
        selector: &Selector,
        version: u64,
    ) -> Result<GateReading> {
        let t = self.readable_topic(caller, topic).await?;
        gate_reading(self.pool(), t.id, selector, version, self.now(), t.anonymous_reports).await
    }

    /// An operator action: pause, resume, advance, complete or cancel (optionally rolling back).
    #[tracing::instrument(skip(self))]
    pub async fn rollout_action(
        &self,
        caller: &Caller,
        topic: &TopicName,
        id: i64,
        action: RolloutAction,
        rollback: bool,
    ) -> Result<RolloutInfo> {
        let mut tx = self.pool().begin().await?;
        // The topic row lock first (as publish and pin take it), then the rollout's.
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let row = store::rollouts::get_for_update(&mut tx, t.id, id)
            .await?
            .ok_or_else(|| Error::RolloutNotFound { topic: t.name.clone(), id })?;
        let mut r = row.rollout()?;
        let now = self.now();
        let who = caller.who();
        let effects = match action {
            RolloutAction::Pause => r.pause(now, Some(format!("paused by {who}")))?,
            RolloutAction::Resume => r.resume(now)?,
            RolloutAction::Advance => r.advance(now)?,
            RolloutAction::Complete => r.complete(now)?,
            RolloutAction::Cancel => self.cancel_effects(&mut tx, t.id, &mut r, now, rollback).await?,
            RolloutAction::Supersede => return Err(Error::invalid("supersede is not an operator action")),
        };
        let cx = EffectCtx { topic_id: t.id, topic: &t.name, rollout_id: id, who: &who, actor: &who, now };
        apply_effects(&mut tx, &cx, &effects, &r).await?;
        store::rollouts::update(&mut tx, id, &r, now).await?;
        let details = json!({
            "id": id,
            "version": r.version(),
            "rollback": rollback && action == RolloutAction::Cancel,
            "state": r.state().as_str(),
            "reached": r.reached(),
        });
        store::audit(&mut tx, now, &who, &format!("rollout.{}", action.as_str()), Some(&t.name), details).await?;
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_rollout_actions_total", "action" => action.as_str()).increment(1);
        let measurements = store::analysis::of_rollouts(self.pool(), &[id]).await?;
        Ok(info_of(&t.name, &row, &r, &measurements))
    }

    /// Cancels `r` (on a copy: `r` changes only if it works); with `rollback`, the pins
    /// back onto what each reached selector resolved to just before the rollout started.
    async fn cancel_effects(
        &self,
        tx: &mut sqlx::PgConnection,
        topic_id: i64,
        r: &mut Rollout,
        now: DateTime<Utc>,
        rollback: bool,
    ) -> Result<Vec<Effect>> {
        let mut next = r.clone();
        // What each selector resolved to just before the rollout started.
        let history = self.history_of(tx, topic_id).await?;
        let before = next.started_at() - Duration::microseconds(1);
        let effects = next.cancel(now, rollback, |sel: &Selector| {
            history.resolve_at(&sel.as_labels(), before).map(|res| res.version)
        })?;
        // A rollback never pins consumers onto a payload retention has deleted.
        for e in &effects {
            if let Effect::Pin { selector, version, .. } = e {
                if history.versions.get(version).is_none_or(|v| v.purged_at.is_some()) {
                    return Err(Error::InvalidState(format!(
                        "cannot roll back: {selector} held version {version} before the rollout, and it has been purged by retention; cancel without rollback, or pin a live version"
                    )));
                }
            }
        }
        *r = next;
        Ok(effects)
    }

    /// One scheduler pass: every running rollout that is due (or has a health gate to
    /// watch) is ticked in its own transaction. Rows are claimed with SKIP LOCKED, and the
    /// new state is stored with the scopes it adds, so several schedulers never add a
    /// stage twice. Returns the number of stages reached.
    pub async fn tick_rollouts(&self) -> Result<usize> {
        let candidates = store::rollouts::due(self.pool(), self.now()).await?;
        let mut reached = 0;
        for id in candidates {
            match self.tick_one(id).await {
                Ok(n) => reached += n,
                Err(e) => tracing::warn!(rollout_id = id, error = %e, "rollout tick failed"),
            }
        }
        Ok(reached)
    }

    async fn tick_one(&self, id: i64) -> Result<usize> {
        let mut tx = self.pool().begin().await?;
        let Some(row) = store::rollouts::claim_running(&mut tx, id).await? else { return Ok(0) };
        let topic_id = row.topic_id;
        let mut r = row.rollout()?;
        let now = self.now();
        // The current stage's analyses: measured when due, under this row's lock (before
        // the topic's: a slow Prometheus holds up this rollout, not the topic's publishes
        // and pins).
        let topic = store::topics::name_of(&mut tx, topic_id).await?;
        let analysis =
            crate::analysis::measure_stage(&mut tx, self.config().prometheus.as_ref(), id, &topic, &r, now).await?;
        let measured = analysis.as_ref().is_some_and(|a| a.measured);
        if !store::topics::try_lock(&mut tx, topic_id).await? {
            // A publish or an operator is changing the topic: next pass (keeping what was
            // measured).
            if measured {
                tx.commit().await?;
            }
            return Ok(0);
        }
        let reading = match r.gated_stage() {
            Some(stage) => {
                let selector = r.plan().stages()[stage].selector.clone();
                let anonymous = store::topics::anonymous_reports(&mut tx, topic_id).await?;
                Some((stage, gate_reading(&mut *tx, topic_id, &selector, r.version(), now, anonymous).await?))
            }
            None => None,
        };
        let analysis_stage = r.current_stage();
        let before = r.clone();
        let mut effects = r.tick_analysed(
            now,
            |stage| reading.as_ref().filter(|(s, _)| *s == stage).map(|(_, g)| *g),
            |stage| analysis.as_ref().filter(|_| stage == analysis_stage).map(|a| a.gate.clone()),
        )?;
        // An inconclusive analysis under `inconclusive: pause` pauses the stage with its
        // reason; no failure policy applies to it (an operator decides).
        let mut inconclusive_pause = false;
        if let Some(why) = analysis.as_ref().and_then(|a| a.pause.clone()) {
            if r.state() == RolloutState::Running && r.current_stage() == analysis_stage {
                let stage = &r.plan().stages()[analysis_stage];
                let reason = format!("stage {} ({}): {why}", analysis_stage + 1, stage.selector);
                effects.extend(r.pause(now, Some(reason))?);
                inconclusive_pause = true;
            }
        }
        if r == before {
            if measured {
                tx.commit().await?;
            }
            return Ok(0);
        }
        // A failing gate pauses the rollout; if the plan (or else the topic) says
        // `on_failure: rollback`, it is cancelled and rolled back instead (docs/validation.md).
        let auto_paused =
            before.state() == RolloutState::Running && r.state() == RolloutState::Paused && !inconclusive_pause;
        let mut rolled_back: Option<(String, Vec<Effect>)> = None;
        if auto_paused {
            let policy = match r.plan().on_failure() {
                Some(p) => p,
                None => store::checks::settings(&mut *tx, topic_id).await?.on_failure,
            };
            if policy == imprint_domain::checks::OnFailure::Rollback {
                let reason = r.pause_reason().unwrap_or_default().to_owned();
                match self.cancel_effects(&mut tx, topic_id, &mut r, now, true).await {
                    Ok(pins) => {
                        effects.extend(pins.iter().cloned());
                        rolled_back = Some((reason, pins));
                    }
                    // It stays paused, with the failure's reason: an operator decides.
                    Err(e) => tracing::warn!(rollout_id = id, error = %e, "automatic rollback refused; paused"),
                }
            }
        }
        // Scopes say which rollout added them; the audit says the server did it.
        let stamp = format!("rollout #{id}");
        let actor = Caller::System.who();
        let cx = EffectCtx { topic_id, topic: &topic, rollout_id: id, who: &stamp, actor: &actor, now };
        apply_effects(&mut tx, &cx, &effects, &r).await?;
        store::rollouts::update(&mut tx, id, &r, now).await?;
        if let Some((reason, pins)) = &rolled_back {
            let stage = before.current_stage().max(r.current_stage());
            let pinned: Vec<Value> = pins
                .iter()
                .filter_map(|e| match e {
                    Effect::Pin { selector, version, .. } => {
                        Some(json!({"selector": selector.to_json(), "version": version}))
                    }
                    _ => None,
                })
                .collect();
            let details = json!({
                "id": id,
                "version": r.version(),
                "stage": stage + 1,
                "reason": reason,
                "reading": reading.as_ref().map(|(_, g)| g),
                "analysis": analysis.as_ref().map(|a| &a.evidence),
                "pins": pinned,
                "rollback": true,
                "state": r.state().as_str(),
                "reached": r.reached(),
            });
            store::rollouts::set_end_reason(&mut tx, id, &format!("rolled back automatically: {reason}")).await?;
            store::audit(&mut tx, now, &actor, "rollout.auto_rollback", Some(&topic), details).await?;
            tracing::warn!(rollout_id = id, reason, "rollout rolled back automatically");
        } else if before.state() == RolloutState::Running && r.state() == RolloutState::Paused {
            let details = json!({
                "id": id,
                "version": r.version(),
                "stage": r.current_stage() + 1,
                "reason": r.pause_reason(),
                "analysis": analysis.as_ref().map(|a| &a.evidence),
                "state": r.state().as_str(),
            });
            store::audit(&mut tx, now, &actor, "rollout.auto_pause", Some(&topic), details).await?;
        }
        store::notify(&mut tx, topic_id).await?;
        tx.commit().await?;
        if let Some(reason) = r.pause_reason() {
            tracing::warn!(rollout_id = id, reason, "rollout paused itself");
        }
        self.refresh_topic(topic_id).await;
        Ok(effects.len())
    }
}

/// Health of a stage from the consumer audit: consumers matching the stage's selector
/// seen recently, how many hold (or applied) the version, how many failed to apply it.
/// Only authenticated consumers count, unless the topic allows anonymous reports: anyone
/// can post a poll, and made-up nodes must not pause or widen a rollout.
async fn gate_reading<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    topic_id: i64,
    selector: &Selector,
    version: u64,
    now: DateTime<Utc>,
    count_anonymous: bool,
) -> Result<GateReading> {
    let since = now - Duration::seconds(GATE_WINDOW_SECS);
    let (matching, applied, failed, reporting) =
        store::consumers::gate_counts(ex, topic_id, selector.to_json(), version as i64, since, count_anonymous).await?;
    Ok(GateReading {
        matching: matching as u64,
        applied: applied as u64,
        failed: failed as u64,
        reporting: reporting as u64,
    })
}
