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
    /// The entry's topic as it is now (owner, restricted), when it names one.
    pub topic_owner: Option<String>,
    pub topic_restricted: Option<bool>,
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
        r#"SELECT a.id, a.at AS "at: DateTime<Utc>", a.actor, a.action, a.topic, a.details,
                  t.owner AS "topic_owner?", t.restricted AS "topic_restricted?"
           FROM audit_log a LEFT JOIN topics t ON t.name = a.topic
         WHERE ($1::text IS NULL OR a.topic = $1)
           AND ($2::text IS NULL OR a.actor = $2)
           AND ($3::text IS NULL OR a.action LIKE $3)
           AND ($4::bigint IS NULL OR a.id < $4)
         ORDER BY a.id DESC LIMIT $5"#,
        topic,
        actor,
        action_like,
        before,
        limit
    )
    .fetch_all(ex)
    .await?)
}
