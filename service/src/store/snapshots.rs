//! The `snapshots` table: which version each topic's object-store manifest names.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

pub(crate) struct SnapshotRow {
    pub topic_id: i64,
    pub version: i64,
    pub sha256: String,
}

pub(crate) async fn all<'e>(ex: impl PgExecutor<'e>) -> Result<Vec<SnapshotRow>> {
    Ok(sqlx::query_as!(SnapshotRow, "SELECT topic_id, version, sha256 FROM snapshots").fetch_all(ex).await?)
}

pub(crate) async fn upsert<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    version: i64,
    sha256: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO snapshots (topic_id, version, sha256, written_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (topic_id) DO UPDATE SET version = $2, sha256 = $3, written_at = $4",
        topic_id,
        version,
        sha256,
        at as _,
    )
    .execute(ex)
    .await?;
    Ok(())
}

pub(crate) async fn delete<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<()> {
    sqlx::query!("DELETE FROM snapshots WHERE topic_id = $1", topic_id).execute(ex).await?;
    Ok(())
}

/// The version a topic's current snapshot manifest names, if it has one.
pub(crate) async fn version_of<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar!("SELECT version FROM snapshots WHERE topic_id = $1", topic_id).fetch_optional(ex).await?)
}
