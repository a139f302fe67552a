//! Who is calling, and what they may do. Every operation, reads included, takes a
//! `Caller` and checks it here, so the HTTP API and the console share one set of rules.
use crate::error::{Error, Result};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials: may read and poll, never write.
    Anonymous,
    /// An API token. Admin tokens may do everything; others act on their team's topics.
    Token { name: String, admin: bool, team: Option<String> },
    /// A consumer token: reads and polls, never writes. `team` and `topics` (names or
    /// `prefix.*`) say which restricted topics it may read; every poll with it must claim
    /// `labels`. A `relay` token is one with nothing of its own (no team, labels or topics)
    /// that may also call the relay endpoints (`relay.rs`): each downstream group is
    /// authorized as the downstream's own credential, never as the relay.
    Consumer { name: String, team: Option<String>, labels: BTreeMap<String, String>, topics: Vec<String>, relay: bool },
    /// A signed-in console user. Admins may do everything; others act on the topics of
    /// the teams they belong to (`teams`, read when the session was checked).
    User { id: i64, name: String, admin: bool, teams: Vec<String> },
    /// The server itself (background jobs, start-up).
    System,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.who())
    }
}

impl Caller {
    /// The name recorded as `created_by`/`added_by`.
    pub fn who(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".into(),
            Caller::Token { name, .. } | Caller::Consumer { name, .. } => format!("token:{name}"),
            Caller::User { name, .. } => format!("user:{name}"),
            Caller::System => "system".into(),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::System | Caller::Token { admin: true, .. } | Caller::User { admin: true, .. })
    }

    /// The team a topic created by this caller belongs to when none is named. A user in
    /// several teams has no default: which one would be a guess.
    pub fn default_owner(&self) -> Option<&str> {
        match self {
            Caller::Token { team: Some(t), .. } => Some(t),
            Caller::User { teams, .. } if teams.len() == 1 => teams.first().map(String::as_str),
            _ => None,
        }
    }

    /// May this caller publish, scope, pin or change settings on a topic owned by `owner`?
    pub fn require_write(&self, topic: &str, owner: &str) -> Result<()> {
        match self {
            Caller::Anonymous => Err(Error::Unauthorized("this operation needs a bearer token".into())),
            Caller::Consumer { name, .. } => Err(consumer_only(name)),
            c if c.is_admin() => Ok(()),
            Caller::Token { team: Some(t), .. } if !owner.is_empty() && t == owner => Ok(()),
            Caller::Token { name, .. } => {
                Err(Error::Forbidden(format!("token {name:?} has no rights on topic {topic:?} (owned by {owner:?})")))
            }
            // A topic without an owner belongs to nobody but the admins.
            Caller::User { teams, .. } if !owner.is_empty() && teams.iter().any(|t| t == owner) => Ok(()),
            Caller::User { name, .. } => Err(Error::Forbidden(format!(
                "user {name:?} has no rights on topic {topic:?}: it is owned by {owner:?}, a team they are not in"
            ))),
            Caller::System => Ok(()),
        }
    }

    /// May this caller create a topic owned by `owner`?
    pub fn require_create(&self, owner: &str) -> Result<()> {
        match self {
            Caller::Anonymous => Err(Error::Unauthorized("creating a topic needs a bearer token".into())),
            Caller::Consumer { name, .. } => Err(consumer_only(name)),
            c if c.is_admin() => Ok(()),
            Caller::Token { team: Some(t), .. } if t == owner => Ok(()),
            Caller::Token { name, .. } => {
                Err(Error::Forbidden(format!("token {name:?} may only create topics owned by its own team")))
            }
            Caller::User { teams, .. } if !owner.is_empty() && teams.iter().any(|t| t == owner) => Ok(()),
            Caller::User { name, .. } => {
                Err(Error::Forbidden(format!("user {name:?} may only give topics to teams they are in")))
            }
            Caller::System => Ok(()),
        }
    }

    /// May this caller read a topic (its settings, versions, pins, rollouts, consumers)
    /// and poll it? Everyone may read an unrestricted topic; a restricted one needs an
    /// admin, its owning team (a member, or a token of the team), or a consumer token
    /// that names it.
    pub fn require_read(&self, topic: &str, owner: &str, restricted: bool) -> Result<()> {
        if !restricted {
            return Ok(());
        }
        let owner_team = |t: &str| !owner.is_empty() && t == owner;
        match self {
            Caller::Anonymous => Err(Error::Unauthorized(format!(
                "topic {topic:?} is restricted: it is read and polled with a token allowed on it"
            ))),
            c if c.is_admin() => Ok(()),
            Caller::Token { team: Some(t), .. } | Caller::Consumer { team: Some(t), .. } if owner_team(t) => Ok(()),
            Caller::Consumer { topics, .. } if topics.iter().any(|p| topic_matches(p, topic)) => Ok(()),
            Caller::User { teams, .. } if teams.iter().any(|t| owner_team(t)) => Ok(()),
            c => Err(Error::Forbidden(format!("{} may not read the restricted topic {topic:?}", c.who()))),
        }
    }

    /// A consumer token bound to labels: the labels a poll claims must include them.
    pub fn require_claimed_labels(&self, claimed: &BTreeMap<String, String>) -> Result<()> {
        let Caller::Consumer { name, labels, .. } = self else { return Ok(()) };
        for (k, v) in labels {
            if claimed.get(k) != Some(v) {
                let got = claimed.get(k).map_or_else(|| "nothing".to_owned(), |g| format!("{k}={g}"));
                return Err(Error::Forbidden(format!("token {name:?} is bound to {k}={v}; this request claims {got}")));
            }
        }
        Ok(())
    }

    /// Who a consumer report counts as: the token for authenticated callers, nobody for
    /// anonymous ones (their reports do not move health gates).
    pub fn principal(&self) -> Option<String> {
        match self {
            Caller::Token { .. } | Caller::Consumer { .. } | Caller::User { .. } => Some(self.who()),
            Caller::Anonymous | Caller::System => None,
        }
    }

    /// Reads that are not about one topic but need someone signed in (teams, audit log).
    pub fn require_known(&self, what: &str) -> Result<()> {
        match self {
            Caller::Anonymous => Err(Error::Unauthorized(format!("{what} needs a bearer token or a signed-in user"))),
            _ => Ok(()),
        }
    }

    pub fn require_admin(&self) -> Result<()> {
        match self {
            Caller::Anonymous => Err(Error::Unauthorized("this operation needs a bearer token".into())),
            Caller::Consumer { name, .. } => Err(consumer_only(name)),
            c if c.is_admin() => Ok(()),
            Caller::User { .. } => Err(Error::Forbidden("this operation needs an administrator".into())),
            _ => Err(Error::Forbidden("this operation needs an admin token".into())),
        }
    }
}

/// The address of the client behind a request, as the server determined it (the TCP
/// peer, or what a trusted proxy says it forwarded for). Sign-in throttling counts per it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

fn consumer_only(name: &str) -> Error {
    Error::Forbidden(format!("token {name:?} is a consumer token: it reads and polls, it changes nothing"))
}

/// `payments.*` matches `payments.methods` (and deeper); anything else matches itself.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => topic.starts_with(prefix),
        _ => pattern == topic,
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `imp_` and 256 bits, hex encoded.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("imp_{}", hex::encode(bytes))
}

/// What a token may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Everything.
    Admin,
    /// Publishes and operates the topics of its team.
    #[default]
    Publisher,
    /// Reads and polls only (restricted topics: its team's and those it names).
    Consumer,
    /// A relay (docs/agent.md): polls and reports for downstream consumers, each
    /// authorized as the downstream's own token; by itself no more than a consumer token
    /// without a team, labels or topics.
    Relay,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Publisher => "publisher",
            TokenKind::Consumer => "consumer",
            TokenKind::Relay => "relay",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(TokenKind::Admin),
            "publisher" => Ok(TokenKind::Publisher),
            "consumer" => Ok(TokenKind::Consumer),
            "relay" => Ok(TokenKind::Relay),
            other => Err(Error::invalid(format!("a token kind is admin, publisher, consumer or relay, not {other:?}"))),
        }
    }
}

/// A token to create.
#[derive(Clone, Debug, Default)]
pub struct NewToken {
    pub name: String,
    pub kind: TokenKind,
    pub team: Option<String>,
    /// Consumer tokens: labels every poll must claim.
    pub labels: BTreeMap<String, String>,
    /// Consumer tokens: restricted topics (names or `prefix.*`) it may read.
    pub topics: Vec<String>,
}

pub(crate) fn check_token_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(Error::invalid("a token name is 1-64 characters of letters, digits, '.', '_' or '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights() {
        let admin = Caller::Token { name: "a".into(), admin: true, team: None };
        let team = Caller::Token { name: "t".into(), admin: false, team: Some("payments".into()) };
        let none = Caller::Token { name: "n".into(), admin: false, team: None };
        assert!(admin.require_write("x", "payments").is_ok());
        assert!(team.require_write("x", "payments").is_ok());
        assert!(matches!(team.require_write("x", "search"), Err(Error::Forbidden(_))));
        assert!(matches!(team.require_write("x", ""), Err(Error::Forbidden(_))));
        assert!(matches!(none.require_write("x", "payments"), Err(Error::Forbidden(_))));
        assert!(matches!(Caller::Anonymous.require_write("x", "payments"), Err(Error::Unauthorized(_))));
        assert!(team.require_create("payments").is_ok());
        assert!(matches!(team.require_create("search"), Err(Error::Forbidden(_))));
        assert!(matches!(team.require_admin(), Err(Error::Forbidden(_))));
    }

    #[test]
    fn user_rights() {
        let user = |admin: bool, teams: &[&str]| Caller::User {
            id: 1,
            name: "alice".into(),
            admin,
            teams: teams.iter().map(|t| t.to_string()).collect(),
        };
        let member = user(false, &["payments", "search"]);
        let loner = user(false, &[]);
        let admin = user(true, &[]);
        assert_eq!(member.who(), "user:alice");
        assert!(!member.is_admin() && admin.is_admin());

        assert!(member.require_write("x", "payments").is_ok());
        assert!(member.require_write("x", "search").is_ok());
        assert!(matches!(member.require_write("x", "billing"), Err(Error::Forbidden(_))));
        assert!(matches!(member.require_write("x", ""), Err(Error::Forbidden(_))), "ownerless topics are admins' only");
        assert!(matches!(loner.require_write("x", "payments"), Err(Error::Forbidden(_))));
        assert!(admin.require_write("x", "").is_ok());
        assert!(admin.require_write("x", "billing").is_ok());

        assert!(member.require_create("search").is_ok());
        assert!(matches!(member.require_create("billing"), Err(Error::Forbidden(_))));
        assert!(matches!(member.require_create(""), Err(Error::Forbidden(_))));
        assert!(admin.require_create("").is_ok());

        assert!(matches!(member.require_admin(), Err(Error::Forbidden(_))));
        assert!(admin.require_admin().is_ok());

        // A default owner only when it is not a guess.
        assert_eq!(user(false, &["payments"]).default_owner(), Some("payments"));
        assert_eq!(member.default_owner(), None);
        assert_eq!(loner.default_owner(), None);
    }

    #[test]
    fn token_callers_are_unchanged() {
        let t = Caller::Token { name: "ci".into(), admin: false, team: Some("payments".into()) };
        assert_eq!(t.who(), "token:ci");
        assert_eq!(t.default_owner(), Some("payments"));
        assert_eq!(Caller::System.who(), "system");
        assert!(Caller::System.require_admin().is_ok());
        assert!(matches!(Caller::Anonymous.require_admin(), Err(Error::Unauthorized(_))));
        assert!(matches!(Caller::Anonymous.require_create("payments"), Err(Error::Unauthorized(_))));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
