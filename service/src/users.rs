//! Console users: argon2id passwords, sign-in with throttling, the first-start `admin`,
//! and the admin operations on users (teams and their members are in `teams`). Sessions
//! (cookies) live above this crate; they keep a user id and turn it into a `Caller` per
//! request with `user_caller`, so disabling a user or changing their teams takes effect at once.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::User;
use crate::store;
use crate::throttle::throttle_keys;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::net::IpAddr;
use std::time::Instant;

/// The one answer to every failed sign-in, so it does not tell which part was wrong.
const WRONG_CREDENTIALS: &str = "wrong username or password";
pub const ADMIN_USERNAME: &str = "admin";
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longer inputs are refused without hashing: argon2's cost grows with the input.
const MAX_PASSWORD_BYTES: usize = 1024;
const GENERATED_PASSWORD_CHARS: usize = 20;
/// A console session ends this long after its sign-in, however active it has been.
pub const SESSION_MAX_AGE: chrono::Duration = chrono::Duration::days(7);

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

impl User {
    /// The identity operations see for this user.
    pub fn caller(&self) -> Caller {
        Caller::User { id: self.id, name: self.username.clone(), admin: self.is_admin, teams: self.teams.clone() }
    }
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
        store::users::find(self.pool(), Some(username), None, false).await
    }

    /// Creates the `admin` user on first start, with `password` or a generated one.
    /// Returns the password only when it was generated, for the server to print once. An
    /// existing `admin` is never touched: a restart must not reset a changed password.
    pub async fn ensure_admin_user(&self, password: Option<&str>) -> Result<Option<String>> {
        if store::users::exists(self.pool(), ADMIN_USERNAME).await? {
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
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        // Replicas starting together: only the one whose insert lands creates (and prints).
        if store::users::insert(&mut tx, ADMIN_USERNAME, &hash, true, &who, now).await?.is_none() {
            return Ok(None);
        }
        let source = if generated { "generated" } else { "IMPRINT_ADMIN_PASSWORD" };
        store::audit(
            &mut tx,
            now,
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
    /// username from a client address, or from an address, attempts are refused for a while (429)
    /// without looking at the password.
    #[tracing::instrument(skip(self, password))]
    pub async fn sign_in(&self, username: &str, password: &str, client: Option<IpAddr>) -> Result<User> {
        // The attempt is reserved before the password is looked at: a parallel burst
        // gets no more checks than the lock allows. A lock is per (username, address)
        // pair and per address, so one address cannot lock a user out everywhere.
        let keys = throttle_keys(username, client);
        let attempt = match self.inner.sign_in.begin(keys, Instant::now()) {
            Ok(a) => a,
            Err(wait) => {
                metrics::counter!("imprint_sign_ins_total", "outcome" => "throttled").increment(1);
                let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Error::TooManyAttempts { retry_after_s });
            }
        };
        let valid_name = check_username(username).is_ok();
        let creds = if valid_name { store::users::credentials(self.pool(), username).await? } else { None };
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
                let locked = attempt.failed(Instant::now());
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
        attempt.succeeded();
        metrics::counter!("imprint_sign_ins_total", "outcome" => "ok").increment(1);
        self.audit_alone(&format!("user:{username}"), "user.sign_in", json!({"client": client_str})).await?;
        let user = store::users::find(self.pool(), None, Some(user_id), false).await?;
        // Deleted between the check and now: as if it never existed.
        user.ok_or_else(|| Error::Unauthorized(WRONG_CREDENTIALS.into()))
    }

    /// How many sign-in attempts were let through to a password check since start (the
    /// rest were refused by the throttle without looking at the password).
    pub fn sign_in_checks(&self) -> u64 {
        self.inner.sign_in.checked()
    }

    /// Lifts a sign-in lockout (admins only): the failure counters of a username (from
    /// every address) and/or of a client address (and the usernames tried from it) start
    /// over. Audited; returns whether there was anything to clear.
    pub async fn clear_sign_in_lockout(
        &self,
        caller: &Caller,
        username: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<bool> {
        caller.require_admin()?;
        let username = username.map(str::trim).filter(|u| !u.is_empty());
        if username.is_none() && client.is_none() {
            return Err(Error::invalid("name a username or a client address whose lockout to clear"));
        }
        let cleared = self.inner.sign_in.clear(username, client) > 0;
        let details = json!({"username": username, "client": client.map(|c| c.to_string()), "cleared": cleared});
        self.audit_alone(&caller.who(), "user.lockout_clear", details).await?;
        Ok(cleared)
    }

    /// An audit entry that records an event rather than a change (sign-ins).
    async fn audit_alone(&self, who: &str, action: &str, details: serde_json::Value) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        store::audit(&mut tx, self.now(), who, action, None, details).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user behind a session, and the identity operations see; `None` when the user
    /// no longer exists or is disabled (the session is then worthless).
    pub async fn user_caller(&self, user_id: i64) -> Result<Option<(User, Caller)>> {
        let user = store::users::find(self.pool(), None, Some(user_id), true).await?;
        Ok(user.map(|user| {
            let caller = user.caller();
            (user, caller)
        }))
    }

    /// What a new console session remembers about its user: the session epoch (a
    /// password change moves it on, ending the sessions signed in before).
    pub async fn session_epoch(&self, user_id: i64) -> Result<Option<i64>> {
        store::users::session_epoch(self.pool(), user_id).await
    }

    /// The user behind a console session, as `user_caller`, and `None` as well when the
    /// session is older than `SESSION_MAX_AGE` (an absolute lifetime, however active it
    /// was) or was signed in before the user's password last changed.
    pub async fn session_user(
        &self,
        user_id: i64,
        epoch: i64,
        signed_in_at: DateTime<Utc>,
    ) -> Result<Option<(User, Caller)>> {
        let now = self.now();
        if signed_in_at > now + chrono::Duration::minutes(5) || now - signed_in_at > SESSION_MAX_AGE {
            return Ok(None);
        }
        if store::users::session_epoch(self.pool(), user_id).await? != Some(epoch) {
            return Ok(None);
        }
        self.user_caller(user_id).await
    }

    /// A signed-in user changes their own password, proving the current one (a session
    /// left open somewhere cannot take the account over). Every session of the user
    /// ends; returns the new session epoch, for the session that asked to keep going.
    #[tracing::instrument(skip(self, current_password, new_password))]
    pub async fn change_password(&self, caller: &Caller, current_password: &str, new_password: &str) -> Result<i64> {
        let Caller::User { name, .. } = caller else {
            return Err(Error::Unauthorized("changing your password needs a signed-in user".into()));
        };
        check_password(new_password)?;
        let creds = store::users::credentials(self.pool(), name).await?;
        let Some(creds) = creds.filter(|c| !c.disabled) else {
            return Err(Error::Unauthorized("changing your password needs a signed-in user".into()));
        };
        let ok = current_password.len() <= MAX_PASSWORD_BYTES
            && self.verify_password(current_password, creds.password_hash).await?;
        if !ok {
            return Err(Error::Forbidden("the current password is not right".into()));
        }
        let hash = self.hash_password(new_password).await?;
        let mut tx = self.pool().begin().await?;
        let Some(epoch) = store::users::set_password(&mut tx, name, &hash).await? else {
            return Err(Error::UserNotFound(name.clone()));
        };
        let details = json!({"username": name, "own": true});
        store::audit(&mut tx, self.now(), &caller.who(), "user.password", None, details).await?;
        tx.commit().await?;
        Ok(epoch)
    }

    /// Creates a user (admins only).
    #[tracing::instrument(skip(self, password))]
    pub async fn create_user(&self, caller: &Caller, username: &str, password: &str, is_admin: bool) -> Result<User> {
        caller.require_admin()?;
        check_username(username)?;
        check_password(password)?;
        let hash = self.hash_password(password).await?;
        let who = caller.who();
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        if store::users::insert(&mut tx, username, &hash, is_admin, &who, now).await?.is_none() {
            return Err(Error::UserExists(username.to_owned()));
        }
        let details = json!({"username": username, "is_admin": is_admin});
        store::audit(&mut tx, now, &who, "user.create", None, details).await?;
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
        // The user's sessions end (their epoch moves on).
        if store::users::set_password(&mut tx, username, &hash).await?.is_none() {
            return Err(Error::UserNotFound(username.to_owned()));
        }
        // What changed is that the password did; never any form of it.
        let details = json!({"username": username, "own": own});
        store::audit(&mut tx, self.now(), &who, "user.password", None, details).await?;
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
        match store::users::disabled_for_update(&mut tx, username).await? {
            None => return Err(Error::UserNotFound(username.to_owned())),
            Some(c) if c == disabled => return Ok(()),
            Some(_) => {}
        }
        let now = self.now();
        store::users::set_disabled(&mut tx, username, disabled, now).await?;
        let action = if disabled { "user.disable" } else { "user.enable" };
        store::audit(&mut tx, now, &caller.who(), action, None, json!({"username": username})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every user, disabled ones included, by name (admins only).
    pub async fn users(&self, caller: &Caller) -> Result<Vec<User>> {
        caller.require_admin()?;
        store::users::list(self.pool()).await
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
    fn passwords() {
        assert!(check_password("123456789").is_err());
        assert!(check_password("1234567890").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
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
}
