//! The gRPC wire types (`pb`) to and from the service's: one place, so every call answers
//! a version, an update or a poll alike.
use super::pb;
use crate::error::grpc_status;
use imprint_service::model::{Published, Scope, Version};
use imprint_service::poll::{PollRequest, UpdateRef};
use imprint_service::Error;
use std::collections::{BTreeMap, HashMap};
use tonic::Status;

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A poll as the service takes it, from the gRPC fields (held version 0: none).
pub(super) fn poll_request(
    consumer: Option<pb::Consumer>,
    topics: HashMap<String, u64>,
    applied: HashMap<String, pb::Applied>,
    wait_ms: u64,
) -> Result<PollRequest, Status> {
    let consumer = consumer.ok_or_else(|| grpc_status(Error::invalid("consumer is missing")))?;
    let labels = super::labels_of(&consumer.labels)?;
    let wire = imprint_protocol::PollRequest {
        consumer: imprint_protocol::Consumer { instance: consumer.instance, labels },
        topics: topics.into_iter().map(|(t, v)| (t, (v > 0).then_some(v))).collect(),
        applied: applied_reports(applied),
        wait_ms,
    };
    let req = PollRequest::from(wire);
    req.validate().map_err(grpc_status)?;
    Ok(req)
}

pub(super) fn applied_reports(applied: HashMap<String, pb::Applied>) -> BTreeMap<String, imprint_protocol::Applied> {
    applied
        .into_iter()
        .map(|(t, a)| {
            let error = Some(a.error).filter(|e| !e.is_empty());
            let region = Some(a.region).filter(|r| !r.is_empty());
            (t, imprint_protocol::Applied { version: a.version, ok: a.ok, error, region })
        })
        .collect()
}

pub(super) fn update(topic: &str, u: &UpdateRef) -> pb::Update {
    let v = &u.version;
    pb::Update {
        version: v.version,
        pinned: u.pinned,
        metadata: v.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        content_type: v.content_type.clone(),
        size: v.size,
        sha256: v.sha256.clone(),
        has_data: v.payload.is_some(),
        data: v.payload.clone().unwrap_or_default(),
        data_url: imprint_protocol::data_url(topic, v.version),
    }
}

pub(super) fn updates(updates: BTreeMap<String, UpdateRef>) -> HashMap<String, pb::Update> {
    updates.iter().map(|(t, u)| (t.clone(), update(t, u))).collect()
}

pub(super) fn scope(s: Scope) -> pb::Scope {
    pb::Scope { selector: s.selector.to_string(), added_at: rfc3339(s.added_at), added_by: s.added_by }
}

pub(super) fn version(v: Version) -> pb::Version {
    pb::Version {
        topic: v.topic,
        version: v.version,
        created_at: rfc3339(v.created_at),
        created_by: v.created_by,
        message: v.message,
        metadata: v.metadata.into_iter().collect(),
        content_type: v.content_type,
        size: v.size,
        sha256: v.sha256,
        storage: v.storage,
        object_url: v.object_url.unwrap_or_default(),
        object_registered: v.object_registered,
        purged: v.purged,
        purged_at: v.purged_at.map(rfc3339).unwrap_or_default(),
        scopes: v.scopes.into_iter().map(scope).collect(),
        rejected: v.rejected.is_some(),
        rejected_reasons: v.rejected.map(|r| r.reasons).unwrap_or_default(),
    }
}

pub(super) fn published(p: Published) -> pb::PublishResponse {
    pb::PublishResponse {
        topic: p.topic,
        version: p.version,
        created_at: rfc3339(p.created_at),
        size: p.size,
        sha256: p.sha256,
        content_type: p.content_type,
        scopes: p.scopes.into_iter().map(scope).collect(),
        storage: p.storage,
        rollout_id: p.rollout.map_or(0, |r| r.id),
    }
}
