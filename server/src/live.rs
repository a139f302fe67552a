//! `GET /console/events?topics=a,b` (or `topics=*`): server-sent events for the console's
//! live pages, driven by the same change notifications that wake consumers' long polls
//! (publishes, scopes, pins, rollout stages) plus consumer reports as they are written.
//! Each event names the changed topics; the page reloads its data. Bounded: at most
//! `MAX_STREAMS` streams per server, each for at most `MAX_LIFETIME` (the browser's
//! EventSource reconnects by itself), and a server that drains ends them at once.
use crate::error::ApiError;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use imprint_service::{Error, Imprint};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_sessions::Session;

pub const MAX_STREAMS: usize = 1000;
const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// Changes within this window are sent as one event (a rollout stage is several).
const COALESCE: Duration = Duration::from_millis(250);
const MAX_TOPICS: usize = 50;

static OPEN: AtomicUsize = AtomicUsize::new(0);

struct Slot;
impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    topics: String,
}

/// Which changes a stream forwards.
enum Interest {
    /// Every topic the caller may read (a restricted topic it may not read is never named).
    All,
    Topics(BTreeSet<String>),
}

impl Interest {
    fn pick(&self, imprint: &Imprint, caller: &imprint_service::Caller, names: &[String]) -> Vec<String> {
        match self {
            Interest::All => names
                .iter()
                .filter(|n| {
                    imprint.state().get(n).is_some_and(|t| caller.require_read(n, &t.owner, t.restricted).is_ok())
                })
                .cloned()
                .collect(),
            Interest::Topics(t) => names.iter().filter(|n| t.contains(*n)).cloned().collect(),
        }
    }
}

/// How often a stream checks that its session is still signed in (a user removed or a
/// password changed ends it).
const RECHECK: Duration = Duration::from_secs(10);
/// What a live stream is counted as among the requests held open.
const STREAM_BYTES: usize = 16 * 1024;

pub async fn console_events(
    State(imprint): State<Imprint>,
    session: Session,
    Query(q): Query<EventsQuery>,
) -> Response {
    let Some(caller) = crate::upload::session_caller(&imprint, &session).await else {
        return ApiError(Error::Unauthorized("sign in to the console to follow changes".into())).into_response();
    };
    let interest = if q.topics.trim() == "*" {
        Interest::All
    } else {
        let names: BTreeSet<String> =
            q.topics.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        if names.is_empty() || names.len() > MAX_TOPICS {
            return ApiError::invalid(format!("topics: 1 to {MAX_TOPICS} topic names, comma-separated, or *"))
                .into_response();
        }
        for name in &names {
            let allowed = match imprint.state().get(name) {
                None => Err(Error::TopicNotFound(name.clone())),
                Some(t) => caller.require_read(name, &t.owner, t.restricted),
            };
            if let Err(e) = allowed {
                return ApiError(e).into_response();
            }
        }
        Interest::Topics(names)
    };
    if OPEN.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        return ApiError(Error::TooManyStreams(
            "too many live console pages are open on this server; the page works without live updates".into(),
        ))
        .into_response();
    }
    let slot = Arc::new(Slot);
    // A stream also takes a place among the requests held open (long polls and Apollo
    // notifications): together they stay within the server's caps.
    let Some(place) = imprint.long_poll_place(STREAM_BYTES, None) else {
        return ApiError(Error::TooManyStreams(
            "this server holds as many open requests as it may; the page works without live updates".into(),
        ))
        .into_response();
    };
    let changes = imprint.state().changes();
    let draining = imprint.draining();
    let deadline = tokio::time::Instant::now() + MAX_LIFETIME;
    let hello =
        futures::stream::once(async { Ok::<_, std::convert::Infallible>(Event::default().event("ready").data("{}")) });
    let held = Held { imprint: imprint.clone(), session, caller, interest, _slot: slot, _place: place };
    let stream =
        futures::stream::unfold((changes, draining, held), move |(mut changes, mut draining, held)| async move {
            let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
            loop {
                if *draining.borrow() {
                    return None;
                }
                let first = tokio::select! {
                    r = changes.recv() => r,
                    _ = draining.changed() => return None,
                    _ = tokio::time::sleep_until(deadline) => return None,
                    _ = recheck.tick() => {
                        // Signed out, removed or with a changed password: the stream ends.
                        crate::upload::session_caller(&held.imprint, &held.session).await?;
                        continue;
                    }
                };
                let (imprint, caller, interest) = (&held.imprint, &held.caller, &held.interest);
                let mut names: BTreeSet<String> = match first {
                    Ok(n) => interest.pick(imprint, caller, &n).into_iter().collect(),
                    // Fell behind: everything may have changed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => ["*".to_owned()].into(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                if names.is_empty() {
                    continue;
                }
                tokio::time::sleep(COALESCE).await;
                while let Ok(more) = changes.try_recv() {
                    names.extend(held.interest.pick(&held.imprint, &held.caller, &more));
                }
                let data = serde_json::json!({ "topics": names }).to_string();
                return Some((Ok(Event::default().event("change").data(data)), (changes, draining, held)));
            }
        });
    Sse::new(hello.chain(stream).boxed()).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// What an open stream keeps: who it is for, what it forwards, and its place.
struct Held {
    imprint: Imprint,
    session: Session,
    caller: imprint_service::Caller,
    interest: Interest,
    _slot: Arc<Slot>,
    _place: imprint_service::long_polls::LongPollPlace,
}
