//! Relays (docs/agent.md "Relay mode"): the batch poll, the batched reports and the
//! payload download a relay uses on behalf of its downstream consumers.
//!
//! Resolution and authorization stay here. A relay sends one *group* per distinct
//! (labels, downstream token) among its consumers; each group is authorized as that token
//! (anonymous without one) — restricted topics, label bindings, `IMPRINT_POLL_AUTH` — and
//! resolved exactly as a consumer with those labels would be. The relay's own token only
//! says the caller may relay: it adds no right to any group.
use crate::auth::{hash_token, Caller};
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::payloads::VersionPayload;
use crate::poll::UpdateRef;
use crate::serving::ServingState;
use imprint_domain::{Labels, Resolution, TopicName, VersionNumber};
use imprint_protocol::{
    RelayError, RelayGroup, RelayIdentity, RelayPollRequest, RelayRefusal, RelayReports, RelayReportsAnswer,
    MAX_RELAY_GROUPS, MAX_RELAY_REPORTS, MAX_RELAY_TOPICS, MAX_WAIT_MS,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Topics one group (one downstream consumer's poll) names at most, as a poll does.
const MAX_TOPICS_PER_GROUP: usize = 2_000;

/// One group's answer, as served: updates pre-serialised per version like a poll's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupAnswer {
    pub updates: BTreeMap<String, UpdateRef>,
    pub missing: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RelayError>,
}

/// The answer to `POST /api/v1/relay/poll` (reads back as `imprint_protocol::RelayPollResponse`).
#[derive(Debug, Clone, Serialize)]
pub struct RelayPollAnswer {
    pub groups: Vec<GroupAnswer>,
    pub poll_after_ms: u64,
}

/// A refusal as a relay passes it on: the status, code and message the downstream
/// consumer would have got from the server itself.
pub fn relay_error(e: &Error) -> RelayError {
    RelayError { status: e.status().as_u16(), code: e.code().to_owned(), message: e.public_message() }
}

fn check_identity(relay: &RelayIdentity) -> Result<()> {
    let i = &relay.instance;
    if i.is_empty() || i.len() > 256 || i.chars().any(char::is_control) {
        return Err(Error::invalid("relay.instance must be 1-256 characters without control characters"));
    }
    Ok(())
}

fn check_instance(i: &str) -> Result<()> {
    if i.is_empty() || i.len() > 256 || i.chars().any(char::is_control) {
        return Err(Error::invalid("consumer.instance must be 1-256 characters without control characters"));
    }
    Ok(())
}

/// Only a relay token may relay.
fn require_relay(caller: &Caller) -> Result<()> {
    match caller {
        Caller::Consumer { relay: true, .. } => Ok(()),
        Caller::Anonymous => Err(Error::Unauthorized("the relay endpoints need a relay token".into())),
        c => Err(Error::Forbidden(format!("{} is not a relay token (kind relay)", c.who()))),
    }
}

/// A group as the server authorized it: the downstream caller, or why it was refused.
struct Authorized {
    caller: std::result::Result<Caller, Error>,
    credential: Option<String>,
}

/// One group against the current state: what differs from what the relay holds, and
/// whether anything did (a held topic that now has nothing to give is a change too).
fn answer_group(state: &ServingState, caller: &Caller, group: &RelayGroup, answer: &mut GroupAnswer) -> bool {
    let mut changed = false;
    for (name, held) in &group.topics {
        let Some(topic) = state.get(name) else {
            changed |= held.is_some();
            answer.missing.insert(name.clone(), "topic_not_found".to_owned());
            continue;
        };
        if caller.require_read(name, &topic.owner, topic.restricted).is_err() {
            changed |= held.is_some();
            answer.missing.insert(name.clone(), "forbidden".to_owned());
            continue;
        }
        match topic.index.resolve(&group.labels) {
            None => {
                changed |= held.is_some();
                answer.missing.insert(name.clone(), "no_version_in_scope".to_owned());
            }
            Some(r) if *held != Some(r) => {
                if let Some(v) = topic.served.get(&r.version) {
                    answer.updates.insert(name.clone(), UpdateRef { version: v.clone(), pinned: r.pinned, slot: 0 });
                    changed = true;
                }
            }
            Some(_) => {}
        }
    }
    changed
}

impl Imprint {
    /// The downstream caller a group (or report) stands for: its token's, or anonymous;
    /// then the consumer checks of a poll (poll auth, label bindings).
    async fn downstream(&self, token: Option<&str>, labels: &Labels) -> std::result::Result<Caller, Error> {
        let caller = match token {
            None => Caller::Anonymous,
            Some(t) => self.authenticate_cached(t).await?,
        };
        self.require_poller(&caller, labels.pairs())?;
        Ok(caller)
    }

    /// `POST /api/v1/relay/poll`: every group answered as its own downstream consumer,
    /// held (like a long poll) until some group has a change or `wait_ms` passes.
    pub async fn relay_poll(&self, relay: &Caller, req: RelayPollRequest) -> Result<RelayPollAnswer> {
        require_relay(relay)?;
        check_identity(&req.relay)?;
        if req.wait_ms > MAX_WAIT_MS {
            return Err(Error::invalid(format!("wait_ms must be between 0 and {MAX_WAIT_MS}, not {}", req.wait_ms)));
        }
        if req.groups.len() > MAX_RELAY_GROUPS {
            return Err(Error::invalid(format!("a relay poll carries at most {MAX_RELAY_GROUPS} groups")));
        }
        let topics: usize = req.groups.iter().map(|g| g.topics.len()).sum();
        if topics > MAX_RELAY_TOPICS {
            return Err(Error::invalid(format!("a relay poll names at most {MAX_RELAY_TOPICS} topics in all")));
        }
        for g in &req.groups {
            if g.topics.len() > MAX_TOPICS_PER_GROUP {
                return Err(Error::invalid(format!("a group asks about at most {MAX_TOPICS_PER_GROUP} topics")));
            }
            if g.topics.values().flatten().any(|r| r.version == 0) {
                return Err(Error::invalid("versions start at 1; send null for a topic with no resolution"));
            }
        }
        metrics::counter!("imprint_relay_polls_total").increment(1);
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in &req.groups {
            let caller = self.downstream(g.token.as_deref(), &g.labels).await;
            groups.push(Authorized { caller, credential: g.token.as_deref().map(hash_token) });
        }
        let state = self.state();
        let bytes = 4096 + topics * 96 + req.groups.len() * 512;
        let open = if req.wait_ms > 0 { self.long_poll_place(bytes, None) } else { None };
        let busy = req.wait_ms > 0 && open.is_none();
        let waiter = open.is_some().then(|| state.waiter(req.groups.iter().flat_map(|g| g.topics.keys())));
        let mut stopping = self.draining();
        let mut revoked = self.revocations();
        let wait_ms = if busy { 0 } else { req.wait_ms };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let mut answers: Vec<GroupAnswer> = vec![GroupAnswer::default(); req.groups.len()];
        let mut any = false;
        for ((g, a), answer) in req.groups.iter().zip(&groups).zip(answers.iter_mut()) {
            match &a.caller {
                Ok(caller) => any |= answer_group(state, caller, g, answer),
                Err(e) => {
                    answer.error = Some(relay_error(e));
                    any = true;
                }
            }
        }
        if !any && wait_ms > 0 && !*stopping.borrow() {
            if let Some(waiter) = &waiter {
                loop {
                    let changed = tokio::select! {
                        c = waiter.changed() => c,
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = stopping.changed() => break,
                        _ = revoked.changed() => {
                            // A revoked downstream token ends its group's answer (401).
                            for (a, answer) in groups.iter_mut().zip(answers.iter_mut()) {
                                if let Err(e) = self.recheck_credential(a.credential.as_deref()) {
                                    answer.error = Some(relay_error(&e));
                                    a.caller = Err(e);
                                    any = true;
                                }
                            }
                            if any { break }
                            continue;
                        }
                    };
                    // Topics that appeared are followed from now on.
                    waiter.watch(
                        changed.iter().filter(|n| {
                            answers.iter().any(|a| a.missing.get(*n).is_some_and(|m| m == "topic_not_found"))
                        }),
                    );
                    for ((g, a), answer) in req.groups.iter().zip(&groups).zip(answers.iter_mut()) {
                        let Ok(caller) = &a.caller else { continue };
                        if g.topics.keys().any(|t| changed.contains(t)) {
                            *answer = GroupAnswer::default();
                            any |= answer_group(state, caller, g, answer);
                        }
                    }
                    if any || *stopping.borrow() {
                        break;
                    }
                }
            }
        }
        drop(open);
        let poll_after_ms = if busy {
            5_000 + rand::random::<u64>() % 5_000
        } else if wait_ms > 0 {
            0
        } else {
            1_000
        };
        Ok(RelayPollAnswer { groups: answers, poll_after_ms })
    }

    /// `POST /api/v1/relay/reports`: each downstream consumer's report goes into the
    /// consumer audit under its own instance and labels, as its own token (or anonymous),
    /// marked `relayed_by`. A report whose token is refused is refused whole; a topic its
    /// token may not read (or that does not exist) is refused and not recorded.
    pub async fn relay_reports(&self, relay: &Caller, req: RelayReports) -> Result<RelayReportsAnswer> {
        require_relay(relay)?;
        check_identity(&req.relay)?;
        if req.reports.len() > MAX_RELAY_REPORTS {
            return Err(Error::invalid(format!("a batch carries at most {MAX_RELAY_REPORTS} reports")));
        }
        let mut answer = RelayReportsAnswer::default();
        let now = self.now();
        let state = self.state();
        for (i, r) in req.reports.iter().enumerate() {
            let refuse = |answer: &mut RelayReportsAnswer, topic: Option<&String>, e: &Error| {
                answer.refused.push(RelayRefusal { report: i, topic: topic.cloned(), error: relay_error(e) });
            };
            if let Err(e) = check_instance(&r.consumer.instance) {
                refuse(&mut answer, None, &e);
                continue;
            }
            if r.topics.len() > MAX_TOPICS_PER_GROUP {
                refuse(
                    &mut answer,
                    None,
                    &Error::invalid(format!("a report names at most {MAX_TOPICS_PER_GROUP} topics")),
                );
                continue;
            }
            let relayed_by = r.relayed_by.as_deref().filter(|v| !v.is_empty()).unwrap_or(&req.relay.instance);
            if relayed_by.len() > 256 || relayed_by.chars().any(char::is_control) {
                refuse(&mut answer, None, &Error::invalid("relayed_by must be 1-256 characters"));
                continue;
            }
            let caller = match self.downstream(r.token.as_deref(), &r.consumer.labels).await {
                Ok(c) => c,
                Err(e) => {
                    refuse(&mut answer, None, &e);
                    continue;
                }
            };
            let mut seen = Vec::with_capacity(r.topics.len());
            for (name, held) in &r.topics {
                let Some(topic) = state.get(name) else {
                    refuse(&mut answer, Some(name), &Error::TopicNotFound(name.clone()));
                    continue;
                };
                if let Err(e) = caller.require_read(name, &topic.owner, topic.restricted) {
                    refuse(&mut answer, Some(name), &e);
                    continue;
                }
                if held.is_some_and(|v| v == 0) {
                    refuse(&mut answer, Some(name), &Error::invalid("versions start at 1"));
                    continue;
                }
                if let Some(Err(e)) = r.applied.get(name).map(|a| crate::regions::check_report(name, a)) {
                    refuse(&mut answer, Some(name), &e);
                    continue;
                }
                let expected = topic.index.resolve(&r.consumer.labels).map(|x| x.version);
                let published_at = held.and_then(|h| topic.served.get(&h)).map(|v| v.created_at);
                seen.push(crate::audit::Seen {
                    topic_id: topic.id,
                    version: *held,
                    expected,
                    applied: r.applied.get(name).map(|a| crate::audit::Applied::from_report(a, now)),
                    published_at,
                });
            }
            answer.recorded += seen.len() as u64;
            if self.config().audit_enabled && !seen.is_empty() {
                let principal = caller.principal();
                let who = crate::audit::Reporter {
                    instance: &r.consumer.instance,
                    labels: r.consumer.labels.pairs(),
                    principal: principal.as_deref(),
                    relayed_by: Some(relayed_by),
                    at: now,
                };
                self.audit().record(&who, seen);
            }
        }
        metrics::counter!("imprint_relay_reports_total").increment(req.reports.len() as u64);
        Ok(answer)
    }

    /// A version's payload for a relay's group: only the version that `labels`, polled
    /// as `downstream_token`, resolve to now (the relay fetches what it was just told).
    pub async fn relay_payload(
        &self,
        relay: &Caller,
        downstream_token: Option<&str>,
        topic: &TopicName,
        version: VersionNumber,
        labels: &Labels,
    ) -> Result<VersionPayload> {
        require_relay(relay)?;
        let caller = self.downstream(downstream_token, labels).await?;
        let t = self.state().get(topic.as_str()).ok_or_else(|| Error::TopicNotFound(topic.to_string()))?;
        caller.require_read(topic.as_str(), &t.owner, t.restricted)?;
        match t.index.resolve(labels) {
            Some(Resolution { version: v, .. }) if v == version.get() => {}
            _ => {
                return Err(Error::Forbidden(format!(
                "version {version} of {topic:?} is not what these labels resolve to now: a relay downloads only that"
            )))
            }
        }
        // Authorized above as the downstream consumer; read as the server itself.
        self.version_payload(&Caller::System, topic, version).await
    }
}
