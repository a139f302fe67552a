//! Every SQL statement of the service, as compile-time checked `sqlx::query!` /
//! `query_as!` against the migrations (offline data in `.sqlx/`), with named row structs.
//! Functions here know tables, not rules: the feature modules above decide what to do,
//! and call these inside their transactions. Nothing here imports a feature module.
use crate::error::Result;
use sqlx::PgConnection;

pub(crate) mod analysis;
pub(crate) mod audit_log;
pub(crate) mod blobs;
pub(crate) mod change_control;
pub(crate) mod checks;
pub(crate) mod consumers;
pub(crate) mod copies;
pub(crate) mod encryption;
pub(crate) mod history;
pub(crate) mod objects;
pub(crate) mod pins;
pub(crate) mod plaintext_reads;
pub(crate) mod rollouts;
pub(crate) mod serving;
pub(crate) mod snapshots;
pub(crate) mod tokens;
pub(crate) mod topics;
pub(crate) mod users;
pub(crate) mod versions;
pub(crate) mod webhooks;

/// The NOTIFY channel every change is announced on; the payload is the topic id.
pub const CHANGE_CHANNEL: &str = "imprint_change";

/// Announces a change of `topic_id` to every server, inside the writing transaction: the
/// topic's change sequence is raised (a slow reload can never install an older state)
/// and a notification `<topic id>:<change seq>` goes out when the transaction commits (a
/// server that already holds that sequence skips the reload).
/// Returns the new change sequence.
pub(crate) async fn notify(conn: &mut PgConnection, topic_id: i64) -> Result<i64> {
    // One round trip: raise the sequence and queue the notification carrying it.
    let seq = sqlx::query_scalar!(
        r#"WITH s AS (UPDATE topics SET change_seq = change_seq + 1 WHERE id = $1 RETURNING change_seq)
           SELECT s.change_seq AS "change_seq!" FROM s
           CROSS JOIN LATERAL pg_notify($2, $1::bigint::text || ':' || s.change_seq::text) AS n"#,
        topic_id,
        CHANGE_CHANNEL
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(seq)
}

/// Is Postgres answering?
pub(crate) async fn ping(pool: &sqlx::PgPool) -> Result<()> {
    sqlx::query!("SELECT 1 AS one").fetch_one(pool).await?;
    Ok(())
}

/// Does the error mapping know `constraint` (for the schema test)?
pub fn maps_constraint(constraint: &str) -> bool {
    crate::error::constraint_error(constraint, "").is_some()
}

/// Records one operator action in the caller's transaction (the audit log).
pub(crate) async fn audit(
    conn: &mut PgConnection,
    at: chrono::DateTime<chrono::Utc>,
    actor: &str,
    action: &str,
    topic: Option<&str>,
    details: serde_json::Value,
) -> Result<()> {
    // The change events (webhooks) of this action go in the same transaction: a committed
    // change always has its events, a rolled-back one never.
    let events = imprint_domain::webhooks::events_of_action(action, &details);
    if !events.is_empty() {
        let mut data = match &details {
            serde_json::Value::Object(m) => m.clone(),
            other => serde_json::Map::from_iter([("details".to_owned(), other.clone())]),
        };
        data.insert("topic".into(), topic.map_or(serde_json::Value::Null, |t| t.into()));
        data.insert("actor".into(), actor.into());
        let data = serde_json::Value::Object(data);
        for event_type in events {
            let queued = webhooks::enqueue(conn, &new_event_id(), event_type, topic, at, &data).await?;
            if queued > 0 {
                metrics::counter!("imprint_webhook_deliveries_queued_total").increment(queued);
            }
        }
    }
    audit_log::insert(conn, at, actor, action, topic, details).await?;
    metrics::counter!("imprint_audit_log_entries_total").increment(1);
    Ok(())
}

/// A change event's id (CloudEvents `id`, Standard Webhooks `webhook-id`): `evt_` and
/// 128 random bits in hex.
fn new_event_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    format!("evt_{}", hex::encode(b))
}

/// Takes a session-level advisory lock if no other session holds it (`false`: one
/// does); it is held until released or the connection closes.
pub(crate) async fn try_session_lock(conn: &mut sqlx::PgConnection, key: i64) -> Result<bool> {
    Ok(sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key).fetch_one(conn).await?)
}
