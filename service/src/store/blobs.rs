//! Which live (not rejected) versions hold a payload, by its SHA-256 (content-addressed blob URLs).
use crate::error::Result;
use sqlx::PgExecutor;

pub(crate) struct Holder {
    pub topic: String,
    pub owner: String,
    pub restricted: bool,
    pub version: i64,
}

/// Up to `limit` live versions whose payload has this SHA-256, unrestricted topics first.
pub(crate) async fn holders<'e>(ex: impl PgExecutor<'e>, sha256: &str, limit: i64) -> Result<Vec<Holder>> {
    Ok(sqlx::query_as!(
        Holder,
        r#"SELECT t.name AS topic, t.owner, t.restricted, v.version
           FROM versions v JOIN topics t ON t.id = v.topic_id
           WHERE v.sha256 = $1 AND v.purged_at IS NULL AND NOT v.rejected
           ORDER BY t.restricted, t.id, v.version DESC
           LIMIT $2"#,
        sha256,
        limit
    )
    .fetch_all(ex)
    .await?)
}
