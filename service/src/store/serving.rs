//! What the in-memory serving state is loaded from — one consistent snapshot of what
//! resolution needs now (`current`) — and a topic's whole resolution history (`snapshot`),
//! read on demand for time travel, rollbacks and the console.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;
use std::collections::BTreeMap;

pub(crate) struct TopicId {
    pub id: i64,
}

pub(crate) struct ServedVersionRow {
    pub topic_id: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub purged_at: Option<DateTime<Utc>>,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub metadata: Json<BTreeMap<String, String>>,
}

pub(crate) struct ServedScopeRow {
    pub topic_id: i64,
    pub version: i64,
    pub selector_key: String,
    pub added_at: DateTime<Utc>,
}

pub(crate) struct ServedPinRow {
    pub id: i64,
    pub topic_id: i64,
    pub selector_key: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// A topic's current state: its row, the best live version per scope selector, the
/// active pins.
pub(crate) struct CurrentTopicRow {
    pub id: i64,
    pub name: String,
    pub change_seq: i64,
    pub owner: String,
    pub restricted: bool,
    pub apollo_app_id: Option<String>,
    pub apollo_namespace: Option<String>,
    pub apollo_secret: Option<String>,
    pub ofrep_flag_key: Option<String>,
    pub ofrep_field: Option<String>,
    pub spring_application: Option<String>,
    pub spring_profile: Option<String>,
    /// Some version is not purged.
    pub has_live: bool,
}

pub(crate) struct BestScopeRow {
    pub topic_id: i64,
    pub selector_key: String,
    pub version: i64,
    pub added_at: DateTime<Utc>,
}

pub(crate) struct Current {
    pub topics: Vec<CurrentTopicRow>,
    pub best: Vec<BestScopeRow>,
    pub pins: Vec<ServedPinRow>,
}

/// What resolution needs now of the given topics (`None`: all of them).
pub(crate) async fn current(conn: &mut PgConnection, ids: Option<&[i64]>) -> Result<Current> {
    let topics = sqlx::query_as!(
        CurrentTopicRow,
        r#"SELECT t.id, t.name, t.change_seq, t.owner, t.restricted, t.apollo_app_id, t.apollo_namespace, t.apollo_secret,
                  t.ofrep_flag_key, t.ofrep_field,
                  t.spring_application, t.spring_profile,
                  EXISTS (SELECT 1 FROM versions v WHERE v.topic_id = t.id AND v.purged_at IS NULL) AS "has_live!"
           FROM topics t WHERE ($1::bigint[] IS NULL OR t.id = ANY($1))"#,
        ids as _
    )
    .fetch_all(&mut *conn)
    .await?;
    let best = match ids {
        // Everything (at start-up): one pass over the scopes.
        None => {
            sqlx::query_as!(
                BestScopeRow,
                r#"SELECT DISTINCT ON (s.topic_id, s.selector_key) s.topic_id, s.selector_key, s.version,
                          s.added_at AS "added_at: DateTime<Utc>"
                   FROM scopes s JOIN versions v ON v.topic_id = s.topic_id AND v.version = s.version
                   WHERE v.purged_at IS NULL
                   ORDER BY s.topic_id, s.selector_key, s.version DESC"#
            )
            .fetch_all(&mut *conn)
            .await?
        }
        // Some topics (after every write): the index `scopes_best` walked per selector
        // (each topic's selectors found by skipping through it, then each one's newest live
        // version), so the cost does not grow with the topic's history. DISTINCT ON read
        // every scope row of the topic: 3 ms and rising at 400 versions.
        Some(ids) => {
            sqlx::query_as!(
                BestScopeRow,
                r#"WITH RECURSIVE keys(topic_id, selector_key) AS (
                       SELECT t.id, (SELECT s.selector_key FROM scopes s WHERE s.topic_id = t.id
                                     ORDER BY s.selector_key LIMIT 1)
                       FROM UNNEST($1::bigint[]) AS t(id)
                     UNION ALL
                       SELECT k.topic_id, (SELECT s.selector_key FROM scopes s
                                           WHERE s.topic_id = k.topic_id AND s.selector_key > k.selector_key
                                           ORDER BY s.selector_key LIMIT 1)
                       FROM keys k WHERE k.selector_key IS NOT NULL
                   )
                   SELECT k.topic_id AS "topic_id!", k.selector_key AS "selector_key!", b.version,
                          b.added_at AS "added_at: DateTime<Utc>"
                   FROM keys k CROSS JOIN LATERAL (
                       SELECT s.version, s.added_at FROM scopes s
                       JOIN versions v ON v.topic_id = s.topic_id AND v.version = s.version
                       WHERE s.topic_id = k.topic_id AND s.selector_key = k.selector_key AND v.purged_at IS NULL
                       ORDER BY s.version DESC LIMIT 1
                   ) b
                   WHERE k.selector_key IS NOT NULL"#,
                ids
            )
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let pins = sqlx::query_as!(
        ServedPinRow,
        r#"SELECT id, topic_id, selector_key, version, created_at AS "created_at: DateTime<Utc>",
                  removed_at AS "removed_at: DateTime<Utc>" FROM pins
           WHERE removed_at IS NULL AND ($1::bigint[] IS NULL OR topic_id = ANY($1))"#,
        ids as _
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Current { topics, best, pins })
}

/// The rows of the given (topic, version) pairs.
pub(crate) async fn version_rows(
    conn: &mut PgConnection,
    topic_ids: &[i64],
    versions: &[i64],
) -> Result<Vec<ServedVersionRow>> {
    Ok(sqlx::query_as!(
        ServedVersionRow,
        r#"SELECT v.topic_id, v.version, v.created_at AS "created_at: DateTime<Utc>", v.purged_at AS "purged_at: DateTime<Utc>",
                  v.content_type, v.size, v.sha256, v.metadata AS "metadata: Json<BTreeMap<String, String>>"
           FROM versions v JOIN UNNEST($1::bigint[], $2::bigint[]) AS w(topic_id, version) USING (topic_id, version)"#,
        topic_ids,
        versions
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// Every topic's change sequence (the safety net compares them with what is loaded).
pub(crate) async fn change_seqs(conn: &mut PgConnection) -> Result<Vec<(i64, i64)>> {
    let rows = sqlx::query!("SELECT id, change_seq FROM topics").fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.change_seq)).collect())
}

pub(crate) struct Snapshot {
    pub topics: Vec<TopicId>,
    pub versions: Vec<ServedVersionRow>,
    pub scopes: Vec<ServedScopeRow>,
    pub pins: Vec<ServedPinRow>,
}

/// Opens a transaction that reads one consistent snapshot (`Pool::begin_with`).
pub(crate) const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// The whole resolution history of one topic (`Some(id)`) or of all of them.
pub(crate) async fn snapshot(conn: &mut PgConnection, topic_id: Option<i64>) -> Result<Snapshot> {
    let topics = sqlx::query_as!(TopicId, "SELECT id FROM topics WHERE ($1::bigint IS NULL OR id = $1)", topic_id)
        .fetch_all(&mut *conn)
        .await?;
    let versions = sqlx::query_as!(
        ServedVersionRow,
        r#"SELECT topic_id, version, created_at AS "created_at: DateTime<Utc>", purged_at AS "purged_at: DateTime<Utc>", content_type, size, sha256,
                  metadata AS "metadata: Json<BTreeMap<String, String>>"
           FROM versions WHERE ($1::bigint IS NULL OR topic_id = $1)"#,
        topic_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let scopes = sqlx::query_as!(
        ServedScopeRow,
        r#"SELECT topic_id, version, selector_key, added_at AS "added_at: DateTime<Utc>" FROM scopes
           WHERE ($1::bigint IS NULL OR topic_id = $1)"#,
        topic_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let pins = sqlx::query_as!(
        ServedPinRow,
        r#"SELECT id, topic_id, selector_key, version, created_at AS "created_at: DateTime<Utc>",
                  removed_at AS "removed_at: DateTime<Utc>" FROM pins WHERE ($1::bigint IS NULL OR topic_id = $1)"#,
        topic_id
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Snapshot { topics, versions, scopes, pins })
}

/// The inline payloads of the given (topic, version) pairs, each with whether it is
/// sealed at rest.
pub(crate) async fn inline_payloads(
    conn: &mut PgConnection,
    topic_ids: &[i64],
    versions: &[i64],
) -> Result<Vec<(i64, i64, Vec<u8>, bool)>> {
    let rows = sqlx::query!(
        r#"SELECT v.topic_id, v.version, v.inline_data AS "inline_data!", v.sealed FROM versions v
           JOIN UNNEST($1::bigint[], $2::bigint[]) AS w(topic_id, version) USING (topic_id, version)
           WHERE v.storage = 'inline' AND v.inline_data IS NOT NULL"#,
        topic_ids,
        versions
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.topic_id, r.version, r.inline_data, r.sealed)).collect())
}
