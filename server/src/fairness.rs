//! Fair serving under overload (docs/fairness.md): an adaptive concurrency limit per source
//! application on the consumer and read paths, so one application's flood queues briefly
//! and then gets 429 `overloaded` with `Retry-After`, while other applications keep their
//! latency.
//!
//! A request's application (its bucket) is its bearer token (by the token's hash), else the
//! `app` label of its `labels=` query, else its client address (behind trusted proxies, as
//! the listener finds it). Each bucket has an `imprint_domain::fairness::VegasLimit`,
//! fed with the working time of its requests: a long poll gives its place back when it parks
//! (`imprint_service::fair::with_park_hook`), so waiting for news neither counts as work nor
//! holds a place (parked polls stay under the long-poll caps). Buckets are bounded
//! (`IMPRINT_FAIR_MAX_BUCKETS`): idle ones are forgotten first, and while every bucket is
//! busy a new application shares the `overflow` bucket. Metrics per bucket (at most
//! `MAX_LABELLED` label values, then `other`): `imprint_fair_limit`, `imprint_fair_in_flight`
//! (gauges), `imprint_fair_rejected_total` (counter).
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use imprint_domain::fairness::{VegasLimit, VegasParams};
use imprint_service::fair::FairConfig;
use imprint_service::{Error, Imprint};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::Notify;

/// Distinct bucket labels metrics are kept under (process-wide); later buckets report as
/// `other`, so attacker-chosen app labels cannot grow the metric series without bound.
const MAX_LABELLED: usize = 256;
/// The longest `app` label kept as a bucket key (longer ones are cut).
const MAX_APP_CHARS: usize = 64;

/// Whose request it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BucketKey {
    /// The SHA-256 of the bearer token (hex).
    Token(String),
    App(String),
    Address(IpAddr),
}

impl BucketKey {
    /// The metric label (never a whole token hash: its first 12 hex digits).
    fn label(&self) -> String {
        match self {
            BucketKey::Token(h) => format!("token:{}", &h[..h.len().min(12)]),
            BucketKey::App(a) => format!("app:{a}"),
            BucketKey::Address(ip) => format!("addr:{ip}"),
        }
    }
}

struct BucketState {
    limit: VegasLimit,
    in_flight: usize,
    waiting: usize,
    last_used: Instant,
}

struct Bucket {
    state: Mutex<BucketState>,
    freed: Notify,
    limit_gauge: metrics::Gauge,
    in_flight_gauge: metrics::Gauge,
    rejected: metrics::Counter,
}

impl Bucket {
    fn new(label: &str, params: VegasParams) -> Self {
        let label = metric_label(label);
        Bucket {
            state: Mutex::new(BucketState {
                limit: VegasLimit::new(params),
                in_flight: 0,
                waiting: 0,
                last_used: Instant::now(),
            }),
            freed: Notify::new(),
            limit_gauge: metrics::gauge!("imprint_fair_limit", "bucket" => label.clone()),
            in_flight_gauge: metrics::gauge!("imprint_fair_in_flight", "bucket" => label.clone()),
            rejected: metrics::counter!("imprint_fair_rejected_total", "bucket" => label),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_take(&self) -> bool {
        let mut s = self.lock();
        s.last_used = Instant::now();
        if s.in_flight < s.limit.limit() {
            s.in_flight += 1;
            self.in_flight_gauge.set(s.in_flight as f64);
            true
        } else {
            false
        }
    }
}

fn metric_label(label: &str) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(label) || seen.len() < MAX_LABELLED {
        seen.insert(label.to_owned());
        label.to_owned()
    } else {
        "other".to_owned()
    }
}

/// A place taken in a bucket, given back (with the request's working time as the limit's
/// sample) when the request ends or parks.
struct Permit {
    bucket: Arc<Bucket>,
    started: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let rtt = self.started.elapsed();
        let mut s = self.bucket.lock();
        let in_flight = s.in_flight;
        s.limit.sample(rtt, in_flight);
        s.in_flight = s.in_flight.saturating_sub(1);
        self.bucket.limit_gauge.set(s.limit.limit() as f64);
        self.bucket.in_flight_gauge.set(s.in_flight as f64);
        drop(s);
        self.bucket.freed.notify_one();
    }
}

/// The buckets of one server.
pub struct Fairness {
    config: FairConfig,
    buckets: Mutex<HashMap<BucketKey, Arc<Bucket>>>,
    overflow: Arc<Bucket>,
}

impl Fairness {
    pub fn new(config: FairConfig) -> Self {
        let params = params(&config);
        Fairness { config, buckets: Mutex::new(HashMap::new()), overflow: Arc::new(Bucket::new("overflow", params)) }
    }

    fn bucket(&self, key: BucketKey) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = buckets.get(&key) {
            return b.clone();
        }
        if buckets.len() >= self.config.max_buckets.max(1) {
            // Forget the least recently used idle bucket; none idle: the overflow bucket.
            let idle = buckets
                .iter()
                .filter_map(|(k, b)| {
                    let s = b.lock();
                    (s.in_flight == 0 && s.waiting == 0).then(|| (s.last_used, k.clone()))
                })
                .min_by_key(|(at, _)| *at);
            match idle {
                Some((_, k)) => _ = buckets.remove(&k),
                None => return self.overflow.clone(),
            }
        }
        let b = Arc::new(Bucket::new(&key.label(), params(&self.config)));
        buckets.insert(key, b.clone());
        b
    }

    /// A place for a request of `key`: at once if its bucket is under its limit, else
    /// after waiting up to `queue_wait` for one; else 429 `overloaded`.
    async fn acquire(&self, key: BucketKey) -> Result<Permit, Error> {
        let bucket = self.bucket(key);
        let deadline = tokio::time::Instant::now() + self.config.queue_wait;
        bucket.lock().waiting += 1;
        let got = loop {
            let freed = bucket.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if bucket.try_take() {
                break true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // One last look: a place freed just as the wait ran out.
                break bucket.try_take();
            }
        };
        {
            let mut s = bucket.lock();
            s.waiting -= 1;
            if !got {
                s.limit.refused();
                bucket.limit_gauge.set(s.limit.limit() as f64);
            }
        }
        if !got {
            bucket.rejected.increment(1);
            // Pass the wake-up on: this waiter did not use it.
            bucket.freed.notify_one();
            return Err(Error::Overloaded { retry_after_s: self.config.retry_after_s });
        }
        let permit = Permit { bucket, started: Instant::now() };
        // Through the runtime's queue once, on the permit's clock: a handler that never
        // waits (a poll answered from memory) takes microseconds however loaded the server
        // is, and the queueing is in front of it, among the tasks ready to run. With this
        // trip its latency sample includes that queue, so a flood that saturates the CPU
        // shows as queueing and its bucket's limit comes down.
        tokio::task::yield_now().await;
        Ok(permit)
    }

    /// The limit and requests in flight of a bucket (tests).
    pub fn snapshot(&self, key: &BucketKey) -> Option<(usize, usize)> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.get(key).map(|b| {
            let s = b.lock();
            (s.limit.limit(), s.in_flight)
        })
    }
}

fn params(c: &FairConfig) -> VegasParams {
    VegasParams { initial: c.initial_limit, min: c.min_limit, max: c.max_limit }
}

/// The consumer and read paths: every GET and HEAD under `/api/v1/` but the OpenAPI
/// document, and the poll (`/healthz`, `/readyz`, `/metrics` are not under `/api/v1/`).
fn limited(req: &Request) -> bool {
    use axum::http::Method;
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/api/v1/") else { return false };
    if rest == "poll" {
        return *req.method() == Method::POST;
    }
    let read = *req.method() == Method::GET || *req.method() == Method::HEAD;
    read && rest != "openapi.json"
}

/// Whose request it is: token, else `app` label, else address.
pub fn bucket_key(req: &Request) -> BucketKey {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(imprint_protocol::bearer_token);
    if let Some(t) = token {
        return BucketKey::Token(imprint_service::auth::hash_token(t));
    }
    if let Some(app) = req.uri().query().and_then(app_label) {
        return BucketKey::App(app);
    }
    let behind = req.extensions().get::<imprint_service::auth::ClientIp>().map(|c| c.0);
    let peer = || req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    BucketKey::Address(behind.or_else(peer).unwrap_or(IpAddr::from([0, 0, 0, 0])))
}

/// The `app` label of a `labels=k=v,app=x` query (percent-decoded), if any.
fn app_label(query: &str) -> Option<String> {
    let labels = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "labels")?.1;
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == "app" && !v.trim().is_empty()).then(|| v.trim().chars().take(MAX_APP_CHARS).collect())
    })
}

/// The middleware (`api_router` applies it when `IMPRINT_FAIR_ENABLED`).
pub async fn fair(State(fairness): State<Arc<Fairness>>, req: Request, next: Next) -> Response {
    if !limited(&req) {
        return next.run(req).await;
    }
    let permit = match fairness.acquire(bucket_key(&req)).await {
        Ok(p) => p,
        Err(e) => return ApiError(e).into_response(),
    };
    // The permit goes back when the request parks (a long poll) or ends, whichever first.
    let slot = Arc::new(Mutex::new(Some(permit)));
    let on_park = slot.clone();
    let hook: imprint_service::fair::ParkHook = Box::new(move || drop(on_park.lock().ok().and_then(|mut p| p.take())));
    let resp = imprint_service::fair::with_park_hook(hook, next.run(req)).await;
    drop(slot.lock().ok().and_then(|mut p| p.take()));
    resp
}

/// The fair-serving layer of a server, if enabled.
pub fn layer(imprint: &Imprint) -> Option<Arc<Fairness>> {
    let c = &imprint.config().fair;
    c.enabled.then(|| Arc::new(Fairness::new(c.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_label_is_found_in_the_labels_query() {
        assert_eq!(app_label("labels=region%3Deu%2Capp%3Dcheckout"), Some("checkout".into()));
        assert_eq!(app_label("labels=app=billing,region=eu&at=x"), Some("billing".into()));
        assert_eq!(app_label("labels=region=eu"), None);
        assert_eq!(app_label("app=x"), None);
        assert_eq!(app_label(&format!("labels=app={}", "a".repeat(500))).map(|a| a.len()), Some(MAX_APP_CHARS));
    }

    #[tokio::test]
    async fn buckets_are_bounded_and_busy_ones_overflow_into_one() {
        let f = Fairness::new(FairConfig { max_buckets: 2, ..FairConfig::default() });
        let a = f.acquire(BucketKey::App("a".into())).await.unwrap();
        let b = f.acquire(BucketKey::App("b".into())).await.unwrap();
        // Both busy: a third application shares the overflow bucket.
        let c = f.acquire(BucketKey::App("c".into())).await.unwrap();
        assert!(Arc::ptr_eq(&c.bucket, &f.overflow));
        assert_eq!(f.buckets.lock().unwrap().len(), 2);
        drop((b, c));
        // b idle now: it is forgotten for d.
        let _d = f.acquire(BucketKey::App("d".into())).await.unwrap();
        assert!(f.snapshot(&BucketKey::App("b".into())).is_none());
        assert!(f.snapshot(&BucketKey::App("a".into())).is_some());
        drop(a);
    }

    #[tokio::test]
    async fn over_its_limit_a_request_waits_briefly_then_is_refused_and_others_are_not() {
        let config = FairConfig {
            initial_limit: 2,
            min_limit: 2,
            max_limit: 2,
            queue_wait: std::time::Duration::from_millis(30),
            ..FairConfig::default()
        };
        let f = Arc::new(Fairness::new(config));
        let flood = BucketKey::App("flood".into());
        let held = [f.acquire(flood.clone()).await.unwrap(), f.acquire(flood.clone()).await.unwrap()];
        let started = Instant::now();
        let e = f.acquire(flood.clone()).await.err().expect("over the limit");
        assert!(matches!(e, Error::Overloaded { .. }));
        assert!(started.elapsed() >= std::time::Duration::from_millis(25), "it queued first");
        // Another application is not held up.
        let other = f.acquire(BucketKey::App("calm".into())).await;
        assert!(other.is_ok());
        // A place freed while waiting is given to the waiter.
        let f2 = f.clone();
        let fl = flood.clone();
        let waiter = tokio::spawn(async move { f2.acquire(fl).await.is_ok() });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        drop(held);
        assert!(waiter.await.unwrap());
    }
}
