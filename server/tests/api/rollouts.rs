//! Incremental rollouts through the API: stages over time, every action, gates,
//! supersession, two schedulers and a restart.
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn resolve(app: &TestApp, topic: &str, labels: &str) -> Value {
    app.req(Method::GET, &format!("/api/v1/topics/{topic}/resolve?labels={labels}")).json_body().await
}

async fn rollout(app: &TestApp, topic: &str, id: &Value) -> Value {
    app.req(Method::GET, &format!("/api/v1/topics/{topic}/rollouts/{id}")).json_body().await
}

async fn action(app: &TestApp, topic: &str, id: &Value, action: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.admin(Method::POST, &format!("/api/v1/topics/{topic}/rollouts/{id}/{action}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

/// Waits until the rollout satisfies `pred` (the scheduler runs every 500 ms).
async fn rollout_until(app: &TestApp, topic: &str, id: &Value, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("rollout {id} of {topic} to reach the expected state"), || async {
        Some(rollout(app, topic, id).await).filter(|r| pred(r))
    })
    .await
}

/// A server whose clock stands still until the test moves it (stage waits pass when the
/// test says, not on the wall clock).
async fn spawn_clocked(pool: sqlx::PgPool) -> (TestApp, ManualClock) {
    let clock = ManualClock::new(chrono::Utc::now());
    (spawn_app_clocked(pool.clone(), pool, |_| {}, std::sync::Arc::new(clock.clone())).await, clock)
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

async fn setup(app: &TestApp, topic: &str) {
    app.create_topic(topic).await;
    app.publish(topic, json!({"data": "v1"})).await;
    app.publish(topic, json!({"data": "v2", "scopes": []})).await;
}

fn three_stages(wait_s: u64) -> Value {
    json!([{"selector": {"cluster": "canary"}, "wait_s": wait_s},
           {"selector": {"region": "eu"}, "wait_s": wait_s},
           {"selector": {}, "wait_s": 0}])
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn stages_are_added_when_due_until_completed(pool: sqlx::PgPool) {
    let (app, clock) = spawn_clocked(pool).await;
    setup(&app, "ro").await;
    let (status, ro) = app
        .admin(Method::POST, "/api/v1/topics/ro/rollouts")
        .json(&json!({"version": 2, "stages": three_stages(1)}))
        .send_json()
        .await;
    assert_eq!(status, 201);
    let id = ro["id"].clone();
    assert_eq!(ro["state"], "running");
    assert_eq!(ro["current_stage"], 0);
    assert_eq!(ro["created_by"], "token:bootstrap");
    assert_eq!(ro["stages"][0]["state"], "reached");
    assert_eq!(ro["stages"][1]["state"], "pending");
    assert!(ro["stages"][1]["due_at"].is_string());
    // Stage 1 at once: the canary sees v2, nobody else does yet.
    assert_eq!(resolve(&app, "ro", "cluster=canary,region=us").await["version"], 2);
    assert_eq!(resolve(&app, "ro", "region=eu").await["version"], 1);
    let t: Value = app.req(Method::GET, "/api/v1/topics/ro").json_body().await;
    assert_eq!(t["rollout_state"], "running");

    // Each stage when its wait has passed on the service's clock.
    clock.advance(secs(1));
    rollout_until(&app, "ro", &id, |r| r["current_stage"] == 1).await;
    // (The serving state follows the new scope shortly after it is stored.)
    eventually("region=eu to see v2", || async { resolve(&app, "ro", "region=eu").await["version"] == 2 }).await;
    assert_eq!(resolve(&app, "ro", "region=us").await["version"], 1);
    clock.advance(secs(1));
    let done = rollout_until(&app, "ro", &id, |r| r["state"] == "completed").await;
    assert!(done["stages"].as_array().unwrap().iter().all(|s| s["state"] == "reached"), "{done}");
    eventually("region=us to see v2", || async { resolve(&app, "ro", "region=us").await["version"] == 2 }).await;
    // Each stage's scope was added once, by the rollout.
    let v: Value = app.req(Method::GET, "/api/v1/topics/ro/versions/2").json_body().await;
    let scopes = v["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 3, "{v}");
    let by: Vec<&str> = scopes.iter().map(|s| s["added_by"].as_str().unwrap()).collect();
    let scheduler = format!("rollout #{id}");
    assert_eq!(
        by,
        ["token:bootstrap", scheduler.as_str(), scheduler.as_str()],
        "stage 1 by the caller, then the scheduler"
    );
    // The waits were honoured: stage 2 at least 1 s after stage 1, stage 3 at least 1 s after stage 2.
    let at =
        |i: usize| chrono::DateTime::parse_from_rfc3339(done["stages"][i]["reached_at"].as_str().unwrap()).unwrap();
    assert!(at(1) - at(0) >= chrono::Duration::seconds(1));
    assert!(at(2) - at(1) >= chrono::Duration::seconds(1));
    let list: Value = app.req(Method::GET, "/api/v1/topics/ro/rollouts").json_body().await;
    assert_eq!(list["rollouts"][0]["id"], id);
    // A finished rollout refuses every action.
    for a in ["pause", "resume", "advance", "complete", "cancel"] {
        assert_error(action(&app, "ro", &id, a, None).await, 409, "invalid_state").await;
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn operator_actions(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    setup(&app, "ops").await;
    let ro = app
        .admin(Method::POST, "/api/v1/topics/ops/rollouts")
        .json(&json!({"version": 2, "stages": three_stages(3600)}))
        .send()
        .await
        .unwrap();
    let ro: Value = ro.json().await.unwrap();
    let id = ro["id"].clone();

    let r = action(&app, "ops", &id, "pause", None).await;
    assert_eq!(r.status(), 200);
    let paused: Value = r.json().await.unwrap();
    assert_eq!(paused["state"], "paused");
    assert!(paused["remaining_wait_s"].as_u64().unwrap() > 3500);
    assert_error(action(&app, "ops", &id, "pause", None).await, 409, "invalid_state").await;
    let r: Value = action(&app, "ops", &id, "resume", None).await.json().await.unwrap();
    assert_eq!(r["state"], "running");
    assert_error(action(&app, "ops", &id, "resume", None).await, 409, "invalid_state").await;

    // Advance: the next stage now, regardless of its wait.
    let r: Value = action(&app, "ops", &id, "advance", None).await.json().await.unwrap();
    assert_eq!(r["current_stage"], 1);
    assert_eq!(resolve(&app, "ops", "region=eu").await["version"], 2);
    assert_eq!(resolve(&app, "ops", "region=us").await["version"], 1);

    // Cancel with rollback: reached stages are pinned to what they saw before (v1).
    let r = action(&app, "ops", &id, "cancel", Some(json!({"rollback": true}))).await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["state"], "cancelled");
    assert_eq!(c["rolled_back"], true);
    assert_eq!(c["stages"][2]["state"], "skipped");
    assert_eq!(
        resolve(&app, "ops", "region=eu").await,
        json!({"topic": "ops", "version": 1, "pinned": true, "at": null})
    );
    assert_eq!(resolve(&app, "ops", "cluster=canary").await["version"], 1);
    let pins: Value = app.req(Method::GET, "/api/v1/topics/ops/pins").json_body().await;
    assert_eq!(pins["pins"].as_array().unwrap().len(), 2, "{pins}");

    // A second rollout, completed at once.
    app.publish("ops", json!({"data": "v3", "scopes": []})).await;
    let ro: Value = app
        .admin(Method::POST, "/api/v1/topics/ops/rollouts")
        .json(&json!({"version": 3, "stages": three_stages(3600)}))
        .json_body()
        .await;
    let r: Value = action(&app, "ops", &ro["id"], "complete", None).await.json().await.unwrap();
    assert_eq!(r["state"], "completed");
    assert_eq!(resolve(&app, "ops", "region=us").await["version"], 3);

    // Errors.
    let start = |body: Value| app.admin(Method::POST, "/api/v1/topics/ops/rollouts").json(&body).send();
    assert_error(start(json!({"version": 2, "stages": three_stages(1)})).await.unwrap(), 409, "invalid_state").await;
    assert_error(start(json!({"version": 9, "stages": three_stages(1)})).await.unwrap(), 404, "version_not_found")
        .await;
    assert_error(start(json!({"version": 3, "stages": []})).await.unwrap(), 400, "invalid_request").await;
    assert_error(
        start(json!({"version": 3, "stages": [{"selector": {"a": ""}, "wait_s": 1}]})).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        start(json!({"version": 3, "stages": [{"selector": {}, "wait_s": 1, "gate": {"min_applied_ratio": 2}}]}))
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(start(json!({"version": 3, "plan": "nope"})).await.unwrap(), 400, "invalid_request").await;
    assert_error(start(json!({"stages": three_stages(1)})).await.unwrap(), 400, "invalid_request").await;
    let r = app
        .req(Method::POST, "/api/v1/topics/ops/rollouts")
        .json(&json!({"version": 3, "stages": three_stages(1)}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    assert_error(action(&app, "ops", &json!(999), "pause", None).await, 404, "rollout_not_found").await;
    assert_error(action(&app, "ops", &id, "explode", None).await, 400, "invalid_request").await;
    assert_error(action(&app, "ops", &json!("x"), "pause", None).await, 400, "invalid_request").await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn newer_publish_supersedes_and_plans_come_from_the_topic(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "planned", "owner": "payments",
        "plans": {"careful": {"stages": [{"selector": {"cluster": "canary"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}},
        "default_plan": "careful"}))
        .await;
    // No rollout named: the topic's default plan runs, and only the canary gets v1.
    let p = app.publish("planned", json!({"data": "v1"})).await;
    assert_eq!(p["rollout"]["state"], "running", "{p}");
    assert_eq!(p["scopes"].as_array().unwrap().len(), 1);
    assert!(resolve(&app, "planned", "region=us").await["version"].is_null());
    assert_eq!(resolve(&app, "planned", "cluster=canary").await["version"], 1);
    let first = p["rollout"]["id"].clone();
    // A newer publish supersedes it (and here starts its own).
    let p2 = app.publish("planned", json!({"data": "v2"})).await;
    assert_eq!(rollout(&app, "planned", &first).await["state"], "superseded");
    assert_eq!(p2["rollout"]["version"], 2);
    // rollout: null opts out: released to everyone at once, and the running rollout is superseded.
    let p3 = app.publish("planned", json!({"data": "v3", "rollout": null})).await;
    assert!(p3.get("rollout").is_none());
    assert_eq!(rollout(&app, "planned", &p2["rollout"]["id"]).await["state"], "superseded");
    assert_eq!(resolve(&app, "planned", "region=us").await["version"], 3);
    // An inline plan on the publish.
    let p4 = app.publish("planned", json!({"data": "v4", "rollout": {"stages": [{"selector": {"region": "eu"}, "wait_s": 60}, {"selector": {}, "wait_s": 0}]}})).await;
    assert_eq!(p4["rollout"]["stages"][0]["selector"], json!({"region": "eu"}));
    assert_eq!(resolve(&app, "planned", "region=eu").await["version"], 4);
    assert_eq!(resolve(&app, "planned", "region=us").await["version"], 3);
    // Bad plans and names are rejected and store nothing.
    let r = app
        .admin(Method::POST, "/api/v1/topics/planned/versions")
        .json(&json!({"data": "x", "rollout": "missing"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/planned/versions")
        .json(&json!({"data": "x", "rollout": {"stages": []}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    assert_eq!(app.versions_in_db("planned").await, 4);
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/planned")
        .json(&json!({"default_plan": "ghost"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

async fn poll_as(app: &TestApp, instance: &str, held: u64, applied: Option<Value>) {
    let mut body =
        json!({"consumer": {"instance": instance, "labels": {"cluster": "canary"}}, "topics": {"gated": held}});
    if let Some(a) = applied {
        body["applied"] = json!({"gated": a});
    }
    app.poll(body).await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn gates_hold_a_stage_and_pause_on_failures(pool: sqlx::PgPool) {
    // The test writes the consumer audit itself (`flush_audit`), so it knows what the
    // scheduler's gate reads.
    let app = spawn_app_configured(pool.clone(), pool, |c| c.audit_flush_every = Duration::from_secs(3600)).await;
    setup(&app, "gated").await;
    // These canaries poll without a token: the topic must opt in to trusting them
    // (`trust::forged_reports_do_not_move_gates` covers the default).
    let r = app.admin(Method::PATCH, "/api/v1/topics/gated").json(&json!({"anonymous_reports": true})).send().await;
    assert_eq!(r.unwrap().status(), 200);
    let stages = json!([{"selector": {"cluster": "canary"}, "wait_s": 0, "gate": {"min_applied_ratio": 0.75, "max_failure_ratio": 0.3}},
                        {"selector": {}, "wait_s": 0}]);
    let ro: Value = app
        .admin(Method::POST, "/api/v1/topics/gated/rollouts")
        .json(&json!({"version": 2, "stages": stages}))
        .json_body()
        .await;
    let id = ro["id"].clone();
    // Four canaries, one on v2: 25% applied < 75%. The stage is due but held.
    poll_as(&app, "c1", 2, Some(json!({"version": 2, "ok": true}))).await;
    for c in ["c2", "c3", "c4"] {
        poll_as(&app, c, 1, None).await;
    }
    app.imprint().flush_audit().await.unwrap();
    app.imprint().tick_rollouts().await.unwrap();
    let held = rollout(&app, "gated", &id).await;
    assert_eq!((held["state"].clone(), held["current_stage"].clone()), (json!("running"), json!(0)), "{held}");
    // Three of four on v2: the gate opens and the rollout completes.
    poll_as(&app, "c2", 2, Some(json!({"version": 2, "ok": true}))).await;
    poll_as(&app, "c3", 2, None).await;
    app.imprint().flush_audit().await.unwrap();
    rollout_until(&app, "gated", &id, |r| r["state"] == "completed").await;

    // Failures pause the rollout by itself, with the reason recorded.
    app.publish("gated", json!({"data": "v3", "scopes": []})).await;
    let ro: Value = app
        .admin(Method::POST, "/api/v1/topics/gated/rollouts")
        .json(&json!({"version": 3, "stages": stages}))
        .json_body()
        .await;
    poll_as(&app, "c1", 2, Some(json!({"version": 3, "ok": false, "error": "bad config"}))).await;
    poll_as(&app, "c2", 2, Some(json!({"version": 3, "ok": false, "error": "bad config"}))).await;
    app.imprint().flush_audit().await.unwrap();
    let paused = rollout_until(&app, "gated", &ro["id"], |r| r["state"] == "paused").await;
    let reason = paused["pause_reason"].as_str().unwrap();
    assert!(reason.contains("2 of 4") && reason.contains("v3"), "{reason}");
    assert_eq!(resolve(&app, "gated", "region=us").await["version"], 2, "stage 2 was never reached");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn two_schedulers_add_each_stage_once(pool: sqlx::PgPool) {
    let clock = ManualClock::new(chrono::Utc::now());
    let a = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    let _b = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    setup(&a, "duo").await;
    let stages: Vec<Value> =
        (0..6).map(|i| json!({"selector": {"wave": format!("w{i}")}, "wait_s": if i < 5 { 1 } else { 0 }})).collect();
    // Both schedulers (500 ms passes) race for every stage as it falls due.
    let ro: Value = a
        .admin(Method::POST, "/api/v1/topics/duo/rollouts")
        .json(&json!({"version": 2, "stages": stages}))
        .json_body()
        .await;
    for stage in 1..6 {
        clock.advance(secs(1));
        rollout_until(&a, "duo", &ro["id"], |r| r["current_stage"] == stage).await;
    }
    let done = rollout_until(&a, "duo", &ro["id"], |r| r["state"] == "completed").await;
    let reached: Vec<&str> =
        done["stages"].as_array().unwrap().iter().map(|s| s["reached_at"].as_str().unwrap()).collect();
    assert_eq!(reached.len(), 6);
    let at = |i: usize| chrono::DateTime::parse_from_rfc3339(reached[i]).unwrap();
    for i in 1..6 {
        assert!(at(i) - at(i - 1) >= chrono::Duration::seconds(1), "stage {i} came early: {done}");
    }
    let scope_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scopes WHERE version = 2").fetch_one(&pool).await.unwrap();
    assert_eq!(scope_rows, 6);
    // The stored record matches: six reach times, no more.
    let stored: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT reached_at FROM rollouts").fetch_one(&pool).await.unwrap();
    assert_eq!(stored.len(), 6);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_restart_resumes_where_it_was(pool: sqlx::PgPool) {
    let clock = ManualClock::new(chrono::Utc::now());
    let first = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    setup(&first, "restart").await;
    let ro: Value = first
        .admin(Method::POST, "/api/v1/topics/restart/rollouts")
        .json(&json!({"version": 2, "stages": three_stages(2)}))
        .json_body()
        .await;
    let id = ro["id"].clone();
    // The only scheduler goes away (its background work has ended) before stage 2 is
    // due; then stage 2 falls due.
    first.imprint().finish_shutdown().await;
    clock.advance(secs(3));
    let stalled = rollout(&first, "restart", &id).await;
    assert_eq!(stalled["current_stage"], 0, "nobody was there to add stage 2: {stalled}");
    // A new server picks the rollout up from Postgres and carries on.
    let second = spawn_app_clocked(pool.clone(), pool, |_| {}, std::sync::Arc::new(clock.clone())).await;
    rollout_until(&second, "restart", &id, |r| r["current_stage"] == 1).await;
    clock.advance(secs(2));
    let done = rollout_until(&second, "restart", &id, |r| r["state"] == "completed").await;
    let at =
        |i: usize| chrono::DateTime::parse_from_rfc3339(done["stages"][i]["reached_at"].as_str().unwrap()).unwrap();
    assert!(at(1) - at(0) >= chrono::Duration::seconds(3), "stage 2 was added after the restart: {done}");
    assert!(at(2) - at(1) >= chrono::Duration::seconds(2), "and stage 3 still waited its full wait: {done}");
}
