//! The webhook tables: subscriptions, change events (the outbox) and deliveries.
use crate::error::Result;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// A subscription with its topic's name and owner (when it is a topic's).
pub(crate) struct SubscriptionRow {
    pub id: i64,
    pub url: String,
    pub description: String,
    pub topic: Option<String>,
    pub topic_owner: Option<String>,
    pub team: Option<String>,
    pub event_types: Vec<String>,
    /// A rotated-out secret exists (the secrets themselves are read by `claim_head` only).
    pub has_previous: bool,
    pub previous_expires_at: Option<DateTime<Utc>>,
    pub allow_private: bool,
    pub enabled: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a new subscription is.
pub(crate) struct NewSubscription<'a> {
    pub url: &'a str,
    pub description: &'a str,
    pub topic_id: Option<i64>,
    /// The topic's owner now (a topic subscription).
    pub topic_owner: Option<&'a str>,
    pub team: Option<&'a str>,
    pub event_types: &'a [String],
    pub secret: &'a str,
    pub allow_private: bool,
    pub enabled: bool,
    pub created_by: &'a str,
    pub by_admin: bool,
}

/// Writes one change event for every enabled subscription that wants it, in the
/// transaction of the change (nothing is written when none does). `topic` is the
/// changed topic's name (its id and owning team are looked up: a team's subscriptions
/// get the events of the topics it owns). Returns the number of deliveries queued.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    event_id: &str,
    event_type: &str,
    topic: Option<&str>,
    at: DateTime<Utc>,
    data: &serde_json::Value,
) -> Result<u64> {
    let r = sqlx::query!(
        r#"WITH t AS (SELECT id, owner FROM topics WHERE name = $3),
           subs AS (
               SELECT s.id FROM webhook_subscriptions s
               WHERE s.enabled
                 AND (cardinality(s.event_types) = 0 OR $2 = ANY(s.event_types))
                 AND ((s.topic_id IS NULL AND s.team IS NULL)
                      OR (s.topic_id = (SELECT id FROM t) AND (s.by_admin OR s.topic_owner = (SELECT owner FROM t)))
                      OR (s.team IS NOT NULL AND s.team = (SELECT owner FROM t)))
           ),
           e AS (
               INSERT INTO webhook_events (id, type, topic, at, data)
               SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM subs)
               RETURNING seq
           )
           INSERT INTO webhook_deliveries (subscription_id, event_seq, next_attempt_at)
           SELECT subs.id, e.seq, $4 FROM subs CROSS JOIN e"#,
        event_id,
        event_type,
        topic,
        at as _,
        data
    )
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

pub(crate) async fn count_subscriptions(db: impl PgExecutor<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM webhook_subscriptions"#).fetch_one(db).await?)
}

pub(crate) async fn insert(db: impl PgExecutor<'_>, s: &NewSubscription<'_>, now: DateTime<Utc>) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"INSERT INTO webhook_subscriptions
               (url, description, topic_id, topic_owner, team, event_types, secret, allow_private, enabled,
                created_by, by_admin, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) RETURNING id"#,
        s.url,
        s.description,
        s.topic_id,
        s.topic_owner,
        s.team,
        s.event_types,
        s.secret,
        s.allow_private,
        s.enabled,
        s.created_by,
        s.by_admin,
        now as _
    )
    .fetch_one(db)
    .await?)
}

pub(crate) async fn get(db: impl PgExecutor<'_>, id: i64) -> Result<Option<SubscriptionRow>> {
    Ok(sqlx::query_as!(
        SubscriptionRow,
        r#"SELECT s.id, s.url, s.description, t.name AS "topic?", t.owner AS "topic_owner?", s.team,
                  s.event_types, s.previous_secret IS NOT NULL AS "has_previous!", s.previous_expires_at AS "previous_expires_at: DateTime<Utc>", s.allow_private, s.enabled,
                  s.created_by, s.created_at AS "created_at: DateTime<Utc>", s.updated_at AS "updated_at: DateTime<Utc>"
           FROM webhook_subscriptions s LEFT JOIN topics t ON t.id = s.topic_id
           WHERE s.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?)
}

/// Subscriptions by id, after `after` (a page's cursor), at most `limit`.
pub(crate) async fn list(db: impl PgExecutor<'_>, after: Option<i64>, limit: i64) -> Result<Vec<SubscriptionRow>> {
    Ok(sqlx::query_as!(
        SubscriptionRow,
        r#"SELECT s.id, s.url, s.description, t.name AS "topic?", t.owner AS "topic_owner?", s.team,
                  s.event_types, s.previous_secret IS NOT NULL AS "has_previous!", s.previous_expires_at AS "previous_expires_at: DateTime<Utc>", s.allow_private, s.enabled,
                  s.created_by, s.created_at AS "created_at: DateTime<Utc>", s.updated_at AS "updated_at: DateTime<Utc>"
           FROM webhook_subscriptions s LEFT JOIN topics t ON t.id = s.topic_id
           WHERE s.id > COALESCE($1::bigint, 0)
           ORDER BY s.id LIMIT $2"#,
        after,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// Stores a subscription's changeable settings.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update(
    db: impl PgExecutor<'_>,
    id: i64,
    url: &str,
    description: &str,
    event_types: &[String],
    allow_private: bool,
    enabled: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        r#"UPDATE webhook_subscriptions
           SET url = $2, description = $3, event_types = $4, allow_private = $5, enabled = $6, updated_at = $7
           WHERE id = $1"#,
        id,
        url,
        description,
        event_types,
        allow_private,
        enabled,
        now as _
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A new signing secret; the current one keeps signing too until `previous_until`.
pub(crate) async fn rotate(
    db: impl PgExecutor<'_>,
    id: i64,
    secret: &str,
    previous_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query!(
        r#"UPDATE webhook_subscriptions
           SET previous_secret = secret, previous_expires_at = $3, secret = $2, updated_at = $4
           WHERE id = $1"#,
        id,
        secret,
        previous_until as _,
        now as _
    )
    .execute(db)
    .await?;
    Ok(())
}

pub(crate) async fn delete(db: impl PgExecutor<'_>, id: i64) -> Result<bool> {
    let r = sqlx::query!("DELETE FROM webhook_subscriptions WHERE id = $1", id).execute(db).await?;
    Ok(r.rows_affected() > 0)
}

/// One delivery of a subscription's log, with its event.
pub(crate) struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub topic: Option<String>,
    pub event_at: DateTime<Utc>,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_latency_ms: Option<i32>,
    pub last_response: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A subscription's deliveries, newest event first, before `before` (a page's cursor).
pub(crate) async fn deliveries(
    db: impl PgExecutor<'_>,
    subscription_id: i64,
    state: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DeliveryRow>> {
    Ok(sqlx::query_as!(
        DeliveryRow,
        r#"SELECT d.id, e.id AS event_id, e.type AS event_type, e.topic, e.at AS "event_at: DateTime<Utc>", d.state, d.attempts,
                  d.next_attempt_at AS "next_attempt_at: DateTime<Utc>", d.last_attempt_at AS "last_attempt_at: DateTime<Utc>",
                  d.last_status, d.last_latency_ms, d.last_response,
                  d.last_error, d.delivered_at AS "delivered_at: DateTime<Utc>"
           FROM webhook_deliveries d JOIN webhook_events e ON e.seq = d.event_seq
           WHERE d.subscription_id = $1 AND ($2::text IS NULL OR d.state = $2)
             AND ($3::bigint IS NULL OR d.id < $3)
           ORDER BY d.id DESC LIMIT $4"#,
        subscription_id,
        state,
        before as _,
        limit
    )
    .fetch_all(db)
    .await?)
}

pub(crate) async fn delivery(db: impl PgExecutor<'_>, subscription_id: i64, id: i64) -> Result<Option<DeliveryRow>> {
    Ok(sqlx::query_as!(
        DeliveryRow,
        r#"SELECT d.id, e.id AS event_id, e.type AS event_type, e.topic, e.at AS "event_at: DateTime<Utc>", d.state, d.attempts,
                  d.next_attempt_at AS "next_attempt_at: DateTime<Utc>", d.last_attempt_at AS "last_attempt_at: DateTime<Utc>",
                  d.last_status, d.last_latency_ms, d.last_response,
                  d.last_error, d.delivered_at AS "delivered_at: DateTime<Utc>"
           FROM webhook_deliveries d JOIN webhook_events e ON e.seq = d.event_seq
           WHERE d.subscription_id = $1 AND d.id = $2"#,
        subscription_id,
        id
    )
    .fetch_optional(db)
    .await?)
}

/// Sends a delivery again from its first attempt, now (delivered, failed or waiting).
pub(crate) async fn redeliver(
    db: impl PgExecutor<'_>,
    subscription_id: i64,
    id: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let r = sqlx::query!(
        r#"UPDATE webhook_deliveries
           SET state = 'pending', attempts = 0, next_attempt_at = $3, lease_until = NULL
           WHERE subscription_id = $1 AND id = $2"#,
        subscription_id,
        id,
        now as _
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// The subscriptions whose oldest pending delivery is due and not being sent: a
/// subscription's deliveries go out one at a time, in event order.
pub(crate) async fn due_subscriptions(db: impl PgExecutor<'_>, now: DateTime<Utc>, limit: i64) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar!(
        r#"SELECT s.id FROM webhook_subscriptions s
           CROSS JOIN LATERAL (
               SELECT d.next_attempt_at, d.lease_until FROM webhook_deliveries d
               WHERE d.subscription_id = s.id AND d.state = 'pending'
               ORDER BY d.event_seq LIMIT 1
           ) h
           WHERE s.enabled AND h.next_attempt_at <= $1 AND (h.lease_until IS NULL OR h.lease_until < $1)
           ORDER BY h.next_attempt_at LIMIT $2"#,
        now as _,
        limit
    )
    .fetch_all(db)
    .await?)
}

/// A delivery claimed for sending: the event and where and how it goes.
pub(crate) struct Job {
    pub id: i64,
    pub attempts: i32,
    pub event_id: String,
    pub event_type: String,
    pub topic: Option<String>,
    pub event_at: DateTime<Utc>,
    pub data: serde_json::Value,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_expires_at: Option<DateTime<Utc>>,
    pub allow_private: bool,
}

/// Claims a subscription's oldest pending delivery when it is due (leased until
/// `lease_until`, so no other worker sends it meanwhile). `None`: nothing is due.
pub(crate) async fn claim_head(
    db: impl PgExecutor<'_>,
    subscription_id: i64,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<Job>> {
    Ok(sqlx::query_as!(
        Job,
        r#"WITH head AS (
               SELECT d.id FROM webhook_deliveries d
               WHERE d.subscription_id = $1 AND d.state = 'pending'
               ORDER BY d.event_seq LIMIT 1
               FOR UPDATE SKIP LOCKED
           )
           UPDATE webhook_deliveries d SET lease_until = $3
           FROM head, webhook_events e, webhook_subscriptions s
           WHERE d.id = head.id AND e.seq = d.event_seq AND s.id = d.subscription_id AND s.enabled
             AND d.next_attempt_at <= $2 AND (d.lease_until IS NULL OR d.lease_until < $2)
           RETURNING d.id, d.attempts, e.id AS event_id, e.type AS event_type, e.topic, e.at AS "event_at: DateTime<Utc>", e.data,
                     s.url, s.secret, s.previous_secret, s.previous_expires_at AS "previous_expires_at: DateTime<Utc>", s.allow_private"#,
        subscription_id,
        now as _,
        lease_until as _
    )
    .fetch_optional(db)
    .await?)
}

/// What one attempt found.
pub(crate) struct Attempt<'a> {
    pub at: DateTime<Utc>,
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub response: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Records an attempt: `delivered`, or pending again at `retry_at`, or `failed` (`None`).
pub(crate) async fn record(
    db: impl PgExecutor<'_>,
    id: i64,
    a: &Attempt<'_>,
    delivered: bool,
    retry_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let state = match (delivered, retry_at) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    sqlx::query!(
        r#"UPDATE webhook_deliveries
           SET state = $2, attempts = attempts + 1, next_attempt_at = COALESCE($3, next_attempt_at),
               lease_until = NULL, last_attempt_at = $4, last_status = $5, last_latency_ms = $6,
               last_response = $7, last_error = $8, delivered_at = CASE WHEN $9 THEN $4 ELSE delivered_at END
           WHERE id = $1"#,
        id,
        state,
        retry_at as _,
        a.at as _,
        a.status,
        a.latency_ms,
        a.response,
        a.error,
        delivered
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets deliveries finished before `before`, and events no delivery needs any more.
pub(crate) async fn forget_finished(db: &mut PgConnection, before: DateTime<Utc>) -> Result<u64> {
    let gone = sqlx::query!(
        r#"DELETE FROM webhook_deliveries d USING webhook_events e
           WHERE e.seq = d.event_seq AND d.state <> 'pending' AND e.at < $1"#,
        before as _
    )
    .execute(&mut *db)
    .await?
    .rows_affected();
    sqlx::query!(
        r#"DELETE FROM webhook_events e WHERE e.at < $1
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = e.seq)"#,
        before as _
    )
    .execute(&mut *db)
    .await?;
    Ok(gone)
}
