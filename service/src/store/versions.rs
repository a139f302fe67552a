//! The `versions` and `scopes` tables.
use crate::error::Result;
use chrono::{DateTime, Utc};
use imprint_domain::Selector;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use std::collections::BTreeMap;

pub(crate) struct VersionRow {
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub message: String,
    pub metadata: Json<BTreeMap<String, String>>,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub storage: String,
    pub object_key: Option<String>,
    pub object_owned: bool,
    /// The region `object_key` is in (None: home; docs/regions.md).
    pub object_region: Option<String>,
    pub purged_at: Option<DateTime<Utc>>,
    /// The stored payload is sealed at rest (docs/encryption.md).
    pub sealed: bool,
    /// Rejected by the topic's checks and kept unreleased (`keep_rejected`).
    pub rejected: bool,
}

pub(crate) struct NewVersion<'a> {
    pub topic_id: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub created_by: &'a str,
    pub message: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    pub content_type: &'a str,
    pub sha256: &'a str,
    pub size: u64,
    pub stored: StoredAt<'a>,
    /// The stored bytes (inline or the object) are sealed at rest.
    pub sealed: bool,
    /// Kept unreleased as rejected by the topic's checks (`keep_rejected`).
    pub rejected: bool,
}

/// Where a new version's payload is.
pub(crate) enum StoredAt<'a> {
    Inline(&'a [u8]),
    /// An object; `owned`: Imprint wrote it (and deletes it when the version is purged).
    /// `region`: the region whose store holds `key` (None: home).
    Object {
        key: &'a str,
        owned: bool,
        region: Option<&'a str>,
    },
}

/// Stores a version row.
pub(crate) async fn insert(conn: &mut PgConnection, v: NewVersion<'_>) -> Result<()> {
    let metadata = serde_json::to_value(v.metadata).unwrap_or_default();
    let (storage, inline, key, owned, region) = match v.stored {
        StoredAt::Inline(b) => ("inline", Some(b), None, false, None),
        StoredAt::Object { key, owned, region } => ("object", None, Some(key), owned, region),
    };
    sqlx::query!(
        "INSERT INTO versions (topic_id, version, created_at, created_by, message, metadata, content_type, size, sha256,
                               storage, inline_data, object_key, object_owned, sealed, rejected, object_region)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        v.topic_id,
        v.version,
        v.created_at as _,
        v.created_by,
        v.message,
        metadata,
        v.content_type,
        v.size as i64,
        v.sha256,
        storage,
        inline,
        key,
        owned,
        v.sealed,
        v.rejected,
        region,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Versions of a topic newest first, below `before`.
pub(crate) async fn list<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<VersionRow>> {
    Ok(sqlx::query_as!(
        VersionRow,
        r#"SELECT version, created_at AS "created_at: DateTime<Utc>", created_by, message, metadata AS "metadata: Json<BTreeMap<String, String>>",
                  content_type, size, sha256, storage, object_key, object_owned, object_region, purged_at AS "purged_at: DateTime<Utc>", sealed, rejected
           FROM versions WHERE topic_id = $1 AND ($2::bigint IS NULL OR version < $2)
           ORDER BY version DESC LIMIT $3"#,
        topic_id,
        before,
        limit
    )
    .fetch_all(ex)
    .await?)
}

pub(crate) async fn get<'e>(ex: impl PgExecutor<'e>, topic_id: i64, version: i64) -> Result<Option<VersionRow>> {
    Ok(sqlx::query_as!(
        VersionRow,
        r#"SELECT version, created_at AS "created_at: DateTime<Utc>", created_by, message, metadata AS "metadata: Json<BTreeMap<String, String>>",
                  content_type, size, sha256, storage, object_key, object_owned, object_region, purged_at AS "purged_at: DateTime<Utc>", sealed, rejected
           FROM versions WHERE topic_id = $1 AND version = $2"#,
        topic_id,
        version
    )
    .fetch_optional(ex)
    .await?)
}

pub(crate) struct DataRow {
    pub inline_data: Option<Vec<u8>>,
    pub sealed: bool,
    pub object_key: Option<String>,
    /// The region `object_key` is in (None: home).
    pub object_region: Option<String>,
    pub size: i64,
    pub content_type: String,
    pub sha256: String,
    pub purged_at: Option<DateTime<Utc>>,
    pub rejected: bool,
}

pub(crate) async fn data<'e>(ex: impl PgExecutor<'e>, topic_id: i64, version: i64) -> Result<Option<DataRow>> {
    Ok(sqlx::query_as!(
        DataRow,
        r#"SELECT inline_data, sealed, object_key, object_region, size, content_type, sha256, purged_at AS "purged_at: DateTime<Utc>", rejected FROM versions
           WHERE topic_id = $1 AND version = $2"#,
        topic_id,
        version
    )
    .fetch_optional(ex)
    .await?)
}

pub(crate) async fn created_at<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    version: i64,
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar!(
        r#"SELECT created_at AS "created_at: DateTime<Utc>" FROM versions WHERE topic_id = $1 AND version = $2"#,
        topic_id,
        version
    )
    .fetch_optional(ex)
    .await?)
}

pub(crate) struct ScopeRow {
    pub version: i64,
    pub selector_key: String,
    pub added_at: DateTime<Utc>,
    pub added_by: String,
}

/// The scopes of some versions of a topic, oldest first.
pub(crate) async fn scopes_of<'e>(ex: impl PgExecutor<'e>, topic_id: i64, versions: &[i64]) -> Result<Vec<ScopeRow>> {
    Ok(sqlx::query_as!(
        ScopeRow,
        r#"SELECT version, selector_key, added_at AS "added_at: DateTime<Utc>", added_by FROM scopes
           WHERE topic_id = $1 AND version = ANY($2) ORDER BY added_at, selector_key"#,
        topic_id,
        versions
    )
    .fetch_all(ex)
    .await?)
}

/// Adds scopes to a version (those it has already are left alone). Returns how many were new.
pub(crate) async fn insert_scopes(
    conn: &mut PgConnection,
    topic_id: i64,
    version: i64,
    scopes: &[Selector],
    at: DateTime<Utc>,
    who: &str,
) -> Result<u64> {
    if scopes.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = scopes.iter().map(ToString::to_string).collect();
    let json: Vec<serde_json::Value> = scopes.iter().map(Selector::to_json).collect();
    let done = sqlx::query!(
        "INSERT INTO scopes (topic_id, version, selector, selector_key, added_at, added_by)
         SELECT $1, $2, s.selector, s.key, $5, $6 FROM UNNEST($3::jsonb[], $4::text[]) AS s(selector, key)
         ON CONFLICT DO NOTHING",
        topic_id,
        version,
        &json,
        &keys,
        at as _,
        who
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// When and by whom a version got a scope.
pub(crate) async fn scope<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    version: i64,
    selector_key: &str,
) -> Result<Option<(DateTime<Utc>, String)>> {
    let r = sqlx::query!(
        r#"SELECT added_at AS "added_at: DateTime<Utc>", added_by FROM scopes
           WHERE topic_id = $1 AND version = $2 AND selector_key = $3"#,
        topic_id,
        version,
        selector_key
    )
    .fetch_optional(ex)
    .await?;
    Ok(r.map(|r| (r.added_at, r.added_by)))
}

/// The version exists, its payload has not been purged and it was not rejected by the
/// topic's checks (`keep_rejected`); otherwise the matching error. Everything that
/// releases a version (a scope, a pin, a rollout, a change request for one) asks this.
pub(crate) async fn require_live(conn: &mut PgConnection, t: &super::topics::TopicRef, version: u64) -> Result<()> {
    let r = sqlx::query!(
        r#"SELECT purged_at AS "purged_at: DateTime<Utc>", rejected FROM versions WHERE topic_id = $1 AND version = $2"#,
        t.id,
        version as i64
    )
    .fetch_optional(&mut *conn)
    .await?;
    match r {
        None => Err(crate::error::Error::VersionNotFound { topic: t.name.clone(), version }),
        Some(r) if r.purged_at.is_some() => Err(crate::error::Error::VersionPurged { topic: t.name.clone(), version }),
        Some(r) if r.rejected => Err(crate::error::Error::VersionRejected { topic: t.name.clone(), version }),
        Some(_) => Ok(()),
    }
}

pub(crate) struct PolicyRow {
    pub id: i64,
    pub name: String,
    pub retention_max_versions: Option<i32>,
    pub retention_max_age_days: Option<i32>,
}

/// Topics that have a retention policy (the janitor's work list).
pub(crate) async fn topics_with_policy<'e>(ex: impl PgExecutor<'e>) -> Result<Vec<PolicyRow>> {
    Ok(sqlx::query_as!(
        PolicyRow,
        "SELECT id, name, retention_max_versions, retention_max_age_days FROM topics
         WHERE retention_max_versions IS NOT NULL OR retention_max_age_days IS NOT NULL ORDER BY id"
    )
    .fetch_all(ex)
    .await?)
}

pub(crate) struct PurgedRow {
    pub version: i64,
    pub size: i64,
    pub storage: String,
    pub object_key: Option<String>,
    pub object_owned: bool,
    pub object_region: Option<String>,
}

/// Purges versions that are not purged yet: the payload goes, the row stays as a
/// tombstone. Returns the versions this call purged (a concurrent purge gets none twice).
pub(crate) async fn purge(
    conn: &mut PgConnection,
    topic_id: i64,
    versions: &[i64],
    at: DateTime<Utc>,
) -> Result<Vec<PurgedRow>> {
    Ok(sqlx::query_as!(
        PurgedRow,
        "UPDATE versions SET purged_at = $3, inline_data = NULL
         WHERE topic_id = $1 AND version = ANY($2) AND purged_at IS NULL
         RETURNING version, size, storage, object_key, object_owned, object_region",
        topic_id,
        versions,
        at as _
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// The sizes of a topic's live versions.
pub(crate) async fn sizes<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<std::collections::HashMap<i64, i64>> {
    let rows = sqlx::query!("SELECT version, size FROM versions WHERE topic_id = $1 AND purged_at IS NULL", topic_id)
        .fetch_all(ex)
        .await?;
    Ok(rows.into_iter().map(|r| (r.version, r.size)).collect())
}

/// A sealed version's stored payload, for a rewrap (`keys rotate --rewrap`).
pub(crate) struct SealedRow {
    pub topic_id: i64,
    pub version: i64,
    pub inline_data: Option<Vec<u8>>,
    pub object_key: Option<String>,
    /// The region `object_key` is in (None: home).
    pub object_region: Option<String>,
}

/// The sealed, not purged versions after `(topic_id, version)`, in that order.
pub(crate) async fn sealed_after<'e>(ex: impl PgExecutor<'e>, after: (i64, i64), limit: i64) -> Result<Vec<SealedRow>> {
    Ok(sqlx::query_as!(
        SealedRow,
        r#"SELECT topic_id, version, inline_data, object_key, object_region FROM versions
           WHERE sealed AND purged_at IS NULL AND (topic_id, version) > ($1, $2)
           ORDER BY topic_id, version LIMIT $3"#,
        after.0,
        after.1,
        limit
    )
    .fetch_all(ex)
    .await?)
}

/// Replaces a sealed inline payload with its rewrapped form, if it is still `old`.
pub(crate) async fn replace_sealed_inline<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: i64,
    version: i64,
    old: &[u8],
    new: &[u8],
) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE versions SET inline_data = $4
         WHERE topic_id = $1 AND version = $2 AND sealed AND purged_at IS NULL AND inline_data = $3",
        topic_id,
        version,
        old,
        new
    )
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}
