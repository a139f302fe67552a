//! Publishing immutable versions, reading them back, widening their scopes, resolving.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{Page, PlanChoice, Published, RolloutRequest, Scope, Version};
use crate::rollouts::supersede_active;
use crate::store::versions::VersionRow;
use crate::topics::check_content_type;
use crate::{cursor, store};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use imprint_domain::{Labels, Resolution, Selector};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub struct PublishInput {
    pub payload: Payload,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// `None`: the default, released to everyone (`*`). `Some(vec![])`: released to nobody.
    pub scopes: Option<Vec<Selector>>,
    pub message: String,
    pub rollout: RolloutRequest,
}

/// The payload as the publisher sent it; the kind decides the default content type.
pub enum Payload {
    Text(String),
    Binary(Bytes),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Text(s) => s.len(),
            Payload::Binary(b) => b.len(),
        }
    }
}

fn check_metadata(m: &BTreeMap<String, String>) -> Result<()> {
    if m.len() > 64 {
        return Err(Error::invalid("metadata has at most 64 entries"));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 128 || k.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "metadata key {k:?} must be 1-128 characters without control characters"
            )));
        }
        if v.len() > 4096 {
            return Err(Error::invalid(format!("metadata value of {k:?} has more than 4096 bytes")));
        }
    }
    Ok(())
}

impl Imprint {
    #[tracing::instrument(skip(self, input), fields(size = input.payload.len()))]
    pub async fn publish(&self, caller: &Caller, topic: &str, input: PublishInput) -> Result<Published> {
        let started = std::time::Instant::now();
        if matches!(caller, Caller::Anonymous) {
            return Err(Error::Unauthorized("publishing needs a bearer token".into()));
        }
        check_metadata(&input.metadata)?;
        if input.message.chars().count() > 4096 {
            return Err(Error::invalid("message has at most 4096 characters"));
        }
        if let Some(ct) = &input.content_type {
            check_content_type(ct)?;
        }
        let mut tx = self.pool().begin().await?;
        // The row lock taken here serialises publishers of this topic until commit, and
        // the settings read with it (owner, limits, schema) cannot change before then.
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let plan = match input.rollout {
            RolloutRequest::None => None,
            RolloutRequest::Plan(p) => Some(p),
            RolloutRequest::TopicDefault => t.default_plan.clone().map(PlanChoice::Named),
        };
        // With a rollout, the plan decides who gets the version; otherwise everyone does.
        let scopes: Vec<Selector> = match input.scopes {
            None if plan.is_some() => vec![],
            None => vec![Selector::all()],
            Some(s) if s.len() > 64 => return Err(Error::invalid("at most 64 scopes per publish")),
            Some(s) => s.into_iter().collect::<BTreeSet<_>>().into_iter().collect(),
        };
        let size = input.payload.len() as u64;
        let inline_limit = t.inline_limit as u64;
        if size > inline_limit {
            return Err(Error::PayloadTooLarge { size, limit: inline_limit });
        }
        if let Some(schema) = &t.json_schema {
            validate_against(schema, &input.payload)?;
        }
        if let Some(ns) = &t.apollo_namespace {
            // Apollo clients read a properties namespace as flat key/values.
            let bytes: &[u8] = match &input.payload {
                Payload::Text(s) => s.as_bytes(),
                Payload::Binary(b) => b,
            };
            imprint_domain::apollo::configurations(ns, bytes)
                .map_err(|e| Error::SchemaViolation(format!("{} is bound to Apollo namespace {ns:?}: {e}", t.name)))?;
        }
        let content_type = input.content_type.or(t.content_type.clone()).unwrap_or_else(|| match &input.payload {
            Payload::Text(s) if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() => "application/json".into(),
            Payload::Text(_) => "text/plain; charset=utf-8".into(),
            Payload::Binary(_) => "application/octet-stream".into(),
        });
        let bytes: Bytes = match input.payload {
            Payload::Text(s) => Bytes::from(s),
            Payload::Binary(b) => b,
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));

        // Taken after the lock: a version is never dated before an older one committed.
        let created_at = self.now();
        let version = store::topics::next_version(&mut tx, t.id, created_at).await?;
        let who = caller.who();
        store::versions::insert_inline(
            &mut tx,
            store::versions::NewVersion {
                topic_id: t.id,
                version,
                created_at,
                created_by: &who,
                message: &input.message,
                metadata: &input.metadata,
                content_type: &content_type,
                sha256: &sha256,
                inline_data: bytes.as_ref(),
            },
        )
        .await?;
        store::versions::insert_scopes(&mut tx, t.id, version, &scopes, created_at, &who).await?;
        // A newer version supersedes any rollout of an older one.
        supersede_active(&mut tx, t.id, &t.name, version as u64, created_at, &who).await?;
        let rollout_id = match plan {
            Some(p) => {
                Some(crate::rollouts::start_tx(&mut tx, t.id, &t.name, version as u64, p, &who, created_at).await?)
            }
            None => None,
        };
        let scope_keys: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        let details = json!({
            "version": version,
            "size": size,
            "sha256": sha256,
            "content_type": content_type,
            "scopes": scope_keys,
            "message": input.message,
            "rollout": rollout_id,
        });
        store::audit(&mut tx, created_at, &who, "version.publish", Some(&t.name), details).await?;
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        let rollout = match rollout_id {
            Some(id) => Some(self.rollout(caller, &t.name, id).await?),
            None => None,
        };
        let mut scopes = scopes;
        if let Some(r) = &rollout {
            scopes.extend(r.view.stages.iter().filter(|s| s.reached_at.is_some()).map(|s| s.selector.clone()));
            scopes.sort();
            scopes.dedup();
        }
        metrics::counter!("imprint_publishes_total").increment(1);
        metrics::counter!("imprint_published_bytes_total").increment(size);
        metrics::histogram!("imprint_publish_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(topic = %t.name, version, size, "published");
        Ok(Published {
            topic: t.name,
            version: version as u64,
            created_at,
            size,
            sha256,
            content_type,
            scopes: scopes
                .into_iter()
                .map(|selector| Scope { selector, added_at: created_at, added_by: who.clone() })
                .collect(),
            storage: "inline".into(),
            rollout,
        })
    }

    pub async fn list_versions(
        &self,
        caller: &Caller,
        topic: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Version>> {
        let limit = cursor::limit(limit)?;
        let before = cursor.map(cursor::decode).transpose()?;
        let t = self.readable_topic(caller, topic).await?;
        let rows = store::versions::list(self.pool(), t.id, before, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<VersionRow> = rows.into_iter().take(limit as usize).collect();
        let next = if more { rows.last().map(|r| cursor::encode(r.version)) } else { None };
        let numbers: Vec<i64> = rows.iter().map(|r| r.version).collect();
        let mut scopes = self.scopes_of(t.id, &numbers).await?;
        let items = rows
            .into_iter()
            .map(|r| {
                let s = scopes.remove(&r.version).unwrap_or_default();
                version_from_row(&t.name, r, s)
            })
            .collect();
        Ok(Page { items, next })
    }

    pub async fn version(&self, caller: &Caller, topic: &str, version: u64) -> Result<Version> {
        let t = self.readable_topic(caller, topic).await?;
        let row = store::versions::get(self.pool(), t.id, version as i64)
            .await?
            .ok_or_else(|| Error::VersionNotFound { topic: t.name.clone(), version })?;
        let mut scopes = self.scopes_of(t.id, &[row.version]).await?;
        Ok(version_from_row(&t.name, row, scopes.remove(&(version as i64)).unwrap_or_default()))
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

    /// The payload of a version (with its content type and checksum).
    pub async fn version_data(&self, caller: &Caller, topic: &str, version: u64) -> Result<(Bytes, String, String)> {
        let t = self.readable_topic(caller, topic).await?;
        match store::versions::data(self.pool(), t.id, version as i64).await? {
            None => Err(Error::VersionNotFound { topic: t.name, version }),
            Some(d) if d.purged_at.is_some() => Err(Error::VersionPurged { topic: t.name, version }),
            Some(store::versions::DataRow { inline_data: Some(data), content_type, sha256, .. }) => {
                Ok((Bytes::from(data), content_type, sha256))
            }
            Some(_) => Err(Error::Internal(format!("version {version} of {} has no stored payload", t.name))),
        }
    }

    /// Adds a scope to a version. Returns the scope and whether it was new (adding a
    /// scope the version already has changes nothing).
    #[tracing::instrument(skip(self))]
    pub async fn add_scope(
        &self,
        caller: &Caller,
        topic: &str,
        version: u64,
        selector: Selector,
    ) -> Result<(Scope, bool)> {
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, false).await?;
        caller.require_write(&t.name, &t.owner)?;
        store::versions::require_live(&mut tx, &t, version).await?;
        let now = self.now();
        let who = caller.who();
        let added =
            store::versions::insert_scopes(&mut tx, t.id, version as i64, std::slice::from_ref(&selector), now, &who)
                .await?;
        if added == 0 {
            tx.rollback().await?;
            let (added_at, added_by) = store::versions::scope(self.pool(), t.id, version as i64, &selector.to_string())
                .await?
                .ok_or_else(|| Error::Conflict("the scope was added and is gone again; try again".into()))?;
            return Ok((Scope { selector, added_at, added_by }, false));
        }
        let details = json!({"version": version, "selector": selector.to_string()});
        store::audit(&mut tx, now, &who, "scope.add", Some(&t.name), details).await?;
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_scopes_added_total").increment(1);
        Ok((Scope { selector, added_at: now, added_by: who }, true))
    }

    /// What a consumer with `labels` sees now, or saw at `at` — from memory.
    pub fn resolve(
        &self,
        caller: &Caller,
        topic: &str,
        labels: &Labels,
        at: Option<DateTime<Utc>>,
    ) -> Result<Option<Resolution>> {
        let name = imprint_domain::TopicName::parse(topic)?;
        let t = self.state().get(name.as_str()).ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        caller.require_read(name.as_str(), &t.owner, t.restricted)?;
        Ok(match at {
            None => t.index.resolve(labels),
            Some(at) => t.history.resolve_at(labels, at),
        })
    }
}

fn validate_against(schema: &serde_json::Value, payload: &Payload) -> Result<()> {
    let parsed: serde_json::Value = match payload {
        Payload::Text(s) => serde_json::from_str(s),
        Payload::Binary(b) => serde_json::from_slice(b),
    }
    .map_err(|e| {
        Error::SchemaViolation(format!(
            "payload does not satisfy the topic's JSON Schema: the topic has a JSON Schema and the payload is not JSON: {e}"
        ))
    })?;
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| Error::Internal(format!("stored schema does not compile: {e}")))?;
    let errors: Vec<String> =
        validator.iter_errors(&parsed).take(5).map(|e| format!("{} (at {})", e, e.instance_path)).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaViolation(format!("payload does not satisfy the topic's JSON Schema: {}", errors.join("; "))))
    }
}

fn version_from_row(topic: &str, r: VersionRow, scopes: Vec<Scope>) -> Version {
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
        purged: r.purged_at.is_some(),
        purged_at: r.purged_at,
        scopes,
    }
}
