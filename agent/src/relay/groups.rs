//! A relay's groups, one per (labels, token): joining one (a downstream request adds its
//! topics, pending until upstream answers), a downstream poll's answer from its group (the
//! server's update rule) and the payload a group of a token serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::Response;
use imprint_domain::{is_update, Labels, Resolution};
use imprint_protocol::{PollResponse, RelayError};
use tokio::sync::watch;

use super::request::error;
use super::{Group, Key, Relay, Served, State_, TopicEntry, REFUSAL_KEPT};

impl Relay {
    /// The group of `key` with `topics` in it (added as pending when new). `Err`: too many
    /// groups. Returns the group's change receiver.
    pub(super) fn join<'a>(
        &self,
        key: &Key,
        topics: impl Iterator<Item = &'a String>,
    ) -> Result<watch::Receiver<u64>, Box<Response>> {
        let mut groups = self.lock();
        let mut added = false;
        if !groups.contains_key(key) {
            if groups.len() >= self.config.max_groups {
                return Err(Box::new(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!("this relay carries at most {} label sets and tokens", self.config.max_groups),
                )));
            }
            groups.insert(key.clone(), Group::new());
            added = true;
        }
        let g = groups.get_mut(key).expect("just inserted");
        g.last_used = Instant::now();
        if g.refused.as_ref().is_some_and(|(_, at)| at.elapsed() > REFUSAL_KEPT) {
            // Asked again: its topics start over.
            g.refused = None;
            for t in g.topics.values_mut() {
                *t = TopicEntry { known: None, state: State_::Pending };
            }
            added = true;
        }
        for t in topics {
            if !g.topics.contains_key(t) {
                g.topics.insert(t.clone(), TopicEntry { known: None, state: State_::Pending });
                added = true;
            }
        }
        let rx = g.seq.subscribe();
        drop(groups);
        if added {
            self.regroup.notify_one();
        }
        Ok(rx)
    }

    /// A downstream poll's answer from its group now: `None` while a topic is pending.
    pub(super) fn answer(
        &self,
        key: &Key,
        topics: &BTreeMap<String, Option<u64>>,
    ) -> Result<Option<PollResponse>, RelayError> {
        let groups = self.lock();
        let Some(g) = groups.get(key) else { return Ok(None) };
        if let Some((e, _)) = &g.refused {
            return Err(e.clone());
        }
        let mut out = PollResponse::default();
        let mut pending = false;
        for (name, held) in topics {
            match g.topics.get(name).map(|t| &t.state) {
                None | Some(State_::Pending) => pending = true,
                Some(State_::Missing(code)) => {
                    out.missing.insert(name.clone(), code.clone());
                }
                Some(State_::Serving(s)) => {
                    let r = Resolution { version: s.update.version, pinned: s.update.pinned };
                    if is_update(*held, r) {
                        out.updates.insert(name.clone(), s.update.clone());
                    }
                }
            }
        }
        Ok((!pending).then_some(out))
    }

    /// The file of `topic` version `n` if a group of `token` serves it (for `labels` too,
    /// when given).
    pub(super) fn served(
        &self,
        token: &Option<String>,
        labels: Option<&Labels>,
        topic: &str,
        n: u64,
    ) -> Option<Arc<Served>> {
        let groups = self.lock();
        groups.iter().filter(|((l, t), _)| t == token && labels.is_none_or(|want| want == l)).find_map(|(_, g)| match g
            .topics
            .get(topic)
            .map(|t| &t.state)
        {
            Some(State_::Serving(s)) if s.update.version == n => Some(s.clone()),
            _ => None,
        })
    }
}
