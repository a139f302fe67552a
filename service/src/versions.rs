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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub struct PublishInput {
    pub payload: Payload,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// `None`: the default, released to everyone (`*`). `Some(vec![])`: released to nobody.
    pub scopes: Option<Vec<Selector>>,
    pub message: String,
    pub rollout: RolloutRequest,
    /// The payload's SHA-256 as the publisher computed it: verified (422 `checksum_mismatch`).
    pub sha256: Option<String>,
}

/// A request body as it arrives: chunks, or an error when the client went away or sent
/// less than it announced.
pub type BodyStream = futures::stream::BoxStream<'static, std::result::Result<Bytes, std::io::Error>>;

/// The payload as the publisher sent it; the kind decides the default content type and
/// where it may be stored.
pub enum Payload {
    /// Held in memory (the JSON form, the console): at most the inline limit.
    Text(String),
    Binary(Bytes),
    /// Streamed (a raw or multipart body): inline up to the topic's inline limit, an
    /// object beyond it. `len` is the announced `Content-Length`, if any.
    Stream {
        body: BodyStream,
        len: Option<u64>,
    },
    /// A pointer to an object that already exists in the configured store.
    Object {
        url: String,
    },
}

impl Payload {
    fn len(&self) -> Option<u64> {
        match self {
            Payload::Text(s) => Some(s.len() as u64),
            Payload::Binary(b) => Some(b.len() as u64),
            Payload::Stream { len, .. } => *len,
            Payload::Object { .. } => None,
        }
    }
}

/// The payload once received and checksummed, before its version commits.
pub(crate) enum Received {
    Inline(Bytes),
    Object {
        /// Owned: the upload's staging key (moved to its final key at commit).
        /// Registered: the object's key.
        key: object_store::path::Path,
        owned: bool,
        size: u64,
        sha256: String,
        /// The whole payload, when it was small enough to keep for validation.
        content: Option<Bytes>,
    },
}

/// Payloads of topics with a JSON Schema or an Apollo binding are validated in memory:
/// at most this big.
pub(crate) const MAX_VALIDATED_BYTES: u64 = 64 << 20;

/// What a publish says besides its payload.
pub(crate) struct PublishMeta {
    content_type: Option<String>,
    default_content_type: &'static str,
    metadata: BTreeMap<String, String>,
    scopes: Option<Vec<Selector>>,
    message: String,
    rollout: RolloutRequest,
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

/// A given checksum, normalised (lowercase hex), or a clear error.
fn check_sha256(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid("sha256 must be 64 hexadecimal digits"));
    }
    Ok(s)
}

pub(crate) fn verify_sha256(expected: Option<&str>, actual: &str) -> Result<()> {
    match expected {
        Some(e) if e != actual => Err(Error::ChecksumMismatch { expected: e.to_owned(), actual: actual.to_owned() }),
        _ => Ok(()),
    }
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
        let expected = input.sha256.as_deref().map(check_sha256).transpose()?;
        let default_content_type = match &input.payload {
            Payload::Text(s) if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() => "application/json",
            Payload::Text(_) => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        };
        let meta = PublishMeta {
            content_type: input.content_type,
            default_content_type,
            metadata: input.metadata,
            scopes: input.scopes,
            message: input.message,
            rollout: input.rollout,
        };
        let received = match input.payload {
            Payload::Text(s) => Received::Inline(Bytes::from(s)),
            Payload::Binary(b) => Received::Inline(b),
            Payload::Stream { body, len } => self.receive(caller, topic, body, len, expected.as_deref()).await?,
            Payload::Object { url } => self.inspect_registered(caller, topic, &url, expected.as_deref()).await?,
        };
        if let Received::Inline(b) = &received {
            verify_sha256(expected.as_deref(), &hex::encode(Sha256::digest(b)))?;
        }
        let staging = match &received {
            Received::Object { key, owned: true, .. } => Some(key.clone()),
            _ => None,
        };
        let result = self.commit_publish(caller, topic, meta, received, started).await;
        if let (Err(e), Some(key)) = (&result, staging) {
            // Nothing half-written stays: the upload goes (the sweep would otherwise) —
            // unless the commit's outcome is unknown: then the version may exist, and the
            // sweep (which never deletes what a version points at) decides.
            if !matches!(e, Error::CommitUnknown(_)) {
                self.discard_upload(&key).await;
            }
        }
        result
    }

    /// Stores the version row (and moves an uploaded object to its final key) in one
    /// transaction under the topic's lock.
    async fn commit_publish(
        &self,
        caller: &Caller,
        topic: &str,
        meta: PublishMeta,
        received: Received,
        started: std::time::Instant,
    ) -> Result<Published> {
        // Validation (JSON Schema, Apollo) is CPU work that grows with the payload: done
        // first, off the async threads and before the topic's lock is taken, against the
        // settings as they are now; re-checked under the lock below.
        let validated = {
            let mut conn = self.pool().acquire().await?;
            let pre = store::topics::require(&mut conn, topic, false).await?;
            drop(conn);
            caller.require_write(&pre.name, &pre.owner)?;
            let (size, content) = received_content(&received);
            if size > pre.max_size as u64 {
                return Err(Error::PayloadTooLarge { size, limit: pre.max_size as u64 });
            }
            let rules = Validation::of(&pre)?;
            if let Some(rules) = &rules {
                let Some(bytes) = content.cloned() else {
                    return Err(Error::PayloadTooLarge { size, limit: MAX_VALIDATED_BYTES });
                };
                let check = rules.clone();
                tokio::task::spawn_blocking(move || check.validate(&bytes))
                    .await
                    .map_err(|e| Error::Internal(format!("validation did not finish: {e}")))??;
            }
            rules
        };
        let mut tx = self.pool().begin().await?;
        // The row lock taken here serialises publishers of this topic until commit, and
        // the settings read with it (owner, limits, schema) cannot change before then.
        let t = store::topics::require(&mut tx, topic, true).await?;
        caller.require_write(&t.name, &t.owner)?;
        let plan = match meta.rollout {
            RolloutRequest::None => None,
            RolloutRequest::Plan(p) => Some(p),
            RolloutRequest::TopicDefault => t.default_plan.clone().map(PlanChoice::Named),
        };
        // With a rollout, the plan decides who gets the version; otherwise everyone does.
        let scopes: Vec<Selector> = match meta.scopes {
            None if plan.is_some() => vec![],
            None => vec![Selector::all()],
            Some(s) if s.len() > 64 => return Err(Error::invalid("at most 64 scopes per publish")),
            Some(s) => s.into_iter().collect::<BTreeSet<_>>().into_iter().collect(),
        };
        let (size, content) = match &received {
            Received::Inline(b) => {
                let size = b.len() as u64;
                if size > t.inline_limit as u64 {
                    return Err(Error::PayloadTooLarge { size, limit: t.inline_limit as u64 });
                }
                (size, Some(b))
            }
            Received::Object { size, content, .. } => (*size, content.as_ref()),
        };
        if size > t.max_size as u64 {
            return Err(Error::PayloadTooLarge { size, limit: t.max_size as u64 });
        }
        // Validated above against the settings read then; only when they changed since (a
        // schema set in between) is the payload validated again, here under the lock.
        let now_rules = Validation::of(&t)?;
        if now_rules.as_ref().map(Validation::key) != validated.as_ref().map(Validation::key) {
            if let Some(rules) = &now_rules {
                let Some(bytes) = content else {
                    return Err(Error::PayloadTooLarge { size, limit: MAX_VALIDATED_BYTES });
                };
                rules.validate(bytes)?;
            }
        }
        let content_type =
            meta.content_type.or(t.content_type.clone()).unwrap_or_else(|| meta.default_content_type.into());

        // Taken after the lock: a version is never dated before an older one committed.
        let created_at = self.now();
        let version = store::topics::next_version(&mut tx, t.id, created_at).await?;
        let who = caller.who();
        let (sha256, final_key) = match &received {
            Received::Inline(b) => (hex::encode(Sha256::digest(b)), None),
            Received::Object { key, owned: true, sha256, size, .. } if self.objects().can_move(*size) => {
                let to = self.objects().version_key(&t.name, version as u64, sha256);
                // Recorded before the move and claimed by this transaction: if the commit
                // does not happen, the sweep deletes the object.
                let later = created_at + chrono::Duration::hours(1);
                store::objects::mark(self.pool(), to.as_ref(), later, "publish").await?;
                self.objects().claim(key, &to).await?;
                // Durable before the version that names it commits.
                self.objects().sync(&to).await?;
                (sha256.clone(), Some(to))
            }
            Received::Object { key, sha256, owned, .. } => {
                if *owned {
                    self.objects().sync(key).await?;
                }
                (sha256.clone(), None)
            }
        };
        let stored = match &received {
            Received::Inline(b) => store::versions::StoredAt::Inline(b.as_ref()),
            Received::Object { key, owned, .. } => {
                store::versions::StoredAt::Object { key: final_key.as_ref().unwrap_or(key).as_ref(), owned: *owned }
            }
        };
        let committed = async {
            store::versions::insert(
                &mut tx,
                store::versions::NewVersion {
                    topic_id: t.id,
                    version,
                    created_at,
                    created_by: &who,
                    message: &meta.message,
                    metadata: &meta.metadata,
                    content_type: &content_type,
                    sha256: &sha256,
                    size,
                    stored,
                },
            )
            .await?;
            if let Received::Object { key, owned: true, .. } = &received {
                // The upload (and its final key) belong to this version now.
                let mut claimed = vec![key.to_string()];
                claimed.extend(final_key.as_ref().map(ToString::to_string));
                store::objects::unmark(&mut *tx, &claimed).await?;
            }
            store::versions::insert_scopes(&mut tx, t.id, version, &scopes, created_at, &who).await?;
            // A newer version supersedes any rollout of an older one.
            supersede_active(&mut tx, t.id, &t.name, version as u64, created_at, &who).await?;
            let rollout_id = match plan {
                Some(p) => Some(
                    crate::rollouts::start_tx(&mut tx, t.id, &t.name, version as u64, p, &who, created_at).await?,
                ),
                None => None,
            };
            let scope_keys: Vec<String> = scopes.iter().map(ToString::to_string).collect();
            let details = json!({
                "version": version,
                "size": size,
                "sha256": sha256,
                "content_type": content_type,
                "scopes": scope_keys,
                "message": meta.message,
                "rollout": rollout_id,
                "storage": if final_key.is_some() || matches!(received, Received::Object { .. }) { "object" } else { "inline" },
            });
            store::audit(&mut tx, created_at, &who, "version.publish", Some(&t.name), details).await?;
            let seq = store::notify(&mut tx, t.id).await?;
            // Applied below by this call: the notification need not reload it again here.
            let own = self.state().own_change(t.id, seq);
            tx.commit().await.map_err(Error::CommitUnknown)?;
            Ok::<_, Error>((rollout_id, own, seq))
        }
        .await;
        let (rollout_id, own, seq) = match committed {
            Ok(x) => x,
            Err(e) => {
                if let (Some(to), false) = (&final_key, matches!(e, Error::CommitUnknown(_))) {
                    self.discard_upload(to).await;
                }
                return Err(e);
            }
        };
        // A plain publish is applied in memory as it was written (no read-back); a
        // rollout's (its first stage) or one that raced another change is reloaded.
        let applied = match (rollout_id, scopes.is_empty(), imprint_domain::TopicName::parse(&t.name)) {
            (None, false, Ok(name)) => {
                let payload = match &received {
                    Received::Inline(b) => Some(b.clone()),
                    Received::Object { .. } => None,
                };
                let served = crate::serving::ServedVersion::new(
                    name,
                    version as u64,
                    content_type.clone(),
                    size,
                    sha256.clone(),
                    meta.metadata.clone(),
                    created_at,
                    payload,
                );
                self.state().apply_publish(t.name.as_str(), seq, served, &scopes)
            }
            _ => false,
        };
        if !applied {
            self.refresh_topic(t.id).await;
        }
        drop(own);
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
        let storage = if matches!(received, Received::Inline(_)) { "inline" } else { "object" };
        metrics::counter!("imprint_publishes_total", "storage" => storage).increment(1);
        metrics::counter!("imprint_published_bytes_total").increment(size);
        metrics::histogram!("imprint_publish_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(topic = %t.name, version, size, storage, "published");
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
            storage: storage.into(),
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
        self.require_direct_reader(caller)?;
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
                version_from_row(self.objects(), &t.name, r, s)
            })
            .collect();
        Ok(Page { items, next })
    }

    pub async fn version(&self, caller: &Caller, topic: &str, version: u64) -> Result<Version> {
        self.require_direct_reader(caller)?;
        let t = self.readable_topic(caller, topic).await?;
        let row = store::versions::get(self.pool(), t.id, version as i64)
            .await?
            .ok_or_else(|| Error::VersionNotFound { topic: t.name.clone(), version })?;
        let mut scopes = self.scopes_of(t.id, &[row.version]).await?;
        Ok(version_from_row(self.objects(), &t.name, row, scopes.remove(&(version as i64)).unwrap_or_default()))
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
        topic: &str,
        version: u64,
        selector: Selector,
    ) -> Result<(Scope, bool)> {
        let mut tx = self.pool().begin().await?;
        let t = store::topics::require(&mut tx, topic, true).await?;
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

    /// A topic's whole resolution history (for the console's scope matrix), read from
    /// Postgres; the caller must be allowed to read the topic.
    pub async fn topic_history(&self, caller: &Caller, topic: &str) -> Result<imprint_domain::TopicHistory> {
        let t = self.readable_topic(caller, topic).await?;
        let mut conn = self.pool().acquire().await?;
        self.history_of(&mut conn, t.id).await
    }

    /// A topic's present (live versions, their scopes, active pins), at most
    /// `MAX_HISTORY_ROWS` versions and pins of it — for the console's scope matrix, which
    /// must not read the whole history. `true`: rows were left out.
    pub async fn topic_present(&self, caller: &Caller, topic: &str) -> Result<(imprint_domain::TopicHistory, bool)> {
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
        topic: &str,
        labels: &Labels,
        at: Option<DateTime<Utc>>,
    ) -> Result<(Option<Resolution>, bool)> {
        let name = imprint_domain::TopicName::parse(topic)?;
        let t = self.state().get(name.as_str()).ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        caller.require_read(name.as_str(), &t.owner, t.restricted)?;
        self.require_poller(caller, labels.pairs())?;
        Ok(match at {
            None => (t.index.resolve(labels), false),
            Some(at) => {
                let mut tx = self.pool().begin_with(store::serving::BEGIN_SNAPSHOT).await?;
                let (snap, truncated) = store::history::at(&mut tx, t.id, at, store::history::MAX_HISTORY_ROWS).await?;
                tx.commit().await?;
                let h = crate::serving::histories(&snap).remove(&t.id).unwrap_or_default();
                (h.resolve_at(labels, at), truncated)
            }
        })
    }

    /// What a consumer with `labels` sees now (from memory), or saw at `at` (from a
    /// bounded part of the topic's history in Postgres, `resolve_bounded`).
    pub async fn resolve(
        &self,
        caller: &Caller,
        topic: &str,
        labels: &Labels,
        at: Option<DateTime<Utc>>,
    ) -> Result<Option<Resolution>> {
        Ok(self.resolve_bounded(caller, topic, labels, at).await?.0)
    }
}

/// The size and (when kept) the bytes of a received payload.
fn received_content(r: &Received) -> (u64, Option<&Bytes>) {
    match r {
        Received::Inline(b) => (b.len() as u64, Some(b)),
        Received::Object { size, content, .. } => (*size, content.as_ref()),
    }
}

/// What a topic's payloads must satisfy: its JSON Schema (compiled once per topic and
/// schema, `compiled`) and its Apollo namespace.
#[derive(Clone)]
struct Validation {
    topic: String,
    schema: Option<(String, Arc<jsonschema::Validator>)>,
    apollo_namespace: Option<String>,
}

impl Validation {
    fn of(t: &store::topics::TopicRef) -> Result<Option<Validation>> {
        if t.json_schema.is_none() && t.apollo_namespace.is_none() {
            return Ok(None);
        }
        Ok(Some(Validation {
            topic: t.name.clone(),
            schema: t.json_schema.as_ref().map(|s| compiled(t.id, s)).transpose()?,
            apollo_namespace: t.apollo_namespace.clone(),
        }))
    }

    /// Equal keys: the same rules (schema by its hash).
    fn key(&self) -> (Option<&str>, Option<&str>) {
        (self.schema.as_ref().map(|(h, _)| h.as_str()), self.apollo_namespace.as_deref())
    }

    fn validate(&self, bytes: &[u8]) -> Result<()> {
        if let Some((_, validator)) = &self.schema {
            validate_against(validator, bytes)?;
        }
        if let Some(ns) = &self.apollo_namespace {
            // Apollo clients read a properties namespace as flat key/values.
            imprint_domain::apollo::configurations(ns, bytes).map_err(|e| {
                Error::SchemaViolation(format!("{} is bound to Apollo namespace {ns:?}: {e}", self.topic))
            })?;
        }
        Ok(())
    }
}

/// Compiled schemas, by topic id and the schema's SHA-256: a schema is compiled once per
/// topic setting, not per publish. Small (a schema is at most `MAX_SCHEMA_BYTES`) and
/// emptied when it holds more than `MAX_COMPILED` of them.
static COMPILED: std::sync::LazyLock<std::sync::Mutex<HashMap<(i64, String), CompiledSchema>>> =
    std::sync::LazyLock::new(Default::default);
const MAX_COMPILED: usize = 1_000;

/// A stored schema compiles (it was checked when set); one that somehow does not refuses
/// every publish to the topic with the compiler's message.
type CompiledSchema = std::result::Result<Arc<jsonschema::Validator>, String>;

fn compiled(topic_id: i64, schema: &serde_json::Value) -> Result<(String, Arc<jsonschema::Validator>)> {
    let hash = hex::encode(Sha256::digest(schema.to_string().as_bytes()));
    let key = (topic_id, hash.clone());
    let mut cache = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.contains_key(&key) {
        if cache.len() >= MAX_COMPILED {
            cache.clear();
        }
        let v = jsonschema::validator_for(schema).map(Arc::new).map_err(|e| e.to_string());
        cache.insert(key.clone(), v);
    }
    match &cache[&key] {
        Ok(v) => Ok((hash, v.clone())),
        Err(e) => Err(Error::Internal(format!("stored schema does not compile: {e}"))),
    }
}

fn validate_against(validator: &jsonschema::Validator, payload: &[u8]) -> Result<()> {
    let parsed: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        Error::SchemaViolation(format!(
            "payload does not satisfy the topic's JSON Schema: the topic has a JSON Schema and the payload is not JSON: {e}"
        ))
    })?;
    let errors: Vec<String> =
        validator.iter_errors(&parsed).take(5).map(|e| format!("{} (at {})", e, e.instance_path)).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaViolation(format!("payload does not satisfy the topic's JSON Schema: {}", errors.join("; "))))
    }
}

fn version_from_row(objects: &crate::objects::Objects, topic: &str, r: VersionRow, scopes: Vec<Scope>) -> Version {
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
        purged: r.purged_at.is_some(),
        purged_at: r.purged_at,
        scopes,
    }
}
