//! Fair serving's settings and its one hook into the service: a long poll gives its
//! fair-serving place back while it is parked (docs/fairness.md). The limiter itself is the
//! server's (server/src/fairness.rs, over `imprint_domain::fairness`); the read coalescing
//! is `crate::coalesce`.
use std::time::Duration;

/// `IMPRINT_FAIR_*` (docs/fairness.md).
#[derive(Clone, Debug)]
pub struct FairConfig {
    /// The per-application adaptive limit is applied (`IMPRINT_FAIR_ENABLED`, default true).
    pub enabled: bool,
    /// How long a request over its application's limit waits for a place before 429
    /// (`IMPRINT_FAIR_QUEUE_MS`, default 100).
    pub queue_wait: Duration,
    /// Refusals of one application per second at most (`IMPRINT_FAIR_REFUSALS_PER_S`,
    /// default 200): a request that would be refused past that rate keeps waiting for a
    /// place — and is refused in its turn — so an application that ignores `Retry-After` and
    /// retries at once is slowed to this rate instead of spending the server's CPU on
    /// refusals. 0: no pacing.
    pub refusals_per_s: u32,
    /// The longest a request waits in all before it is refused, however many are refused
    /// before it (`IMPRINT_FAIR_MAX_WAIT_MS`, default 2000, at least the queue wait).
    pub max_wait: Duration,
    /// The delay through the runtime's queue of ready tasks the server aims to stay under
    /// (`IMPRINT_FAIR_TARGET_DELAY_US`, default 250 µs): above it, an application with
    /// requests waiting hands each freed place on a little later, so a flood cannot keep
    /// the CPU saturated and every other application's requests queued behind its tasks.
    /// 0: places are handed on at once.
    pub target_delay: Duration,
    /// Each application's limit starts here (`IMPRINT_FAIR_INITIAL_LIMIT`, default 20)…
    pub initial_limit: usize,
    /// …and moves between these (`IMPRINT_FAIR_MIN_LIMIT` 4, `IMPRINT_FAIR_MAX_LIMIT` 200).
    pub min_limit: usize,
    pub max_limit: usize,
    /// Applications tracked at once (`IMPRINT_FAIR_MAX_BUCKETS`, default 1024); past it, idle
    /// ones are forgotten, and while none is idle new ones share one overflow bucket.
    pub max_buckets: usize,
    /// `Retry-After` of a 429 `overloaded` (`IMPRINT_FAIR_RETRY_AFTER_SECS`, default 1).
    pub retry_after_s: u64,
    /// How long a coalesced read's answer is reused (`IMPRINT_COALESCE_MS`, default 500;
    /// 0: only identical requests in flight at the same time share a query).
    pub coalesce_ttl: Duration,
    /// Answers kept per kind of read (`IMPRINT_COALESCE_ENTRIES`, default 10 000).
    pub coalesce_entries: usize,
}

impl Default for FairConfig {
    fn default() -> Self {
        FairConfig {
            enabled: true,
            queue_wait: Duration::from_millis(100),
            refusals_per_s: 200,
            max_wait: Duration::from_millis(2000),
            target_delay: Duration::from_micros(250),
            initial_limit: 20,
            min_limit: 4,
            max_limit: 200,
            max_buckets: 1024,
            retry_after_s: 1,
            coalesce_ttl: Duration::from_millis(500),
            coalesce_entries: 10_000,
        }
    }
}

/// What to run when the request in this task parks (its fair-serving place, released).
pub type ParkHook = Box<dyn FnOnce() + Send>;

tokio::task_local! {
    static ON_PARK: std::sync::Mutex<Option<ParkHook>>;
}

/// Runs `fut` with `hook` to be called (once) if it parks: the server's fair-serving layer
/// wraps a request so that a long poll, while it waits for news, holds no place.
pub async fn with_park_hook<F: std::future::Future>(hook: ParkHook, fut: F) -> F::Output {
    ON_PARK.scope(std::sync::Mutex::new(Some(hook)), fut).await
}

/// The request in this task is about to wait for news (a long poll parks): its working
/// part is over. Without a hook (no fair-serving layer) nothing happens.
pub(crate) fn parking() {
    let hook = ON_PARK.try_with(|h| h.lock().unwrap_or_else(|e| e.into_inner()).take()).ok().flatten();
    if let Some(hook) = hook {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn the_hook_runs_once_when_the_request_parks_and_not_without_a_scope() {
        super::parking(); // no scope: nothing
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        super::with_park_hook(Box::new(move || _ = r.fetch_add(1, Ordering::SeqCst)), async {
            super::parking();
            super::parking();
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
