//! Pins: force consumers matching a selector onto a version until the pin is removed.
use crate::audit_log::audit;
use crate::error::{Error, Result};
use crate::model::Pin;
use crate::topics::require_live_version;
use crate::{notify, Caller, Imprint};
use chrono::{DateTime, Utc};
use imprint_domain::Selector;
use serde_json::json;

pub struct PinInput {
    pub selector: Selector,
    pub version: u64,
    pub reason: String,
}

type PinRow = (String, i64, String, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

fn pin_from_row(r: PinRow) -> Result<Pin> {
    Ok(Pin {
        selector: Selector::parse(&r.0).map_err(|e| Error::Internal(format!("stored selector {:?}: {e}", r.0)))?,
        version: r.1 as u64,
        reason: r.2,
        created_by: r.3,
        created_at: r.4,
        removed_at: r.5,
        removed_by: r.6,
    })
}

impl Imprint {
    /// Sets the pin on `selector`, replacing an active pin on the same selector.
    #[tracing::instrument(skip(self, input), fields(selector = %input.selector, version = input.version))]
    pub async fn pin(&self, caller: &Caller, topic: &str, input: PinInput) -> Result<Pin> {
        if input.reason.chars().count() > 1024 {
            return Err(Error::invalid("reason has at most 1024 characters"));
        }
        let mut tx = self.pool().begin().await?;
        let t = self.topic_ref(&mut *tx, topic).await?;
        caller.require_write(&t.name, &t.owner)?;
        // Lock the topic row: pins on one topic are set one at a time.
        sqlx::query("SELECT 1 FROM topics WHERE id = $1 FOR UPDATE").bind(t.id).execute(&mut *tx).await?;
        require_live_version(&mut tx, &t, input.version).await?;
        let who = caller.who();
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
        let replaced = replace_pin(&mut tx, t.id, &input.selector, input.version, &input.reason, &who, now).await?;
        let details = json!({
            "selector": input.selector.to_string(),
            "version": input.version,
            "reason": input.reason,
            "replaced": replaced,
        });
        audit(&mut tx, &who, "pin.set", Some(&t.name), details).await?;
        notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_pins_total", "op" => "set").increment(1);
        Ok(Pin {
            selector: input.selector,
            version: input.version,
            reason: input.reason,
            created_by: who,
            created_at: now,
            removed_at: None,
            removed_by: None,
        })
    }

    #[tracing::instrument(skip(self))]
    pub async fn unpin(&self, caller: &Caller, topic: &str, selector: &Selector) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let t = self.topic_ref(&mut *tx, topic).await?;
        caller.require_write(&t.name, &t.owner)?;
        let who = caller.who();
        let removed: Option<i64> = sqlx::query_scalar(
            "UPDATE pins SET removed_at = now(), removed_by = $3 WHERE topic_id = $1 AND selector_key = $2 AND removed_at IS NULL
             RETURNING version",
        )
        .bind(t.id)
        .bind(selector.to_string())
        .bind(&who)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(version) = removed else {
            return Err(Error::PinNotFound { topic: t.name, selector: selector.to_string() });
        };
        audit(
            &mut tx,
            &who,
            "pin.remove",
            Some(&t.name),
            json!({"selector": selector.to_string(), "version": version}),
        )
        .await?;
        notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_pins_total", "op" => "remove").increment(1);
        Ok(())
    }

    /// Active pins, or every pin ever set with `all`; newest first.
    pub async fn pins(&self, topic: &str, all: bool) -> Result<Vec<Pin>> {
        let t = self.topic_ref(self.pool(), topic).await?;
        let rows: Vec<PinRow> = sqlx::query_as(
            "SELECT selector_key, version, reason, created_by, created_at, removed_at, removed_by FROM pins
             WHERE topic_id = $1 AND ($2 OR removed_at IS NULL) ORDER BY created_at DESC, id DESC",
        )
        .bind(t.id)
        .bind(all)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(pin_from_row).collect()
    }
}

/// Sets a pin inside the caller's transaction, replacing an active pin on the same
/// selector. Returns the version the replaced pin held, if there was one (the audit
/// records it).
pub(crate) async fn replace_pin(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    topic_id: i64,
    selector: &Selector,
    version: u64,
    reason: &str,
    who: &str,
    now: DateTime<Utc>,
) -> Result<Option<u64>> {
    let key = selector.to_string();
    let replaced: Option<i64> = sqlx::query_scalar(
        "UPDATE pins SET removed_at = $3, removed_by = $4 WHERE topic_id = $1 AND selector_key = $2 AND removed_at IS NULL
         RETURNING version",
    )
    .bind(topic_id)
    .bind(&key)
    .bind(now)
    .bind(who)
    .fetch_optional(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO pins (topic_id, selector, selector_key, version, reason, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(topic_id)
    .bind(selector.to_json())
    .bind(&key)
    .bind(version as i64)
    .bind(reason)
    .bind(now)
    .bind(who)
    .execute(&mut **tx)
    .await?;
    Ok(replaced.map(|v| v as u64))
}
