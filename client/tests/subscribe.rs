//! The client against a real server (in-process, fresh database per test): values,
//! long-poll propagation, failed applies and their reports, the start-up fallback, the
//! disk cache with the server down, the object-store snapshot with the server down and
//! no cache, checksum mismatches and large payloads as files.

use imprint_client::{Client, Error, Source};
use imprint_testkit::*;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Deserialize, PartialEq)]
struct Methods {
    v: u32,
    #[serde(default)]
    card: bool,
}

fn client(server_url: &str, instance: &str) -> imprint_client::ClientBuilder {
    Client::builder(server_url)
        .instance(instance)
        .label("region", "eu")
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn subscribe_gets_the_value_and_sees_publishes_pins_within_seconds(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic_with(json!({"name": "payments.methods"})).await;
    server.publish_text("payments.methods", r#"{"v": 1, "card": true}"#).await;

    let c = client(&server.base_url(), "i-1").build().expect("client");
    let methods = c.subscribe_json::<Methods>("payments.methods", Methods::default()).await.expect("subscribe");
    assert_eq!(*methods.get(), Methods { v: 1, card: true });
    assert_eq!(methods.version(), Some(1));
    assert_eq!(methods.source(), Source::Server);

    // A publish reaches the client through its open (parked) long poll.
    let mut changes = methods.changes();
    eventually("the client's long poll is parked", || async { server.imprint().state().waiter_entries().0 >= 1 }).await;
    let published = Instant::now();
    server.publish_text("payments.methods", r#"{"v": 2}"#).await;
    let next = tokio::time::timeout(HANG_GUARD, changes.next()).await.expect("the publish is seen").expect("value");
    println!("publish → applied on the client: {:?} (informational)", published.elapsed());
    assert_eq!(next.v, 2);
    assert_eq!(methods.version(), Some(2));

    // The success is reported on the next poll: the audit shows it.
    let row = server.consumer_where("payments.methods", "i-1", |r| r["version"] == 2).await;
    assert_eq!(row["labels"], json!({"region": "eu"}));
    assert!(row["last_error"].is_null(), "{row}");

    // A pin moves it back, flagged as pinned; the unpin forward again.
    server
        .admin(Method::PUT, "/api/v1/topics/payments.methods/pins")
        .json(&json!({"selector": {"region": "eu"}, "version": 1, "reason": "test"}))
        .send()
        .await
        .expect("pin");
    eventually("the pin", || async { methods.version() == Some(1) }).await;
    assert!(methods.current().pinned);
    server
        .admin(Method::DELETE, "/api/v1/topics/payments.methods/pins?selector=region=eu")
        .send()
        .await
        .expect("unpin");
    eventually("the unpin", || async { methods.version() == Some(2) }).await;

    // Two subscriptions of one client share one poll; a second subscribe of a topic is refused.
    server.create_topic_with(json!({"name": "ab.config"})).await;
    let ab = c.subscribe_bytes("ab.config").await.expect("subscribe");
    assert_eq!(ab.source(), Source::Default, "nothing published yet");
    server.publish_text("ab.config", "on").await;
    eventually("the second topic", || async { ab.get()[..] == b"on"[..] }).await;
    assert!(matches!(c.subscribe_bytes("ab.config").await, Err(Error::AlreadySubscribed(_))));

    c.shutdown().await;
    assert!(matches!(c.subscribe_bytes("other").await, Err(Error::Shutdown)));
    server.publish_text("payments.methods", r#"{"v": 3}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(methods.version(), Some(2), "no polling after shutdown");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_payload_that_fails_to_apply_keeps_the_old_value_and_is_reported(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic_with(json!({"name": "fraud.rules"})).await;
    server.publish_text("fraud.rules", "rules: 1").await;

    let c = client(&server.base_url(), "i-2").recheck_rejected(Duration::from_millis(500)).build().expect("client");
    let compiles = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = compiles.clone();
    let rules = c
        .subscribe_with("fraud.rules", String::from("empty"), move |bytes| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            if text.contains("syntax error") {
                return Err(format!("cannot compile the rules: {text}"));
            }
            Ok(text.to_owned())
        })
        .await
        .expect("subscribe");
    assert_eq!(*rules.get(), "rules: 1");

    server.publish_text("fraud.rules", "rules: syntax error").await;
    let row = server.consumer_where("fraud.rules", "i-2", |r| !r["last_error"].is_null()).await;
    assert_eq!(*rules.get(), "rules: 1", "the old value stays");
    assert_eq!(rules.version(), Some(1));
    assert_eq!(row["version"], 1, "{row}");
    assert_eq!(row["expected_version"], 2, "{row}");
    assert!(row["last_error"].as_str().is_some_and(|e| e.contains("cannot compile the rules")), "{row}");

    // The failed version is not tried again while the server offers nothing else, and
    // the client does not spin on the server's immediate answers: it rechecks every 0.5 s.
    let tries = compiles.load(std::sync::atomic::Ordering::SeqCst);
    let polls = server.poll_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(compiles.load(std::sync::atomic::Ordering::SeqCst), tries, "version 2 was retried");
    let polled = server.poll_count() - polls;
    println!("polls in 2 s while stuck on a rejected version: {polled}");
    assert!((2..=8).contains(&polled), "{polled} polls in 2 s");

    // A fixed version is picked up (on the periodic recheck of the stuck topic).
    server.publish_text("fraud.rules", "rules: 3").await;
    eventually("the fixed version", || async { rules.version() == Some(3) }).await;
    let row = server.consumer_where("fraud.rules", "i-2", |r| r["version"] == 3).await;
    assert!(row["last_error"].is_null(), "a success clears the error: {row}");
    c.shutdown().await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn at_start_up_older_versions_are_tried_when_the_newest_fails(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic_with(json!({"name": "ml.thresholds"})).await;
    server.publish_text("ml.thresholds", r#"{"v": 1}"#).await;
    server.publish_text("ml.thresholds", r#"{"v": 2}"#).await;
    // Released elsewhere only: not a fallback candidate for region=eu.
    server.publish("ml.thresholds", json!({"data": r#"{"v": 3}"#, "scopes": [{"region": "us"}]})).await;
    server.publish_text("ml.thresholds", r#"{"v": "four"}"#).await; // does not deserialize

    let c = client(&server.base_url(), "i-3").build().expect("client");
    let t = c.subscribe_json::<Methods>("ml.thresholds", Methods::default()).await.expect("subscribe");
    assert_eq!(t.get().v, 2, "fell back past the failing v4 and the us-only v3");
    assert_eq!(t.version(), Some(2));
    assert_eq!(t.source(), Source::Server);
    let row = server.consumer_where("ml.thresholds", "i-3", |r| !r["last_error"].is_null()).await;
    assert_eq!(row["version"], 2, "{row}");
    assert!(row["last_error"].as_str().is_some_and(|e| e.contains("invalid type")), "{row}");

    // Off: the default stays.
    let c2 = client(&server.base_url(), "i-4").startup_fallback(0).build().expect("client");
    let t2 = c2.subscribe_json::<Methods>("ml.thresholds", Methods::default()).await.expect("subscribe");
    assert_eq!(t2.source(), Source::Default);
    assert_eq!(t2.version(), None);
    c.shutdown().await;
    c2.shutdown().await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn starts_from_the_disk_cache_when_the_server_is_unreachable(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic_with(json!({"name": "payments.methods"})).await;
    server.create_topic_with(json!({"name": "ml.model", "inline_limit_bytes": 4096})).await;
    server.publish_text("payments.methods", r#"{"v": 7}"#).await;
    let model = bytes_of(200_000, 1);
    server.publish_raw("ml.model", model.clone()).await;
    let cache = scratch_dir("cache");

    let c = client(&server.base_url(), "i-5").cache_dir(&cache).build().expect("client");
    let m = c.subscribe_json::<Methods>("payments.methods", Methods::default()).await.expect("subscribe");
    let f = c.subscribe_file("ml.model").await.expect("subscribe file");
    assert_eq!(m.get().v, 7);
    let path = f.get().as_ref().clone().expect("a file");
    assert!(path.starts_with(&cache), "{path:?} is in the cache directory");
    c.shutdown().await;
    assert!(cache.join("payments.methods/meta.json").exists());

    // The server is gone: both start from the cache, promptly.
    let down = closed_port_url().await;
    // (Connection refused is an answer: they do not wait out a long initial wait.)
    let initial_wait = Duration::from_secs(30);
    let c = client(&down, "i-5").cache_dir(&cache).initial_wait(initial_wait).build().expect("client");
    let started = Instant::now();
    let m = c.subscribe_json::<Methods>("payments.methods", Methods::default()).await.expect("subscribe");
    let f = c.subscribe_file("ml.model").await.expect("subscribe file");
    let took = started.elapsed();
    println!("two subscriptions from the cache with the server down: {took:?}");
    assert!(took < initial_wait, "subscribe waited out the initial wait ({took:?}) instead of taking the refusal");
    assert_eq!(m.get().v, 7);
    assert_eq!(m.source(), Source::Cache);
    assert_eq!(m.version(), Some(1));
    assert_eq!(f.source(), Source::Cache);
    assert_eq!(std::fs::read(f.get().as_ref().as_ref().expect("a file")).expect("read"), model);
    c.shutdown().await;

    // A damaged cache file is not used.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("payments.methods/meta.json")).expect("meta")).expect("json");
    let file = cache.join("payments.methods").join(meta["file"].as_str().expect("file"));
    std::fs::write(&file, br#"{"v": 8}"#).expect("damage");
    let c = client(&down, "i-5").cache_dir(&cache).build().expect("client");
    let m = c.subscribe_json::<Methods>("payments.methods", Methods::default()).await.expect("subscribe");
    assert_eq!(m.source(), Source::Default);

    // Without a cache the default, promptly, even with a long initial wait.
    let c2 = client(&down, "i-6").initial_wait(initial_wait).build().expect("client");
    let started = Instant::now();
    let m2 = c2.subscribe_json::<Methods>("payments.methods", Methods { v: 99, card: false }).await.expect("subscribe");
    let took = started.elapsed();
    assert!(
        took < initial_wait,
        "connection refused is an answer, not a reason to wait out the initial wait: {took:?}"
    );
    assert_eq!(m2.get().v, 99);
    assert_eq!(m2.source(), Source::Default);
    c.shutdown().await;
    c2.shutdown().await;
    let _ = std::fs::remove_dir_all(cache);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn with_the_server_down_and_no_cache_starts_from_the_object_store_snapshot(pool: sqlx::PgPool) {
    let store_dir = scratch_dir("snapshot-store");
    let objects = imprint_service::objects::Objects::local(&store_dir).expect("local store");
    // The worker's snapshot loop is slowed down: the test runs the passes itself.
    let server = spawn_app_configured(pool.clone(), pool, |c| {
        c.objects = objects;
        c.snapshot_every = Duration::from_secs(3600);
    })
    .await;
    server.create_topic_with(json!({"name": "payments.methods"})).await;
    server.create_topic_with(json!({"name": "ml.model", "inline_limit_bytes": 4096})).await;
    server.create_topic_with(json!({"name": "canary.only"})).await;
    server.create_topic_with(json!({"name": "never.published"})).await;
    server.publish_text("payments.methods", r#"{"v": 7}"#).await;
    // A canary: `*` still resolves to v1, so the snapshot names v1.
    server.publish("payments.methods", json!({"data": r#"{"v": 8}"#, "scopes": [{"region": "eu"}]})).await;
    let model = bytes_of(200_000, 3);
    server.publish_raw("ml.model", model.clone()).await;
    server.publish("canary.only", json!({"data": "x", "scopes": [{"region": "eu"}]})).await;

    let pass = server.imprint().snapshot_pass().await.expect("snapshot pass");
    assert_eq!((pass.written, pass.removed), (2, 0), "{pass:?}");
    let manifest = |topic: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(store_dir.join(format!("snapshots/{topic}.json"))).expect("manifest"))
            .expect("json")
    };
    let m = manifest("payments.methods");
    assert_eq!(m["version"], 1);
    assert!(m["data_base64"].is_string() && m["object"].is_null(), "{m}");
    let m = manifest("ml.model");
    assert!(m["object"].as_str().expect("object key").starts_with("topics/ml.model/1/"), "{m}");
    assert!(!store_dir.join("snapshots/canary.only.json").exists(), "`*` resolves to nothing: no manifest");
    // Nothing changed: nothing is rewritten.
    assert_eq!(server.imprint().snapshot_pass().await.expect("pass").written, 0);

    // The server is unreachable and there is no cache: both start from the snapshot.
    let down = closed_port_url().await;
    let store_url = format!("file://{}", store_dir.display());
    let c = client(&down, "i-10").snapshot_store(&store_url).build().expect("client");
    let m = c.subscribe_json::<Methods>("payments.methods", Methods::default()).await.expect("subscribe");
    let f = c.subscribe_file("ml.model").await.expect("subscribe file");
    let none = c.subscribe_bytes("canary.only").await.expect("subscribe");
    assert_eq!((m.get().v, m.version(), m.source()), (7, Some(1), Source::Snapshot));
    assert_eq!(f.source(), Source::Snapshot);
    assert_eq!(std::fs::read(f.get().as_ref().as_ref().expect("a file")).expect("read"), model);
    assert_eq!(none.source(), Source::Default);
    c.shutdown().await;

    // A tampered snapshot (payload changed, checksum not) is refused: the default stays.
    let path = store_dir.join("snapshots/payments.methods.json");
    let mut m = manifest("payments.methods");
    m["data_base64"] = json!(base64_of(br#"{"v": 666}"#));
    std::fs::write(&path, serde_json::to_vec(&m).expect("json")).expect("tamper");
    let c = client(&down, "i-11").snapshot_store(&store_url).build().expect("client");
    let m = c.subscribe_json::<Methods>("payments.methods", Methods { v: 1, card: false }).await.expect("subscribe");
    assert_eq!((m.get().v, m.source()), (1, Source::Default));
    c.shutdown().await;

    // A pin of `*` moves the snapshot; the next pass rewrites just that manifest (and
    // puts the tampered one right).
    let r = server
        .admin(Method::PUT, "/api/v1/topics/payments.methods/pins")
        .json(&json!({"selector": {}, "version": 2, "reason": "everyone gets v2"}))
        .send()
        .await
        .expect("pin");
    assert!(r.status().is_success(), "pin: {}", r.status());
    eventually_state(&server, "payments.methods", 2).await;
    let pass = server.imprint().snapshot_pass().await.expect("pass");
    assert_eq!(pass.written, 1, "{pass:?}");
    assert_eq!(manifest("payments.methods")["version"], 2);
    // With the server reachable the snapshot is not read: the server's answer is.
    let c = client(&server.base_url(), "i-12").snapshot_store(&store_url).build().expect("client");
    let m = c.subscribe_json::<Methods>("payments.methods", Methods::default()).await.expect("subscribe");
    assert_eq!((m.get().v, m.source()), (8, Source::Server));
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(store_dir);
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Waits until the server's serving state resolves `*` of `topic` to `version`.
async fn eventually_state(server: &TestApp, topic: &str, version: u64) {
    let state = server.imprint().state();
    let resolved = || state.get(topic).and_then(|t| t.index.resolve(&Default::default())).map(|r| r.version);
    eventually("the serving state", || async { resolved() == Some(version) }).await;
}

#[tokio::test]
async fn a_server_that_never_answers_does_not_block_subscribe() {
    // Accepts connections, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let c = Client::builder(format!("http://{addr}")).initial_wait(Duration::from_millis(700)).build().expect("client");
    // The server never answers: subscribe returns once the initial wait is over (not
    // before), and shutdown abandons the open poll (each would otherwise wait forever).
    let started = Instant::now();
    let s = tokio::time::timeout(HANG_GUARD, c.subscribe_bytes("anything"))
        .await
        .expect("subscribe returns after the initial wait")
        .expect("subscribe");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(650), "the initial wait was waited: {took:?}");
    assert_eq!(s.source(), Source::Default);
    tokio::time::timeout(HANG_GUARD, c.shutdown()).await.expect("shutdown abandons the open poll");
    hold.abort();
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_large_payload_is_streamed_to_a_file_and_a_corrupt_one_is_rejected(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic_with(json!({"name": "ml.model", "inline_limit_bytes": 4096})).await;
    let v1 = bytes_of(3 << 20, 1);
    let p1 = server.publish_raw("ml.model", v1.clone()).await;
    assert_eq!(p1["storage"], "object");
    let cache = scratch_dir("files");

    let c = client(&server.base_url(), "i-7").cache_dir(&cache).build().expect("client");
    let model = c.subscribe_file("ml.model").await.expect("subscribe");
    let first = model.get().as_ref().clone().expect("a file");
    assert_eq!(std::fs::read(&first).expect("read"), v1);
    assert_eq!(model.current().sha256.as_deref(), p1["sha256"].as_str());

    // A new version: a new file; the previous one stays readable for a while.
    let v2 = bytes_of(1 << 20, 2);
    let p2 = server.publish_raw("ml.model", v2.clone()).await;
    eventually("version 2", || async { model.version() == Some(2) }).await;
    let second = model.get().as_ref().clone().expect("a file");
    assert_ne!(first, second);
    assert_eq!(std::fs::read(&second).expect("read"), v2);
    assert!(first.exists(), "the previous file is kept");

    // Version 3 is damaged in the object store: the download does not verify.
    let v3 = bytes_of(1 << 20, 3);
    let p3 = server.publish_raw("ml.model", v3.clone()).await;
    let key = object_store::path::Path::from(format!("topics/ml.model/3/{}", p3["sha256"].as_str().expect("sha")));
    let mut damaged = v3.clone();
    damaged[1000] ^= 0xff;
    server.imprint().objects().store().put(&key, damaged.into()).await.expect("overwrite the object");
    let row = server.consumer_where("ml.model", "i-7", |r| !r["last_error"].is_null()).await;
    assert!(row["last_error"].as_str().is_some_and(|e| e.contains("checksum mismatch")), "{row}");
    assert_eq!(model.version(), Some(2), "the damaged version is not applied");
    assert_eq!(row["version"], 2);
    assert_eq!(p2["version"], 2);
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("ml.model"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-") || n.starts_with("v3-"))
        .collect();
    assert!(leftovers.is_empty(), "no partial or rejected file left: {leftovers:?}");
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(cache);
}

/// A proxy in front of the server that breaks off the first download of each payload
/// after `cut` bytes (as a server that goes away mid-transfer), and passes everything
/// else through. Returns its URL and the `Range` headers of the downloads it saw.
async fn flaky_proxy(upstream: String, cut: usize) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    use axum::body::Body;
    use axum::extract::Request;
    use futures::StreamExt;
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = seen.clone();
    let http = reqwest::Client::new();
    let handler = move |req: Request| {
        let (http, upstream, log) = (http.clone(), upstream.clone(), log.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.expect("body");
            let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let mut out = http.request(parts.method.clone(), format!("{upstream}{path}")).body(body);
            for (k, v) in &parts.headers {
                if k != "host" {
                    out = out.header(k, v);
                }
            }
            let resp = out.send().await.expect("upstream");
            let mut builder = axum::http::Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                builder = builder.header(k.as_str(), v.as_bytes());
            }
            let download = path.contains("/data");
            let first = download && {
                let mut l = log.lock().expect("log");
                l.push(parts.headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_owned));
                l.len() == 1
            };
            let mut sent = 0usize;
            let stream = resp.bytes_stream().map(move |chunk| {
                let chunk = chunk.map_err(std::io::Error::other)?;
                if first && sent + chunk.len() > cut {
                    return Err(std::io::Error::other("the server went away"));
                }
                sent += chunk.len();
                Ok(chunk)
            });
            builder.body(Body::from_stream(stream)).expect("response")
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("proxy") });
    (url, seen)
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_server_that_goes_away_mid_download_is_resumed_and_no_partial_file_is_used(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    server.create_topic_with(json!({"name": "ml.model", "inline_limit_bytes": 4096})).await;
    let model = bytes_of(2 << 20, 9);
    server.publish_raw("ml.model", model.clone()).await;
    let (proxy, downloads) = flaky_proxy(server.base_url(), 300_000).await;
    let cache = scratch_dir("flaky");

    let c = client(&proxy, "i-20").cache_dir(&cache).build().expect("client");
    let f = c.subscribe_file("ml.model").await.expect("subscribe");
    eventually("the model", || async { f.version() == Some(1) }).await;
    assert_eq!(std::fs::read(f.get().as_ref().as_ref().expect("a file")).expect("read"), model);
    let seen = downloads.lock().expect("log").clone();
    assert!(seen.len() >= 2, "the broken download was retried: {seen:?}");
    assert_eq!(seen[0], None, "the first download asked for everything");
    assert!(seen[1].as_deref().is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"), "resumed: {seen:?}");
    let leftovers: Vec<_> = std::fs::read_dir(cache.join("ml.model"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "no partial file left: {leftovers:?}");
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(cache);
}

/// Log lines written while a test runs (the test's thread-local subscriber).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn an_unwritable_cache_directory_is_reported_once_and_the_client_still_works(pool: sqlx::PgPool) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = spawn_app(pool).await;
    server.create_topic_with(json!({"name": "payments.methods"})).await;
    server.publish_text("payments.methods", r#"{"v": 1}"#).await;
    // A regular file where the cache directory should be: nothing can be created in it
    // (file permissions would not stop root, which the tests may run as).
    let not_a_dir = scratch_dir("unwritable").join("cache");
    std::fs::write(&not_a_dir, b"a file").expect("file");

    let c = client(&server.base_url(), "i-21").cache_dir(&not_a_dir).build().expect("client");
    let m = c.subscribe_json::<Methods>("payments.methods", Methods::default()).await.expect("subscribe");
    assert_eq!((m.get().v, m.source()), (1, Source::Server));
    for v in 2..=3 {
        server.publish_text("payments.methods", &format!(r#"{{"v": {v}}}"#)).await;
        eventually("the next version", || async { m.get().v == v }).await;
    }
    c.shutdown().await;
    let text = String::from_utf8(logs.0.lock().expect("log").clone()).expect("utf-8");
    let warnings = text.lines().filter(|l| l.contains("cannot write the disk cache")).count();
    assert_eq!(warnings, 1, "said once, not per version:\n{text}");
}
