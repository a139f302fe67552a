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

/// What a server process does (`imprint-server serve --roles api,publish,console,worker`,
/// default all). Every role is stateless; they share Postgres and the object store.
/// - `api`: consumer polls, `/latest`, payload downloads, reads of `/api/v1`, `/apollo`;
///   flushes the consumer audit its polls recorded.
/// - `publish`: every other `/api/v1` call (topics, publishing, scopes, pins, rollouts)
///   and the reads too.
/// - `console`: the web console.
/// - `worker`: the rollout scheduler, the janitor, pin expiry, snapshot manifests,
///   webhook deliveries and consumer expiry — run by the one worker holding the leader lock (a Postgres
///   advisory lock), so once across replicas; the others take over when it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub publish: bool,
    pub console: bool,
    pub worker: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Self::ALL
    }
}

impl Roles {
    pub const ALL: Roles = Roles { api: true, publish: true, console: true, worker: true };
    pub const NONE: Roles = Roles { api: false, publish: false, console: false, worker: false };

    /// `api,publish,console,worker` (any non-empty subset, comma-separated; `all`).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let mut r = Roles::NONE;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => r = Roles::ALL,
                "api" => r.api = true,
                "publish" => r.publish = true,
                "console" => r.console = true,
                "worker" => r.worker = true,
                other => {
                    return Err(format!("unknown role {other:?}: roles are api, publish, console, worker (or all)"))
                }
            }
        }
        if r == Roles::NONE {
            return Err("no role given: choose some of api, publish, console, worker (or all)".into());
        }
        Ok(r)
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> =
            [(self.api, "api"), (self.publish, "publish"), (self.console, "console"), (self.worker, "worker")]
                .into_iter()
                .filter_map(|(on, n)| on.then_some(n))
                .collect();
        f.write_str(&names.join(","))
    }
}

/// Where registered objects live in the store unless `IMPRINT_REGISTER_AREA` says otherwise.
pub const DEFAULT_REGISTER_AREA: &str = "external";

/// Checks an `IMPRINT_REGISTER_AREA`: plain segments, outside Imprint's own areas.
pub fn check_register_area(area: &str) -> std::result::Result<(), String> {
    let plain = area.split('/').all(|s| {
        !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    let first = area.split('/').next().unwrap_or("");
    if !plain || ["uploads", "topics", "snapshots"].contains(&first) {
        return Err(format!(
            "{area:?}: a folder of plain names (letters, digits, '.', '_', '-') outside uploads/, topics/ and snapshots/"
        ));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Config {
    /// What this process does (default: everything).
    pub roles: Roles,
    /// How often the whole serving state is reloaded as a safety net behind NOTIFY.
    pub full_reload_every: Duration,
    /// How often buffered consumer observations are written.
    pub audit_flush_every: Duration,
    /// Consumers not seen for this long are forgotten.
    pub consumer_expiry: Duration,
    /// Anonymous consumers (no principal) not seen for this long are forgotten.
    pub anonymous_consumer_expiry: Duration,
    /// At most this many distinct (topic, instance) observations wait in memory.
    pub audit_max_entries: u64,
    /// How long a node may hold another version than expected before it counts as lagging.
    pub lag_grace: Duration,
    /// Record what polls report (on by default; off only to measure its cost).
    pub audit_enabled: bool,
    /// How often the rollout scheduler looks for due stages.
    pub rollout_tick_every: Duration,
    /// Anonymous polls are refused (`IMPRINT_POLL_AUTH=required`).
    pub poll_auth_required: bool,
    /// Long polls this process holds open at once; past it a long poll is answered at
    /// once, as a short poll with a backoff (`IMPRINT_MAX_LONG_POLLS`).
    pub max_long_polls: usize,
    /// Memory the requests held open may hold, in bytes (`IMPRINT_LONG_POLL_MEMORY_MB`).
    pub max_long_poll_bytes: usize,
    /// Requests one anonymous client address may hold open (`IMPRINT_MAX_LONG_POLLS_PER_ADDRESS`).
    pub max_long_polls_per_address: usize,
    /// Consumers kept per topic in the audit; the least recently seen anonymous ones go first.
    pub max_consumers_per_topic: u64,
    /// How long an Apollo `/notifications/v2` is held before answering 304 (Apollo: 60 s).
    pub apollo_hold: Duration,
    /// Request headers whose values become labels of Spring Cloud Config requests
    /// (`IMPRINT_SPRING_LABEL_HEADERS`, e.g. `X-Imprint-Region=region`): (header name in
    /// lower case, label key).
    pub spring_label_headers: Vec<(String, String)>,
    /// Where payloads larger than a topic's inline limit go (`IMPRINT_OBJECT_STORE`).
    pub objects: crate::objects::Objects,
    /// The regions besides the home one (`objects`), and the order consumers are sent
    /// to them in (`IMPRINT_OBJECT_STORES`, `IMPRINT_REGION_PREFERENCE`; docs/regions.md).
    pub regions: crate::regions::Regions,
    /// How often the janitor applies retention and sweeps stray objects (`IMPRINT_JANITOR_SECS`).
    pub janitor_every: Duration,
    /// `/metrics` is answered on the public listener (false: `IMPRINT_METRICS_ADDR` is
    /// set and only that listener serves it).
    pub metrics_on_public_listener: bool,
    /// Registered objects live under `<register_area>/<owning team>/` of the store
    /// (`IMPRINT_REGISTER_AREA`, default `external`).
    pub register_area: String,
    /// How often the worker brings the object-store snapshot manifests up to date.
    pub snapshot_every: Duration,
    /// How long one webhook delivery attempt may take, connecting included
    /// (`IMPRINT_WEBHOOK_TIMEOUT_SECS`, default 10 s).
    pub webhook_timeout: Duration,
    /// The Prometheus that rollout analyses query (`IMPRINT_PROMETHEUS_URL`); `None`: a plan
    /// naming an analysis is refused.
    pub prometheus: Option<crate::prometheus::PrometheusClient>,
    /// How often the worker looks for due webhook deliveries.
    pub webhook_tick_every: Duration,
    /// Fair serving under overload and read coalescing (docs/fairness.md, `IMPRINT_FAIR_*`).
    pub fair: crate::fair::FairConfig,
    /// The key provider of at-rest encryption, with its cache of unwrapped data keys
    /// (`IMPRINT_KEY_PROVIDER`, docs/encryption.md). `None`: none configured. Not used by
    /// publishing or serving yet (docs/encryption.md, "Not built yet").
    pub keys: Option<crate::keys::Keys>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            roles: Roles::ALL,
            full_reload_every: Duration::from_secs(30),
            audit_flush_every: Duration::from_secs(1),
            consumer_expiry: Duration::from_secs(7 * 24 * 3600),
            anonymous_consumer_expiry: Duration::from_secs(3600),
            audit_max_entries: 1_000_000,
            lag_grace: Duration::from_secs(60),
            audit_enabled: true,
            rollout_tick_every: Duration::from_millis(500),
            poll_auth_required: false,
            max_long_polls: 10_000,
            max_long_poll_bytes: 256 << 20,
            max_long_polls_per_address: 1_000,
            max_consumers_per_topic: 100_000,
            apollo_hold: Duration::from_secs(60),
            spring_label_headers: Vec::new(),
            objects: crate::objects::Objects::default(),
            regions: crate::regions::Regions::default(),
            janitor_every: Duration::from_secs(60),
            register_area: DEFAULT_REGISTER_AREA.to_owned(),
            metrics_on_public_listener: true,
            snapshot_every: Duration::from_secs(10),
            webhook_timeout: Duration::from_secs(10),
            prometheus: None,
            webhook_tick_every: Duration::from_millis(500),
            fair: crate::fair::FairConfig::default(),
            keys: None,
        }
    }
}

/// The handle everything goes through. Cheap to clone.
#[derive(Clone)]
pub struct Imprint {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// This server's address as others reach it (`IMPRINT_PUBLIC_URL`, else the bound
    /// listener): where external validators download candidates (the checks module).
    pub public_url: std::sync::OnceLock<String>,
    /// The server's fair-serving limiter (its type is the server's: `fair_limiter`).
    pub fair_limiter: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
    pub pool: PgPool,
    pub state: Arc<ServingState>,
    pub audit: AuditBuffer,
    pub config: Config,
    pub clock: SharedClock,
    /// Background work stops (the serving state stops following, the audit flushes one
    /// last time, the scheduler finishes its pass).
    pub stop: watch::Sender<bool>,
    /// Long polls answer now: the server is draining.
    pub draining: watch::Sender<bool>,
    /// The background tasks, awaited at shutdown.
    pub tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Failed sign-ins per username and client address.
    pub sign_in: SignInThrottle,
    /// Bounds concurrent argon2 work (CPU and ~19 MiB of memory each).
    pub hashing: tokio::sync::Semaphore,
    /// Requests held open now (long polls, Apollo notifications, live streams).
    pub(crate) long_polls: Arc<crate::long_polls::LongPolls>,
    /// Recently seen tokens: hash → (identity, when looked up). Polls with a token do not
    /// query Postgres each time; a revoked token stops working within `TOKEN_CACHE`.
    pub tokens: std::sync::Mutex<std::collections::HashMap<String, (crate::auth::Caller, std::time::Instant)>>,
    /// This worker holds the leader lock and runs the background passes.
    pub leader: watch::Sender<bool>,
    /// Moves when a token is revoked (here or on another server, seen within seconds):
    /// what is held open re-checks its credential against `revoked`.
    pub revocations: watch::Sender<u64>,
    /// Hashes of tokens revoked in the last `REVOKED_KEPT` (hash → when it was seen):
    /// what a parked request re-checks, without a query.
    pub revoked: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Bearer tokens recently found unknown (hash → when): a flood of made-up tokens
    /// costs no query each.
    pub unknown_tokens: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Plaintext reads of at-rest topics waiting for the audit flusher.
    pub plaintext_reads: crate::plaintext_reads::PlaintextReads,
    /// When this worker last expired old consumers.
    pub last_consumer_expiry: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Identical concurrent reads share one query (service/src/coalesce.rs).
    pub(crate) coalesced: crate::coalesce_reads::Reads,
}

/// How long a looked-up token is trusted without asking Postgres again.
const TOKEN_CACHE: Duration = Duration::from_secs(5);
/// How long a revoked token's hash is remembered (longer than any request is held).
const REVOKED_KEPT: Duration = Duration::from_secs(600);

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
        let coalesced = crate::coalesce_reads::Reads::new(config.fair.coalesce_ttl, config.fair.coalesce_entries);
        Self {
            inner: Arc::new(Inner {
                public_url: std::sync::OnceLock::new(),
                fair_limiter: std::sync::OnceLock::new(),
                pool,
                state: Arc::new(ServingState::default().with_regions(&config.regions).with_keys(config.keys.clone())),
                audit,
                config,
                clock,
                stop: watch::channel(false).0,
                draining: watch::channel(false).0,
                tasks: std::sync::Mutex::new(Vec::new()),
                sign_in: SignInThrottle::default(),
                hashing: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2),
                ),
                long_polls: Default::default(),
                tokens: std::sync::Mutex::new(std::collections::HashMap::new()),
                last_consumer_expiry: std::sync::Mutex::new(None),
                coalesced,
                leader: watch::channel(false).0,
                revocations: watch::channel(0).0,
                revoked: std::sync::Mutex::new(std::collections::HashMap::new()),
                unknown_tokens: std::sync::Mutex::new(std::collections::HashMap::new()),
                plaintext_reads: Default::default(),
            }),
        }
    }

    /// Where others reach this server (set once, at startup): the base of the download
    /// URLs external validators get (docs/validation.md).
    pub fn set_public_url(&self, url: String) {
        let _ = self.inner.public_url.set(url);
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The payload object store.
    pub fn objects(&self) -> &crate::objects::Objects {
        &self.inner.config.objects
    }

    pub fn state(&self) -> &Arc<ServingState> {
        &self.inner.state
    }

    /// The fair-serving limiter of this handle, made by `init` on first use: one per
    /// server, so an application's requests share one bucket whichever listener (HTTP,
    /// gRPC) they come by. The type is the server's (server/src/fairness.rs); `None` if a
    /// limiter of another type was made first.
    pub fn fair_limiter<T: std::any::Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<Arc<T>> {
        self.inner.fair_limiter.get_or_init(|| Arc::new(init())).clone().downcast::<T>().ok()
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

    /// Stops background work and wakes every waiting long poll (at once, without
    /// waiting for anything: tests use it to stop a server's background).
    pub fn shutdown(&self) {
        self.inner.draining.send_replace(true);
        self.inner.stop.send_replace(true);
    }

    /// The first step of a graceful shutdown: long polls answer now. Background work
    /// goes on, so what the last polls report is still flushed by `finish_shutdown`.
    pub fn begin_shutdown(&self) {
        self.inner.draining.send_replace(true);
    }

    /// The last step of a graceful shutdown, once no request is in flight: stop the
    /// background loops and wait for them — the audit buffer is flushed, the scheduler's
    /// pass finishes. The pool can be closed after this.
    pub async fn finish_shutdown(&self) {
        self.shutdown();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "a background task ended badly");
            }
        }
    }

    /// Background loops watch this: it turns true when they must stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Long polls watch this: it turns true when they must answer now.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.inner.draining.subscribe()
    }

    pub(crate) fn keep_task(&self, t: tokio::task::JoinHandle<()>) {
        self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(t);
    }

    /// Is Postgres reachable right now?
    pub async fn ready(&self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(2), store::ping(self.pool())).await, Ok(Ok(())))
    }

    /// A topic's whole resolution history (versions, scope history, every pin ever made),
    /// read from Postgres: the serving state keeps only the present.
    pub(crate) async fn history_of(
        &self,
        conn: &mut sqlx::PgConnection,
        topic_id: i64,
    ) -> Result<imprint_domain::TopicHistory> {
        let snap = store::serving::snapshot(conn, Some(topic_id)).await?;
        Ok(crate::serving::histories(&snap).remove(&topic_id).unwrap_or_default())
    }

    /// Applies a committed change to this server's memory at once (other servers learn
    /// it through NOTIFY), so a caller reads its own writes.
    pub(crate) async fn refresh_topic(&self, topic_id: i64) {
        for attempt in 1..=3 {
            match self.state().reload(self.pool(), Some(topic_id)).await {
                Ok(()) => return,
                Err(e) if attempt < 3 => {
                    tracing::debug!(error = %e, topic_id, attempt, "refreshing the serving state after a write");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                // The safety net (`ServingState::catch_up`) loads it within its period.
                Err(e) => tracing::warn!(error = %e, topic_id, "could not refresh the serving state after a write"),
            }
        }
    }

    /// Who is behind a bearer token (anonymous without one), asking Postgres: a revoked
    /// token is refused at once. A token found unknown within `TOKEN_CACHE` is refused
    /// without asking again.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<crate::auth::Caller> {
        match bearer {
            None => Ok(crate::auth::Caller::Anonymous),
            Some(t) => self.authenticate_hash(&crate::auth::hash_token(t)).await,
        }
    }

    async fn authenticate_hash(&self, hash: &str) -> Result<crate::auth::Caller> {
        let unknown = || Error::Unauthorized("unknown or revoked token".into());
        let now = std::time::Instant::now();
        {
            let known_bad = self.inner.unknown_tokens.lock().unwrap_or_else(|e| e.into_inner());
            if known_bad.get(hash).is_some_and(|at| now.duration_since(*at) < TOKEN_CACHE) {
                return Err(unknown());
            }
        }
        match self.lookup_token(hash).await {
            Err(Error::Unauthorized(m)) => {
                let mut known_bad = self.inner.unknown_tokens.lock().unwrap_or_else(|e| e.into_inner());
                if known_bad.len() >= 10_000 {
                    known_bad.retain(|_, at| now.duration_since(*at) < TOKEN_CACHE);
                    if known_bad.len() >= 10_000 {
                        known_bad.clear();
                    }
                }
                known_bad.insert(hash.to_owned(), now);
                Err(Error::Unauthorized(m))
            }
            other => other,
        }
    }

    /// Ends what a revoked credential holds open: Ok unless the token (by its hash; None
    /// for anonymous callers) is among the recently revoked ones, then 401. Asks no
    /// database: a revocation wakes every parked poll, and thousands of lookups at once
    /// would be a self-made outage.
    pub fn recheck_credential(&self, hash: Option<&str>) -> Result<()> {
        let Some(hash) = hash else { return Ok(()) };
        if self.inner.revoked.lock().unwrap_or_else(|e| e.into_inner()).contains_key(hash) {
            return Err(Error::Unauthorized("this token has been revoked".into()));
        }
        Ok(())
    }

    /// Notes tokens revoked (by their hashes): cached identities of them are forgotten,
    /// requests they hold open end (`revocations`).
    pub(crate) fn tokens_revoked(&self, hashes: Vec<String>) {
        if hashes.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        {
            let mut cache = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
            for h in &hashes {
                cache.remove(h);
            }
        }
        {
            let mut revoked = self.inner.revoked.lock().unwrap_or_else(|e| e.into_inner());
            revoked.retain(|_, at| now.duration_since(*at) < REVOKED_KEPT);
            revoked.extend(hashes.into_iter().map(|h| (h, now)));
        }
        self.inner.revocations.send_modify(|n| *n += 1);
    }

    /// Changes whenever a token is revoked (see `Inner::revocations`).
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.inner.revocations.subscribe()
    }

    /// Like `authenticate`, for polls: a token looked up within `TOKEN_CACHE` is not
    /// looked up again, so consumers polling with a token cost no query per poll (a
    /// revoked token keeps polling for at most that long).
    pub async fn authenticate_cached(&self, token: &str) -> Result<crate::auth::Caller> {
        self.authenticate_hash_cached(&crate::auth::hash_token(token)).await
    }

    async fn authenticate_hash_cached(&self, hash: &str) -> Result<crate::auth::Caller> {
        let now = std::time::Instant::now();
        {
            let cache = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((caller, at)) = cache.get(hash) {
                if now.duration_since(*at) < TOKEN_CACHE {
                    return Ok(caller.clone());
                }
            }
        }
        let caller = self.authenticate_hash(hash).await?;
        let mut cache = self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_CACHE);
        }
        cache.insert(hash.to_owned(), (caller.clone(), now));
        Ok(caller)
    }

    /// A topic the caller may read, by name (the settings operations need).
    pub(crate) async fn readable_topic(
        &self,
        caller: &crate::auth::Caller,
        topic: &imprint_domain::TopicName,
    ) -> Result<store::topics::TopicRef> {
        let mut conn = self.pool().acquire().await?;
        let t = store::topics::require(&mut conn, topic, false).await?;
        caller.require_read(&t.name, &t.owner, t.restricted)?;
        Ok(t)
    }

    /// Forgets cached tokens (after a revoke, so it takes effect on this server at once).
    pub fn forget_cached_tokens(&self) {
        self.inner.tokens.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Roles;

    #[test]
    fn roles_parse_and_print() {
        assert_eq!(Roles::parse("api,publish,console,worker").unwrap(), Roles::ALL);
        assert_eq!(Roles::parse("all").unwrap(), Roles::ALL);
        let r = Roles::parse(" api , worker").unwrap();
        assert!(r.api && r.worker && !r.publish && !r.console);
        assert_eq!(r.to_string(), "api,worker");
        assert!(Roles::parse("").unwrap_err().contains("no role"));
        assert!(Roles::parse("api,cache").unwrap_err().contains("\"cache\""));
    }
}
