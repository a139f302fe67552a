//! The `rollouts` table: one row holds a rollout's whole state machine record.
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use imprint_domain::{Plan, Rollout, RolloutRecord};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

pub(crate) struct RolloutRow {
    pub id: i64,
    pub topic_id: i64,
    pub version: i64,
    pub plan: Json<Plan>,
    pub state: String,
    pub reached_at: Vec<DateTime<Utc>>,
    pub next_due: Option<DateTime<Utc>>,
    pub remaining_ms: Option<i64>,
    pub pause_reason: Option<String>,
    pub ended_at: Option<DateTime<Utc>>,
    pub rolled_back: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub healthy_since: Option<DateTime<Utc>>,
    /// Why the system ended it (an automatic rollback's evidence).
    pub end_reason: Option<String>,
}

impl RolloutRow {
    /// The state machine this row holds.
    pub fn rollout(&self) -> Result<Rollout> {
        let record = RolloutRecord {
            version: self.version as u64,
            plan: self.plan.0.clone(),
            state: self.state.parse().map_err(|e| Error::Internal(format!("rollout {}: {e}", self.id)))?,
            reached_at: self.reached_at.clone(),
            next_due: self.next_due,
            remaining_ms: self.remaining_ms,
            pause_reason: self.pause_reason.clone(),
            ended_at: self.ended_at,
            rolled_back: self.rolled_back,
            healthy_since: self.healthy_since,
        };
        Rollout::from_record(record).map_err(|e| Error::Internal(format!("rollout {}: {e}", self.id)))
    }
}

/// Stores a new rollout; returns its id.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    topic_id: i64,
    r: &Rollout,
    who: &str,
    at: DateTime<Utc>,
) -> Result<i64> {
    let rec = r.to_record();
    let plan = serde_json::to_value(&rec.plan).map_err(|e| Error::Internal(format!("plan as JSON: {e}")))?;
    Ok(sqlx::query_scalar!(
        "INSERT INTO rollouts (topic_id, version, plan, state, reached_at, next_due, remaining_ms, pause_reason, ended_at,
                               rolled_back, created_by, created_at, updated_at, healthy_since)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13) RETURNING id",
        topic_id,
        rec.version as i64,
        plan,
        rec.state.as_str(),
        &rec.reached_at as _,
        rec.next_due as _,
        rec.remaining_ms,
        rec.pause_reason,
        rec.ended_at as _,
        rec.rolled_back,
        who,
        at as _,
        rec.healthy_since as _
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Stores a rollout's state after an action or a tick.
pub(crate) async fn update(conn: &mut PgConnection, id: i64, r: &Rollout, at: DateTime<Utc>) -> Result<()> {
    let rec = r.to_record();
    sqlx::query!(
        "UPDATE rollouts SET state = $2, reached_at = $3, next_due = $4, remaining_ms = $5, pause_reason = $6,
                ended_at = $7, rolled_back = $8, updated_at = $9, healthy_since = $10 WHERE id = $1",
        id,
        rec.state.as_str(),
        &rec.reached_at as _,
        rec.next_due as _,
        rec.remaining_ms,
        rec.pause_reason,
        rec.ended_at as _,
        rec.rolled_back,
        at as _,
        rec.healthy_since as _
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records why the system ended a rollout (an automatic rollback's evidence).
pub(crate) async fn set_end_reason(conn: &mut PgConnection, id: i64, reason: &str) -> Result<()> {
    sqlx::query!("UPDATE rollouts SET end_reason = $2 WHERE id = $1", id, reason).execute(&mut *conn).await?;
    Ok(())
}

/// The running and paused rollouts of a topic, locked.
pub(crate) async fn active_for_update(conn: &mut PgConnection, topic_id: i64) -> Result<Vec<RolloutRow>> {
    Ok(sqlx::query_as!(
        RolloutRow,
        r#"SELECT id, topic_id, version, plan AS "plan: Json<Plan>", state,
                  reached_at AS "reached_at: Vec<DateTime<Utc>>", next_due AS "next_due: DateTime<Utc>", remaining_ms,
                  pause_reason, ended_at AS "ended_at: DateTime<Utc>", rolled_back, created_by,
                  created_at AS "created_at: DateTime<Utc>", healthy_since AS "healthy_since: DateTime<Utc>", end_reason
           FROM rollouts WHERE topic_id = $1 AND state IN ('running', 'paused') ORDER BY id FOR UPDATE"#,
        topic_id
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// A topic's rollouts, newest first, below the id `before`.
pub(crate) async fn list<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<RolloutRow>> {
    Ok(sqlx::query_as!(
        RolloutRow,
        r#"SELECT id, topic_id, version, plan AS "plan: Json<Plan>", state,
                  reached_at AS "reached_at: Vec<DateTime<Utc>>", next_due AS "next_due: DateTime<Utc>", remaining_ms,
                  pause_reason, ended_at AS "ended_at: DateTime<Utc>", rolled_back, created_by,
                  created_at AS "created_at: DateTime<Utc>", healthy_since AS "healthy_since: DateTime<Utc>", end_reason
           FROM rollouts WHERE topic_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"#,
        topic_id,
        before,
        limit
    )
    .fetch_all(ex)
    .await?)
}

pub(crate) async fn get<'e>(ex: impl PgExecutor<'e>, topic_id: i64, id: i64) -> Result<Option<RolloutRow>> {
    Ok(sqlx::query_as!(
        RolloutRow,
        r#"SELECT id, topic_id, version, plan AS "plan: Json<Plan>", state,
                  reached_at AS "reached_at: Vec<DateTime<Utc>>", next_due AS "next_due: DateTime<Utc>", remaining_ms,
                  pause_reason, ended_at AS "ended_at: DateTime<Utc>", rolled_back, created_by,
                  created_at AS "created_at: DateTime<Utc>", healthy_since AS "healthy_since: DateTime<Utc>", end_reason
           FROM rollouts WHERE topic_id = $1 AND id = $2"#,
        topic_id,
        id
    )
    .fetch_optional(ex)
    .await?)
}

pub(crate) async fn get_for_update(conn: &mut PgConnection, topic_id: i64, id: i64) -> Result<Option<RolloutRow>> {
    Ok(sqlx::query_as!(
        RolloutRow,
        r#"SELECT id, topic_id, version, plan AS "plan: Json<Plan>", state,
                  reached_at AS "reached_at: Vec<DateTime<Utc>>", next_due AS "next_due: DateTime<Utc>", remaining_ms,
                  pause_reason, ended_at AS "ended_at: DateTime<Utc>", rolled_back, created_by,
                  created_at AS "created_at: DateTime<Utc>", healthy_since AS "healthy_since: DateTime<Utc>", end_reason
           FROM rollouts WHERE topic_id = $1 AND id = $2 FOR UPDATE"#,
        topic_id,
        id
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// A running rollout, claimed for this scheduler pass; `None` when another scheduler
/// holds it or it no longer runs.
pub(crate) async fn claim_running(conn: &mut PgConnection, id: i64) -> Result<Option<RolloutRow>> {
    Ok(sqlx::query_as!(
        RolloutRow,
        r#"SELECT id, topic_id, version, plan AS "plan: Json<Plan>", state,
                  reached_at AS "reached_at: Vec<DateTime<Utc>>", next_due AS "next_due: DateTime<Utc>", remaining_ms,
                  pause_reason, ended_at AS "ended_at: DateTime<Utc>", rolled_back, created_by,
                  created_at AS "created_at: DateTime<Utc>", healthy_since AS "healthy_since: DateTime<Utc>", end_reason
           FROM rollouts WHERE id = $1 AND state = 'running' FOR UPDATE SKIP LOCKED"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// Running rollouts that are due at `now`, or have a health gate to watch or analyses to
/// measure.
pub(crate) async fn due<'e>(ex: impl PgExecutor<'e>, now: DateTime<Utc>) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM rollouts WHERE state = 'running'
           AND (next_due <= $1 OR jsonb_path_exists(plan, '$.stages[*].gate ? (@ != null)')
                OR jsonb_path_exists(plan, '$.stages[*].analyses[*]'))
         ORDER BY next_due LIMIT 1000",
        now as _
    )
    .fetch_all(ex)
    .await?)
}

/// Is `version` of the topic being rolled out (running or paused)?
pub(crate) async fn version_active(conn: &mut PgConnection, topic_id: i64, version: i64) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM rollouts WHERE topic_id = $1 AND state IN ('running', 'paused') AND version = $2)
           AS "active!""#,
        topic_id,
        version
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// The versions of a topic that are being rolled out (running or paused).
pub(crate) async fn active_versions<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar!(
        "SELECT DISTINCT version FROM rollouts WHERE topic_id = $1 AND state IN ('running', 'paused')",
        topic_id
    )
    .fetch_all(ex)
    .await?)
}

/// Every running or paused rollout: (topic name, rollout id), oldest first.
pub(crate) async fn active_all<'e>(ex: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        "SELECT t.name, r.id FROM rollouts r JOIN topics t ON t.id = r.topic_id
         WHERE r.state IN ('running', 'paused') ORDER BY r.id LIMIT 500"
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.id)).collect())
}
