//! Roles over one Postgres, as real processes of the server binary: two `api`
//! processes, one `publish,console`, one `worker`. A publish through one process is
//! answered by long polls on the others; each process refuses what its roles do not
//! serve; a rollout advances with the worker alone, stands still without it, and a new
//! worker resumes it.
use imprint_testkit::eventually;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "roles-test-token-0123456789abcdef";

struct Server {
    child: Child,
    url: String,
    name: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The test database's URL: the server part of DATABASE_URL, the database sqlx made.
fn database_url(pool: &sqlx::PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let db = pool.connect_options().get_database().expect("test database").to_owned();
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    format!("{server}/{db}")
}

async fn start(name: &'static str, roles: &str, db: &str, store: &std::path::Path, extra: &[(&str, &str)]) -> Server {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("imprint-roles-{name}-{port}.log"))).expect("log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imprint-server"));
    cmd.arg("serve")
        .env("DATABASE_URL", db)
        .env("IMPRINT_ADDR", format!("127.0.0.1:{port}"))
        .env("IMPRINT_ROLES", roles)
        .env("IMPRINT_OBJECT_STORE", format!("file://{}", store.display()))
        .env("IMPRINT_ROLLOUT_TICK_MS", "100")
        .env("IMPRINT_ADMIN_PASSWORD", "roles-test-password")
        .env("LEPTOS_OUTPUT_NAME", "imprint")
        .env("LEPTOS_SITE_ROOT", "target/site")
        .env("LEPTOS_SITE_PKG_DIR", "pkg")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start the server binary");
    let server = Server { child, url, name };
    let http = Client::new();
    let ready = format!("{}/readyz", server.url);
    eventually(&format!("{name} ({roles}) to become ready"), || async {
        http.get(&ready).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    server
}

async fn call(http: &Client, s: &Server, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut r = http.request(method, format!("{}{path}", s.url)).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("{} {path}: {e}", s.name));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn poll_body(instance: &str, held: Option<u64>, wait_ms: u64) -> Value {
    json!({"consumer": {"instance": instance, "labels": {"region": "eu"}}, "topics": {"roles.config": held}, "wait_ms": wait_ms})
}

async fn rollout(http: &Client, s: &Server, id: &Value) -> Value {
    let (st, r) = call(http, s, Method::GET, &format!("/api/v1/topics/roles.config/rollouts/{id}"), None).await;
    assert_eq!(st, 200, "{r}");
    r
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn two_api_one_publish_console_one_worker_over_one_postgres(pool: sqlx::PgPool) {
    let db = database_url(&pool);
    let store = std::env::temp_dir().join(format!("imprint-roles-store-{}", std::process::id()));
    std::fs::create_dir_all(&store).expect("store dir");
    let http = Client::new();

    // The first process migrates and creates the token; the others find both there
    // (each is given the token too: a process started without it revokes it).
    let token = [("IMPRINT_BOOTSTRAP_TOKEN", TOKEN)];
    let publisher = start("publish", "publish,console", &db, &store, &token).await;
    let api1 = start("api1", "api", &db, &store, &token).await;
    let api2 = start("api2", "api", &db, &store, &token).await;
    let worker = start("worker", "worker", &db, &store, &token).await;

    // Each process refuses what its roles do not serve, naming the role that does.
    let (st, body) = call(&http, &api1, Method::POST, "/api/v1/topics", Some(json!({"name": "roles.config"}))).await;
    assert_eq!(st, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("publish role"), "{body}");
    let (st, body) = call(&http, &publisher, Method::POST, "/api/v1/poll", Some(poll_body("x", None, 0))).await;
    assert_eq!(st, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("api role"), "{body}");
    let (st, _) = call(&http, &worker, Method::GET, "/api/v1/topics", None).await;
    assert_eq!(st, 404, "the worker answers no API calls");
    let (st, _) = call(&http, &worker, Method::GET, "/metrics", None).await;
    assert_eq!(st, 200, "every process has metrics");
    let console = http.get(format!("{}/login", api1.url)).send().await.expect("console on api");
    assert_eq!(console.status(), 404, "no console on an api process");
    let console = http.get(format!("{}/login", publisher.url)).send().await.expect("console");
    assert_eq!(console.status(), 200, "the console on the publish,console process");

    // Publishing through one process, reading and polling through the others.
    let (st, body) =
        call(&http, &publisher, Method::POST, "/api/v1/topics", Some(json!({"name": "roles.config"}))).await;
    assert_eq!(st, 201, "{body}");
    let (st, body) =
        call(&http, &publisher, Method::POST, "/api/v1/topics/roles.config/versions", Some(json!({"data": "v1"})))
            .await;
    assert_eq!(st, 201, "{body}");
    for api in [&api1, &api2] {
        eventually(&format!("{} to see v1", api.name), || async {
            let (st, body) = call(&http, api, Method::POST, "/api/v1/poll", Some(poll_body("warm", None, 0))).await;
            assert_eq!(st, 200, "{body}");
            body["updates"]["roles.config"]["version"] == 1
        })
        .await;
        let (st, _) = call(&http, api, Method::GET, "/api/v1/topics/roles.config", None).await;
        assert_eq!(st, 200, "reads on {}", api.name);
    }

    // Long polls parked on both api processes are answered by a publish through the
    // third (before their own 20 s wait runs out).
    let parked: Vec<_> = [&api1, &api2]
        .into_iter()
        .enumerate()
        .map(|(i, api)| {
            let (http, url) = (http.clone(), format!("{}/api/v1/poll", api.url));
            tokio::spawn(async move {
                let r = http.post(url).bearer_auth(TOKEN).json(&poll_body(&format!("node-{i}"), Some(1), 20_000));
                let sent = Instant::now();
                let resp = r.send().await.expect("long poll");
                (sent, Instant::now(), resp.json::<Value>().await.expect("json"))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = Instant::now();
    let (st, body) =
        call(&http, &publisher, Method::POST, "/api/v1/topics/roles.config/versions", Some(json!({"data": "v2"})))
            .await;
    assert_eq!(st, 201, "{body}");
    for p in parked {
        let (sent, answered, body) = p.await.expect("poll task");
        assert_eq!(body["updates"]["roles.config"]["version"], 2, "{body}");
        let took = answered.saturating_duration_since(published);
        println!("long poll answered {took:?} after the publish request started (informational)");
        let held = answered.duration_since(sent);
        assert!(held < Duration::from_secs(20), "answered when its 20 s wait ran out, not by the publish: {held:?}");
    }

    // A rollout advances with the worker alone (no other process runs the scheduler).
    let (st, _) = call(
        &http,
        &publisher,
        Method::POST,
        "/api/v1/topics/roles.config/versions",
        Some(json!({"data": "v3", "scopes": []})),
    )
    .await;
    assert_eq!(st, 201);
    let stages = json!([{"selector": {"region": "eu"}, "wait_s": 1}, {"selector": {"region": "us"}, "wait_s": 4}, {"selector": {}, "wait_s": 0}]);
    let (st, ro) = call(
        &http,
        &publisher,
        Method::POST,
        "/api/v1/topics/roles.config/rollouts",
        Some(json!({"version": 3, "stages": stages})),
    )
    .await;
    assert_eq!(st, 201, "{ro}");
    let id = ro["id"].clone();
    eventually("stage 2 to be reached", || async { rollout(&http, &api1, &id).await["current_stage"] == 1 }).await;

    // The worker dies: stage 3 (due 4 s after stage 2) is not reached without it.
    drop(worker);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = rollout(&http, &api2, &id).await;
    assert_eq!((r["state"].as_str(), r["current_stage"].as_u64()), (Some("running"), Some(1)), "{r}");

    // Another worker takes over and finishes it.
    let _worker2 = start("worker2", "worker", &db, &store, &token).await;
    eventually("the new worker to complete the rollout", || async {
        rollout(&http, &api1, &id).await["state"] == "completed"
    })
    .await;
    let (st, body) = call(&http, &api2, Method::POST, "/api/v1/poll", Some(poll_body("late", None, 0))).await;
    assert_eq!(st, 200);
    assert_eq!(body["updates"]["roles.config"]["version"], 3, "{body}");
    drop((publisher, api1, api2));
    let _ = std::fs::remove_dir_all(store);
}
