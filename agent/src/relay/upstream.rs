//! The upstream half: ONE relay poll at a time carries every group (sent again when groups
//! or topics are added, moving to the next upstream when one fails), and its answer is
//! applied — payloads fetched and verified first, then each group's topics, then the
//! waiting requests of changed groups woken.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imprint_domain::Resolution;
use imprint_protocol::{
    RelayGroup, RelayGroupAnswer, RelayIdentity, RelayPollRequest, RelayPollResponse, MAX_RELAY_GROUPS,
};

use super::{Key, Relay, Served, State_, TopicEntry, GROUP_IDLE, REFUSAL_KEPT};

impl Relay {
    /// One upstream relay poll at a time, carrying every group; sent again at once when
    /// groups or topics are added (the open one is dropped).
    pub(super) async fn upstream_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if *self.stop.borrow() {
                return;
            }
            let (keys, req) = self.build_poll();
            if keys.is_empty() {
                tokio::select! {
                    () = self.regroup.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = crate::shutdown::stopped(self.stop.clone()) => return,
                }
                continue;
            }
            self.stats.upstream_polls.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("imprint_agent_relay_upstream_polls_total").increment(1);
            let hold = Duration::from_millis(req.wait_ms);
            let sent = self
                .http
                .post(format!("{}/api/v1/relay/poll", self.upstream()))
                .bearer_auth(&self.token)
                .timeout(hold + Duration::from_secs(30))
                .json(&req)
                .send();
            self.stats.upstream_open.fetch_add(1, Ordering::Relaxed);
            let result = tokio::select! {
                r = async { sent.await?.error_for_status()?.json::<RelayPollResponse>().await } => Some(r),
                () = self.regroup.notified() => None,
                () = crate::shutdown::stopped(self.stop.clone()) => None,
            };
            self.stats.upstream_open.fetch_sub(1, Ordering::Relaxed);
            match result {
                None => continue,
                Some(Ok(answer)) if answer.groups.len() == keys.len() => {
                    backoff = Duration::from_millis(500);
                    let ok = self.apply(&keys, answer.groups).await;
                    // A short poll was sent only to learn pending topics at once: the long
                    // poll follows at once. A long poll's `poll_after_ms` (busy) is honoured.
                    let after = if hold.is_zero() {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(answer.poll_after_ms.min(60_000))
                    };
                    let pause = if ok { after } else { after.max(Duration::from_secs(1)) };
                    if !pause.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = self.regroup.notified() => {}
                        }
                    }
                }
                Some(r) => {
                    self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    let why = match r {
                        Ok(a) => format!("{} answers for {} groups", a.groups.len(), keys.len()),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(upstream = %self.upstream(), error = %why, retry_in = ?backoff, "upstream relay poll failed");
                    if self.upstreams.len() > 1 {
                        self.current.fetch_add(1, Ordering::Relaxed);
                    }
                    let jitter = backoff / 2 + backoff.mul_f64(rand::random::<f64>() / 2.0);
                    tokio::time::sleep(jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// The upstream poll: every group still in use (not refused), with what it holds.
    fn build_poll(&self) -> (Vec<Key>, RelayPollRequest) {
        let mut groups = self.lock();
        // Idle groups go; so do refused ones nobody asked for since (made-up tokens or
        // labels must not hold places for long).
        groups.retain(|_, g| {
            let stale_refusal = g.refused.as_ref().is_some_and(|(_, at)| at.elapsed() > REFUSAL_KEPT)
                && g.last_used.elapsed() > REFUSAL_KEPT;
            g.last_used.elapsed() < GROUP_IDLE && !stale_refusal
        });
        let mut keys = Vec::new();
        let mut out = Vec::new();
        let mut pending = false;
        for (key, g) in groups.iter() {
            if g.refused.is_some() || g.topics.is_empty() || out.len() >= MAX_RELAY_GROUPS {
                continue;
            }
            pending |= g.topics.values().any(|t| matches!(t.state, State_::Pending));
            keys.push(key.clone());
            out.push(RelayGroup {
                labels: key.0.clone(),
                token: key.1.clone(),
                topics: g.topics.iter().map(|(n, t)| (n.clone(), t.known)).collect(),
            });
        }
        // A pending topic with nothing to give would not end a long poll: ask at once.
        let wait_ms = if pending { 0 } else { self.config.wait.as_millis() as u64 };
        (keys, RelayPollRequest { relay: RelayIdentity { instance: self.instance.clone() }, groups: out, wait_ms })
    }

    /// Applies an upstream answer: payloads fetched and verified first (outside the lock),
    /// then each group's topics, then the parked requests of changed groups are woken.
    /// False if a payload could not be fetched (its topic stays as it was).
    async fn apply(&self, keys: &[Key], answers: Vec<RelayGroupAnswer>) -> bool {
        let mut all_ok = true;
        let mut fetched: Vec<Vec<(String, Arc<Served>)>> = Vec::with_capacity(keys.len());
        for (key, a) in keys.iter().zip(&answers) {
            let mut got = Vec::new();
            for (topic, u) in &a.updates {
                match self.payload(key, topic, u).await {
                    Ok(file) => got.push((topic.clone(), Arc::new(Served { update: u.clone(), file }))),
                    Err(e) => {
                        all_ok = false;
                        tracing::warn!(topic = %topic, version = u.version, error = %e, "relay: payload not fetched");
                    }
                }
            }
            fetched.push(got);
        }
        let mut changed_any = false;
        {
            let mut groups = self.lock();
            for ((key, a), got) in keys.iter().zip(answers).zip(fetched) {
                let Some(g) = groups.get_mut(key) else { continue };
                let mut changed = false;
                if let Some(e) = a.error {
                    g.refused = Some((e, Instant::now()));
                    changed = true;
                }
                for (topic, served) in got {
                    let r = Resolution { version: served.update.version, pinned: served.update.pinned };
                    g.topics.insert(topic, TopicEntry { known: Some(r), state: State_::Serving(served) });
                    changed = true;
                }
                for (topic, code) in a.missing {
                    if let Some(t) = g.topics.get_mut(&topic) {
                        let same = matches!(&t.state, State_::Missing(c) if *c == code);
                        if !same || t.known.is_some() {
                            *t = TopicEntry { known: None, state: State_::Missing(code) };
                            changed = true;
                        }
                    }
                }
                if changed {
                    g.bump();
                    changed_any = true;
                }
            }
        }
        if changed_any {
            self.any.send_modify(|n| *n += 1);
        }
        all_ok
    }
}
