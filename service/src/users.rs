//! Console users and teams: argon2id passwords, sign-in with throttling, the first-start
//! `admin`, and the admin operations on users and team membership. Sessions (cookies)
//! live above this crate; they keep a user id and turn it into a `Caller` per request
//! with `user_caller`, so disabling a user or changing their teams takes effect at once.
use crate::audit_log::audit;
use crate::error::{Error, Result};
use crate::model::{Team, User};
use crate::{Caller, Imprint};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The one answer to every failed sign-in, so it does not tell which part was wrong.
const WRONG_CREDENTIALS: &str = "wrong username or password";
pub const ADMIN_USERNAME: &str = "admin";
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longer inputs are refused without hashing: argon2's cost grows with the input.
const MAX_PASSWORD_BYTES: usize = 1024;
const GENERATED_PASSWORD_CHARS: usize = 20;

/// An argon2id hash (default parameters) of a random password nobody knows. Verified
/// against when the username does not exist, so that answer takes as long as a wrong
/// password does. `dummy_hash_uses_default_params` keeps it honest.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$dW5rbm93bi11c2VyLXNhbHQ$wjV1pmGrvvIsy5JkGNjHMTkSn+i3bh1bDxszRYvx8ms";

fn check_username(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok || name.len() > 64 {
        return Err(Error::invalid(
            "a username is 1-64 characters of lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(format!("a password has at least {MIN_PASSWORD_CHARS} characters")));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(format!("a password has at most {MAX_PASSWORD_BYTES} bytes")));
    }
    Ok(())
}

/// Team names are what `topics.owner` holds: the same characters, but never empty.
fn check_team_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::invalid("a team name is 1-64 letters, digits, '.', '_' or '-'"));
    }
    Ok(())
}

fn generate_password() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::rngs::OsRng.sample_iter(&Alphanumeric).take(GENERATED_PASSWORD_CHARS).map(char::from).collect()
}

fn hash_blocking(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
}

fn verify_blocking(password: &str, hash: &str) -> Result<bool> {
    let parsed = PasswordHash::new(hash).map_err(|e| Error::Internal(format!("stored password hash: {e}")))?;
    // The parameters come from the stored hash, so raising the defaults later keeps old
    // hashes working.
    Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

// ---------------------------------------------------------------------------------------
// Throttling
// ---------------------------------------------------------------------------------------

/// Failures before the first lock, its length, and the longest lock.
const LOCK_AFTER_FAILURES: u32 = 5;
const FIRST_LOCK: Duration = Duration::from_secs(30);
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// A counter with no failure for this long starts over.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Above this many counters, forgotten ones are dropped (usernames are attacker-chosen).
const PRUNE_ABOVE: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ThrottleKey {
    User(String),
    Client(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// How long the `count`-th consecutive failure locks: from the fifth on, 30 s doubling
/// per failure, at most 15 minutes.
fn lock_for(count: u32) -> Option<Duration> {
    let over = count.checked_sub(LOCK_AFTER_FAILURES)?;
    let factor = 1u32.checked_shl(over).unwrap_or(u32::MAX);
    Some(FIRST_LOCK.checked_mul(factor).unwrap_or(MAX_LOCK).min(MAX_LOCK))
}

/// Failed sign-ins per username and per client address, in this server's memory (a
/// restart forgets them; several replicas each count their own). Time is a parameter,
/// so the rules are tested without waiting.
#[derive(Default)]
pub(crate) struct SignInThrottle {
    entries: Mutex<HashMap<ThrottleKey, Failures>>,
}

impl SignInThrottle {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ThrottleKey, Failures>> {
        // A panic elsewhere while holding the lock leaves the counters usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until none of `keys` is locked, if one is.
    fn locked(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let entries = self.entries();
        keys.iter()
            .filter_map(|k| entries.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Counts a failure against every key; returns the longest lock it started.
    fn failed(&self, keys: &[ThrottleKey], now: Instant) -> Option<Duration> {
        let mut entries = self.entries();
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, f| f.locked_until.is_some_and(|u| u > now) || now.duration_since(f.last) < FORGET_AFTER);
        }
        let mut longest = None;
        for k in keys {
            let f = entries.entry(k.clone()).or_insert(Failures { count: 0, last: now, locked_until: None });
            if now.duration_since(f.last) >= FORGET_AFTER {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if let Some(d) = lock_for(f.count) {
                f.locked_until = Some(now + d);
                longest = longest.max(Some(d));
            }
        }
        longest
    }

    fn succeeded(&self, key: &ThrottleKey) {
        self.entries().remove(key);
    }
}

/// The counters a sign-in attempt touches. IPv6 clients are counted per /64, the block
/// one subscriber usually holds, so rotating addresses within it does not help.
fn throttle_keys(username: &str, client: Option<IpAddr>) -> Vec<ThrottleKey> {
    let user: String = username.trim().to_lowercase().chars().take(128).collect();
    let mut keys = vec![ThrottleKey::User(user)];
    if let Some(ip) = client {
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        };
        keys.push(ThrottleKey::Client(ip));
    }
    keys
}

// ---------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    is_admin: bool,
    created_at: DateTime<Utc>,
    disabled: bool,
    teams: Vec<String>,
}

const USER_COLUMNS: &str = "u.id, u.username, u.is_admin, u.created_at, u.disabled_at IS NOT NULL AS disabled,
    ARRAY(SELECT t.name FROM team_members m JOIN teams t ON t.id = m.team_id WHERE m.user_id = u.id ORDER BY t.name) AS teams";

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

impl User {
    /// The identity operations see for this user.
    pub fn caller(&self) -> Caller {
        Caller::User { id: self.id, name: self.username.clone(), admin: self.is_admin, teams: self.teams.clone() }
    }
}

#[derive(sqlx::FromRow)]
struct TeamRow {
    name: String,
    description: String,
    created_at: DateTime<Utc>,
    members: Vec<String>,
}

const TEAM_COLUMNS: &str = "t.name, t.description, t.created_at,
    ARRAY(SELECT u.username FROM team_members m JOIN users u ON u.id = m.user_id WHERE m.team_id = t.id ORDER BY u.username) AS members";

impl From<TeamRow> for Team {
    fn from(r: TeamRow) -> Self {
        Team { name: r.name, description: r.description, members: r.members, created_at: r.created_at }
    }
}

/// The password hash and state of a user, for sign-in.
struct Credentials {
    id: i64,
    password_hash: String,
    disabled: bool,
}

impl Imprint {
    /// Hashes on the blocking pool, a few at a time: argon2 is deliberately slow and
    /// memory-hungry, and must not stall the async workers or exhaust memory under a
    /// burst of sign-ins.
    async fn argon2<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let _permit =
            self.inner.hashing.acquire().await.map_err(|_| Error::Internal("password hashing stopped".into()))?;
        tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("password hashing task: {e}")))?
    }

    async fn hash_password(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        self.argon2(move || hash_blocking(&password)).await
    }

    async fn verify_password(&self, password: &str, hash: String) -> Result<bool> {
        let password = password.to_owned();
        self.argon2(move || verify_blocking(&password, &hash)).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.username = $1"))
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(User::from))
    }

    /// Creates the `admin` user on first start, with `password` or a generated one.
    /// Returns the password only when it was generated, for the server to print once. An
    /// existing `admin` is never touched: a restart must not reset a changed password.
    pub async fn ensure_admin_user(&self, password: Option<&str>) -> Result<Option<String>> {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE username = $1)")
            .bind(ADMIN_USERNAME)
            .fetch_one(self.pool())
            .await?;
        if exists {
            return Ok(None);
        }
        let (password, generated) = match password {
            Some(p) => {
                check_password(p)?;
                (p.to_owned(), false)
            }
            None => (generate_password(), true),
        };
        let hash = self.hash_password(&password).await?;
        let who = Caller::System.who();
        let mut tx = self.pool().begin().await?;
        // Replicas starting together: only the one whose insert lands creates (and prints).
        let created: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, is_admin, created_by) VALUES ($1, $2, true, $3)
             ON CONFLICT (username) DO NOTHING RETURNING id",
        )
        .bind(ADMIN_USERNAME)
        .bind(&hash)
        .bind(&who)
        .fetch_optional(&mut *tx)
        .await?;
        if created.is_none() {
            return Ok(None);
        }
        let source = if generated { "generated" } else { "IMPRINT_ADMIN_PASSWORD" };
        audit(
            &mut tx,
            &who,
            "user.create",
            None,
            json!({"username": ADMIN_USERNAME, "is_admin": true, "password": source}),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(password = source, "created the admin user");
        Ok(generated.then_some(password))
    }

    /// Checks a username and password. Every failure is the same 401 (unknown user,
    /// wrong password, disabled user) and takes as long; after repeated failures for a
    /// username or from a client address, attempts are refused for a while (429)
    /// without looking at the password.
    #[tracing::instrument(skip(self, password))]
    pub async fn sign_in(&self, username: &str, password: &str, client: Option<IpAddr>) -> Result<User> {
        let keys = throttle_keys(username, client);
        if let Some(wait) = self.inner.sign_in.locked(&keys, Instant::now()) {
            metrics::counter!("imprint_sign_ins_total", "outcome" => "throttled").increment(1);
            return Err(Error::TooManyAttempts { retry_after_s: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) });
        }
        let valid_name = check_username(username).is_ok();
        let creds: Option<Credentials> = if valid_name {
            sqlx::query_as::<_, (i64, String, bool)>(
                "SELECT id, password_hash, disabled_at IS NOT NULL FROM users WHERE username = $1",
            )
            .bind(username)
            .fetch_optional(self.pool())
            .await?
            .map(|(id, password_hash, disabled)| Credentials { id, password_hash, disabled })
        } else {
            None
        };
        let ok = if password.len() > MAX_PASSWORD_BYTES {
            false
        } else {
            let hash = creds.as_ref().map_or_else(|| DUMMY_HASH.to_owned(), |c| c.password_hash.clone());
            self.verify_password(password, hash).await?
        };
        let failure = match &creds {
            None => Err("unknown_user"),
            Some(c) if c.disabled => Err("disabled"),
            Some(_) if !ok => Err("wrong_password"),
            Some(c) => Ok(c.id),
        };
        let client_str = client.map(|c| c.to_string());
        let user_id = match failure {
            Ok(id) => id,
            Err(reason) => {
                let locked = self.inner.sign_in.failed(&keys, Instant::now());
                metrics::counter!("imprint_sign_ins_total", "outcome" => "failed").increment(1);
                // A name that is not a valid username may be a password typed into the
                // wrong field; it is not written to a log every signed-in user can read.
                let details = json!({
                    "username": valid_name.then_some(username),
                    "reason": reason,
                    "client": client_str,
                    "locked_for_s": locked.map(|d| d.as_secs()),
                });
                // The answer stays a 401 even if the record cannot be written.
                if let Err(e) = self.audit_alone(&Caller::Anonymous.who(), "user.sign_in_failed", details).await {
                    tracing::warn!(error = %e, "could not record a failed sign-in");
                }
                return Err(Error::Unauthorized(WRONG_CREDENTIALS.into()));
            }
        };
        self.inner.sign_in.succeeded(&keys[0]);
        metrics::counter!("imprint_sign_ins_total", "outcome" => "ok").increment(1);
        self.audit_alone(&format!("user:{username}"), "user.sign_in", json!({"client": client_str})).await?;
        let user: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"))
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        // Deleted between the check and now: as if it never existed.
        user.map(User::from).ok_or_else(|| Error::Unauthorized(WRONG_CREDENTIALS.into()))
    }

    /// An audit entry that records an event rather than a change (sign-ins).
    async fn audit_alone(&self, who: &str, action: &str, details: serde_json::Value) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        audit(&mut tx, who, action, None, details).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user behind a session, and the identity operations see; `None` when the user
    /// no longer exists or is disabled (the session is then worthless).
    pub async fn user_caller(&self, user_id: i64) -> Result<Option<(User, Caller)>> {
        let row: Option<UserRow> =
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.disabled_at IS NULL"))
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| {
            let user = User::from(r);
            let caller = user.caller();
            (user, caller)
        }))
    }

    /// Creates a user (admins only).
    #[tracing::instrument(skip(self, password))]
    pub async fn create_user(&self, caller: &Caller, username: &str, password: &str, is_admin: bool) -> Result<User> {
        caller.require_admin()?;
        check_username(username)?;
        check_password(password)?;
        let hash = self.hash_password(password).await?;
        let who = caller.who();
        let mut tx = self.pool().begin().await?;
        let res =
            sqlx::query("INSERT INTO users (username, password_hash, is_admin, created_by) VALUES ($1, $2, $3, $4)")
                .bind(username)
                .bind(&hash)
                .bind(is_admin)
                .bind(&who)
                .execute(&mut *tx)
                .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_username_key") => {
                return Err(Error::UserExists(username.to_owned()))
            }
            Err(e) => return Err(e.into()),
        }
        audit(&mut tx, &who, "user.create", None, json!({"username": username, "is_admin": is_admin})).await?;
        tx.commit().await?;
        self.user_by_name(username).await?.ok_or_else(|| Error::UserNotFound(username.to_owned()))
    }

    /// Sets a user's password: the user themself, or an admin.
    #[tracing::instrument(skip(self, new_password))]
    pub async fn set_password(&self, caller: &Caller, username: &str, new_password: &str) -> Result<()> {
        let own = matches!(caller, Caller::User { name, .. } if name == username);
        match caller {
            Caller::Anonymous => return Err(Error::Unauthorized("changing a password needs a signed-in user".into())),
            c if own || c.is_admin() => {}
            _ => return Err(Error::Forbidden("only an administrator may change another user's password".into())),
        }
        check_password(new_password)?;
        let hash = self.hash_password(new_password).await?;
        let who = caller.who();
        let mut tx = self.pool().begin().await?;
        let found: Option<i64> =
            sqlx::query_scalar("UPDATE users SET password_hash = $2 WHERE username = $1 RETURNING id")
                .bind(username)
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Err(Error::UserNotFound(username.to_owned()));
        }
        // What changed is that the password did; never any form of it.
        audit(&mut tx, &who, "user.password", None, json!({"username": username, "own": own})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Disables or re-enables a user (admins only). A disabled user cannot sign in and
    /// `user_caller` no longer accepts their sessions. Setting the state it already has
    /// changes nothing and records nothing.
    #[tracing::instrument(skip(self))]
    pub async fn set_user_disabled(&self, caller: &Caller, username: &str, disabled: bool) -> Result<()> {
        caller.require_admin()?;
        if disabled && matches!(caller, Caller::User { name, .. } if name == username) {
            // Locking oneself out is never what was meant (and may leave no admin).
            return Err(Error::invalid("administrators cannot disable their own account"));
        }
        let mut tx = self.pool().begin().await?;
        let current: Option<bool> =
            sqlx::query_scalar("SELECT disabled_at IS NOT NULL FROM users WHERE username = $1 FOR UPDATE")
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
        match current {
            None => return Err(Error::UserNotFound(username.to_owned())),
            Some(c) if c == disabled => return Ok(()),
            Some(_) => {}
        }
        sqlx::query("UPDATE users SET disabled_at = CASE WHEN $2 THEN now() END WHERE username = $1")
            .bind(username)
            .bind(disabled)
            .execute(&mut *tx)
            .await?;
        let action = if disabled { "user.disable" } else { "user.enable" };
        audit(&mut tx, &caller.who(), action, None, json!({"username": username})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every user, disabled ones included, by name (admins only).
    pub async fn users(&self, caller: &Caller) -> Result<Vec<User>> {
        caller.require_admin()?;
        let rows: Vec<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users u ORDER BY u.username"))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(User::from).collect())
    }

    /// Creates a team (admins only). Topics name it as their owner.
    #[tracing::instrument(skip(self, description))]
    pub async fn create_team(&self, caller: &Caller, name: &str, description: &str) -> Result<Team> {
        caller.require_admin()?;
        check_team_name(name)?;
        if description.chars().count() > 4096 {
            return Err(Error::invalid("description has at most 4096 characters"));
        }
        let who = caller.who();
        let mut tx = self.pool().begin().await?;
        let res: std::result::Result<DateTime<Utc>, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO teams (name, description, created_by) VALUES ($1, $2, $3) RETURNING created_at",
        )
        .bind(name)
        .bind(description)
        .bind(&who)
        .fetch_one(&mut *tx)
        .await;
        let created_at = match res {
            Ok(at) => at,
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("teams_name_key") => {
                return Err(Error::TeamExists(name.to_owned()))
            }
            Err(e) => return Err(e.into()),
        };
        audit(&mut tx, &who, "team.create", None, json!({"name": name, "description": description})).await?;
        tx.commit().await?;
        Ok(Team { name: name.to_owned(), description: description.to_owned(), members: vec![], created_at })
    }

    /// Adds `username` to `team` or removes them (admins only). Asking for the
    /// membership that already holds changes nothing and records nothing.
    #[tracing::instrument(skip(self))]
    pub async fn set_team_member(&self, caller: &Caller, team: &str, username: &str, member: bool) -> Result<()> {
        caller.require_admin()?;
        let mut tx = self.pool().begin().await?;
        let team_id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM teams WHERE name = $1").bind(team).fetch_optional(&mut *tx).await?;
        let team_id = team_id.ok_or_else(|| Error::TeamNotFound(team.to_owned()))?;
        let user_id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
        let user_id = user_id.ok_or_else(|| Error::UserNotFound(username.to_owned()))?;
        let done = if member {
            sqlx::query("INSERT INTO team_members (team_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        } else {
            sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
        }
        .bind(team_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(());
        }
        let action = if member { "team.member_add" } else { "team.member_remove" };
        audit(&mut tx, &caller.who(), action, None, json!({"team": team, "username": username})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every team with its members, by name.
    pub async fn teams(&self) -> Result<Vec<Team>> {
        let rows: Vec<TeamRow> = sqlx::query_as(&format!("SELECT {TEAM_COLUMNS} FROM teams t ORDER BY t.name"))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(Team::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["admin", "a", "alice.b_c-d", "0x", &"a".repeat(64)] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-a", ".a", "a b", "é", &"a".repeat(65)] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_and_team_names() {
        assert!(check_password("123456789").is_err());
        assert!(check_password("1234567890").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert!(check_team_name("Payments.EU_1-x").is_ok());
        assert!(check_team_name("").is_err());
        assert!(check_team_name("a/b").is_err());
        assert!(check_team_name(&"t".repeat(65)).is_err());
    }

    #[test]
    fn generated_passwords_are_random() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.chars().count(), GENERATED_PASSWORD_CHARS);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn hashes_verify_and_are_salted() {
        let h1 = hash_blocking("correct horse battery").expect("hash");
        let h2 = hash_blocking("correct horse battery").expect("hash");
        assert!(h1.starts_with("$argon2id$"));
        assert_ne!(h1, h2);
        assert!(verify_blocking("correct horse battery", &h1).expect("verify"));
        assert!(!verify_blocking("correct horse battery!", &h1).expect("verify"));
    }

    #[test]
    fn dummy_hash_uses_default_params() {
        let parsed = PasswordHash::new(DUMMY_HASH).expect("parses");
        let params = argon2::Params::try_from(&parsed).expect("params");
        let default = argon2::Params::default();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost(), params.output_len()),
            (default.m_cost(), default.t_cost(), default.p_cost(), Some(argon2::Params::DEFAULT_OUTPUT_LEN))
        );
        assert_eq!(parsed.algorithm, argon2::Algorithm::Argon2id.ident());
        assert!(!verify_blocking("", DUMMY_HASH).expect("verify"));
    }

    #[test]
    fn locks_double_up_to_fifteen_minutes() {
        assert_eq!(lock_for(4), None);
        assert_eq!(lock_for(5), Some(Duration::from_secs(30)));
        assert_eq!(lock_for(6), Some(Duration::from_secs(60)));
        assert_eq!(lock_for(8), Some(Duration::from_secs(240)));
        assert_eq!(lock_for(10), Some(MAX_LOCK));
        assert_eq!(lock_for(40), Some(MAX_LOCK));
        assert_eq!(lock_for(u32::MAX), Some(MAX_LOCK));
    }

    #[test]
    fn throttle_locks_after_five_failures_and_success_resets_the_username() {
        let t = SignInThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let keys = throttle_keys("alice", Some(ip));
        let start = Instant::now();
        for i in 0..4 {
            assert_eq!(t.failed(&keys, start), None, "failure {i}");
            assert_eq!(t.locked(&keys, start), None);
        }
        assert_eq!(t.failed(&keys, start), Some(FIRST_LOCK));
        assert_eq!(t.locked(&keys, start + Duration::from_secs(10)), Some(Duration::from_secs(20)));
        // The lock runs out; the next failure locks for twice as long.
        let later = start + Duration::from_secs(31);
        assert_eq!(t.locked(&keys, later), None);
        assert_eq!(t.failed(&keys, later), Some(Duration::from_secs(60)));

        // Success clears the username's counter, not the address's.
        t.succeeded(&keys[0]);
        let other_user = throttle_keys("alice", None);
        let after = later + Duration::from_secs(61);
        assert_eq!(t.locked(&other_user, after), None);
        assert_eq!(t.failed(&other_user, after), None);
        let same_ip = throttle_keys("bob", Some(ip));
        assert_eq!(t.failed(&same_ip, after), Some(Duration::from_secs(120)), "the address keeps counting");

        // A quiet hour forgets everything.
        let much_later = after + FORGET_AFTER + MAX_LOCK;
        assert_eq!(t.failed(&same_ip, much_later), None);
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = throttle_keys("x", Some("2001:db8:1:2:aaaa::1".parse().expect("ip")));
        let b = throttle_keys("x", Some("2001:db8:1:2:bbbb::9".parse().expect("ip")));
        let c = throttle_keys("x", Some("2001:db8:1:3::1".parse().expect("ip")));
        assert_eq!(a[1], b[1]);
        assert_ne!(a[1], c[1]);
        let mapped = throttle_keys("x", Some("::ffff:192.0.2.1".parse().expect("ip")));
        assert_eq!(mapped[1], ThrottleKey::Client("192.0.2.1".parse().expect("ip")));
    }
}
