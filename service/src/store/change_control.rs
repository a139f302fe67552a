//! The change-control tables: `drafts`, `topic_reviews`, `change_requests`,
//! `change_approvals` and `freezes`.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use std::collections::BTreeMap;

pub(crate) struct DraftRow {
    pub id: i64,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub message: String,
    pub metadata: Json<BTreeMap<String, String>>,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub released_version: Option<i64>,
}

pub(crate) struct NewDraft<'a> {
    pub topic_id: i64,
    pub at: DateTime<Utc>,
    pub by: &'a str,
    pub message: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    pub content_type: &'a str,
    pub sha256: &'a str,
    /// As stored: sealed when `sealed` (an at-rest topic's draft).
    pub data: &'a [u8],
    /// The plaintext's size.
    pub size: u64,
    pub sealed: bool,
}

pub(crate) async fn insert_draft(conn: &mut PgConnection, d: NewDraft<'_>) -> Result<i64> {
    let metadata = serde_json::to_value(d.metadata).unwrap_or_default();
    Ok(sqlx::query_scalar!(
        "INSERT INTO drafts (topic_id, created_at, created_by, updated_at, message, metadata, content_type, size, sha256, data, sealed)
         VALUES ($1, $2, $3, $2, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        d.topic_id,
        d.at as _,
        d.by,
        d.message,
        metadata,
        d.content_type,
        d.size as i64,
        d.sha256,
        d.data,
        d.sealed,
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Replaces an open draft's payload; `false`: it is not open (any more).
pub(crate) async fn replace_draft(conn: &mut PgConnection, id: i64, d: NewDraft<'_>) -> Result<bool> {
    let metadata = serde_json::to_value(d.metadata).unwrap_or_default();
    let done = sqlx::query!(
        "UPDATE drafts SET updated_at = $2, message = $3, metadata = $4, content_type = $5, size = $6, sha256 = $7, data = $8,
                           sealed = $10
         WHERE id = $1 AND topic_id = $9 AND state = 'open'",
        id,
        d.at as _,
        d.message,
        metadata,
        d.content_type,
        d.size as i64,
        d.sha256,
        d.data,
        d.topic_id,
        d.sealed,
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn draft<'e>(ex: impl PgExecutor<'e>, topic_id: i64, id: i64) -> Result<Option<DraftRow>> {
    Ok(sqlx::query_as!(
        DraftRow,
        r#"SELECT id, state, created_at AS "created_at: DateTime<Utc>", created_by, updated_at AS "updated_at: DateTime<Utc>",
                  message, metadata AS "metadata: Json<BTreeMap<String, String>>", content_type, size, sha256, released_version
           FROM drafts WHERE topic_id = $1 AND id = $2"#,
        topic_id,
        id
    )
    .fetch_optional(ex)
    .await?)
}

/// An open draft's stored payload, and whether it is sealed at rest.
pub(crate) async fn draft_data<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<Option<(Vec<u8>, bool)>> {
    let row = sqlx::query!("SELECT data, sealed FROM drafts WHERE id = $1", id).fetch_optional(ex).await?;
    Ok(row.and_then(|r| r.data.map(|d| (d, r.sealed))))
}

/// A topic's open drafts, newest first (at most 200).
pub(crate) async fn open_drafts<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<Vec<DraftRow>> {
    Ok(sqlx::query_as!(
        DraftRow,
        r#"SELECT id, state, created_at AS "created_at: DateTime<Utc>", created_by, updated_at AS "updated_at: DateTime<Utc>",
                  message, metadata AS "metadata: Json<BTreeMap<String, String>>", content_type, size, sha256, released_version
           FROM drafts WHERE topic_id = $1 AND state = 'open' ORDER BY id DESC LIMIT 200"#,
        topic_id
    )
    .fetch_all(ex)
    .await?)
}

/// Closes an open draft (its payload goes); `false`: it was not open.
pub(crate) async fn close_draft(conn: &mut PgConnection, id: i64, state: &str, version: Option<i64>) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE drafts SET state = $2, released_version = $3, data = NULL WHERE id = $1 AND state = 'open'",
        id,
        state,
        version
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) struct ReviewRow {
    pub required_approvals: i32,
    pub approver_team: Option<String>,
    pub approver_users: Vec<String>,
}

pub(crate) async fn review<'e>(ex: impl PgExecutor<'e>, topic_id: i64) -> Result<Option<ReviewRow>> {
    Ok(sqlx::query_as!(
        ReviewRow,
        "SELECT required_approvals, approver_team, approver_users FROM topic_reviews WHERE topic_id = $1",
        topic_id
    )
    .fetch_optional(ex)
    .await?)
}

pub(crate) async fn set_review(
    conn: &mut PgConnection,
    topic_id: i64,
    r: Option<&ReviewRow>,
    at: DateTime<Utc>,
    by: &str,
) -> Result<()> {
    match r {
        None => {
            sqlx::query!("DELETE FROM topic_reviews WHERE topic_id = $1", topic_id).execute(&mut *conn).await?;
        }
        Some(r) => {
            sqlx::query!(
                "INSERT INTO topic_reviews (topic_id, required_approvals, approver_team, approver_users, updated_at, updated_by)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (topic_id) DO UPDATE SET required_approvals = $2, approver_team = $3, approver_users = $4,
                   updated_at = $5, updated_by = $6",
                topic_id,
                r.required_approvals,
                r.approver_team,
                &r.approver_users,
                at as _,
                by
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

pub(crate) struct RequestRow {
    pub id: i64,
    pub topic_id: i64,
    pub topic: String,
    pub owner: String,
    pub kind: String,
    pub draft_id: Option<i64>,
    pub change: serde_json::Value,
    pub author: String,
    pub author_admin: bool,
    pub message: String,
    pub required_approvals: i32,
    pub state: String,
    pub at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub reason: Option<String>,
    pub applied_version: Option<i64>,
}

pub(crate) struct NewRequest<'a> {
    pub topic_id: i64,
    /// `release`, `scope`, `rollout`, `pin` or `unpin`.
    pub kind: &'a str,
    /// The draft a `release` releases.
    pub draft_id: Option<i64>,
    pub change: serde_json::Value,
    pub author: &'a str,
    pub author_admin: bool,
    pub message: &'a str,
    pub required_approvals: i32,
    pub state: &'a str,
    pub at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

pub(crate) async fn insert_request(conn: &mut PgConnection, r: NewRequest<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        "INSERT INTO change_requests (topic_id, kind, draft_id, change, author, author_admin, message, required_approvals,
                                      state, at, created_at, updated_at)
         VALUES ($1, $11, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING id",
        r.topic_id,
        r.draft_id,
        r.change,
        r.author,
        r.author_admin,
        r.message,
        r.required_approvals,
        r.state,
        r.at as _,
        r.now as _,
        r.kind,
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// One request; with `lock` its row is locked until the transaction ends (approvals,
/// rejections, withdrawals and applying it queue here).
pub(crate) async fn request(conn: &mut PgConnection, id: i64, lock: bool) -> Result<Option<RequestRow>> {
    let row = if lock {
        sqlx::query_as!(
            RequestRow,
            r#"SELECT r.id, r.topic_id, t.name AS topic, t.owner, r.kind, r.draft_id, r.change, r.author, r.author_admin, r.message,
                      r.required_approvals, r.state, r.at AS "at: DateTime<Utc>", r.created_at AS "created_at: DateTime<Utc>",
                      r.updated_at AS "updated_at: DateTime<Utc>", r.reason, r.applied_version
               FROM change_requests r JOIN topics t ON t.id = r.topic_id WHERE r.id = $1 FOR UPDATE OF r"#,
            id
        )
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_as!(
            RequestRow,
            r#"SELECT r.id, r.topic_id, t.name AS topic, t.owner, r.kind, r.draft_id, r.change, r.author, r.author_admin, r.message,
                      r.required_approvals, r.state, r.at AS "at: DateTime<Utc>", r.created_at AS "created_at: DateTime<Utc>",
                      r.updated_at AS "updated_at: DateTime<Utc>", r.reason, r.applied_version
               FROM change_requests r JOIN topics t ON t.id = r.topic_id WHERE r.id = $1"#,
            id
        )
        .fetch_optional(&mut *conn)
        .await?
    };
    Ok(row)
}

/// Requests newest first (at most `limit`), of one topic or all, in some states or all.
pub(crate) async fn requests<'e>(
    ex: impl PgExecutor<'e>,
    topic_id: Option<i64>,
    states: &[String],
    limit: i64,
) -> Result<Vec<RequestRow>> {
    Ok(sqlx::query_as!(
        RequestRow,
        r#"SELECT r.id, r.topic_id, t.name AS topic, t.owner, r.kind, r.draft_id, r.change, r.author, r.author_admin, r.message,
                  r.required_approvals, r.state, r.at AS "at: DateTime<Utc>", r.created_at AS "created_at: DateTime<Utc>",
                  r.updated_at AS "updated_at: DateTime<Utc>", r.reason, r.applied_version
           FROM change_requests r JOIN topics t ON t.id = r.topic_id
           WHERE ($1::bigint IS NULL OR r.topic_id = $1) AND (cardinality($2::text[]) = 0 OR r.state = ANY($2))
           ORDER BY r.id DESC LIMIT $3"#,
        topic_id,
        states,
        limit
    )
    .fetch_all(ex)
    .await?)
}

/// Moves a request from one of `from` to `to`; `false`: it was in none of them.
pub(crate) async fn transition(
    conn: &mut PgConnection,
    id: i64,
    from: &[&str],
    to: &str,
    at: DateTime<Utc>,
    reason: Option<&str>,
    version: Option<i64>,
) -> Result<bool> {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let done = sqlx::query!(
        "UPDATE change_requests SET state = $3, updated_at = $4, reason = COALESCE($5, reason),
                applied_version = COALESCE($6, applied_version)
         WHERE id = $1 AND state = ANY($2)",
        id,
        &from,
        to,
        at as _,
        reason,
        version
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records an approval; `false`: this approver had approved already.
pub(crate) async fn approve(conn: &mut PgConnection, id: i64, approver: &str, at: DateTime<Utc>) -> Result<bool> {
    let done = sqlx::query!(
        "INSERT INTO change_approvals (request_id, approver, approved_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        id,
        approver,
        at as _
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) struct ApprovalRow {
    pub approver: String,
    pub approved_at: DateTime<Utc>,
}

pub(crate) async fn approvals<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<Vec<ApprovalRow>> {
    Ok(sqlx::query_as!(
        ApprovalRow,
        r#"SELECT approver, approved_at AS "approved_at: DateTime<Utc>" FROM change_approvals WHERE request_id = $1 ORDER BY approved_at, approver"#,
        id
    )
    .fetch_all(ex)
    .await?)
}

/// Requests whose time has come: approved ones to apply, pending ones to expire (ids).
pub(crate) async fn due<'e>(ex: impl PgExecutor<'e>, now: DateTime<Utc>) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query!(
        r#"SELECT id, state FROM change_requests WHERE state IN ('pending', 'approved') AND at IS NOT NULL AND at <= $1
           ORDER BY at, id LIMIT 100"#,
        now as _
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.state)).collect())
}

pub(crate) struct FreezeRow {
    pub id: i64,
    pub name: String,
    pub team: Option<String>,
    pub topic: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub days: Option<Vec<String>>,
    pub local_from: Option<String>,
    pub local_to: Option<String>,
    pub tz: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

pub(crate) struct NewFreeze<'a> {
    pub name: &'a str,
    pub team: Option<&'a str>,
    pub topic_id: Option<i64>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub days: Option<Vec<String>>,
    pub local_from: Option<&'a str>,
    pub local_to: Option<&'a str>,
    pub tz: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub by: &'a str,
}

pub(crate) async fn insert_freeze(conn: &mut PgConnection, f: NewFreeze<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        "INSERT INTO freezes (name, team, topic_id, starts_at, ends_at, days, local_from, local_to, tz, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        f.name,
        f.team,
        f.topic_id,
        f.starts_at as _,
        f.ends_at as _,
        f.days.as_deref(),
        f.local_from,
        f.local_to,
        f.tz,
        f.at as _,
        f.by
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Every freeze window (at most 1000), or those that apply to one topic (global, its
/// owner's, its own).
pub(crate) async fn freezes<'e>(ex: impl PgExecutor<'e>, applying_to: Option<(i64, &str)>) -> Result<Vec<FreezeRow>> {
    let (topic_id, owner) = match applying_to {
        Some((id, owner)) => (Some(id), Some(owner)),
        None => (None, None),
    };
    Ok(sqlx::query_as!(
        FreezeRow,
        r#"SELECT f.id, f.name, f.team, t.name AS "topic?", f.starts_at AS "starts_at: DateTime<Utc>", f.ends_at AS "ends_at: DateTime<Utc>",
                  f.days, f.local_from, f.local_to, f.tz, f.created_at AS "created_at: DateTime<Utc>", f.created_by
           FROM freezes f LEFT JOIN topics t ON t.id = f.topic_id
           WHERE $1::bigint IS NULL
              OR (f.team IS NULL AND f.topic_id IS NULL) OR f.team = $2 OR f.topic_id = $1
           ORDER BY f.id LIMIT 1000"#,
        topic_id,
        owner
    )
    .fetch_all(ex)
    .await?)
}

pub(crate) async fn freeze<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<Option<FreezeRow>> {
    Ok(sqlx::query_as!(
        FreezeRow,
        r#"SELECT f.id, f.name, f.team, t.name AS "topic?", f.starts_at AS "starts_at: DateTime<Utc>", f.ends_at AS "ends_at: DateTime<Utc>",
                  f.days, f.local_from, f.local_to, f.tz, f.created_at AS "created_at: DateTime<Utc>", f.created_by
           FROM freezes f LEFT JOIN topics t ON t.id = f.topic_id WHERE f.id = $1"#,
        id
    )
    .fetch_optional(ex)
    .await?)
}

pub(crate) async fn delete_freeze(conn: &mut PgConnection, id: i64) -> Result<bool> {
    Ok(sqlx::query!("DELETE FROM freezes WHERE id = $1", id).execute(&mut *conn).await?.rows_affected() == 1)
}

/// A draft's payload changed: its open requests go back to no approvals.
pub(crate) async fn reset_approvals(conn: &mut PgConnection, draft_id: i64) -> Result<()> {
    sqlx::query!(
        "DELETE FROM change_approvals WHERE request_id IN (SELECT id FROM change_requests WHERE draft_id = $1 AND state = 'pending')",
        draft_id
    )
    .execute(&mut *conn)
    .await?;
    // An approved one waiting for its time reviewed the old payload too: back to pending.
    sqlx::query!(
        "UPDATE change_requests SET state = 'pending' WHERE draft_id = $1 AND state = 'approved' AND required_approvals > 0",
        draft_id
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM change_approvals WHERE request_id IN (SELECT id FROM change_requests WHERE draft_id = $1 AND state = 'pending')",
        draft_id
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A draft's open requests, locked.
pub(crate) async fn open_requests_of_draft(conn: &mut PgConnection, draft_id: i64) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM change_requests WHERE draft_id = $1 AND state IN ('pending', 'approved') FOR UPDATE",
        draft_id
    )
    .fetch_all(&mut *conn)
    .await?)
}

pub(crate) async fn topic_of_request(conn: &mut PgConnection, id: i64) -> Result<Option<String>> {
    Ok(sqlx::query_scalar!(
        "SELECT t.name FROM change_requests r JOIN topics t ON t.id = r.topic_id WHERE r.id = $1",
        id
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// Has the draft a pending or approved request?
pub(crate) async fn has_open_request(conn: &mut PgConnection, draft_id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM change_requests WHERE draft_id = $1 AND state IN ('pending', 'approved')) AS "open!""#,
        draft_id
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Open drafts whose payload is sealed at rest (id, stored bytes), for a rewrap.
pub(crate) async fn sealed_drafts<'e>(ex: impl PgExecutor<'e>) -> Result<Vec<(i64, Vec<u8>)>> {
    let rows =
        sqlx::query!(r#"SELECT id, data AS "data!" FROM drafts WHERE sealed AND state = 'open' AND data IS NOT NULL"#)
            .fetch_all(ex)
            .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.data)).collect())
}

/// Replaces a sealed draft payload with its rewrapped form, if it is still `old`.
pub(crate) async fn replace_sealed_draft<'e>(ex: impl PgExecutor<'e>, id: i64, old: &[u8], new: &[u8]) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE drafts SET data = $3 WHERE id = $1 AND sealed AND state = 'open' AND data = $2",
        id,
        old,
        new
    )
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}
