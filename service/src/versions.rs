//! Publishing immutable versions, reading them back, widening their scopes, resolving.
use crate::audit_log::audit;
use crate::error::{Error, Result};
use crate::model::{Page, Published, Scope, Version};
use crate::rollouts::{supersede_active, PlanChoice};
use crate::topics::check_content_type;
use crate::topics::require_live_version;
use crate::{cursor, notify, Caller, Imprint};
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

/// Whether a publish starts a rollout.
#[derive(Clone, Debug, Default)]
pub enum RolloutRequest {
    /// The topic's default plan, if it has one.
    #[default]
    TopicDefault,
    /// No rollout, whatever the topic's default.
    None,
    Plan(PlanChoice),
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

type VersionRow = (
    i64,
    DateTime<Utc>,
    String,
    String,
    sqlx::types::Json<BTreeMap<String, String>>,
    String,
    i64,
    String,
    String,
    Option<DateTime<Utc>>,
);
const VERSION_COLUMNS: &str =
    "version, created_at, created_by, message, metadata, content_type, size, sha256, storage, purged_at";

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
        let t = self.topic_ref(&mut *tx, topic).await?;
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
        if size > t.inline_limit {
            return Err(Error::PayloadTooLarge { size, limit: t.inline_limit });
        }
        if let Some(schema) = &t.json_schema {
            validate_against(schema, &input.payload)?;
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

        // The row lock taken here serialises publishers of this topic until commit; a
        // rollback undoes the increment, so version numbers have no gaps.
        let (version, created_at): (i64, DateTime<Utc>) = sqlx::query_as(
            "UPDATE topics SET latest_version = latest_version + 1, last_published_at = now(), updated_at = now()
             WHERE id = $1 RETURNING latest_version, now()",
        )
        .bind(t.id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO versions (topic_id, version, created_at, created_by, message, metadata, content_type, size, sha256, storage, inline_data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'inline', $10)",
        )
        .bind(t.id)
        .bind(version)
        .bind(created_at)
        .bind(caller.who())
        .bind(&input.message)
        .bind(sqlx::types::Json(&input.metadata))
        .bind(&content_type)
        .bind(size as i64)
        .bind(&sha256)
        .bind(bytes.as_ref())
        .execute(&mut *tx)
        .await?;
        let who = caller.who();
        insert_scopes(&mut tx, t.id, version, &scopes, created_at, &who).await?;
        // A newer version supersedes any rollout of an older one.
        supersede_active(&mut tx, t.id, &t.name, version as u64, created_at, &who).await?;
        let rollout_id = match plan {
            Some(p) => Some(self.start_rollout_tx(&mut tx, t.id, &t.name, version as u64, p, &who, created_at).await?),
            None => None,
        };
        let scope_keys: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        audit(
            &mut tx,
            &who,
            "version.publish",
            Some(&t.name),
            json!({
                "version": version,
                "size": size,
                "sha256": sha256,
                "content_type": content_type,
                "scopes": scope_keys,
                "message": input.message,
                "rollout": rollout_id,
            }),
        )
        .await?;
        notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        let rollout = match rollout_id {
            Some(id) => Some(self.rollout(&t.name, id).await?),
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

    pub async fn list_versions(&self, topic: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Version>> {
        let limit = cursor::limit(limit)?;
        let before = cursor.map(cursor::decode).transpose()?;
        let t = self.topic_ref(self.pool(), topic).await?;
        let rows: Vec<VersionRow> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE topic_id = $1 AND ($2::bigint IS NULL OR version < $2)
             ORDER BY version DESC LIMIT $3"
        ))
        .bind(t.id)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(self.pool())
        .await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<VersionRow> = rows.into_iter().take(limit as usize).collect();
        let next = if more { rows.last().map(|r| cursor::encode(r.0)) } else { None };
        let numbers: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let mut scopes = self.scopes_of(t.id, &numbers).await?;
        let items = rows
            .into_iter()
            .map(|r| {
                let s = scopes.remove(&r.0).unwrap_or_default();
                version_from_row(&t.name, r, s)
            })
            .collect();
        Ok(Page { items, next })
    }

    pub async fn version(&self, topic: &str, version: u64) -> Result<Version> {
        let t = self.topic_ref(self.pool(), topic).await?;
        let row: Option<VersionRow> =
            sqlx::query_as(&format!("SELECT {VERSION_COLUMNS} FROM versions WHERE topic_id = $1 AND version = $2"))
                .bind(t.id)
                .bind(version as i64)
                .fetch_optional(self.pool())
                .await?;
        let row = row.ok_or_else(|| Error::VersionNotFound { topic: t.name.clone(), version })?;
        let mut scopes = self.scopes_of(t.id, &[row.0]).await?;
        Ok(version_from_row(&t.name, row, scopes.remove(&(version as i64)).unwrap_or_default()))
    }

    async fn scopes_of(&self, topic_id: i64, versions: &[i64]) -> Result<std::collections::HashMap<i64, Vec<Scope>>> {
        let rows: Vec<(i64, String, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT version, selector_key, added_at, added_by FROM scopes WHERE topic_id = $1 AND version = ANY($2)
             ORDER BY added_at, selector_key",
        )
        .bind(topic_id)
        .bind(versions)
        .fetch_all(self.pool())
        .await?;
        let mut out: std::collections::HashMap<i64, Vec<Scope>> = std::collections::HashMap::new();
        for (v, key, added_at, added_by) in rows {
            let selector =
                Selector::parse(&key).map_err(|e| Error::Internal(format!("stored selector {key:?}: {e}")))?;
            out.entry(v).or_default().push(Scope { selector, added_at, added_by });
        }
        Ok(out)
    }

    /// The payload of a version (with its content type and checksum).
    pub async fn version_data(&self, topic: &str, version: u64) -> Result<(Bytes, String, String)> {
        let t = self.topic_ref(self.pool(), topic).await?;
        let row: Option<(Option<Vec<u8>>, String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT inline_data, content_type, sha256, purged_at FROM versions WHERE topic_id = $1 AND version = $2",
        )
        .bind(t.id)
        .bind(version as i64)
        .fetch_optional(self.pool())
        .await?;
        match row {
            None => Err(Error::VersionNotFound { topic: t.name, version }),
            Some((_, _, _, Some(_))) => Err(Error::VersionPurged { topic: t.name, version }),
            Some((Some(data), ct, sha, None)) => Ok((Bytes::from(data), ct, sha)),
            Some((None, ..)) => Err(Error::Internal(format!("version {version} of {} has no stored payload", t.name))),
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
        let t = self.topic_ref(&mut *tx, topic).await?;
        caller.require_write(&t.name, &t.owner)?;
        require_live_version(&mut tx, &t, version).await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
        let who = caller.who();
        let added = insert_scopes(&mut tx, t.id, version as i64, std::slice::from_ref(&selector), now, &who).await?;
        if added == 0 {
            tx.rollback().await?;
            let existing: (DateTime<Utc>, String) = sqlx::query_as(
                "SELECT added_at, added_by FROM scopes WHERE topic_id = $1 AND version = $2 AND selector_key = $3",
            )
            .bind(t.id)
            .bind(version as i64)
            .bind(selector.to_string())
            .fetch_one(self.pool())
            .await?;
            return Ok((Scope { selector, added_at: existing.0, added_by: existing.1 }, false));
        }
        audit(&mut tx, &who, "scope.add", Some(&t.name), json!({"version": version, "selector": selector.to_string()}))
            .await?;
        notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.refresh_topic(t.id).await;
        metrics::counter!("imprint_scopes_added_total").increment(1);
        Ok((Scope { selector, added_at: now, added_by: who }, true))
    }

    /// What a consumer with `labels` sees now, or saw at `at` — from memory.
    pub fn resolve(&self, topic: &str, labels: &Labels, at: Option<DateTime<Utc>>) -> Result<Option<Resolution>> {
        let name = imprint_domain::TopicName::parse(topic)?;
        let t = self.state().get(name.as_str()).ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        Ok(match at {
            None => t.index.resolve(labels),
            Some(at) => t.history.resolve_at(labels, at),
        })
    }
}

pub(crate) async fn insert_scopes(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    topic_id: i64,
    version: i64,
    scopes: &[Selector],
    at: DateTime<Utc>,
    who: &str,
) -> Result<u64> {
    if scopes.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = scopes.iter().map(ToString::to_string).collect();
    let json: Vec<serde_json::Value> = scopes.iter().map(Selector::to_json).collect();
    let done = sqlx::query(
        "INSERT INTO scopes (topic_id, version, selector, selector_key, added_at, added_by)
         SELECT $1, $2, s.selector, s.key, $5, $6 FROM UNNEST($3::jsonb[], $4::text[]) AS s(selector, key)
         ON CONFLICT DO NOTHING",
    )
    .bind(topic_id)
    .bind(version)
    .bind(&json)
    .bind(&keys)
    .bind(at)
    .bind(who)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

fn validate_against(schema: &serde_json::Value, payload: &Payload) -> Result<()> {
    let parsed: serde_json::Value = match payload {
        Payload::Text(s) => serde_json::from_str(s),
        Payload::Binary(b) => serde_json::from_slice(b),
    }
    .map_err(|e| Error::SchemaViolation(format!("the topic has a JSON Schema and the payload is not JSON: {e}")))?;
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| Error::Internal(format!("stored schema does not compile: {e}")))?;
    let errors: Vec<String> =
        validator.iter_errors(&parsed).take(5).map(|e| format!("{} (at {})", e, e.instance_path)).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaViolation(errors.join("; ")))
    }
}

fn version_from_row(topic: &str, r: VersionRow, scopes: Vec<Scope>) -> Version {
    Version {
        topic: topic.to_owned(),
        version: r.0 as u64,
        created_at: r.1,
        created_by: r.2,
        message: r.3,
        metadata: r.4 .0,
        content_type: r.5,
        size: r.6 as u64,
        sha256: r.7,
        storage: r.8,
        purged: r.9.is_some(),
        purged_at: r.9,
        scopes,
    }
}
