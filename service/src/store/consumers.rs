//! The `consumers` table: the consumer audit's durable half.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;
use std::collections::BTreeMap;

/// Counts for a health gate: consumers matching `selector` seen since `since`, how many
/// hold (or applied) `version`, how many failed to apply it.
pub(crate) async fn gate_counts<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    selector: serde_json::Value,
    version: i64,
    since: DateTime<Utc>,
    count_anonymous: bool,
) -> Result<(i64, i64, i64, i64)> {
    let r = sqlx::query!(
        r#"SELECT count(*) AS "matching!",
                  count(*) FILTER (WHERE version = $3 OR (last_applied_version = $3 AND last_applied_ok)) AS "applied!",
                  count(*) FILTER (WHERE last_applied_version = $3 AND last_applied_ok = false) AS "failed!",
                  count(*) FILTER (WHERE version = $3 OR last_applied_version = $3) AS "reporting!"
           FROM consumers WHERE topic_id = $1 AND labels @> $2 AND last_seen > $4
             AND (principal IS NOT NULL OR $5)"#,
        topic_id,
        selector,
        version,
        since as _,
        count_anonymous
    )
    .fetch_one(ex)
    .await?;
    Ok((r.matching, r.applied, r.failed, r.reporting))
}

/// Per topic, nodes seen since `since` that held another version than expected.
pub(crate) async fn lagging_per_topic<'e>(ex: impl PgExecutor<'e>, since: DateTime<Utc>) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT t.name, count(c.instance) FILTER (WHERE c.version IS DISTINCT FROM c.expected_version
                                                     AND c.last_seen > $1) AS "lagging!"
           FROM topics t LEFT JOIN consumers c ON c.topic_id = t.id GROUP BY t.name"#,
        since as _
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.lagging)).collect())
}

/// (version held, held since) of every node that holds or should hold `version`.
pub(crate) async fn holding<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    version: i64,
) -> Result<Vec<(Option<i64>, Option<DateTime<Utc>>)>> {
    let rows = sqlx::query!(
        r#"SELECT version, version_since AS "version_since: DateTime<Utc>" FROM consumers WHERE topic_id = $1 AND (version = $2 OR expected_version = $2)"#,
        topic_id,
        version
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.version, r.version_since)).collect())
}

/// Deletes consumers last seen before `before`.
pub(crate) async fn expire<'e>(ex: impl PgExecutor<'e>, before: DateTime<Utc>) -> Result<u64> {
    Ok(sqlx::query!("DELETE FROM consumers WHERE last_seen < $1", before as _).execute(ex).await?.rows_affected())
}

pub(crate) struct ConsumerRow {
    pub instance: String,
    pub labels: Json<BTreeMap<String, String>>,
    pub version: Option<i64>,
    pub version_since: Option<DateTime<Utc>>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last_applied_version: Option<i64>,
    pub last_applied_ok: Option<bool>,
    pub last_error: Option<String>,
    pub last_applied_at: Option<DateTime<Utc>>,
    pub principal: Option<String>,
    pub relayed_by: Option<String>,
    pub served_region: Option<String>,
    /// Trouble first: 0 failed to apply, 1 lagging, 2 not seen lately, 3 the rest.
    pub rank: i32,
    pub lagging: bool,
}

/// What a listing of a topic's consumers matches (`labels`: their labels contain these).
pub(crate) struct ListFilter {
    pub labels: Option<serde_json::Value>,
    pub version: Option<i64>,
    pub lagging_only: bool,
    /// A node lags when it holds another version than the one it should, and that one was
    /// published before this (a node is given a grace period to catch up).
    pub grace_ago: DateTime<Utc>,
    /// Seen before this: "stale".
    pub stale_before: DateTime<Utc>,
}

/// Where a page starts: after this (rank, last_seen, instance), or after `offset` rows.
pub(crate) enum PageStart {
    Offset(i64),
    After { rank: i32, last_seen: DateTime<Utc>, instance: String },
}

/// One page of a topic's consumers matching `f`, trouble first, then most recently seen
/// first: sorted and cut in Postgres, so a page reads `limit` rows whatever the fleet.
pub(crate) async fn page<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    f: &ListFilter,
    start: &PageStart,
    limit: i64,
) -> Result<Vec<ConsumerRow>> {
    let (offset, after) = match start {
        PageStart::Offset(n) => (*n, None),
        PageStart::After { rank, last_seen, instance } => (0, Some((*rank, *last_seen, instance.clone()))),
    };
    let (a_rank, a_seen, a_inst) = match after {
        Some((r, s, i)) => (Some(r), Some(s), Some(i)),
        None => (None, None, None),
    };
    Ok(sqlx::query_as!(
        ConsumerRow,
        r#"SELECT instance, labels AS "labels!: Json<BTreeMap<String, String>>", version,
                  version_since AS "version_since: DateTime<Utc>",
                  first_seen AS "first_seen!: DateTime<Utc>", last_seen AS "last_seen!: DateTime<Utc>",
                  last_applied_version, last_applied_ok, last_error,
                  last_applied_at AS "last_applied_at: DateTime<Utc>", principal, relayed_by, served_region,
                  rank AS "rank!", lagging AS "lagging!"
           FROM (SELECT c.*, l.lagging,
                        CASE WHEN c.last_applied_ok = false THEN 0 WHEN l.lagging THEN 1
                             WHEN c.last_seen < $6 THEN 2 ELSE 3 END AS rank
                 FROM consumers c
                 CROSS JOIN LATERAL (SELECT c.expected_version IS NOT NULL
                     AND c.version IS DISTINCT FROM c.expected_version
                     AND EXISTS (SELECT 1 FROM versions v WHERE v.topic_id = c.topic_id
                                 AND v.version = c.expected_version AND v.created_at <= $5) AS lagging) l
                 WHERE c.topic_id = $1 AND ($2::jsonb IS NULL OR c.labels @> $2)
                   AND ($3::bigint IS NULL OR c.version = $3) AND (NOT $4 OR l.lagging)) x
           WHERE $7::int IS NULL
              OR rank > $7 OR (rank = $7 AND (last_seen < $8 OR (last_seen = $8 AND instance > $9)))
           ORDER BY rank, last_seen DESC, instance
           LIMIT $10 OFFSET $11"#,
        topic_id,
        f.labels,
        f.version,
        f.lagging_only,
        f.grace_ago as _,
        f.stale_before as _,
        a_rank,
        a_seen as _,
        a_inst,
        limit,
        offset
    )
    .fetch_all(ex)
    .await?)
}

/// Counts of a topic's consumers matching `f.labels`, per (value of the label `group_by`,
/// version held): `all` ignores the version and lagging filters, the others apply them.
pub(crate) struct CountRow {
    pub group: Option<String>,
    pub version: Option<i64>,
    pub all: i64,
    pub matching: i64,
    pub lagging: i64,
    pub failed: i64,
}

pub(crate) async fn counts<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    f: &ListFilter,
    group_by: Option<&str>,
) -> Result<Vec<CountRow>> {
    Ok(sqlx::query_as!(
        CountRow,
        r#"SELECT CASE WHEN $6::text IS NULL THEN NULL ELSE COALESCE(c.labels->>$6, '') END AS "group",
                  c.version,
                  count(*) AS "all!",
                  count(*) FILTER (WHERE ($3::bigint IS NULL OR c.version = $3) AND (NOT $4 OR l.lagging)) AS "matching!",
                  count(*) FILTER (WHERE ($3::bigint IS NULL OR c.version = $3) AND l.lagging) AS "lagging!",
                  count(*) FILTER (WHERE ($3::bigint IS NULL OR c.version = $3) AND (NOT $4 OR l.lagging)
                                   AND c.last_applied_ok = false) AS "failed!"
           FROM consumers c
           CROSS JOIN LATERAL (SELECT c.expected_version IS NOT NULL
               AND c.version IS DISTINCT FROM c.expected_version
               AND EXISTS (SELECT 1 FROM versions v WHERE v.topic_id = c.topic_id
                           AND v.version = c.expected_version AND v.created_at <= $5) AS lagging) l
           WHERE c.topic_id = $1 AND ($2::jsonb IS NULL OR c.labels @> $2)
           GROUP BY 1, 2"#,
        topic_id,
        f.labels,
        f.version,
        f.lagging_only,
        f.grace_ago as _,
        group_by
    )
    .fetch_all(ex)
    .await?)
}

/// The label keys a topic's consumers (matching `labels`) carry, at most `max`.
pub(crate) async fn label_keys<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    labels: Option<serde_json::Value>,
    max: i64,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar!(
        r#"SELECT DISTINCT k AS "k!" FROM consumers c, jsonb_object_keys(c.labels) k
           WHERE c.topic_id = $1 AND ($2::jsonb IS NULL OR c.labels @> $2) ORDER BY 1 LIMIT $3"#,
        topic_id,
        labels,
        max
    )
    .fetch_all(ex)
    .await?)
}

/// Deletes anonymous consumers last seen before `anonymous_before` and the others last
/// seen before `before`.
pub(crate) async fn expire_split<'e>(
    ex: impl PgExecutor<'e>,
    before: DateTime<Utc>,
    anonymous_before: DateTime<Utc>,
) -> Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM consumers WHERE last_seen < $1 OR (principal IS NULL AND last_seen < $2)",
        before as _,
        anonymous_before as _
    )
    .execute(ex)
    .await?
    .rows_affected())
}

/// Observations to write, column by column (one UNNEST statement for the whole batch).
#[derive(Default)]
pub(crate) struct ObservationColumns {
    pub topic_ids: Vec<i64>,
    pub instances: Vec<String>,
    pub labels: Vec<serde_json::Value>,
    pub versions: Vec<Option<i64>>,
    pub since: Vec<DateTime<Utc>>,
    pub expected: Vec<Option<i64>>,
    pub first: Vec<DateTime<Utc>>,
    pub last: Vec<DateTime<Utc>>,
    pub applied_version: Vec<Option<i64>>,
    pub applied_ok: Vec<Option<bool>>,
    pub applied_error: Vec<Option<String>>,
    pub applied_at: Vec<Option<DateTime<Utc>>>,
    pub applied_region: Vec<Option<String>>,
    pub principals: Vec<Option<String>>,
    pub relayed_by: Vec<Option<String>>,
}

/// Upserts a batch of observations. Several servers flush concurrently: every column
/// keeps the newest information, and rows are written in a fixed order (no deadlocks).
pub(crate) async fn upsert(pool: &sqlx::PgPool, c: &ObservationColumns) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO consumers AS c (topic_id, instance, labels, version, version_since, expected_version, first_seen,
                                     last_seen, last_applied_version, last_applied_ok, last_error, last_applied_at,
                                     principal, relayed_by, served_region)
         SELECT x.* FROM UNNEST($1::bigint[], $2::text[], $3::jsonb[], $4::bigint[], $5::timestamptz[], $6::bigint[],
                              $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::bool[], $11::text[], $12::timestamptz[],
                              $13::text[], $14::text[], $15::text[])
              AS x(topic_id, instance, labels, version, version_since, expected_version, first_seen, last_seen,
                   last_applied_version, last_applied_ok, last_error, last_applied_at, principal, relayed_by, served_region)
         WHERE EXISTS (SELECT 1 FROM topics t WHERE t.id = x.topic_id)
         -- a fixed row order: concurrent flushes from several servers cannot deadlock
         ORDER BY x.topic_id, x.instance
         ON CONFLICT (topic_id, instance) DO UPDATE SET
            labels = CASE WHEN EXCLUDED.last_seen >= c.last_seen THEN EXCLUDED.labels ELSE c.labels END,
            version = CASE WHEN EXCLUDED.last_seen >= c.last_seen THEN EXCLUDED.version ELSE c.version END,
            version_since = CASE
                WHEN EXCLUDED.last_seen < c.last_seen THEN c.version_since
                WHEN EXCLUDED.version IS NOT DISTINCT FROM c.version THEN LEAST(c.version_since, EXCLUDED.version_since)
                ELSE EXCLUDED.version_since END,
            expected_version = CASE WHEN EXCLUDED.last_seen >= c.last_seen THEN EXCLUDED.expected_version ELSE c.expected_version END,
            first_seen = LEAST(c.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(c.last_seen, EXCLUDED.last_seen),
            last_applied_version = CASE WHEN EXCLUDED.last_applied_at >= c.last_applied_at OR c.last_applied_at IS NULL
                THEN COALESCE(EXCLUDED.last_applied_version, c.last_applied_version) ELSE c.last_applied_version END,
            last_applied_ok = CASE WHEN EXCLUDED.last_applied_at >= c.last_applied_at OR c.last_applied_at IS NULL
                THEN COALESCE(EXCLUDED.last_applied_ok, c.last_applied_ok) ELSE c.last_applied_ok END,
            last_error = CASE WHEN EXCLUDED.last_applied_at >= c.last_applied_at OR (c.last_applied_at IS NULL AND EXCLUDED.last_applied_at IS NOT NULL)
                THEN NULLIF(EXCLUDED.last_error, '') ELSE c.last_error END,
            -- the region of the newest applied report (null: inline, one region, failed)
            served_region = CASE WHEN EXCLUDED.last_applied_at >= c.last_applied_at OR (c.last_applied_at IS NULL AND EXCLUDED.last_applied_at IS NOT NULL)
                THEN EXCLUDED.served_region ELSE c.served_region END,
            last_applied_at = GREATEST(c.last_applied_at, EXCLUDED.last_applied_at),
            principal = COALESCE(EXCLUDED.principal, c.principal),
            relayed_by = CASE WHEN EXCLUDED.last_seen >= c.last_seen THEN EXCLUDED.relayed_by ELSE c.relayed_by END
         -- an anonymous report never overwrites what an authenticated consumer said
         WHERE c.principal IS NULL OR EXCLUDED.principal IS NOT NULL",
        &c.topic_ids,
        &c.instances,
        &c.labels,
        &c.versions as &[Option<i64>],
        &c.since as _,
        &c.expected as &[Option<i64>],
        &c.first as _,
        &c.last as _,
        &c.applied_version as &[Option<i64>],
        &c.applied_ok as &[Option<bool>],
        &c.applied_error as &[Option<String>],
        &c.applied_at as _,
        &c.principals as &[Option<String>],
        &c.relayed_by as &[Option<String>],
        &c.applied_region as &[Option<String>],
    )
    .execute(&mut *tx)
    .await?;
    // When each topic was last polled (for "unused topics"), kept to the minute so that
    // busy topics do not rewrite their row on every flush.
    sqlx::query!(
        "UPDATE topics t SET last_polled_at = x.seen
         FROM (SELECT topic_id, max(seen) AS seen FROM UNNEST($1::bigint[], $2::timestamptz[]) AS u(topic_id, seen)
               GROUP BY topic_id ORDER BY topic_id) x
         WHERE t.id = x.topic_id AND (t.last_polled_at IS NULL OR t.last_polled_at < x.seen - interval '60 seconds')",
        &c.topic_ids,
        &c.last as _
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Keeps at most `max` consumers per topic among `topic_ids`: beyond it the anonymous
/// ones seen least recently go first, then the authenticated ones. Returns how many went.
pub(crate) async fn trim<'e>(ex: impl PgExecutor<'e>, topic_ids: &[i64], max: i64) -> Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM consumers c USING (
             SELECT topic_id, instance FROM (
                 SELECT topic_id, instance, row_number() OVER (
                     PARTITION BY topic_id ORDER BY (principal IS NOT NULL) DESC, last_seen DESC, instance) AS n
                 FROM consumers WHERE topic_id = ANY($1)) ranked
             WHERE n > $2) x
         WHERE c.topic_id = x.topic_id AND c.instance = x.instance",
        topic_ids,
        max
    )
    .execute(ex)
    .await?
    .rows_affected())
}
