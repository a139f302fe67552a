//! The background work of a server: following changes into the serving state, flushing
//! the consumer audit, the rollout scheduler, the janitor (retention, stray objects) and
//! webhook deliveries.
use crate::error::Result;
use crate::handle::Imprint;
use crate::serving;
use std::time::Duration;

impl Imprint {
    /// Loads the serving state once and starts following changes in the background,
    /// plus the background work of this process's roles (`Config::roles`).
    pub async fn start_background(&self) -> Result<()> {
        self.state().reload(self.pool(), None).await?;
        self.keep_task(tokio::spawn(serving::follow_changes(
            self.state().clone(),
            self.pool().clone(),
            self.config().full_reload_every,
            self.stopping(),
        )));
        // The audit buffer holds what this process's polls saw: every process flushes its
        // own (only `api` processes answer polls, so the others flush nothing).
        self.keep_task(tokio::spawn(self.clone().audit_loop()));
        // Token revocations made on any server end what the token holds open here too.
        self.keep_task(tokio::spawn(self.clone().follow_revocations()));
        if !self.config().roles.worker {
            return Ok(());
        }
        // The worker's passes run in the one worker that holds the leader lock (a
        // session advisory lock on a connection of its own); the others stand by and
        // take over within a second or two when it goes.
        self.keep_task(tokio::spawn(self.clone().hold_leadership()));
        // The scheduler: a pass every tick (stages land within that much of their due time).
        self.every(self.config().rollout_tick_every, "rollout scheduler", false, true, |i| async move {
            i.tick_rollouts().await.map(|_| ())
        });
        // Retention and stray objects.
        self.every(self.config().janitor_every, "janitor", true, true, |i| async move {
            let p = i.janitor_pass().await?;
            if p.purged > 0 || p.swept > 0 {
                tracing::debug!(?p, "janitor pass");
            }
            Ok(())
        });
        // Copies of new objects to the other regions (regions.rs), retried with backoff.
        if self.config().regions.several() {
            self.every(self.config().rollout_tick_every, "region copies", true, true, |i| async move {
                let n = i.copy_pass().await?;
                if n > 0 {
                    tracing::debug!(copied = n, "region copy pass");
                }
                Ok(())
            });
        }
        // The object-store snapshot manifests (clients' last resort at start-up).
        self.every(self.config().snapshot_every, "snapshots", true, true, |i| async move {
            let p = i.snapshot_pass().await?;
            if p.written + p.removed > 0 {
                tracing::debug!(?p, "snapshot pass");
            }
            Ok(())
        });
        // Scheduled changes (change_control.rs): applied or expired at their time, by the
        // leader (and once, whichever replica: the publish transaction moves the request).
        self.every(self.config().rollout_tick_every, "change scheduler", false, true, |i| async move {
            i.tick_changes().await.map(|_| ())
        });
        // Webhook deliveries (the loop checks leadership itself: its tasks outlive a tick).
        self.keep_task(tokio::spawn(self.clone().webhook_loop()));
        // Expired pins go as their time comes, at the scheduler's pace.
        self.every(self.config().rollout_tick_every, "pin expiry", false, true, |i| async move {
            i.expire_pins().await.map(|_| ())
        });
        // Consumers not seen for a long time are forgotten; lag gauges.
        self.every(
            Duration::from_secs(30),
            "consumer upkeep",
            true,
            true,
            |i| async move { i.consumer_upkeep().await },
        );
        Ok(())
    }

    /// Runs `pass` every `interval` until shutdown. A failed pass is logged (as a warning
    /// when `loud`; frequent passes log at debug, or an outage would flood the log) and the
    /// next one tries again.
    fn every<F, Fut>(&self, interval: Duration, what: &'static str, loud: bool, leader_only: bool, pass: F)
    where
        F: Fn(Imprint) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let imprint = self.clone();
        self.keep_task(tokio::spawn(async move {
            let mut stop = imprint.stopping();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if leader_only && !imprint.is_leader() {
                    continue;
                }
                // A pass of the leader stops the moment leadership is lost (its open
                // transaction rolls back), before another worker can take the lock.
                let mut leading = imprint.inner.leader.subscribe();
                let outcome = tokio::select! {
                    r = pass(imprint.clone()) => r,
                    _ = leading.wait_for(|l| !l), if leader_only => {
                        tracing::warn!(what, "leadership lost: the pass was stopped");
                        continue;
                    }
                };
                match outcome {
                    Err(e) if loud => tracing::warn!(error = %e, what, "background pass failed; the next one retries"),
                    Err(e) => tracing::debug!(error = %e, what, "background pass failed; the next one retries"),
                    Ok(()) => {}
                }
            }
        }));
    }

    /// Is this process the worker that runs the background passes now?
    pub fn is_leader(&self) -> bool {
        *self.inner.leader.borrow()
    }

    /// Takes the worker leader lock when it is free and holds it while the connection
    /// lives (checked every few seconds); when the connection breaks, leadership ends here
    /// and Postgres frees the lock for another worker (also when this process dies).
    async fn hold_leadership(self) {
        use sqlx::Connection;
        let mut stop = self.stopping();
        let options = self.pool().connect_options().as_ref().clone();
        loop {
            let attempt = async {
                let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                // Postgres ends this session (and frees the lock) only after it has been
                // silent for LEADER_SILENCE; this worker gives leadership up after
                // LEADER_PING_TIMEOUT without an answer — well before — so two workers
                // never lead at once.
                sqlx::query(&format!("SET idle_session_timeout = '{}s'", LEADER_SILENCE.as_secs()))
                    .execute(&mut conn)
                    .await?;
                loop {
                    if crate::store::try_session_lock(&mut conn, LEADER_LOCK).await? {
                        tracing::info!("this worker leads: it runs the scheduler, janitor, pin expiry and snapshots");
                        metrics::gauge!("imprint_worker_leader").set(1.0);
                        self.inner.leader.send_replace(true);
                        loop {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            tokio::time::timeout(LEADER_PING_TIMEOUT, conn.ping()).await.map_err(|_| {
                                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to a ping");
                                sqlx::Error::Io(e)
                            })??;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                #[allow(unreachable_code)]
                Ok::<(), crate::Error>(())
            };
            let outcome = tokio::select! {
                r = attempt => r,
                _ = stop.changed() => {
                    self.inner.leader.send_replace(false);
                    return;
                }
            };
            if self.inner.leader.send_replace(false) {
                metrics::gauge!("imprint_worker_leader").set(0.0);
                tracing::warn!(error = ?outcome.err().map(|e| e.to_string()), "lost the worker leader lock; trying to take it again");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Forgets consumers not seen for `consumer_expiry` (every 10 minutes) and updates
    /// the lag gauges.
    async fn consumer_upkeep(&self) -> Result<()> {
        if let Err(e) = self.update_lag_gauges().await {
            tracing::debug!(error = %e, "lag gauges not updated");
        }
        let due = {
            let mut last = self.inner.last_consumer_expiry.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t: tokio::time::Instant| t.elapsed() > Duration::from_secs(600));
            if due {
                *last = Some(tokio::time::Instant::now());
            }
            due
        };
        if due {
            let expiry = chrono::Duration::from_std(self.config().consumer_expiry).unwrap_or(chrono::Duration::days(7));
            let anonymous = chrono::Duration::from_std(self.config().anonymous_consumer_expiry)
                .unwrap_or(chrono::Duration::hours(1))
                .min(expiry);
            let n = self.expire_consumers_split(expiry, anonymous).await?;
            if n > 0 {
                tracing::info!(expired = n, "expired consumers not seen recently");
            }
        }
        Ok(())
    }

    /// Flushes the consumer audit every interval (and once more at shutdown).
    async fn audit_loop(self) {
        let mut stop = self.stopping();
        let mut tick = tokio::time::interval(self.config().audit_flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.changed() => true,
            };
            metrics::gauge!("imprint_audit_buffered").set(self.audit().len() as f64);
            if let Err(e) = self.flush_audit().await {
                tracing::warn!(error = %e, buffered = self.audit().len(), "audit flush failed; keeping observations for the next try");
            }
            if let Err(e) = self.flush_plaintext_reads().await {
                tracing::warn!(error = %e, "plaintext-read audit flush failed; keeping the counts for the next try");
            }
            if stopping {
                return;
            }
        }
    }
}

/// The advisory lock the leading worker holds ("imprlead").
const LEADER_LOCK: i64 = 0x696d_7072_6c65_6164;

/// How long the leader's lock connection may be silent before Postgres ends it.
const LEADER_SILENCE: Duration = Duration::from_secs(15);
/// How long the leader waits for its lock connection to answer a ping.
const LEADER_PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a server looks for token revocations made anywhere.
const REVOCATION_CHECK: Duration = Duration::from_secs(2);

impl Imprint {
    /// Compares the revocation mark every `REVOCATION_CHECK`; when it moved, reads which
    /// tokens were revoked since the last look and ends what they hold open here.
    async fn follow_revocations(self) {
        let mut stop = self.stopping();
        let mut seen: Option<(i64, Option<chrono::DateTime<chrono::Utc>>)> = None;
        loop {
            let step = async {
                let mark = crate::store::tokens::revocation_mark(self.pool()).await?;
                if let Some(before) = seen.filter(|s| *s != mark) {
                    // Revocation times are the revoking server's clock: look a minute
                    // back so a skewed clock loses nothing (hashes already known are
                    // noted again, harmlessly).
                    let since = before.1.unwrap_or(chrono::DateTime::UNIX_EPOCH) - chrono::Duration::minutes(1);
                    self.tokens_revoked(crate::store::tokens::revoked_since(self.pool(), since).await?);
                }
                Ok::<_, crate::Error>(mark)
            };
            match step.await {
                Ok(mark) => seen = Some(mark),
                Err(e) => tracing::debug!(error = %e, "revocation check failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(REVOCATION_CHECK) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
