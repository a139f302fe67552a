//! The `topics` table.
use crate::error::{Error, Result};
use crate::model::{Retention, Topic};
use chrono::{DateTime, Utc};
use imprint_domain::{Plan, TopicName};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use std::collections::BTreeMap;

/// A topic as lists and pages show it, with its counts.
pub(crate) struct TopicRow {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub owner: String,
    pub retention_max_versions: Option<i32>,
    pub retention_max_age_days: Option<i32>,
    pub inline_limit_bytes: i64,
    pub max_size_bytes: i64,
    pub content_type: Option<String>,
    pub json_schema: Option<serde_json::Value>,
    pub latest_version: i64,
    pub last_published_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub active_pins: i64,
    pub rollout_state: Option<String>,
    pub plans: Json<BTreeMap<String, Plan>>,
    pub default_plan: Option<String>,
    pub consumers: i64,
    pub last_polled_at: Option<DateTime<Utc>>,
    pub restricted: bool,
    pub anonymous_reports: bool,
    pub apollo_app_id: Option<String>,
    pub apollo_namespace: Option<String>,
    pub apollo_secret_set: bool,
    pub ofrep_flag_key: Option<String>,
    pub ofrep_field: Option<String>,
    pub spring_application: Option<String>,
    pub spring_profile: Option<String>,
    pub encryption: Option<Json<crate::model::Encryption>>,
}

impl From<TopicRow> for Topic {
    fn from(r: TopicRow) -> Self {
        Topic {
            name: r.name,
            description: r.description,
            owner: r.owner,
            retention: Retention {
                max_versions: r.retention_max_versions.map(|v| v as u32),
                max_age_days: r.retention_max_age_days.map(|v| v as u32),
            },
            inline_limit_bytes: r.inline_limit_bytes as u64,
            max_size_bytes: r.max_size_bytes as u64,
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
            restricted: r.restricted,
            anonymous_reports: r.anonymous_reports,
            apollo: match (r.apollo_app_id, r.apollo_namespace) {
                (Some(app_id), Some(namespace)) => {
                    Some(crate::model::ApolloBinding { app_id, namespace, secret_set: r.apollo_secret_set })
                }
                _ => None,
            },
            ofrep: r.ofrep_flag_key.map(|flag_key| crate::model::OfrepBinding { flag_key, field: r.ofrep_field }),
            spring: r
                .spring_application
                .map(|application| crate::model::SpringBinding { application, profile: r.spring_profile }),
            encryption: r.encryption.map(|e| e.0),
            // Filled in by `Imprint::topic` (the checks module) for a topic read on its own.
            checks: Vec::new(),
            on_failure: Default::default(),
            keep_rejected: false,
        }
    }
}

/// The settings of a topic that write operations need.
pub(crate) struct TopicRef {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub inline_limit: i64,
    pub max_size: i64,
    pub content_type: Option<String>,
    pub json_schema: Option<serde_json::Value>,
    pub default_plan: Option<String>,
    pub latest_version: i64,
    pub restricted: bool,
    pub anonymous_reports: bool,
    pub apollo_namespace: Option<String>,
    pub spring_application: Option<String>,
}

/// The settings of a topic by name; with `lock`, its row is locked until the transaction
/// ends, so they cannot change under the caller (and writers of the topic queue here).
pub(crate) async fn topic_ref(conn: &mut PgConnection, name: &str, lock: bool) -> Result<Option<TopicRef>> {
    let row = if lock {
        sqlx::query_as!(
            TopicRef,
            r#"SELECT id, name, owner, inline_limit_bytes AS inline_limit, max_size_bytes AS max_size, content_type, json_schema, default_plan,
                      latest_version, restricted, anonymous_reports, apollo_namespace, spring_application
               FROM topics WHERE name = $1 FOR UPDATE"#,
            name
        )
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_as!(
            TopicRef,
            r#"SELECT id, name, owner, inline_limit_bytes AS inline_limit, max_size_bytes AS max_size, content_type, json_schema, default_plan,
                      latest_version, restricted, anonymous_reports, apollo_namespace, spring_application
               FROM topics WHERE name = $1"#,
            name
        )
        .fetch_optional(&mut *conn)
        .await?
    };
    Ok(row)
}

pub(crate) struct NewTopicRow<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub owner: &'a str,
    pub retention: &'a Retention,
    pub inline_limit: u64,
    pub max_size: u64,
    pub content_type: Option<&'a str>,
    pub json_schema: Option<&'a serde_json::Value>,
    pub plans: &'a BTreeMap<String, Plan>,
    pub default_plan: Option<&'a str>,
    pub restricted: bool,
    pub anonymous_reports: bool,
    /// (app id, namespace, secret)
    pub apollo: Option<(&'a str, &'a str, Option<&'a str>)>,
    /// (flag key, field)
    pub ofrep: Option<(&'a str, Option<&'a str>)>,
    /// (application, profile)
    pub spring: Option<(&'a str, Option<&'a str>)>,
    pub created_by: &'a str,
    pub at: DateTime<Utc>,
}

/// Inserts a topic; `None` if the name is taken.
pub(crate) async fn insert(conn: &mut PgConnection, t: NewTopicRow<'_>) -> Result<Option<i64>> {
    let plans = serde_json::to_value(t.plans).map_err(|e| Error::Internal(format!("plans as JSON: {e}")))?;
    let id = sqlx::query_scalar!(
        "INSERT INTO topics (name, description, owner, retention_max_versions, retention_max_age_days,
                             inline_limit_bytes, content_type, json_schema, created_by, plans, default_plan,
                             created_at, updated_at, restricted, anonymous_reports,
                             apollo_app_id, apollo_namespace, apollo_secret, max_size_bytes,
                             ofrep_flag_key, ofrep_field, spring_application, spring_profile)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)
         ON CONFLICT (name) DO NOTHING RETURNING id",
        t.name,
        t.description,
        t.owner,
        t.retention.max_versions.map(|v| v as i32),
        t.retention.max_age_days.map(|v| v as i32),
        t.inline_limit as i64,
        t.content_type,
        t.json_schema,
        t.created_by,
        plans,
        t.default_plan,
        t.at as _,
        t.restricted,
        t.anonymous_reports,
        t.apollo.map(|a| a.0),
        t.apollo.map(|a| a.1),
        t.apollo.and_then(|a| a.2),
        t.max_size as i64,
        t.ofrep.map(|o| o.0),
        t.ofrep.and_then(|o| o.1),
        t.spring.map(|b| b.0),
        t.spring.and_then(|b| b.1),
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(id)
}

/// A topic's settings as one JSON object, as the audit log records them.
pub(crate) async fn settings_json(conn: &mut PgConnection, id: i64) -> Result<serde_json::Value> {
    let v = sqlx::query_scalar!(
        r#"SELECT jsonb_build_object(
            'description', description, 'owner', owner,
            'retention', jsonb_build_object('max_versions', retention_max_versions, 'max_age_days', retention_max_age_days),
            'inline_limit_bytes', inline_limit_bytes, 'max_size_bytes', max_size_bytes, 'content_type', content_type, 'json_schema', json_schema,
            'plans', plans, 'default_plan', default_plan, 'restricted', restricted,
            'anonymous_reports', anonymous_reports,
            'apollo', CASE WHEN apollo_app_id IS NULL THEN NULL ELSE jsonb_build_object(
                'app_id', apollo_app_id, 'namespace', apollo_namespace,
                -- whether there is a secret, never the secret or a hash of it (a new
                -- secret is noted by the update that sets it)
                'secret_set', apollo_secret IS NOT NULL) END,
            'ofrep', CASE WHEN ofrep_flag_key IS NULL THEN NULL ELSE jsonb_build_object(
                'flag_key', ofrep_flag_key, 'field', ofrep_field) END,
            'spring', CASE WHEN spring_application IS NULL THEN NULL ELSE jsonb_build_object(
                'application', spring_application, 'profile', spring_profile) END,
            'encryption', encryption) AS "settings!"
         FROM topics WHERE id = $1"#,
        id
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(v)
}

/// A topic's Apollo app (if bound) and owner.
pub(crate) async fn apollo_app(conn: &mut PgConnection, id: i64) -> Result<(Option<String>, String)> {
    let r = sqlx::query!("SELECT apollo_app_id, owner FROM topics WHERE id = $1", id).fetch_one(&mut *conn).await?;
    Ok((r.apollo_app_id, r.owner))
}

/// Another team than `owner` with a topic bound to Apollo app `app_id` (other than topic
/// `id`), if any. Takes a transaction-level lock on the app first, so two teams binding
/// the same new app at once are decided one after the other.
pub(crate) async fn apollo_app_other_team(
    conn: &mut PgConnection,
    app_id: &str,
    id: i64,
    owner: &str,
) -> Result<Option<String>> {
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended('imprint.apollo_app:' || $1, 0))", app_id)
        .execute(&mut *conn)
        .await?;
    let other = sqlx::query_scalar!(
        "SELECT owner FROM topics WHERE apollo_app_id = $1 AND id <> $2 AND owner <> $3 ORDER BY id LIMIT 1",
        app_id,
        id,
        owner
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(other)
}

/// A topic's Spring application (if bound) and owner.
pub(crate) async fn spring_app(conn: &mut PgConnection, id: i64) -> Result<(Option<String>, String)> {
    let r =
        sqlx::query!("SELECT spring_application, owner FROM topics WHERE id = $1", id).fetch_one(&mut *conn).await?;
    Ok((r.spring_application, r.owner))
}

/// Another team than `owner` with a topic bound to Spring application `app` (other than
/// topic `id`), if any, under a transaction-level lock on the application (two teams
/// binding it at once are checked one after the other).
pub(crate) async fn spring_app_other_team(
    conn: &mut PgConnection,
    app: &str,
    id: i64,
    owner: &str,
) -> Result<Option<String>> {
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended('imprint.spring_app:' || $1, 0))", app)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar!(
        "SELECT owner FROM topics WHERE spring_application = $1 AND id <> $2 AND owner <> $3 ORDER BY id LIMIT 1",
        app,
        id,
        owner
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// A topic's named plans and its default plan.
pub(crate) async fn plans(conn: &mut PgConnection, id: i64) -> Result<(BTreeMap<String, Plan>, Option<String>)> {
    let r = sqlx::query!(
        r#"SELECT plans AS "plans: Json<BTreeMap<String, Plan>>", default_plan FROM topics WHERE id = $1"#,
        id
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((r.plans.0, r.default_plan))
}

/// One named plan of a topic, if it has it.
pub(crate) async fn plan(conn: &mut PgConnection, id: i64, name: &str) -> Result<Option<serde_json::Value>> {
    let v = sqlx::query_scalar!("SELECT plans -> $2 FROM topics WHERE id = $1", id, name).fetch_one(&mut *conn).await?;
    Ok(v)
}

/// What a settings change sets; `None` leaves a field as it is.
pub(crate) struct TopicUpdate<'a> {
    pub description: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub retention: Option<&'a Retention>,
    pub inline_limit: Option<u64>,
    pub max_size: Option<u64>,
    pub content_type: Option<Option<&'a str>>,
    pub json_schema: Option<Option<&'a serde_json::Value>>,
    pub plans: Option<&'a BTreeMap<String, Plan>>,
    pub default_plan: Option<Option<&'a str>>,
    pub restricted: Option<bool>,
    pub anonymous_reports: Option<bool>,
    /// `Some(None)` removes the binding; `Some(Some((app, ns, secret)))` sets it, where
    /// `secret` `None` keeps the current secret and `Some("")` removes it.
    pub apollo: Option<Option<(&'a str, &'a str, Option<&'a str>)>>,
    /// `Some(None)` removes the binding; `Some(Some((flag key, field)))` sets it.
    pub ofrep: Option<Option<(&'a str, Option<&'a str>)>>,
    /// `Some(None)` removes the Spring binding; `Some(Some((application, profile)))` sets it.
    pub spring: Option<Option<(&'a str, Option<&'a str>)>>,
    pub at: DateTime<Utc>,
}

pub(crate) async fn update(conn: &mut PgConnection, id: i64, u: TopicUpdate<'_>) -> Result<()> {
    let plans =
        u.plans.map(serde_json::to_value).transpose().map_err(|e| Error::Internal(format!("plans as JSON: {e}")))?;
    sqlx::query!(
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
            updated_at = $15,
            restricted = COALESCE($16, restricted),
            anonymous_reports = COALESCE($17, anonymous_reports),
            apollo_app_id = CASE WHEN $18 THEN $19 ELSE apollo_app_id END,
            apollo_namespace = CASE WHEN $18 THEN $20 ELSE apollo_namespace END,
            apollo_secret = CASE WHEN NOT $18 THEN apollo_secret
                                 WHEN $19::text IS NULL THEN NULL
                                 WHEN $21::text IS NULL THEN apollo_secret
                                 ELSE NULLIF($21, '') END,
            max_size_bytes = COALESCE($22, max_size_bytes),
            ofrep_flag_key = CASE WHEN $23 THEN $24 ELSE ofrep_flag_key END,
            ofrep_field = CASE WHEN $23 THEN $25 ELSE ofrep_field END,
            spring_application = CASE WHEN $26 THEN $27 ELSE spring_application END,
            spring_profile = CASE WHEN $26 THEN $28 ELSE spring_profile END
         WHERE id = $1",
        id,
        u.description,
        u.owner,
        u.retention.is_some(),
        u.retention.and_then(|r| r.max_versions).map(|v| v as i32),
        u.retention.and_then(|r| r.max_age_days).map(|v| v as i32),
        u.inline_limit.map(|l| l as i64),
        u.content_type.is_some(),
        u.content_type.flatten(),
        u.json_schema.is_some(),
        u.json_schema.flatten(),
        plans,
        u.default_plan.is_some(),
        u.default_plan.flatten(),
        u.at as _,
        u.restricted,
        u.anonymous_reports,
        u.apollo.is_some(),
        u.apollo.flatten().map(|a| a.0),
        u.apollo.flatten().map(|a| a.1),
        u.apollo.flatten().and_then(|a| a.2),
        u.max_size.map(|l| l as i64),
        u.ofrep.is_some(),
        u.ofrep.flatten().map(|o| o.0),
        u.ofrep.flatten().and_then(|o| o.1),
        u.spring.is_some(),
        u.spring.flatten().map(|b| b.0),
        u.spring.flatten().and_then(|b| b.1),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The number a rejected version kept by `keep_rejected` takes: the next one, without
/// making it the topic's `latest_version` (the caller holds the topic's row lock).
pub(crate) async fn next_rejected_version(conn: &mut PgConnection, id: i64) -> Result<i64> {
    let v = sqlx::query_scalar!(
        r#"SELECT GREATEST(t.latest_version, (SELECT COALESCE(max(version), 0) FROM versions WHERE topic_id = $1)) + 1 AS "v!"
           FROM topics t WHERE t.id = $1"#,
        id
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(v)
}

/// Takes the next version number of a topic (the caller holds its row lock; a rollback
/// gives the number back, so numbers have no gaps). It comes after any rejected version
/// kept (`keep_rejected`), which `latest_version` does not count.
pub(crate) async fn next_version(conn: &mut PgConnection, id: i64, at: DateTime<Utc>) -> Result<i64> {
    let v = sqlx::query_scalar!(
        "UPDATE topics SET latest_version = GREATEST(latest_version,
                               (SELECT COALESCE(max(version), 0) FROM versions WHERE topic_id = $1)) + 1,
                           last_published_at = $2, updated_at = $2
         WHERE id = $1 RETURNING latest_version",
        id,
        at as _
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(v)
}

pub(crate) async fn name_of(conn: &mut PgConnection, id: i64) -> Result<String> {
    Ok(sqlx::query_scalar!("SELECT name FROM topics WHERE id = $1", id).fetch_one(&mut *conn).await?)
}

pub(crate) async fn by_name<'e>(ex: impl PgExecutor<'e>, name: &str) -> Result<Option<Topic>> {
    let row = sqlx::query_as!(
        TopicRow,
        r#"SELECT t.id, t.name, t.description, t.owner, t.retention_max_versions, t.retention_max_age_days,
                  t.inline_limit_bytes, t.max_size_bytes, t.content_type, t.json_schema, t.latest_version,
                  t.last_published_at AS "last_published_at: DateTime<Utc>", t.created_at AS "created_at: DateTime<Utc>", t.created_by,
                  (SELECT count(*) FROM pins p WHERE p.topic_id = t.id AND p.removed_at IS NULL) AS "active_pins!",
                  (SELECT r.state FROM rollouts r WHERE r.topic_id = t.id ORDER BY r.id DESC LIMIT 1) AS rollout_state,
                  t.plans AS "plans: Json<BTreeMap<String, Plan>>", t.default_plan,
                  (SELECT count(*) FROM consumers c WHERE c.topic_id = t.id) AS "consumers!", t.last_polled_at AS "last_polled_at: DateTime<Utc>",
                  t.restricted, t.anonymous_reports,
                  t.apollo_app_id, t.apollo_namespace, t.apollo_secret IS NOT NULL AS "apollo_secret_set!",
                  t.ofrep_flag_key, t.ofrep_field,
                  t.spring_application, t.spring_profile,
                  t.encryption AS "encryption: Json<crate::model::Encryption>"
           FROM topics t WHERE t.name = $1"#,
        name
    )
    .fetch_optional(ex)
    .await?;
    Ok(row.map(Topic::from))
}

/// Topics newest first below the id `before`; `pattern` is an ILIKE pattern matched
/// against name, description and owner. Returns the rows (with ids) for paging.
pub(crate) async fn list<'e>(
    ex: impl PgExecutor<'e>,
    pattern: Option<&str>,
    owner: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<TopicRow>> {
    Ok(sqlx::query_as!(
        TopicRow,
        r#"SELECT t.id, t.name, t.description, t.owner, t.retention_max_versions, t.retention_max_age_days,
                  t.inline_limit_bytes, t.max_size_bytes, t.content_type, t.json_schema, t.latest_version,
                  t.last_published_at AS "last_published_at: DateTime<Utc>", t.created_at AS "created_at: DateTime<Utc>", t.created_by,
                  (SELECT count(*) FROM pins p WHERE p.topic_id = t.id AND p.removed_at IS NULL) AS "active_pins!",
                  (SELECT r.state FROM rollouts r WHERE r.topic_id = t.id ORDER BY r.id DESC LIMIT 1) AS rollout_state,
                  t.plans AS "plans: Json<BTreeMap<String, Plan>>", t.default_plan,
                  (SELECT count(*) FROM consumers c WHERE c.topic_id = t.id) AS "consumers!", t.last_polled_at AS "last_polled_at: DateTime<Utc>",
                  t.restricted, t.anonymous_reports,
                  t.apollo_app_id, t.apollo_namespace, t.apollo_secret IS NOT NULL AS "apollo_secret_set!",
                  t.ofrep_flag_key, t.ofrep_field,
                  t.spring_application, t.spring_profile,
                  t.encryption AS "encryption: Json<crate::model::Encryption>"
           FROM topics t
           WHERE ($1::text IS NULL OR t.name ILIKE $1 OR t.description ILIKE $1 OR t.owner ILIKE $1)
             AND ($2::text IS NULL OR t.owner = $2)
             AND ($3::bigint IS NULL OR t.id < $3)
           ORDER BY t.id DESC LIMIT $4"#,
        pattern,
        owner,
        before,
        limit
    )
    .fetch_all(ex)
    .await?)
}

/// Topics not polled since `since` (or never), oldest poll first, from `offset` on.
pub(crate) async fn unused<'e>(
    ex: impl PgExecutor<'e>,
    since: DateTime<Utc>,
    offset: i64,
    limit: i64,
) -> Result<Vec<Topic>> {
    let rows = sqlx::query_as!(
        TopicRow,
        r#"SELECT t.id, t.name, t.description, t.owner, t.retention_max_versions, t.retention_max_age_days,
                  t.inline_limit_bytes, t.max_size_bytes, t.content_type, t.json_schema, t.latest_version,
                  t.last_published_at AS "last_published_at: DateTime<Utc>", t.created_at AS "created_at: DateTime<Utc>", t.created_by,
                  (SELECT count(*) FROM pins p WHERE p.topic_id = t.id AND p.removed_at IS NULL) AS "active_pins!",
                  (SELECT r.state FROM rollouts r WHERE r.topic_id = t.id ORDER BY r.id DESC LIMIT 1) AS rollout_state,
                  t.plans AS "plans: Json<BTreeMap<String, Plan>>", t.default_plan,
                  (SELECT count(*) FROM consumers c WHERE c.topic_id = t.id) AS "consumers!", t.last_polled_at AS "last_polled_at: DateTime<Utc>",
                  t.restricted, t.anonymous_reports,
                  t.apollo_app_id, t.apollo_namespace, t.apollo_secret IS NOT NULL AS "apollo_secret_set!",
                  t.ofrep_flag_key, t.ofrep_field,
                  t.spring_application, t.spring_profile,
                  t.encryption AS "encryption: Json<crate::model::Encryption>"
           FROM topics t
           WHERE t.last_polled_at IS NULL OR t.last_polled_at < $1
           ORDER BY t.last_polled_at NULLS FIRST, t.name OFFSET $2 LIMIT $3"#,
        since as _,
        offset,
        limit
    )
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(Topic::from).collect())
}

/// The topic named `name`, or `TopicNotFound`.
pub(crate) async fn require(conn: &mut PgConnection, name: &TopicName, lock: bool) -> Result<TopicRef> {
    topic_ref(conn, name.as_str(), lock).await?.ok_or_else(|| Error::TopicNotFound(name.to_string()))
}

/// Takes the topic's row lock if nobody holds it; false otherwise. The scheduler holds a
/// rollout's lock when it wants the topic's, the reverse of publish and operator
/// actions, so it must never wait for it (that could deadlock).
pub(crate) async fn try_lock(conn: &mut PgConnection, id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar!("SELECT id FROM topics WHERE id = $1 FOR UPDATE SKIP LOCKED", id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Do anonymous consumers' reports count for this topic's health gates?
pub(crate) async fn anonymous_reports(conn: &mut PgConnection, id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar!("SELECT anonymous_reports FROM topics WHERE id = $1", id).fetch_one(&mut *conn).await?)
}
