//! The consumer endpoints downstream clients and agents call: `POST /api/v1/poll` (answered
//! from the consumer's group; a long poll parks, bounded by `relay.max_polls`), the payload
//! download its answers name, and `GET /api/v1/topics/{t}/latest`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_protocol::{PollRequest, PollResponse, RelayReport, MAX_WAIT_MS};

use super::payloads::serve_file;
use super::request::{bearer, error, labels_of, parse, refused, valid_instance, LabelsQuery};
use super::{Key, Relay, State_, FIRST_ANSWER_WAIT, MAX_TOPICS_PER_POLL};

/// `POST /api/v1/poll`, answered from the consumer's group.
pub(super) async fn poll(State(relay): State<Arc<Relay>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let req: PollRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if req.wait_ms > MAX_WAIT_MS {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("wait_ms must be between 0 and {MAX_WAIT_MS}"),
        );
    }
    if !valid_instance(&req.consumer.instance) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "consumer.instance must be 1-256 characters without control characters",
        );
    }
    if req.topics.len() > MAX_TOPICS_PER_POLL {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("a poll asks about at most {MAX_TOPICS_PER_POLL} topics"),
        );
    }
    if req.topics.values().any(|v| *v == Some(0)) {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "versions start at 1; send null for none");
    }
    relay.stats.downstream_polls.fetch_add(1, Ordering::Relaxed);
    let key: Key = (req.consumer.labels.clone(), token.clone());
    let mut rx = match relay.join(&key, req.topics.keys()) {
        Ok(rx) => rx,
        Err(r) => return *r,
    };
    relay.queue_report(RelayReport {
        consumer: req.consumer.clone(),
        token,
        topics: req.topics.clone(),
        applied: req.applied.clone(),
        relayed_by: Some(relay.instance.clone()),
    });
    let started = tokio::time::Instant::now();
    let long = req.wait_ms > 0;
    let permit = if long { relay.parked.clone().try_acquire_owned().ok() } else { None };
    if long && permit.is_none() {
        metrics::counter!("imprint_agent_relay_busy_total").increment(1);
    }
    let wait = if permit.is_some() { Duration::from_millis(req.wait_ms) } else { Duration::ZERO };
    let deadline = started + wait;
    let first_deadline = started + FIRST_ANSWER_WAIT.max(wait);
    let _parked = permit.map(|p| {
        relay.stats.parked.fetch_add(1, Ordering::Relaxed);
        Parked(p, &relay.stats.parked)
    });
    loop {
        rx.borrow_and_update();
        // Pending topics (no answer from upstream yet) are waited for, a bounded time.
        let until = match relay.answer(&key, &req.topics) {
            Err(e) => return refused(&e),
            Ok(Some(a)) if !a.updates.is_empty() || tokio::time::Instant::now() >= deadline => {
                let busy = long && wait.is_zero();
                let after = if busy {
                    5_000 + rand::random::<u64>() % 5_000
                } else if long {
                    0
                } else {
                    30_000
                };
                return Json(PollResponse { poll_after_ms: after, ..a }).into_response();
            }
            Ok(Some(_)) => deadline,
            Ok(None) => first_deadline,
        };
        if tokio::time::Instant::now() >= until {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "this relay has no answer from its upstream for these topics yet",
            );
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return error(StatusCode::SERVICE_UNAVAILABLE, "busy", "group dropped") },
            () = tokio::time::sleep_until(until) => {}
            () = crate::shutdown::stopped(relay.stop.clone()) => {
                // Stopping: what there is now, as an ended long poll.
                return match relay.answer(&key, &req.topics) {
                    Ok(Some(a)) => Json(PollResponse { poll_after_ms: 0, ..a }).into_response(),
                    _ => error(StatusCode::SERVICE_UNAVAILABLE, "stopping", "this relay is stopping"),
                };
            }
        }
    }
}

/// Counts a parked downstream poll while it lives.
struct Parked<'a>(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit, &'a AtomicU64);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /api/v1/topics/{t}/versions/{n}/data`: only a version some group of the same
/// token serves now (what this relay's answers named).
pub(super) async fn data(
    State(relay): State<Arc<Relay>>,
    UrlPath((topic, n)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Some(n) = n.parse::<u64>().ok().filter(|n| *n > 0) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", format!("{n:?} is not a version number"));
    };
    match relay.served(&token, None, &topic, n) {
        Some(s) => {
            let etag = format!("\"{}\"", s.update.sha256);
            serve_file(&s, etag, &headers, None).await
        }
        None => error(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("this relay serves no version {n} of {topic:?} to this credential"),
        ),
    }
}

/// `GET /api/v1/topics/{t}/latest?labels=`: the group's resolved payload.
pub(super) async fn latest(
    State(relay): State<Arc<Relay>>,
    UrlPath(topic): UrlPath<String>,
    Query(q): Query<LabelsQuery>,
    headers: HeaderMap,
) -> Response {
    let token = match bearer(&headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let labels = match labels_of(&q) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    if let Err(e) = imprint_domain::TopicName::parse(&topic) {
        return error(StatusCode::BAD_REQUEST, "invalid_topic_name", e.to_string());
    }
    let key: Key = (labels, token);
    let mut rx = match relay.join(&key, std::iter::once(&topic)) {
        Ok(rx) => rx,
        Err(r) => return *r,
    };
    let until = tokio::time::Instant::now() + FIRST_ANSWER_WAIT;
    loop {
        rx.borrow_and_update();
        let state = {
            let groups = relay.lock();
            match groups.get(&key) {
                Some(g) if g.refused.is_some() => return refused(&g.refused.as_ref().expect("checked").0),
                Some(g) => g.topics.get(&topic).map(|t| t.state.clone()),
                None => None,
            }
        };
        match state {
            Some(State_::Serving(s)) => {
                let etag = format!("\"v{}\"", s.update.version);
                return serve_file(&s, etag, &headers, Some(s.update.pinned)).await;
            }
            Some(State_::Missing(code)) => {
                return error(StatusCode::NOT_FOUND, &code, format!("{topic:?}: {code}"));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= until {
            return error(StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable", "no answer from upstream yet");
        }
        tokio::select! {
            _ = rx.changed() => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}
