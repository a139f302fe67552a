//! Publishing immutable versions: receiving and checksumming the payload, validating it
//! (`validation`), committing the version with its scopes and rollout. Reading versions
//! back, widening scopes and resolving are in `version_reads`.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::{PlanChoice, Published, RolloutRequest, Scope};
use crate::release_gate::{self, Gate, Holds};
use crate::rollouts::supersede_active;
use crate::store;
use crate::topics::check_content_type;
use crate::validation::Validation;
use bytes::Bytes;
use imprint_domain::{Selector, TopicName};
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
    /// The payload's SHA-256 as the publisher computed it: verified (422 `checksum_mismatch`).
    pub sha256: Option<String>,
    /// `force` with its reason: publish even if a `reject` check fails (docs/validation.md;
    /// who may publish may force; audited with the check results).
    pub force: Option<String>,
}

/// What change control adds to a publish's transaction (`release_gate::check`, and
/// `finish_release` in `change_control.rs`): the draft it releases, the change request it
/// applies, an admin's break-glass reason.
#[derive(Default)]
pub(crate) struct Control {
    pub draft: Option<i64>,
    pub request: Option<i64>,
    pub break_glass: Option<String>,
}

impl Control {
    /// A publish of its own (not a draft's release, a change request or a break glass).
    fn is_plain(&self) -> bool {
        self.draft.is_none() && self.request.is_none() && self.break_glass.is_none()
    }
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
    /// A pointer to an object that already exists in the configured store, and (several
    /// regions) the same object's URL in other regions' stores, by region.
    Object {
        url: String,
        locations: BTreeMap<String, String>,
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
        /// Written sealed (an at-rest topic's upload, docs/encryption.md).
        sealed: bool,
        /// Registered with `locations` (several regions): the same object's key in other
        /// regions' stores, by region, each checked (`inspect_registered`).
        located: Vec<(String, String)>,
        /// The region whose store `key` is in (None: home): an upload goes to its topic's
        /// own region (`regions::primary_region`).
        region: Option<String>,
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
    force: Option<String>,
}

pub(crate) fn check_metadata(m: &BTreeMap<String, String>) -> Result<()> {
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
pub(crate) fn check_sha256(s: &str) -> Result<String> {
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
    pub async fn publish(&self, caller: &Caller, topic: &TopicName, input: PublishInput) -> Result<Published> {
        self.publish_with(caller, topic, input, Control::default()).await
    }

    /// `publish`, with what change control (`change_control.rs`) adds to its transaction:
    /// the draft it releases, the request it applies, a break glass.
    pub(crate) async fn publish_with(
        &self,
        caller: &Caller,
        topic: &TopicName,
        input: PublishInput,
        control: Control,
    ) -> Result<Published> {
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
        if let Some(reason) = &input.force {
            if reason.trim().is_empty() || reason.chars().count() > 1000 {
                return Err(Error::invalid("force needs a force_reason of 1-1000 characters"));
            }
        }
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
            force: input.force,
        };
        let received = match input.payload {
            Payload::Text(s) => Received::Inline(Bytes::from(s)),
            Payload::Binary(b) => Received::Inline(b),
            Payload::Stream { body, len } => self.receive(caller, topic, body, len, expected.as_deref()).await?,
            Payload::Object { url, locations } => {
                self.inspect_registered(caller, topic, &url, &locations, expected.as_deref()).await?
            }
        };
        if let Received::Inline(b) = &received {
            verify_sha256(expected.as_deref(), &hex::encode(Sha256::digest(b)))?;
        }
        let staging = match &received {
            Received::Object { key, owned: true, region, .. } => Some((region.clone(), key.clone())),
            _ => None,
        };
        let result = self.commit_publish(caller, topic, meta, received, started, control).await;
        if let (Err(e), Some((region, key))) = (&result, staging) {
            // Nothing half-written stays: the upload goes (the sweep would otherwise) —
            // unless the commit's outcome is unknown: then the version may exist, and the
            // sweep (which never deletes what a version points at) decides; or it was
            // kept as a rejected version (`keep_rejected`), which may hold that key.
            if !matches!(e, Error::CommitUnknown(_) | Error::ValidationFailed { stored: Some(_), .. }) {
                self.discard_upload_in(region.as_deref(), &key).await;
            }
        }
        result
    }

    /// Stores the version row (and moves an uploaded object to its final key) in one
    /// transaction under the topic's lock.
    async fn commit_publish(
        &self,
        caller: &Caller,
        topic: &TopicName,
        meta: PublishMeta,
        received: Received,
        started: std::time::Instant,
        control: Control,
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
            let checks = store::checks::settings(self.pool(), pre.id).await?;
            let checked = if checks.checks.is_empty() {
                None
            } else {
                let content_type = meta
                    .content_type
                    .clone()
                    .or(pre.content_type.clone())
                    .unwrap_or_else(|| meta.default_content_type.into());
                let (sha256, object_key, sealed, object_region) = match &received {
                    Received::Inline(b) => (hex::encode(Sha256::digest(b)), None, false, None),
                    Received::Object { sha256, key, sealed, region, .. } => {
                        (sha256.clone(), Some(key.to_string()), *sealed, region.clone())
                    }
                };
                let at_rest = crate::sealed::at_rest_key(&mut *self.pool().acquire().await?, pre.id).await?;
                let who = caller.who();
                let input = crate::checks::CandidateInput {
                    topic_id: pre.id,
                    topic: &pre.name,
                    content_type: &content_type,
                    size,
                    sha256: &sha256,
                    metadata: &meta.metadata,
                    message: &meta.message,
                    created_by: &who,
                    bytes: content,
                    object_key: object_key.as_deref(),
                    object_region: object_region.as_deref(),
                    object_sealed: sealed,
                    at_rest: at_rest.as_deref(),
                };
                let c = self.run_checks(&checks, &input).await?;
                if let (Some(why), None) = (imprint_domain::checks::rejection(&c.results), &meta.force) {
                    // Kept for its owner (`keep_rejected`) on a plain publish only: a
                    // draft's release or a change request leaves its draft to look at.
                    if !(checks.keep_rejected && control.is_plain()) {
                        return Err(Error::ValidationFailed { message: why, results: c.results, stored: None });
                    }
                }
                Some((checks, c))
            };
            (rules, checked)
        };
        let (validated, mut checked) = validated;
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
        // An upload went to the topic's own region as it was then: it must still be (under
        // the lock: the topic's regions cannot change before this version commits).
        let objects = match &received {
            Received::Object { owned: true, region, .. } => {
                let (now, objects) = self.upload_region(&mut tx, t.id).await?;
                if now != *region {
                    return Err(Error::Conflict(
                        "the topic's regions changed while this payload was uploaded; publish again".into(),
                    ));
                }
                objects
            }
            _ => self.objects().clone(),
        };
        // End-to-end topics take age files for their recipients only (under the lock: the
        // setting cannot change before this version commits).
        let at = match &received {
            Received::Inline(b) => crate::encryption::PayloadAt::Inline(b),
            Received::Object { key, size, .. } => {
                crate::encryption::PayloadAt::Object { key, size: *size, objects: &objects }
            }
        };
        self.check_encrypted_payload(&mut tx, t.id, at).await?;
        // At rest (under the lock: the setting cannot change before this version commits):
        // an upload was sealed as it streamed, and must have been sealed exactly when the
        // topic is at rest now; an inline payload is sealed here.
        let at_rest = crate::sealed::at_rest_key(&mut tx, t.id).await?;
        match &received {
            Received::Object { owned: false, .. } if at_rest.is_some() => {
                Self::refuse_registered_at_rest(&mut tx, t.id).await?;
            }
            Received::Object { sealed, owned: true, .. } if *sealed != at_rest.is_some() => {
                return Err(Error::Conflict(
                    "the topic's encryption changed while this payload was uploaded; publish again".into(),
                ));
            }
            _ => {}
        }
        let sealed_inline = match (&received, &at_rest) {
            (Received::Inline(b), Some(k)) => Some(self.seal_bytes(k, b).await?),
            _ => None,
        };
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
        // Checked above against the settings and the previous version as they were then:
        // changed settings mean checking again; a newer previous version (another publish
        // got in between) means the local checks again, here under the lock.
        let settings_now = store::checks::settings(&mut *tx, t.id).await?;
        let keep_rejected = settings_now.keep_rejected && control.is_plain();
        if settings_now.checks != checked.as_ref().map(|c| c.0.checks.clone()).unwrap_or_default() {
            return Err(Error::Conflict(
                "the topic's checks changed while this version was being checked; publish again".into(),
            ));
        }
        if let Some((settings, c)) = &mut checked {
            let prev = crate::checks::previous(self, &mut tx, t.id).await?;
            if prev.as_ref().map(|p| p.version) != c.previous {
                let external: Vec<_> = c
                    .results
                    .iter()
                    .filter(|r| r.kind == imprint_domain::checks::CheckKind::External)
                    .cloned()
                    .collect();
                let bytes = match &received {
                    Received::Inline(b) => Some(b),
                    Received::Object { content, .. } => content.as_ref(),
                };
                let who = caller.who();
                let input = crate::checks::CandidateInput {
                    topic_id: t.id,
                    topic: &t.name,
                    content_type: &content_type,
                    size,
                    sha256: "",
                    metadata: &meta.metadata,
                    message: &meta.message,
                    created_by: &who,
                    bytes,
                    object_key: None,
                    object_region: None,
                    object_sealed: false,
                    at_rest: None,
                };
                let local = crate::checks::local_results(&settings.checks, &input, prev.as_ref());
                c.results = crate::checks::merged(local, &external);
                c.previous = prev.map(|p| p.version);
            }
        }
        // Rejected (and not forced): refused, or kept unreleased with `keep_rejected`.
        let rejected = match &checked {
            Some((_, c)) if meta.force.is_none() => imprint_domain::checks::rejection(&c.results),
            _ => None,
        };
        if let (Some(why), false, Some((_, c))) = (&rejected, keep_rejected, &checked) {
            return Err(Error::ValidationFailed { message: why.clone(), results: c.results.clone(), stored: None });
        }
        // A rejected version is released to nobody, whatever the publish asked.
        let (scopes, plan) = if rejected.is_some() { (Vec::new(), None) } else { (scopes, plan) };
        // Change control: a release inside a freeze, or unreviewed on a reviewed topic, stops here.
        let holds = if !scopes.is_empty() || plan.is_some() { Holds::FreezeAndReview } else { Holds::Nothing };
        let gate = Gate { request: control.request, break_glass: control.break_glass.clone() };
        release_gate::check(&mut tx, t.id, &t.name, &t.owner, caller, &gate, holds, self.now()).await?;

        // Taken after the lock: a version is never dated before an older one committed.
        let created_at = self.now();
        let version = if rejected.is_some() {
            store::topics::next_rejected_version(&mut tx, t.id).await?
        } else {
            store::topics::next_version(&mut tx, t.id, created_at).await?
        };
        let who = caller.who();
        let (sha256, final_key) = match &received {
            Received::Inline(b) => (hex::encode(Sha256::digest(b)), None),
            Received::Object { key, owned: true, sha256, size, region, .. } if objects.can_move(*size) => {
                let to = objects.version_key(&t.name, version as u64, sha256);
                // Recorded before the move and claimed by this transaction: if the commit
                // does not happen, the sweep deletes the object.
                let later = created_at + chrono::Duration::hours(1);
                store::objects::mark_in(
                    self.pool(),
                    region.as_deref().unwrap_or_default(),
                    to.as_ref(),
                    later,
                    "publish",
                )
                .await?;
                objects.claim(key, &to).await?;
                // Durable before the version that names it commits.
                objects.sync(&to).await?;
                (sha256.clone(), Some(to))
            }
            Received::Object { key, sha256, owned, .. } => {
                if *owned {
                    objects.sync(key).await?;
                }
                (sha256.clone(), None)
            }
        };
        // Several regions (docs/regions.md): the object is in the home region now; the
        // first `min_regions - 1` other regions get their copy here, before the commit,
        // the rest are queued for the worker.
        let copies = match &received {
            Received::Object { key, owned: true, region, .. } if self.config().regions.several() => {
                let own_key = final_key.as_ref().unwrap_or(key);
                let sealed = at_rest.is_some();
                self.copy_before_commit(&mut tx, t.id, region.as_deref(), own_key, &sha256, sealed, created_at).await?
            }
            Received::Object { key, located, .. } if self.config().regions.several() => {
                // A registered object: home, and the regions its publish named it in (each
                // still one of the topic's regions, read under the lock).
                let (list, min) = store::copies::topic_settings(&mut tx, t.id).await?;
                let (list, _) = crate::regions::topic_regions(&self.config().regions, list.as_deref(), min);
                let home = self.config().regions.home().to_owned();
                let mut rows = vec![(home, final_key.as_ref().unwrap_or(key).to_string(), true)];
                for (region, key) in located {
                    crate::regions::check_location_region(&self.config().regions, &list, region)?;
                    rows.push((region.clone(), key.clone(), true));
                }
                rows
            }
            _ => Vec::new(),
        };
        let stored = match &received {
            Received::Inline(b) => store::versions::StoredAt::Inline(sealed_inline.as_deref().unwrap_or(b.as_ref())),
            Received::Object { key, owned, region, .. } => store::versions::StoredAt::Object {
                key: final_key.as_ref().unwrap_or(key).as_ref(),
                owned: *owned,
                region: region.as_deref(),
            },
        };
        let sealed = at_rest.is_some();
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
                    sealed,
                    rejected: rejected.is_some(),
                },
            )
            .await?;
            if let Received::Object { key, owned: true, region, .. } = &received {
                // The upload (and its final key) belong to this version now.
                let mut claimed = vec![key.to_string()];
                claimed.extend(final_key.as_ref().map(ToString::to_string));
                store::objects::unmark_in(&mut *tx, region.as_deref().unwrap_or_default(), &claimed).await?;
            }
            if !copies.is_empty() {
                store::copies::insert(&mut tx, t.id, version, &copies, created_at).await?;
                for (region, key, done) in &copies {
                    if *done && region != self.config().regions.home() {
                        store::objects::unmark_in(&mut *tx, region, std::slice::from_ref(key)).await?;
                    }
                }
            }
            if let (Some(why), Some((_, c))) = (&rejected, &checked) {
                // Kept unreleased for its owner (`keep_rejected`): its results, an audit
                // entry (`version.reject`, the `version.rejected` event), nothing else —
                // no scope, no rollout, and no rollout of an older version superseded.
                let vc = crate::model::VersionChecks { results: c.results.clone(), forced_by: None, force_reason: None };
                store::checks::insert_results(&mut tx, t.id, version, &vc, c.records).await?;
                let details = json!({"version": version, "size": size, "sha256": sha256, "content_type": content_type,
                                     "message": meta.message, "rejected_by": why, "checks": c.results});
                store::audit(&mut tx, created_at, &who, "version.reject", Some(&t.name), details).await?;
                store::notify(&mut tx, t.id).await?;
                tx.commit().await.map_err(Error::CommitUnknown)?;
                return Ok(None);
            }
            store::versions::insert_scopes(&mut tx, t.id, version, &scopes, created_at, &who).await?;
            if let Some((_, c)) = &checked {
                let overridden = imprint_domain::checks::rejection(&c.results);
                let forced = overridden.as_ref().and(meta.force.clone());
                let vc = crate::model::VersionChecks {
                    results: c.results.clone(),
                    forced_by: forced.as_ref().map(|_| who.clone()),
                    force_reason: forced.clone(),
                };
                store::checks::insert_results(&mut tx, t.id, version, &vc, c.records).await?;
                if let (Some(why), Some(reason)) = (overridden, forced) {
                    let details = json!({"version": version, "reason": reason, "rejected_by": why, "checks": c.results});
                    store::audit(&mut tx, created_at, &who, "version.force", Some(&t.name), details).await?;
                }
            }
            // A newer version supersedes any rollout of an older one.
            supersede_active(&mut tx, t.id, &t.name, version as u64, created_at, &who).await?;
            let rollout_id = match plan {
                Some(p) => Some(
                    crate::rollouts::start_tx(&mut tx, t.id, &t.name, version as u64, p, &who, created_at, self.config().prometheus.is_some())
                        .await?,
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
            let mut details = details;
            if let (Some(k), Some(map)) = (&at_rest, details.as_object_mut()) {
                map.insert("sealed_with".into(), json!(k));
            }
            // The checks' results and change control's marks, only when there are any
            // (docs/validation.md, docs/change-control.md).
            for (k, v) in [
                ("checks", checked.as_ref().map(|(_, c)| json!(c.results))),
                ("draft", control.draft.map(|d| json!(d))),
                ("change_request", control.request.map(|r| json!(r))),
                ("break_glass", control.break_glass.as_ref().map(|r| json!(r))),
            ] {
                if let (Some(v), Some(map)) = (v, details.as_object_mut()) {
                    map.insert(k.to_owned(), v);
                }
            }
            self.finish_release(&mut tx, &t, &control, version, &who, created_at).await?;
            store::audit(&mut tx, created_at, &who, "version.publish", Some(&t.name), details).await?;
            let seq = store::notify(&mut tx, t.id).await?;
            // Applied below by this call: the notification need not reload it again here.
            let own = self.state().own_change(t.id, seq);
            tx.commit().await.map_err(Error::CommitUnknown)?;
            Ok::<_, Error>(Some((rollout_id, own, seq)))
        }
        .await;
        let (rollout_id, own, seq) = match committed {
            Ok(Some(x)) => x,
            Ok(None) => {
                // Stored as rejected: the publish still fails, naming the kept version.
                self.refresh_topic(t.id).await;
                metrics::counter!("imprint_versions_rejected_kept_total").increment(1);
                tracing::info!(topic = %t.name, version, "rejected by its checks; kept unreleased");
                let results = checked.map(|(_, c)| c.results).unwrap_or_default();
                let message = rejected.unwrap_or_default();
                return Err(Error::ValidationFailed { message, results, stored: Some(version as u64) });
            }
            Err(e) => {
                if let (Some(to), false) = (&final_key, matches!(e, Error::CommitUnknown(_))) {
                    let region = match &received {
                        Received::Object { region, .. } => region.as_deref(),
                        Received::Inline(_) => None,
                    };
                    self.discard_upload_in(region, to).await;
                }
                return Err(e);
            }
        };
        // A plain publish is applied in memory as it was written (no read-back); a
        // rollout's (its first stage) or one that raced another change is reloaded.
        let applied = match (rollout_id, scopes.is_empty()) {
            (None, false) => {
                let payload = match &received {
                    Received::Inline(b) => Some(b.clone()),
                    Received::Object { .. } => None,
                };
                let served = crate::serving::ServedVersion::new(
                    topic.clone(),
                    version as u64,
                    content_type.clone(),
                    size,
                    sha256.clone(),
                    meta.metadata.clone(),
                    created_at,
                    payload,
                )
                .with_sealed(sealed)
                .with_regions(
                    {
                        let held: Vec<String> = copies.iter().filter(|c| c.2).map(|c| c.0.clone()).collect();
                        crate::regions::order_for(self.state().regions(), &held, None)
                    },
                    self.state().region_urls().clone(),
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
            Some(id) => Some(self.rollout(caller, topic, id).await?),
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
            warnings: checked.as_ref().map(|(_, c)| c.warnings()).unwrap_or_default(),
            checks: checked.map(|(_, c)| {
                let forced = imprint_domain::checks::rejection(&c.results).and(meta.force);
                crate::model::VersionChecks {
                    results: c.results,
                    forced_by: forced.as_ref().map(|_| who.clone()),
                    force_reason: forced,
                }
            }),
        })
    }
}

/// The size and (when kept) the bytes of a received payload.
fn received_content(r: &Received) -> (u64, Option<&Bytes>) {
    match r {
        Received::Inline(b) => (b.len() as u64, Some(b)),
        Received::Object { size, content, .. } => (*size, content.as_ref()),
    }
}

impl Imprint {
    /// Copies a new version's object from its own region (`from`: where it was uploaded;
    /// None: home) to the other regions its topic needs before the version may commit
    /// (`min_regions`), verifying each copy; returns every region the object goes to, with
    /// its key and whether it holds it now.
    #[allow(clippy::too_many_arguments)]
    async fn copy_before_commit(
        &self,
        tx: &mut sqlx::PgConnection,
        topic_id: i64,
        from: Option<&str>,
        home_key: &object_store::path::Path,
        sha256: &str,
        sealed: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(String, String, bool)>> {
        let regions = &self.config().regions;
        let (list, min) = store::copies::topic_settings(&mut *tx, topic_id).await?;
        let (list, min) = crate::regions::topic_regions(regions, list.as_deref(), min);
        let own = from.unwrap_or(regions.home()).to_owned();
        let source = self
            .region_objects(from.unwrap_or_default())
            .ok_or_else(|| Error::Internal(format!("region {own:?} is not configured")))?;
        let mut out = vec![(own.clone(), home_key.to_string(), true)];
        // The others in preference order: the preferred ones are the required ones.
        let others: Vec<&String> = regions.ranked().iter().filter(|r| **r != own && list.contains(r)).collect();
        for (i, region) in others.into_iter().enumerate() {
            let Some(to) = self.region_objects(region) else { continue };
            let key = crate::regions::key_in(source, to, home_key.as_ref());
            let now_needed = i + 1 < min;
            if now_needed {
                // Recorded first: if the commit does not happen, the sweep deletes it.
                let later = now + chrono::Duration::hours(1);
                // (Home is never a target: a topic that has it streams there.)
                store::objects::mark_in(self.pool(), region, key.as_ref(), later, "publish").await?;
                self.copy_checked(source, home_key, to, &key, sha256, sealed).await.map_err(|e| {
                    Error::ObjectStoreUnavailable(format!(
                        "region {region} must hold the object before the version commits (min_regions {min}): {e}"
                    ))
                })?;
            }
            out.push((region.clone(), key.to_string(), now_needed));
        }
        Ok(out)
    }
}
