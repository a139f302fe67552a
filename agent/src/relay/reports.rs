//! Downstream reports: queued (the newest per instance, applied versions kept until sent,
//! bounded), those of relays below accepted into the same queue, and sent upstream in
//! batches every second (kept for the next batch when a batch fails).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imprint_protocol::{RelayIdentity, RelayReport, RelayReports, MAX_RELAY_REPORTS};
use serde_json::json;

use super::request::{error, parse, valid_instance};
use super::{Relay, MAX_QUEUED_REPORTS};

impl Relay {
    /// Queues a downstream report for the next batch (the newest per instance; reports of
    /// applied versions are kept until sent).
    pub(super) fn queue_report(&self, mut report: RelayReport) {
        let mut q = self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(older) = q.remove(&report.consumer.instance) {
            for (t, a) in older.applied {
                report.applied.entry(t).or_insert(a);
            }
        } else if q.len() >= MAX_QUEUED_REPORTS {
            self.stats.reports_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.insert(report.consumer.instance.clone(), report);
    }

    /// Every second, the queued downstream reports go upstream in batches.
    pub(super) async fn report_loop(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = crate::shutdown::stopped(self.stop.clone()) => return,
            }
            let batch: Vec<RelayReport> = {
                let mut q = self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                q.drain().map(|(_, r)| r).collect()
            };
            for chunk in batch.chunks(MAX_RELAY_REPORTS) {
                let body =
                    RelayReports { relay: RelayIdentity { instance: self.instance.clone() }, reports: chunk.to_vec() };
                let sent = self
                    .http
                    .post(format!("{}/api/v1/relay/reports", self.upstream()))
                    .bearer_auth(&self.token)
                    .timeout(Duration::from_secs(30))
                    .json(&body)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                match sent {
                    Ok(_) => {
                        self.stats.reports_sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        self.stats.report_batches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, reports = chunk.len(), "relay: reports not sent; kept for the next batch");
                        for r in chunk {
                            // Newer reports of the same instance stay (they replace these).
                            let mut q = self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            if !q.contains_key(&r.consumer.instance) && q.len() < MAX_QUEUED_REPORTS {
                                q.insert(r.consumer.instance.clone(), r.clone());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /api/v1/relay/reports` from a relay below: queued with this relay's own, sent up
/// in the next batch (their `relayed_by` kept).
pub(super) async fn relay_reports(State(relay): State<Arc<Relay>>, body: Bytes) -> Response {
    let req: RelayReports = match parse(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if req.reports.len() > MAX_RELAY_REPORTS || !valid_instance(&req.relay.instance) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("a batch has a relay.instance and at most {MAX_RELAY_REPORTS} reports"),
        );
    }
    let n = req.reports.len();
    for mut r in req.reports {
        if !valid_instance(&r.consumer.instance) {
            continue;
        }
        if r.relayed_by.as_deref().is_none_or(str::is_empty) {
            r.relayed_by = Some(req.relay.instance.clone());
        }
        relay.queue_report(r);
    }
    // Recorded upstream later: what the server refuses is refused there.
    Json(json!({"recorded": 0, "queued": n, "refused": []})).into_response()
}
