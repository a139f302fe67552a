//! The consumer poll: answered from the in-memory state only (no SQL), optionally held
//! open until an update exists for this consumer (long polling).
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::serving::{ServedVersion, ServingState};
use imprint_domain::{is_update, Labels, TopicName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

pub use imprint_protocol::{Applied, Consumer, Update, MAX_WAIT_MS};
const MAX_TOPICS_PER_POLL: usize = 2_000;
/// Suggested pause before the next short poll.
const SHORT_POLL_AFTER_MS: u64 = 30_000;

/// A poll as the service answers it: the wire request (`imprint_protocol::PollRequest`,
/// whose fields it derefs to) and what the server adds from the connection. It reads and
/// documents itself exactly as the wire request.
#[derive(Debug, Clone)]
pub struct PollRequest {
    pub wire: imprint_protocol::PollRequest,
    /// The client's address (set by the server, never read from the body): an anonymous
    /// poller's new instances are counted against it in the audit.
    pub client: Option<std::net::IpAddr>,
    /// The SHA-256 of the bearer token the poll came with (set by the server): a parked
    /// poll whose token is revoked ends with 401.
    pub credential: Option<String>,
    /// Set by a caller that holds a long-poll place for this request already (a gRPC
    /// `Watch` holds one for its whole stream, `long_poll_place`): the poll takes none.
    pub placed: bool,
}

impl From<imprint_protocol::PollRequest> for PollRequest {
    fn from(wire: imprint_protocol::PollRequest) -> Self {
        PollRequest { wire, client: None, credential: None, placed: false }
    }
}

impl std::ops::Deref for PollRequest {
    type Target = imprint_protocol::PollRequest;
    fn deref(&self) -> &Self::Target {
        &self.wire
    }
}

impl std::ops::DerefMut for PollRequest {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.wire
    }
}

impl<'de> Deserialize<'de> for PollRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        imprint_protocol::PollRequest::deserialize(d).map(PollRequest::from)
    }
}

impl utoipa::PartialSchema for PollRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <imprint_protocol::PollRequest as utoipa::PartialSchema>::schema()
    }
}

impl ToSchema for PollRequest {
    fn name() -> std::borrow::Cow<'static, str> {
        <imprint_protocol::PollRequest as ToSchema>::name()
    }
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <imprint_protocol::PollRequest as ToSchema>::schemas(schemas)
    }
}

/// An update in a poll answer: the served version and whether a pin chose it. It
/// serialises as an `Update` (the wire type; a test reads it back as one), from JSON built once per version (`ServedVersion::update_json`)
/// — not field by field, and without base64-encoding the payload again for every poll.
#[derive(Debug, Clone)]
pub struct UpdateRef {
    pub version: Arc<ServedVersion>,
    pub pinned: bool,
    /// The consumer's region among those holding the object (`ServedVersion::region_slot`).
    pub slot: usize,
}

impl Serialize for UpdateRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.version.update_json(self.pinned, self.slot).serialize(s)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PollResponse {
    #[schema(value_type = BTreeMap<String, Update>)]
    pub updates: BTreeMap<String, UpdateRef>,
    /// Topics with nothing to give: `topic_not_found`, `no_version_in_scope`, `forbidden`.
    pub missing: BTreeMap<String, String>,
    pub poll_after_ms: u64,
}

impl PollRequest {
    pub fn validate(&self) -> Result<()> {
        if self.wait_ms > MAX_WAIT_MS {
            return Err(Error::invalid(format!("wait_ms must be between 0 and {MAX_WAIT_MS}, not {}", self.wait_ms)));
        }
        let inst = &self.consumer.instance;
        if inst.is_empty() || inst.len() > 256 || inst.chars().any(char::is_control) {
            return Err(Error::invalid("consumer.instance must be 1-256 characters without control characters"));
        }
        if self.topics.len() > MAX_TOPICS_PER_POLL {
            return Err(Error::invalid(format!("a poll asks about at most {MAX_TOPICS_PER_POLL} topics")));
        }
        if self.topics.values().any(|v| *v == Some(0)) {
            return Err(Error::invalid("versions start at 1; send null for a topic you hold no version of"));
        }
        for (topic, a) in &self.applied {
            crate::regions::check_report(topic, a)?;
        }
        Ok(())
    }
}

/// One pass over the request's topics against the current state.
/// Each known topic of the request, with what it resolves to for this consumer now.
/// (name, topic id, resolved version, publish time of the held version)
type Seen<'a> = Vec<(&'a str, i64, Option<u64>, Option<chrono::DateTime<chrono::Utc>>)>;

pub fn compute<'a>(
    state: &ServingState,
    caller: &Caller,
    req: &'a PollRequest,
) -> (BTreeMap<String, UpdateRef>, BTreeMap<String, String>, Seen<'a>) {
    compute_some(state, caller, req, req.topics.iter())
}

/// `compute` for some of the request's topics (a woken long poll re-resolves only the
/// topics that changed).
fn compute_some<'a>(
    state: &ServingState,
    caller: &Caller,
    req: &'a PollRequest,
    topics: impl Iterator<Item = (&'a String, &'a Option<u64>)>,
) -> (BTreeMap<String, UpdateRef>, BTreeMap<String, String>, Seen<'a>) {
    let mut updates = BTreeMap::new();
    let mut missing = BTreeMap::new();
    let mut seen = Vec::with_capacity(req.topics.len());
    for (name, held) in topics {
        // Loaded topics are keyed by their (valid) names: a name that is not one is simply
        // not found, without building a `TopicName` per topic per poll.
        let topic = state.get(name);
        let Some(topic) = topic else {
            missing.insert(name.clone(), "topic_not_found".to_owned());
            continue;
        };
        if caller.require_read(name, &topic.owner, topic.restricted).is_err() {
            missing.insert(name.clone(), "forbidden".to_owned());
            continue;
        }
        let resolved = topic.index.resolve(&req.consumer.labels);
        // When the held version was published (for the propagation metric): known for the
        // versions resolvable now, which are the ones a fresh publish makes nodes hold.
        let held_published = held.and_then(|h| topic.served.get(&h)).map(|v| v.created_at);
        seen.push((name.as_str(), topic.id, resolved.map(|r| r.version), held_published));
        match resolved {
            None => {
                missing.insert(name.clone(), "no_version_in_scope".to_owned());
            }
            Some(r) if is_update(*held, r) => {
                if let Some(v) = topic.served.get(&r.version) {
                    let slot = v.region_slot(req.consumer.labels.get("region"));
                    updates.insert(name.clone(), UpdateRef { version: v.clone(), pinned: r.pinned, slot });
                }
            }
            Some(_) => {}
        }
    }
    (updates, missing, seen)
}

/// The poll path's metric handles, looked up once (not per poll).
struct PollMetrics {
    polls: metrics::Counter,
    updates: metrics::Counter,
    seconds: metrics::Histogram,
}

fn poll_metrics(long: bool) -> &'static PollMetrics {
    static M: std::sync::OnceLock<[PollMetrics; 2]> = std::sync::OnceLock::new();
    let m = M.get_or_init(|| {
        [false, true].map(|long| {
            let l = if long { "true" } else { "false" };
            PollMetrics {
                polls: metrics::counter!("imprint_polls_total", "long" => l),
                updates: metrics::counter!("imprint_poll_updates_total"),
                seconds: metrics::histogram!("imprint_poll_seconds", "long" => l),
            }
        })
    });
    &m[usize::from(long)]
}

/// Suggested pause before polling again when this server holds as many long polls as
/// it may (plus jitter, so refused pollers do not return in step).
const BUSY_POLL_AFTER_MS: u64 = 5_000;

/// About what a parked long poll holds in memory: its request (names, labels, held
/// versions, reports) and the fixed cost of a parked task and its connection.
pub fn parked_bytes(req: &PollRequest) -> usize {
    const FIXED: usize = 4096;
    let labels: usize = req.consumer.labels.pairs().iter().map(|(k, v)| k.len() + v.len() + 64).sum();
    let topics: usize = req.topics.keys().map(|n| n.len() + 64).sum();
    let applied: usize = req
        .applied
        .iter()
        .map(|(n, a)| n.len() + a.error.as_ref().map_or(0, String::len) + a.region.as_ref().map_or(0, String::len) + 64)
        .sum();
    FIXED + req.consumer.instance.len() + labels + topics + applied
}

impl Imprint {
    /// A place among the requests held open (long polls, Apollo notifications, live
    /// streams), holding about `bytes` while it waits; `anonymous_from` also counts it
    /// against that client address. None: a cap is reached (answer at once instead).
    pub fn long_poll_place(
        &self,
        bytes: usize,
        anonymous_from: Option<std::net::IpAddr>,
    ) -> Option<crate::long_polls::LongPollPlace> {
        let c = self.config();
        let caps = crate::long_polls::Caps {
            open: c.max_long_polls,
            bytes: c.max_long_poll_bytes,
            per_address: c.max_long_polls_per_address,
        };
        let place = self.inner.long_polls.place(caps, bytes, anonymous_from);
        if place.is_none() {
            metrics::counter!("imprint_long_polls_refused_total").increment(1);
        }
        place
    }
}

impl Imprint {
    /// Answers a consumer's poll from memory. Only the topics `caller` may read are
    /// answered; the others are `missing` as `forbidden`.
    pub async fn poll(&self, caller: &Caller, req: PollRequest) -> Result<PollResponse> {
        req.validate()?;
        self.require_poller(caller, req.consumer.labels.pairs())?;
        let started = std::time::Instant::now();
        let state: &Arc<ServingState> = self.state();
        let mut stopping = self.draining();
        // Counts this request among the requests held open until it answers (also if
        // dropped). Past a cap the poll degrades to a short one with a backoff.
        let anonymous = matches!(caller, Caller::Anonymous).then_some(req.client).flatten();
        let open =
            if req.wait_ms > 0 && !req.placed { self.long_poll_place(parked_bytes(&req), anonymous) } else { None };
        let busy = req.wait_ms > 0 && !req.placed && open.is_none();
        // Registered before the first look, so no change slips between look and wait; a
        // change to one of these topics (and only these) wakes this poll.
        let waiter = (open.is_some() || (req.placed && req.wait_ms > 0)).then(|| state.waiter(req.topics.keys()));
        let mut revoked = self.revocations();
        let wait_ms = if busy { 0 } else { req.wait_ms };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let (mut updates, mut missing, seen) = compute(state, caller, &req);
        if self.config().audit_enabled {
            // What the node holds and should hold, as of its arrival.
            self.record_poll(caller, &req, seen);
        }
        if updates.is_empty() && wait_ms > 0 && !*stopping.borrow() {
            if let Some(waiter) = &waiter {
                // Parked: the poll's working part is over; it holds no fair-serving place
                // while it waits (crate::fair), only its long-poll place.
                crate::fair::parking();
                loop {
                    let changed = tokio::select! {
                        c = waiter.changed() => c,
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = stopping.changed() => break,
                        _ = revoked.changed() => {
                            // A token was revoked somewhere: is it this poll's?
                            self.recheck_credential(req.credential.as_deref())?;
                            continue;
                        }
                    };
                    // Topics that appeared are followed from now on.
                    waiter.watch(changed.iter().filter(|n| missing.get(*n).is_some_and(|m| m == "topic_not_found")));
                    // Only the topics that changed are resolved again.
                    let again = req.topics.iter().filter(|(name, _)| changed.iter().any(|c| c == *name));
                    let (u, m, _) = compute_some(state, caller, &req, again);
                    for name in &changed {
                        missing.remove(name);
                    }
                    missing.extend(m);
                    updates.extend(u);
                    if !updates.is_empty() || *stopping.borrow() {
                        break;
                    }
                }
            }
        }
        // At rest: payloads handed out in the answer are plaintext reads (audited).
        for u in updates.values().filter(|u| u.version.sealed && u.version.payload.is_some()) {
            if let Some(t) = state.get(u.version.topic.as_str()) {
                self.plaintext_reads().record(t.id, u.version.version, caller, self.now());
            }
        }
        let m = poll_metrics(wait_ms > 0);
        m.polls.increment(1);
        m.updates.increment(updates.len() as u64);
        m.seconds.record(started.elapsed().as_secs_f64());
        drop(open);
        let poll_after_ms = if busy {
            BUSY_POLL_AFTER_MS + rand::random::<u64>() % BUSY_POLL_AFTER_MS
        } else if wait_ms > 0 {
            0
        } else {
            SHORT_POLL_AFTER_MS
        };
        Ok(PollResponse { updates, missing, poll_after_ms })
    }

    /// Notes what this poll says about each known topic in the audit buffer (memory only).
    fn record_poll(&self, caller: &Caller, req: &PollRequest, seen: Seen<'_>) {
        let now = self.now();
        let principal = caller.principal();
        let who = crate::audit::Reporter {
            instance: &req.consumer.instance,
            labels: req.consumer.labels.pairs(),
            principal: principal.as_deref(),
            relayed_by: None,
            at: now,
        };
        let seen = seen.into_iter().map(|(name, topic_id, expected, published_at)| crate::audit::Seen {
            topic_id,
            version: req.topics.get(name).copied().flatten(),
            expected,
            applied: req.applied.get(name).map(|a| crate::audit::Applied::from_report(a, now)),
            published_at,
        });
        self.audit().record_from(&who, req.client, seen);
    }

    /// The resolved version of one topic for `labels`, with its payload when in memory.
    pub fn latest(&self, caller: &Caller, name: &TopicName, labels: &Labels) -> Result<(Arc<ServedVersion>, bool)> {
        self.require_poller(caller, labels.pairs())?;
        let t = self.state().get(name.as_str()).ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        caller.require_read(name.as_str(), &t.owner, t.restricted)?;
        let r = t.index.resolve(labels).ok_or_else(|| Error::NoVersionInScope(name.to_string()))?;
        let v =
            t.served.get(&r.version).cloned().ok_or_else(|| Error::Internal("resolved version not loaded".into()))?;
        if v.sealed && v.payload.is_some() {
            // Answered from memory with the plaintext (a download records its own read).
            self.plaintext_reads().record(t.id, v.version, caller, self.now());
        }
        Ok((v, r.pinned))
    }

    /// Consumers' own checks: with `IMPRINT_POLL_AUTH=required` a token is needed, and a
    /// label-bound consumer token must claim its labels.
    /// Reads of payloads and versions by number (`/versions`, `/versions/{n}`, its data):
    /// anonymous ones need `IMPRINT_POLL_AUTH=optional`, and a consumer token bound to
    /// labels reads only what its labels resolve to (poll, `/latest`, `/resolve`), never
    /// a version picked by number.
    pub(crate) fn require_direct_reader(&self, caller: &Caller) -> Result<()> {
        if self.config().poll_auth_required && matches!(caller, Caller::Anonymous) {
            return Err(Error::Unauthorized(
                "this server requires a token to read payloads (IMPRINT_POLL_AUTH=required)".into(),
            ));
        }
        if let Caller::Consumer { name, labels, .. } = caller {
            if !labels.is_empty() {
                return Err(Error::Forbidden(format!(
                    "the consumer token {name:?} is bound to labels: it reads what they resolve to (poll, /latest or /resolve with its labels), not versions by number"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn require_poller(&self, caller: &Caller, claimed: &BTreeMap<String, String>) -> Result<()> {
        if self.config().poll_auth_required && matches!(caller, Caller::Anonymous) {
            return Err(Error::Unauthorized(
                "this server requires a token to poll (IMPRINT_POLL_AUTH=required)".into(),
            ));
        }
        caller.require_claimed_labels(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-serialised answer is the wire type: it reads back as
    /// `imprint_protocol::PollResponse` with every field as served.
    #[test]
    fn pre_serialised_answers_parse_as_the_wire_types() {
        let topic = TopicName::parse("payments.model").expect("valid name");
        let metadata = BTreeMap::from([("git".to_owned(), "abc".to_owned())]);
        let small = Arc::new(ServedVersion::new(
            topic.clone(),
            3,
            "application/json".into(),
            2,
            "ab".repeat(32),
            metadata.clone(),
            chrono::Utc::now(),
            Some(bytes::Bytes::from_static(b"{}")),
        ));
        let big = Arc::new(ServedVersion::new(
            topic,
            4,
            "application/octet-stream".into(),
            1 << 20,
            "cd".repeat(32),
            BTreeMap::new(),
            chrono::Utc::now(),
            None,
        ));
        let answer = PollResponse {
            updates: BTreeMap::from([
                ("payments.model".to_owned(), UpdateRef { version: small, pinned: true, slot: 0 }),
                ("other".to_owned(), UpdateRef { version: big, pinned: false, slot: 0 }),
            ]),
            missing: BTreeMap::from([("gone".to_owned(), "topic_not_found".to_owned())]),
            poll_after_ms: 0,
        };
        let text = serde_json::to_string(&answer).expect("serialises");
        let wire: imprint_protocol::PollResponse = serde_json::from_str(&text).expect("parses as the wire type");
        let expected = imprint_protocol::PollResponse {
            updates: BTreeMap::from([
                (
                    "payments.model".to_owned(),
                    Update {
                        version: 3,
                        pinned: true,
                        metadata,
                        content_type: "application/json".into(),
                        size: 2,
                        sha256: "ab".repeat(32),
                        data_base64: Some("e30=".into()),
                        data_url: imprint_protocol::data_url("payments.model", 3),
                        data_urls: vec![],
                    },
                ),
                (
                    "other".to_owned(),
                    Update {
                        version: 4,
                        pinned: false,
                        metadata: BTreeMap::new(),
                        content_type: "application/octet-stream".into(),
                        size: 1 << 20,
                        sha256: "cd".repeat(32),
                        data_base64: None,
                        data_url: imprint_protocol::data_url("payments.model", 4),
                        data_urls: vec![],
                    },
                ),
            ]),
            missing: answer.missing.clone(),
            poll_after_ms: 0,
        };
        assert_eq!(wire, expected);
        // And the wire type writes the same JSON back (no field lost or renamed).
        let again: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(serde_json::to_value(&wire).expect("serialises"), again);
    }
}
