//! Topics, tokens and rights.
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn create_get_list_and_patch_topics(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let t = app
        .create_topic_with(json!({"name": "payments.methods", "description": "supported methods", "owner": "payments",
                                  "retention": {"max_versions": 10}, "content_type": "application/json"}))
        .await;
    assert_eq!(t["name"], "payments.methods");
    assert_eq!(t["latest_version"], 0);
    assert_eq!(t["inline_limit_bytes"], 1048576);
    assert_eq!(t["retention"]["max_versions"], 10);
    assert_eq!(t["active_pins"], 0);
    assert_eq!(t["created_by"], "token:bootstrap");
    for i in 0..3 {
        app.create_topic(&format!("other.{i}")).await;
    }

    let got: Value = app.req(Method::GET, "/api/v1/topics/payments.methods").json_body().await;
    assert_eq!(got["description"], "supported methods");

    let list: Value = app.req(Method::GET, "/api/v1/topics?q=methods").json_body().await;
    assert_eq!(list["topics"].as_array().unwrap().len(), 1);

    // Pagination: newest first, two pages of 2.
    let p1: Value = app.req(Method::GET, "/api/v1/topics?limit=2").json_body().await;
    let names: Vec<&str> = p1["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other.2", "other.1"]);
    let next = p1["next"].as_str().expect("a next cursor");
    let p2: Value = app.req(Method::GET, &format!("/api/v1/topics?limit=2&cursor={next}")).json_body().await;
    let names: Vec<&str> = p2["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other.0", "payments.methods"]);
    assert!(p2["next"].is_null());

    let (status, t) = app
        .admin(Method::PATCH, "/api/v1/topics/payments.methods")
        .json(&json!({"description": "changed", "inline_limit_bytes": 2048, "content_type": null}))
        .send_json()
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["description"], "changed");
    assert_eq!(t["inline_limit_bytes"], 2048);
    assert!(t["content_type"].is_null());
    assert_eq!(t["retention"]["max_versions"], 10, "untouched fields stay");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn topic_errors(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("dup").await;
    let post = |body: Value| app.admin(Method::POST, "/api/v1/topics").json(&body).send();
    assert_error(post(json!({"name": "dup"})).await.unwrap(), 409, "topic_exists").await;
    assert_error(post(json!({"name": "Bad Name"})).await.unwrap(), 400, "invalid_topic_name").await;
    assert_error(post(json!({"name": ".x"})).await.unwrap(), 400, "invalid_topic_name").await;
    assert_error(post(json!({"name": "ok", "retention": {"max_versions": 0}})).await.unwrap(), 400, "invalid_request")
        .await;
    assert_error(post(json!({"name": "ok", "inline_limit_bytes": 0})).await.unwrap(), 400, "invalid_request").await;
    assert_error(post(json!({"name": "ok", "json_schema": {"type": 12}})).await.unwrap(), 400, "invalid_request").await;
    assert_error(post(json!({"name": "ok", "surprise": 1})).await.unwrap(), 400, "invalid_request").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics")
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app.req(Method::GET, "/api/v1/topics/missing").send().await.unwrap();
    assert_error(r, 404, "topic_not_found").await;
    let r = app.req(Method::GET, "/api/v1/topics?limit=501").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app.req(Method::GET, "/api/v1/topics?cursor=garbage").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app.req(Method::GET, "/api/v1/nothing-here").send().await.unwrap();
    assert_error(r, 404, "not_found").await;
    // None of the rejected requests created anything.
    let list: Value = app.req(Method::GET, "/api/v1/topics").json_body().await;
    assert_eq!(list["topics"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn tokens_and_rights(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "search.cfg", "owner": "search"})).await;
    let payments = app.token("payments-ci", Some("payments")).await;

    // No token / unknown token / malformed header → 401.
    let r = app.req(Method::POST, "/api/v1/topics").json(&json!({"name": "x"})).send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r =
        app.req(Method::POST, "/api/v1/topics").bearer_auth("nope").json(&json!({"name": "x"})).send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = app
        .req(Method::POST, "/api/v1/topics")
        .header("authorization", "Basic abc")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r =
        app.req(Method::POST, "/api/v1/topics/search.cfg/versions").json(&json!({"data": "x"})).send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;

    // A team token writes its own team's topics only.
    let (status, t) = app
        .req(Method::POST, "/api/v1/topics")
        .bearer_auth(&payments)
        .json(&json!({"name": "payments.fx"}))
        .send_json()
        .await;
    assert_eq!(status, 201);
    assert_eq!(t["owner"], "payments", "owner defaults to the token's team");
    let r = app
        .req(Method::POST, "/api/v1/topics/payments.fx/versions")
        .bearer_auth(&payments)
        .json(&json!({"data": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .req(Method::POST, "/api/v1/topics/search.cfg/versions")
        .bearer_auth(&payments)
        .json(&json!({"data": "1"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = app
        .req(Method::PUT, "/api/v1/topics/search.cfg/pins")
        .bearer_auth(&payments)
        .json(&json!({"selector": {}, "version": 1}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = app
        .req(Method::POST, "/api/v1/topics")
        .bearer_auth(&payments)
        .json(&json!({"name": "x", "owner": "search"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    assert_eq!(app.versions_in_db("search.cfg").await, 0);

    // Revoked tokens stop working.
    app.imprint().revoke_token(&imprint_service::Caller::System, "payments-ci").await.unwrap();
    let r = app
        .req(Method::POST, "/api/v1/topics/payments.fx/versions")
        .bearer_auth(&payments)
        .json(&json!({"data": "1"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn operations_endpoints(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.req(Method::GET, "/healthz").send().await.unwrap().status(), 200);
    let r = app.req(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.create_topic("m").await;
    app.publish("m", json!({"data": "x"})).await;
    app.poll(json!({"consumer": {"instance": "i-1", "labels": {}}, "topics": {"m": null}})).await;
    let metrics = app.req(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("imprint_publishes_total"), "{metrics}");
    assert!(metrics.contains("imprint_polls_total"), "{metrics}");
    assert!(metrics.contains("imprint_http_requests_total"), "{metrics}");
    assert!(metrics.contains("imprint_published_bytes_total"), "{metrics}");
    assert!(metrics.contains("imprint_poll_seconds_bucket"), "{metrics}");
    let doc: Value = app.req(Method::GET, "/api/v1/openapi.json").json_body().await;
    assert!(doc["paths"]["/api/v1/poll"]["post"].is_object(), "{doc}");
    assert!(doc["paths"]["/api/v1/topics/{topic}/versions"]["post"].is_object());
}

/// A topic's JSON Schema is bounded in size (it is compiled and kept per topic); within
/// the bound it is set, compiled once and every publish is still validated.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn json_schemas_are_bounded_and_still_enforced(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    // ~80 KiB of property definitions: refused on create and on patch.
    let props: serde_json::Map<String, Value> =
        (0..2_000).map(|i| (format!("field_{i:05}_padding"), json!({"type": "string"}))).collect();
    let big = json!({"type": "object", "properties": props});
    assert!(big.to_string().len() > 64 * 1024);
    let r = app.admin(Method::POST, "/api/v1/topics").json(&json!({"name": "big", "json_schema": big})).send().await;
    let e = assert_error(r.unwrap(), 400, "invalid_request").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("65536"), "{e}");
    app.create_topic("typed").await;
    let patch =
        |schema: Value| app.admin(Method::PATCH, "/api/v1/topics/typed").json(&json!({ "json_schema": schema })).send();
    assert_error(patch(big.clone()).await.unwrap(), 400, "invalid_request").await;
    // A schema within the bound: publishes are validated against it.
    let r =
        patch(json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}})).await.unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        app.publish("typed", json!({"data": "{\"n\": 1}"})).await;
        let r = app
            .admin(Method::POST, "/api/v1/topics/typed/versions")
            .json(&json!({"data": "{\"n\": \"one\"}"}))
            .send()
            .await
            .unwrap();
        assert_error(r, 422, "schema_violation").await;
    }
    // A new schema replaces the compiled one at once.
    assert_eq!(patch(json!({"type": "array"})).await.unwrap().status(), 200);
    let r = app.admin(Method::POST, "/api/v1/topics/typed/versions").json(&json!({"data": "{\"n\": 1}"})).send();
    assert_error(r.await.unwrap(), 422, "schema_violation").await;
    app.publish("typed", json!({"data": "[1, 2]"})).await;
    assert_eq!(app.versions_in_db("typed").await, 4);
}

/// Writes `n` versions of `topic` behind the server's back (each to everyone, a day
/// apart, ending now), plus a pin per version on its own selector.
async fn long_history(app: &TestApp, topic: &str, n: i64) {
    sqlx::query(
        "WITH t AS (SELECT id FROM topics WHERE name = $1),
              v AS (INSERT INTO versions (topic_id, version, created_at, created_by, content_type, size, sha256,
                                          storage, inline_data, purged_at)
                    SELECT t.id, i, now() - (($2 - i) * interval '1 minute'), 'test', 'text/plain', 1, repeat('a', 64),
                           'inline', CASE WHEN i % 4 = 0 THEN NULL ELSE 'x'::bytea END,
                           CASE WHEN i % 4 = 0 THEN now() ELSE NULL END
                    FROM t, generate_series(1, $2) i RETURNING topic_id, version, created_at)
         INSERT INTO scopes (topic_id, version, selector, selector_key, added_at, added_by)
         SELECT topic_id, version, '{}'::jsonb, '*', created_at, 'test' FROM v",
    )
    .bind(topic)
    .bind(n)
    .execute(&app.pool)
    .await
    .expect("history");
    sqlx::query("UPDATE topics SET latest_version = $2 WHERE name = $1")
        .bind(topic)
        .bind(n)
        .execute(&app.pool)
        .await
        .expect("latest");
}

/// `/retention` and `resolve?at=` read a bounded part of a long history and say so.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn long_histories_are_answered_within_a_bound(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "long", "retention": {"max_versions": 1}})).await;
    long_history(&app, "long", 5_000).await;
    // 3 750 live versions (every 4th is purged): more than one answer reads.
    let r: Value = app.admin(Method::GET, "/api/v1/topics/long/retention").json_body().await;
    assert_eq!(r["truncated"], true, "{}", r["truncated"]);
    let listed = r["versions"].as_array().expect("versions").len();
    assert!(listed > 0 && listed < 2_000, "at most the bounded read is considered: {listed}");
    // Time travel: the newest version created by then answers, from a bounded read.
    let at = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let r: Value =
        app.req(Method::GET, &format!("/api/v1/topics/long/resolve?at={}", urlencode(&at))).json_body().await;
    assert_eq!((r["version"].clone(), r["truncated"].clone()), (json!(4_990), json!(true)), "{r}");
    // A short history is answered whole.
    app.create_topic_with(json!({"name": "short", "retention": {"max_versions": 1}})).await;
    long_history(&app, "short", 10).await;
    let r: Value = app.admin(Method::GET, "/api/v1/topics/short/retention").json_body().await;
    assert_eq!(r["truncated"], false);
    let r: Value = app
        .req(Method::GET, &format!("/api/v1/topics/short/resolve?at={}", urlencode(&chrono::Utc::now().to_rfc3339())))
        .json_body()
        .await;
    assert_eq!(r["version"], 10, "{r}");
    assert!(r.get("truncated").is_none(), "only said when true: {r}");
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// Payloads are validated before the topic's publish lock is taken: while something
/// else holds the lock, a publish that breaks the schema is refused at once (it would
/// wait for the lock if validation ran under it), and a valid one waits its turn.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn schema_validation_does_not_wait_for_the_topic_lock(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "typed", "json_schema": {"type": "object", "required": ["n"]}})).await;
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM topics WHERE name = 'typed' FOR UPDATE").execute(&mut *lock).await.unwrap();
    let r = app.admin(Method::POST, "/api/v1/topics/typed/versions").json(&json!({"data": "[1]"})).send().await;
    assert_error(r.unwrap(), 422, "schema_violation").await;
    let valid = app.admin(Method::POST, "/api/v1/topics/typed/versions").json(&json!({"data": "{\"n\": 1}"})).send();
    let valid = tokio::spawn(valid);
    lock.rollback().await.unwrap();
    assert_eq!(valid.await.unwrap().unwrap().status(), 201);
}
