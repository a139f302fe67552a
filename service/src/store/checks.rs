//! The `topic_validation`, `version_checks` and `validation_candidates` tables
//! (docs/validation.md).
use crate::error::{Error, Result};
use crate::model::VersionChecks;
use chrono::{DateTime, Utc};
use imprint_domain::checks::{CheckResult, TopicChecks};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use std::collections::HashMap;

/// A topic's checks settings (the default when it has none).
pub(crate) async fn settings<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<TopicChecks> {
    let row = sqlx::query_scalar!(
        r#"SELECT settings AS "settings: Json<TopicChecks>" FROM topic_validation WHERE topic_id = $1"#,
        topic_id
    )
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|j| j.0).unwrap_or_default())
}

/// A topic's checks settings, by the topic's name.
pub(crate) async fn settings_by_name<'e>(ex: impl PgExecutor<'e>, topic: &str) -> Result<TopicChecks> {
    let row = sqlx::query_scalar!(
        r#"SELECT v.settings AS "settings: Json<TopicChecks>" FROM topic_validation v JOIN topics t ON t.id = v.topic_id
           WHERE t.name = $1"#,
        topic
    )
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|j| j.0).unwrap_or_default())
}

pub(crate) async fn set_settings(
    conn: &mut PgConnection,
    topic_id: i64,
    s: &TopicChecks,
    at: DateTime<Utc>,
) -> Result<()> {
    let json = serde_json::to_value(s).map_err(|e| Error::Internal(format!("checks as JSON: {e}")))?;
    sqlx::query!(
        "INSERT INTO topic_validation (topic_id, settings, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (topic_id) DO UPDATE SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at",
        topic_id,
        json,
        at as _
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The version a candidate is compared with: the topic's newest live one.
pub(crate) struct PreviousRow {
    pub version: i64,
    pub size: i64,
    /// Its record count as stored when it was checked.
    pub records: Option<i64>,
    /// Its inline bytes, only when no record count was stored (to count them).
    pub inline_data: Option<Vec<u8>>,
    /// Those bytes are sealed at rest.
    pub sealed: bool,
}

pub(crate) async fn previous(conn: &mut PgConnection, topic_id: i64) -> Result<Option<PreviousRow>> {
    Ok(sqlx::query_as!(
        PreviousRow,
        r#"SELECT v.version, v.size, c.records AS "records?",
                  CASE WHEN c.records IS NULL THEN v.inline_data END AS inline_data, v.sealed
           FROM versions v LEFT JOIN version_checks c ON c.topic_id = v.topic_id AND c.version = v.version
           WHERE v.topic_id = $1 AND v.purged_at IS NULL AND NOT v.rejected
           ORDER BY v.version DESC LIMIT 1"#,
        topic_id
    )
    .fetch_optional(&mut *conn)
    .await?)
}

pub(crate) async fn insert_results(
    conn: &mut PgConnection,
    topic_id: i64,
    version: i64,
    c: &VersionChecks,
    records: Option<u64>,
) -> Result<()> {
    let results = serde_json::to_value(&c.results).map_err(|e| Error::Internal(format!("results as JSON: {e}")))?;
    sqlx::query!(
        "INSERT INTO version_checks (topic_id, version, results, records, forced_by, force_reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
        topic_id,
        version,
        results,
        records.map(|r| r as i64),
        c.forced_by,
        c.force_reason
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The check results of some versions of a topic.
pub(crate) async fn results_of<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    versions: &[i64],
) -> Result<HashMap<i64, VersionChecks>> {
    let rows = sqlx::query!(
        r#"SELECT version, results AS "results: Json<Vec<CheckResult>>", forced_by, force_reason
           FROM version_checks WHERE topic_id = $1 AND version = ANY($2)"#,
        topic_id,
        versions
    )
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (r.version, VersionChecks { results: r.results.0, forced_by: r.forced_by, force_reason: r.force_reason })
        })
        .collect())
}

/// A candidate offered for download to external validators.
pub(crate) struct CandidateRow {
    pub topic_id: i64,
    pub content_type: String,
    pub sha256: String,
    pub size: i64,
    pub inline_data: Option<Vec<u8>>,
    pub object_key: Option<String>,
    /// The region `object_key` is in (None: home).
    pub object_region: Option<String>,
    /// Its bytes (inline or the object) are sealed at rest.
    pub sealed: bool,
    pub expires_at: DateTime<Utc>,
}

pub(crate) struct NewCandidate<'a> {
    pub token_sha256: &'a str,
    pub topic_id: i64,
    pub content_type: &'a str,
    pub sha256: &'a str,
    pub size: u64,
    pub inline_data: Option<&'a [u8]>,
    pub object_key: Option<&'a str>,
    pub object_region: Option<&'a str>,
    pub sealed: bool,
    pub expires_at: DateTime<Utc>,
}

/// Stores a candidate (and deletes the expired ones).
pub(crate) async fn insert_candidate<'e>(
    ex: impl PgExecutor<'e>,
    c: NewCandidate<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        "WITH gone AS (DELETE FROM validation_candidates WHERE expires_at < $9)
         INSERT INTO validation_candidates (token_sha256, topic_id, content_type, sha256, size, inline_data, object_key, expires_at, sealed, object_region)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $11)",
        c.token_sha256,
        c.topic_id,
        c.content_type,
        c.sha256,
        c.size as i64,
        c.inline_data,
        c.object_key,
        c.expires_at as _,
        now as _,
        c.sealed,
        c.object_region
    )
    .execute(ex)
    .await?;
    Ok(())
}

pub(crate) async fn candidate<'e>(ex: impl PgExecutor<'e>, token_sha256: &str) -> Result<Option<CandidateRow>> {
    Ok(sqlx::query_as!(
        CandidateRow,
        r#"SELECT topic_id, content_type, sha256, size, inline_data, object_key, object_region, sealed, expires_at AS "expires_at: DateTime<Utc>"
           FROM validation_candidates WHERE token_sha256 = $1"#,
        token_sha256
    )
    .fetch_optional(ex)
    .await?)
}

pub(crate) async fn delete_candidate<'e>(ex: impl PgExecutor<'e>, token_sha256: &str) -> Result<()> {
    sqlx::query!("DELETE FROM validation_candidates WHERE token_sha256 = $1", token_sha256).execute(ex).await?;
    Ok(())
}
