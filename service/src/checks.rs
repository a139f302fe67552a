//! Pre-release checks (docs/validation.md): a topic's ordered checks run on every publish
//! before the version commits — the local ones (`imprint_domain::checks::evaluate`) and
//! external validators, webhooks signed as webhook events are (Standard Webhooks) that
//! get the candidate's metadata and a short-lived download URL and answer accept or
//! reject. The topic setting (`checks`, `on_failure`) is read and written here too.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::model::VersionChecks;
use crate::store;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use imprint_domain::checks::{
    self as rules, Candidate, Check, CheckKind, CheckResult, ExternalOutcome, OnFailure, Previous, TopicChecks,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// The most of a validator's answer that is read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// A download URL stays usable this long after the validator's timeout.
const DOWNLOAD_GRACE: Duration = Duration::from_secs(30);
/// The path candidates are downloaded under (the server's route, `server/src/api/checks.rs`).
pub const CANDIDATE_PATH: &str = "/api/v1/validation/candidates/";

/// A checks setting as a request gives it, made ready to store: each check valid, an
/// external URL as webhook URLs are (no credentials, public unless `allow_private`, which
/// only administrators may set), and a secret sent back as `********` replaced by the
/// stored one of the same external check (same place, same URL).
pub(crate) fn checked(caller: &Caller, checks: Vec<Check>, stored: &[Check]) -> Result<Vec<Check>> {
    let mut out = Vec::with_capacity(checks.len());
    for (i, mut c) in checks.into_iter().enumerate() {
        if c.secret.as_deref() == Some(rules::REDACTED) {
            let same = stored.get(i).filter(|s| s.kind == CheckKind::External && s.url == c.url);
            c.secret = Some(same.and_then(|s| s.secret.clone()).ok_or_else(|| {
                Error::invalid(format!(
                    "checks[{i}]: secret {:?} keeps the stored secret only for the same external check (same place and url)",
                    rules::REDACTED
                ))
            })?);
        }
        if c.kind == CheckKind::External {
            if c.allow_private && !caller.is_admin() {
                let kept = stored.get(i).is_some_and(|s| s.allow_private && s.url == c.url);
                if !kept {
                    return Err(Error::Forbidden(format!(
                        "checks[{i}]: allow_private (a validator on a private address) is set by administrators only"
                    )));
                }
            }
            if let Some(url) = &c.url {
                crate::webhooks::check_url(url, c.allow_private)
                    .map_err(|e| Error::invalid(format!("checks[{i}]: {}", e.public_message())))?;
            }
        }
        out.push(c);
    }
    Check::validate_all(&out).map_err(|e| Error::invalid(e.to_string()))?;
    Ok(out)
}

/// Only the scheme, host and port of a URL.
pub(crate) fn origin_only(u: &str) -> String {
    url::Url::parse(u).map(|u| u.origin().ascii_serialization()).unwrap_or_default()
}

/// The candidate a publish offers the checks.
pub(crate) struct CandidateInput<'a> {
    pub topic_id: i64,
    pub topic: &'a str,
    pub content_type: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    pub message: &'a str,
    pub created_by: &'a str,
    /// The bytes, when held in memory.
    pub bytes: Option<&'a Bytes>,
    /// Where the bytes are otherwise (an upload's staging key or a registered object).
    pub object_key: Option<&'a str>,
    /// The region `object_key` is in (None: home).
    pub object_region: Option<&'a str>,
    /// That object was written sealed (an at-rest upload).
    pub object_sealed: bool,
    /// The key an at-rest topic seals under: bytes kept for validators are sealed too.
    pub at_rest: Option<&'a str>,
}

/// What the checks found: every result (in the topic's order), the candidate's record
/// count (stored for the next publish to compare with), and the previous version used.
pub(crate) struct Checked {
    pub results: Vec<CheckResult>,
    pub records: Option<u64>,
    pub previous: Option<u64>,
}

impl Checked {
    pub fn warnings(&self) -> Vec<String> {
        self.results.iter().filter(|r| r.warns()).map(|r| format!("{}: {}", r.kind.as_str(), r.message)).collect()
    }
}

/// The previous version as the local checks need it.
pub(crate) async fn previous(
    imprint: &Imprint,
    conn: &mut sqlx::PgConnection,
    topic_id: i64,
) -> Result<Option<Previous>> {
    let Some(p) = store::checks::previous(conn, topic_id).await? else { return Ok(None) };
    let inline = match p.inline_data {
        Some(b) => Some(imprint.open_bytes(Bytes::from(b), p.sealed).await?),
        None => None,
    };
    let records = match (p.records, inline) {
        (Some(r), _) => Some(r as u64),
        (None, Some(bytes)) => tokio::task::spawn_blocking(move || rules::record_count(&bytes))
            .await
            .map_err(|e| Error::Internal(format!("record count: {e}")))?,
        (None, None) => None,
    };
    Ok(Some(Previous { version: p.version as u64, size: p.size as u64, records }))
}

/// The local checks' results against `prev`, by the check's place.
pub(crate) fn local_results(checks: &[Check], c: &CandidateInput<'_>, prev: Option<&Previous>) -> Vec<CheckResult> {
    let cand = Candidate { content_type: c.content_type, size: c.size, bytes: c.bytes.map(|b| b.as_ref()) };
    checks.iter().enumerate().filter_map(|(i, check)| rules::evaluate(i, check, &cand, prev)).collect()
}

/// Puts external results back among the local ones, in the topic's order.
pub(crate) fn merged(mut local: Vec<CheckResult>, external: &[CheckResult]) -> Vec<CheckResult> {
    local.extend(external.iter().cloned());
    local.sort_by_key(|r| r.index);
    local
}

impl Imprint {
    /// A topic's checks settings, secrets redacted (what a topic's page shows).
    pub(crate) async fn shown_checks(&self, topic: &str) -> Result<(Vec<Check>, OnFailure, bool)> {
        let s = store::checks::settings_by_name(self.pool(), topic).await?;
        Ok((s.checks.iter().map(Check::redacted).collect(), s.on_failure, s.keep_rejected))
    }

    /// The check results of some versions of a topic.
    pub(crate) async fn version_checks(
        &self,
        topic_id: i64,
        versions: &[i64],
    ) -> Result<std::collections::HashMap<i64, VersionChecks>> {
        store::checks::results_of(self.pool(), topic_id, versions).await
    }

    /// Runs every check of `settings` on the candidate: the local ones, then the external
    /// validators (concurrently, each within its timeout), before any lock is taken.
    pub(crate) async fn run_checks(&self, settings: &TopicChecks, c: &CandidateInput<'_>) -> Result<Checked> {
        let prev = {
            let mut conn = self.pool().acquire().await?;
            previous(self, &mut conn, c.topic_id).await?
        };
        let records = match c.bytes {
            Some(b) => {
                let b = b.clone();
                tokio::task::spawn_blocking(move || rules::record_count(&b))
                    .await
                    .map_err(|e| Error::Internal(format!("record count: {e}")))?
            }
            None => None,
        };
        let local = local_results(&settings.checks, c, prev.as_ref());
        let external = self.run_external(&settings.checks, c, prev.as_ref()).await?;
        Ok(Checked { results: merged(local, &external), records, previous: prev.map(|p| p.version) })
    }

    /// The external validators' results (none when the topic has no external check).
    pub(crate) async fn run_external(
        &self,
        checks: &[Check],
        c: &CandidateInput<'_>,
        prev: Option<&Previous>,
    ) -> Result<Vec<CheckResult>> {
        let externals: Vec<(usize, &Check)> =
            checks.iter().enumerate().filter(|(_, k)| k.kind == CheckKind::External).collect();
        if externals.is_empty() {
            return Ok(Vec::new());
        }
        // One download URL for the candidate, valid for the longest timeout (and a grace).
        let longest = externals.iter().map(|(_, k)| k.timeout_ms()).max().unwrap_or(rules::DEFAULT_TIMEOUT_MS);
        let expires_at = self.now()
            + chrono::Duration::from_std(Duration::from_millis(longest) + DOWNLOAD_GRACE)
                .unwrap_or(chrono::Duration::minutes(1));
        let token = {
            use rand::RngCore;
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        };
        let token_sha256 = hex::encode(Sha256::digest(token.as_bytes()));
        // An object is served from the store, not copied into Postgres; bytes kept in
        // Postgres for an at-rest topic are sealed like its versions.
        let inline = match (c.object_key, c.bytes, c.at_rest) {
            (Some(_), _, _) | (None, None, _) => None,
            (None, Some(b), None) => Some(b.clone()),
            (None, Some(b), Some(k)) => Some(self.seal_bytes(k, b).await?),
        };
        let sealed = if c.object_key.is_some() { c.object_sealed } else { c.at_rest.is_some() };
        store::checks::insert_candidate(
            self.pool(),
            store::checks::NewCandidate {
                token_sha256: &token_sha256,
                topic_id: c.topic_id,
                content_type: c.content_type,
                sha256: c.sha256,
                size: c.size,
                inline_data: inline.as_deref(),
                object_key: c.object_key,
                object_region: c.object_region,
                sealed,
                expires_at,
            },
            self.now(),
        )
        .await?;
        let base = self.inner.public_url.get().cloned().unwrap_or_else(|| "http://127.0.0.1".into());
        let download_url = format!("{}{CANDIDATE_PATH}{token}", base.trim_end_matches('/'));
        let body = json!({
            "type": "imprint.validation.request",
            "topic": c.topic,
            "candidate": {
                "content_type": c.content_type,
                "size": c.size,
                "sha256": c.sha256,
                "metadata": c.metadata,
                "message": c.message,
                "published_by": c.created_by,
            },
            "previous": prev.map(|p| json!({"version": p.version, "size": p.size})),
            "download_url": download_url,
            "download_expires_at": expires_at,
        });
        let body = serde_json::to_vec(&body).map_err(|e| Error::Internal(format!("validation request: {e}")))?;
        let calls = externals.iter().map(|(i, k)| async {
            let outcome = call(k, &body, self.now()).await;
            rules::external_result(*i, k, outcome)
        });
        let results = futures::future::join_all(calls).await;
        // The URL is good for this publish only.
        if let Err(e) = store::checks::delete_candidate(self.pool(), &token_sha256).await {
            tracing::warn!(error = %e, "a validation candidate stays until it expires");
        }
        Ok(results)
    }
}

/// One validator call: the signed POST, and its answer (bounded) as an outcome.
async fn call(check: &Check, body: &[u8], now: DateTime<Utc>) -> ExternalOutcome {
    let timeout = Duration::from_millis(check.timeout_ms());
    let (Some(url), Some(secret)) = (check.url.as_deref(), check.secret.as_deref()) else {
        return ExternalOutcome::Unreachable("the check has no url or secret".into());
    };
    let url = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return ExternalOutcome::Unreachable(format!("url: {e}")),
    };
    if !check.allow_private {
        if let Some(why) = crate::webhooks::refused_literal(&url) {
            return ExternalOutcome::Unreachable(why);
        }
    }
    let client = match crate::webhooks::outbound_client(timeout, check.allow_private) {
        Ok(c) => c,
        Err(e) => return ExternalOutcome::Unreachable(e.public_message()),
    };
    let id = {
        use rand::RngCore;
        let mut b = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut b);
        format!("val_{}", hex::encode(b))
    };
    let ts = now.timestamp();
    let signature = match crate::webhooks::signature_header(&[secret], &id, ts, body) {
        Ok(s) => s,
        Err(e) => return ExternalOutcome::Unreachable(e.public_message()),
    };
    let req = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec());
    let attempt = async {
        let mut resp = match req.send().await {
            Err(e) if e.is_timeout() => return ExternalOutcome::TimedOut,
            Err(e) => return ExternalOutcome::Unreachable(crate::error::error_chain(&e)),
            Ok(r) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let redirect = if status.is_redirection() { " (redirects are not followed)" } else { "" };
            return ExternalOutcome::Unreachable(format!("answered {status}{redirect}"));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    buf.extend_from_slice(&c);
                    if buf.len() > MAX_ANSWER_BYTES {
                        return ExternalOutcome::Unreachable(format!("answer longer than {MAX_ANSWER_BYTES} bytes"));
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return ExternalOutcome::TimedOut,
                Err(e) => return ExternalOutcome::Unreachable(crate::error::error_chain(&e)),
            }
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            accept: bool,
            #[serde(default)]
            reason: Option<String>,
        }
        match serde_json::from_slice::<Answer>(&buf) {
            Ok(a) => ExternalOutcome::Answered { accept: a.accept, reason: a.reason.unwrap_or_default() },
            Err(e) => ExternalOutcome::Unreachable(format!(
                "the answer is not {{\"accept\": bool, \"reason\": \"...\"}}: {e}"
            )),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(o) => o,
        Err(_) => ExternalOutcome::TimedOut,
    }
}
