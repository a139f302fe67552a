//! The janitor: applies each topic's retention policy (DESIGN "Retention", decided by
//! `imprint_domain::retention_decisions`) and deletes stray objects. Safe with several
//! servers: a topic is purged under its row lock (a busy topic waits for the next pass),
//! the purge only touches rows not purged yet, and stray rows are taken with SKIP LOCKED.
use crate::auth::Caller;
use crate::error::Result;
use crate::handle::Imprint;
use crate::serving::histories;
use crate::store;
use chrono::{DateTime, Utc};
use imprint_domain::{retention_decisions, Kept, RetentionPolicy, TopicHistory, TopicName};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// At most this many versions are purged per pass (the rest wait for the next one).
const PURGE_BATCH: usize = 200;
/// At most this many stray objects are deleted per pass.
const SWEEP_BATCH: i64 = 200;

/// What one janitor pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JanitorPass {
    pub purged: usize,
    pub swept: usize,
}

/// A live version outside a topic's retention policy and what the janitor does with it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RetentionItem {
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub size: u64,
    /// `purge`, or why it is kept: `pinned`, `in_rollout`, `still_resolved`, `in_snapshot`
    /// (named by the snapshot manifest clients start from).
    pub action: String,
}

fn policy_of(max_versions: Option<i32>, max_age_days: Option<i32>) -> RetentionPolicy {
    RetentionPolicy {
        max_versions: max_versions.map(|v| v.max(1) as u64),
        max_age: max_age_days.map(|d| chrono::Duration::days(i64::from(d.max(1)))),
    }
}

/// A topic's history and the versions of its active rollouts, read in `conn`'s transaction.
async fn retention_inputs(conn: &mut sqlx::PgConnection, topic_id: i64) -> Result<(TopicHistory, BTreeSet<u64>)> {
    let snap = store::serving::snapshot(conn, Some(topic_id)).await?;
    let history = histories(&snap).remove(&topic_id).unwrap_or_default();
    let rolling = store::rollouts::active_versions(&mut *conn, topic_id).await?.into_iter().map(|v| v as u64).collect();
    Ok((history, rolling))
}

impl Imprint {
    /// One pass: retention on every topic with a policy, then the stray-object sweep.
    pub async fn janitor_pass(&self) -> Result<JanitorPass> {
        let mut purged = 0;
        for t in store::versions::topics_with_policy(self.pool()).await? {
            if purged >= PURGE_BATCH {
                break;
            }
            let policy = policy_of(t.retention_max_versions, t.retention_max_age_days);
            match self.purge_topic(t.id, &t.name, &policy, PURGE_BATCH - purged).await {
                Ok(n) => purged += n,
                Err(e) => {
                    tracing::warn!(error = %e, topic = t.name, "retention failed for this topic; next pass retries")
                }
            }
        }
        let swept = self.sweep_stray_objects(SWEEP_BATCH).await?;
        Ok(JanitorPass { purged, swept })
    }

    async fn purge_topic(&self, id: i64, name: &str, policy: &RetentionPolicy, budget: usize) -> Result<usize> {
        let mut tx = self.pool().begin().await?;
        // Pins, rollouts, scopes and publishes of this topic hold this lock too: what is
        // decided below stays true until the commit.
        if !store::topics::try_lock(&mut tx, id).await? {
            return Ok(0);
        }
        let now = self.now();
        let (history, rolling) = retention_inputs(&mut tx, id).await?;
        // The version the topic's snapshot manifest names stays until the next snapshot
        // pass names another: clients starting from the manifest fetch its object.
        let in_snapshot = store::snapshots::version_of(&mut *tx, id).await?.map(|v| v as u64);
        let victims: Vec<i64> = retention_decisions(&history, policy, &rolling, now)
            .into_iter()
            .filter(|d| d.kept.is_none() && Some(d.version) != in_snapshot)
            .take(budget)
            .map(|d| d.version as i64)
            .collect();
        if victims.is_empty() {
            return Ok(0);
        }
        let purged = store::versions::purge(&mut tx, id, &victims, now).await?;
        for r in &purged {
            if let (true, Some(key)) = (r.object_owned, &r.object_key) {
                // Deleted by the sweep right after the commit (and retried if the store is
                // down), in the region the object is in ("": home).
                store::objects::mark_in(&mut *tx, r.object_region.as_deref().unwrap_or_default(), key, now, "purge")
                    .await?;
                // Every other region's copy too (pending ones as well: a copy finishing
                // after this finds its version purged and queues its key itself). Home
                // need not hold one (a topic whose regions leave it out).
                for (c, key) in store::copies::of_version(&mut *tx, id, r.version).await? {
                    let region = if c.region == self.config().regions.home() { "" } else { c.region.as_str() };
                    store::objects::mark_in(&mut *tx, region, &key, now, "purge").await?;
                }
            }
            let details = json!({
                "version": r.version,
                "size": r.size,
                "storage": r.storage,
                "object_deleted": r.object_owned && r.object_key.is_some(),
                "reason": "outside the retention policy",
            });
            store::audit(&mut tx, now, "janitor", "version.purge", Some(name), details).await?;
        }
        store::notify(&mut tx, id).await?;
        tx.commit().await?;
        self.refresh_topic(id).await;
        metrics::counter!("imprint_versions_purged_total").increment(purged.len() as u64);
        tracing::info!(topic = name, purged = purged.len(), "retention purged versions");
        Ok(purged.len())
    }

    /// The live versions outside a topic's retention policy, oldest first, and what the
    /// janitor will do with each (the settings page shows it).
    pub async fn retention_preview(&self, caller: &Caller, topic: &TopicName) -> Result<Vec<RetentionItem>> {
        Ok(self.retention_preview_bounded(caller, topic).await?.0)
    }

    /// `retention_preview` from a bounded read: the topic's present only (live versions,
    /// their scopes, active pins; not its whole history), at most
    /// `store::history::MAX_HISTORY_ROWS` versions. `true`: the topic has more live
    /// versions than that, and only the newest were considered.
    pub async fn retention_preview_bounded(
        &self,
        caller: &Caller,
        topic: &TopicName,
    ) -> Result<(Vec<RetentionItem>, bool)> {
        let t = self.readable_topic(caller, topic).await?;
        let full = self.topic(caller, topic).await?;
        let policy = policy_of(
            full.retention.max_versions.map(|v| v.min(i32::MAX as u32) as i32),
            full.retention.max_age_days.map(|v| v.min(i32::MAX as u32) as i32),
        );
        if policy.keeps_everything() {
            return Ok((Vec::new(), false));
        }
        let mut tx = self.pool().begin_with(store::serving::BEGIN_SNAPSHOT).await?;
        let (snap, truncated) = store::history::live(&mut tx, t.id, store::history::MAX_HISTORY_ROWS).await?;
        let history = histories(&snap).remove(&t.id).unwrap_or_default();
        let rolling: BTreeSet<u64> =
            store::rollouts::active_versions(&mut *tx, t.id).await?.into_iter().map(|v| v as u64).collect();
        let in_snapshot = store::snapshots::version_of(&mut *tx, t.id).await?.map(|v| v as u64);
        tx.commit().await?;
        let sizes = store::versions::sizes(self.pool(), t.id).await?;
        let items = retention_decisions(&history, &policy, &rolling, self.now())
            .into_iter()
            .map(|d| RetentionItem {
                version: d.version,
                created_at: history.versions.get(&d.version).map(|v| v.created_at).unwrap_or_default(),
                size: sizes.get(&(d.version as i64)).copied().unwrap_or(0) as u64,
                action: match d.kept {
                    // The purge pass skips it too (see `purge_topic`).
                    None if Some(d.version) == in_snapshot => "in_snapshot",
                    None => "purge",
                    Some(Kept::Pinned) => "pinned",
                    Some(Kept::InRollout) => "in_rollout",
                    Some(Kept::StillResolved) => "still_resolved",
                }
                .into(),
            })
            .collect();
        Ok((items, truncated))
    }
}
