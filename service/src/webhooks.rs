//! Webhooks (docs/webhooks.md): subscriptions to change events, and the worker that
//! delivers them as CloudEvents 1.0 (structured JSON) signed per the Standard Webhooks
//! spec. Events are written by `store::audit` in the transaction of the change they
//! describe (one delivery per matching subscription: the outbox); the worker sends each
//! subscription's deliveries one at a time in event order, retries with exponential
//! backoff (`imprint_domain::webhooks::retry_after`) for more than a day and then marks
//! the delivery `failed`. Publishing never waits for a receiver: it only writes rows.
use crate::auth::Caller;
use crate::error::{error_chain, Error, Result};
use crate::handle::Imprint;
use crate::model::Page;
use crate::{cursor, store};
use base64::Engine;
use chrono::{DateTime, Utc};
use imprint_domain::webhooks::{self as rules, forbidden_address, is_event_type, CLOUDEVENTS_TYPE_PREFIX};
use imprint_domain::TopicName;
use serde::Serialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// At most this many subscriptions exist (every change fans out to the matching ones).
pub const MAX_SUBSCRIPTIONS: i64 = 1000;
/// At most this much of a receiver's answer is kept in the delivery log.
pub const RESPONSE_SNIPPET_BYTES: usize = 1024;
/// How long a rotated-out secret keeps signing when the rotation does not say.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The longest a rotated-out secret may keep signing.
pub const MAX_ROTATION_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Subscriptions being delivered to at once by the worker.
const MAX_IN_FLIGHT: usize = 32;
/// Deliveries one subscription's task sends in a row before it lets the others go.
const DRAIN_BATCH: usize = 100;
/// Finished deliveries (and their events) are forgotten this long after the event.
const KEEP_FINISHED: chrono::Duration = chrono::Duration::days(30);
const MAX_URL_CHARS: usize = 2048;
const MAX_DESCRIPTION_CHARS: usize = 1000;

/// A webhook subscription.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: i64,
    /// Where events are POSTed (http or https).
    pub url: String,
    pub description: String,
    /// The topic whose events it gets (a topic subscription).
    pub topic: Option<String>,
    /// The team whose topics' events it gets (a team subscription). Neither: every
    /// topic's (a global subscription, admins only).
    pub team: Option<String>,
    /// The event types it gets; empty: all of them.
    pub event_types: Vec<String>,
    /// Deliveries may go to loopback, private and link-local addresses (admins only).
    pub allow_private: bool,
    /// Off: nothing new is queued and nothing is sent (what is queued waits).
    pub enabled: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Until then the previous secret signs too (after a rotation).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// The signing secret (`whsec_…`): only in the answer that created it (create, rotate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// What a new subscription is.
#[derive(Clone, Debug, Default)]
pub struct NewWebhook {
    pub url: String,
    pub description: String,
    pub topic: Option<String>,
    pub team: Option<String>,
    pub event_types: Vec<String>,
    pub allow_private: bool,
    pub enabled: bool,
}

/// A change of a subscription's settings (`None`: unchanged). Its scope (topic, team or
/// global) never changes: delete it and create another.
#[derive(Clone, Debug, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub allow_private: Option<bool>,
    pub enabled: Option<bool>,
}

/// One event's delivery to one subscription (the delivery log).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// The CloudEvents `id` and `webhook-id` (the same on every attempt).
    pub event_id: String,
    /// `version.published`, … (the CloudEvents type is `io.imprint.<type>`).
    pub event_type: String,
    pub topic: Option<String>,
    pub event_time: DateTime<Utc>,
    /// `pending` (waiting for its next attempt), `delivered` or `failed` (every retry used).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's HTTP status on the last attempt (none: no answer).
    pub last_status: Option<i32>,
    pub last_latency_ms: Option<i32>,
    /// The first KiB of the receiver's last answer (as text).
    pub last_response: Option<String>,
    /// Why the last attempt failed (refused address, timeout, status…).
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

fn webhook_of(r: store::webhooks::SubscriptionRow, now: DateTime<Utc>) -> Webhook {
    Webhook {
        id: r.id,
        url: r.url,
        description: r.description,
        topic: r.topic,
        team: r.team,
        event_types: r.event_types,
        allow_private: r.allow_private,
        enabled: r.enabled,
        created_by: r.created_by,
        created_at: r.created_at,
        updated_at: r.updated_at,
        previous_secret_expires_at: r.previous_expires_at.filter(|t| *t > now && r.has_previous),
        secret: None,
    }
}

fn delivery_of(r: store::webhooks::DeliveryRow) -> Delivery {
    Delivery {
        id: r.id,
        event_id: r.event_id,
        event_type: r.event_type,
        topic: r.topic,
        event_time: r.event_at,
        next_attempt_at: (r.state == "pending").then_some(r.next_attempt_at),
        state: r.state,
        attempts: r.attempts,
        last_attempt_at: r.last_attempt_at,
        last_status: r.last_status,
        last_latency_ms: r.last_latency_ms,
        last_response: r.last_response,
        last_error: r.last_error,
        delivered_at: r.delivered_at,
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in base64 (Standard Webhooks).
pub fn generate_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(b))
}

/// The Standard Webhooks signature of one message: base64 of HMAC-SHA256, keyed with the
/// secret's bytes (base64 after `whsec_`), over `{id}.{timestamp}.{body}`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| Error::Internal(format!("a webhook secret is not base64: {e}")))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| Error::Internal(e.to_string()))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: `v1,<signature>` for each secret that signs now
/// (space-separated: the current one, and the previous one during a rotation).
pub fn signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let sigs: Result<Vec<String>> =
        secrets.iter().map(|s| sign(s, id, timestamp, body).map(|sig| format!("v1,{sig}"))).collect();
    Ok(sigs?.join(" "))
}

/// The CloudEvents 1.0 structured-mode body of an event.
pub fn cloudevent(
    id: &str,
    event_type: &str,
    topic: Option<&str>,
    time: DateTime<Utc>,
    data: &serde_json::Value,
) -> serde_json::Value {
    let mut e = json!({
        "specversion": "1.0",
        "id": id,
        "source": "/imprint",
        "type": format!("{CLOUDEVENTS_TYPE_PREFIX}{event_type}"),
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(t) = topic {
        e["subject"] = json!(t);
    }
    e
}

/// Checks a subscription URL: http(s), a host, no credentials, not too long; without
/// `allow_private`, no literal loopback, private or link-local address and no `localhost`
/// (names are checked again on every delivery, after resolving them).
pub(crate) fn check_url(raw: &str, allow_private: bool) -> Result<url::Url> {
    let raw = raw.trim();
    if raw.is_empty() || raw.chars().count() > MAX_URL_CHARS {
        return Err(Error::invalid(format!("url must be 1 to {MAX_URL_CHARS} characters")));
    }
    let u = url::Url::parse(raw).map_err(|e| Error::invalid(format!("url {raw:?} is not a URL: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(Error::invalid(format!("url must be http:// or https://, not {}://", u.scheme())));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Error::invalid("url must not hold credentials: receivers verify the signature instead"));
    }
    let Some(host) = u.host() else { return Err(Error::invalid("url has no host")) };
    if !allow_private {
        let refused = match host {
            url::Host::Ipv4(ip) => forbidden_address(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => forbidden_address(IpAddr::V6(ip)),
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                (d == "localhost" || d.ends_with(".localhost")).then_some("loopback")
            }
        };
        if let Some(why) = refused {
            return Err(Error::invalid(format!(
                "url {raw:?} is a {why} address: deliveries go to public addresses only, unless an admin's subscription sets allow_private"
            )));
        }
    }
    Ok(u)
}

fn check_event_types(types: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for t in types {
        let t = t.trim();
        if !is_event_type(t) {
            return Err(Error::invalid(format!(
                "unknown event type {t:?}: the types are {}",
                rules::EVENT_TYPES.join(", ")
            )));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

fn check_description(d: &str) -> Result<()> {
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid(format!("description is longer than {MAX_DESCRIPTION_CHARS} characters")));
    }
    Ok(())
}

/// Only the scheme, host and port of a URL: what the audit log records (a query string
/// may hold a receiver's own token).
fn url_origin(u: &str) -> String {
    url::Url::parse(u).map(|u| u.origin().ascii_serialization()).unwrap_or_default()
}

/// May `caller` manage a subscription of this scope? A topic's: who may change the
/// topic; a team's: who acts for the team; a global one: admins.
fn require_manage(caller: &Caller, topic: Option<(&str, &str)>, team: Option<&str>) -> Result<()> {
    match (topic, team) {
        (Some((topic, owner)), _) => caller.require_write(topic, owner),
        (None, Some(team)) => caller.require_write(&format!("(every topic of team {team})"), team),
        (None, None) => caller.require_admin(),
    }
}

fn row_scope(r: &store::webhooks::SubscriptionRow) -> (Option<(&str, &str)>, Option<&str>) {
    let topic = r.topic.as_deref().map(|t| (t, r.topic_owner.as_deref().unwrap_or("")));
    (topic, r.team.as_deref())
}

impl Imprint {
    /// Creates a subscription; the answer holds its secret (the only time it is shown).
    pub async fn create_webhook(&self, caller: &Caller, new: NewWebhook) -> Result<Webhook> {
        caller.require_known("creating a webhook")?;
        if new.allow_private {
            caller.require_admin().map_err(|e| match e {
                Error::Forbidden(_) => Error::Forbidden("only admins may set allow_private".into()),
                e => e,
            })?;
        }
        let url = check_url(&new.url, new.allow_private)?;
        check_description(&new.description)?;
        let event_types = check_event_types(&new.event_types)?;
        let mut tx = self.pool().begin().await?;
        let (topic_id, topic_name, topic_owner, team) = match (&new.topic, &new.team) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("give topic or team (or neither, for every topic), not both"))
            }
            (Some(t), None) => {
                let name = TopicName::parse(t.trim())?;
                let t = store::topics::require(&mut tx, &name, false).await?;
                require_manage(caller, Some((&t.name, &t.owner)), None)?;
                (Some(t.id), Some(t.name), Some(t.owner), None)
            }
            (None, Some(team)) => {
                let team = team.trim().to_owned();
                require_manage(caller, None, Some(&team))?;
                if store::users::team_id(&mut tx, &team).await?.is_none() {
                    return Err(Error::TeamNotFound(team));
                }
                (None, None, None, Some(team))
            }
            (None, None) => {
                require_manage(caller, None, None)?;
                (None, None, None, None)
            }
        };
        if store::webhooks::count_subscriptions(&mut *tx).await? >= MAX_SUBSCRIPTIONS {
            return Err(Error::invalid(format!("this server holds {MAX_SUBSCRIPTIONS} webhooks already; delete some")));
        }
        let secret = generate_secret();
        let now = self.now();
        let who = caller.who();
        let id = store::webhooks::insert(
            &mut *tx,
            &store::webhooks::NewSubscription {
                url: url.as_str(),
                description: &new.description,
                topic_id,
                topic_owner: topic_owner.as_deref(),
                team: team.as_deref(),
                event_types: &event_types,
                secret: &secret,
                allow_private: new.allow_private,
                enabled: new.enabled,
                created_by: &who,
                by_admin: caller.is_admin(),
            },
            now,
        )
        .await?;
        let details = json!({"id": id, "url": url_origin(url.as_str()), "team": team, "event_types": event_types,
                             "allow_private": new.allow_private, "enabled": new.enabled});
        store::audit(&mut tx, now, &who, "webhook.create", topic_name.as_deref(), details).await?;
        tx.commit().await?;
        metrics::counter!("imprint_webhooks_created_total").increment(1);
        let row = store::webhooks::get(self.pool(), id).await?.ok_or_else(|| Error::WebhookNotFound(not_found(id)))?;
        Ok(Webhook { secret: Some(secret), ..webhook_of(row, now) })
    }

    /// A subscription the caller may manage (others are "not found": their ids say nothing).
    async fn managed_row(&self, caller: &Caller, id: i64) -> Result<store::webhooks::SubscriptionRow> {
        caller.require_known("webhooks")?;
        let row = store::webhooks::get(self.pool(), id).await?.ok_or_else(|| Error::WebhookNotFound(not_found(id)))?;
        let (topic, team) = row_scope(&row);
        require_manage(caller, topic, team).map_err(|e| match e {
            Error::Forbidden(_) => Error::WebhookNotFound(not_found(id)),
            e => e,
        })?;
        Ok(row)
    }

    pub async fn webhook(&self, caller: &Caller, id: i64) -> Result<Webhook> {
        Ok(webhook_of(self.managed_row(caller, id).await?, self.now()))
    }

    /// The subscriptions the caller may manage, by id; a page may hold fewer than `limit`
    /// while `next` says there are more.
    pub async fn webhooks(&self, caller: &Caller, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Webhook>> {
        caller.require_known("listing webhooks")?;
        let limit = cursor::limit(limit)?;
        let after = cursor.filter(|c| !c.is_empty()).map(cursor::decode).transpose()?;
        let rows = store::webhooks::list(self.pool(), after, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = if more { rows.last().map(|r| cursor::encode(r.id)) } else { None };
        let now = self.now();
        let items = rows
            .into_iter()
            .filter(|r| {
                let (topic, team) = row_scope(r);
                require_manage(caller, topic, team).is_ok()
            })
            .map(|r| webhook_of(r, now))
            .collect();
        Ok(Page { items, next })
    }

    pub async fn update_webhook(&self, caller: &Caller, id: i64, patch: WebhookPatch) -> Result<Webhook> {
        let row = self.managed_row(caller, id).await?;
        let allow_private = patch.allow_private.unwrap_or(row.allow_private);
        if allow_private && !row.allow_private {
            caller.require_admin().map_err(|e| match e {
                Error::Forbidden(_) => Error::Forbidden("only admins may set allow_private".into()),
                e => e,
            })?;
        }
        let url = match &patch.url {
            Some(u) => check_url(u, allow_private)?.to_string(),
            None => check_url(&row.url, allow_private)?.to_string(),
        };
        let description = patch.description.clone().unwrap_or(row.description.clone());
        check_description(&description)?;
        let event_types = match &patch.event_types {
            Some(t) => check_event_types(t)?,
            None => row.event_types.clone(),
        };
        let enabled = patch.enabled.unwrap_or(row.enabled);
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        store::webhooks::update(&mut *tx, id, &url, &description, &event_types, allow_private, enabled, now).await?;
        let details = json!({"id": id, "url": url_origin(&url), "event_types": event_types,
                             "allow_private": allow_private, "enabled": enabled});
        store::audit(&mut tx, now, &caller.who(), "webhook.update", row.topic.as_deref(), details).await?;
        tx.commit().await?;
        self.webhook(caller, id).await
    }

    pub async fn delete_webhook(&self, caller: &Caller, id: i64) -> Result<()> {
        let row = self.managed_row(caller, id).await?;
        let mut tx = self.pool().begin().await?;
        if !store::webhooks::delete(&mut *tx, id).await? {
            return Err(Error::WebhookNotFound(not_found(id)));
        }
        let details = json!({"id": id, "url": url_origin(&row.url)});
        store::audit(&mut tx, self.now(), &caller.who(), "webhook.delete", row.topic.as_deref(), details).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new secret; the one it replaces keeps signing for `overlap` (default a day, at
    /// most a week), so receivers can switch without losing an event. The answer holds
    /// the new secret.
    pub async fn rotate_webhook_secret(&self, caller: &Caller, id: i64, overlap: Option<Duration>) -> Result<Webhook> {
        let row = self.managed_row(caller, id).await?;
        let overlap = overlap.unwrap_or(DEFAULT_ROTATION_OVERLAP);
        if overlap > MAX_ROTATION_OVERLAP {
            return Err(Error::invalid(format!(
                "the previous secret may keep signing for at most {} seconds",
                MAX_ROTATION_OVERLAP.as_secs()
            )));
        }
        let now = self.now();
        let until = now + chrono::Duration::from_std(overlap).map_err(|e| Error::invalid(e.to_string()))?;
        let secret = generate_secret();
        let mut tx = self.pool().begin().await?;
        store::webhooks::rotate(&mut *tx, id, &secret, until, now).await?;
        let details = json!({"id": id, "previous_valid_until": until});
        store::audit(&mut tx, now, &caller.who(), "webhook.rotate", row.topic.as_deref(), details).await?;
        tx.commit().await?;
        Ok(Webhook { secret: Some(secret), ..self.webhook(caller, id).await? })
    }

    /// A subscription's delivery log, newest first (`state`: only those in it).
    pub async fn webhook_deliveries(
        &self,
        caller: &Caller,
        id: i64,
        state: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>> {
        self.managed_row(caller, id).await?;
        if let Some(s) = state {
            if !["pending", "delivered", "failed"].contains(&s) {
                return Err(Error::invalid(format!("state must be pending, delivered or failed, not {s:?}")));
            }
        }
        let limit = cursor::limit(limit)?;
        let before = cursor.filter(|c| !c.is_empty()).map(cursor::decode).transpose()?;
        let rows = store::webhooks::deliveries(self.pool(), id, state, before, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let items: Vec<Delivery> = rows.into_iter().take(limit as usize).map(delivery_of).collect();
        let next = if more { items.last().map(|d| cursor::encode(d.id)) } else { None };
        Ok(Page { items, next })
    }

    /// Sends a delivery again, from a fresh set of retries, as soon as the worker can (after
    /// the subscription's older pending deliveries: order is kept).
    pub async fn redeliver(&self, caller: &Caller, id: i64, delivery: i64) -> Result<Delivery> {
        let row = self.managed_row(caller, id).await?;
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        if !store::webhooks::redeliver(&mut *tx, id, delivery, now).await? {
            return Err(Error::WebhookNotFound(format!("webhook {id} has no delivery {delivery}")));
        }
        let details = json!({"id": id, "delivery": delivery});
        store::audit(&mut tx, now, &caller.who(), "webhook.redeliver", row.topic.as_deref(), details).await?;
        tx.commit().await?;
        let d = store::webhooks::delivery(self.pool(), id, delivery).await?;
        d.map(delivery_of).ok_or_else(|| Error::WebhookNotFound(format!("webhook {id} has no delivery {delivery}")))
    }
}

fn not_found(id: i64) -> String {
    format!("webhook {id} does not exist (or is not one you may manage)")
}

/// Resolves names for deliveries and refuses loopback, private and link-local answers
/// (checked on the addresses actually connected to, so DNS cannot point a name elsewhere
/// between a check and the connection).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs =
                public_addresses(&host).await.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// `host`'s addresses, or why a delivery may not go there.
async fn public_addresses(host: &str) -> std::result::Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, 0)))
        .await
        .map_err(|_| format!("resolving {host} took longer than 5 s"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    for a in &addrs {
        if let Some(why) = forbidden_address(a.ip()) {
            return Err(format!(
                "refused: {host} resolves to {} ({why}); deliveries go to public addresses only, unless an admin's subscription sets allow_private",
                a.ip()
            ));
        }
    }
    Ok(addrs)
}

/// The worker's HTTP clients: redirects are never followed, every attempt is bounded.
struct Clients {
    public_only: reqwest::Client,
    any: reqwest::Client,
    timeout: Duration,
}

impl Clients {
    fn new(timeout: Duration) -> Result<Self> {
        let base = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // A proxy from the environment would connect instead of us, past the checks.
                .no_proxy()
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .timeout(timeout)
                .pool_max_idle_per_host(2)
                .user_agent(concat!("Imprint-Webhooks/", env!("CARGO_PKG_VERSION")))
        };
        let err = |e: reqwest::Error| Error::Internal(format!("webhook HTTP client: {e}"));
        Ok(Self {
            public_only: base().dns_resolver(Arc::new(PublicOnly)).build().map_err(err)?,
            any: base().build().map_err(err)?,
            timeout,
        })
    }
}

/// One outbound HTTP client under the delivery rules (no redirects, no proxy, bounded by
/// `timeout`; without `allow_private`, names resolve to public addresses only): what
/// external validators (the checks module) are called with.
pub(crate) fn outbound_client(timeout: Duration, allow_private: bool) -> Result<reqwest::Client> {
    let b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("Imprint-Webhooks/", env!("CARGO_PKG_VERSION")));
    let b = if allow_private { b } else { b.dns_resolver(Arc::new(PublicOnly)) };
    b.build().map_err(|e| Error::Internal(format!("outbound HTTP client: {e}")))
}

/// Why a request to `url` may not go out without `allow_private` (a literal private
/// address; names are refused by `outbound_client`'s resolver), or `None`.
pub(crate) fn refused_literal(url: &url::Url) -> Option<String> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return None,
    };
    forbidden_address(ip).map(|why| format!("refused: {ip} is a {why} address (allow_private is for administrators)"))
}

/// What one attempt found.
struct Outcome {
    delivered: bool,
    status: Option<i32>,
    response: Option<String>,
    error: Option<String>,
}

/// The first `RESPONSE_SNIPPET_BYTES` of an answer's body, as text.
async fn snippet(mut resp: reqwest::Response) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < RESPONSE_SNIPPET_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(RESPONSE_SNIPPET_BYTES);
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    // A multi-byte character cut in two is dropped, not shown as U+FFFD.
    if buf.len() == RESPONSE_SNIPPET_BYTES && s.ends_with('\u{FFFD}') {
        s.pop();
    }
    s
}

async fn send(
    clients: &Clients,
    job: &store::webhooks::Job,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Outcome {
    let failed = |error: String| Outcome { delivered: false, status: None, response: None, error: Some(error) };
    let url = match url::Url::parse(&job.url) {
        Ok(u) => u,
        Err(e) => return failed(format!("url: {e}")),
    };
    let client = if job.allow_private {
        &clients.any
    } else {
        // A literal address is not resolved, so it is checked here; names are checked
        // by the resolver.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            if let Some(why) = forbidden_address(ip) {
                return failed(format!(
                    "refused: {ip} is a {why} address; deliveries go to public addresses only, unless an admin's subscription sets allow_private"
                ));
            }
        } else if let Some(host) = url.host_str() {
            // The resolver refuses too; this gives the log a clear reason.
            if let Err(e) = public_addresses(host).await {
                return failed(e);
            }
        }
        &clients.public_only
    };
    let mut req = client.post(url).body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let attempt = async {
        match req.send().await {
            Err(e) if e.is_timeout() => failed(format!("no answer within {} ms", clients.timeout.as_millis())),
            Err(e) => failed(error_chain(&e).chars().take(500).collect()),
            Ok(resp) => {
                let status = resp.status();
                let location = resp.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned);
                let text = snippet(resp).await;
                let error = if status.is_success() {
                    None
                } else if status.is_redirection() {
                    Some(format!(
                        "answered {status} (redirects are not followed{})",
                        location
                            .map(|l| format!("; it pointed to {}", l.chars().take(200).collect::<String>()))
                            .unwrap_or_default()
                    ))
                } else {
                    Some(format!("answered {status}"))
                };
                Outcome {
                    delivered: status.is_success(),
                    status: Some(i32::from(status.as_u16())),
                    response: Some(text),
                    error,
                }
            }
        }
    };
    // The client's timeout bounds the request and the body read; this bounds the rest.
    match tokio::time::timeout(clients.timeout + Duration::from_secs(1), attempt).await {
        Ok(o) => o,
        Err(_) => failed(format!("no answer within {} ms", clients.timeout.as_millis())),
    }
}

impl Imprint {
    /// The worker's delivery loop (leader only): every tick, each subscription with a due
    /// delivery gets a task that sends its deliveries in order until one fails or none is
    /// due; a slow receiver holds up only its own subscription.
    pub(crate) async fn webhook_loop(self) {
        // Subscribed first, and waited for as a state (not a change): a shutdown that comes
        // while the clients are still being built (loading the root certificates) is seen.
        let mut stop = self.stopping();
        let clients = match Clients::new(self.config().webhook_timeout) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "webhooks cannot be delivered");
                return;
            }
        };
        let mut tick = tokio::time::interval(self.config().webhook_tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running: tokio::task::JoinSet<i64> = tokio::task::JoinSet::new();
        let mut busy: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut last_cleanup: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = running.join_next_with_id() => {
                    let id = match done { Ok((id, _)) => id, Err(e) => e.id() };
                    busy.remove(&id);
                    continue;
                }
                _ = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
                    // Attempts in flight get a moment to finish; one cut short stays leased
                    // and is sent again later (at least once).
                    let finish = async { while running.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_secs(2), finish).await;
                    running.abort_all();
                    return;
                }
            }
            if !self.is_leader() {
                continue;
            }
            if last_cleanup.is_none_or(|t| t.elapsed() > Duration::from_secs(600)) {
                last_cleanup = Some(Instant::now());
                if let Err(e) = self.forget_finished_deliveries().await {
                    tracing::debug!(error = %e, "webhook cleanup failed; the next one retries");
                }
            }
            let free = MAX_IN_FLIGHT.saturating_sub(running.len());
            if free == 0 {
                continue;
            }
            let due =
                match store::webhooks::due_subscriptions(self.pool(), self.now(), (MAX_IN_FLIGHT * 2) as i64).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::debug!(error = %e, "looking for due webhook deliveries failed; retrying");
                        continue;
                    }
                };
            let taken: HashSet<i64> = busy.values().copied().collect();
            for sub in due.into_iter().filter(|s| !taken.contains(s)).take(free) {
                let h = running.spawn(self.clone().drain_subscription(clients.clone(), sub));
                busy.insert(h.id(), sub);
            }
        }
    }

    async fn forget_finished_deliveries(&self) -> Result<()> {
        let mut conn = self.pool().acquire().await?;
        let n = store::webhooks::forget_finished(&mut conn, self.now() - KEEP_FINISHED).await?;
        if n > 0 {
            tracing::info!(forgotten = n, "forgot old finished webhook deliveries");
        }
        Ok(())
    }

    /// Sends a subscription's due deliveries, oldest event first, until one fails (it
    /// waits for its retry, and the later ones behind it) or none is due.
    async fn drain_subscription(self, clients: Arc<Clients>, sub: i64) -> i64 {
        for _ in 0..DRAIN_BATCH {
            if !self.is_leader() || *self.stopping().borrow() {
                break;
            }
            let now = self.now();
            let lease =
                now + chrono::Duration::from_std(clients.timeout).unwrap_or_default() + chrono::Duration::seconds(30);
            match store::webhooks::claim_head(self.pool(), sub, now, lease).await {
                Ok(Some(job)) => match self.attempt(&clients, job).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, subscription = sub, "a webhook attempt could not be recorded; it is sent again later");
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, subscription = sub, "claiming a webhook delivery failed");
                    break;
                }
            }
        }
        sub
    }

    /// One attempt of one delivery, recorded. `true`: delivered.
    async fn attempt(&self, clients: &Clients, job: store::webhooks::Job) -> Result<bool> {
        let body = serde_json::to_vec(&cloudevent(
            &job.event_id,
            &job.event_type,
            job.topic.as_deref(),
            job.event_at,
            &job.data,
        ))
        .map_err(|e| Error::Internal(format!("event as JSON: {e}")))?;
        let now = self.now();
        let timestamp = now.timestamp();
        let mut secrets = vec![job.secret.as_str()];
        if let (Some(prev), Some(until)) = (&job.previous_secret, job.previous_expires_at) {
            if until > now {
                secrets.push(prev);
            }
        }
        let signature = signature_header(&secrets, &job.event_id, timestamp, &body)?;
        let headers = vec![
            ("content-type", "application/cloudevents+json".to_owned()),
            ("webhook-id", job.event_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ];
        let started = Instant::now();
        let outcome = send(clients, &job, headers, body).await;
        let latency_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let attempt_no = u32::try_from(job.attempts).unwrap_or(0) + 1;
        let retry_at = if outcome.delivered {
            None
        } else {
            rules::retry_after_jittered(attempt_no, rand::random::<f64>()).map(|w| self.now() + w)
        };
        let a = store::webhooks::Attempt {
            at: now,
            status: outcome.status,
            latency_ms,
            response: outcome.response.as_deref(),
            error: outcome.error.as_deref(),
        };
        store::webhooks::record(self.pool(), job.id, &a, outcome.delivered, retry_at).await?;
        let result = match (outcome.delivered, retry_at) {
            (true, _) => "delivered",
            (false, Some(_)) => "retry",
            (false, None) => "failed",
        };
        metrics::counter!("imprint_webhook_attempts_total", "result" => result).increment(1);
        if result == "failed" {
            tracing::warn!(delivery = job.id, event = job.event_id, error = ?outcome.error, "a webhook delivery failed for good after every retry");
        }
        Ok(outcome.delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks spec (and its libraries' tests).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).expect("sign");
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let two = signature_header(&[secret, secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).expect("sign");
        assert_eq!(two, format!("v1,{sig} v1,{sig}"));
    }

    #[test]
    fn secrets_are_whsec_and_32_random_bytes() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        let raw =
            base64::engine::general_purpose::STANDARD.decode(a.strip_prefix("whsec_").expect("prefix")).expect("b64");
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/x?y=1", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "http://user:pw@example.com/",
            "not a url",
            "",
            "http://127.0.0.1:9/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://localhost:8080/",
            "http://x.localhost/",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad} must be refused");
        }
        assert!(check_url("http://127.0.0.1:9/", true).is_ok(), "allowed with allow_private");
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(2100)), false).is_err());
        assert_eq!(url_origin("https://h.example:8443/p?token=secret"), "https://h.example:8443");
    }

    #[test]
    fn a_cloudevent_has_the_required_attributes() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let e = cloudevent("evt_1", "version.published", Some("app.config"), t, &json!({"version": 3}));
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["type"], "io.imprint.version.published");
        assert_eq!(e["subject"], "app.config");
        assert_eq!(e["time"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(e["data"]["version"], 3);
        assert!(cloudevent("evt_2", "topic.created", None, t, &json!({})).get("subject").is_none());
    }

    #[test]
    fn event_types_are_checked_and_deduplicated() {
        assert_eq!(check_event_types(&["pin.set".into(), "pin.set".into()]).expect("ok"), ["pin.set"]);
        assert!(check_event_types(&["pin.sett".into()]).is_err());
    }
}
