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
    /// When this bucket's next refusal may go out (refusals are paced: `refusal_turn`).
    next_refusal: tokio::time::Instant,
    /// How long a freed place is held before it is handed to a waiting request (seconds;
    /// `Permit::drop`), grown while the server is saturated and the bucket has waiters.
    handoff_s: f64,
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
                next_refusal: tokio::time::Instant::now(),
                handoff_s: 0.0,
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

/// The least hand-off delay (below it: none) and the most (seconds).
const MIN_HANDOFF_S: f64 = 20e-6;
const MAX_HANDOFF_S: f64 = 0.05;

/// How far behind the runtime is: each limited request's trip through the queue of ready
/// tasks (`Fairness::acquire`), averaged — the server-wide sign of saturation. A poll
/// arriving now waits about this long before it is even read.
struct Saturation {
    /// The average, seconds as `f64` bits: read and written by every limited request, so
    /// an atomic rather than a lock on the poll path (a lost update among racing requests
    /// only shifts an average).
    delay_s: std::sync::atomic::AtomicU64,
    target_s: f64,
    gauge: metrics::Gauge,
}

impl Saturation {
    fn record(&self, trip: std::time::Duration) {
        let d = self.delay_s() * 0.95 + trip.as_secs_f64() * 0.05;
        self.delay_s.store(d.to_bits(), std::sync::atomic::Ordering::Relaxed);
        self.gauge.set(d);
    }

    fn delay_s(&self) -> f64 {
        f64::from_bits(self.delay_s.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// A place taken in a bucket, given back (with the request's working time as the limit's
/// sample) when the request ends or parks.
struct Permit {
    bucket: Arc<Bucket>,
    saturation: Arc<Saturation>,
    started: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let rtt = self.started.elapsed();
        let mut s = self.bucket.lock();
        let in_flight = s.in_flight;
        s.limit.sample(rtt, in_flight);
        self.bucket.limit_gauge.set(s.limit.limit() as f64);
        // A bucket asking for more than it gets (requests waiting) while the runtime is
        // behind its target hands its places on later and later (1 % a request), and sooner
        // again once the runtime keeps up (below half the target) or nobody waits: its
        // rate comes down until the CPU has room for everyone else's requests. A bucket
        // without waiters — an application within its limit — is never held back.
        let (target, behind) = (self.saturation.target_s, self.saturation.delay_s());
        let waiters = s.waiting > 0;
        if target > 0.0 && waiters && behind > target {
            s.handoff_s = (s.handoff_s * 1.01).clamp(MIN_HANDOFF_S, MAX_HANDOFF_S);
        } else if !waiters || behind < target / 2.0 {
            s.handoff_s *= 0.99;
            if s.handoff_s < MIN_HANDOFF_S {
                s.handoff_s = 0.0;
            }
        }
        let handoff = if waiters { s.handoff_s } else { 0.0 };
        drop(s);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if handoff > 0.0 => {
                let bucket = self.bucket.clone();
                rt.spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs_f64(handoff)).await;
                    release(&bucket);
                });
            }
            _ => release(&self.bucket),
        }
    }
}

/// Gives a place of `bucket` back and wakes one waiter.
fn release(bucket: &Bucket) {
    let mut s = bucket.lock();
    s.in_flight = s.in_flight.saturating_sub(1);
    bucket.in_flight_gauge.set(s.in_flight as f64);
    drop(s);
    bucket.freed.notify_one();
}

/// The buckets of one server.
pub struct Fairness {
    config: FairConfig,
    buckets: Mutex<HashMap<BucketKey, Arc<Bucket>>>,
    overflow: Arc<Bucket>,
    saturation: Arc<Saturation>,
}

impl Fairness {
    pub fn new(config: FairConfig) -> Self {
        let params = params(&config);
        let saturation = Arc::new(Saturation {
            delay_s: std::sync::atomic::AtomicU64::new(0.0f64.to_bits()),
            target_s: config.target_delay.as_secs_f64(),
            gauge: metrics::gauge!("imprint_fair_runtime_delay_seconds"),
        });
        Fairness {
            config,
            buckets: Mutex::new(HashMap::new()),
            overflow: Arc::new(Bucket::new("overflow", params)),
            saturation,
        }
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
    /// after waiting up to `queue_wait` for one; else 429 `overloaded` — in the bucket's
    /// turn for refusals (`refusal_turn`), waiting on for a place until then.
    async fn acquire(&self, key: BucketKey) -> Result<Permit, Error> {
        let bucket = self.bucket(key);
        let arrived = tokio::time::Instant::now();
        let mut deadline = arrived + self.config.queue_wait;
        let mut turn_taken = false;
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
                if bucket.try_take() {
                    break true;
                }
                if turn_taken {
                    break false;
                }
                turn_taken = true;
                let turn = self.refusal_turn(&bucket, arrived);
                if turn <= tokio::time::Instant::now() {
                    break false;
                }
                deadline = turn;
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
        let permit = Permit { bucket, saturation: self.saturation.clone(), started: Instant::now() };
        // Through the runtime's queue once, on the permit's clock: a handler that never
        // waits (a poll answered from memory) takes microseconds however loaded the server
        // is, and the queueing is in front of it, among the tasks ready to run. With this
        // trip its latency sample includes that queue, so a flood that saturates the CPU
        // shows as queueing and its bucket's limit comes down.
        tokio::task::yield_now().await;
        self.saturation.record(permit.started.elapsed());
        Ok(permit)
    }

    /// When a request of `bucket` that arrived at `arrived` and found no place may be
    /// refused: refusals go out at most `refusals_per_s` a second per bucket, each in its
    /// turn, and never later than `max_wait` after arrival. A refusal costs the server about
    /// what an answer does, and an application that ignores `Retry-After` asks again at
    /// once: unpaced, a flood of enough connections would spend the CPU on refusals (and
    /// the other applications' requests would queue behind them in the runtime). Paced, a
    /// flooding connection waits — parked, costing nothing — and asks again only after it.
    fn refusal_turn(&self, bucket: &Bucket, arrived: tokio::time::Instant) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        if self.config.refusals_per_s == 0 {
            return now;
        }
        let gap = std::time::Duration::from_secs(1) / self.config.refusals_per_s;
        let latest = arrived + self.config.max_wait.max(self.config.queue_wait);
        let mut s = bucket.lock();
        let turn = s.next_refusal.max(now).min(latest.max(now));
        s.next_refusal = turn + gap;
        turn
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
/// document, and the poll (`/healthz`, `/readyz`, `/metrics` are not under `/api/v1/`);
/// the other protocols' reads: Apollo's configs and notifications (a notification long
/// poll gives its place back when it parks, as a poll does), OpenFeature's evaluations
/// (not its event stream: those are capped as streams) and Spring Cloud Config's files.
fn limited(req: &Request) -> bool {
    use axum::http::Method;
    let path = req.uri().path();
    let read = *req.method() == Method::GET || *req.method() == Method::HEAD;
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        if rest == "poll" {
            return *req.method() == Method::POST;
        }
        return read && rest != "openapi.json";
    }
    if path.starts_with("/ofrep/v1/evaluate/") {
        return *req.method() == Method::POST;
    }
    read && (path.starts_with("/apollo/") || path.starts_with("/spring/"))
}

/// Whose request it is: token (a bearer token, or the password of Basic credentials as
/// Spring clients send it), else the application the request names (the `app` label of a
/// `labels=` query; Apollo's appId; Spring's application), else address.
pub fn bucket_key(req: &Request) -> BucketKey {
    if let Some(t) = credential_token(req) {
        return BucketKey::Token(imprint_service::auth::hash_token(&t));
    }
    if let Some(app) = named_app(req) {
        return BucketKey::App(app.chars().take(MAX_APP_CHARS).collect());
    }
    let behind = req.extensions().get::<imprint_service::auth::ClientIp>().map(|c| c.0);
    let peer = || req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    BucketKey::Address(behind.or_else(peer).unwrap_or(IpAddr::from([0, 0, 0, 0])))
}

/// The token of `Authorization: Bearer <t>`, or of `Basic` credentials' password.
fn credential_token(req: &Request) -> Option<String> {
    use base64::Engine;
    let value = req.headers().get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = imprint_protocol::bearer_token(value) {
        return Some(t.to_owned());
    }
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// The application a request names: the `app` label of its `labels=` query, Apollo's
/// appId (`/apollo/configs/{appId}/…`, `/apollo/configfiles/[json/]{appId}/…`, `appId=`
/// of the notifications), Spring's `{application}` (`/spring/{application}/{profile}…`).
fn named_app(req: &Request) -> Option<String> {
    let query = req.uri().query();
    if let Some(app) = query.and_then(app_label) {
        return Some(app);
    }
    let path = req.uri().path();
    let segment = |n: usize| path.split('/').nth(n).filter(|s| !s.is_empty()).map(str::to_owned);
    if let Some(rest) = path.strip_prefix("/apollo/") {
        return match rest.split('/').next() {
            Some("configs") => segment(3),
            Some("configfiles") if rest.starts_with("configfiles/json/") => segment(4),
            Some("configfiles") => segment(3),
            _ => query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "appId").map(|(_, v)| v.into_owned())
            }),
        }
        .filter(|a| !a.trim().is_empty());
    }
    // `/spring/{application}/{profile}[/{label}]`, not `/spring/{label}/{file}.yml`.
    if path.starts_with("/spring/") && segment(3).is_some_and(|profile| !profile.contains('.')) {
        return segment(2);
    }
    None
}

/// The `app` label of a `labels=k=v,app=x` query (percent-decoded), if any.
fn app_label(query: &str) -> Option<String> {
    let labels = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "labels")?.1;
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == "app" && !v.trim().is_empty()).then(|| v.trim().chars().take(MAX_APP_CHARS).collect())
    })
}

impl Fairness {
    /// Runs `work` in a place of `key`'s bucket, given back when it parks (a long poll
    /// waiting for news: `imprint_service::fair::parking`) or ends, whichever first; or
    /// 429 `overloaded` (gRPC: RESOURCE_EXHAUSTED) when no place comes in time.
    pub async fn run<F: std::future::Future>(&self, key: BucketKey, work: F) -> Result<F::Output, Error> {
        let permit = self.acquire(key).await?;
        let slot = Arc::new(Mutex::new(Some(permit)));
        let on_park = slot.clone();
        let hook: imprint_service::fair::ParkHook =
            Box::new(move || drop(on_park.lock().ok().and_then(|mut p| p.take())));
        let out = imprint_service::fair::with_park_hook(hook, work).await;
        drop(slot.lock().ok().and_then(|mut p| p.take()));
        Ok(out)
    }
}

/// The middleware (`api_router` applies it when `IMPRINT_FAIR_ENABLED`).
pub async fn fair(State(fairness): State<Arc<Fairness>>, req: Request, next: Next) -> Response {
    if !limited(&req) {
        return next.run(req).await;
    }
    match fairness.run(bucket_key(&req), next.run(req)).await {
        Ok(resp) => resp,
        Err(e) => ApiError(e).into_response(),
    }
}

/// The fair-serving limiter of a server, if enabled: one per `Imprint` handle, shared by
/// its HTTP API and its gRPC listener.
pub fn layer(imprint: &Imprint) -> Option<Arc<Fairness>> {
    let c = &imprint.config().fair;
    c.enabled.then(|| imprint.fair_limiter(|| Fairness::new(c.clone()))).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_other_protocols_reads_are_limited_and_bucketed_by_their_application() {
        use base64::Engine;
        let app = |s: &str| BucketKey::App(s.into());
        for (method, uri, key) in [
            ("GET", "/apollo/configs/checkout/default/application", app("checkout")),
            ("GET", "/apollo/configfiles/json/checkout/default/application", app("checkout")),
            ("GET", "/apollo/configfiles/billing/default/application", app("billing")),
            ("GET", "/apollo/notifications/v2?appId=search&cluster=default&notifications=%5B%5D", app("search")),
            ("GET", "/spring/payments/prod", app("payments")),
            ("GET", "/spring/payments/prod/main", app("payments")),
            ("POST", "/ofrep/v1/evaluate/flags", BucketKey::Address(IpAddr::from([0, 0, 0, 0]))),
        ] {
            let req = request(method, uri, None);
            assert!(limited(&req), "{method} {uri}");
            assert_eq!(bucket_key(&req), key, "{uri}");
        }
        // Not limited: the event stream, writes, the OpenAPI document.
        for (method, uri) in [("GET", "/ofrep/v1/events"), ("POST", "/api/v1/topics"), ("GET", "/api/v1/openapi.json")]
        {
            assert!(!limited(&request(method, uri, None)), "{method} {uri}");
        }
        // A token wins over the application the request names: Bearer, or Spring's Basic password.
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("user:s3cret-token"));
        let by_token = BucketKey::Token(imprint_service::auth::hash_token("s3cret-token"));
        assert_eq!(bucket_key(&request("GET", "/spring/payments/prod", Some(&basic))), by_token);
        assert_eq!(bucket_key(&request("POST", "/ofrep/v1/evaluate/flags", Some("Bearer s3cret-token"))), by_token);
        // A file of Spring's (`/spring/{file}`, `/spring/{label}/{file}`) names no application.
        assert!(matches!(bucket_key(&request("GET", "/spring/app.yml", None)), BucketKey::Address(_)));
        assert!(matches!(bucket_key(&request("GET", "/spring/main/shop-dev.yml", None)), BucketKey::Address(_)));
    }

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

    fn one_place(queue_ms: u64, refusals_per_s: u32, max_wait_ms: u64) -> Arc<Fairness> {
        Arc::new(Fairness::new(FairConfig {
            initial_limit: 1,
            min_limit: 1,
            max_limit: 1,
            queue_wait: std::time::Duration::from_millis(queue_ms),
            refusals_per_s,
            max_wait: std::time::Duration::from_millis(max_wait_ms),
            ..FairConfig::default()
        }))
    }

    /// Each of `n` requests of one application, sent at once while its one place is held:
    /// how long after the start it was answered, and whether it got a place.
    async fn answered_after(f: &Arc<Fairness>, n: usize) -> Vec<(std::time::Duration, bool)> {
        let started = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move {
                    let r = f.acquire(BucketKey::App("flood".into())).await;
                    (started.elapsed(), r.is_ok())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn refusals_are_paced_so_a_flood_that_retries_at_once_waits_its_turn() {
        let ms = std::time::Duration::from_millis;
        // 20 refusals a second: one every 50 ms, the first when the 10 ms queue wait ends.
        let f = one_place(10, 20, 2000);
        let _held = f.acquire(BucketKey::App("flood".into())).await.unwrap();
        let times = answered_after(&f, 4).await;
        for (i, (at, got)) in times.iter().enumerate() {
            assert!(!got, "the place stays held");
            assert!(*at >= ms(10 + 50 * i as u64 - 5), "refusal {i} went out at {at:?}, before its turn");
        }
        // Another application is not paced by the flood's refusals.
        let calm = Instant::now();
        let _c = f.acquire(BucketKey::App("calm".into())).await.unwrap();
        assert!(calm.elapsed() < ms(50));
    }

    #[tokio::test]
    async fn a_place_freed_while_a_refusal_waits_its_turn_is_taken() {
        let f = one_place(10, 5, 2000); // one refusal every 200 ms
        let held = f.acquire(BucketKey::App("flood".into())).await.unwrap();
        let f2 = f.clone();
        let waiters = tokio::spawn(async move { answered_after(&f2, 2).await });
        // The first waiter is refused at ~10 ms; the second's turn would be ~210 ms.
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        drop(held);
        let times = waiters.await.unwrap();
        assert_eq!(times.iter().filter(|(_, got)| *got).count(), 1, "{times:?}");
    }

    #[tokio::test]
    async fn no_request_waits_longer_than_max_wait() {
        let ms = std::time::Duration::from_millis;
        // One refusal a second, but none waits more than 100 ms.
        let f = one_place(10, 1, 100);
        let _held = f.acquire(BucketKey::App("flood".into())).await.unwrap();
        let times = answered_after(&f, 3).await;
        assert!(times.iter().all(|(_, got)| !got));
        assert!(times[2].0 >= ms(95), "{times:?}");
        assert!(times[2].0 < ms(900), "capped by max_wait, not paced a second apart: {times:?}");
    }

    #[tokio::test]
    async fn a_bucket_with_waiters_hands_places_on_later_while_the_runtime_is_behind() {
        let f = Fairness::new(FairConfig {
            initial_limit: 1,
            min_limit: 1,
            max_limit: 1,
            target_delay: std::time::Duration::from_micros(250),
            ..FairConfig::default()
        });
        let flood = BucketKey::App("flood".into());
        let state = |f: &Fairness| {
            let b = f.bucket(flood.clone());
            let s = b.lock();
            (s.in_flight, s.handoff_s)
        };
        let behind = |f: &Fairness, ms: u64| {
            for _ in 0..200 {
                f.saturation.record(std::time::Duration::from_millis(ms));
            }
        };
        behind(&f, 5);
        // Nobody waits: a freed place is free at once, however far behind the runtime is.
        drop(f.acquire(flood.clone()).await.unwrap());
        assert_eq!(state(&f), (0, 0.0));
        // Someone waits (as if queued) and the runtime is behind: the hand-off grows…
        f.bucket(flood.clone()).lock().waiting += 1;
        for _ in 0..300 {
            let p = f.acquire(flood.clone()).await.unwrap();
            behind(&f, 5); // (the permit's own trip was quick)
            drop(p);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            while state(&f).0 > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let grown = state(&f).1;
        assert!(grown > MIN_HANDOFF_S * 10.0, "{grown}");
        // …and the place is held that long before it is free again.
        let p = f.acquire(flood.clone()).await.unwrap();
        behind(&f, 5);
        drop(p);
        assert_eq!(state(&f).0, 1, "held for the hand-off");
        tokio::time::sleep(std::time::Duration::from_secs_f64(grown * 1.1 + 0.01)).await;
        assert_eq!(state(&f).0, 0);
        // The runtime keeps up again: the hand-off shrinks back to none.
        for _ in 0..2000 {
            let p = f.acquire(flood.clone()).await.unwrap();
            behind(&f, 0);
            drop(p);
            while state(&f).0 > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        assert_eq!(state(&f).1, 0.0);
    }
}
