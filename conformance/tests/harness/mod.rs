//! The conformance harness: loads every scenario, runs each against a real server (in
//! process, on the test's database, its topics under the scenario's own prefix) with the
//! fault proxy in front of it, driving the clients through an adapter; reports each
//! scenario as passed, failed (naming the step), known-failing or skipped.
mod adapter;
mod proxy;

pub use adapter::AdapterSpec;

use adapter::Adapter;
use futures::StreamExt;
use imprint_conformance::adapter::{CorruptCache, NewClient, Observed, Settings, TopicSpec};
use imprint_conformance::{ClientStep, Expectation, Scenario, Step};
use imprint_testkit::{bytes_of, scratch_dir, spawn_app_configured, Moto, TestApp};
use proxy::Proxy;
use reqwest::Method;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an `expect*` step waits before it fails: a guard against a hang, not a
/// performance bound (every scenario's timings are far shorter).
const GUARD: Duration = Duration::from_secs(20);
/// Scenarios run side by side (each has its own server, proxy and topics).
const PARALLEL: usize = 4;
/// A whole scenario's bound: a client that hangs the harness fails its scenario instead.
const SCENARIO_BOUND: Duration = Duration::from_secs(120);
/// Servers start one at a time (their start-up writes the bootstrap token).
static SERVER_STARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

enum Verdict {
    Passed,
    Failed(String),
    KnownFailing(String),
    Fixed(String),
    Skipped(String),
}

/// (Each test binary includes the harness; the Rust row does not use this.)
#[allow(dead_code)]
/// Runs the suite against the adapter whose command line is in `var`; without one, the
/// row is skipped (and says so), except under `CI=true`, where a missing toolchain fails.
pub async fn run_row(pool: PgPool, name: &str, var: &str) {
    match AdapterSpec::from_env(name, var) {
        Ok(spec) => run_suite(pool, &spec).await,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("the {name} conformance row cannot run under CI=true: {why}; the {name} toolchain is missing")
        }
        Err(why) => println!("conformance of the {name} client skipped: {why}"),
    }
}

pub async fn run_suite(pool: PgPool, spec: &AdapterSpec) {
    let adapter = Arc::new(Adapter::start(spec).await);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut scenarios = imprint_conformance::load(&dir).unwrap_or_else(|e| panic!("the scenarios: {e}"));
    assert!(!scenarios.is_empty(), "no scenarios in {}", dir.display());
    if let Ok(only) = std::env::var("IMPRINT_CONFORMANCE_ONLY") {
        scenarios.retain(|s| s.name.contains(&only));
        assert!(!scenarios.is_empty(), "no scenario's name contains IMPRINT_CONFORMANCE_ONLY={only}");
    }
    // One payload store for every server of the run, as the servers of one deployment
    // share theirs: payloads past the inline limit and snapshots survive a restart, and a
    // snapshot pass of any server (they record what they wrote in the shared database)
    // writes where every client looks.
    let store = Arc::new(scratch_dir("conformance-store"));
    // A first server bootstraps the admin token alone, before servers start side by side.
    spawn(&pool, &store, None).await.shut_down().await.expect("the first server stops");
    let started = Instant::now();
    let mut results: Vec<(String, Verdict, Duration)> = futures::stream::iter(scenarios.into_iter().map(|s| {
        let (pool, adapter, store) = (pool.clone(), adapter.clone(), store.clone());
        async move {
            let name = s.name.clone();
            let t = Instant::now();
            let verdict = judge(s, pool, adapter, store).await;
            (name, verdict, t.elapsed())
        }
    }))
    .buffer_unordered(PARALLEL)
    .collect()
    .await;
    results.sort_by(|a, b| a.0.cmp(&b.0));

    let (passed, skipped) = results.iter().fold((0, 0), |(p, s), r| match r.1 {
        Verdict::Passed => (p + 1, s),
        Verdict::Skipped(_) => (p, s + 1),
        _ => (p, s),
    });
    println!(
        "conformance of the {} adapter: {passed} of {} scenarios passed, {skipped} skipped, in {:.1?}:",
        adapter.name,
        results.len(),
        started.elapsed()
    );
    let mut failures = Vec::new();
    for (name, v, took) in &results {
        let name = format!("{name} ({:.1}s)", took.as_secs_f64());
        match v {
            Verdict::Passed => println!("  pass     {name}"),
            Verdict::Failed(e) => {
                println!("  FAIL     {name}: {e}");
                failures.push(format!("{name}: {e}"));
            }
            Verdict::KnownFailing(why) => println!("  known    {name} (known failing: {why})"),
            Verdict::Fixed(why) => {
                println!("  FIXED    {name} passes although marked known-failing ({why}): remove the mark")
            }
            Verdict::Skipped(why) => println!("  skipped  {name}: {why}"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed for the {} adapter:\n{}",
        failures.len(),
        results.len(),
        adapter.name,
        failures.join("\n")
    );
}

async fn judge(s: Scenario, pool: PgPool, adapter: Arc<Adapter>, store: Arc<PathBuf>) -> Verdict {
    if let Some(missing) = s.requires.iter().find(|c| !adapter.capabilities.contains(c)) {
        return Verdict::Skipped(format!("the adapter lacks `{missing}`"));
    }
    if s.server.regions && std::env::var("IMPRINT_TEST_MOTO_SERVER").is_err() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return Verdict::Failed("`server.regions` needs IMPRINT_TEST_MOTO_SERVER under CI=true".into());
        }
        return Verdict::Skipped("`server.regions` needs IMPRINT_TEST_MOTO_SERVER (eval \"$(./dev s3-start)\")".into());
    }
    let known = s.known_failing.get(&adapter.name).cloned();
    let at = Arc::new(AtomicUsize::new(0));
    let labels: Vec<String> = (0..s.steps.len()).map(|i| s.step_label(i)).collect();
    let mut task = tokio::spawn(run_scenario(s, pool, adapter, store, at.clone()));
    let outcome = match tokio::time::timeout(SCENARIO_BOUND, &mut task).await {
        Err(_) => {
            task.abort();
            let i = at.load(Ordering::SeqCst);
            let label = labels.get(i).cloned().unwrap_or_default();
            Err(format!("step {} ({label}): the scenario did not finish within {SCENARIO_BOUND:?}", i + 1))
        }
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let i = at.load(Ordering::SeqCst);
            let label = labels.get(i).cloned().unwrap_or_default();
            let msg = e.try_into_panic().ok().and_then(|p| {
                p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            });
            Err(format!("step {} ({label}) panicked: {}", i + 1, msg.unwrap_or_default()))
        }
    };
    match (outcome, known) {
        (Ok(()), None) => Verdict::Passed,
        (Ok(()), Some(why)) => Verdict::Fixed(why),
        (Err(e), None) => Verdict::Failed(e),
        (Err(_), Some(why)) => Verdict::KnownFailing(why),
    }
}

async fn run_scenario(
    s: Scenario,
    pool: PgPool,
    adapter: Arc<Adapter>,
    store: Arc<PathBuf>,
    at: Arc<AtomicUsize>,
) -> Result<(), String> {
    let mut run = Run::start(&s, pool, adapter, store).await;
    let mut result = Ok(());
    for (i, step) in s.steps.iter().enumerate() {
        at.store(i, Ordering::SeqCst);
        if let Err(e) = run.step(step).await {
            result = Err(format!("step {} ({}): {e}", i + 1, s.step_label(i)));
            break;
        }
    }
    for id in run.clients.values() {
        let _ = run.adapter.drop_client(id).await;
    }
    // A dropped TestApp would keep serving until the test ends: stop it, so the servers
    // (and their database connections) of finished scenarios do not pile up.
    // (us's own server of `server.region_urls` too.)
    let us_server = run.regions.as_mut().and_then(|r| r.public_urls.take()).map(|(_, app)| app);
    for server in run.server.take().into_iter().chain(us_server) {
        match tokio::time::timeout(Duration::from_secs(20), server.shut_down()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("{}: the server did not stop cleanly: {e}", s.name),
            Err(_) => eprintln!("{}: the server did not stop within 20 s", s.name),
        }
    }
    result
}

/// One scenario's world: its server (while running), the proxy, its clients and files.
struct Run {
    prefix: String,
    pool: PgPool,
    adapter: Arc<Adapter>,
    server: Option<TestApp>,
    proxy: Proxy,
    store: Arc<PathBuf>,
    snapshots: bool,
    /// `server.keyring`: the keyring file the server seals with (clients get this path).
    keyring: Option<PathBuf>,
    /// `server.regions`: the S3 server of each region, `eu` (the home) and `us`.
    regions: Option<TwoRegions>,
    clients: HashMap<String, String>,
    tokens: HashMap<String, String>,
    caches: HashMap<String, PathBuf>,
}

/// `server.regions`: a moto process per region (docs/regions.md).
struct TwoRegions {
    eu: Moto,
    us: Moto,
    /// `server.region_urls`: the `IMPRINT_REGION_URLS` of the scenario's server, and us's
    /// own server (kept running for the scenario).
    public_urls: Option<(String, TestApp)>,
}

impl TwoRegions {
    fn get(&mut self, region: &str) -> Result<&mut Moto, String> {
        match region {
            "eu" => Ok(&mut self.eu),
            "us" => Ok(&mut self.us),
            r => Err(format!("no region `{r}`: `eu` or `us`")),
        }
    }

    /// Eu (the home) and us, each with its own store, consumers sent to their own first.
    fn config(&self) -> (imprint_service::objects::Objects, imprint_service::regions::Regions) {
        let (home, regions) = imprint_testkit::two_regions(&self.eu, &self.us);
        match &self.public_urls {
            Some((spec, _)) => (home, regions.with_public_urls(spec).expect("IMPRINT_REGION_URLS")),
            None => (home, regions),
        }
    }

    /// Flips every byte of each object of `topic` in `region` (size kept), through that
    /// region's store.
    async fn corrupt(&mut self, region: &str, topic: &str) -> Result<(), String> {
        use object_store::{path::Path, ObjectStore};
        let objects = self.get(region)?.objects(region);
        let store: &std::sync::Arc<dyn ObjectStore> = objects.store();
        let prefix = Path::from(format!("{region}/topics/{topic}"));
        let keys: Vec<Path> = store
            .list(Some(&prefix))
            .map(|m| m.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("listing {region}: {e}"))?;
        if keys.is_empty() {
            return Err(format!("no object of {topic} in {region}"));
        }
        for key in keys {
            let body = store.get(&key).await.map_err(|e| e.to_string())?.bytes().await.map_err(|e| e.to_string())?;
            let spoiled: Vec<u8> = body.iter().map(|b| b ^ 0xff).collect();
            store.put(&key, spoiled.into()).await.map_err(|e| format!("spoiling {key}: {e}"))?;
        }
        Ok(())
    }
}

/// A server on the test's database with a pool of its own (a server's shutdown closes its
/// pool; the test's pool stays open for the other scenarios) and the run's payload store
/// (or, with `server.regions`, one store per region).
async fn spawn(pool: &PgPool, store: &std::path::Path, regions: Option<&TwoRegions>) -> TestApp {
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with((*pool.connect_options()).clone());
    let store = store.to_owned();
    let regions = regions.map(TwoRegions::config);
    // Every server of the run has the run's keyring: any server's snapshot pass writes
    // every topic's manifest (at-rest ones sealed under the key their payload names).
    let keys = {
        use imprint_service::keys::{KeyCacheLimits, Keys, LocalKeyring};
        Keys::new(Arc::new(LocalKeyring::open(run_keyring()).expect("the run's keyring")), KeyCacheLimits::default())
    };
    let _one_at_a_time = SERVER_STARTS.lock().await;
    spawn_app_configured(own, pool.clone(), move |c| {
        match regions {
            Some((home, regions)) => {
                c.objects = home;
                c.regions = regions;
            }
            None => c.objects = imprint_service::objects::Objects::local(&store).expect("a local object store"),
        }
        c.keys = Some(keys);
        // Snapshots are written by the `snapshot_pass` step only.
        c.snapshot_every = Duration::from_secs(3600);
    })
    .await
}

/// The key topics of `server.keyring` scenarios are encrypted at rest under.
const KEY_ID: &str = "conformance";

/// The run's keyring file (one for every server of the run), with the key `KEY_ID`.
fn run_keyring() -> &'static std::path::Path {
    static KEYRING: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEYRING.get_or_init(|| {
        use imprint_service::keys::Keyring;
        let path = scratch_dir("conformance-keyring").join("keyring.json");
        let mut ring = Keyring::load(&path).expect("a new keyring");
        ring.create(KEY_ID).expect("the key");
        ring.save(&path).expect("the keyring saved");
        path
    })
}

/// `region=eu,app=x` (or `*`) as a selector object.
fn selector(s: &str) -> Result<Value, String> {
    let pairs = imprint_client::parse_labels(s)?;
    Ok(Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<_, _>>()))
}

/// The bytes a scenario's payload stands for: its text, or `size` bytes of the testkit's
/// deterministic sequence from `seed`.
fn payload_bytes(p: &imprint_conformance::Payload) -> Result<Vec<u8>, String> {
    match (&p.data, p.size) {
        (Some(d), None) => Ok(d.clone().into_bytes()),
        (None, Some(size)) => Ok(bytes_of(size, p.seed.unwrap_or(0))),
        _ => Err("a payload is `data` or `size` (with `seed`), not both".into()),
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Run {
    async fn start(s: &Scenario, pool: PgPool, adapter: Arc<Adapter>, store: Arc<PathBuf>) -> Run {
        let regions = match s.server.regions {
            true => {
                let mut two = TwoRegions {
                    eu: Moto::start().await.expect("IMPRINT_TEST_MOTO_SERVER"),
                    us: Moto::start().await.expect("IMPRINT_TEST_MOTO_SERVER"),
                    public_urls: None,
                };
                if s.server.region_urls {
                    // us's servers: one more on the same database and stores; eu's: a port
                    // nothing listens on.
                    let us_server = spawn(&pool, &store, Some(&two)).await;
                    let dead = std::net::TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .map(|a| a.port())
                        .expect("a free port");
                    let spec = format!("eu=http://127.0.0.1:{dead},us={}", us_server.url(""));
                    two.public_urls = Some((spec, us_server));
                }
                Some(two)
            }
            false => None,
        };
        let server = spawn(&pool, &store, regions.as_ref()).await;
        let proxy = Proxy::start(server.base_url()).await;
        let prefix = s
            .name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
            .collect();
        Run {
            prefix,
            pool,
            adapter,
            server: Some(server),
            proxy,
            store,
            snapshots: s.server.snapshots,
            keyring: s.server.keyring.then(|| run_keyring().to_owned()),
            regions,
            clients: HashMap::new(),
            tokens: HashMap::new(),
            caches: HashMap::new(),
        }
    }

    /// The server-side name of a scenario's topic.
    fn topic(&self, t: &str) -> String {
        format!("{}.{t}", self.prefix)
    }

    fn server(&self) -> Result<&TestApp, String> {
        self.server.as_ref().ok_or_else(|| "the server is stopped".to_owned())
    }

    fn client(&self, id: &str) -> Result<&str, String> {
        self.clients.get(id).map(String::as_str).ok_or(format!("no client `{id}` was started"))
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>, want: &[u16]) -> Result<Value, String> {
        let mut req = self.server()?.admin(method.clone(), path);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        if !want.contains(&status) {
            return Err(format!("{method} {path} answered {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::CreateTopic { topic, inline_limit_bytes, restricted, at_rest } => {
                let mut body = json!({"name": self.topic(topic)});
                if let Some(limit) = inline_limit_bytes {
                    body["inline_limit_bytes"] = json!(limit);
                }
                if let Some(r) = restricted {
                    body["restricted"] = json!(r);
                }
                if *at_rest == Some(true) {
                    if self.keyring.is_none() {
                        return Err("`at_rest = true` needs `server.keyring = true`".into());
                    }
                    body["encryption"] = json!({"mode": "at_rest", "key": KEY_ID});
                }
                self.send(Method::POST, "/api/v1/topics", Some(body), &[201]).await?;
            }
            Step::Publish { topic, data, size, seed, scopes } => {
                let payload = imprint_conformance::Payload { data: data.clone(), size: *size, seed: *seed };
                // Always the raw-body form: past the topic's inline limit the payload goes to
                // the object store (and clients download it), below it it is served inline.
                let scopes = scopes.clone().unwrap_or_else(|| vec!["*".into()]);
                let query: Vec<String> = scopes.iter().map(|s| format!("scope={}", encode(s))).collect();
                let path = format!("/api/v1/topics/{}/versions?{}", self.topic(topic), query.join("&"));
                let r = self
                    .server()?
                    .admin(Method::POST, &path)
                    .header("content-type", "application/octet-stream")
                    .body(payload_bytes(&payload)?)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().as_u16() != 201 {
                    return Err(format!("publish answered {}: {}", r.status(), r.text().await.unwrap_or_default()));
                }
            }
            Step::AddScope { topic, version, selector: sel } => {
                let path = format!("/api/v1/topics/{}/versions/{version}/scopes", self.topic(topic));
                self.send(Method::POST, &path, Some(json!({"selector": selector(sel)?})), &[200, 201]).await?;
            }
            Step::Pin { topic, selector: sel, version } => {
                let path = format!("/api/v1/topics/{}/pins", self.topic(topic));
                let body = json!({"selector": selector(sel)?, "version": version, "reason": "conformance"});
                self.send(Method::PUT, &path, Some(body), &[200]).await?;
            }
            Step::Unpin { topic, selector: sel } => {
                let path = format!("/api/v1/topics/{}/pins?selector={}", self.topic(topic), encode(sel));
                self.send(Method::DELETE, &path, None, &[204]).await?;
            }
            Step::ConsumerToken { name, labels, topics } => {
                let pairs = imprint_client::parse_labels(labels.as_deref().unwrap_or(""))?;
                let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let topics: Vec<String> = topics.iter().flatten().map(|t| self.topic(t)).collect();
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                let token = self.server()?.consumer_token(&self.topic(name), None, &pairs, &topics).await;
                self.tokens.insert(name.clone(), token);
            }
            Step::SnapshotPass => {
                self.server()?.imprint().snapshot_pass().await.map_err(|e| format!("snapshot pass: {e}"))?;
            }
            Step::ServerStop => {
                let server = self.server.take().ok_or("the server is stopped already")?;
                server.shut_down().await?;
            }
            Step::ServerStart => {
                if self.server.is_some() {
                    return Err("the server runs already".into());
                }
                let server = spawn(&self.pool, &self.store, self.regions.as_ref()).await;
                self.proxy.retarget(server.base_url());
                self.server = Some(server);
            }
            Step::RegionStop { region } => {
                self.regions.as_mut().ok_or("`region_stop` needs `server.regions = true`")?.get(region)?.stop();
            }
            Step::CorruptRegion { region, topic } => {
                let topic = self.topic(topic);
                self.regions
                    .as_mut()
                    .ok_or("`corrupt_region` needs `server.regions = true`")?
                    .corrupt(region, &topic)
                    .await?;
            }
            Step::Proxy(fault) => self.proxy.set(fault.clone()),
            Step::ResetCounts => self.proxy.reset_counts(),
            Step::Client(c) => self.start_client(c).await?,
            Step::Subscribe { client, topic, decoder, default, max_ms } => {
                let spec = TopicSpec { name: self.topic(topic), decoder: *decoder, default: default.clone() };
                let start = Instant::now();
                self.adapter.subscribe(self.client(client)?, &spec).await?;
                if let Some(max) = max_ms.filter(|m| start.elapsed() > Duration::from_millis(*m)) {
                    return Err(format!("the subscribe took {:?}, more than {max} ms", start.elapsed()));
                }
            }
            Step::CorruptCache { cache, topic } => {
                let dir = self.caches.get(cache).ok_or(format!("no cache `{cache}`"))?;
                let req = CorruptCache { cache_dir: dir.display().to_string(), topic: self.topic(topic) };
                self.adapter.corrupt_cache(&req).await?;
            }
            Step::Shutdown { client, max_ms } => {
                let start = Instant::now();
                self.adapter.shutdown(self.client(client)?).await?;
                if let Some(max) = max_ms.filter(|m| start.elapsed() > Duration::from_millis(*m)) {
                    return Err(format!("the shutdown took {:?}, more than {max} ms", start.elapsed()));
                }
            }
            Step::Drop { client } => {
                let id = self.clients.remove(client).ok_or(format!("no client `{client}`"))?;
                self.adapter.drop_client(&id).await?;
            }
            Step::Sleep { ms } => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Step::Expect(e) => {
                if e.ms.is_some() {
                    return Err("`ms` is for `expect_stays`; `expect` waits until it holds".into());
                }
                let start = Instant::now();
                loop {
                    match self.check(e).await {
                        Ok(()) => break,
                        Err(why) if start.elapsed() > GUARD => return Err(format!("still after {GUARD:?}: {why}")),
                        Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
                    }
                }
            }
            Step::ExpectStays(expect) => {
                let ms = expect.ms.ok_or("`expect_stays` needs `ms`")?;
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(ms) {
                    self.check(expect).await.map_err(|why| format!("after {:?}: {why}", start.elapsed()))?;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            Step::ExpectAudit {
                topic,
                instance,
                version,
                expected_version,
                ok,
                error_contains,
                labels,
                served_region,
            } => {
                let path = format!("/api/v1/topics/{}/consumers", self.topic(topic));
                let labels = match labels {
                    Some(l) => Some(serde_json::to_value(imprint_client::parse_labels(l)?).map_err(|e| e.to_string())?),
                    None => None,
                };
                let start = Instant::now();
                loop {
                    let list = self.send(Method::GET, &path, None, &[200]).await?;
                    let row = list["consumers"].as_array().and_then(|c| c.iter().find(|c| c["instance"] == *instance));
                    let why = match row {
                        None => format!("no audit row for {instance}: {list}"),
                        Some(r) => {
                            let err = r["last_error"].as_str();
                            let bad = version.is_some_and(|v| r["version"] != v)
                                || expected_version.is_some_and(|v| r["expected_version"] != v)
                                || ok.is_some_and(|ok| ok != err.is_none())
                                || error_contains
                                    .as_ref()
                                    .is_some_and(|s| !err.is_some_and(|e| e.contains(s.as_str())))
                                || labels.as_ref().is_some_and(|l| r["labels"] != *l)
                                || served_region.as_ref().is_some_and(|g| r["served_region"] != *g);
                            if !bad {
                                break;
                            }
                            format!("the audit row {r}")
                        }
                    };
                    if start.elapsed() > GUARD {
                        return Err(format!("still after {GUARD:?}: {why}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Step::ExpectNoAudit { topic, instance } => {
                // Longer than the test server's audit flush (200 ms).
                tokio::time::sleep(Duration::from_millis(800)).await;
                let path = format!("/api/v1/topics/{}/consumers", self.topic(topic));
                let list = self.send(Method::GET, &path, None, &[200]).await?;
                if let Some(r) =
                    list["consumers"].as_array().and_then(|c| c.iter().find(|c| c["instance"] == *instance))
                {
                    return Err(format!("an audit row for {instance}: {r}"));
                }
            }
            Step::ExpectRequests { kind, min, max } => {
                let start = Instant::now();
                while self.proxy.count(*kind) < min.unwrap_or(0) {
                    if start.elapsed() > GUARD {
                        return Err(format!("{:?} requests: {} < {min:?}", kind, self.proxy.count(*kind)));
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                let n = self.proxy.count(*kind);
                if max.is_some_and(|m| n > m) {
                    return Err(format!("{kind:?} requests: {n} > {max:?}"));
                }
            }
        }
        Ok(())
    }

    async fn start_client(&mut self, c: &ClientStep) -> Result<(), String> {
        if self.clients.contains_key(&c.id) {
            return Err(format!("client `{}` runs already", c.id));
        }
        let cache_dir = c.cache.as_ref().map(|name| {
            self.caches.entry(name.clone()).or_insert_with(|| scratch_dir("conformance-cache")).display().to_string()
        });
        let snapshot_store = match (self.snapshots, c.snapshot) {
            (true, true) => Some(format!("file://{}", self.store.display())),
            (false, true) => return Err("`snapshot = true` needs `server.snapshots = true`".into()),
            _ => None,
        };
        let snapshot_keyring = match (&self.keyring, c.snapshot_keyring && c.snapshot) {
            (Some(path), true) => Some(path.display().to_string()),
            (None, true) => return Err("`snapshot_keyring = true` needs `server.keyring = true`".into()),
            (_, false) if c.snapshot_keyring => return Err("`snapshot_keyring = true` needs `snapshot = true`".into()),
            _ => None,
        };
        let s = &c.settings;
        // Short holds and backoffs keep the suite fast; a scenario may set its own.
        let settings = Settings {
            long_poll_ms: s.long_poll_ms.or(Some(1000)),
            initial_wait_ms: s.initial_wait_ms.or(Some(5000)),
            request_timeout_ms: s.request_timeout_ms.or(Some(5000)),
            backoff_min_ms: s.backoff_min_ms.or(Some(50)),
            backoff_max_ms: s.backoff_max_ms.or(Some(500)),
            startup_fallback: s.startup_fallback,
            recheck_rejected_ms: s.recheck_rejected_ms.or(Some(500)),
        };
        let spec = NewClient {
            url: self.proxy.url(),
            token: c.token.as_ref().map(|t| self.tokens.get(t).cloned().unwrap_or_else(|| t.clone())),
            instance: c.instance.clone(),
            labels: imprint_client::parse_labels(c.labels.as_deref().unwrap_or(""))?,
            cache_dir,
            snapshot_store,
            snapshot_keyring,
            topics: c
                .topics
                .iter()
                .map(|t| TopicSpec { name: self.topic(&t.topic), decoder: t.decoder, default: t.default.clone() })
                .collect(),
            settings,
        };
        let id = self.adapter.create(&spec).await?;
        self.clients.insert(c.id.clone(), id);
        Ok(())
    }

    /// Whether the subscription shows what `e` says; else what it shows.
    async fn check(&self, e: &Expectation) -> Result<(), String> {
        let got: Observed = self.adapter.observe(self.client(&e.client)?, &self.topic(&e.topic)).await?;
        let file = match &e.file {
            Some(p) => {
                let b = payload_bytes(p)?;
                Some(json!({"size": b.len(), "sha256": imprint_conformance::sha256_hex(&b)}))
            }
            None => None,
        };
        let ok = e.value.as_ref().is_none_or(|v| *v == got.value)
            && file.as_ref().is_none_or(|v| *v == got.value)
            && e.version.is_none_or(|v| v.matches(got.version))
            && e.source.as_ref().is_none_or(|s| *s == got.source)
            && e.pinned.is_none_or(|p| p == got.pinned)
            && e.last_change.as_ref().is_none_or(|v| *v == got.last_change)
            && e.changes.is_none_or(|n| n == got.changes)
            && e.served_region.as_ref().is_none_or(|r| Some(r) == got.served_region.as_ref());
        if ok {
            Ok(())
        } else {
            let shown = match &got.value {
                Value::String(s) if s.len() > 200 => json!(format!("{}…", s.chars().take(200).collect::<String>())),
                v => v.clone(),
            };
            Err(format!(
                "{}/{} shows value {shown}, version {:?}, source {}, pinned {}, changes {}, last_change {}, served_region {:?}",
                e.client, e.topic, got.version, got.source, got.pinned, got.changes, got.last_change, got.served_region
            ))
        }
    }
}
