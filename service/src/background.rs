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
        self.keep_task(tokio::spawn(self.clone().rollout_loop(self.config().rollout_tick_every)));
        self.keep_task(tokio::spawn(self.clone().janitor_loop()));
        self.keep_task(tokio::spawn(self.clone().pin_expiry_loop(self.config().rollout_tick_every)));
        Ok(())
    }

    /// Removes expired pins as their time comes (at the scheduler's pace).
    async fn pin_expiry_loop(self, every: Duration) {
        let mut stop = self.stopping();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.expire_pins().await {
                tracing::debug!(error = %e, "pin expiry pass failed");
            }
        }
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
