//! `spawn_app…`: a real server, built by `imprint_server::Application` as the binary
//! builds it, on a free port against the test's database, with an admin token; and
//! `TestApp`, its fixtures (topics, tokens, publishing, polls) and JSON requests.
use crate::http::{eventually, SendJson};
use imprint_server::{AdminUser, Application, Database, Settings};
use imprint_service::clock::SharedClock;
use imprint_service::{auth, Config, Imprint};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// The lag grace period of test servers: long enough that a slow machine still sees
/// "nobody lags yet" right after a publish.
pub const LAG_GRACE_SECS: u64 = 5;

/// A running test server and what tests reach it with.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when on its own listener (`Settings::metrics_addr`).
    pub metrics_addr: Option<SocketAddr>,
    /// Where the gRPC API listens (test servers always serve it, on a free port).
    pub grpc_addr: Option<SocketAddr>,
    pub client: Client,
    /// Always reaches the database (tests use it to look behind the server's back), also
    /// when the server's own pool is cut.
    pub pool: PgPool,
    imprint: Imprint,
    polls: Arc<AtomicUsize>,
    stop: imprint_server::ShutdownHandle,
    server: tokio::task::JoinHandle<Result<(), String>>,
}

/// The test configuration (the API without the console, the audit flushed every 200 ms),
/// changed by `configure`.
pub fn test_config(configure: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        audit_flush_every: Duration::from_millis(200),
        lag_grace: Duration::from_secs(LAG_GRACE_SECS),
        ..Config::default()
    };
    config.roles.console = false;
    // Fair serving stays on, but a request over its application's limit queues up to 2 s
    // before 429 (100 ms by default): tests send bursts from one client; the fairness
    // tests (server/tests/api/fairness.rs) set their own.
    config.fair.queue_wait = Duration::from_secs(2);
    configure(&mut config);
    config
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool.clone(), pool).await
}

/// `serving_pool` is what the server uses; `admin_pool` always reaches the database.
pub async fn spawn_app_with(serving_pool: PgPool, admin_pool: PgPool) -> TestApp {
    spawn_app_configured(serving_pool, admin_pool, |_| {}).await
}

pub async fn spawn_app_configured(
    serving_pool: PgPool,
    admin_pool: PgPool,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_clocked(serving_pool, admin_pool, configure, Arc::new(imprint_service::SystemClock)).await
}

/// As `spawn_app_configured`, with a clock the test moves (a `ManualClock`).
pub async fn spawn_app_clocked(
    serving_pool: PgPool,
    admin_pool: PgPool,
    configure: impl FnOnce(&mut Config),
    clock: SharedClock,
) -> TestApp {
    let settings =
        Settings { service: test_config(configure), clock, admin_user: AdminUser::Skip, ..test_settings(serving_pool) };
    start(settings, admin_pool).await
}

/// As `spawn_app`, under other connection limits (timeouts, per-address cap, shutdown grace).
pub async fn spawn_app_limited(pool: PgPool, limits: imprint_server::ConnectionLimits) -> TestApp {
    spawn_app_with_settings(pool, |s| s.limits = limits).await
}

/// As `spawn_app`, with the server's `Settings` (as the binary would set them) changed by
/// `configure`.
pub async fn spawn_app_with_settings(pool: PgPool, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings =
        Settings { service: test_config(|_| {}), admin_user: AdminUser::Skip, ..test_settings(pool.clone()) };
    configure(&mut settings);
    start(settings, pool).await
}

/// The whole server (API and console, sessions in Postgres, the `admin` user with
/// `ADMIN_PASSWORD`) behind `trusted` proxies (comma-separated CIDRs).
pub async fn spawn_full_app(pool: PgPool, trusted: &str) -> TestApp {
    let mut service = test_config(|_| {});
    service.roles.console = true;
    let settings = Settings {
        service,
        admin_user: AdminUser::Ensure {
            password: Some(ADMIN_PASSWORD.into()),
            password_file: crate::scratch_dir("admin").join("admin-password"),
        },
        trusted: imprint_server::TrustedProxies::parse(trusted).expect("proxies"),
        leptos: Some(leptos::config::LeptosOptions::builder().output_name("imprint").site_root("target/site").build()),
        ..test_settings(pool.clone())
    };
    start(settings, pool).await
}

fn test_settings(pool: PgPool) -> Settings {
    Settings {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        bootstrap_token: Some(ADMIN_TOKEN.into()),
        grpc: imprint_server::GrpcSettings {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..imprint_server::GrpcSettings::default()
        },
        ..Settings::new(Database::Pool(pool))
    }
}

/// Builds and runs the server (until the `TestApp` is dropped), counting its polls.
async fn start(settings: Settings, admin_pool: PgPool) -> TestApp {
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let app = Application::build(settings).await.expect("the server starts").map_router(|router| {
        router.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            if req.uri().path() == "/api/v1/poll" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            next.run(req)
        }))
    });
    let addr = app.address();
    let metrics_addr = app.metrics_address();
    let grpc_addr = app.grpc_address();
    let imprint = app.imprint().clone();
    let stop = app.shutdown_handle();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp { addr, metrics_addr, grpc_addr, client: Client::new(), pool: admin_pool, imprint, polls, stop, server }
}

impl TestApp {
    /// The service behind this server (to look at or change what the API does not show).
    pub fn imprint(&self) -> &Imprint {
        &self.imprint
    }

    /// Stops this server's background work (scheduler, audit, change following), as a
    /// shutdown would; its HTTP listener keeps answering from memory.
    pub fn imprint_shutdown(&self) {
        self.imprint.shutdown();
    }

    /// Shuts the server down as SIGTERM does the binary's and waits until it has stopped
    /// (open connections get the shutdown grace, background work finishes, the server's
    /// pool is closed). Dropping a `TestApp` leaves its server running until the test ends.
    pub async fn shut_down(self) -> Result<(), String> {
        self.stop.shutdown();
        self.server.await.map_err(|e| format!("the server task failed: {e}"))?
    }

    /// `POST /api/v1/poll` requests this server has received.
    pub fn poll_count(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// `http://<addr>`: what a client is pointed at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://<grpc addr>`: what a gRPC client is pointed at.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr.expect("this server serves gRPC"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).timeout(Duration::from_secs(90))
    }

    /// A request carrying the admin token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.req(method, path).bearer_auth(ADMIN_TOKEN)
    }

    /// `GET path` with the admin token: the status and the parsed body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        self.admin(Method::GET, path).send_json().await
    }

    /// `POST path` with `body` and the admin token: the status and the parsed body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.admin(Method::POST, path).json(body).send_json().await
    }

    pub async fn create_topic(&self, name: &str) -> Value {
        self.create_topic_with(json!({"name": name, "owner": "payments"})).await
    }

    pub async fn create_topic_with(&self, body: Value) -> Value {
        let (status, got) = self.post_json("/api/v1/topics", &body).await;
        assert_eq!(status, 201, "create topic {body}: {got}");
        got
    }

    pub async fn publish(&self, topic: &str, body: Value) -> Value {
        let (status, got) = self.post_json(&format!("/api/v1/topics/{topic}/versions"), &body).await;
        assert_eq!(status, 201, "publish to {topic}: {body}: {got}");
        got
    }

    /// Publishes `text` inline; its version number.
    pub async fn publish_text(&self, topic: &str, text: &str) -> u64 {
        self.publish(topic, json!({"data": text})).await["version"].as_u64().expect("version")
    }

    /// Raw-body publish (large payloads go to the object store past the inline limit).
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> Value {
        let (status, got) = self
            .admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send_json()
            .await;
        assert_eq!(status, 201, "raw publish to {topic}: {got}");
        got
    }

    pub async fn poll(&self, body: Value) -> Value {
        let (status, got) = self.req(Method::POST, "/api/v1/poll").json(&body).send_json().await;
        assert_eq!(status, 200, "poll {body}: {got}");
        got
    }

    /// An admin token (`team: None`) or a publisher token of `team`.
    pub async fn token(&self, name: &str, team: Option<&str>) -> String {
        self.imprint.create_token(&imprint_service::Caller::System, name, team.is_none(), team).await.expect("token")
    }

    /// A consumer token (reads and polls only), optionally bound to labels and topics.
    pub async fn consumer_token(
        &self,
        name: &str,
        team: Option<&str>,
        labels: &[(&str, &str)],
        topics: &[&str],
    ) -> String {
        let spec = auth::NewToken {
            name: name.into(),
            kind: auth::TokenKind::Consumer,
            team: team.map(str::to_owned),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
        };
        self.imprint.create_token_with(&imprint_service::Caller::System, &spec).await.expect("consumer token")
    }

    pub async fn versions_in_db(&self, topic: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM versions v JOIN topics t ON t.id = v.topic_id WHERE t.name = $1")
            .bind(topic)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// The consumer row of `instance` on `topic` once `ready` holds for it (the audit is
    /// flushed every 200 ms here).
    pub async fn consumer_where(&self, topic: &str, instance: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/api/v1/topics/{topic}/consumers");
        eventually(&format!("consumer {instance} of {topic} to match"), || async {
            let (status, list) = self.get_json(&path).await;
            assert!((200..300).contains(&status), "GET {path}: {status} {list}");
            list["consumers"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["instance"] == instance))
                .cloned()
                .filter(|r| ready(r))
        })
        .await
    }
}
