//! The `pins` table.
use crate::error::Result;
use chrono::{DateTime, Utc};
use imprint_domain::Selector;
use sqlx::{PgConnection, PgExecutor};

pub(crate) struct PinRow {
    pub id: i64,
    pub selector_key: String,
    pub version: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    pub removed_by: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Sets a pin, replacing an active pin on the same selector. Returns the version the
/// replaced pin held, if there was one.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn replace(
    conn: &mut PgConnection,
    topic_id: i64,
    selector: &Selector,
    version: i64,
    reason: &str,
    who: &str,
    at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Option<i64>> {
    let key = selector.to_string();
    let replaced = sqlx::query_scalar!(
        "UPDATE pins SET removed_at = $3, removed_by = $4 WHERE topic_id = $1 AND selector_key = $2 AND removed_at IS NULL
         RETURNING version",
        topic_id,
        key,
        at as _,
        who
    )
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO pins (topic_id, selector, selector_key, version, reason, created_at, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        topic_id,
        selector.to_json(),
        key,
        version,
        reason,
        at as _,
        who,
        expires_at as _
    )
    .execute(&mut *conn)
    .await?;
    Ok(replaced)
}

/// Removes the active pin on a selector; returns the version it held.
pub(crate) async fn remove(
    conn: &mut PgConnection,
    topic_id: i64,
    selector_key: &str,
    who: &str,
    at: DateTime<Utc>,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar!(
        "UPDATE pins SET removed_at = $4, removed_by = $3 WHERE topic_id = $1 AND selector_key = $2 AND removed_at IS NULL
         RETURNING version",
        topic_id,
        selector_key,
        who,
        at as _
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// Active pins (or all with `all`), newest first, below the id `before`.
pub(crate) async fn list<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    all: bool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<PinRow>> {
    Ok(sqlx::query_as!(
        PinRow,
        r#"SELECT id, selector_key, version, reason, created_by, created_at AS "created_at: DateTime<Utc>",
                  removed_at AS "removed_at: DateTime<Utc>", removed_by, expires_at AS "expires_at: DateTime<Utc>" FROM pins
           WHERE topic_id = $1 AND ($2 OR removed_at IS NULL) AND ($3::bigint IS NULL OR id < $3)
           ORDER BY id DESC LIMIT $4"#,
        topic_id,
        all,
        before,
        limit
    )
    .fetch_all(ex)
    .await?)
}

pub(crate) struct ExpiredPin {
    pub topic_id: i64,
    pub topic: String,
    pub selector_key: String,
    pub version: i64,
    pub expires_at: DateTime<Utc>,
}

/// Removes the active pins whose expiry has come (as of `now`), as removed at their
/// expiry by `expiry`. Each pin is removed by exactly one caller.
pub(crate) async fn expire(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Vec<ExpiredPin>> {
    Ok(sqlx::query_as!(
        ExpiredPin,
        r#"UPDATE pins p SET removed_at = p.expires_at, removed_by = 'expiry'
           FROM topics t
           WHERE t.id = p.topic_id AND p.removed_at IS NULL AND p.expires_at <= $1
           RETURNING p.topic_id, t.name AS topic, p.selector_key, p.version, p.expires_at AS "expires_at!: DateTime<Utc>""#,
        now as _
    )
    .fetch_all(&mut *conn)
    .await?)
}

pub(crate) struct AttentionPin {
    pub topic: String,
    pub selector_key: String,
    pub version: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Active pins that deserve a look: set before `old` without an expiry, or expiring
/// before `soon`.
pub(crate) async fn needing_attention<'e>(
    ex: impl PgExecutor<'e>,
    old: DateTime<Utc>,
    soon: DateTime<Utc>,
) -> Result<Vec<AttentionPin>> {
    Ok(sqlx::query_as!(
        AttentionPin,
        r#"SELECT t.name AS topic, p.selector_key, p.version, p.reason, p.created_by,
                  p.created_at AS "created_at: DateTime<Utc>", p.expires_at AS "expires_at: DateTime<Utc>"
           FROM pins p JOIN topics t ON t.id = p.topic_id
           WHERE p.removed_at IS NULL
             AND ((p.expires_at IS NULL AND p.created_at < $1) OR p.expires_at < $2)
           ORDER BY p.created_at LIMIT 200"#,
        old as _,
        soon as _
    )
    .fetch_all(ex)
    .await?)
}
