//! The `users`, `teams` and `team_members` tables.
use crate::error::Result;
use crate::model::{Team, User};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

pub(crate) struct UserRow {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    pub created_at: DateTime<Utc>,
    pub disabled: bool,
    pub teams: Vec<String>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            username: r.username,
            is_admin: r.is_admin,
            teams: r.teams,
            created_at: r.created_at,
            disabled: r.disabled,
        }
    }
}

/// A user by name or by id (one of the two), with their teams; with `enabled_only`,
/// a disabled user is not found.
pub(crate) async fn find<'e>(
    ex: impl PgExecutor<'e>,
    username: Option<&str>,
    id: Option<i64>,
    enabled_only: bool,
) -> Result<Option<User>> {
    let row = sqlx::query_as!(
        UserRow,
        r#"SELECT u.id, u.username, u.is_admin, u.created_at AS "created_at: DateTime<Utc>", u.disabled_at IS NOT NULL AS "disabled!",
                  ARRAY(SELECT t.name FROM team_members m JOIN teams t ON t.id = m.team_id
                        WHERE m.user_id = u.id ORDER BY t.name) AS "teams!"
           FROM users u
           WHERE ($1::text IS NULL OR u.username = $1) AND ($2::bigint IS NULL OR u.id = $2)
             AND ($1::text IS NOT NULL OR $2::bigint IS NOT NULL)
             AND (NOT $3 OR u.disabled_at IS NULL)"#,
        username,
        id,
        enabled_only
    )
    .fetch_optional(ex)
    .await?;
    Ok(row.map(User::from))
}

pub(crate) async fn list<'e>(ex: impl PgExecutor<'e>) -> Result<Vec<User>> {
    let rows = sqlx::query_as!(
        UserRow,
        r#"SELECT u.id, u.username, u.is_admin, u.created_at AS "created_at: DateTime<Utc>", u.disabled_at IS NOT NULL AS "disabled!",
                  ARRAY(SELECT t.name FROM team_members m JOIN teams t ON t.id = m.team_id
                        WHERE m.user_id = u.id ORDER BY t.name) AS "teams!"
           FROM users u ORDER BY u.username"#
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(User::from).collect())
}

pub(crate) async fn exists<'e>(ex: impl PgExecutor<'e>, username: &str) -> Result<bool> {
    Ok(sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM users WHERE username = $1) AS "exists!""#, username)
        .fetch_one(ex)
        .await?)
}

pub(crate) struct Credentials {
    pub id: i64,
    pub password_hash: String,
    pub disabled: bool,
}

pub(crate) async fn credentials<'e>(ex: impl PgExecutor<'e>, username: &str) -> Result<Option<Credentials>> {
    Ok(sqlx::query_as!(
        Credentials,
        r#"SELECT id, password_hash, disabled_at IS NOT NULL AS "disabled!" FROM users WHERE username = $1"#,
        username
    )
    .fetch_optional(ex)
    .await?)
}

/// Inserts a user; `None` if the name is taken.
pub(crate) async fn insert(
    conn: &mut PgConnection,
    username: &str,
    password_hash: &str,
    is_admin: bool,
    who: &str,
    at: DateTime<Utc>,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar!(
        "INSERT INTO users (username, password_hash, is_admin, created_by, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (username) DO NOTHING RETURNING id",
        username,
        password_hash,
        is_admin,
        who,
        at as _
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// Sets a password hash; false if there is no such user.
/// Sets a user's password and moves their session epoch on (their sessions end);
/// returns the new epoch (`None`: no such user).
pub(crate) async fn set_password(conn: &mut PgConnection, username: &str, hash: &str) -> Result<Option<i64>> {
    let r = sqlx::query_scalar!(
        "UPDATE users SET password_hash = $2, session_epoch = session_epoch + 1 WHERE username = $1
         RETURNING session_epoch",
        username,
        hash
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(r)
}

/// A user's session epoch (`None`: no such user).
pub(crate) async fn session_epoch<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar!("SELECT session_epoch FROM users WHERE id = $1", id).fetch_optional(ex).await?)
}

/// Whether a user is disabled (`None`: no such user), locking the row.
pub(crate) async fn disabled_for_update(conn: &mut PgConnection, username: &str) -> Result<Option<bool>> {
    Ok(sqlx::query_scalar!(
        r#"SELECT disabled_at IS NOT NULL AS "disabled!" FROM users WHERE username = $1 FOR UPDATE"#,
        username
    )
    .fetch_optional(&mut *conn)
    .await?)
}

pub(crate) async fn set_disabled(
    conn: &mut PgConnection,
    username: &str,
    disabled: bool,
    at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE users SET disabled_at = CASE WHEN $2 THEN $3::timestamptz END WHERE username = $1",
        username,
        disabled,
        at as _
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(crate) async fn user_id(conn: &mut PgConnection, username: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar!("SELECT id FROM users WHERE username = $1", username).fetch_optional(&mut *conn).await?)
}

/// Inserts a team; `None` if the name is taken.
pub(crate) async fn insert_team(
    conn: &mut PgConnection,
    name: &str,
    description: &str,
    who: &str,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar!(
        r#"INSERT INTO teams (name, description, created_by, created_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (name) DO NOTHING RETURNING created_at AS "created_at: DateTime<Utc>""#,
        name,
        description,
        who,
        at as _
    )
    .fetch_optional(&mut *conn)
    .await?)
}

pub(crate) async fn team_id(conn: &mut PgConnection, name: &str) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar!("SELECT id FROM teams WHERE name = $1", name).fetch_optional(&mut *conn).await?)
}

/// Adds or removes a membership; true if that changed anything.
pub(crate) async fn set_member(conn: &mut PgConnection, team_id: i64, user_id: i64, member: bool) -> Result<bool> {
    let n = if member {
        sqlx::query!(
            "INSERT INTO team_members (team_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            team_id,
            user_id
        )
        .execute(&mut *conn)
        .await?
        .rows_affected()
    } else {
        sqlx::query!("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2", team_id, user_id)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    };
    Ok(n > 0)
}

pub(crate) async fn teams<'e>(ex: impl PgExecutor<'e>) -> Result<Vec<Team>> {
    let rows = sqlx::query!(
        r#"SELECT t.name, t.description, t.created_at AS "created_at: DateTime<Utc>",
                  ARRAY(SELECT u.username FROM team_members m JOIN users u ON u.id = m.user_id
                        WHERE m.team_id = t.id ORDER BY u.username) AS "members!"
           FROM teams t ORDER BY t.name"#
    )
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Team { name: r.name, description: r.description, members: r.members, created_at: r.created_at })
        .collect())
}
