//! `spawn_app`: a real server on port 0 against the test's database.
use imprint_service::{auth, Config, Imprint};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token";
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
    let imprint = Imprint::with_pool(
        serving_pool,
        Config {
            audit_flush_every: Duration::from_millis(200),
            lag_grace: Duration::from_secs(LAG_GRACE_SECS),
            ..Config::default()
        },
    );
    auth::ensure_bootstrap_token(&admin_pool, ADMIN_TOKEN).await.expect("bootstrap token");
    imprint.start_background().await.expect("state loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = imprint_server::api_router(imprint.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    TestApp { addr, client: Client::new(), pool: admin_pool, imprint }
}

impl TestApp {
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
