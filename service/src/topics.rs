//! Topic administration: create, read, list, change settings.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{ApolloBindingInput, OfrepBindingInput, Page, Retention, SpringBinding, Topic};
use crate::{cursor, store};
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
    /// Larger payloads are refused (413); default 10 GiB.
    #[serde(default)]
    pub max_size_bytes: Option<u64>,
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
    /// Read and polled only with a token (or by a user) allowed on it.
    #[serde(default)]
    pub restricted: Option<bool>,
    /// Health gates count reports of anonymous consumers too (off by default).
    #[serde(default)]
    pub anonymous_reports: Option<bool>,
    /// Serve the topic to unchanged Apollo clients as this app's namespace.
    #[serde(default)]
    pub apollo: Option<ApolloBindingInput>,
    /// Serve the topic to OpenFeature (OFREP) providers as a flag: `{}` names the flag
    /// after the topic; `{"flag_key": "…", "field": "…"}` picks a key and a payload field.
    #[serde(default)]
    pub ofrep: Option<OfrepBindingInput>,
    /// Serve the topic to unchanged Spring Cloud Config clients as a property source of
    /// this application (and profile).
    #[serde(default)]
    pub spring: Option<SpringBinding>,
    /// End-to-end encryption: `{"mode": "end_to_end", "recipients": ["age1…"]}` (docs/encryption.md).
    #[serde(default)]
    pub encryption: Option<crate::model::Encryption>,
    /// Pre-release checks, in order (docs/validation.md); replaces the list.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub checks: Option<Vec<imprint_domain::checks::Check>>,
    /// What a failing rollout gate does: `pause` (the default) or `rollback`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub on_failure: Option<imprint_domain::checks::OnFailure>,
    /// Keep a publish the checks reject, unreleased and marked rejected (docs/validation.md).
    #[serde(default)]
    pub keep_rejected: Option<bool>,
}

/// Settings to change; absent fields stay as they are, `null` clears the optional ones.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicPatch {
    #[serde(default)]
    pub description: Option<String>,
    /// The configured regions its objects go to (`null`: all; docs/regions.md).
    #[serde(default, deserialize_with = "double_option")]
    pub regions: Option<Option<Vec<String>>>,
    /// How many of its regions hold an object before a version commits (`null`: all of them).
    #[serde(default, deserialize_with = "double_option")]
    pub min_regions: Option<Option<u32>>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub retention: Option<Retention>,
    #[serde(default)]
    pub inline_limit_bytes: Option<u64>,
    /// Larger payloads are refused (413); default 10 GiB.
    #[serde(default)]
    pub max_size_bytes: Option<u64>,
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
    #[serde(default)]
    pub restricted: Option<bool>,
    #[serde(default)]
    pub anonymous_reports: Option<bool>,
    /// `null` removes the Apollo binding.
    #[serde(default, deserialize_with = "double_option")]
    pub apollo: Option<Option<ApolloBindingInput>>,
    /// `null` removes the OpenFeature binding.
    #[serde(default, deserialize_with = "double_option")]
    pub ofrep: Option<Option<OfrepBindingInput>>,
    /// `null` removes the Spring binding.
    #[serde(default, deserialize_with = "double_option")]
    pub spring: Option<Option<SpringBinding>>,
    /// Replaces the encryption setting (later versions); `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    pub encryption: Option<Option<crate::model::Encryption>>,
    /// Pre-release checks, in order (docs/validation.md); replaces the list.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub checks: Option<Vec<imprint_domain::checks::Check>>,
    /// What a failing rollout gate does: `pause` (the default) or `rollback`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub on_failure: Option<imprint_domain::checks::OnFailure>,
    /// Keep a publish the checks reject, unreleased and marked rejected (docs/validation.md).
    #[serde(default)]
    pub keep_rejected: Option<bool>,
}

/// For `#[serde(default, deserialize_with = "double_option")]` on an `Option<Option<T>>`:
/// an absent field is `None` (leave it), `null` is `Some(None)` (clear it), a value
/// `Some(Some(v))`. The API's request bodies use it too.
pub fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
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

/// The default `max_size_bytes`: 10 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 30;
/// The largest `max_size_bytes` (5 TiB, S3's largest object).
pub const MAX_MAX_SIZE: u64 = 5 << 40;

fn check_max_size(l: u64) -> Result<()> {
    if l == 0 || l > MAX_MAX_SIZE {
        return Err(Error::invalid(format!("max_size_bytes must be between 1 and {MAX_MAX_SIZE}")));
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

/// The longest OpenFeature flag key and payload field name.
pub const MAX_FLAG_KEY: usize = 128;
pub const MAX_FLAG_FIELD: usize = 256;

/// An OpenFeature binding, normalised: (flag key, field), the key defaulting to the
/// topic's name. A key is what a provider puts in the path: letters, digits, '.', '_', '-'.
pub fn check_ofrep(o: &OfrepBindingInput, topic: &str) -> Result<(String, Option<String>)> {
    let key = o.flag_key.as_deref().map(str::trim).filter(|k| !k.is_empty()).unwrap_or(topic);
    if key.len() > MAX_FLAG_KEY || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(Error::invalid(format!("ofrep.flag_key is 1-{MAX_FLAG_KEY} letters, digits, '.', '_' or '-'")));
    }
    let field = match o.field.as_deref() {
        None => None,
        Some(f) if f.is_empty() || f.len() > MAX_FLAG_FIELD || f.chars().any(char::is_control) => {
            return Err(Error::invalid(format!(
                "ofrep.field is a top-level JSON field name of 1-{MAX_FLAG_FIELD} bytes without control characters"
            )))
        }
        Some(f) => Some(f.to_owned()),
    };
    Ok((key.to_owned(), field))
}

/// An Apollo binding, normalised: the namespace without a `.properties` suffix (as Apollo
/// treats it), the secret as given (`Some("")`: remove it).
fn check_apollo(a: &ApolloBindingInput) -> Result<(String, String, Option<String>)> {
    let ok = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let app_id = a.app_id.trim();
    if !ok(app_id, 64) {
        return Err(Error::invalid("apollo.app_id is 1-64 letters, digits, '.', '_' or '-'"));
    }
    let ns = a.namespace.trim();
    let ns = imprint_domain::apollo::strip_properties(ns);
    if !ok(ns, 128) {
        return Err(Error::invalid("apollo.namespace is 1-128 letters, digits, '.', '_' or '-'"));
    }
    if let Some(s) = &a.secret {
        if s.len() > 256 || s.chars().any(char::is_control) {
            return Err(Error::invalid("apollo.secret has at most 256 characters, none of them control characters"));
        }
    }
    Ok((app_id.to_owned(), ns.to_owned(), a.secret.clone()))
}

/// An Apollo app belongs to one team: binding a topic to an app that another team's
/// topic is bound to is refused, unless an administrator does it (admins may share an
/// app). Checked after the write, in its transaction, when the topic's app or owner
/// changed: what counts is the topic as it will be.
async fn check_apollo_app(
    conn: &mut sqlx::PgConnection,
    caller: &Caller,
    id: i64,
    before: Option<&(Option<String>, String)>,
) -> Result<()> {
    let after = store::topics::apollo_app(conn, id).await?;
    let (Some(app), owner) = &after else { return Ok(()) };
    if before == Some(&after) || caller.is_admin() {
        return Ok(());
    }
    if store::topics::apollo_app_other_team(conn, app, id, owner).await?.is_some() {
        return Err(Error::Forbidden(format!(
            "Apollo app {app:?} belongs to another team (its topics are bound to it); an administrator may share it"
        )));
    }
    Ok(())
}

/// A Spring binding, normalised (names trimmed and checked).
fn check_spring(b: &SpringBinding) -> Result<(String, Option<String>)> {
    use imprint_domain::spring::check_name;
    let application = b.application.trim();
    check_name("spring.application", application).map_err(|e| Error::invalid(e.to_string()))?;
    let profile = b.profile.as_deref().map(str::trim);
    if let Some(p) = profile {
        check_name("spring.profile", p).map_err(|e| Error::invalid(e.to_string()))?;
    }
    Ok((application.to_owned(), profile.map(str::to_owned)))
}

/// A Spring application belongs to one team, as an Apollo app does: binding a topic to an
/// application another team's topic is bound to is refused unless an administrator does
/// it (a team must not slip a property source into another team's applications). The
/// shared application `application` reaches every application: only administrators bind
/// topics to it. Checked after the write, in its transaction, when the binding or the
/// owner changed.
async fn check_spring_app(
    conn: &mut sqlx::PgConnection,
    caller: &Caller,
    id: i64,
    before: Option<&(Option<String>, String)>,
) -> Result<()> {
    let after = store::topics::spring_app(conn, id).await?;
    let (Some(app), owner) = &after else { return Ok(()) };
    if before == Some(&after) || caller.is_admin() {
        return Ok(());
    }
    if app == imprint_domain::spring::SHARED_APPLICATION {
        return Err(Error::Forbidden(
            "Spring application \"application\" is shared by every application: only an administrator binds topics to it"
                .into(),
        ));
    }
    if store::topics::spring_app_other_team(conn, app, id, owner).await?.is_some() {
        return Err(Error::Forbidden(format!(
            "Spring application {app:?} belongs to another team (its topics are bound to it); an administrator may share it"
        )));
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

/// A topic's JSON Schema is at most this big (serialised): it is compiled and held in
/// memory per topic, and every publish is checked against it.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

pub(crate) fn check_schema(schema: &serde_json::Value) -> Result<()> {
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(Error::invalid(format!(
            "json_schema is {size} bytes; a topic's schema takes at most {MAX_SCHEMA_BYTES} bytes"
        )));
    }
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("json_schema is not a valid JSON Schema: {e}")))
}

impl Imprint {
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
        let max_size = input.max_size_bytes.unwrap_or(DEFAULT_MAX_SIZE);
        check_max_size(max_size)?;
        if let Some(ct) = &input.content_type {
            check_content_type(ct)?;
        }
        if let Some(s) = &input.json_schema {
            check_schema(s)?;
        }
        let plans = input.plans.clone().unwrap_or_default();
        check_plans(&plans, input.default_plan.as_deref())?;
        for p in plans.values() {
            crate::analysis::require_prometheus(self.config().prometheus.is_some(), p)?;
        }
        let apollo = input.apollo.as_ref().map(check_apollo).transpose()?;
        let ofrep = input.ofrep.as_ref().map(|o| check_ofrep(o, name.as_str())).transpose()?;
        let spring = input.spring.as_ref().map(check_spring).transpose()?;
        let encryption = match &input.encryption {
            Some(e) => Some(crate::encryption::check_encryption(self, e).await?),
            None => None,
        };
        let checks = crate::checks::checked(caller, input.checks.clone().unwrap_or_default(), &[])?;
        let checks = imprint_domain::checks::TopicChecks {
            checks,
            on_failure: input.on_failure.unwrap_or_default(),
            keep_rejected: input.keep_rejected.unwrap_or(false),
        };
        let who = caller.who();
        let now = self.now();
        let mut tx = self.pool().begin().await?;
        let row = store::topics::NewTopicRow {
            name: name.as_str(),
            description: &description,
            owner: &owner,
            retention: &retention,
            inline_limit,
            max_size,
            content_type: input.content_type.as_deref(),
            json_schema: input.json_schema.as_ref(),
            plans: &plans,
            default_plan: input.default_plan.as_deref(),
            restricted: input.restricted.unwrap_or(false),
            anonymous_reports: input.anonymous_reports.unwrap_or(false),
            apollo: apollo.as_ref().map(|(a, n, s)| (a.as_str(), n.as_str(), s.as_deref().filter(|s| !s.is_empty()))),
            ofrep: ofrep.as_ref().map(|(k, f)| (k.as_str(), f.as_deref())),
            spring: spring.as_ref().map(|(a, p)| (a.as_str(), p.as_deref())),
            created_by: &who,
            at: now,
        };
        let Some(id) = store::topics::insert(&mut tx, row).await? else {
            return Err(Error::TopicExists(name.to_string()));
        };
        check_apollo_app(&mut tx, caller, id, None).await?;
        check_spring_app(&mut tx, caller, id, None).await?;
        let with_checks = checks != Default::default();
        if with_checks {
            store::checks::set_settings(&mut tx, id, &checks, now).await?;
        }
        // After the checks are stored: the setting refuses those that need plaintext.
        crate::encryption::apply_setting(&mut tx, id, encryption.as_ref().map(Some)).await?;
        let mut settings = store::topics::settings_json(&mut tx, id).await?;
        if with_checks {
            settings["checks"] = serde_json::json!(checks.checks.iter().map(|c| c.redacted()).collect::<Vec<_>>());
            settings["on_failure"] = serde_json::json!(checks.on_failure);
            settings["keep_rejected"] = serde_json::json!(checks.keep_rejected);
        }
        store::audit(&mut tx, now, &who, "topic.create", Some(name.as_str()), settings).await?;
        store::notify(&mut tx, id).await?;
        tx.commit().await?;
        let topic = self.topic(caller, &name).await?;
        self.refresh_topic(id).await;
        metrics::counter!("imprint_topics_created_total").increment(1);
        Ok(topic)
    }

    pub async fn topic(&self, caller: &Caller, name: &TopicName) -> Result<Topic> {
        let mut topic = store::topics::by_name(self.pool(), name.as_str())
            .await?
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        caller.require_read(&topic.name, &topic.owner, topic.restricted)?;
        (topic.checks, topic.on_failure, topic.keep_rejected) = self.shown_checks(name.as_str()).await?;
        if caller.require_write(&topic.name, &topic.owner).is_err() {
            // A validator URL's path or query may hold the receiver's own token: readers
            // without rights on the topic see only its origin.
            for c in &mut topic.checks {
                c.url = c.url.as_deref().map(crate::checks::origin_only);
            }
        }
        Ok(topic)
    }

    /// Topics newest first; `q` matches name, description or owner (case-insensitive).
    /// Only the topics the caller may read are listed.
    pub async fn list_topics(
        &self,
        caller: &Caller,
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
        let rows =
            store::topics::list(self.pool(), pattern.as_deref(), owner.filter(|o| !o.is_empty()), before, limit + 1)
                .await?;
        let more = rows.len() as i64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next = if more { rows.last().map(|r| cursor::encode(r.id)) } else { None };
        let items = rows
            .into_iter()
            .map(Topic::from)
            .filter(|t| caller.require_read(&t.name, &t.owner, t.restricted).is_ok())
            .collect();
        Ok(Page { items, next })
    }

    /// Topics nobody has polled for `days` days (or ever), oldest poll first, a page at a time.
    pub async fn unused_topics(
        &self,
        caller: &Caller,
        days: u32,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<Topic>> {
        if days == 0 || days > 3650 {
            return Err(Error::invalid("days must be between 1 and 3650"));
        }
        let limit = cursor::limit(limit)?;
        let offset = cursor.map(cursor::decode).transpose()?.unwrap_or(0).max(0);
        let since = self.now() - chrono::Duration::days(i64::from(days));
        let rows = store::topics::unused(self.pool(), since, offset, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let next = more.then(|| cursor::encode(offset + limit));
        let items = rows
            .into_iter()
            .take(limit as usize)
            .filter(|t| caller.require_read(&t.name, &t.owner, t.restricted).is_ok())
            .collect();
        Ok(Page { items, next })
    }

    #[tracing::instrument(skip(self, patch))]
    pub async fn update_topic(&self, caller: &Caller, name: &TopicName, patch: TopicPatch) -> Result<Topic> {
        let mut tx = self.pool().begin().await?;
        // Locks the row, so `before` is what this update changes.
        let t = store::topics::require(&mut tx, name, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let before = store::topics::settings_json(&mut tx, t.id).await?;
        let app_before = store::topics::apollo_app(&mut tx, t.id).await?;
        let spring_before = store::topics::spring_app(&mut tx, t.id).await?;
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
        if let Some(l) = patch.max_size_bytes {
            check_max_size(l)?;
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
        let apollo = match &patch.apollo {
            None => None,
            Some(None) => Some(None),
            Some(Some(a)) => Some(Some(check_apollo(a)?)),
        };
        let ofrep = match &patch.ofrep {
            None => None,
            Some(None) => Some(None),
            Some(Some(o)) => Some(Some(check_ofrep(o, &t.name)?)),
        };
        let spring = match &patch.spring {
            None => None,
            Some(None) => Some(None),
            Some(Some(b)) => Some(Some(check_spring(b)?)),
        };
        let encryption = match &patch.encryption {
            None => None,
            Some(None) => Some(None),
            Some(Some(e)) => Some(Some(crate::encryption::check_encryption(self, e).await?)),
        };
        if patch.plans.is_some() || patch.default_plan.is_some() {
            let (current_plans, current_default) = store::topics::plans(&mut tx, t.id).await?;
            let plans = patch.plans.clone().unwrap_or(current_plans);
            let default = patch.default_plan.clone().unwrap_or(current_default);
            check_plans(&plans, default.as_deref())?;
            for p in plans.values() {
                crate::analysis::require_prometheus(self.config().prometheus.is_some(), p)?;
            }
        }
        let update = store::topics::TopicUpdate {
            description: patch.description.as_deref(),
            owner: patch.owner.as_deref(),
            retention: patch.retention.as_ref(),
            inline_limit: patch.inline_limit_bytes,
            max_size: patch.max_size_bytes,
            content_type: patch.content_type.as_ref().map(Option::as_deref),
            json_schema: patch.json_schema.as_ref().map(Option::as_ref),
            plans: patch.plans.as_ref(),
            default_plan: patch.default_plan.as_ref().map(Option::as_deref),
            restricted: patch.restricted,
            anonymous_reports: patch.anonymous_reports,
            apollo: apollo.as_ref().map(|b| b.as_ref().map(|(a, n, s)| (a.as_str(), n.as_str(), s.as_deref()))),
            ofrep: ofrep.as_ref().map(|b| b.as_ref().map(|(k, f)| (k.as_str(), f.as_deref()))),
            spring: spring.as_ref().map(|b| b.as_ref().map(|(a, p)| (a.as_str(), p.as_deref()))),
            at: self.now(),
        };
        store::topics::update(&mut tx, t.id, update).await?;
        if patch.regions.is_some() || patch.min_regions.is_some() {
            let (list_now, min_now) = store::copies::topic_settings(&mut tx, t.id).await?;
            let list = patch.regions.clone().unwrap_or(list_now);
            let min = patch.min_regions.unwrap_or(min_now.map(|m| m.max(0) as u32));
            crate::regions::check_topic_regions(&self.config().regions, list.as_deref(), min)?;
            let min = min.map(|m| m.min(i32::MAX as u32) as i32);
            store::copies::set_topic_settings(&mut tx, t.id, list.as_deref(), min).await?;
            let details = serde_json::json!({"regions": list, "min_regions": min});
            store::audit(&mut tx, self.now(), &caller.who(), "topic.regions", Some(&t.name), details).await?;
        }
        let checks_before = store::checks::settings(&mut *tx, t.id).await?;
        let mut checks_after = checks_before.clone();
        if let Some(c) = patch.checks.clone() {
            checks_after.checks = crate::checks::checked(caller, c, &checks_before.checks)?;
        }
        if let Some(f) = patch.on_failure {
            checks_after.on_failure = f;
        }
        if let Some(k) = patch.keep_rejected {
            checks_after.keep_rejected = k;
        }
        let checks_changed = checks_after != checks_before;
        if checks_changed {
            store::checks::set_settings(&mut tx, t.id, &checks_after, self.now()).await?;
        }
        check_apollo_app(&mut tx, caller, t.id, Some(&app_before)).await?;
        check_spring_app(&mut tx, caller, t.id, Some(&spring_before)).await?;
        crate::encryption::apply_setting(&mut tx, t.id, encryption.as_ref().map(Option::as_ref)).await?;
        let after = store::topics::settings_json(&mut tx, t.id).await?;
        let mut changed = changes(&before, &after);
        if checks_changed {
            let shown = |c: &imprint_domain::checks::TopicChecks| serde_json::json!({"checks": c.checks.iter().map(|c| c.redacted()).collect::<Vec<_>>(), "on_failure": c.on_failure, "keep_rejected": c.keep_rejected});
            changed.insert(
                "checks".into(),
                serde_json::json!({"from": shown(&checks_before), "to": shown(&checks_after)}),
            );
        }
        // A new Apollo secret is noted as set, never shown (nor any hash of it).
        if let Some(Some((_, _, Some(secret)))) = &apollo {
            if !secret.is_empty() {
                changed.insert("apollo_secret".into(), serde_json::json!("set"));
            }
        }
        if !changed.is_empty() {
            let value = serde_json::Value::Object(changed);
            store::audit(&mut tx, self.now(), &caller.who(), "topic.update", Some(&t.name), value).await?;
        }
        store::notify(&mut tx, t.id).await?;
        tx.commit().await?;
        // Settings steer serving (restricted, the Apollo binding): this server applies
        // them at once, others on the notification.
        self.refresh_topic(t.id).await;
        self.topic(caller, name).await
    }
}

/// The old and new value of every top-level field that differs between two JSON
/// objects: `{"field": {"from": old, "to": new}}`.
pub(crate) fn changes(
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let empty = serde_json::Map::new();
    let (b, a) = (before.as_object().unwrap_or(&empty), after.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (from, to) = (b.get(k).cloned().unwrap_or_default(), a.get(k).cloned().unwrap_or_default());
            (from != to).then(|| (k.clone(), serde_json::json!({"from": from, "to": to})))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_lists_differing_fields_only() {
        let before = json!({"description": "a", "owner": "payments", "content_type": null});
        let after = json!({"description": "b", "owner": "payments", "content_type": "application/json"});
        let c = changes(&before, &after);
        assert_eq!(
            serde_json::Value::Object(c),
            json!({
                "description": {"from": "a", "to": "b"},
                "content_type": {"from": null, "to": "application/json"},
            })
        );
        assert!(changes(&before, &before).is_empty());
    }
}
