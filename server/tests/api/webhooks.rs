//! Webhooks through the real path: subscriptions over HTTP, events written in the
//! change's transaction, the worker delivering signed CloudEvents to a real HTTP
//! receiver (on loopback: the subscriptions are an admin's with `allow_private`), retries,
//! order, restarts, address refusals and rights.
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use imprint_testkit::{assert_error, eventually, spawn_app, spawn_app_clocked, ManualClock, SendJson, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a test receiver answers.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Ok,
    Down,
    Hang,
    Redirect(String),
}

#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
    /// What the receiver answered.
    accepted: bool,
}

#[derive(Clone)]
struct Receiver {
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Vec<Received>>>,
    url: String,
}

impl Receiver {
    async fn start() -> Self {
        let r = Receiver { mode: Arc::new(Mutex::new(Mode::Ok)), got: Arc::default(), url: String::new() };
        let state = r.clone();
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url: format!("http://{addr}/hook"), ..r }
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The events it accepted, parsed.
    fn accepted(&self) -> Vec<Value> {
        self.all().into_iter().filter(|r| r.accepted).map(|r| serde_json::from_slice(&r.body).unwrap()).collect()
    }
}

async fn handle(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mode = r.mode.lock().unwrap().clone();
    let accepted = mode == Mode::Ok;
    r.got.lock().unwrap().push(Received { headers, body: body.to_vec(), accepted });
    match mode {
        Mode::Ok => (StatusCode::OK, "thanks").into_response(),
        Mode::Down => (StatusCode::SERVICE_UNAVAILABLE, "x".repeat(5000)).into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        Mode::Redirect(to) => (StatusCode::FOUND, [("location", to)]).into_response(),
    }
}

/// Checks a delivery's Standard Webhooks signature against `secret` (independently of
/// the server's code: HMAC-SHA256 over `{id}.{timestamp}.{body}`, any `v1,` entry).
fn signed_with(r: &Received, secret: &str) -> bool {
    let h = |k: &str| r.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(&r.body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    h("webhook-signature").split(' ').any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
}

/// Creates a subscription as the admin; its JSON (with `secret`).
async fn subscribe(app: &TestApp, body: Value) -> Value {
    let (status, got) = app.post_json("/api/v1/webhooks", &body).await;
    assert_eq!(status, 201, "create webhook {body}: {got}");
    got
}

async fn deliveries(app: &TestApp, id: &Value) -> Vec<Value> {
    let (status, got) = app.get_json(&format!("/api/v1/webhooks/{id}/deliveries?limit=500")).await;
    assert_eq!(status, 200, "{got}");
    got["deliveries"].as_array().unwrap().clone()
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap().trim_start_matches("io.imprint.").to_owned()).collect()
}

/// Every event type arrives as a signed CloudEvent, in the order of the changes.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn every_change_arrives_as_a_signed_cloudevent_in_order(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let rx = Receiver::start().await;
    let hook = subscribe(&app, json!({"url": rx.url, "allow_private": true, "description": "all of it"})).await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    let (_, shown) = app.get_json(&format!("/api/v1/webhooks/{}", hook["id"])).await;
    assert!(shown.get("secret").is_none(), "the secret is shown only once: {shown}");

    app.create_topic("hooked.feed").await;
    app.publish("hooked.feed", json!({"data": "v1"})).await;
    let (s, b) =
        app.post_json("/api/v1/topics/hooked.feed/versions/1/scopes", &json!({"selector": {"region": "eu"}})).await;
    assert_eq!(s, 201, "{b}");
    let r = app
        .admin(Method::PUT, "/api/v1/topics/hooked.feed/pins")
        .json(&json!({"selector": {"region": "eu"}, "version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app.admin(Method::DELETE, "/api/v1/topics/hooked.feed/pins?selector=region%3Deu").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/hooked.feed")
        .json(&json!({"description": "changed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let p = app
        .publish("hooked.feed", json!({"data": "v2", "rollout": {"stages": [{"selector": {"region": "eu"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}}))
        .await;
    let rollout = p["rollout"]["id"].clone();
    let act = |a: &'static str| {
        let app = &app;
        let rollout = rollout.clone();
        async move {
            let r = app
                .admin(Method::POST, &format!("/api/v1/topics/hooked.feed/rollouts/{rollout}/{a}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{a}: {}", r.text().await.unwrap());
        }
    };
    act("pause").await;
    act("resume").await;
    act("advance").await;
    let p = app
        .publish("hooked.feed", json!({"data": "v3", "rollout": {"stages": [{"selector": {"region": "eu"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}}))
        .await;
    let third = p["rollout"]["id"].clone();
    let r = app
        .admin(Method::POST, &format!("/api/v1/topics/hooked.feed/rollouts/{third}/cancel"))
        .json(&json!({"rollback": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let want = [
        "topic.created",
        "version.published",
        "scope.added",
        "pin.set",
        "pin.removed",
        "topic.changed",
        "rollout.started",
        "rollout.advanced", // stage 1 at start
        "version.published",
        "rollout.paused",
        "rollout.resumed",
        "rollout.advanced", // the last stage
        "rollout.completed",
        "rollout.started",
        "rollout.advanced",
        "version.published",
        "rollout.cancelled",
    ];
    let got = eventually("every event delivered", || async {
        let got = rx.accepted();
        (got.len() >= want.len()).then_some(got)
    })
    .await;
    // In the order the changes committed (within a publish with a rollout: the rollout's
    // events, then the publish's).
    assert_eq!(types(&got), want, "{got:#?}");
    for r in rx.all() {
        assert!(signed_with(&r, &secret), "verifies: {:?}", r.headers);
        assert_eq!(r.headers["content-type"], "application/cloudevents+json");
        let e: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], r.headers["webhook-id"].to_str().unwrap());
        assert_eq!(e["source"], "/imprint");
        assert_eq!(e["subject"], "hooked.feed");
        assert_eq!(e["datacontenttype"], "application/json");
        assert!(DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).is_ok());
        assert_eq!(e["data"]["topic"], "hooked.feed");
        assert_eq!(e["data"]["actor"], "token:bootstrap", "{e}");
        let ts: i64 = r.headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert!((Utc::now().timestamp() - ts).abs() < 120);
    }
    let published: Vec<u64> = got
        .iter()
        .filter(|e| e["type"] == "io.imprint.version.published")
        .map(|e| e["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(published, [1, 2, 3]);
    // The delivery log says so too.
    let log = deliveries(&app, &hook["id"]).await;
    assert_eq!(log.len(), want.len());
    for d in &log {
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["last_status"], 200);
        assert_eq!(d["last_response"], "thanks");
        assert!(d["last_latency_ms"].as_i64().is_some());
    }
}

/// A subscription filtered by event type and topic gets only those; a team's gets only
/// its topics'.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn subscriptions_get_only_what_they_asked_for(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let system = imprint_service::Caller::System;
    app.imprint().create_team(&system, "blue", "").await.unwrap();
    app.imprint().create_team(&system, "red", "").await.unwrap();
    app.create_topic_with(json!({"name": "blue.a", "owner": "blue"})).await;
    app.create_topic_with(json!({"name": "blue.b", "owner": "blue"})).await;
    app.create_topic_with(json!({"name": "red.secret", "owner": "red", "restricted": true})).await;
    let by_topic = Receiver::start().await;
    let by_team = Receiver::start().await;
    subscribe(
        &app,
        json!({"url": by_topic.url, "allow_private": true, "topic": "blue.a", "event_types": ["version.published"]}),
    )
    .await;
    subscribe(&app, json!({"url": by_team.url, "allow_private": true, "team": "blue"})).await;
    app.publish("red.secret", json!({"data": "hidden"})).await;
    app.publish("blue.b", json!({"data": "b1"})).await;
    app.publish("blue.a", json!({"data": "a1"})).await;
    let r = app
        .admin(Method::PUT, "/api/v1/topics/blue.a/pins")
        .json(&json!({"selector": {}, "version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually("the team's three events", || async { by_team.accepted().len() >= 3 }).await;
    eventually("the topic's one event", || async { !by_topic.accepted().is_empty() }).await;
    let team: Vec<(String, String)> = by_team
        .accepted()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["subject"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        team,
        [
            ("io.imprint.version.published".to_owned(), "blue.b".to_owned()),
            ("io.imprint.version.published".to_owned(), "blue.a".to_owned()),
            ("io.imprint.pin.set".to_owned(), "blue.a".to_owned()),
        ]
    );
    // A team's subscription to one of its topics stops when the topic goes to another team.
    let blue = app.token("blue-pub", Some("blue")).await;
    let mine = Receiver::start().await;
    let r = app
        .req(Method::POST, "/api/v1/webhooks")
        .bearer_auth(&blue)
        .json(&json!({"url": "https://hooks.example.com/blue", "topic": "blue.b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].clone();
    // (Its receiver is on loopback here: allowed behind the API's back, for the test only.)
    sqlx::query("UPDATE webhook_subscriptions SET url = $1, allow_private = true WHERE id = $2")
        .bind(&mine.url)
        .bind(id.as_i64().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    app.publish("blue.b", json!({"data": "b2"})).await;
    eventually("blue's own topic event", || async { mine.accepted().len() == 1 }).await;
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/blue.b")
        .json(&json!({"owner": "red", "restricted": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    app.publish("blue.b", json!({"data": "b3"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(types(&mine.accepted()), ["version.published"], "nothing after the topic changed hands");
    assert_eq!(by_topic.accepted().len(), 1, "{:?}", by_topic.accepted());
    assert_eq!(by_topic.accepted()[0]["subject"], "blue.a");
    assert!(by_team.accepted().iter().all(|e| e["subject"] != "red.secret"));
    let versions: Vec<&str> = by_team
        .accepted()
        .iter()
        .filter(|e| e["subject"] == "blue.b" && e["type"] == "io.imprint.version.published")
        .map(|e| {
            e["data"]["version"]
                .as_u64()
                .map(|v| {
                    if v == 1 {
                        "b1"
                    } else if v == 2 {
                        "b2"
                    } else {
                        "b3"
                    }
                })
                .unwrap()
        })
        .collect();
    assert_eq!(versions, ["b1", "b2"], "the team's subscription follows the topic's owner");
}

/// An event is written in the change's transaction: a publish that fails after it
/// superseded a running rollout (its plan name is unknown) rolls the event back too.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_failed_change_emits_nothing(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let rx = Receiver::start().await;
    app.create_topic("tx.feed").await;
    let hook = subscribe(
        &app,
        json!({"url": rx.url, "allow_private": true, "event_types": ["rollout.cancelled", "version.published"]}),
    )
    .await;
    app.publish("tx.feed", json!({"data": "v1", "rollout": {"stages": [{"selector": {"region": "eu"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}})).await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/tx.feed/versions")
        .json(&json!({"data": "v2", "rollout": "missing"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    app.publish("tx.feed", json!({"data": "v2", "rollout": null})).await;
    eventually("three events", || async { rx.accepted().len() >= 3 }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = rx.accepted();
    assert_eq!(types(&got), ["version.published", "rollout.cancelled", "version.published"], "{got:#?}");
    assert_eq!(got[2]["data"]["version"], 2, "the failed publish's version number was never used");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events").fetch_one(&app.pool).await.unwrap();
    assert_eq!(events, 3, "no event of the rolled-back publish (its rollout.cancelled) was stored");
    assert_eq!(deliveries(&app, &hook["id"]).await.len(), 3);
}

/// A receiver that is down gets its backlog in order when it comes back; retries back
/// off (5 s, then 10 s, less up to a fifth of jitter) on the service's clock.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_receiver_that_was_down_gets_its_backlog_in_order(pool: sqlx::PgPool) {
    let clock = ManualClock::new(Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool, |_| {}, Arc::new(clock.clone())).await;
    let rx = Receiver::start().await;
    rx.set(Mode::Down);
    app.create_topic("backlog.feed").await;
    let hook =
        subscribe(&app, json!({"url": rx.url, "allow_private": true, "event_types": ["version.published"]})).await;
    for i in 1..=5 {
        app.publish_text("backlog.feed", &format!("v{i}")).await;
    }
    // Only the oldest is tried: the others wait behind it.
    let first = eventually("a failed first attempt", || async {
        let log = deliveries(&app, &hook["id"]).await;
        log.iter().find(|d| d["attempts"] == 1).cloned()
    })
    .await;
    assert_eq!(first["state"], "pending");
    assert_eq!(first["last_status"], 503);
    assert!(first["last_error"].as_str().unwrap().contains("503"), "{first}");
    assert_eq!(first["last_response"].as_str().unwrap().len(), 1024, "the snippet is bounded");
    let wait = |d: &Value| {
        let at = |k: &str| DateTime::parse_from_rfc3339(d[k].as_str().unwrap()).unwrap();
        at("next_attempt_at") - at("last_attempt_at")
    };
    let w = wait(&first);
    assert!(w <= chrono::Duration::seconds(5) && w >= chrono::Duration::seconds(4), "first retry after 4-5 s: {w:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(rx.all().len(), 1, "nothing is retried before its time, nothing newer goes first");
    // The second retry waits twice as long.
    clock.advance(chrono::Duration::seconds(6));
    let second = eventually("a second failed attempt", || async {
        deliveries(&app, &hook["id"]).await.into_iter().find(|d| d["attempts"] == 2)
    })
    .await;
    let w = wait(&second);
    assert!(
        w <= chrono::Duration::seconds(10) && w >= chrono::Duration::seconds(8),
        "second retry after 8-10 s: {w:?}"
    );
    // Back up: the backlog arrives, oldest first.
    rx.set(Mode::Ok);
    clock.advance(chrono::Duration::seconds(11));
    let got = eventually("the backlog", || async { (rx.accepted().len() >= 5).then(|| rx.accepted()) }).await;
    let versions: Vec<u64> = got.iter().map(|e| e["data"]["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    let log = deliveries(&app, &hook["id"]).await;
    assert!(log.iter().all(|d| d["state"] == "delivered"), "{log:#?}");
}

/// After the last retry a delivery is `failed`; redeliver sends it again with the same id.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn failed_deliveries_can_be_redelivered(pool: sqlx::PgPool) {
    let clock = ManualClock::new(Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool, |_| {}, Arc::new(clock.clone())).await;
    let rx = Receiver::start().await;
    rx.set(Mode::Down);
    app.create_topic("fail.feed").await;
    let hook =
        subscribe(&app, json!({"url": rx.url, "allow_private": true, "event_types": ["version.published"]})).await;
    app.publish_text("fail.feed", "v1").await;
    let mut attempts = 0;
    while attempts < imprint_domain::webhooks::MAX_ATTEMPTS as i64 {
        attempts = eventually("the next attempt", || async {
            let d = deliveries(&app, &hook["id"]).await.pop().unwrap();
            let a = d["attempts"].as_i64().unwrap();
            (a > attempts).then_some(a)
        })
        .await;
        clock.advance(chrono::Duration::hours(5));
    }
    let d = deliveries(&app, &hook["id"]).await.pop().unwrap();
    assert_eq!(d["state"], "failed", "{d}");
    assert!(d["next_attempt_at"].is_null());
    assert_eq!(rx.all().len(), imprint_domain::webhooks::MAX_ATTEMPTS as usize);
    rx.set(Mode::Ok);
    let (s, again) =
        app.post_json(&format!("/api/v1/webhooks/{}/deliveries/{}/redeliver", hook["id"], d["id"]), &json!({})).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["state"], "pending");
    eventually("redelivered", || async { rx.accepted().len() == 1 }).await;
    let all = rx.all();
    let ids: std::collections::BTreeSet<_> = all.iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the event's id");
    let r = app
        .admin(Method::POST, &format!("/api/v1/webhooks/{}/deliveries/999999/redeliver", hook["id"]))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "webhook_not_found").await;
}

/// Events committed while the receiver was down survive a server restart and arrive,
/// in order, from the next server.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_restart_loses_no_event(pool: sqlx::PgPool) {
    let fresh = || async {
        sqlx::postgres::PgPoolOptions::new().connect_with(pool.connect_options().as_ref().clone()).await.unwrap()
    };
    let clock = ManualClock::new(Utc::now());
    let rx = Receiver::start().await;
    rx.set(Mode::Down);
    let first = spawn_app_clocked(fresh().await, pool.clone(), |_| {}, Arc::new(clock.clone())).await;
    first.create_topic("restart.feed").await;
    subscribe(&first, json!({"url": rx.url, "allow_private": true, "event_types": ["version.published"]})).await;
    for i in 1..=3 {
        first.publish_text("restart.feed", &format!("v{i}")).await;
    }
    eventually("a failed attempt", || async { !rx.all().is_empty() }).await;
    first.shut_down().await.unwrap();
    rx.set(Mode::Ok);
    clock.advance(chrono::Duration::minutes(1));
    let second = spawn_app_clocked(fresh().await, pool.clone(), |_| {}, Arc::new(clock.clone())).await;
    second.publish_text("restart.feed", "v4").await;
    let got = eventually("every event", || async { (rx.accepted().len() >= 4).then(|| rx.accepted()) }).await;
    let versions: Vec<u64> = got.iter().map(|e| e["data"]["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

/// A receiver that never answers: each attempt ends at the timeout, and publishing does
/// not wait for it.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_hanging_receiver_is_cut_off_and_never_slows_publishing(pool: sqlx::PgPool) {
    let app = spawn_app_clocked(
        pool.clone(),
        pool,
        |c| c.webhook_timeout = Duration::from_secs(1),
        Arc::new(imprint_service::SystemClock),
    )
    .await;
    let rx = Receiver::start().await;
    rx.set(Mode::Hang);
    app.create_topic("slow.feed").await;
    let hook = subscribe(&app, json!({"url": rx.url, "allow_private": true})).await;
    let started = Instant::now();
    for i in 1..=10 {
        app.publish_text("slow.feed", &format!("v{i}")).await;
    }
    let publishing = started.elapsed();
    assert!(publishing < Duration::from_secs(5), "10 publishes took {publishing:?}");
    let d = eventually("an attempt cut off", || async {
        deliveries(&app, &hook["id"]).await.into_iter().find(|d| d["attempts"] == 1)
    })
    .await;
    assert!(d["last_error"].as_str().unwrap().contains("no answer within 1000 ms"), "{d}");
    assert!(d["last_status"].is_null());
    let latency = d["last_latency_ms"].as_i64().unwrap();
    assert!((900..3000).contains(&latency), "bounded by the timeout: {latency} ms");
}

/// Without allow_private, loopback, private and metadata addresses are refused when the
/// subscription is made and — for names — when a delivery resolves them; redirects are
/// never followed; only admins may allow private addresses.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn private_addresses_and_redirects_are_refused(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://10.0.0.8/",
        "http://localhost:9/",
        "http://0.0.0.0/",
        "ftp://example.com/",
        "http://u:p@example.com/",
    ] {
        let r = app.admin(Method::POST, "/api/v1/webhooks").json(&json!({"url": url})).send().await.unwrap();
        assert_error(r, 400, "invalid_request").await;
    }
    let publisher = app.token("pub", Some("payments")).await;
    let r = app
        .req(Method::POST, "/api/v1/webhooks")
        .bearer_auth(&publisher)
        .json(&json!({"url": "http://127.0.0.1:9/", "team": "payments", "allow_private": true}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    // A name that resolves to loopback is refused at delivery (here: allow_private taken
    // away behind the API's back, as when a public name is re-pointed at loopback).
    let rx = Receiver::start().await;
    let by_name = rx.url.replace("127.0.0.1", "localhost");
    let hook = subscribe(&app, json!({"url": by_name, "allow_private": true})).await;
    sqlx::query("UPDATE webhook_subscriptions SET allow_private = false").execute(&app.pool).await.unwrap();
    app.create_topic("ssrf.feed").await;
    let d = eventually("a refused attempt", || async {
        deliveries(&app, &hook["id"]).await.into_iter().find(|d| d["attempts"] == 1)
    })
    .await;
    assert!(d["last_error"].as_str().unwrap().contains("refused: localhost resolves to"), "{d}");
    assert!(rx.all().is_empty(), "the receiver got nothing");
    app.admin(Method::DELETE, &format!("/api/v1/webhooks/{}", hook["id"])).send().await.unwrap();

    // A redirect is an answer, not a new destination.
    let target = Receiver::start().await;
    let redirecting = Receiver::start().await;
    redirecting.set(Mode::Redirect(target.url.clone()));
    let hook = subscribe(&app, json!({"url": redirecting.url, "allow_private": true})).await;
    app.publish_text("ssrf.feed", "v1").await;
    let d = eventually("a redirected attempt", || async {
        deliveries(&app, &hook["id"]).await.into_iter().find(|d| d["attempts"] == 1)
    })
    .await;
    assert_eq!(d["last_status"], 302);
    assert!(d["last_error"].as_str().unwrap().contains("redirects are not followed"), "{d}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(target.all().is_empty(), "the redirect was not followed");
}

/// A team's token manages its team's and topics' subscriptions only; global ones are
/// admins'; consumer tokens and anonymous callers manage none.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn only_those_with_rights_manage_subscriptions(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let system = imprint_service::Caller::System;
    app.imprint().create_team(&system, "blue", "").await.unwrap();
    app.imprint().create_team(&system, "red", "").await.unwrap();
    app.create_topic_with(json!({"name": "red.secret", "owner": "red", "restricted": true})).await;
    app.create_topic_with(json!({"name": "blue.open", "owner": "blue"})).await;
    let blue = app.token("blue-pub", Some("blue")).await;
    let consumer = app.consumer_token("red-reader", Some("red"), &[], &[]).await;
    let url = "https://hooks.example.com/imprint";
    let create = |token: Option<String>, body: Value| {
        let mut r = app.req(Method::POST, "/api/v1/webhooks").json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_error(
        create(Some(blue.clone()), json!({"url": url, "topic": "red.secret"})).await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    assert_error(create(Some(blue.clone()), json!({"url": url, "team": "red"})).await.unwrap(), 403, "forbidden").await;
    assert_error(create(Some(blue.clone()), json!({"url": url})).await.unwrap(), 403, "forbidden").await;
    assert_error(create(Some(consumer.clone()), json!({"url": url, "team": "red"})).await.unwrap(), 403, "forbidden")
        .await;
    assert_error(create(None, json!({"url": url})).await.unwrap(), 401, "unauthorized").await;
    let (s, red_hook) = app.post_json("/api/v1/webhooks", &json!({"url": url, "topic": "red.secret"})).await;
    assert_eq!(s, 201, "{red_hook}");
    let r = create(Some(blue.clone()), json!({"url": url, "topic": "blue.open"})).await.unwrap();
    assert_eq!(r.status(), 201);
    let blue_hook: Value = r.json().await.unwrap();
    // Blue sees its own only; red's is "not found" to it, whatever it tries.
    let list = app.req(Method::GET, "/api/v1/webhooks").bearer_auth(&blue).json_body().await;
    let ids: Vec<&Value> = list["webhooks"].as_array().unwrap().iter().map(|w| &w["id"]).collect();
    assert_eq!(ids, [&blue_hook["id"]]);
    for (m, path) in [
        (Method::GET, format!("/api/v1/webhooks/{}", red_hook["id"])),
        (Method::PATCH, format!("/api/v1/webhooks/{}", red_hook["id"])),
        (Method::DELETE, format!("/api/v1/webhooks/{}", red_hook["id"])),
        (Method::POST, format!("/api/v1/webhooks/{}/rotate", red_hook["id"])),
        (Method::GET, format!("/api/v1/webhooks/{}/deliveries", red_hook["id"])),
    ] {
        let r = app.req(m.clone(), &path).bearer_auth(&blue).json(&json!({})).send().await.unwrap();
        assert_error(r, 404, "webhook_not_found").await;
    }
    let anon = app.req(Method::GET, "/api/v1/webhooks").send().await.unwrap();
    assert_error(anon, 401, "unauthorized").await;
    let all = app.req(Method::GET, "/api/v1/webhooks").bearer_auth(imprint_testkit::ADMIN_TOKEN).json_body().await;
    assert_eq!(all["webhooks"].as_array().unwrap().len(), 2);
    // Blue may not turn allow_private on for its own either.
    let r = app
        .req(Method::PATCH, &format!("/api/v1/webhooks/{}", blue_hook["id"]))
        .bearer_auth(&blue)
        .json(&json!({"allow_private": true}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
}

/// Bad input is refused with the API's error shape and changes nothing.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn bad_webhook_requests_are_refused(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("bad.feed").await;
    let url = "https://hooks.example.com/x";
    for body in [
        json!({"url": url, "event_types": ["version.publishd"]}),
        json!({"url": url, "topic": "bad.feed", "team": "payments"}),
        json!({"url": url, "colour": "blue"}),
        json!({"url": 7}),
        json!({"url": url, "description": "d".repeat(1001)}),
    ] {
        let r = app.admin(Method::POST, "/api/v1/webhooks").json(&body).send().await.unwrap();
        assert_error(r, 400, "invalid_request").await;
    }
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({"url": url, "topic": "Not A Topic"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_topic_name").await;
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .json(&json!({"url": url, "topic": "no.such"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "topic_not_found").await;
    let r =
        app.admin(Method::POST, "/api/v1/webhooks").json(&json!({"url": url, "team": "nobody"})).send().await.unwrap();
    assert_error(r, 404, "team_not_found").await;
    let r = app
        .admin(Method::POST, "/api/v1/webhooks")
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let (_, list) = app.get_json("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]), "nothing was created");
    let hook = subscribe(&app, json!({"url": url, "topic": "bad.feed"})).await;
    let id = &hook["id"];
    for (m, path, body) in [
        (Method::GET, "/api/v1/webhooks/abc".to_owned(), json!(null)),
        (Method::GET, "/api/v1/webhooks/0".to_owned(), json!(null)),
        (Method::PATCH, format!("/api/v1/webhooks/{id}"), json!({"url": "gopher://x"})),
        (Method::PATCH, format!("/api/v1/webhooks/{id}"), json!({"event_types": ["nope"]})),
        (Method::PATCH, format!("/api/v1/webhooks/{id}"), json!({"topic": "other"})),
        (Method::POST, format!("/api/v1/webhooks/{id}/rotate"), json!({"previous_valid_secs": 99_999_999})),
        (Method::GET, format!("/api/v1/webhooks/{id}/deliveries?state=lost"), json!(null)),
        (Method::GET, format!("/api/v1/webhooks/{id}/deliveries?limit=0"), json!(null)),
        (Method::GET, format!("/api/v1/webhooks/{id}/deliveries?cursor=zzz"), json!(null)),
    ] {
        let mut r = app.admin(m, &path);
        if !body.is_null() {
            r = r.json(&body);
        }
        assert_error(r.send().await.unwrap(), 400, "invalid_request").await;
    }
    let r = app.admin(Method::GET, "/api/v1/webhooks/424242").send().await.unwrap();
    assert_error(r, 404, "webhook_not_found").await;
    let (_, same) = app.get_json(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(same["url"], url);
    assert_eq!(same["event_types"], json!([]));
}

/// After a rotation both secrets sign until the old one's time is up; the new secret
/// is shown once.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_rotated_secret_keeps_signing_for_its_overlap(pool: sqlx::PgPool) {
    let clock = ManualClock::new(Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool, |_| {}, Arc::new(clock.clone())).await;
    let rx = Receiver::start().await;
    app.create_topic("rotate.feed").await;
    let hook =
        subscribe(&app, json!({"url": rx.url, "allow_private": true, "event_types": ["version.published"]})).await;
    let old = hook["secret"].as_str().unwrap().to_owned();
    let (s, rotated) =
        app.post_json(&format!("/api/v1/webhooks/{}/rotate", hook["id"]), &json!({"previous_valid_secs": 3600})).await;
    assert_eq!(s, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    assert!(rotated["previous_secret_expires_at"].is_string(), "{rotated}");
    app.publish_text("rotate.feed", "v1").await;
    eventually("one delivery", || async { rx.accepted().len() == 1 }).await;
    let r = &rx.all()[0];
    assert!(signed_with(r, &old) && signed_with(r, &new), "both sign during the overlap");
    assert_eq!(r.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);
    clock.advance(chrono::Duration::hours(2));
    app.publish_text("rotate.feed", "v2").await;
    eventually("two deliveries", || async { rx.accepted().len() == 2 }).await;
    let r = &rx.all()[1];
    assert!(signed_with(r, &new) && !signed_with(r, &old), "only the new one after it");
    let (_, shown) = app.get_json(&format!("/api/v1/webhooks/{}", hook["id"])).await;
    assert!(shown.get("secret").is_none() && shown["previous_secret_expires_at"].is_null(), "{shown}");
}
