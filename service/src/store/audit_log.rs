//! The `audit_log` table (append-only: the database refuses UPDATE and DELETE).
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

pub(crate) struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub topic: Option<String>,
    pub details: serde_json::Value,
}

/// Records one action in the caller's transaction.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    topic: Option<&str>,
    details: serde_json::Value,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO audit_log (at, actor, action, topic, details) VALUES ($1, $2, $3, $4, $5)",
        at as _,
        actor,
        action,
        topic,
        details
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Entries newest first; each filter is optional, `action_like` is a LIKE pattern.
pub(crate) async fn list<'e>(
    ex: impl PgExecutor<'e>,
    topic: Option<&str>,
    actor: Option<&str>,
    action_like: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>> {
    Ok(sqlx::query_as!(
        AuditRow,
        r#"SELECT id, at AS "at: DateTime<Utc>", actor, action, topic, details FROM audit_log
         WHERE ($1::text IS NULL OR topic = $1)
           AND ($2::text IS NULL OR actor = $2)
           AND ($3::text IS NULL OR action LIKE $3)
           AND ($4::bigint IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"#,
        topic,
        actor,
        action_like,
        before,
        limit
    )
    .fetch_all(ex)
    .await?)
}
