//! Imprint's stateful core behind one `Imprint` handle: Postgres storage, the in-memory
//! serving state, and every operation (with its authorization) that the HTTP API and the
//! console call. Nothing above this crate talks to Postgres directly.
#![forbid(unsafe_code)]

pub mod audit;
mod audit_log;
pub mod auth;
pub mod error;
pub mod model;
mod pins;
pub mod poll;
pub mod rollouts;
pub mod serving;
mod topics;
mod users;
mod versions;

pub use auth::Caller;
pub use error::{Error, Result};
pub use pins::PinInput;
pub use poll::{PollRequest, PollResponse};
pub use rollouts::{PlanChoice, RolloutInfo};
pub use topics::{NewTopic, TopicPatch};
pub use users::{ADMIN_USERNAME, MIN_PASSWORD_CHARS};
pub use versions::{Payload, PublishInput, RolloutRequest};

use serving::ServingState;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct Config {
    /// How often the whole serving state is reloaded as a safety net behind NOTIFY.
    pub full_reload_every: Duration,
    /// How often buffered consumer observations are written.
    pub audit_flush_every: Duration,
    /// Consumers not seen for this long are forgotten.
    pub consumer_expiry: Duration,
    /// At most this many distinct (topic, instance) observations wait in memory.
    pub audit_max_entries: u64,
    /// How long a node may hold another version than expected before it counts as lagging.
    pub lag_grace: Duration,
    /// Record what polls report (on by default; off only to measure its cost).
    pub audit_enabled: bool,
    /// How often the rollout scheduler looks for due stages.
    pub rollout_tick_every: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            full_reload_every: Duration::from_secs(30),
            audit_flush_every: Duration::from_secs(1),
            consumer_expiry: Duration::from_secs(7 * 24 * 3600),
            audit_max_entries: 1_000_000,
            lag_grace: Duration::from_secs(60),
            audit_enabled: true,
            rollout_tick_every: Duration::from_millis(500),
        }
    }
}

/// The handle everything goes through. Cheap to clone.
#[derive(Clone)]
pub struct Imprint {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    state: Arc<ServingState>,
    audit: audit::AuditBuffer,
    config: Config,
    stop: watch::Sender<bool>,
    /// Failed sign-ins per username and client address.
    sign_in: users::SignInThrottle,
    /// Bounds concurrent argon2 work (CPU and ~19 MiB of memory each).
    hashing: tokio::sync::Semaphore,
}

/// A pool that fails fast when Postgres is away, so requests get a 503 instead of hanging.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().max_connections(16).min_connections(0).acquire_timeout(Duration::from_secs(3))
}

impl Imprint {
    /// Connects lazily (the server starts and serves from memory even if Postgres is not up yet).
    pub fn connect_lazy(database_url: &str, config: Config) -> Result<Self> {
        let pool =
            pool_options().connect_lazy(database_url).map_err(|e| Error::invalid(format!("DATABASE_URL: {e}")))?;
        Ok(Self::with_pool(pool, config))
    }

    pub fn with_pool(pool: PgPool, config: Config) -> Self {
        let audit = audit::AuditBuffer::new(config.audit_max_entries);
        Self {
            inner: Arc::new(Inner {
                pool,
                state: Arc::new(ServingState::default()),
                audit,
                config,
                stop: watch::channel(false).0,
                sign_in: users::SignInThrottle::default(),
                hashing: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2),
                ),
            }),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn state(&self) -> &Arc<ServingState> {
        &self.inner.state
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn audit(&self) -> &audit::AuditBuffer {
        &self.inner.audit
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(self.pool()).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
            e => Error::Internal(format!("migration failed: {e}")),
        })
    }

    /// Loads the serving state once and starts following changes in the background.
    pub async fn start_background(&self) -> Result<()> {
        self.state().reload(self.pool(), None).await?;
        tokio::spawn(serving::follow_changes(
            self.state().clone(),
            self.pool().clone(),
            self.inner.config.full_reload_every,
            self.inner.stop.subscribe(),
        ));
        tokio::spawn(self.clone().audit_loop());
        tokio::spawn(self.clone().rollout_loop(self.inner.config.rollout_tick_every));
        Ok(())
    }

    /// Flushes the consumer audit every interval (and once more at shutdown), and
    /// expires consumers not seen for a long time.
    async fn audit_loop(self) {
        let mut stop = self.stopping();
        let mut tick = tokio::time::interval(self.inner.config.audit_flush_every);
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
                    chrono::Duration::from_std(self.inner.config.consumer_expiry).unwrap_or(chrono::Duration::days(7));
                match self.expire_consumers(expiry).await {
                    Ok(n) if n > 0 => tracing::info!(expired = n, "expired consumers not seen recently"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "expiring consumers failed"),
                }
            }
        }
    }

    /// Stops background work and wakes every waiting long poll.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Is Postgres reachable right now?
    pub async fn ready(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(self.pool())).await,
            Ok(Ok(_))
        )
    }

    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Caller> {
        match bearer {
            None => Ok(Caller::Anonymous),
            Some(t) => auth::authenticate(self.pool(), t).await,
        }
    }

    /// Applies a committed change to this server's memory at once (other servers learn
    /// it through NOTIFY), so a caller reads its own writes.
    async fn refresh_topic(&self, topic_id: i64) {
        if let Err(e) = self.state().reload(self.pool(), Some(topic_id)).await {
            tracing::warn!(error = %e, topic_id, "could not refresh the serving state after a write");
        }
    }
}

/// Announces a change of `topic_id` to every server, inside the writing transaction.
async fn notify(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, topic_id: i64) -> Result<()> {
    sqlx::query("UPDATE topics SET change_seq = change_seq + 1 WHERE id = $1")
        .bind(topic_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(serving::CHANGE_CHANNEL)
        .bind(topic_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Opaque cursors for newest-first lists: the key the next page starts below.
pub(crate) mod cursor {
    use base64::Engine;
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub fn encode(n: i64) -> String {
        ENGINE.encode(format!("c{n}"))
    }

    pub fn decode(s: &str) -> crate::Result<i64> {
        ENGINE
            .decode(s)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix('c').and_then(|n| n.parse().ok()))
            .ok_or_else(|| crate::Error::invalid("cursor is not one this server returned"))
    }

    pub fn limit(l: Option<u32>) -> crate::Result<i64> {
        match l {
            None => Ok(50),
            Some(l @ 1..=500) => Ok(i64::from(l)),
            Some(l) => Err(crate::Error::invalid(format!("limit must be between 1 and 500, not {l}"))),
        }
    }
}
