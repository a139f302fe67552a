//! Automatic accept or reject of a version (docs/validation.md), through the real path:
//! checks set as topic settings over HTTP, publishes refused with 422 `validation_failed`
//! (nothing stored) or forced, and external validators that are real HTTP servers on
//! loopback (an admin's checks with `allow_private`) which verify the Standard Webhooks
//! signature and download the candidate from the URL they are given.
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use hmac::{Hmac, Mac};
use imprint_testkit::{assert_error, closed_port_url, spawn_app, SendJson, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How a test validator answers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Mode {
    Accept,
    Reject(String),
    /// Answers after this long.
    Slow(Duration),
}

/// What a validator saw of one request.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) body: Value,
    signed: bool,
    /// What its download URL gave (status, bytes).
    pub(crate) download: (u16, Vec<u8>),
}

#[derive(Clone)]
pub(crate) struct Validator {
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    pub(crate) url: String,
}

impl Validator {
    pub(crate) async fn start(mode: Mode) -> Self {
        let v = Validator { mode: Arc::new(Mutex::new(mode)), seen: Arc::default(), url: String::new() };
        let app = axum::Router::new().fallback(validate).with_state(v.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Validator { url: format!("http://{addr}/validate"), ..v }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Verifies the signature independently of the server's code (HMAC-SHA256 over
/// `{id}.{timestamp}.{body}`), downloads the candidate, then answers as its mode says.
async fn validate(State(v): State<Validator>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let key = base64::engine::general_purpose::STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(&body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let signed = h("webhook-signature").split(' ').any(|s| s.strip_prefix("v1,") == Some(want.as_str()));
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    let url = parsed["download_url"].as_str().unwrap().to_owned();
    let r = reqwest::get(&url).await.unwrap();
    let download = (r.status().as_u16(), r.bytes().await.unwrap().to_vec());
    v.seen.lock().unwrap().push(Seen { body: parsed, signed, download });
    let mode = v.mode.lock().unwrap().clone();
    match mode {
        Mode::Accept => Json(json!({"accept": true, "reason": "looks fine"})).into_response(),
        Mode::Reject(why) => Json(json!({"accept": false, "reason": why})).into_response(),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, Json(json!({"accept": true}))).into_response()
        }
    }
}

async fn publish(app: &TestApp, token: Option<&str>, topic: &str, body: Value) -> reqwest::Response {
    let path = format!("/api/v1/topics/{topic}/versions");
    let req = match token {
        Some(t) => app.req(Method::POST, &path).bearer_auth(t),
        None => app.admin(Method::POST, &path),
    };
    req.json(&body).send().await.unwrap()
}

pub(crate) fn external(url: &str, extra: Value) -> Value {
    let mut c = json!({"type": "external", "url": url, "secret": SECRET, "allow_private": true, "timeout_ms": 2000});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

/// The case: a payload whose record count halves is refused with the guard's
/// message and every check's result, nothing is stored; the owning team publishes it
/// with force and a reason (audited with the results); another team cannot.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_halved_record_count_is_rejected_and_can_be_forced_by_the_owner(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "prices", "owner": "payments", "checks": [
        {"type": "record_count_change_pct", "max_pct": 30},
        {"type": "not_empty"},
        {"type": "size_change_pct", "max_pct": 5, "on_fail": "warn"},
    ]}))
    .await;
    let first = app.publish("prices", json!({"data": "[1,2,3,4]"})).await;
    assert_eq!(first["checks"]["results"][0]["status"], "skipped", "{first}");

    let r = publish(&app, None, "prices", json!({"data": "[1,2]"})).await;
    let err = assert_error(r, 422, "validation_failed").await;
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("record count varied by 50% (4 → 2) vs v1; at most 30% allowed"), "{msg}");
    let results = err["error"]["details"]["checks"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["failed", "passed", "failed"], "{err}");
    assert_eq!(results[2]["on_fail"], "warn");
    assert_eq!(app.versions_in_db("prices").await, 1, "a rejected publish stores nothing");

    // Force needs a reason; a reason needs force.
    let r = publish(&app, None, "prices", json!({"data": "[1,2]", "force": true})).await;
    assert_error(r, 400, "invalid_request").await;
    let r = publish(&app, None, "prices", json!({"data": "[1,2]", "force_reason": "x"})).await;
    assert_error(r, 400, "invalid_request").await;

    // Another team's publisher may not force (nor publish) here.
    let other = app.token("other-publisher", Some("search")).await;
    let body = json!({"data": "[1,2]", "force": true, "force_reason": "we know"});
    assert_error(publish(&app, Some(&other), "prices", body.clone()).await, 403, "forbidden").await;
    assert_eq!(app.versions_in_db("prices").await, 1);

    // The owning team may.
    let owner = app.token("payments-publisher", Some("payments")).await;
    let body = json!({"data": "[1,2]", "force": true, "force_reason": "half the catalogue is retired today"});
    let r = publish(&app, Some(&owner), "prices", body).await;
    assert_eq!(r.status(), 201);
    let published: Value = r.json().await.unwrap();
    assert_eq!(published["version"], 2);
    assert_eq!(published["checks"]["forced_by"], "token:payments-publisher");
    assert!(published["warnings"][0].as_str().unwrap().starts_with("size_change_pct: size changed by"), "{published}");

    let (status, v) = app.get_json("/api/v1/topics/prices/versions/2").await;
    assert_eq!(status, 200);
    assert_eq!(v["checks"]["force_reason"], "half the catalogue is retired today");
    assert_eq!(v["checks"]["results"][0]["status"], "failed");
    let (_, list) = app.get_json("/api/v1/topics/prices/versions").await;
    assert_eq!(list["versions"][0]["checks"]["forced_by"], "token:payments-publisher", "{list}");

    let audited: (String, Value) =
        sqlx::query_as("SELECT actor, details FROM audit_log WHERE action = 'version.force' AND topic = 'prices'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited.0, "token:payments-publisher");
    assert_eq!(audited.1["reason"], "half the catalogue is retired today");
    assert_eq!(audited.1["checks"][0]["type"], "record_count_change_pct");

    // The next publish compares with v2 (2 records): 3 is a 50% change again.
    let r = publish(&app, None, "prices", json!({"data": "[1,2,3]"})).await;
    let err = assert_error(r, 422, "validation_failed").await;
    assert!(err["error"]["message"].as_str().unwrap().contains("(2 → 3) vs v2"), "{err}");

    // A raw publish is checked alike, and forced with query parameters.
    let raw = |q: &str| {
        app.admin(Method::POST, &format!("/api/v1/topics/prices/versions{q}"))
            .header("content-type", "application/octet-stream")
            .body("[]")
            .send()
    };
    let err = assert_error(raw("").await.unwrap(), 422, "validation_failed").await;
    assert!(err["error"]["message"].as_str().unwrap().contains("not_empty: the payload is empty"), "{err}");
    let (status, got) = app
        .admin(Method::POST, "/api/v1/topics/prices/versions?force=true&force_reason=emptied+on+purpose")
        .header("content-type", "application/octet-stream")
        .body("[]")
        .send_json()
        .await;
    assert_eq!(status, 201, "{got}");
    assert_eq!(got["checks"]["force_reason"], "emptied on purpose");
}

/// Checks are topic settings: validated, shown (a secret as `********`, which sent back
/// keeps it), `allow_private` for admins only.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn checks_are_settings_with_clear_errors(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    let patch = |body: Value, token: Option<String>| {
        let req = app.req(Method::PATCH, "/api/v1/topics/cfg");
        let req = req.bearer_auth(token.as_deref().unwrap_or(imprint_testkit::ADMIN_TOKEN));
        req.json(&body).send()
    };
    for bad in [
        json!({"checks": [{"type": "size_change_pct"}]}),
        json!({"checks": [{"type": "nope"}]}),
        json!({"checks": [{"type": "not_empty", "max_pct": 3}]}),
        json!({"checks": [{"type": "external", "url": "https://v.example"}]}),
        json!({"checks": [{"type": "external", "url": "http://127.0.0.1:9/x", "secret": SECRET}]}),
        json!({"on_failure": "explode"}),
    ] {
        let r = patch(bad.clone(), None).await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
    // A team's publisher may set checks, not a private validator address.
    let owner = app.token("payments-publisher", Some("payments")).await;
    let private = json!({"checks": [external("http://127.0.0.1:9/x", json!({}))]});
    assert_error(patch(private.clone(), Some(owner.clone())).await.unwrap(), 403, "forbidden").await;
    let r = patch(private, None).await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, t) = app.get_json("/api/v1/topics/cfg").await;
    assert_eq!(t["checks"][0]["secret"], "********", "{t}");
    // A reader without rights on the topic sees the validator's origin only.
    let reader = app.consumer_token("reader", None, &[], &[]).await;
    let (_, seen) = app.req(Method::GET, "/api/v1/topics/cfg").bearer_auth(&reader).send_json().await;
    assert_eq!(seen["checks"][0]["url"], "http://127.0.0.1:9", "{seen}");
    assert_eq!(t["on_failure"], "pause");
    // Sent back as shown (the console's and a script's round trip), the secret stays.
    let mut shown = t["checks"].clone();
    shown.as_array_mut().unwrap().push(json!({"type": "not_empty"}));
    let r = patch(json!({"checks": shown, "on_failure": "rollback"}), None).await.unwrap();
    assert_eq!(r.status(), 200);
    let stored: Value = sqlx::query_scalar(
        "SELECT v.settings FROM topic_validation v JOIN topics t ON t.id = v.topic_id WHERE t.name = 'cfg'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored["checks"][0]["secret"], SECRET);
    assert_eq!(stored["on_failure"], "rollback");
    // `********` for another URL does not borrow the secret.
    let moved = json!({"checks": [external("http://127.0.0.1:10/y", json!({"secret": "********"}))]});
    assert_error(patch(moved, None).await.unwrap(), 400, "invalid_request").await;
}

/// An external validator gets a signed request with the candidate's metadata and a
/// download URL that gives exactly the candidate while the checks run, and nothing after;
/// its rejection is the publish's 422, with its reason.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn an_external_validator_rejects_with_its_reason(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let v = Validator::start(Mode::Accept).await;
    app.create_topic_with(json!({"name": "rates", "owner": "payments", "checks": [external(&v.url, json!({}))]})).await;
    let published = app.publish("rates", json!({"data": "{\"eur\": 1}", "metadata": {"source": "ecb"}})).await;
    assert_eq!(published["checks"]["results"][0]["message"], "accepted: looks fine");

    *v.mode.lock().unwrap() = Mode::Reject("eur is missing its 2024 rows".into());
    let r = publish(&app, None, "rates", json!({"data": "{\"eur\": 2}"})).await;
    let err = assert_error(r, 422, "validation_failed").await;
    assert!(err["error"]["message"].as_str().unwrap().contains("rejected: eur is missing its 2024 rows"), "{err}");
    assert_eq!(app.versions_in_db("rates").await, 1);

    let seen = v.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert!(s.signed, "signed as webhook events are: {:?}", s.body);
        assert_eq!(s.download.0, 200, "the candidate is downloadable during the check");
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&s.download.1));
        assert_eq!(s.body["candidate"]["sha256"], sha, "the download is the candidate");
    }
    assert_eq!(seen[0].body["candidate"]["metadata"]["source"], "ecb");
    assert_eq!(seen[0].body["previous"], Value::Null);
    assert_eq!(seen[1].body["previous"]["version"], 1);
    assert_eq!(seen[1].download.1, b"{\"eur\": 2}");
    assert_eq!(seen[1].body["topic"], "rates");

    // The URL is good for its publish only; a guessed one gives nothing.
    for s in &seen {
        let r = reqwest::get(s.body["download_url"].as_str().unwrap()).await.unwrap();
        assert_error(r, 404, "candidate_not_found").await;
    }
    for token in ["0".repeat(64), "zz".into(), "../topics/rates/versions/1/data".into()] {
        let r = app.req(Method::GET, &format!("/api/v1/validation/candidates/{token}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{token}");
    }
}

/// A validator that does not answer in time counts as its `on_timeout` says; one that is
/// down fails its check.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn validator_timeouts_follow_the_policy_and_a_down_one_rejects(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let slow = Validator::start(Mode::Slow(Duration::from_secs(5))).await;
    let checks = |on_timeout: Option<&str>| {
        let mut c = external(&slow.url, json!({"timeout_ms": 300}));
        if let Some(p) = on_timeout {
            c["on_timeout"] = json!(p);
        }
        json!({"checks": [c]})
    };
    app.create_topic("t-reject").await;
    let (s, b) = app.admin(Method::PATCH, "/api/v1/topics/t-reject").json(&checks(None)).send_json().await;
    assert_eq!(s, 200, "{b}");
    let started = std::time::Instant::now();
    let err = assert_error(publish(&app, None, "t-reject", json!({"data": "x"})).await, 422, "validation_failed").await;
    assert!(started.elapsed() < Duration::from_secs(4), "the timeout bounds the publish");
    assert!(err["error"]["message"].as_str().unwrap().contains("no answer within 300 ms; rejected"), "{err}");

    app.create_topic("t-accept").await;
    let (s, b) = app.admin(Method::PATCH, "/api/v1/topics/t-accept").json(&checks(Some("accept"))).send_json().await;
    assert_eq!(s, 200, "{b}");
    let published = app.publish("t-accept", json!({"data": "x"})).await;
    let msg = published["checks"]["results"][0]["message"].as_str().unwrap();
    assert!(msg.contains("accepted (on_timeout)"), "{published}");

    let down = format!("{}/validate", closed_port_url().await);
    app.create_topic_with(json!({"name": "t-down", "owner": "payments", "checks": [external(&down, json!({}))]})).await;
    let err = assert_error(publish(&app, None, "t-down", json!({"data": "x"})).await, 422, "validation_failed").await;
    assert!(err["error"]["message"].as_str().unwrap().contains("validator unreachable"), "{err}");
    assert_eq!(app.versions_in_db("t-down").await, 0);
}

/// A server whose clock moves only when the test says, and whose consumer audit is
/// written when the test says (`flush_audit`): what a gate reads is exactly what the test
/// reported.
async fn spawn_gated(pool: sqlx::PgPool) -> (TestApp, imprint_testkit::ManualClock) {
    let clock = imprint_testkit::ManualClock::new(chrono::Utc::now());
    let app = imprint_testkit::spawn_app_clocked(
        pool.clone(),
        pool,
        |c| c.audit_flush_every = Duration::from_secs(3600),
        Arc::new(clock.clone()),
    )
    .await;
    (app, clock)
}

/// A canary polls, holding `held`, reporting how applying `version` went.
async fn canary(app: &TestApp, topic: &str, instance: &str, held: u64, report: Option<(u64, bool)>) {
    let mut body =
        json!({"consumer": {"instance": instance, "labels": {"cluster": "canary"}}, "topics": {topic: held}});
    if let Some((version, ok)) = report {
        let mut r = json!({"version": version, "ok": ok});
        if !ok {
            r["error"] = json!("check command: 3 rows fail the contract");
        }
        body["applied"] = json!({topic: r});
    }
    app.poll(body).await;
}

async fn rollout_of(app: &TestApp, topic: &str, id: &Value) -> Value {
    app.req(Method::GET, &format!("/api/v1/topics/{topic}/rollouts/{id}")).json_body().await
}

async fn start_rollout(app: &TestApp, topic: &str, version: u64, stages: Value) -> Value {
    let (status, ro) = app
        .admin(Method::POST, &format!("/api/v1/topics/{topic}/rollouts"))
        .json(&json!({"version": version, "stages": stages}))
        .send_json()
        .await;
    assert_eq!(status, 201, "{ro}");
    ro["id"].clone()
}

/// Bake time: a stage whose gate passes must keep passing `bake_s` before the next one;
/// `min_reporting` holds it until enough nodes reported.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn bake_time_and_min_reporting_hold_a_stage(pool: sqlx::PgPool) {
    let (app, clock) = spawn_gated(pool).await;
    app.create_topic_with(json!({"name": "baked", "owner": "payments", "anonymous_reports": true})).await;
    app.publish("baked", json!({"data": "v1"})).await;
    app.publish("baked", json!({"data": "v2", "scopes": []})).await;
    let stages = json!([
        {"selector": {"cluster": "canary"}, "wait_s": 0,
         "gate": {"max_failure_ratio": 0.3, "min_reporting": 2, "bake_s": 60}},
        {"selector": {}, "wait_s": 0}]);
    let id = start_rollout(&app, "baked", 2, stages).await;
    let tick = || async {
        app.imprint().flush_audit().await.unwrap();
        app.imprint().tick_rollouts().await.unwrap();
        rollout_of(&app, "baked", &id).await
    };
    canary(&app, "baked", "c1", 2, Some((2, true))).await;
    let r = tick().await;
    assert_eq!((r["state"].clone(), r["current_stage"].clone()), (json!("running"), json!(0)), "1 of 2 reporting: {r}");
    assert_eq!(r["healthy_since"], Value::Null);
    canary(&app, "baked", "c2", 2, Some((2, true))).await;
    let r = tick().await;
    assert_eq!(r["current_stage"], 0, "healthy, baking: {r}");
    assert!(r["healthy_since"].is_string(), "{r}");
    clock.advance(chrono::Duration::seconds(59));
    canary(&app, "baked", "c1", 2, None).await;
    canary(&app, "baked", "c2", 2, None).await;
    let r = tick().await;
    assert_eq!(r["current_stage"], 0, "baked 59 s of 60: {r}");
    clock.advance(chrono::Duration::seconds(1));
    let r = tick().await;
    assert_eq!(r["state"], "completed", "baked: {r}");
}

/// The case: a consumer check failing during the canary stage rolls the topic
/// back on its own — exactly the canary selector is pinned to the previous version, the
/// rest never saw the new one — audited with the evidence, announced as a webhook event.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_failing_canary_rolls_back_automatically(pool: sqlx::PgPool) {
    let (app, clock) = spawn_gated(pool).await;
    app.create_topic_with(
        json!({"name": "auto", "owner": "payments", "anonymous_reports": true, "on_failure": "rollback"}),
    )
    .await;
    let (status, hook) = app
        .post_json(
            "/api/v1/webhooks",
            &json!({"url": format!("{}/hook", closed_port_url().await), "allow_private": true,
                    "event_types": ["rollout.rolled_back"]}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    app.publish("auto", json!({"data": "v1"})).await;
    // (The clock stands still: the rollout must start after v1, as it would.)
    clock.advance(chrono::Duration::seconds(1));
    app.publish("auto", json!({"data": "v2", "scopes": []})).await;
    let stages = json!([
        {"selector": {"cluster": "canary"}, "wait_s": 600, "gate": {"max_failure_ratio": 0.3}},
        {"selector": {"region": "eu"}, "wait_s": 600},
        {"selector": {}, "wait_s": 0}]);
    let id = start_rollout(&app, "auto", 2, stages).await;
    let shared = &app;
    let resolve = |labels: &'static str| async move {
        let r: Value =
            shared.req(Method::GET, &format!("/api/v1/topics/auto/resolve?labels={labels}")).json_body().await;
        r["version"].clone()
    };
    assert_eq!(resolve("cluster=canary").await, 2);
    canary(&app, "auto", "c1", 2, Some((2, false))).await;
    canary(&app, "auto", "c2", 2, Some((2, false))).await;
    canary(&app, "auto", "c3", 2, Some((2, true))).await;
    app.imprint().flush_audit().await.unwrap();
    app.imprint().tick_rollouts().await.unwrap();
    let r = rollout_of(&app, "auto", &id).await;
    assert_eq!((r["state"].clone(), r["rolled_back"].clone()), (json!("cancelled"), json!(true)), "{r}");
    let why = r["end_reason"].as_str().unwrap();
    assert!(why.contains("rolled back automatically") && why.contains("2 of 3 nodes"), "{why}");
    assert_eq!(r["current_stage"], 0, "stage 2 was never reached");

    assert_eq!(resolve("cluster=canary").await, 1, "the canary is back on v1");
    assert_eq!(resolve("region=us").await, 1);
    assert_eq!(resolve("region=eu").await, 1);
    let pins: Value = app.req(Method::GET, "/api/v1/topics/auto/pins").json_body().await;
    let pins = pins["pins"].as_array().unwrap();
    assert_eq!(pins.len(), 1, "exactly the canary selector: {pins:?}");
    assert_eq!((pins[0]["selector"].clone(), pins[0]["version"].clone()), (json!({"cluster": "canary"}), json!(1)));

    let (action, details): (String, Value) =
        sqlx::query_as("SELECT action, details FROM audit_log WHERE topic = 'auto' AND action LIKE 'rollout.auto%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(action, "rollout.auto_rollback");
    assert_eq!(details["reading"], json!({"matching": 3, "applied": 3, "failed": 2, "reporting": 3}), "{details}");
    assert_eq!(details["pins"], json!([{"selector": {"cluster": "canary"}, "version": 1}]));
    let (_, deliveries) = app.get_json(&format!("/api/v1/webhooks/{}/deliveries", hook["id"])).await;
    let types: Vec<&str> =
        deliveries["deliveries"].as_array().unwrap().iter().map(|d| d["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["rollout.rolled_back"], "{deliveries}");
}

/// A plan may say `on_failure: pause` over the topic's `rollback` (and the reverse).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_plan_decides_over_the_topic(pool: sqlx::PgPool) {
    let (app, _clock) = spawn_gated(pool).await;
    app.create_topic_with(json!({"name": "p", "owner": "payments", "anonymous_reports": true, "on_failure": "rollback",
        "plans": {"careful": {"on_failure": "pause", "stages": [
            {"selector": {"cluster": "canary"}, "wait_s": 600, "gate": {"max_failure_ratio": 0.3}}, {"selector": {}, "wait_s": 0}]}}}))
    .await;
    app.publish("p", json!({"data": "v1"})).await;
    let published = app.publish("p", json!({"data": "v2", "rollout": "careful"})).await;
    let id = published["rollout"]["id"].clone();
    canary(&app, "p", "c1", 2, Some((2, false))).await;
    app.imprint().flush_audit().await.unwrap();
    app.imprint().tick_rollouts().await.unwrap();
    let r = rollout_of(&app, "p", &id).await;
    assert_eq!((r["state"].clone(), r["rolled_back"].clone()), (json!("paused"), json!(false)), "{r}");
    assert!(r["pause_reason"].as_str().unwrap().contains("1 of 1 nodes"), "{r}");
}
