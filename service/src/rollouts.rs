//! Incremental rollouts: starting them, operator actions, and the durable scheduler that
//! adds each stage's scope when it is due. The state machine itself is pure
//! (`imprint_domain::Rollout`); this module stores it, applies its effects in the same
//! transaction, and feeds health gates from the consumer audit.
use crate::audit_log::audit;
use crate::error::{Error, Result};
use crate::pins::replace_pin;
use crate::topics::require_live_version;
use crate::versions::insert_scopes;
use crate::{notify, Caller, Imprint};
use chrono::{DateTime, Duration, Utc};
use imprint_domain::{
    Effect, GateReading, Plan, Rollout, RolloutAction, RolloutError, RolloutRecord, RolloutState, RolloutView, Selector,
};
use serde::Serialize;
use serde_json::json;
use sqlx::{Postgres, Transaction};
use utoipa::ToSchema;

/// A rollout as the API returns it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RolloutInfo {
    pub id: i64,
    pub topic: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub view: RolloutView,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// How a rollout is asked for: an inline plan or the name of one of the topic's plans.
#[derive(Clone, Debug)]
pub enum PlanChoice {
    Inline(Plan),
    Named(String),
}

/// Consumers seen within this window count for health gates.
const GATE_WINDOW_SECS: i64 = 300;

type RolloutRow = (
    i64,
    i64,
    sqlx::types::Json<Plan>,
    String,
    Vec<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
    bool,
    String,
    DateTime<Utc>,
    i64,
);
const ROLLOUT_COLUMNS: &str = "id, version, plan, state, reached_at, next_due, remaining_ms, pause_reason, ended_at,
    rolled_back, created_by, created_at, topic_id";

fn rollout_of(r: &RolloutRow) -> Result<Rollout> {
    let record = RolloutRecord {
        version: r.1 as u64,
        plan: r.2 .0.clone(),
        state: r.3.parse().map_err(|e| Error::Internal(format!("rollout {}: {e}", r.0)))?,
        reached_at: r.4.clone(),
        next_due: r.5,
        remaining_ms: r.6,
        pause_reason: r.7.clone(),
        ended_at: r.8,
        rolled_back: r.9,
    };
    Rollout::from_record(record).map_err(|e| Error::Internal(format!("rollout {}: {e}", r.0)))
}

fn info_of(topic: &str, r: &RolloutRow, rollout: &Rollout) -> RolloutInfo {
    RolloutInfo { id: r.0, topic: topic.to_owned(), view: rollout.view(), created_by: r.10.clone(), created_at: r.11 }
}

impl From<RolloutError> for Error {
    fn from(e: RolloutError) -> Self {
        Error::InvalidState(e.to_string())
    }
}

async fn db_now(tx: &mut Transaction<'_, Postgres>) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(&mut **tx).await?)
}

/// Stores the rollout's state (after an action or tick).
async fn store(tx: &mut Transaction<'_, Postgres>, id: i64, r: &Rollout, now: DateTime<Utc>) -> Result<()> {
    let rec = r.to_record();
    sqlx::query(
        "UPDATE rollouts SET state = $2, reached_at = $3, next_due = $4, remaining_ms = $5, pause_reason = $6,
                ended_at = $7, rolled_back = $8, updated_at = $9 WHERE id = $1",
    )
    .bind(id)
    .bind(rec.state.as_str())
    .bind(&rec.reached_at)
    .bind(rec.next_due)
    .bind(rec.remaining_ms)
    .bind(&rec.pause_reason)
    .bind(rec.ended_at)
    .bind(rec.rolled_back)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
async fn apply_effects(
    tx: &mut Transaction<'_, Postgres>,
    cx: &EffectCtx<'_>,
    effects: &[Effect],
    r: &Rollout,
) -> Result<()> {
    let rollout_id = cx.rollout_id;
    for e in effects {
        match e {
            Effect::AddScope { selector, version, stage } => {
                let added =
                    insert_scopes(tx, cx.topic_id, *version as i64, std::slice::from_ref(selector), cx.now, cx.who)
                        .await?;
                let details = json!({
                    "id": rollout_id,
                    "version": version,
                    "stage": stage + 1,
                    "selector": selector.to_string(),
                    // false: the version had this scope already (e.g. from its publish)
                    "scope_added": added > 0,
                    "state": r.state().as_str(),
                });
                audit(tx, cx.actor, "rollout.stage", Some(cx.topic), details).await?;
                metrics::counter!("imprint_rollout_stages_total").increment(1);
                tracing::info!(rollout_id, stage = stage + 1, %selector, version, "rollout stage reached");
            }
            Effect::Pin { selector, version, stage } => {
                let reason = format!("rollback of rollout #{rollout_id} (stage {})", stage + 1);
                let replaced = replace_pin(tx, cx.topic_id, selector, *version, &reason, cx.who, cx.now).await?;
                let details = json!({
                    "selector": selector.to_string(),
                    "version": version,
                    "reason": reason,
                    "replaced": replaced,
                    "rollout": rollout_id,
                });
                audit(tx, cx.actor, "pin.set", Some(cx.topic), details).await?;
            }
        }
    }
    Ok(())
}

/// Supersedes any active rollout of the topic: version `by_version` is being published.
pub(crate) async fn supersede_active(
    tx: &mut Transaction<'_, Postgres>,
    topic_id: i64,
    topic: &str,
    by_version: u64,
    now: DateTime<Utc>,
    who: &str,
) -> Result<()> {
    let rows: Vec<RolloutRow> = sqlx::query_as(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE topic_id = $1 AND state IN ('running', 'paused') FOR UPDATE"
    ))
    .bind(topic_id)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let mut r = rollout_of(&row)?;
        r.supersede(now)?;
        store(tx, row.0, &r, now).await?;
        let details =
            json!({"id": row.0, "version": r.version(), "by_version": by_version, "state": r.state().as_str()});
        audit(tx, who, "rollout.supersede", Some(topic), details).await?;
    }
    Ok(())
}

impl Imprint {
    /// Resolves a plan choice against the topic's named plans.
    async fn plan_for(&self, tx: &mut Transaction<'_, Postgres>, topic_id: i64, choice: PlanChoice) -> Result<Plan> {
        match choice {
            PlanChoice::Inline(p) => Ok(p),
            PlanChoice::Named(name) => {
                let plan: Option<serde_json::Value> =
                    sqlx::query_scalar("SELECT plans -> $2 FROM topics WHERE id = $1")
                        .bind(topic_id)
                        .bind(&name)
                        .fetch_one(&mut **tx)
                        .await?;
                let plan = plan.ok_or_else(|| Error::invalid(format!("the topic has no plan named {name:?}")))?;
                serde_json::from_value(plan).map_err(|e| Error::Internal(format!("stored plan {name:?}: {e}")))
            }
        }
    }

    /// Starts a rollout inside a transaction that holds the topic row lock. Returns its id.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_rollout_tx(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        topic_id: i64,
        topic: &str,
        version: u64,
        choice: PlanChoice,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let plan = self.plan_for(tx, topic_id, choice).await?;
        supersede_active(tx, topic_id, topic, version, now, who).await?;
        let stages = serde_json::to_value(plan.stages()).map_err(|e| Error::Internal(format!("plan as JSON: {e}")))?;
        let (rollout, effects) = Rollout::start(version, plan, now);
        let rec = rollout.to_record();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rollouts (topic_id, version, plan, state, reached_at, next_due, remaining_ms, pause_reason, ended_at,
                                   rolled_back, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) RETURNING id",
        )
        .bind(topic_id)
        .bind(version as i64)
        .bind(sqlx::types::Json(&rec.plan))
        .bind(rec.state.as_str())
        .bind(&rec.reached_at)
        .bind(rec.next_due)
        .bind(rec.remaining_ms)
        .bind(&rec.pause_reason)
        .bind(rec.ended_at)
        .bind(rec.rolled_back)
        .bind(who)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        audit(tx, who, "rollout.start", Some(topic), json!({"id": id, "version": version, "stages": stages})).await?;
        let cx = EffectCtx { topic_id, topic, rollout_id: id, who, actor: who, now };
        apply_effects(tx, &cx, &effects, &rollout).await?;
        metrics::counter!("imprint_rollouts_started_total").increment(1);
        Ok(id)
    }

    /// Rolls out the topic's newest version with the given plan.
    #[tracing::instrument(skip(self, choice))]
    pub async fn start_rollout(
        &self,
        caller: &Caller,
        topic: &str,
        version: u64,
        choice: PlanChoice,
    ) -> Result<RolloutInfo> {
        let mut tx = self.pool().begin().await?;
        let t = self.topic_ref(&mut *tx, topic).await?;
        caller.require_write(&t.name, &t.owner)?;
        let latest: i64 = sqlx::query_scalar("SELECT latest_version FROM topics WHERE id = $1 FOR UPDATE")
            .bind(t.id)
            .fetch_one(&mut *tx)
            .await?;
        require_live_version(&mut tx, &t, version).await?;
        if version as i64 != latest {
            return Err(Error::InvalidState(format!(
                "only the newest version ({latest}) of {} can be rolled out, not {version}",
                t.name
            )));
        }
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM rollouts WHERE topic_id = $1 AND state IN ('running', 'paused') AND version = $2",
        )
        .bind(t.id)
        .bind(version as i64)
        .fetch_optional(&mut *tx)
        .await?;
        if active.is_some() {
            return Err(Error::InvalidState(format!("version {version} of {} is being rolled out already", t.name)));
        }
        let now = db_now(&mut tx).await?;
        let id = self.start_rollout_tx(&mut tx, t.id, &t.name, version, choice, &caller.who(), now).await?;
        notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        self.rollout(&t.name, id).await
    }

    pub async fn rollouts(&self, topic: &str) -> Result<Vec<RolloutInfo>> {
        let t = self.topic_ref(self.pool(), topic).await?;
        let rows: Vec<RolloutRow> = sqlx::query_as(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE topic_id = $1 ORDER BY id DESC LIMIT 500"
        ))
        .bind(t.id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok(info_of(&t.name, r, &rollout_of(r)?))).collect()
    }

    pub async fn rollout(&self, topic: &str, id: i64) -> Result<RolloutInfo> {
        let t = self.topic_ref(self.pool(), topic).await?;
        let row: Option<RolloutRow> =
            sqlx::query_as(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE topic_id = $1 AND id = $2"))
                .bind(t.id)
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        let row = row.ok_or_else(|| Error::RolloutNotFound { topic: t.name.clone(), id })?;
        Ok(info_of(&t.name, &row, &rollout_of(&row)?))
    }

    /// How the consumers matching a stage are doing with a version (what its gate reads).
    pub async fn stage_health(&self, topic: &str, selector: &Selector, version: u64) -> Result<GateReading> {
        let t = self.topic_ref(self.pool(), topic).await?;
        gate_reading(self.pool(), t.id, selector, version, Utc::now()).await
    }

    /// An operator action: pause, resume, advance, complete or cancel (optionally rolling back).
    #[tracing::instrument(skip(self))]
    pub async fn rollout_action(
        &self,
        caller: &Caller,
        topic: &str,
        id: i64,
        action: RolloutAction,
        rollback: bool,
    ) -> Result<RolloutInfo> {
        let mut tx = self.pool().begin().await?;
        let t = self.topic_ref(&mut *tx, topic).await?;
        caller.require_write(&t.name, &t.owner)?;
        let row: Option<RolloutRow> = sqlx::query_as(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE topic_id = $1 AND id = $2 FOR UPDATE"
        ))
        .bind(t.id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or_else(|| Error::RolloutNotFound { topic: t.name.clone(), id })?;
        let mut r = rollout_of(&row)?;
        let now = db_now(&mut tx).await?;
        let who = caller.who();
        let effects = match action {
            RolloutAction::Pause => r.pause(now, Some(format!("paused by {who}")))?,
            RolloutAction::Resume => r.resume(now)?,
            RolloutAction::Advance => r.advance(now)?,
            RolloutAction::Complete => r.complete(now)?,
            RolloutAction::Cancel => {
                // What each selector resolved to just before the rollout started.
                let serving = self.state().get(&t.name);
                let before = r.started_at() - Duration::microseconds(1);
                r.cancel(now, rollback, |sel: &Selector| {
                    serving.as_ref().and_then(|s| s.history.resolve_at(&sel.as_labels(), before)).map(|res| res.version)
                })?
            }
            RolloutAction::Supersede => return Err(Error::invalid("supersede is not an operator action")),
        };
        let cx = EffectCtx { topic_id: t.id, topic: &t.name, rollout_id: id, who: &who, actor: &who, now };
        apply_effects(&mut tx, &cx, &effects, &r).await?;
        store(&mut tx, id, &r, now).await?;
        let details = json!({
            "id": id,
            "version": r.version(),
            "rollback": rollback && action == RolloutAction::Cancel,
            "state": r.state().as_str(),
            "reached": r.reached(),
        });
        audit(&mut tx, &who, &format!("rollout.{}", action.as_str()), Some(&t.name), details).await?;
        notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_rollout_actions_total", "action" => action.as_str()).increment(1);
        Ok(info_of(&t.name, &row, &r))
    }

    /// One scheduler pass: every running rollout that is due (or has a health gate to
    /// watch) is ticked in its own transaction. Rows are claimed with SKIP LOCKED, and the
    /// new state is stored with the scopes it adds, so several schedulers never add a
    /// stage twice. Returns the number of stages reached.
    pub async fn tick_rollouts(&self) -> Result<usize> {
        let candidates: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM rollouts WHERE state = 'running'
               AND (next_due <= now() OR jsonb_path_exists(plan, '$.stages[*].gate ? (@ != null)'))
             ORDER BY next_due LIMIT 1000",
        )
        .fetch_all(self.pool())
        .await?;
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
        let row: Option<RolloutRow> = sqlx::query_as(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1 AND state = 'running' FOR UPDATE SKIP LOCKED"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(0) };
        let topic_id = row.12;
        let mut r = rollout_of(&row)?;
        let now = db_now(&mut tx).await?;
        let reading = match r.gated_stage() {
            Some(stage) => {
                let selector = r.plan().stages()[stage].selector.clone();
                Some((stage, gate_reading(&mut *tx, topic_id, &selector, r.version(), now).await?))
            }
            None => None,
        };
        let before = r.clone();
        let effects = r.tick(now, |stage| reading.as_ref().filter(|(s, _)| *s == stage).map(|(_, g)| *g))?;
        if r == before {
            return Ok(0);
        }
        let topic: String =
            sqlx::query_scalar("SELECT name FROM topics WHERE id = $1").bind(topic_id).fetch_one(&mut *tx).await?;
        // Scopes say which rollout added them; the audit says the server did it.
        let stamp = format!("rollout #{id}");
        let actor = Caller::System.who();
        let cx = EffectCtx { topic_id, topic: &topic, rollout_id: id, who: &stamp, actor: &actor, now };
        apply_effects(&mut tx, &cx, &effects, &r).await?;
        store(&mut tx, id, &r, now).await?;
        if before.state() == RolloutState::Running && r.state() == RolloutState::Paused {
            let details = json!({
                "id": id,
                "version": r.version(),
                "stage": r.current_stage() + 1,
                "reason": r.pause_reason(),
                "state": r.state().as_str(),
            });
            audit(&mut tx, &actor, "rollout.auto_pause", Some(&topic), details).await?;
        }
        notify(&mut tx, topic_id).await?;
        tx.commit().await?;
        if let Some(reason) = r.pause_reason() {
            tracing::warn!(rollout_id = id, reason, "rollout paused itself");
        }
        self.refresh_topic(topic_id).await;
        Ok(effects.len())
    }

    /// Runs the scheduler until shutdown: a pass every `every` (stages land within that
    /// much of their due time).
    pub(crate) async fn rollout_loop(self, every: std::time::Duration) {
        let mut stop = self.stopping();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.tick_rollouts().await {
                tracing::debug!(error = %e, "rollout scheduler pass failed");
            }
        }
    }
}

/// Health of a stage from the consumer audit: consumers matching the stage's selector
/// seen recently, how many hold (or applied) the version, how many failed to apply it.
async fn gate_reading<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    topic_id: i64,
    selector: &Selector,
    version: u64,
    now: DateTime<Utc>,
) -> Result<GateReading> {
    let (matching, applied, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE version = $3 OR (last_applied_version = $3 AND last_applied_ok)),
                count(*) FILTER (WHERE last_applied_version = $3 AND last_applied_ok = false)
         FROM consumers WHERE topic_id = $1 AND labels @> $2 AND last_seen > $4",
    )
    .bind(topic_id)
    .bind(selector.to_json())
    .bind(version as i64)
    .bind(now - Duration::seconds(GATE_WINDOW_SECS))
    .fetch_one(ex)
    .await?;
    Ok(GateReading { matching: matching as u64, applied: applied as u64, failed: failed as u64 })
}
