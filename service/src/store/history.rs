//! Bounded reads of a topic's resolution history, for answers that must not grow with
//! the whole history (`/retention`, `resolve?at=`, the console's scope matrix): at most
//! `limit` versions and `limit` pins, and only the rows that can matter.
use crate::error::Result;
use crate::store::serving::{ServedPinRow, ServedScopeRow, ServedVersionRow, Snapshot, TopicId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;
use std::collections::BTreeMap;

/// Versions (and pins) one bounded answer reads at most.
pub const MAX_HISTORY_ROWS: i64 = 2_000;

/// The present of one topic: its newest `limit` live versions (and its newest version,
/// purged or not), their scopes, and its active pins (at most `limit`). `true` when
/// some rows were left out.
pub(crate) async fn live(conn: &mut PgConnection, topic_id: i64, limit: i64) -> Result<(Snapshot, bool)> {
    let versions = sqlx::query_as!(
        ServedVersionRow,
        r#"SELECT topic_id, version, created_at AS "created_at: DateTime<Utc>", purged_at AS "purged_at: DateTime<Utc>",
                  content_type, size, sha256, metadata AS "metadata: Json<BTreeMap<String, String>>"
           FROM versions v WHERE topic_id = $1
             AND (purged_at IS NULL OR version = (SELECT max(version) FROM versions w WHERE w.topic_id = $1))
           ORDER BY version DESC LIMIT $2"#,
        topic_id,
        limit + 1
    )
    .fetch_all(&mut *conn)
    .await?;
    finish(conn, topic_id, versions, None, limit).await
}

/// What resolution at `at` can use: the newest `limit` versions created by then and not
/// purged by then (plus the versions pins active then name), their scopes added by then,
/// and the pins active then (at most `limit`). `true` when some rows were left out.
pub(crate) async fn at(
    conn: &mut PgConnection,
    topic_id: i64,
    at: DateTime<Utc>,
    limit: i64,
) -> Result<(Snapshot, bool)> {
    let versions = sqlx::query_as!(
        ServedVersionRow,
        r#"SELECT topic_id, version, created_at AS "created_at: DateTime<Utc>", purged_at AS "purged_at: DateTime<Utc>",
                  content_type, size, sha256, metadata AS "metadata: Json<BTreeMap<String, String>>"
           FROM versions WHERE topic_id = $1 AND created_at <= $2 AND (purged_at IS NULL OR purged_at > $2)
           ORDER BY version DESC LIMIT $3"#,
        topic_id,
        at as _,
        limit + 1
    )
    .fetch_all(&mut *conn)
    .await?;
    finish(conn, topic_id, versions, Some(at), limit).await
}

async fn finish(
    conn: &mut PgConnection,
    topic_id: i64,
    mut versions: Vec<ServedVersionRow>,
    at: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<(Snapshot, bool)> {
    let mut truncated = versions.len() as i64 > limit;
    versions.truncate(limit as usize);
    let pins = sqlx::query_as!(
        ServedPinRow,
        r#"SELECT id, topic_id, selector_key, version, created_at AS "created_at: DateTime<Utc>",
                  removed_at AS "removed_at: DateTime<Utc>" FROM pins
           WHERE topic_id = $1 AND ($2::timestamptz IS NULL AND removed_at IS NULL
                                    OR created_at <= $2 AND (removed_at IS NULL OR removed_at > $2))
           ORDER BY id DESC LIMIT $3"#,
        topic_id,
        at as _,
        limit + 1
    )
    .fetch_all(&mut *conn)
    .await?;
    truncated |= pins.len() as i64 > limit;
    let pins: Vec<ServedPinRow> = pins.into_iter().take(limit as usize).collect();
    // The versions pins name are needed too (a pin may hold an old version).
    let have: std::collections::BTreeSet<i64> = versions.iter().map(|v| v.version).collect();
    let missing: Vec<i64> = pins.iter().map(|p| p.version).filter(|v| !have.contains(v)).collect();
    if !missing.is_empty() {
        let ids = vec![topic_id; missing.len()];
        versions.extend(crate::store::serving::version_rows(conn, &ids, &missing).await?);
    }
    let wanted: Vec<i64> = versions.iter().map(|v| v.version).collect();
    let scopes = sqlx::query_as!(
        ServedScopeRow,
        r#"SELECT topic_id, version, selector_key, added_at AS "added_at: DateTime<Utc>" FROM scopes
           WHERE topic_id = $1 AND version = ANY($2) AND ($3::timestamptz IS NULL OR added_at <= $3)"#,
        topic_id,
        &wanted,
        at as _
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok((Snapshot { topics: vec![TopicId { id: topic_id }], versions, scopes, pins }, truncated))
}
