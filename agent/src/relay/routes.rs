//! What the relay serves and starts: the router over every endpoint, `start` (the upstream
//! poll and the report flusher) and `GET /relay/status`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::below::{relay_data, relay_poll};
use super::downstream::{data, latest, poll};
use super::reports::relay_reports;
use super::{Relay, MAX_POLL_BODY, MAX_RELAY_BODY};

impl Relay {
    /// Starts the upstream poll and the report flusher.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().upstream_loop());
        tokio::spawn(self.clone().report_loop());
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/poll", post(poll).layer(DefaultBodyLimit::max(MAX_POLL_BODY)))
            .route("/api/v1/topics/{topic}/versions/{n}/data", get(data))
            .route("/api/v1/topics/{topic}/latest", get(latest))
            .route("/api/v1/relay/poll", post(relay_poll).layer(DefaultBodyLimit::max(MAX_RELAY_BODY)))
            .route("/api/v1/relay/reports", post(relay_reports).layer(DefaultBodyLimit::max(MAX_RELAY_BODY)))
            .route("/api/v1/relay/topics/{topic}/versions/{n}/data", get(relay_data))
            .route("/relay/status", get(status))
            .with_state(self.clone())
    }
}

/// `GET /relay/status`: groups, upstream polls sent and open, downstream polls, reports.
async fn status(State(relay): State<Arc<Relay>>) -> Response {
    let s = &relay.stats;
    let groups = relay.lock().len();
    let queued = relay.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    Json(json!({
        "instance": relay.instance,
        "groups": groups,
        "upstream_polls": s.upstream_polls.load(Ordering::Relaxed),
        "upstream_open": s.upstream_open.load(Ordering::Relaxed),
        "upstream_errors": s.upstream_errors.load(Ordering::Relaxed),
        "downstream_polls": s.downstream_polls.load(Ordering::Relaxed),
        "parked": s.parked.load(Ordering::Relaxed),
        "reports_queued": queued,
        "reports_sent": s.reports_sent.load(Ordering::Relaxed),
        "report_batches": s.report_batches.load(Ordering::Relaxed),
        "reports_dropped": s.reports_dropped.load(Ordering::Relaxed),
        "downloads": s.downloads.load(Ordering::Relaxed),
    }))
    .into_response()
}
