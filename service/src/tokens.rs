//! API tokens as operations of the `Imprint` handle: creating, revoking and listing them,
//! the bootstrap token, and looking a presented token up. Every time they record (created,
//! revoked, last used) is the handle's clock, so tests move a `ManualClock`.
use crate::auth::{check_token_name, generate_token, hash_token, Caller, NewToken, TokenKind};
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::ApiToken;
use crate::store;
use serde_json::json;

impl Imprint {
    /// Looks up a token by its hash (`hash_token`), noting its use. Unknown or revoked → 401.
    pub(crate) async fn lookup_token(&self, hash: &str) -> Result<Caller> {
        match store::tokens::use_token(self.pool(), hash, self.now()).await? {
            Some(t) if t.kind == "consumer" => Ok(Caller::Consumer {
                name: t.name,
                team: t.team,
                labels: serde_json::from_value(t.labels).unwrap_or_default(),
                topics: t.topics,
                relay: false,
            }),
            // A relay token has nothing of its own: its direct reads are a bare consumer's.
            Some(t) if t.kind == "relay" => Ok(Caller::Consumer {
                name: t.name,
                team: None,
                labels: Default::default(),
                topics: Vec::new(),
                relay: true,
            }),
            Some(t) => Ok(Caller::Token { name: t.name, admin: t.is_admin, team: t.team }),
            None => Err(Error::Unauthorized("unknown or revoked token".into())),
        }
    }

    /// Makes `token` a valid admin token named `bootstrap` (IMPRINT_BOOTSTRAP_TOKEN). A
    /// previous bootstrap token with another value is revoked. Audited only when something
    /// changes, so restarts with the same value add nothing to the log.
    pub async fn ensure_bootstrap_token(&self, token: &str) -> Result<()> {
        let hash = hash_token(token);
        let who = Caller::System.who();
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        if store::tokens::revoke_other_bootstrap(&mut tx, &hash, now).await? {
            store::audit(&mut tx, now, &who, "token.revoke", None, json!({"name": "bootstrap", "replaced": true}))
                .await?;
        }
        if store::tokens::upsert_bootstrap(&mut tx, &hash, now).await? {
            let details =
                json!({"name": "bootstrap", "admin": true, "team": null, "source": "IMPRINT_BOOTSTRAP_TOKEN"});
            store::audit(&mut tx, now, &who, "token.create", None, details).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Revokes the bootstrap token (`IMPRINT_BOOTSTRAP_TOKEN` is no longer set): it
    /// exists only while the server is started with it. Returns whether there was one.
    pub async fn revoke_bootstrap_token(&self) -> Result<bool> {
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        // No token hashes to "": every active bootstrap token is revoked.
        let revoked = store::tokens::revoke_other_bootstrap(&mut tx, "", now).await?;
        if revoked {
            let details = json!({"name": "bootstrap", "reason": "IMPRINT_BOOTSTRAP_TOKEN is not set"});
            store::audit(&mut tx, now, &Caller::System.who(), "token.revoke", None, details).await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    /// Creates a named admin or team (publisher) token and returns its secret value (shown
    /// once, stored hashed).
    pub async fn create_token(&self, caller: &Caller, name: &str, admin: bool, team: Option<&str>) -> Result<String> {
        let kind = if admin { TokenKind::Admin } else { TokenKind::Publisher };
        let spec = NewToken { name: name.to_owned(), kind, team: team.map(str::to_owned), ..NewToken::default() };
        self.create_token_with(caller, &spec).await
    }

    /// Creates a token of any kind and returns its secret value (shown once, stored hashed).
    pub async fn create_token_with(&self, caller: &Caller, spec: &NewToken) -> Result<String> {
        caller.require_admin()?;
        let name = spec.name.as_str();
        check_token_name(name)?;
        if spec.kind != TokenKind::Consumer && (!spec.labels.is_empty() || !spec.topics.is_empty()) {
            return Err(Error::invalid("only consumer tokens are bound to labels or topics"));
        }
        if spec.kind == TokenKind::Relay && spec.team.is_some() {
            return Err(Error::invalid("a relay token has no team: it reads as each downstream consumer's own token"));
        }
        imprint_domain::Labels::from_pairs(spec.labels.clone()).map_err(Error::from)?;
        if spec.topics.len() > 100 {
            return Err(Error::invalid("a consumer token names at most 100 topics"));
        }
        for t in &spec.topics {
            let name = t.strip_suffix(".*").unwrap_or(t);
            imprint_domain::TopicName::parse(name).map_err(|e| Error::invalid(format!("topic pattern {t:?}: {e}")))?;
        }
        let token = generate_token();
        let who = caller.who();
        let now = self.now();
        let labels = serde_json::to_value(&spec.labels).unwrap_or_default();
        let row = store::tokens::NewTokenRow {
            name,
            hash: &hash_token(&token),
            kind: spec.kind.as_str(),
            admin: spec.kind == TokenKind::Admin,
            team: spec.team.as_deref(),
            labels: labels.clone(),
            topics: &spec.topics,
            who: &who,
            at: now,
        };
        let mut tx = self.pool().begin().await?;
        if !store::tokens::insert(&mut tx, row).await? {
            return Err(Error::InvalidState(format!("an active token named {name:?} exists already")));
        }
        // Never the secret itself, nor its hash: the log is readable by every signed-in user.
        let mut details = json!({"name": name, "admin": spec.kind == TokenKind::Admin, "team": spec.team});
        if spec.kind == TokenKind::Relay {
            details["kind"] = json!("relay");
        }
        if spec.kind == TokenKind::Consumer {
            details["kind"] = json!("consumer");
            details["labels"] = labels.clone();
            details["topics"] = json!(spec.topics);
        }
        store::audit(&mut tx, now, &who, "token.create", None, details).await?;
        tx.commit().await?;
        Ok(token)
    }

    pub async fn revoke_token(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require_admin()?;
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        if !store::tokens::revoke(&mut tx, name, now).await? {
            return Err(Error::InvalidState(format!("no active token named {name:?}")));
        }
        store::audit(&mut tx, now, &caller.who(), "token.revoke", None, json!({"name": name})).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_tokens(&self, caller: &Caller) -> Result<Vec<ApiToken>> {
        caller.require_admin()?;
        Ok(store::tokens::list_active(self.pool())
            .await?
            .into_iter()
            .map(|t| ApiToken {
                name: t.name,
                is_admin: t.is_admin,
                kind: t.kind,
                team: t.team,
                labels: serde_json::from_value(t.labels).unwrap_or_default(),
                topics: t.topics,
                created_at: t.created_at,
                last_used_at: t.last_used_at,
            })
            .collect())
    }
}
