//! The endpoints a relay below this one calls: its relay poll (its groups fold into this
//! relay's, each answered from this relay's state) and the payload download for its groups.
//! Its reports go to `reports`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_domain::Resolution;
use imprint_protocol::{RelayGroupAnswer, RelayPollRequest, RelayPollResponse, MAX_RELAY_GROUPS, MAX_WAIT_MS};

use super::payloads::serve_file;
use super::request::{error, labels_of, parse, valid_instance, LabelsQuery};
use super::{Key, Relay, State_, FIRST_ANSWER_WAIT};

/// `POST /api/v1/relay/poll` from a relay below: its groups fold into this relay's
/// (their credentials are checked upstream, as this relay's own are); each answered from
/// this relay's state with the server's rule (a resolution differing from the one held).
pub(super) async fn relay_poll(State(relay): State<Arc<Relay>>, body: Bytes) -> Response {
    let req: RelayPollRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if req.wait_ms > MAX_WAIT_MS || req.groups.len() > MAX_RELAY_GROUPS || !valid_instance(&req.relay.instance) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("a relay poll has a relay.instance, at most {MAX_RELAY_GROUPS} groups and wait_ms ≤ {MAX_WAIT_MS}"),
        );
    }
    let keys: Vec<Key> = req.groups.iter().map(|g| (g.labels.clone(), g.token.clone())).collect();
    for (k, g) in keys.iter().zip(&req.groups) {
        if let Err(r) = relay.join(k, g.topics.keys()) {
            return *r;
        }
    }
    let mut any = relay.any.subscribe();
    let started = tokio::time::Instant::now();
    let permit = if req.wait_ms > 0 { relay.parked.clone().try_acquire_owned().ok() } else { None };
    let wait = if permit.is_some() { Duration::from_millis(req.wait_ms) } else { Duration::ZERO };
    let deadline = started + wait;
    let first_deadline = started + FIRST_ANSWER_WAIT.max(wait);
    loop {
        any.borrow_and_update();
        let (answers, changed, pending) = {
            let groups = relay.lock();
            let mut out = Vec::with_capacity(keys.len());
            let (mut changed, mut pending) = (false, false);
            for (k, g) in keys.iter().zip(&req.groups) {
                let mut a = RelayGroupAnswer::default();
                match groups.get(k) {
                    Some(mine) if mine.refused.is_some() => {
                        a.error = mine.refused.as_ref().map(|(e, _)| e.clone());
                        changed = true;
                    }
                    Some(mine) => {
                        for (topic, held) in &g.topics {
                            match mine.topics.get(topic).map(|t| &t.state) {
                                None | Some(State_::Pending) => pending = true,
                                Some(State_::Missing(code)) => {
                                    changed |= held.is_some();
                                    a.missing.insert(topic.clone(), code.clone());
                                }
                                Some(State_::Serving(s)) => {
                                    let r = Resolution { version: s.update.version, pinned: s.update.pinned };
                                    if *held != Some(r) {
                                        a.updates.insert(topic.clone(), s.update.clone());
                                        changed = true;
                                    }
                                }
                            }
                        }
                    }
                    None => pending = true,
                }
                out.push(a);
            }
            (out, changed, pending)
        };
        let now = tokio::time::Instant::now();
        if changed || (!pending && now >= deadline) || now >= first_deadline {
            let after = if req.wait_ms > 0 && wait.is_zero() {
                5_000
            } else if req.wait_ms > 0 {
                0
            } else {
                1_000
            };
            return Json(RelayPollResponse { groups: answers, poll_after_ms: after }).into_response();
        }
        let until = if pending { first_deadline } else { deadline };
        tokio::select! {
            _ = any.changed() => {}
            () = tokio::time::sleep_until(until) => {}
            () = crate::shutdown::stopped(relay.stop.clone()) => {
                return Json(RelayPollResponse { groups: answers, poll_after_ms: 0 }).into_response();
            }
        }
    }
}

/// `GET /api/v1/relay/topics/{t}/versions/{n}/data?labels=` from a relay below: the
/// payload this relay serves to that group.
pub(super) async fn relay_data(
    State(relay): State<Arc<Relay>>,
    UrlPath((topic, n)): UrlPath<(String, String)>,
    Query(q): Query<LabelsQuery>,
    headers: HeaderMap,
) -> Response {
    let labels = match labels_of(&q) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let token = headers
        .get(imprint_protocol::DOWNSTREAM_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let Some(n) = n.parse::<u64>().ok().filter(|n| *n > 0) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", format!("{n:?} is not a version number"));
    };
    match relay.served(&token, Some(&labels), &topic, n) {
        Some(s) => {
            let etag = format!("\"{}\"", s.update.sha256);
            serve_file(&s, etag, &headers, None).await
        }
        None => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("version {n} of {topic:?} is not what this group is served"),
        ),
    }
}
