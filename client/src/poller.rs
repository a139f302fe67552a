//! The background task: one batched (long) poll for every subscription of a client,
//! then each update fetched, verified and applied, and its outcome reported on the next
//! poll. Failures back off; versions that fail to apply are not tried again until the
//! server offers another.
use crate::cache::{unix_now, CacheMeta, Store};
use crate::client::Inner;
use crate::error::{Error, Result};
use crate::fetch::{fetch, Failure, Fetched};
use crate::subscription::{Data, Payload, Slot, Source};
use imprint_protocol::{Applied as AppliedReport, PollRequest, PollResponse, Update, VersionList};
use reqwest::Method;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// The server's hint, but never more than this (a bad hint must not stall a node).
const MAX_POLL_AFTER: Duration = Duration::from_secs(300);

/// Exponential backoff with full jitter in the upper half: `[d/2, d]`, `d` doubling.
struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.failures.min(20)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

enum Stop {
    Stopped,
    NewSubscription,
}

/// Sleeps `d`, or less when the client stops or (`wake`) a topic is subscribed.
async fn pause(inner: &Inner, d: Duration, generation: u64, wake: bool) -> Option<Stop> {
    let mut stop = inner.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        _ = stop.wait_for(|s| *s) => Some(Stop::Stopped),
        _ = inner.subscribed_since(generation), if wake => Some(Stop::NewSubscription),
    }
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let s = &inner.settings;
    let mut backoff = Backoff { min: s.min_backoff, max: s.max_backoff, failures: 0 };
    let mut next_recheck: Option<Instant> = None;
    loop {
        if inner.stopped() {
            break;
        }
        let generation = inner.generation.load(Ordering::SeqCst);
        let slots = inner.live_slots();
        if slots.is_empty() {
            match pause(&inner, Duration::from_secs(3600), generation, true).await {
                Some(Stop::Stopped) => break,
                _ => continue,
            }
        }
        // Which topics to ask about: all of them, except those stuck on a rejected
        // version (the server would answer at once with it) until their recheck is due.
        let now = Instant::now();
        let any_stuck = slots.iter().any(|s| s.state().stuck);
        let recheck_due = any_stuck && next_recheck.is_none_or(|t| t <= now);
        let asked: Vec<Arc<dyn Slot>> = slots
            .into_iter()
            .filter(|s| {
                let st = s.state();
                !st.stuck || recheck_due || st.report.is_some()
            })
            .collect();
        if asked.is_empty() {
            let until = next_recheck.map(|t| t.saturating_duration_since(now)).unwrap_or(s.recheck_rejected);
            match pause(&inner, until, generation, true).await {
                Some(Stop::Stopped) => break,
                _ => continue,
            }
        }
        // A short poll when something needs an answer now: a new subscription, or a
        // stuck topic (answered at once anyway). Otherwise a long one, held at most
        // until the next recheck.
        let short = asked.iter().any(|s| !s.is_settled() || s.state().stuck);
        let mut wait = if short { Duration::ZERO } else { s.long_poll };
        if let (false, Some(t)) = (short, next_recheck.filter(|_| any_stuck)) {
            wait = wait.min(t.saturating_duration_since(now));
        }
        if recheck_due {
            next_recheck = Some(now + s.recheck_rejected);
        }
        let req = request(&inner, &asked, wait);
        let span = tracing::debug_span!("imprint_client.poll", topics = asked.len(), wait_ms = wait.as_millis() as u64);
        let mut stop = inner.stop.clone();
        let result = tokio::select! {
            r = send_poll(&inner, &req, wait).instrument(span.clone()) => r,
            _ = stop.wait_for(|s| *s) => break,
            // A new topic: ask again at once, with it (the open poll is abandoned).
            _ = inner.subscribed_since(generation) => continue,
        };
        let delay = match result {
            Ok(resp) => {
                metrics::gauge!("imprint_client_last_poll_success_seconds").set(unix_now() as f64);
                backoff.reset();
                for slot in &asked {
                    // Reports went through: forget them, unless a newer one replaced them.
                    let mut st = slot.state();
                    if st.report.as_ref() == req.applied.get(slot.topic()) {
                        st.report = None;
                    }
                }
                let mut transient = false;
                for slot in &asked {
                    let topic = slot.topic();
                    if let Some(update) = resp.updates.get(topic) {
                        if let Err(e) = handle_update(&inner, slot, update).await {
                            tracing::warn!(topic, version = update.version, error = %e, "cannot fetch the update; will retry");
                            metrics::counter!("imprint_client_poll_errors_total", "kind" => "download").increment(1);
                            transient = true;
                        }
                    } else if let Some(reason) = resp.missing.get(topic) {
                        // Nothing is offered any more (not even the rejected version).
                        slot.state().stuck = false;
                        let level_warn = reason != "no_version_in_scope";
                        if level_warn && !slot.is_settled() {
                            tracing::warn!(topic, reason, "the server has nothing for this topic");
                        } else {
                            tracing::debug!(topic, reason, "nothing for this topic");
                        }
                    } else {
                        // Up to date: what we hold is what we should hold.
                        slot.confirm();
                        slot.state().stuck = false;
                    }
                    slot.settle();
                }
                if asked.iter().any(|s| s.state().stuck) {
                    next_recheck = Some(Instant::now() + s.recheck_rejected);
                }
                if inner.stopped() {
                    break;
                }
                // The server's pause is for short pollers; a poll made short here (a new or
                // stuck topic) is followed by a long one at once.
                let hint = if short && !s.long_poll.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_millis(resp.poll_after_ms).min(MAX_POLL_AFTER)
                };
                if transient {
                    hint.max(backoff.next())
                } else {
                    hint
                }
            }
            Err(e) => {
                // The server is unreachable: subscriptions with nothing to start from
                // (no cache) read their object-store snapshot, once.
                #[cfg(feature = "snapshots")]
                if let (true, Some(snapshots)) = (e.is_transient(), &inner.snapshots) {
                    for slot in &asked {
                        let first = {
                            let mut st = slot.state();
                            !std::mem::replace(&mut st.snapshot_tried, true)
                        };
                        if first && slot.source() == Source::Default {
                            crate::snapshot::start_from_snapshot(&inner, snapshots, slot).await;
                        }
                    }
                }
                for slot in &asked {
                    slot.settle();
                }
                let kind = match &e {
                    Error::Api { status, .. } if *status >= 500 => "server",
                    Error::Api { .. } => "client",
                    _ => "network",
                };
                metrics::counter!("imprint_client_poll_errors_total", "kind" => kind).increment(1);
                if e.is_transient() {
                    let d = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?d, "poll failed");
                    d
                } else {
                    tracing::error!(error = %e, retry_in = ?s.client_error_retry, "poll refused");
                    s.client_error_retry
                }
            }
        };
        if !delay.is_zero() {
            if let Some(Stop::Stopped) = pause(&inner, delay, generation, true).await {
                break;
            }
        }
    }
    tracing::debug!("imprint client poller stopped");
}

/// Sends the outcomes not reported yet (at shutdown), in one short poll, bounded.
pub(crate) async fn flush_reports(inner: &Inner) {
    let pending: Vec<Arc<dyn Slot>> = inner.live_slots().into_iter().filter(|s| s.state().report.is_some()).collect();
    if pending.is_empty() {
        return;
    }
    let req = request(inner, &pending, Duration::ZERO);
    let bound = inner.settings.request_timeout.min(Duration::from_secs(5));
    match tokio::time::timeout(bound, send_poll(inner, &req, Duration::ZERO)).await {
        Ok(Ok(_)) => {
            for slot in &pending {
                let mut st = slot.state();
                if st.report.as_ref() == req.applied.get(slot.topic()) {
                    st.report = None;
                }
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "could not send the last apply reports"),
        Err(_) => tracing::debug!("could not send the last apply reports in time"),
    }
}

fn request(inner: &Inner, asked: &[Arc<dyn Slot>], wait: Duration) -> PollRequest {
    let mut topics = BTreeMap::new();
    let mut applied = BTreeMap::new();
    for slot in asked {
        topics.insert(slot.topic().to_owned(), slot.version());
        if let Some(r) = &slot.state().report {
            applied.insert(slot.topic().to_owned(), r.clone());
        }
    }
    PollRequest { consumer: inner.consumer.clone(), topics, applied, wait_ms: wait.as_millis() as u64 }
}

async fn send_poll(inner: &Inner, req: &PollRequest, wait: Duration) -> Result<PollResponse> {
    let url = inner.url("/api/v1/poll");
    let bound = wait + inner.settings.request_timeout;
    let resp = inner.request(Method::POST, &url).json(req).timeout(bound).send().await.map_err(|e| {
        if e.is_timeout() {
            Error::Timeout(format!("poll: no answer within {bound:?}"))
        } else {
            Error::http(&url, e)
        }
    })?;
    if !resp.status().is_success() {
        return Err(Error::from_response(resp).await);
    }
    resp.json::<PollResponse>().await.map_err(|e| Error::Protocol(format!("poll answer: {e}")))
}

/// One update for one subscription: deliver it, record the outcome, and at start-up fall
/// back to older versions when it does not apply. `Err` only for transient failures.
async fn handle_update(inner: &Inner, slot: &Arc<dyn Slot>, u: &Update) -> Result<()> {
    let topic = slot.topic();
    let key = (u.version, u.pinned);
    {
        let mut st = slot.state();
        if st.rejected == Some(key) {
            st.stuck = true;
            return Ok(());
        }
        st.stuck = false;
    }
    let first = slot.source() != Source::Server;
    let span = tracing::info_span!("imprint_client.apply", topic, version = u.version, pinned = u.pinned);
    match deliver(inner, slot, u).instrument(span.clone()).await {
        Ok(()) => {
            let mut st = slot.state();
            st.rejected = None;
            st.report = Some(AppliedReport { version: u.version, ok: true, error: None });
            Ok(())
        }
        Err(Failure::Transient(e)) => Err(e),
        Err(Failure::Rejected(msg)) => {
            tracing::warn!(parent: &span, error = %msg, "version rejected; keeping the current value");
            metrics::counter!("imprint_client_apply_failures_total", "topic" => topic.to_owned()).increment(1);
            {
                let mut st = slot.state();
                st.rejected = Some(key);
                st.stuck = true;
                let error: String = msg.chars().take(2000).collect();
                st.report = Some(AppliedReport { version: u.version, ok: false, error: Some(error) });
            }
            if first && inner.settings.startup_fallback > 0 {
                fallback(inner, slot, u.version).instrument(span).await;
            }
            Ok(())
        }
    }
}

/// Gutenberg's start-up fallback: the newest version failed to apply and this node has
/// nothing from the server yet, so try the older versions released to it, newest first.
async fn fallback(inner: &Inner, slot: &Arc<dyn Slot>, failed: u64) {
    let topic = slot.topic();
    let held = slot.version().unwrap_or(0);
    let list = match list_versions(inner, topic).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list older versions to fall back to");
            return;
        }
    };
    let candidates: Vec<_> = list
        .versions
        .into_iter()
        .filter(|v| v.version < failed && v.version > held && !v.purged && v.released_to(&inner.consumer.labels))
        .take(inner.settings.startup_fallback)
        .collect();
    for v in candidates {
        let version = v.version;
        match deliver(inner, slot, &v.into_update(topic)).await {
            Ok(()) => {
                tracing::warn!(version, failed, "started from an older version: the newest does not apply");
                return;
            }
            Err(Failure::Rejected(e)) => {
                tracing::warn!(version, error = %e, "older version does not apply either");
                metrics::counter!("imprint_client_apply_failures_total", "topic" => topic.to_owned()).increment(1);
            }
            Err(Failure::Transient(e)) => {
                tracing::warn!(version, error = %e, "cannot fetch an older version; giving up the fallback");
                return;
            }
        }
    }
}

async fn list_versions(inner: &Inner, topic: &str) -> Result<VersionList> {
    // Newest first; a few more than needed, as some may be purged or scoped elsewhere.
    let limit = (inner.settings.startup_fallback * 4 + 10).min(500);
    let url = inner.url(&format!("/api/v1/topics/{topic}/versions?limit={limit}"));
    let resp = inner
        .request(Method::GET, &url)
        .timeout(inner.settings.request_timeout)
        .send()
        .await
        .map_err(|e| Error::http(&url, e))?;
    if !resp.status().is_success() {
        return Err(Error::from_response(resp).await);
    }
    resp.json().await.map_err(|e| Error::Protocol(format!("versions list: {e}")))
}

/// Fetch, verify, apply (off the async threads) and, on success, cache.
async fn deliver(inner: &Inner, slot: &Arc<dyn Slot>, u: &Update) -> Result<(), Failure> {
    let fetched = fetch(inner, slot.topic(), u, slot.kind()).await?;
    apply_fetched(inner, slot, u, fetched, Source::Server).await
}

/// Runs the subscription's apply function on a fetched (and verified) payload; on
/// success the value is swapped in and the payload saved to the disk cache.
pub(crate) async fn apply_fetched(
    inner: &Inner,
    slot: &Arc<dyn Slot>,
    u: &Update,
    fetched: Fetched,
    source: Source,
) -> Result<(), Failure> {
    let topic = slot.topic().to_owned();
    let file = match &fetched {
        Fetched::File(p) => Some(p.clone()),
        Fetched::Memory(_) => None,
    };
    let applying = slot.clone();
    let update = u.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let data = match &fetched {
            Fetched::Memory(b) => Data::Bytes(b),
            Fetched::File(p) => Data::File(p),
        };
        let payload = Payload {
            topic: applying.topic(),
            version: update.version,
            sha256: &update.sha256,
            content_type: &update.content_type,
            metadata: &update.metadata,
            pinned: update.pinned,
            source,
            data,
        };
        applying.try_apply(&payload).map(|()| fetched)
    })
    .await;
    let fetched = match applied {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            discard(slot, file).await;
            return Err(Failure::Rejected(format!("apply failed: {e}")));
        }
        Err(join) => {
            discard(slot, file).await;
            let what = if join.is_panic() {
                join.into_panic()
                    .downcast::<String>()
                    .map(|s| *s)
                    .or_else(|p| p.downcast::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|_| "panic".into())
            } else {
                join.to_string()
            };
            return Err(Failure::Rejected(format!("apply panicked: {what}")));
        }
    };
    metrics::gauge!("imprint_client_version", "topic" => topic.clone()).set(u.version as f64);
    metrics::counter!("imprint_client_updates_applied_total", "topic" => topic.clone()).increment(1);
    tracing::info!(topic, version = u.version, ?source, "applied");
    save(inner, &topic, u, fetched).await;
    Ok(())
}

/// A downloaded file that did not apply goes (unless it is the one in use).
async fn discard(slot: &Arc<dyn Slot>, file: Option<std::path::PathBuf>) {
    let Some(path) = file else { return };
    let in_use = match (slot.version(), slot.sha256()) {
        (Some(v), Some(sha)) => path.file_name().is_some_and(|n| n.to_string_lossy() == Store::file_name(v, &sha)),
        _ => false,
    };
    if !in_use {
        let _ = tokio::fs::remove_file(&path).await;
    }
}

/// Records the applied payload in the cache (failures only logged: the value is in use).
async fn save(inner: &Inner, topic: &str, u: &Update, fetched: Fetched) {
    let store = inner.store.clone();
    if !store.persistent() && matches!(fetched, Fetched::Memory(_)) {
        return;
    }
    let (topic, u) = (topic.to_owned(), u.clone());
    let saved = tokio::task::spawn_blocking(move || -> Result<()> {
        let path = match fetched {
            Fetched::File(p) => p,
            Fetched::Memory(bytes) => store.write_payload(&topic, u.version, &u.sha256, &bytes)?,
        };
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        store.commit(&CacheMeta {
            topic,
            version: u.version,
            sha256: u.sha256,
            size: u.size,
            content_type: u.content_type,
            metadata: u.metadata,
            file,
            saved_at: unix_now(),
        })
    })
    .await;
    let failed = match saved {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    // Said once (at warn level): the client goes on without its cache.
    if !inner.cache_warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %failed, dir = %inner.store.root().display(), "cannot write the disk cache; going on without it (a restart while the server is unreachable will start from the default)");
    } else {
        tracing::debug!(error = %failed, "cannot write the disk cache");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff { min: Duration::from_millis(500), max: Duration::from_secs(30), failures: 0 };
        let first = b.next();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500), "{first:?}");
        let mut last = Duration::ZERO;
        for _ in 0..30 {
            last = b.next();
            assert!(last <= Duration::from_secs(30));
        }
        assert!(last >= Duration::from_secs(15), "capped at 30 s, at least half of it: {last:?}");
        b.reset();
        assert!(b.next() <= Duration::from_millis(500));
    }
}
