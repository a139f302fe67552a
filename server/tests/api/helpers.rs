//! `spawn_app`: a real server on port 0 against the test's database.
use imprint_service::{auth, Config, Imprint};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// The lag grace period of test servers: long enough that a slow machine still sees
/// "nobody lags yet" right after a publish.
pub const LAG_GRACE_SECS: u64 = 5;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub pool: PgPool,
    imprint: Imprint,
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool.clone(), pool).await
}

/// `serving_pool` is what the server uses; `admin_pool` always reaches the database
/// (tests use it to look behind the server's back).
pub async fn spawn_app_with(serving_pool: PgPool, admin_pool: PgPool) -> TestApp {
    spawn_app_configured(serving_pool, admin_pool, |_| {}).await
}

/// The test configuration, changed by `configure`.
pub fn test_config(configure: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config {
        audit_flush_every: Duration::from_millis(200),
        lag_grace: Duration::from_secs(LAG_GRACE_SECS),
        ..Config::default()
    };
    configure(&mut config);
    config
}

pub async fn spawn_app_configured(
    serving_pool: PgPool,
    admin_pool: PgPool,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_clocked(serving_pool, admin_pool, configure, std::sync::Arc::new(imprint_service::SystemClock)).await
}

/// As `spawn_app_configured`, with a clock the test moves.
pub async fn spawn_app_clocked(
    serving_pool: PgPool,
    admin_pool: PgPool,
    configure: impl FnOnce(&mut Config),
    clock: imprint_service::clock::SharedClock,
) -> TestApp {
    let imprint = Imprint::with_clock(serving_pool, test_config(configure), clock);
    auth::ensure_bootstrap_token(&admin_pool, ADMIN_TOKEN).await.expect("bootstrap token");
    imprint.start_background().await.expect("state loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = imprint_server::api_router(imprint.clone());
    serve(listener, app, imprint_server::ConnectionLimits::default());
    TestApp { addr, client: Client::new(), pool: admin_pool, imprint }
}

/// The whole server (API and console, sessions in Postgres) behind `trusted` proxies.
pub async fn spawn_full_app(pool: PgPool, trusted: &str) -> TestApp {
    let imprint = Imprint::with_pool(pool.clone(), test_config(|_| {}));
    auth::ensure_bootstrap_token(&pool, ADMIN_TOKEN).await.expect("bootstrap token");
    imprint.ensure_admin_user(Some(ADMIN_PASSWORD)).await.expect("admin user");
    imprint.start_background().await.expect("state loads");
    let sessions = imprint_server::session_layer(&imprint, false).await.expect("sessions");
    let options = leptos::config::LeptosOptions::builder().output_name("imprint").site_root("target/site").build();
    let trusted = imprint_server::TrustedProxies::parse(trusted).expect("proxies");
    let limits = imprint_server::ConnectionLimits { exempt: trusted.clone(), ..Default::default() };
    let app = imprint_server::full_router(imprint.clone(), options, sessions, trusted);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    serve(listener, app, limits);
    TestApp { addr, client: Client::new(), pool, imprint }
}

/// Serves `app` as the server binary does (the same listener and limits), until the test ends.
pub fn serve(listener: tokio::net::TcpListener, app: axum::Router, limits: imprint_server::ConnectionLimits) {
    tokio::spawn(async move {
        imprint_server::serve_with_limits(listener, app, limits, std::future::pending()).await.expect("serve")
    });
}

pub const ADMIN_PASSWORD: &str = "test-admin-password";

impl TestApp {
    /// The service behind this server (to look at or change what the API does not show).
    pub fn imprint(&self) -> &Imprint {
        &self.imprint
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
        auth::create_token_with(&self.pool, &imprint_service::Caller::System, &spec).await.expect("consumer token")
    }

    /// Stops this server's background work (scheduler, audit, change following), as a
    /// shutdown would; its HTTP listener keeps answering from memory.
    pub fn imprint_shutdown(&self) {
        self.imprint.shutdown();
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

    pub async fn create_topic(&self, name: &str) -> Value {
        self.create_topic_with(json!({"name": name, "owner": "payments"})).await
    }

    pub async fn create_topic_with(&self, body: Value) -> Value {
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

    pub async fn token(&self, name: &str, team: Option<&str>) -> String {
        auth::create_token(&self.pool, &imprint_service::Caller::System, name, team.is_none(), team)
            .await
            .expect("token")
    }

    pub async fn poll(&self, body: Value) -> Value {
        let r = self.req(Method::POST, "/api/v1/poll").json(&body).send().await.expect("send");
        assert_eq!(r.status(), 200, "poll {body}");
        r.json().await.expect("json")
    }

    pub async fn versions_in_db(&self, topic: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM versions v JOIN topics t ON t.id = v.topic_id WHERE t.name = $1")
            .bind(topic)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Asserts an API error: status and `error.code`, and that a message is present.
pub async fn assert_error(r: Response, status: u16, code: &str) -> Value {
    let got = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "status; body {body}");
    assert_eq!(body["error"]["code"], code, "code; body {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "message; body {body}");
    body
}
