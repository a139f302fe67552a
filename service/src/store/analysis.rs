//! The `analysis_measurements` table: every measurement of a rollout stage's analyses.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

pub(crate) struct MeasurementRow {
    pub rollout_id: i64,
    pub stage: i32,
    pub analysis: String,
    pub taken_at: DateTime<Utc>,
    pub value: Option<f64>,
    pub verdict: String,
    pub reason: Option<String>,
}

/// One stage's measurements of a rollout, oldest first (per analysis).
pub(crate) async fn of_stage(conn: &mut PgConnection, rollout_id: i64, stage: i32) -> Result<Vec<MeasurementRow>> {
    Ok(sqlx::query_as!(
        MeasurementRow,
        r#"SELECT rollout_id, stage, analysis, taken_at AS "taken_at: DateTime<Utc>", value, verdict, reason
           FROM analysis_measurements WHERE rollout_id = $1 AND stage = $2 ORDER BY analysis, taken_at, id"#,
        rollout_id,
        stage
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// The measurements of some rollouts, oldest first (per rollout, stage and analysis).
pub(crate) async fn of_rollouts<'e>(ex: impl PgExecutor<'e>, ids: &[i64]) -> Result<Vec<MeasurementRow>> {
    Ok(sqlx::query_as!(
        MeasurementRow,
        r#"SELECT rollout_id, stage, analysis, taken_at AS "taken_at: DateTime<Utc>", value, verdict, reason
           FROM analysis_measurements WHERE rollout_id = ANY($1)
           ORDER BY rollout_id, stage, analysis, taken_at, id"#,
        ids
    )
    .fetch_all(ex)
    .await?)
}

/// Records one measurement.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert(
    conn: &mut PgConnection,
    rollout_id: i64,
    stage: i32,
    analysis: &str,
    taken_at: DateTime<Utc>,
    value: Option<f64>,
    verdict: &str,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO analysis_measurements (rollout_id, stage, analysis, taken_at, value, verdict, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        rollout_id,
        stage,
        analysis,
        taken_at as _,
        value,
        verdict,
        reason
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
