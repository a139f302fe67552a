//! The background work of a server: following changes into the serving state, flushing
//! the consumer audit, the rollout scheduler and the janitor (retention, stray objects).
use crate::error::Result;
use crate::handle::Imprint;
use crate::serving;
use std::time::Duration;

impl Imprint {
    /// Loads the serving state once and starts following changes in the background.
    pub async fn start_background(&self) -> Result<()> {
        self.state().reload(self.pool(), None).await?;
        self.keep_task(tokio::spawn(serving::follow_changes(
            self.state().clone(),
            self.pool().clone(),
            self.config().full_reload_every,
            self.stopping(),
        )));
        self.keep_task(tokio::spawn(self.clone().audit_loop()));
        // The scheduler: a pass every tick (stages land within that much of their due time).
        self.every(self.config().rollout_tick_every, "rollout scheduler", false, |i| async move {
            i.tick_rollouts().await.map(|_| ())
        });
        // Retention and stray objects.
        self.every(self.config().janitor_every, "janitor", true, |i| async move {
            let p = i.janitor_pass().await?;
            if p.purged > 0 || p.swept > 0 {
                tracing::debug!(?p, "janitor pass");
            }
            Ok(())
        });
        // Expired pins go as their time comes, at the scheduler's pace.
        self.every(self.config().rollout_tick_every, "pin expiry", false, |i| async move {
            i.expire_pins().await.map(|_| ())
        });
        Ok(())
    }

    /// Runs `pass` every `interval` until shutdown. A failed pass is logged (as a warning
    /// when `loud`; frequent passes log at debug, or an outage would flood the log) and the
    /// next one tries again.
    fn every<F, Fut>(&self, interval: Duration, what: &'static str, loud: bool, pass: F)
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
                match pass(imprint.clone()).await {
                    Err(e) if loud => tracing::warn!(error = %e, what, "background pass failed; the next one retries"),
                    Err(e) => tracing::debug!(error = %e, what, "background pass failed; the next one retries"),
                    Ok(()) => {}
                }
            }
        }));
    }

    /// Flushes the consumer audit every interval (and once more at shutdown), and
    /// expires consumers not seen for a long time.
    async fn audit_loop(self) {
        let mut stop = self.stopping();
        let mut tick = tokio::time::interval(self.config().audit_flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expiry = tokio::time::Instant::now();
        let mut last_lag = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.changed() => true,
            };
            metrics::gauge!("imprint_audit_buffered").set(self.audit().len() as f64);
            if let Err(e) = self.flush_audit().await {
                tracing::warn!(error = %e, buffered = self.audit().len(), "audit flush failed; keeping observations for the next try");
            }
            if stopping {
                return;
            }
            if last_lag.elapsed() > Duration::from_secs(30) {
                last_lag = tokio::time::Instant::now();
                if let Err(e) = self.update_lag_gauges().await {
                    tracing::debug!(error = %e, "lag gauges not updated");
                }
            }
            if last_expiry.elapsed() > Duration::from_secs(600) {
                last_expiry = tokio::time::Instant::now();
                let expiry =
                    chrono::Duration::from_std(self.config().consumer_expiry).unwrap_or(chrono::Duration::days(7));
                match self.expire_consumers(expiry).await {
                    Ok(n) if n > 0 => tracing::info!(expired = n, "expired consumers not seen recently"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "expiring consumers failed"),
                }
            }
        }
    }
}
