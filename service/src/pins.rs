//! Pins: force consumers matching a selector onto a version until the pin is removed.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{Page, Pin};
use crate::release_gate::{self, Gate, Holds};
use crate::{cursor, store};
use imprint_domain::{Selector, TopicName, VersionNumber};
use serde_json::json;

pub struct PinInput {
    pub selector: Selector,
    pub version: VersionNumber,
    pub reason: String,
    /// The pin stops applying at this time (must be in the future).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn pin_from_row(r: store::pins::PinRow) -> Result<Pin> {
    Ok(Pin {
        selector: Selector::parse(&r.selector_key)
            .map_err(|e| Error::Internal(format!("stored selector {:?}: {e}", r.selector_key)))?,
        version: r.version as u64,
        reason: r.reason,
        created_by: r.created_by,
        created_at: r.created_at,
        removed_at: r.removed_at,
        removed_by: r.removed_by,
        expires_at: r.expires_at,
    })
}

impl Imprint {
    /// Sets the pin on `selector`, replacing an active pin on the same selector.
    #[tracing::instrument(skip(self, input), fields(selector = %input.selector, version = input.version.get()))]
    pub async fn pin(&self, caller: &Caller, topic: &TopicName, input: PinInput) -> Result<Pin> {
        self.pin_gated(caller, topic, input, Gate::default()).await
    }

    /// `pin` through the release gate: a review rule holds it (a freeze does not: pins are
    /// how incidents are mitigated); applies the change request `gate.request` or breaks glass.
    pub(crate) async fn pin_gated(
        &self,
        caller: &Caller,
        topic: &TopicName,
        input: PinInput,
        gate: Gate,
    ) -> Result<Pin> {
        if input.reason.chars().count() > 1024 {
            return Err(Error::invalid("reason has at most 1024 characters"));
        }
        let mut tx = self.pool().begin().await?;
        // The topic row lock: pins on one topic are set one at a time, with its settings
        // as they are under the lock.
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        store::versions::require_live(&mut tx, &t, input.version.get()).await?;
        let who = caller.who();
        let now = self.now();
        if input.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expires_at must be in the future"));
        }
        release_gate::check(&mut tx, t.id, &t.name, &t.owner, caller, &gate, Holds::ReviewOnly, now).await?;
        let replaced = store::pins::replace(
            &mut tx,
            t.id,
            &input.selector,
            input.version.get() as i64,
            &input.reason,
            &who,
            now,
            input.expires_at,
        )
        .await?;
        let mut details = json!({
            "selector": input.selector.to_string(),
            "version": input.version,
            "reason": input.reason,
            "replaced": replaced,
            "expires_at": input.expires_at,
        });
        if let (Some(map), Some(r)) = (details.as_object_mut(), &gate.break_glass) {
            map.insert("break_glass".into(), json!(r));
        }
        if let (Some(map), Some(r)) = (details.as_object_mut(), gate.request) {
            map.insert("change_request".into(), json!(r));
        }
        store::audit(&mut tx, now, &who, "pin.set", Some(&t.name), details).await?;
        let marks = json!({"selector": input.selector.to_string()});
        let v = Some(input.version.get() as i64);
        release_gate::finish(&mut tx, &t.name, &gate, "pin", v, &who, now, marks).await?;
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_pins_total", "op" => "set").increment(1);
        Ok(Pin {
            selector: input.selector,
            version: input.version.get(),
            reason: input.reason,
            created_by: who,
            created_at: now,
            removed_at: None,
            removed_by: None,
            expires_at: input.expires_at,
        })
    }

    /// Removes the pins whose expiry has come, each audited as `pin.expire` by `expiry`
    /// (run by the scheduler; several servers never expire a pin twice).
    pub(crate) async fn expire_pins(&self) -> Result<usize> {
        let mut tx = self.pool().begin().await?;
        let expired = store::pins::expire(&mut tx, self.now()).await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let mut topics = std::collections::BTreeSet::new();
        for p in &expired {
            let details = json!({"selector": p.selector_key, "version": p.version, "expires_at": p.expires_at});
            store::audit(&mut tx, p.expires_at, "expiry", "pin.expire", Some(&p.topic), details).await?;
            topics.insert(p.topic_id);
        }
        for id in &topics {
            store::notify(&mut tx, *id).await?;
        }
        tx.commit().await?;
        for id in topics {
            self.refresh_topic(id).await;
        }
        metrics::counter!("imprint_pins_total", "op" => "expire").increment(expired.len() as u64);
        tracing::info!(expired = expired.len(), "expired pins removed");
        Ok(expired.len())
    }

    #[tracing::instrument(skip(self))]
    pub async fn unpin(&self, caller: &Caller, topic: &TopicName, selector: &Selector) -> Result<()> {
        self.unpin_gated(caller, topic, selector, Gate::default()).await
    }

    /// `unpin`, applying the (scheduled) change request `gate.request`: nothing holds an unpin.
    pub(crate) async fn unpin_gated(
        &self,
        caller: &Caller,
        topic: &TopicName,
        selector: &Selector,
        gate: Gate,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let who = caller.who();
        let now = self.now();
        let Some(version) = store::pins::remove(&mut tx, t.id, &selector.to_string(), &who, now).await? else {
            return Err(Error::PinNotFound { topic: t.name, selector: selector.to_string() });
        };
        let details = json!({"selector": selector.to_string(), "version": version});
        store::audit(&mut tx, now, &who, "pin.remove", Some(&t.name), details).await?;
        let marks = json!({"selector": selector.to_string()});
        release_gate::finish(&mut tx, &t.name, &gate, "unpin", Some(version), &who, now, marks).await?;
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_pins_total", "op" => "remove").increment(1);
        Ok(())
    }

    /// Active pins, or every pin ever set with `all`; newest first, a page at a time.
    pub async fn pins(
        &self,
        caller: &Caller,
        topic: &TopicName,
        all: bool,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Pin>> {
        let limit = cursor::limit(limit)?;
        let before = cursor.map(cursor::decode).transpose()?;
        let t = self.readable_topic(caller, topic).await?;
        let rows = store::pins::list(self.pool(), t.id, all, before, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = if more { rows.last().map(|r| cursor::encode(r.id)) } else { None };
        Ok(Page { items: rows.into_iter().map(pin_from_row).collect::<Result<_>>()?, next })
    }
}
