//! The `Imprint` handle: the pool, the serving state, the consumer audit buffer, the
//! clock and the configuration every operation works with.
use crate::audit::AuditBuffer;
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::serving::ServingState;
use crate::store;
use crate::throttle::SignInThrottle;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub pool: PgPool,
    pub state: Arc<ServingState>,
    pub audit: AuditBuffer,
    pub config: Config,
    pub clock: SharedClock,
    pub stop: watch::Sender<bool>,
    /// Failed sign-ins per username and client address.
    pub sign_in: SignInThrottle,
    /// Bounds concurrent argon2 work (CPU and ~19 MiB of memory each).
    pub hashing: tokio::sync::Semaphore,
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
        Self::with_clock(pool, config, Arc::new(SystemClock))
    }

    /// With another clock (tests move time instead of waiting).
    pub fn with_clock(pool: PgPool, config: Config, clock: SharedClock) -> Self {
        let audit = AuditBuffer::new(config.audit_max_entries);
        Self {
            inner: Arc::new(Inner {
                pool,
                state: Arc::new(ServingState::default()),
                audit,
                config,
                clock,
                stop: watch::channel(false).0,
                sign_in: SignInThrottle::default(),
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

    pub fn audit(&self) -> &AuditBuffer {
        &self.inner.audit
    }

    /// The time as this service sees it (see `Clock`).
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub async fn migrate(&self) -> Result<()> {
        crate::MIGRATOR.run(self.pool()).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
            e => Error::Internal(format!("migration failed: {e}")),
        })
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
        matches!(tokio::time::timeout(Duration::from_secs(2), store::ping(self.pool())).await, Ok(Ok(())))
    }

    /// Applies a committed change to this server's memory at once (other servers learn
    /// it through NOTIFY), so a caller reads its own writes.
    pub(crate) async fn refresh_topic(&self, topic_id: i64) {
        if let Err(e) = self.state().reload(self.pool(), Some(topic_id)).await {
            tracing::warn!(error = %e, topic_id, "could not refresh the serving state after a write");
        }
    }

    /// Who is behind a bearer token (anonymous without one).
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<crate::auth::Caller> {
        match bearer {
            None => Ok(crate::auth::Caller::Anonymous),
            Some(t) => crate::auth::authenticate(self.pool(), t).await,
        }
    }
}
