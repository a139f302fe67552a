//! Prometheus analyses inside rollouts (docs/validation.md), against a real Prometheus
//! (the test kit's: Debian's `/usr/bin/prometheus` scraping an exporter the test sets
//! every second). The server's own scheduler ticks the rollouts; the tests wait with
//! `eventually`, never for a fixed time.
use imprint_service::prometheus::PrometheusClient;
use imprint_testkit::{
    assert_error, closed_port_url, eventually, spawn_app_configured, Exporter, Prometheus, SendJson, TestApp,
};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// The error ratio each topic's canary sees, as the exporter serves it.
fn metrics(good: f64, bad: f64) -> String {
    format!(
        "# TYPE imprint_test_errors_ratio gauge\n\
         imprint_test_errors_ratio{{topic=\"good\",selector=\"cluster=canary\"}} {good}\n\
         imprint_test_errors_ratio{{topic=\"bad\",selector=\"cluster=canary\"}} {bad}\n\
         imprint_test_errors_ratio{{topic=\"bad\",selector=\"region=eu\"}} 0\n"
    )
}

/// The analysis of a canary stage: the error ratio of the stage's own selector.
fn errors_analysis(count: u32) -> Value {
    json!({
        "name": "errors",
        "query": "max(imprint_test_errors_ratio{topic=\"{{topic}}\",selector=\"{{selector}}\"})",
        "interval_s": 1, "count": count,
        "success": "result < 0.01", "failure": "result >= 0.05"
    })
}

async fn app_with_prometheus(pool: sqlx::PgPool, url: &str) -> TestApp {
    let client = PrometheusClient::new(url, Duration::from_secs(2)).unwrap();
    spawn_app_configured(pool.clone(), pool, move |c| c.prometheus = Some(client)).await
}

/// v1 everywhere, v2 published nowhere yet (a rollout will place it).
async fn two_versions(app: &TestApp, topic: &str) {
    app.create_topic_with(json!({"name": topic, "owner": "payments", "on_failure": "rollback"})).await;
    app.publish(topic, json!({"data": "v1"})).await;
    app.publish(topic, json!({"data": "v2", "scopes": []})).await;
}

async fn start(app: &TestApp, topic: &str, stages: Value) -> Value {
    let (status, ro) = app
        .admin(Method::POST, &format!("/api/v1/topics/{topic}/rollouts"))
        .json(&json!({"version": 2, "stages": stages}))
        .send_json()
        .await;
    assert_eq!(status, 201, "{ro}");
    ro["id"].clone()
}

async fn rollout_where(app: &TestApp, topic: &str, id: &Value, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/api/v1/topics/{topic}/rollouts/{id}");
    eventually(what, || {
        let req = app.req(Method::GET, &path);
        let ready = &ready;
        async move {
            let r: Value = req.send().await.unwrap().json().await.unwrap();
            ready(&r).then_some(r)
        }
    })
    .await
}

async fn resolve(app: &TestApp, topic: &str, labels: &str) -> Value {
    let r: Value = app.req(Method::GET, &format!("/api/v1/topics/{topic}/resolve?labels={labels}")).json_body().await;
    r["version"].clone()
}

/// The resolved version once it is `want`: the serving state follows what the scheduler
/// stored (a completion, a rollback's pins) shortly after, not in the same instant.
async fn resolves_to(app: &TestApp, topic: &str, labels: &str, want: u64) {
    eventually(&format!("{topic} to resolve to v{want} for {labels}"), || async {
        (resolve(app, topic, labels).await == want).then_some(())
    })
    .await;
}

/// The case: a rollout whose canary analysis passes completes; another whose
/// canary's error ratio was raised fails its analysis and rolls back on its own — exactly
/// the canary selector goes back to v1, the others never saw v2 — with the analysis'
/// name and values in the audit.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_passing_analysis_completes_and_a_failing_one_rolls_the_canary_back(pool: sqlx::PgPool) {
    let exporter = Exporter::start(&metrics(0.001, 0.001)).await;
    let prom = Prometheus::start(exporter.addr).await;
    let app = app_with_prometheus(pool, &prom.url).await;

    two_versions(&app, "good").await;
    let stages = json!([
        {"selector": {"cluster": "canary"}, "wait_s": 0, "analyses": [errors_analysis(2)]},
        {"selector": {}, "wait_s": 0}]);
    let id = start(&app, "good", stages).await;
    let r = rollout_where(&app, "good", &id, "the good rollout to end", |r| r["state"] != "running").await;
    assert_eq!(r["state"], "completed", "{r}\n{}", prom.log());
    assert_eq!(r["stages"][0]["analyses"][0]["name"], "errors", "the plan shows its analyses: {r}");
    let runs = r["analysis"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{r}");
    assert_eq!((runs[0]["stage"].clone(), runs[0]["name"].clone()), (json!(0), json!("errors")));
    assert_eq!(runs[0]["verdict"], "successful");
    let values: Vec<Value> = runs[0]["measurements"].as_array().unwrap().iter().map(|m| m["value"].clone()).collect();
    assert_eq!(values, [json!(0.001), json!(0.001)], "two measurements, the count: {r}");
    resolves_to(&app, "good", "region=us", 2).await;

    // The bad topic's canary starts failing; once Prometheus has scraped that, roll out.
    exporter.set(&metrics(0.001, 0.2));
    let client = PrometheusClient::new(&prom.url, Duration::from_secs(2)).unwrap();
    eventually("prometheus to see the raised error ratio", || {
        let client = client.clone();
        async move {
            client.query("max(imprint_test_errors_ratio{topic=\"bad\",selector=\"cluster=canary\"})").await == Ok(0.2)
        }
    })
    .await;
    two_versions(&app, "bad").await;
    let stages = json!([
        {"selector": {"cluster": "canary"}, "wait_s": 0, "analyses": [errors_analysis(3)]},
        {"selector": {"region": "eu"}, "wait_s": 0},
        {"selector": {}, "wait_s": 0}]);
    let id = start(&app, "bad", stages).await;
    resolves_to(&app, "bad", "cluster=canary", 2).await;
    let r = rollout_where(&app, "bad", &id, "the bad rollout to end", |r| r["state"] != "running").await;
    assert_eq!((r["state"].clone(), r["rolled_back"].clone()), (json!("cancelled"), json!(true)), "{r}");
    assert_eq!(r["current_stage"], 0, "stage 2 was never reached: {r}");
    let why = r["end_reason"].as_str().unwrap();
    assert!(why.contains("rolled back automatically") && why.contains("analysis errors failed"), "{why}");
    assert_eq!(r["analysis"][0]["verdict"], "failed", "{r}");
    assert_eq!(r["analysis"][0]["measurements"][0]["value"], 0.2, "{r}");

    resolves_to(&app, "bad", "cluster=canary", 1).await;
    assert_eq!(resolve(&app, "bad", "region=eu").await, 1);
    assert_eq!(resolve(&app, "bad", "region=us").await, 1);
    let pins: Value = app.req(Method::GET, "/api/v1/topics/bad/pins").json_body().await;
    let pins = pins["pins"].as_array().unwrap();
    assert_eq!(pins.len(), 1, "exactly the canary selector: {pins:?}");
    assert_eq!((pins[0]["selector"].clone(), pins[0]["version"].clone()), (json!({"cluster": "canary"}), json!(1)));

    let (action, details): (String, Value) =
        sqlx::query_as("SELECT action, details FROM audit_log WHERE topic = 'bad' AND action LIKE 'rollout.auto%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(action, "rollout.auto_rollback");
    let evidence = &details["analysis"][0];
    assert_eq!(
        (evidence["name"].clone(), evidence["verdict"].clone()),
        (json!("errors"), json!("failed")),
        "{details}"
    );
    assert_eq!(evidence["values"], json!([0.2]), "{details}");
    assert_eq!(details["pins"], json!([{"selector": {"cluster": "canary"}, "version": 1}]));
}

/// Prometheus unreachable: the measurement is inconclusive, and the rollout pauses with
/// the reason (the default `inconclusive: pause`) — not rolled back, although the topic
/// says `on_failure: rollback`: nobody measured a failure.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn prometheus_unreachable_pauses_with_the_reason(pool: sqlx::PgPool) {
    let app = app_with_prometheus(pool, &closed_port_url().await).await;
    two_versions(&app, "blind").await;
    let stages = json!([
        {"selector": {"cluster": "canary"}, "wait_s": 0, "analyses": [errors_analysis(3)]},
        {"selector": {}, "wait_s": 0}]);
    let id = start(&app, "blind", stages).await;
    let r = rollout_where(&app, "blind", &id, "the rollout to stop running", |r| r["state"] != "running").await;
    assert_eq!((r["state"].clone(), r["rolled_back"].clone()), (json!("paused"), json!(false)), "{r}");
    let why = r["pause_reason"].as_str().unwrap();
    assert!(why.contains("analysis errors is inconclusive") && why.contains("Prometheus unreachable"), "{why}");
    let m = &r["analysis"][0]["measurements"];
    assert_eq!(m.as_array().unwrap().len(), 1, "one measurement, then the pause: {r}");
    assert_eq!((m[0]["verdict"].clone(), m[0]["value"].clone()), (json!("inconclusive"), Value::Null), "{r}");
    assert_eq!(r["analysis"][0]["verdict"], "inconclusive");
    assert_eq!(resolve(&app, "blind", "cluster=canary").await, 2, "paused, not rolled back");
    let pins: Value = app.req(Method::GET, "/api/v1/topics/blind/pins").json_body().await;
    assert_eq!(pins["pins"], json!([]));
    let action: String =
        sqlx::query_scalar("SELECT action FROM audit_log WHERE topic = 'blind' AND action LIKE 'rollout.auto%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(action, "rollout.auto_pause");
}

/// A plan naming an analysis on a server without a Prometheus, or a malformed analysis:
/// 400 with the reason, and no rollout starts.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn analyses_need_a_prometheus_and_a_valid_spec(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |_| {}).await;
    two_versions(&app, "nop").await;
    let post = |stages: Value| {
        app.admin(Method::POST, "/api/v1/topics/nop/rollouts").json(&json!({"version": 2, "stages": stages})).send()
    };
    let stages = json!([{"selector": {"cluster": "canary"}, "wait_s": 0, "analyses": [errors_analysis(2)]},
                        {"selector": {}, "wait_s": 0}]);
    let body = assert_error(post(stages).await.unwrap(), 400, "invalid_request").await;
    assert!(body.to_string().contains("IMPRINT_PROMETHEUS_URL"), "{body}");
    let mut bad = errors_analysis(2);
    bad["success"] = json!("result <");
    let stages = json!([{"selector": {}, "wait_s": 0, "analyses": [bad]}]);
    assert_error(post(stages).await.unwrap(), 400, "invalid_request").await;
    // More analyses than a stage may run (each one a query every second): refused.
    let many: Vec<Value> = (0..9)
        .map(|i| {
            let mut a = errors_analysis(2);
            a["name"] = json!(format!("a{i}"));
            a
        })
        .collect();
    let stages = json!([{"selector": {}, "wait_s": 0, "analyses": many}]);
    let body = assert_error(post(stages).await.unwrap(), 400, "invalid_request").await;
    assert!(body.to_string().contains("at most 8"), "{body}");
    // A named plan with an analysis is refused too, as the topic's settings.
    let plan = json!({"stages": [{"selector": {}, "wait_s": 0, "analyses": [errors_analysis(2)]}]});
    let r = app.admin(Method::PATCH, "/api/v1/topics/nop").json(&json!({"plans": {"canary": plan}})).send();
    let body = assert_error(r.await.unwrap(), 400, "invalid_request").await;
    assert!(body.to_string().contains("IMPRINT_PROMETHEUS_URL"), "{body}");
    let rollouts: Value = app.req(Method::GET, "/api/v1/topics/nop/rollouts").json_body().await;
    assert_eq!(rollouts["rollouts"], json!([]), "{rollouts}");
}
