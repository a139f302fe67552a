//! The `stray_objects` table: objects that go unless a committed version claims them.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// Records that `key` of a region (`""`: the home region) must be deleted after `delete_after`
/// unless claimed first.
pub(crate) async fn mark_in<'e>(
    ex: impl PgExecutor<'e>,
    region: &str,
    key: &str,
    delete_after: DateTime<Utc>,
    reason: &str,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO stray_objects (region, key, delete_after, reason) VALUES ($1, $2, $3, $4)
         ON CONFLICT (region, key) DO UPDATE SET delete_after = LEAST(stray_objects.delete_after, EXCLUDED.delete_after)",
        region,
        key,
        delete_after as _,
        reason
    )
    .execute(ex)
    .await?;
    Ok(())
}

/// Forgets stray rows of one region (a version claims them, or they are gone).
pub(crate) async fn unmark_in<'e>(ex: impl PgExecutor<'e>, region: &str, keys: &[String]) -> Result<()> {
    sqlx::query!("DELETE FROM stray_objects WHERE region = $1 AND key = ANY($2)", region, keys).execute(ex).await?;
    Ok(())
}

/// Up to `limit` stray objects that are due, locked for this transaction (another sweeper
/// skips them).
/// Returns (region, key); region `""` is the home region.
pub(crate) async fn due(conn: &mut PgConnection, now: DateTime<Utc>, limit: i64) -> Result<Vec<(String, String)>> {
    let rows = sqlx::query!(
        "SELECT region, key FROM stray_objects WHERE delete_after <= $1 ORDER BY delete_after
         LIMIT $2 FOR UPDATE SKIP LOCKED",
        now as _,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.region, r.key)).collect())
}

/// Is `key` of a region other than home the copy of a version that is not purged?
pub(crate) async fn in_use_in<'e>(ex: impl PgExecutor<'e>, region: &str, key: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM object_copies c JOIN versions v USING (topic_id, version)
                  WHERE c.region = $1 AND c.key = $2 AND v.purged_at IS NULL) AS "e!""#,
        region,
        key
    )
    .fetch_one(ex)
    .await?)
}

/// Is an object the payload of a version that is not purged (then it is not stray)?
pub(crate) async fn in_use<'e>(ex: impl PgExecutor<'e>, key: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM versions WHERE object_key = $1 AND purged_at IS NULL) AS "e!""#,
        key
    )
    .fetch_one(ex)
    .await?)
}

/// Does a version of a topic other than `topic_id` (purged or not) point at `key`?
pub(crate) async fn used_by_another_topic<'e>(ex: impl PgExecutor<'e>, key: &str, topic_id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM versions WHERE object_key = $1 AND topic_id <> $2) AS "e!""#,
        key,
        topic_id
    )
    .fetch_one(ex)
    .await?)
}

/// `used_by_another_topic` for a key of a region other than home: does a copy of another
/// topic's version (purged or not) name `key` in `region`?
pub(crate) async fn used_by_another_topic_in<'e>(
    ex: impl PgExecutor<'e>,
    region: &str,
    key: &str,
    topic_id: i64,
) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM object_copies WHERE region = $1 AND key = $2 AND topic_id <> $3) AS "e!""#,
        region,
        key,
        topic_id
    )
    .fetch_one(ex)
    .await?)
}
