//! The console's overview: what is happening across all topics the caller may read —
//! active rollouts, lagging nodes, recent publishes, pins worth a look, unread topics.
use crate::auth::Caller;
use crate::error::Result;
use crate::handle::Imprint;
use crate::model::RolloutInfo;
use crate::store;
use chrono::{DateTime, Duration, Utc};
use imprint_domain::STALE_PIN_DAYS;
use serde::Serialize;

/// Topics not polled for this long count as unread.
pub const UNREAD_DAYS: u32 = 7;

#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    /// Running and paused rollouts (auto-paused ones carry their pause reason).
    pub rollouts: Vec<RolloutInfo>,
    /// Topics with nodes lagging behind the version they should hold: (topic, nodes).
    pub lagging: Vec<(String, i64)>,
    pub recent_publishes: Vec<RecentPublish>,
    pub pins: Vec<PinAttention>,
    /// Topics nobody polled for `UNREAD_DAYS`.
    pub unread: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecentPublish {
    pub topic: String,
    pub version: u64,
    pub by: String,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PinAttention {
    pub topic: String,
    pub selector: String,
    pub version: u64,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Imprint {
    fn can_read(&self, caller: &Caller, topic: &str) -> bool {
        self.state().get(topic).is_some_and(|t| caller.require_read(topic, &t.owner, t.restricted).is_ok())
    }

    pub async fn overview(&self, caller: &Caller) -> Result<Overview> {
        let now = self.now();
        let mut rollouts = Vec::new();
        for (topic, id) in store::rollouts::active_all(self.pool()).await? {
            // The serving state holds the parsed name of every topic.
            let Some(t) = self.state().get(&topic) else { continue };
            if self.can_read(caller, &topic) {
                rollouts.push(self.rollout(caller, &t.name, id).await?);
            }
        }
        let grace = Duration::from_std(self.config().lag_grace).unwrap_or(Duration::seconds(60));
        let mut lagging: Vec<(String, i64)> = store::consumers::lagging_per_topic(self.pool(), now - grace * 5)
            .await?
            .into_iter()
            .filter(|(t, n)| *n > 0 && self.can_read(caller, t))
            .collect();
        lagging.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let recent_publishes = store::audit_log::list(self.pool(), None, None, Some("version.publish"), None, 50)
            .await?
            .into_iter()
            .filter_map(|r| {
                let topic = r.topic?;
                let version = r.details.get("version")?.as_u64()?;
                Some(RecentPublish { topic, version, by: r.actor, at: r.at })
            })
            .filter(|p| self.can_read(caller, &p.topic))
            .take(10)
            .collect();
        let pins =
            store::pins::needing_attention(self.pool(), now - Duration::days(STALE_PIN_DAYS), now + Duration::days(1))
                .await?
                .into_iter()
                .filter(|p| self.can_read(caller, &p.topic))
                .map(|p| PinAttention {
                    topic: p.topic,
                    selector: p.selector_key,
                    version: p.version as u64,
                    reason: p.reason,
                    created_by: p.created_by,
                    created_at: p.created_at,
                    expires_at: p.expires_at,
                })
                .collect();
        let unread =
            self.unused_topics(caller, UNREAD_DAYS, Some(50), None).await?.items.into_iter().map(|t| t.name).collect();
        Ok(Overview { rollouts, lagging, recent_publishes, pins, unread })
    }
}
