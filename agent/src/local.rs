//! The agent's local HTTP endpoint (127.0.0.1 by default, or a unix socket): programs that
//! cannot link a client read their topics here.
//!
//! - `GET /v1/topics/{topic}` → the current payload, `ETag: "<sha256>"`, `X-Imprint-Version`,
//!   `X-Imprint-Source`; `If-None-Match` with the current ETag → 304; with `?wait=30s` (at most
//!   60 s) a request whose `If-None-Match` is current waits for a newer version first.
//! - `GET /v1/topics/{topic}/meta` → what is held, as JSON (with `served_region`: the region
//!   whose copy was downloaded, when the server has several; docs/regions.md).
//! - `GET /v1/events` → Server-Sent Events: one `version` event per topic with what it
//!   holds now, then one on every change.
//! - `GET /applications/{app}/environments/{env}/configurations/{profile}` → the payload of
//!   the topic a subscription maps to that path (`appconfig = "app/env/profile"`), with
//!   `Configuration-Version`, as the AWS AppConfig Agent answers.
//! - `/healthz` (the process runs), `/readyz` (every required subscription holds a version),
//!   `/metrics` (Prometheus).
//!
//! Only subscribed topics exist here (anything else is 404); payloads are served inert
//! (`nosniff`, `sandbox`); waits are bounded in time and number.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use imprint_client::Subscription;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};

use crate::install::Installed;

/// The longest `?wait=` honoured, and how many waits may be parked at once.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
pub const MAX_WAITERS: usize = 4096;

/// Event streams open at once.
pub const MAX_STREAMS: usize = 256;

/// One subscription as the endpoint sees it.
pub struct Topic {
    /// What the agent holds (its installer publishes every change).
    pub held: watch::Receiver<Option<Installed>>,
    /// The client's subscription: where the held server version came from.
    pub sub: Subscription<Option<Installed>>,
    pub required: bool,
    pub appconfig: Option<(String, String, String)>,
    /// The client, which knows the region whose copy it downloaded (docs/regions.md).
    pub client: imprint_client::Client,
}

impl Topic {
    fn source(&self, held: &Installed) -> &'static str {
        if held.failover {
            "failover"
        } else {
            self.sub.source().as_str()
        }
    }

    /// The region whose copy of the held server version was downloaded (several regions):
    /// none for a failover file, the cache, a snapshot, an inline payload or one region.
    fn served_region(&self, name: &str, held: &Installed) -> Option<String> {
        (self.source(held) == "server").then(|| self.client.served_region(name)).flatten()
    }
}

#[derive(Clone)]
pub struct Local {
    topics: Arc<BTreeMap<String, Topic>>,
    appconfig: Arc<BTreeMap<(String, String, String), String>>,
    waiters: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Turns true when the agent stops: waits and event streams end.
    stop: watch::Receiver<bool>,
}

impl Local {
    pub fn new(
        topics: BTreeMap<String, Topic>,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let appconfig =
            topics.iter().filter_map(|(name, t)| t.appconfig.clone().map(|path| (path, name.clone()))).collect();
        Self {
            topics: Arc::new(topics),
            appconfig: Arc::new(appconfig),
            waiters: Arc::new(Semaphore::new(MAX_WAITERS)),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            metrics,
            stop,
        }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/topics/{topic}", get(payload))
            .route("/v1/topics/{topic}/meta", get(meta))
            .route("/v1/events", get(events))
            .route("/applications/{app}/environments/{env}/configurations/{profile}", get(appconfig))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint".to_owned()) })
            .with_state(self)
    }

    fn topic(&self, name: &str) -> Result<&Topic, Box<Response>> {
        self.topics.get(name).ok_or_else(|| {
            Box::new(error(
                StatusCode::NOT_FOUND,
                "topic_not_found",
                format!("this agent does not subscribe to {name:?}"),
            ))
        })
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn etag(sha: &str) -> String {
    format!("\"{sha}\"")
}

fn matches(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

async fn payload(
    State(local): State<Local>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> Response {
    let topic = match local.topic(&name) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let wait = match q.wait.as_deref().map(humantime::parse_duration) {
        None => Duration::ZERO,
        Some(Ok(d)) => d.min(MAX_WAIT),
        Some(Err(e)) => {
            return error(StatusCode::BAD_REQUEST, "invalid_request", format!("wait: not a duration such as 30s: {e}"))
        }
    };
    let mut rx = topic.held.clone();
    let current = rx.borrow_and_update().clone();
    let held = match current {
        Some(i) if matches(&headers, &etag(&i.sha256)) && !wait.is_zero() => {
            let Ok(_permit) = local.waiters.try_acquire() else {
                return error(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many waiting requests".to_owned());
            };
            let newer = rx.wait_for(|v| v.as_ref().is_some_and(|n| n.sha256 != i.sha256));
            tokio::select! {
                _ = tokio::time::timeout(wait, newer) => {}
                () = crate::shutdown::stopped(local.stop.clone()) => {}
            }
            let now = rx.borrow().clone();
            now
        }
        other => other,
    };
    let Some(i) = held else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no_version", format!("no version of {name:?} yet"));
    };
    serve(topic, &i, &headers, false).await
}

/// The held payload as an answer: 304 when `If-None-Match` is current.
async fn serve(topic: &Topic, i: &Installed, headers: &HeaderMap, appconfig: bool) -> Response {
    let tag = etag(&i.sha256);
    let mut out = HeaderMap::new();
    out.insert(header::ETAG, HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\"")));
    if i.version > 0 {
        out.insert("x-imprint-version", HeaderValue::from(i.version));
    }
    if appconfig {
        let v = if i.failover { format!("failover-{}", &i.sha256[..16]) } else { i.version.to_string() };
        out.insert("configuration-version", HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("0")));
    }
    out.insert("x-imprint-source", HeaderValue::from_static(topic.source(i)));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    if matches(headers, &tag) {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    let file = match tokio::fs::File::open(&i.file).await {
        Ok(f) => f,
        Err(e) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the held copy is unreadable: {e}"))
        }
    };
    let ct = HeaderValue::from_str(&i.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    out.insert(header::CONTENT_TYPE, ct);
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(i.size));
    (out, Body::from_stream(tokio_util::io::ReaderStream::new(file))).into_response()
}

async fn meta(State(local): State<Local>, Path(name): Path<String>) -> Response {
    let topic = match local.topic(&name) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let held = topic.held.borrow().clone();
    Json(json!({
        "topic": name,
        "source": held.as_ref().map_or("none", |i| topic.source(i)),
        "version": held.as_ref().map(|i| i.version).filter(|v| *v > 0),
        "failover": held.as_ref().is_some_and(|i| i.failover),
        "sha256": held.as_ref().map(|i| i.sha256.clone()),
        "size": held.as_ref().map(|i| i.size),
        "content_type": held.as_ref().map(|i| i.content_type.clone()),
        "pinned": held.as_ref().map(|i| i.pinned),
        "installed_at": held.as_ref().map(|i| i.installed_at),
        "served_region": held.as_ref().and_then(|i| topic.served_region(&name, i)),
    }))
    .into_response()
}

async fn appconfig(
    State(local): State<Local>,
    Path((app, env, profile)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(name) = local.appconfig.get(&(app.clone(), env.clone(), profile.clone())) else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("no subscription maps to application {app:?}, environment {env:?}, profile {profile:?}"),
        );
    };
    let topic = match local.topic(name) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let held = topic.held.borrow().clone();
    match held {
        Some(i) => serve(topic, &i, &headers, true).await,
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no_version", format!("no version of {name:?} yet")),
    }
}

/// Every topic's current holding, then every change, as SSE `version` events.
async fn events(State(local): State<Local>) -> Response {
    let Ok(permit) = local.streams.clone().try_acquire_owned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many event streams".to_owned());
    };
    let streams = local.topics.iter().map(|(name, t)| {
        let (name, mut rx, local) = (name.clone(), t.held.clone(), local.clone());
        rx.mark_changed();
        futures::stream::unfold((rx, name, local), |(mut rx, name, local)| async move {
            rx.changed().await.ok()?;
            let held = rx.borrow_and_update().clone();
            let topic = local.topics.get(&name)?;
            let data = json!({
                "topic": name,
                "version": held.as_ref().map(|i| i.version).filter(|v| *v > 0),
                "sha256": held.as_ref().map(|i| i.sha256.clone()),
                "source": held.as_ref().map_or("none", |i| topic.source(i)),
            });
            let event = Event::default().event("version").data(data.to_string());
            Some((Ok::<_, std::convert::Infallible>(event), (rx, name, local)))
        })
        .boxed()
    });
    let merged =
        futures::stream::select_all(streams).take_until(crate::shutdown::stopped(local.stop.clone())).map(move |e| {
            let _held = &permit;
            e
        });
    Sse::new(merged).keep_alive(KeepAlive::default()).into_response()
}

async fn ready(State(local): State<Local>) -> Response {
    let missing: Vec<&str> =
        local.topics.iter().filter(|(_, t)| t.required && t.sub.get().is_none()).map(|(n, _)| n.as_str()).collect();
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", format!("no version yet of {}", missing.join(", ")))
    }
}

/// Per-topic gauges, computed at each scrape from what is held: the version, where it came
/// from (one series per source, 1 for the current one), when it was installed and how long
/// ago (staleness).
fn topic_gauges(local: &Local) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    for (name, t) in local.topics.iter() {
        let held = t.held.borrow().clone();
        let source = held.as_ref().map_or("none", |i| t.source(i));
        for s in ["server", "cache", "snapshot", "failover", "default", "none"] {
            metrics::gauge!("imprint_agent_source", "topic" => name.clone(), "source" => s).set(if s == source {
                1.0
            } else {
                0.0
            });
        }
        if let Some(i) = held {
            metrics::gauge!("imprint_agent_version", "topic" => name.clone()).set(i.version as f64);
            metrics::gauge!("imprint_agent_installed_seconds", "topic" => name.clone()).set(i.installed_at as f64);
            metrics::gauge!("imprint_agent_staleness_seconds", "topic" => name.clone())
                .set(now.saturating_sub(i.installed_at) as f64);
        }
    }
}

async fn metrics(State(local): State<Local>) -> Response {
    match &local.metrics {
        Some(h) => {
            topic_gauges(&local);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "not_found", "metrics are off".to_owned()),
    }
}
