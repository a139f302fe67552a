//! Topic administration: create, read, list, change settings.
use crate::audit_log::{audit, changes};
use crate::error::{Error, Result};
use crate::model::{Page, Retention, Topic};
use crate::{cursor, notify, Caller, Imprint};
use chrono::{DateTime, Utc};
use imprint_domain::{Plan, TopicName};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Inline payloads can be at most this large, whatever a topic asks for.
pub const MAX_INLINE_LIMIT: u64 = 8 * 1024 * 1024;
pub const DEFAULT_INLINE_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTopic {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub retention: Option<Retention>,
    #[serde(default)]
    pub inline_limit_bytes: Option<u64>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<serde_json::Value>,
    /// Named rollout plans: `{"canary-first": {"stages": [...]}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub plans: Option<BTreeMap<String, Plan>>,
    /// The plan a publish uses when it names none.
    #[serde(default)]
    pub default_plan: Option<String>,
}

/// Settings to change; absent fields stay as they are, `null` clears the optional ones.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicPatch {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub retention: Option<Retention>,
    #[serde(default)]
    pub inline_limit_bytes: Option<u64>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub content_type: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub json_schema: Option<Option<serde_json::Value>>,
    /// Replaces the named plans.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub plans: Option<BTreeMap<String, Plan>>,
    #[serde(default, deserialize_with = "double_option")]
    pub default_plan: Option<Option<String>>,
}

fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn check_text(field: &str, s: &str, max: usize) -> Result<()> {
    if s.chars().count() > max {
        return Err(Error::invalid(format!("{field} has at most {max} characters")));
    }
    Ok(())
}

fn check_owner(s: &str) -> Result<()> {
    if s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(Error::invalid("owner is a team name: at most 64 letters, digits, '.', '_' or '-'"));
    }
    Ok(())
}

fn check_retention(r: &Retention) -> Result<()> {
    if r.max_versions == Some(0) || r.max_age_days == Some(0) {
        return Err(Error::invalid("retention.max_versions and retention.max_age_days must be at least 1"));
    }
    Ok(())
}

fn check_inline_limit(l: u64) -> Result<()> {
    if l == 0 || l > MAX_INLINE_LIMIT {
        return Err(Error::invalid(format!("inline_limit_bytes must be between 1 and {MAX_INLINE_LIMIT}")));
    }
    Ok(())
}

fn check_plans(plans: &BTreeMap<String, Plan>, default: Option<&str>) -> Result<()> {
    if plans.len() > 32 {
        return Err(Error::invalid("a topic has at most 32 named plans"));
    }
    for name in plans.keys() {
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::invalid(format!("plan name {name:?}: 1-64 letters, digits, '.', '_' or '-'")));
        }
    }
    if let Some(d) = default {
        if !plans.contains_key(d) {
            return Err(Error::invalid(format!("default_plan {d:?} is not one of the topic's plans")));
        }
    }
    Ok(())
}

pub(crate) fn check_content_type(ct: &str) -> Result<()> {
    let ok = ct.len() <= 255 && ct.contains('/') && ct.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if !ok {
        return Err(Error::invalid(format!("{ct:?} is not a media type such as application/json")));
    }
    Ok(())
}

pub(crate) fn check_schema(schema: &serde_json::Value) -> Result<()> {
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("json_schema is not a valid JSON Schema: {e}")))
}

#[derive(sqlx::FromRow)]
struct TopicRow {
    id: i64,
    name: String,
    description: String,
    owner: String,
    retention_max_versions: Option<i32>,
    retention_max_age_days: Option<i32>,
    inline_limit_bytes: i64,
    content_type: Option<String>,
    json_schema: Option<serde_json::Value>,
    latest_version: i64,
    last_published_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    created_by: String,
    active_pins: i64,
    rollout_state: Option<String>,
    plans: sqlx::types::Json<BTreeMap<String, Plan>>,
    default_plan: Option<String>,
    consumers: i64,
    last_polled_at: Option<DateTime<Utc>>,
}

const TOPIC_COLUMNS: &str = "t.id, t.name, t.description, t.owner, t.retention_max_versions, t.retention_max_age_days,
    t.inline_limit_bytes, t.content_type, t.json_schema, t.latest_version, t.last_published_at, t.created_at, t.created_by,
    (SELECT count(*) FROM pins p WHERE p.topic_id = t.id AND p.removed_at IS NULL) AS active_pins,
    (SELECT r.state FROM rollouts r WHERE r.topic_id = t.id ORDER BY r.id DESC LIMIT 1) AS rollout_state,
    t.plans, t.default_plan,
    (SELECT count(*) FROM consumers c WHERE c.topic_id = t.id) AS consumers, t.last_polled_at";

fn topic_from_row(r: TopicRow) -> Topic {
    Topic {
        name: r.name,
        description: r.description,
        owner: r.owner,
        retention: Retention {
            max_versions: r.retention_max_versions.map(|v| v as u32),
            max_age_days: r.retention_max_age_days.map(|v| v as u32),
        },
        inline_limit_bytes: r.inline_limit_bytes as u64,
        content_type: r.content_type,
        json_schema: r.json_schema,
        latest_version: r.latest_version as u64,
        last_published_at: r.last_published_at,
        created_at: r.created_at,
        created_by: r.created_by,
        active_pins: r.active_pins as u64,
        rollout_state: r.rollout_state,
        plans: r.plans.0,
        default_plan: r.default_plan,
        consumers: r.consumers as u64,
        last_polled_at: r.last_polled_at,
    }
}

/// A topic's settings as one JSON object, as the audit log records them; locks the row.
async fn settings_of(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: i64) -> Result<serde_json::Value> {
    Ok(sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'description', description, 'owner', owner,
            'retention', jsonb_build_object('max_versions', retention_max_versions, 'max_age_days', retention_max_age_days),
            'inline_limit_bytes', inline_limit_bytes, 'content_type', content_type, 'json_schema', json_schema,
            'plans', plans, 'default_plan', default_plan)
         FROM topics WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?)
}

/// The row of a topic needed by write operations.
pub(crate) struct TopicRef {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub inline_limit: u64,
    pub content_type: Option<String>,
    pub json_schema: Option<serde_json::Value>,
    pub default_plan: Option<String>,
}

impl Imprint {
    pub(crate) async fn topic_ref<'e, E: sqlx::PgExecutor<'e>>(&self, ex: E, name: &str) -> Result<TopicRef> {
        let name = TopicName::parse(name)?;
        let row: Option<(i64, String, String, i64, Option<String>, Option<serde_json::Value>, Option<String>)> = sqlx::query_as(
            "SELECT id, name, owner, inline_limit_bytes, content_type, json_schema, default_plan FROM topics WHERE name = $1",
        )
        .bind(name.as_str())
        .fetch_optional(ex)
        .await?;
        let r = row.ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        Ok(TopicRef {
            id: r.0,
            name: r.1,
            owner: r.2,
            inline_limit: r.3 as u64,
            content_type: r.4,
            json_schema: r.5,
            default_plan: r.6,
        })
    }

    #[tracing::instrument(skip(self, input), fields(topic = %input.name))]
    pub async fn create_topic(&self, caller: &Caller, input: NewTopic) -> Result<Topic> {
        let name = TopicName::parse(&input.name)?;
        let owner = input.owner.clone().or_else(|| caller.default_owner().map(str::to_owned)).unwrap_or_default();
        check_owner(&owner)?;
        caller.require_create(&owner)?;
        let description = input.description.unwrap_or_default();
        check_text("description", &description, 4096)?;
        let retention = input.retention.unwrap_or_default();
        check_retention(&retention)?;
        let inline_limit = input.inline_limit_bytes.unwrap_or(DEFAULT_INLINE_LIMIT);
        check_inline_limit(inline_limit)?;
        if let Some(ct) = &input.content_type {
            check_content_type(ct)?;
        }
        if let Some(s) = &input.json_schema {
            check_schema(s)?;
        }
        let plans = input.plans.clone().unwrap_or_default();
        check_plans(&plans, input.default_plan.as_deref())?;
        let who = caller.who();
        let mut tx = self.pool().begin().await?;
        let res: std::result::Result<i64, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO topics (name, description, owner, retention_max_versions, retention_max_age_days,
                                 inline_limit_bytes, content_type, json_schema, created_by, plans, default_plan)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(name.as_str())
        .bind(&description)
        .bind(&owner)
        .bind(retention.max_versions.map(|v| v as i32))
        .bind(retention.max_age_days.map(|v| v as i32))
        .bind(inline_limit as i64)
        .bind(&input.content_type)
        .bind(&input.json_schema)
        .bind(&who)
        .bind(sqlx::types::Json(&plans))
        .bind(&input.default_plan)
        .fetch_one(&mut *tx)
        .await;
        let id = match res {
            Ok(id) => id,
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("topics_name_key") => {
                return Err(Error::TopicExists(name.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let settings = settings_of(&mut tx, id).await?;
        audit(&mut tx, &who, "topic.create", Some(name.as_str()), settings).await?;
        notify(&mut tx, id).await?;
        tx.commit().await?;
        let topic = self.topic(name.as_str()).await?;
        self.refresh_topic(id).await;
        metrics::counter!("imprint_topics_created_total").increment(1);
        Ok(topic)
    }

    pub async fn topic(&self, name: &str) -> Result<Topic> {
        let name = TopicName::parse(name)?;
        let row: Option<TopicRow> = sqlx::query_as(&format!("SELECT {TOPIC_COLUMNS} FROM topics t WHERE t.name = $1"))
            .bind(name.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.map(topic_from_row).ok_or_else(|| Error::TopicNotFound(name.to_string()))
    }

    /// Topics newest first; `q` matches name, description or owner (case-insensitive).
    pub async fn list_topics(
        &self,
        q: Option<&str>,
        owner: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Topic>> {
        let limit = cursor::limit(limit)?;
        let before = cursor.map(cursor::decode).transpose()?;
        let pattern = q
            .filter(|q| !q.is_empty())
            .map(|q| format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        let rows: Vec<TopicRow> = sqlx::query_as(&format!(
            "SELECT {TOPIC_COLUMNS} FROM topics t
             WHERE ($1::text IS NULL OR t.name ILIKE $1 OR t.description ILIKE $1 OR t.owner ILIKE $1)
               AND ($2::text IS NULL OR t.owner = $2)
               AND ($3::bigint IS NULL OR t.id < $3)
             ORDER BY t.id DESC LIMIT $4"
        ))
        .bind(pattern)
        .bind(owner.filter(|o| !o.is_empty()))
        .bind(before)
        .bind(limit + 1)
        .fetch_all(self.pool())
        .await?;
        let mut ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let more = rows.len() as i64 > limit;
        let items: Vec<Topic> = rows.into_iter().take(limit as usize).map(topic_from_row).collect();
        ids.truncate(items.len());
        let next = if more { ids.last().map(|id| cursor::encode(*id)) } else { None };
        Ok(Page { items, next })
    }

    /// Topics nobody has polled for `days` days (or ever), oldest poll first.
    pub async fn unused_topics(&self, days: u32) -> Result<Vec<Topic>> {
        if days == 0 || days > 3650 {
            return Err(Error::invalid("days must be between 1 and 3650"));
        }
        let rows: Vec<TopicRow> = sqlx::query_as(&format!(
            "SELECT {TOPIC_COLUMNS} FROM topics t
             WHERE t.last_polled_at IS NULL OR t.last_polled_at < now() - make_interval(days => $1)
             ORDER BY t.last_polled_at NULLS FIRST, t.name LIMIT 1000"
        ))
        .bind(days as i32)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(topic_from_row).collect())
    }

    #[tracing::instrument(skip(self, patch))]
    pub async fn update_topic(&self, caller: &Caller, name: &str, patch: TopicPatch) -> Result<Topic> {
        let mut tx = self.pool().begin().await?;
        let t = self.topic_ref(&mut *tx, name).await?;
        caller.require_write(&t.name, &t.owner)?;
        // Locks the row, so `before` is what this update changes.
        let before = settings_of(&mut tx, t.id).await?;
        if let Some(d) = &patch.description {
            check_text("description", d, 4096)?;
        }
        if let Some(o) = &patch.owner {
            check_owner(o)?;
            // Handing a topic to another team needs rights on the new owner as well.
            caller.require_create(o)?;
        }
        if let Some(r) = &patch.retention {
            check_retention(r)?;
        }
        if let Some(l) = patch.inline_limit_bytes {
            check_inline_limit(l)?;
        }
        if let Some(Some(ct)) = &patch.content_type {
            check_content_type(ct)?;
        }
        if let Some(Some(s)) = &patch.json_schema {
            check_schema(s)?;
        }
        if patch.plans.is_some() || patch.default_plan.is_some() {
            let current: (sqlx::types::Json<BTreeMap<String, Plan>>, Option<String>) =
                sqlx::query_as("SELECT plans, default_plan FROM topics WHERE id = $1")
                    .bind(t.id)
                    .fetch_one(&mut *tx)
                    .await?;
            let plans = patch.plans.clone().unwrap_or(current.0 .0);
            let default = patch.default_plan.clone().unwrap_or(current.1);
            check_plans(&plans, default.as_deref())?;
        }
        sqlx::query(
            "UPDATE topics SET
                description = COALESCE($2, description),
                owner = COALESCE($3, owner),
                retention_max_versions = CASE WHEN $4 THEN $5 ELSE retention_max_versions END,
                retention_max_age_days = CASE WHEN $4 THEN $6 ELSE retention_max_age_days END,
                inline_limit_bytes = COALESCE($7, inline_limit_bytes),
                content_type = CASE WHEN $8 THEN $9 ELSE content_type END,
                json_schema = CASE WHEN $10 THEN $11 ELSE json_schema END,
                plans = COALESCE($12, plans),
                default_plan = CASE WHEN $13 THEN $14 ELSE default_plan END,
                updated_at = now()
             WHERE id = $1",
        )
        .bind(t.id)
        .bind(&patch.description)
        .bind(&patch.owner)
        .bind(patch.retention.is_some())
        .bind(patch.retention.as_ref().and_then(|r| r.max_versions).map(|v| v as i32))
        .bind(patch.retention.as_ref().and_then(|r| r.max_age_days).map(|v| v as i32))
        .bind(patch.inline_limit_bytes.map(|l| l as i64))
        .bind(patch.content_type.is_some())
        .bind(patch.content_type.clone().flatten())
        .bind(patch.json_schema.is_some())
        .bind(patch.json_schema.clone().flatten())
        .bind(patch.plans.as_ref().map(sqlx::types::Json))
        .bind(patch.default_plan.is_some())
        .bind(patch.default_plan.clone().flatten())
        .execute(&mut *tx)
        .await?;
        let after = settings_of(&mut tx, t.id).await?;
        let changed = changes(&before, &after);
        if !changed.is_empty() {
            audit(&mut tx, &caller.who(), "topic.update", Some(&t.name), serde_json::Value::Object(changed)).await?;
        }
        notify(&mut tx, t.id).await?;
        tx.commit().await?;
        self.topic(&t.name).await
    }
}

/// The version exists and its payload has not been purged; otherwise the matching error.
pub(crate) async fn require_live_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    t: &TopicRef,
    version: u64,
) -> Result<()> {
    let purged: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT purged_at FROM versions WHERE topic_id = $1 AND version = $2")
            .bind(t.id)
            .bind(version as i64)
            .fetch_optional(&mut **tx)
            .await?;
    match purged {
        None => Err(Error::VersionNotFound { topic: t.name.clone(), version }),
        Some(Some(_)) => Err(Error::VersionPurged { topic: t.name.clone(), version }),
        Some(None) => Ok(()),
    }
}
