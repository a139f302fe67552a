//! Reading versions back (a page of them, one, a topic's history or bounded present),
//! widening a version's scopes, and resolving what a consumer's labels get.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{Page, Scope, Version};
use crate::release_gate::{self, Gate, Holds};
use crate::store::versions::VersionRow;
use crate::{cursor, store};
use chrono::{DateTime, Utc};
use imprint_domain::{Labels, Resolution, Selector, TopicName, VersionNumber};
use serde_json::json;

impl Imprint {
    pub async fn list_versions(
        &self,
        caller: &Caller,
        topic: &TopicName,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Version>> {
        self.require_direct_reader(caller)?;
        let limit = cursor::limit(limit)?;
        let before = cursor.map(cursor::decode).transpose()?;
        // Coalesced (crate::coalesce): identical concurrent lists share the three queries.
        let key = format!("{}\u{0}{}\u{0}{limit}\u{0}{before:?}", topic.as_str(), self.change_seq(topic.as_str()));
        self.coalesced(
            |r| &r.versions,
            key,
            caller,
            || async {
                self.inner.coalesced.queried(1);
                let t = {
                    let mut conn = self.pool().acquire().await?;
                    store::topics::require(&mut conn, topic, false).await?
                };
                let guard = |value| crate::coalesce::Guarded {
                    name: t.name.clone(),
                    owner: t.owner.clone(),
                    restricted: t.restricted,
                    value,
                };
                self.inner.coalesced.queried(2);
                let rows = store::versions::list(self.pool(), t.id, before, limit + 1).await?;
                let more = rows.len() as i64 > limit;
                let rows: Vec<VersionRow> = rows.into_iter().take(limit as usize).collect();
                let next = if more { rows.last().map(|r| cursor::encode(r.version)) } else { None };
                let numbers: Vec<i64> = rows.iter().map(|r| r.version).collect();
                let mut scopes = self.scopes_of(t.id, &numbers).await?;
                let mut checks = self.version_checks(t.id, &numbers).await?;
                let items = rows
                    .into_iter()
                    .map(|r| {
                        let s = scopes.remove(&r.version).unwrap_or_default();
                        let c = checks.remove(&r.version);
                        with_checks(version_from_row(self, &t.name, r, s), c)
                    })
                    .collect();
                Ok(guard(Page { items, next }))
            },
        )
        .await
    }

    pub async fn version(&self, caller: &Caller, topic: &TopicName, version: VersionNumber) -> Result<Version> {
        let version = version.get();
        self.require_direct_reader(caller)?;
        let t = self.readable_topic(caller, topic).await?;
        let row = store::versions::get(self.pool(), t.id, version as i64)
            .await?
            .ok_or_else(|| Error::VersionNotFound { topic: t.name.clone(), version })?;
        let mut scopes = self.scopes_of(t.id, &[row.version]).await?;
        let mut checks = self.version_checks(t.id, &[row.version]).await?;
        let v = version_from_row(self, &t.name, row, scopes.remove(&(version as i64)).unwrap_or_default());
        Ok(with_checks(v, checks.remove(&(version as i64))))
    }

    async fn scopes_of(&self, topic_id: i64, versions: &[i64]) -> Result<std::collections::HashMap<i64, Vec<Scope>>> {
        let mut out: std::collections::HashMap<i64, Vec<Scope>> = std::collections::HashMap::new();
        for r in store::versions::scopes_of(self.pool(), topic_id, versions).await? {
            let selector = Selector::parse(&r.selector_key)
                .map_err(|e| Error::Internal(format!("stored selector {:?}: {e}", r.selector_key)))?;
            out.entry(r.version).or_default().push(Scope { selector, added_at: r.added_at, added_by: r.added_by });
        }
        Ok(out)
    }

    /// Adds a scope to a version. Returns the scope and whether it was new (adding a
    /// scope the version already has changes nothing).
    #[tracing::instrument(skip(self))]
    pub async fn add_scope(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
        selector: Selector,
    ) -> Result<(Scope, bool)> {
        self.add_scope_gated(caller, topic, version, selector, Gate::default()).await
    }

    /// `add_scope` through the release gate (a freeze or a review rule holds it), applying
    /// the change request `gate.request` or breaking glass.
    pub(crate) async fn add_scope_gated(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
        selector: Selector,
        gate: Gate,
    ) -> Result<(Scope, bool)> {
        let version = version.get();
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        store::versions::require_live(&mut tx, &t, version).await?;
        let now = self.now();
        release_gate::check(&mut tx, t.id, &t.name, &t.owner, caller, &gate, Holds::FreezeAndReview, now).await?;
        let who = caller.who();
        let added =
            store::versions::insert_scopes(&mut tx, t.id, version as i64, std::slice::from_ref(&selector), now, &who)
                .await?;
        let marks = json!({"selector": selector.to_string(), "added": added > 0});
        if added == 0 {
            if gate.request.is_some() {
                // The request is applied (the version has the scope): it must not run again.
                release_gate::finish(&mut tx, &t.name, &gate, "scope", Some(version as i64), &who, now, marks).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            let (added_at, added_by) = store::versions::scope(self.pool(), t.id, version as i64, &selector.to_string())
                .await?
                .ok_or_else(|| Error::Conflict("the scope was added and is gone again; try again".into()))?;
            return Ok((Scope { selector, added_at, added_by }, false));
        }
        let mut details = json!({"version": version, "selector": selector.to_string()});
        if let (Some(map), Some(r)) = (details.as_object_mut(), &gate.break_glass) {
            map.insert("break_glass".into(), json!(r));
        }
        if let (Some(map), Some(r)) = (details.as_object_mut(), gate.request) {
            map.insert("change_request".into(), json!(r));
        }
        store::audit(&mut tx, now, &who, "scope.add", Some(&t.name), details).await?;
        release_gate::finish(&mut tx, &t.name, &gate, "scope", Some(version as i64), &who, now, marks).await?;
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_scopes_added_total").increment(1);
        Ok((Scope { selector, added_at: now, added_by: who }, true))
    }

    /// A topic's whole resolution history (for the console's scope matrix), read from
    /// Postgres; the caller must be allowed to read the topic.
    pub async fn topic_history(&self, caller: &Caller, topic: &TopicName) -> Result<imprint_domain::TopicHistory> {
        let t = self.readable_topic(caller, topic).await?;
        let mut conn = self.pool().acquire().await?;
        self.history_of(&mut conn, t.id).await
    }

    /// A topic's present (live versions, their scopes, active pins), at most
    /// `MAX_HISTORY_ROWS` versions and pins of it — for the console's scope matrix, which
    /// must not read the whole history. `true`: rows were left out.
    pub async fn topic_present(
        &self,
        caller: &Caller,
        topic: &TopicName,
    ) -> Result<(imprint_domain::TopicHistory, bool)> {
        let t = self.readable_topic(caller, topic).await?;
        let mut tx = self.pool().begin_with(store::serving::BEGIN_SNAPSHOT).await?;
        let (snap, truncated) = store::history::live(&mut tx, t.id, store::history::MAX_HISTORY_ROWS).await?;
        tx.commit().await?;
        Ok((crate::serving::histories(&snap).remove(&t.id).unwrap_or_default(), truncated))
    }

    /// `resolve`, saying whether a time-travel answer was computed from a bounded part of
    /// the history (`true`: the topic had more than `MAX_HISTORY_ROWS` versions or pins
    /// in effect then, and only the newest were considered).
    pub async fn resolve_bounded(
        &self,
        caller: &Caller,
        topic: &TopicName,
        labels: &Labels,
        at: Option<DateTime<Utc>>,
    ) -> Result<(Option<Resolution>, bool)> {
        let name = topic;
        let t = self.state().get(name.as_str()).ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        caller.require_read(name.as_str(), &t.owner, t.restricted)?;
        self.require_poller(caller, labels.pairs())?;
        Ok(match at {
            None => (t.index.resolve(labels), false),
            Some(at) => {
                // Coalesced (crate::coalesce); the read right was checked above, on the
                // serving state, and is checked again on the shared answer.
                let key = format!("{}\u{0}{}\u{0}{labels:?}\u{0}{at:?}", t.name, t.change_seq);
                self.coalesced(
                    |r| &r.resolve_at,
                    key,
                    caller,
                    || async {
                        self.inner.coalesced.queried(1);
                        let mut tx = self.pool().begin_with(store::serving::BEGIN_SNAPSHOT).await?;
                        let (snap, truncated) =
                            store::history::at(&mut tx, t.id, at, store::history::MAX_HISTORY_ROWS).await?;
                        tx.commit().await?;
                        let h = crate::serving::histories(&snap).remove(&t.id).unwrap_or_default();
                        Ok(crate::coalesce::Guarded {
                            name: t.name.to_string(),
                            owner: t.owner.clone(),
                            restricted: t.restricted,
                            value: (h.resolve_at(labels, at), truncated),
                        })
                    },
                )
                .await?
            }
        })
    }

    /// What a consumer with `labels` sees now (from memory), or saw at `at` (from a
    /// bounded part of the topic's history in Postgres, `resolve_bounded`).
    pub async fn resolve(
        &self,
        caller: &Caller,
        topic: &TopicName,
        labels: &Labels,
        at: Option<DateTime<Utc>>,
    ) -> Result<Option<Resolution>> {
        Ok(self.resolve_bounded(caller, topic, labels, at).await?.0)
    }
}

/// A version with its check results, and (when it was rejected and kept) why.
fn with_checks(mut v: Version, checks: Option<crate::model::VersionChecks>) -> Version {
    if let Some(r) = &mut v.rejected {
        r.reasons = checks.as_ref().map(|c| imprint_domain::checks::rejection_reasons(&c.results)).unwrap_or_default();
    }
    v.checks = checks;
    v
}

fn version_from_row(imprint: &Imprint, topic: &str, r: VersionRow, scopes: Vec<Scope>) -> Version {
    // The URL in the store of the object's own region (home unless its topic leaves it out).
    let objects = imprint.region_objects(r.object_region.as_deref().unwrap_or_default()).unwrap_or(imprint.objects());
    Version {
        topic: topic.to_owned(),
        version: r.version as u64,
        created_at: r.created_at,
        created_by: r.created_by,
        message: r.message,
        metadata: r.metadata.0,
        content_type: r.content_type,
        size: r.size as u64,
        sha256: r.sha256,
        storage: r.storage,
        object_url: r.object_key.as_deref().map(|k| objects.url_of(k)),
        object_registered: r.object_key.is_some() && !r.object_owned,
        sealed: r.sealed,
        purged: r.purged_at.is_some(),
        purged_at: r.purged_at,
        scopes,
        checks: None,
        rejected: r.rejected.then(|| crate::model::Rejection { reasons: Vec::new() }),
    }
}
