//! The `object_copies` table: which regions hold (or are still to get) each version's object.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// A pending copy, claimed by one worker's transaction.
#[derive(Debug)]
pub(crate) struct DueCopy {
    pub topic_id: i64,
    pub version: i64,
    pub region: String,
    /// The key in the target region.
    pub key: String,
    /// The key in the version's own region (its `object_key`), the copy's source.
    pub home_key: String,
    /// The region `home_key` is in (None: home).
    pub from_region: Option<String>,
    pub sha256: String,
    /// The object is sealed at rest (its `sha256` is the plaintext's).
    pub sealed: bool,
    pub attempts: i32,
}

/// One region's copy of a version's object, as pages show it.
#[derive(Debug, Clone)]
pub(crate) struct CopyRow {
    pub region: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// The version's object is a registered one (its copies are the publisher's objects).
    pub registered: bool,
}

/// Records the regions a new version's object goes to: `done` ones hold it already.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    topic_id: i64,
    version: i64,
    rows: &[(String, String, bool)],
    now: DateTime<Utc>,
) -> Result<()> {
    for (region, key, done) in rows {
        let state = if *done { "done" } else { "pending" };
        sqlx::query!(
            "INSERT INTO object_copies (topic_id, version, region, key, state, next_attempt, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
            topic_id,
            version,
            region,
            key,
            state,
            now as _
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The next due pending copy of a live version, locked for this transaction.
pub(crate) async fn claim_due(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Option<DueCopy>> {
    Ok(sqlx::query_as!(
        DueCopy,
        r#"SELECT c.topic_id, c.version, c.region, c.key, v.object_key AS "home_key!", v.object_region AS from_region, v.sha256, v.sealed, c.attempts
           FROM object_copies c JOIN versions v USING (topic_id, version)
           WHERE c.state = 'pending' AND c.next_attempt <= $1 AND v.purged_at IS NULL AND v.object_key IS NOT NULL
           ORDER BY c.next_attempt LIMIT 1 FOR UPDATE OF c SKIP LOCKED"#,
        now as _
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// Marks a copy done, if its version is still live (false: it was purged meanwhile).
pub(crate) async fn done(conn: &mut PgConnection, c: &DueCopy, now: DateTime<Utc>) -> Result<bool> {
    let n = sqlx::query!(
        "UPDATE object_copies SET state = 'done', attempts = attempts + 1, last_error = NULL, updated_at = $4
         WHERE topic_id = $1 AND version = $2 AND region = $3
           AND EXISTS (SELECT 1 FROM versions v WHERE v.topic_id = $1 AND v.version = $2 AND v.purged_at IS NULL)",
        c.topic_id,
        c.version,
        c.region,
        now as _
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Records a failed attempt and when to try again.
pub(crate) async fn failed(conn: &mut PgConnection, c: &DueCopy, next: DateTime<Utc>, error: &str) -> Result<()> {
    sqlx::query!(
        "UPDATE object_copies SET attempts = attempts + 1, last_error = $4, next_attempt = $5, updated_at = now()
         WHERE topic_id = $1 AND version = $2 AND region = $3",
        c.topic_id,
        c.version,
        c.region,
        error,
        next as _
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every copy row of one version (any state), for the purge and the version page.
pub(crate) async fn of_version<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    version: i64,
) -> Result<Vec<(CopyRow, String)>> {
    let rows = sqlx::query!(
        r#"SELECT c.region, c.key, c.state, c.attempts, c.last_error, c.updated_at AS "updated_at: DateTime<Utc>",
                  NOT v.object_owned AS "registered!"
           FROM object_copies c JOIN versions v USING (topic_id, version)
           WHERE c.topic_id = $1 AND c.version = $2 ORDER BY c.region"#,
        topic_id,
        version
    )
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row = CopyRow {
                region: r.region,
                state: r.state,
                attempts: r.attempts,
                last_error: r.last_error,
                updated_at: r.updated_at,
                registered: r.registered,
            };
            (row, r.key)
        })
        .collect())
}

/// The regions holding a done copy, per (topic, version), for the versions given.
pub(crate) async fn holding(
    conn: &mut PgConnection,
    topic_ids: &[i64],
    versions: &[i64],
) -> Result<Vec<(i64, i64, String)>> {
    let rows = sqlx::query!(
        r#"SELECT c.topic_id, c.version, c.region FROM object_copies c
           JOIN UNNEST($1::bigint[], $2::bigint[]) AS w(topic_id, version) USING (topic_id, version)
           WHERE c.state = 'done'"#,
        topic_ids,
        versions
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.topic_id, r.version, r.region)).collect())
}

/// The key of a version's done copy in `region`, if it has one there.
pub(crate) async fn done_key<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    version: i64,
    region: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar!(
        "SELECT key FROM object_copies WHERE topic_id = $1 AND version = $2 AND region = $3 AND state = 'done'",
        topic_id,
        version,
        region
    )
    .fetch_optional(ex)
    .await?)
}

/// A topic's `regions` (None: all) and `min_regions` (None: all of its regions).
pub(crate) async fn topic_settings(
    conn: &mut PgConnection,
    topic_id: i64,
) -> Result<(Option<Vec<String>>, Option<i32>)> {
    let r =
        sqlx::query!("SELECT regions, min_regions FROM topics WHERE id = $1", topic_id).fetch_one(&mut *conn).await?;
    Ok((r.regions, r.min_regions))
}

/// Sets a topic's `regions` and `min_regions`.
pub(crate) async fn set_topic_settings(
    conn: &mut PgConnection,
    topic_id: i64,
    regions: Option<&[String]>,
    min_regions: Option<i32>,
) -> Result<()> {
    sqlx::query!("UPDATE topics SET regions = $2, min_regions = $3 WHERE id = $1", topic_id, regions, min_regions)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
