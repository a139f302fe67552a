//! A real Imprint server in-process for the client and CLI tests: the API router on a
//! free port, against the test's fresh database (`#[sqlx::test]`), with an admin token.
//! (The CLI's tests include this file too.)
#![allow(dead_code)]
use imprint_service::{auth, Config, Imprint};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub struct TestServer {
    /// `POST /api/v1/poll` requests this server has received.
    pub polls: Arc<AtomicUsize>,
    pub addr: SocketAddr,
    pub url: String,
    pub http: reqwest::Client,
    pub imprint: Imprint,
}

pub async fn spawn_server(pool: PgPool) -> TestServer {
    spawn_server_with(pool, Config { audit_flush_every: Duration::from_millis(200), ..Config::default() }).await
}

pub async fn spawn_server_with(pool: PgPool, config: Config) -> TestServer {
    let imprint = Imprint::with_pool(pool.clone(), config);
    auth::ensure_bootstrap_token(&pool, ADMIN_TOKEN).await.expect("bootstrap token");
    imprint.start_background().await.expect("state loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let app = imprint_server::api_router(imprint.clone()).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            if req.uri().path() == "/api/v1/poll" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            next.run(req)
        },
    ));
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve")
    });
    TestServer { polls, addr, url: format!("http://{addr}"), http: reqwest::Client::new(), imprint }
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

/// A fresh directory under the system's temporary directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    let dir = std::env::temp_dir().join(format!("imprint-tests-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Deterministic, incompressible-enough test bytes.
pub fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

impl TestServer {
    pub fn poll_count(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    pub fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(60))
    }

    pub async fn create_topic(&self, body: Value) -> Value {
        let r = self.admin(Method::POST, "/api/v1/topics").json(&body).send().await.expect("send");
        assert_eq!(r.status(), 201, "create topic {body}");
        r.json().await.expect("json")
    }

    pub async fn publish(&self, topic: &str, body: Value) -> Value {
        let r = self
            .admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 201, "publish to {topic}: {body}");
        r.json().await.expect("json")
    }

    pub async fn publish_text(&self, topic: &str, text: &str) -> u64 {
        self.publish(topic, json!({"data": text})).await["version"].as_u64().expect("version")
    }

    /// Raw-body publish (large payloads go to the object store past the inline limit).
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> Value {
        let r = self
            .admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 201, "raw publish to {topic}");
        r.json().await.expect("json")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.admin(Method::GET, path).send().await.expect("send");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    /// The consumer row of `instance` on `topic` once `ready` holds for it (the audit is
    /// flushed every 200 ms here), or a panic after 10 s.
    pub async fn consumer_where(&self, topic: &str, instance: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let list = self.get_json(&format!("/api/v1/topics/{topic}/consumers")).await;
            let row = list["consumers"].as_array().and_then(|c| c.iter().find(|c| c["instance"] == instance)).cloned();
            if let Some(row) = row.filter(|r| ready(r)) {
                return row;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "consumer {instance} of {topic} never matched: {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until `cond` holds, polling every 20 ms, or panics after `limit`.
pub async fn eventually(limit: Duration, what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}
