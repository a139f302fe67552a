//! The `api_tokens` table (tokens are stored as SHA-256 hashes).
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

pub(crate) struct TokenIdentity {
    pub name: String,
    pub is_admin: bool,
    pub team: Option<String>,
    pub kind: String,
    pub labels: serde_json::Value,
    pub topics: Vec<String>,
}

/// The active token with this hash, marking it used — at most once a minute: a write per
/// request made every request with one token a committed (fsynced) update of one row,
/// which serialised them all (publishing topped out near 200/s).
pub(crate) async fn use_token<'e>(
    ex: impl PgExecutor<'e>,
    hash: &str,
    at: DateTime<Utc>,
) -> Result<Option<TokenIdentity>> {
    Ok(sqlx::query_as!(
        TokenIdentity,
        r#"WITH used AS (
               UPDATE api_tokens SET last_used_at = $2::timestamptz
               WHERE token_hash = $1 AND revoked_at IS NULL
                 AND (last_used_at IS NULL OR last_used_at < $2::timestamptz - interval '1 minute'))
           SELECT name AS "name!", is_admin AS "is_admin!", team, kind AS "kind!", labels AS "labels!", topics AS "topics!"
           FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"#,
        hash,
        at as _
    )
    .fetch_optional(ex)
    .await?)
}

/// Revokes an active bootstrap token whose value is not `hash`; true if one was.
pub(crate) async fn revoke_other_bootstrap(conn: &mut PgConnection, hash: &str, at: DateTime<Utc>) -> Result<bool> {
    let done = sqlx::query!(
        "UPDATE api_tokens SET revoked_at = $2 WHERE name = 'bootstrap' AND revoked_at IS NULL AND token_hash <> $1",
        hash,
        at as _
    )
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Makes `hash` an active admin bootstrap token; true if that changed anything.
pub(crate) async fn upsert_bootstrap(conn: &mut PgConnection, hash: &str, at: DateTime<Utc>) -> Result<bool> {
    let r = sqlx::query_scalar!(
        "INSERT INTO api_tokens (name, token_hash, is_admin, kind, created_by, created_at)
         VALUES ('bootstrap', $1, true, 'admin', 'IMPRINT_BOOTSTRAP_TOKEN', $2)
         ON CONFLICT (token_hash) DO UPDATE SET revoked_at = NULL, is_admin = true, kind = 'admin'
           WHERE api_tokens.revoked_at IS NOT NULL OR NOT api_tokens.is_admin OR api_tokens.kind <> 'admin'
         RETURNING id",
        hash,
        at as _
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(r.is_some())
}

pub(crate) struct NewTokenRow<'a> {
    pub name: &'a str,
    pub hash: &'a str,
    pub kind: &'a str,
    pub admin: bool,
    pub team: Option<&'a str>,
    pub labels: serde_json::Value,
    pub topics: &'a [String],
    pub who: &'a str,
    pub at: DateTime<Utc>,
}

/// Inserts a token; false if an active token has this name.
pub(crate) async fn insert(conn: &mut PgConnection, t: NewTokenRow<'_>) -> Result<bool> {
    let r = sqlx::query_scalar!(
        "INSERT INTO api_tokens (name, token_hash, kind, is_admin, team, labels, topics, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING RETURNING id",
        t.name,
        t.hash,
        t.kind,
        t.admin,
        t.team,
        t.labels,
        t.topics,
        t.who,
        t.at as _
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(r.is_some())
}

/// Revokes the active token named `name`; false if there is none.
pub(crate) async fn revoke(conn: &mut PgConnection, name: &str, at: DateTime<Utc>) -> Result<bool> {
    let done =
        sqlx::query!("UPDATE api_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL", name, at as _)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() > 0)
}

pub(crate) struct TokenRow {
    pub name: String,
    pub is_admin: bool,
    pub kind: String,
    pub team: Option<String>,
    pub labels: serde_json::Value,
    pub topics: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

pub(crate) async fn list_active<'e>(ex: impl PgExecutor<'e>) -> Result<Vec<TokenRow>> {
    Ok(sqlx::query_as!(
        TokenRow,
        r#"SELECT name, is_admin, kind, team, labels, topics, created_at AS "created_at: DateTime<Utc>",
                  last_used_at AS "last_used_at: DateTime<Utc>" FROM api_tokens WHERE revoked_at IS NULL
           ORDER BY created_at DESC"#,
    )
    .fetch_all(ex)
    .await?)
}

/// A mark that moves whenever a token is revoked anywhere: (revoked tokens, the latest
/// revocation). Servers compare it every few seconds to end what revoked tokens hold open.
pub(crate) async fn revocation_mark<'e>(ex: impl PgExecutor<'e>) -> Result<(i64, Option<DateTime<Utc>>)> {
    let r = sqlx::query!(
        r#"SELECT count(revoked_at) AS "n!", max(revoked_at) AS "latest: DateTime<Utc>"
           FROM api_tokens WHERE revoked_at IS NOT NULL"#
    )
    .fetch_one(ex)
    .await?;
    Ok((r.n, r.latest))
}

/// The hashes of tokens revoked at or after `since`.
pub(crate) async fn revoked_since<'e>(ex: impl PgExecutor<'e>, since: DateTime<Utc>) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar!("SELECT token_hash FROM api_tokens WHERE revoked_at >= $1", since as _)
        .fetch_all(ex)
        .await?)
}
