//! Consumer polling: batch answers, the update rule, long polls, `latest`, two servers.
use base64::Engine;
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn consumer(labels: Value, topics: Value) -> Value {
    json!({"consumer": {"instance": "i-1", "labels": labels}, "topics": topics})
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn batch_poll_follows_the_update_rule(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("a").await;
    app.create_topic("b").await;
    app.publish("a", json!({"data": "{\"v\":1}", "metadata": {"k": "v"}})).await;
    app.publish("a", json!({"data": "{\"v\":2}"})).await;
    app.publish("b", json!({"data": "only canary", "scopes": [{"cluster": "canary"}]})).await;

    let r = app.poll(consumer(json!({"region": "eu"}), json!({"a": null, "b": null, "nope": null, "Bad!": 3}))).await;
    let u = &r["updates"]["a"];
    assert_eq!(u["version"], 2);
    assert_eq!(u["pinned"], false);
    assert_eq!(u["content_type"], "application/json");
    assert_eq!(u["size"], 7);
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(u["data_base64"].as_str().unwrap()).unwrap(),
        b"{\"v\":2}"
    );
    assert_eq!(u["data_url"], "/api/v1/topics/a/versions/2/data");
    assert!(r["updates"].get("b").is_none());
    assert_eq!(r["missing"], json!({"b": "no_version_in_scope", "nope": "topic_not_found", "Bad!": "topic_not_found"}));
    assert_eq!(r["poll_after_ms"], 30000);

    // Up to date: nothing. Ahead (held 3 > 2, unpinned): never moved backwards.
    let r = app.poll(consumer(json!({"region": "eu"}), json!({"a": 2}))).await;
    assert_eq!(r["updates"], json!({}));
    let r = app.poll(consumer(json!({"region": "eu"}), json!({"a": 1}))).await;
    assert_eq!(r["updates"]["a"]["version"], 2);
    assert_eq!(r["updates"]["a"]["metadata"], json!({}));

    // A pin moves consumers back, and only those it matches.
    app.admin(Method::PUT, "/api/v1/topics/a/pins")
        .json(&json!({"selector": {"region": "eu"}, "version": 1}))
        .send()
        .await
        .unwrap();
    let r = app.poll(consumer(json!({"region": "eu"}), json!({"a": 2}))).await;
    assert_eq!(r["updates"]["a"]["version"], 1);
    assert_eq!(r["updates"]["a"]["pinned"], true);
    assert_eq!(r["updates"]["a"]["metadata"], json!({"k": "v"}));
    let r = app.poll(consumer(json!({"region": "us"}), json!({"a": 2}))).await;
    assert_eq!(r["updates"], json!({}));
    // After the unpin they move forward to the latest.
    app.admin(Method::DELETE, "/api/v1/topics/a/pins?selector=region=eu").send().await.unwrap();
    let r = app.poll(consumer(json!({"region": "eu"}), json!({"a": 1}))).await;
    assert_eq!(r["updates"]["a"]["version"], 2);

    // `applied` reports are accepted.
    let mut body = consumer(json!({"region": "eu"}), json!({"a": 2}));
    body["applied"] = json!({"a": {"version": 2, "ok": false, "error": "parse failed"}});
    app.poll(body).await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn poll_input_errors(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let post = |body: Value| app.req(Method::POST, "/api/v1/poll").json(&body).send();
    let mut body = consumer(json!({}), json!({"a": null}));
    body["wait_ms"] = json!(60001);
    assert_error(post(body.clone()).await.unwrap(), 400, "invalid_request").await;
    body["wait_ms"] = json!(-1);
    assert_error(post(body).await.unwrap(), 400, "invalid_request").await;
    assert_error(post(json!({"topics": {}})).await.unwrap(), 400, "invalid_request").await;
    assert_error(post(consumer(json!({"region": 5}), json!({}))).await.unwrap(), 400, "invalid_request").await;
    assert_error(
        post(json!({"consumer": {"instance": "", "labels": {}}, "topics": {}})).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(post(consumer(json!({}), json!({"a": "one"}))).await.unwrap(), 400, "invalid_request").await;
    assert_error(post(consumer(json!({}), json!({"a": 0}))).await.unwrap(), 400, "invalid_request").await;
    let r = app
        .req(Method::POST, "/api/v1/poll")
        .header("content-type", "application/json")
        .body("[")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

/// Starts a long poll now and returns its pending answer.
fn long_poll(app: &TestApp, labels: Value, topics: Value, wait_ms: u64) -> tokio::task::JoinHandle<Value> {
    let mut body = consumer(labels, topics);
    body["wait_ms"] = json!(wait_ms);
    let req = app.req(Method::POST, "/api/v1/poll").json(&body);
    tokio::spawn(async move { req.json_body().await })
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn long_poll_wakes_on_publish_scope_and_pin(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("lp").await;
    app.create_topic("quiet").await;
    app.publish("lp", json!({"data": "1"})).await;

    // Nothing new: the poll waits its time and answers with no updates.
    let idle = long_poll(&app, json!({}), json!({"lp": 1}), 300).await.unwrap();
    assert_eq!(idle["updates"], json!({}));
    assert_eq!(idle["poll_after_ms"], 0);

    // A publish wakes a waiting poll (well before its 50 s are up: the test would time out).
    let waiting = long_poll(&app, json!({}), json!({"lp": 1, "quiet": null}), 50_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the poll should be waiting");
    app.publish("lp", json!({"data": "2"})).await;
    let r = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("woken by the publish").unwrap();
    assert_eq!(r["updates"]["lp"]["version"], 2);

    // A change that is no update for this consumer does not end its wait.
    let waiting = long_poll(&app, json!({"region": "eu"}), json!({"lp": 2}), 50_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.publish("lp", json!({"data": "3", "scopes": [{"region": "us"}]})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "v3 is not released to region=eu");
    // Adding the scope that releases v3 to region=eu does.
    app.admin(Method::POST, "/api/v1/topics/lp/versions/3/scopes")
        .json(&json!({"selector": {"region": "eu"}}))
        .send()
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("woken by the scope").unwrap();
    assert_eq!(r["updates"]["lp"]["version"], 3);

    // So does a pin.
    let waiting = long_poll(&app, json!({"region": "eu"}), json!({"lp": 3}), 50_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.admin(Method::PUT, "/api/v1/topics/lp/pins")
        .json(&json!({"selector": {"region": "eu"}, "version": 1}))
        .send()
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("woken by the pin").unwrap();
    assert_eq!(
        r["updates"]["lp"],
        json!({"version": 1, "pinned": true, "metadata": {}, "content_type": "application/json",
        "size": 1, "sha256": r["updates"]["lp"]["sha256"], "data_base64": "MQ==", "data_url": "/api/v1/topics/lp/versions/1/data"})
    );
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn latest_serves_the_resolved_payload(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("l").await;
    let r = app.req(Method::GET, "/api/v1/topics/l/latest").send().await.unwrap();
    assert_error(r, 404, "no_version_in_scope").await;
    app.publish("l", json!({"data": "one"})).await;
    app.publish("l", json!({"data": "two", "scopes": [{"env": "staging"}], "content_type": "text/plain"})).await;
    let r = app.req(Method::GET, "/api/v1/topics/l/latest?labels=env=prod").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-imprint-version"], "1");
    assert_eq!(r.headers()["x-imprint-pinned"], "false");
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.text().await.unwrap(), "one");
    let r = app.req(Method::GET, "/api/v1/topics/l/latest?labels=env=staging").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "two");
    let r = app
        .req(Method::GET, "/api/v1/topics/l/latest?labels=env=prod")
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = app
        .req(Method::GET, "/api/v1/topics/l/latest?labels=env=staging")
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_error(app.req(Method::GET, "/api/v1/topics/zz/latest").send().await.unwrap(), 404, "topic_not_found").await;
    assert_error(
        app.req(Method::GET, "/api/v1/topics/l/latest?labels=env").send().await.unwrap(),
        400,
        "invalid_selector",
    )
    .await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn two_servers_on_one_database_converge(pool: sqlx::PgPool) {
    let a = spawn_app(pool.clone()).await;
    let b = spawn_app(pool).await;
    a.create_topic("shared").await;
    // B learns about the topic and its versions through NOTIFY, not by asking Postgres.
    let waiting = long_poll(&b, json!({}), json!({"shared": null}), 30_000);
    a.publish("shared", json!({"data": "from a"})).await;
    let r = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("b sees a's publish").unwrap();
    assert_eq!(r["updates"]["shared"]["version"], 1, "{r}");
    // And the other way round, with a pin.
    b.publish("shared", json!({"data": "from b"})).await;
    let waiting = long_poll(&a, json!({}), json!({"shared": 2}), 30_000);
    b.admin(Method::PUT, "/api/v1/topics/shared/pins")
        .json(&json!({"selector": {}, "version": 1}))
        .send()
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("a sees b's pin").unwrap();
    assert_eq!(r["updates"]["shared"]["version"], 1);
    assert_eq!(r["updates"]["shared"]["pinned"], true);
}
