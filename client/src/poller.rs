//! The background task: one batched (long) poll for every subscription of a client,
//! then each update handed to `deliver` (fetched, verified, applied), and its outcome
//! reported on the next poll. Failures back off; while the server is unreachable,
//! subscriptions with nothing to start from read their object-store snapshot.
use crate::cache::unix_now;
use crate::deliver::handle_update;
use crate::error::{Error, Result};
use crate::inner::Inner;
use crate::subscription::Slot;
#[cfg(feature = "snapshots")]
use crate::subscription::Source;
use imprint_protocol::{PollRequest, PollResponse};
use reqwest::Method;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// The server's hint, but never more than this (a bad hint must not stall a node);
/// docs/protocol.md fixes 60 s for every client.
const MAX_POLL_AFTER: Duration = Duration::from_secs(60);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

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
        let mut retry_after = None;
        let result = tokio::select! {
            r = send_poll(&inner, &req, wait, &mut retry_after).instrument(span.clone()) => r,
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
                            crate::deliver::start_from_snapshot(&inner, snapshots, slot).await;
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
                    inner.fail_over();
                    // The server's Retry-After (429, 503) is a floor, bounded.
                    let d = backoff.next().max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
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
    match tokio::time::timeout(bound, send_poll(inner, &req, Duration::ZERO, &mut None)).await {
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

/// One poll. An unsuccessful answer's `Retry-After` (in seconds) goes to `retry_after`.
async fn send_poll(
    inner: &Inner,
    req: &PollRequest,
    wait: Duration,
    retry_after: &mut Option<Duration>,
) -> Result<PollResponse> {
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
        *retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(Error::from_response(resp).await);
    }
    resp.json::<PollResponse>().await.map_err(|e| Error::Protocol(format!("poll answer: {e}")))
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
