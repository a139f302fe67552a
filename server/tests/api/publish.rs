//! Publishing, payload download, scopes, resolution and pins.
use base64::Engine;
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn publish_and_read_back(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    let p = app.publish("cfg", json!({"data": "{\"a\":1}", "metadata": {"build": "42"}, "message": "first"})).await;
    assert_eq!(p["version"], 1);
    assert_eq!(p["storage"], "inline");
    assert_eq!(p["size"], 7);
    assert_eq!(p["sha256"], hex::encode(Sha256::digest(b"{\"a\":1}")));
    assert_eq!(p["content_type"], "application/json");
    assert_eq!(p["scopes"][0]["selector"], json!({}));

    let bin = [0u8, 159, 146, 150, 255];
    let p = app
        .publish("cfg", json!({"data_base64": base64::engine::general_purpose::STANDARD.encode(bin), "scopes": [{"region": "eu"}, {"app": "x", "region": "eu"}]}))
        .await;
    assert_eq!(p["version"], 2);
    assert_eq!(p["content_type"], "application/octet-stream");

    // Raw body with query-string scopes and metadata.
    let (status, p) = app
        .admin(Method::POST, "/api/v1/topics/cfg/versions?scope=region=us&scope=cluster=c1&meta.owner=ops&message=raw")
        .header("content-type", "text/csv")
        .body("a,b\n1,2\n")
        .send_json()
        .await;
    assert_eq!(status, 201);
    assert_eq!(p["version"], 3);
    assert_eq!(p["content_type"], "text/csv");

    let v: Value = app.req(Method::GET, "/api/v1/topics/cfg/versions/1").json_body().await;
    assert_eq!(v["metadata"]["build"], "42");
    assert_eq!(v["message"], "first");
    assert_eq!(v["created_by"], "token:bootstrap");
    assert_eq!(v["purged"], false);
    let v3: Value = app.req(Method::GET, "/api/v1/topics/cfg/versions/3").json_body().await;
    let sels: Vec<Value> = v3["scopes"].as_array().unwrap().iter().map(|s| s["selector"].clone()).collect();
    assert!(sels.contains(&json!({"region": "us"})) && sels.contains(&json!({"cluster": "c1"})), "{v3}");
    assert_eq!(v3["metadata"]["owner"], "ops");

    let list: Value = app.req(Method::GET, "/api/v1/topics/cfg/versions?limit=2").json_body().await;
    let ns: Vec<u64> = list["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(ns, [3, 2]);
    let next = list["next"].as_str().unwrap();
    let list: Value = app.req(Method::GET, &format!("/api/v1/topics/cfg/versions?cursor={next}")).json_body().await;
    assert_eq!(list["versions"][0]["version"], 1);
    assert!(list["next"].is_null());

    let t: Value = app.req(Method::GET, "/api/v1/topics/cfg").json_body().await;
    assert_eq!(t["latest_version"], 3);
    assert!(t["last_published_at"].is_string());

    // Payload download: bytes, headers, conditional and range requests.
    let r = app.req(Method::GET, "/api/v1/topics/cfg/versions/2/data").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", hex::encode(Sha256::digest(bin))));
    assert_eq!(r.headers()["x-imprint-version"], "2");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().as_ref(), bin);
    let r =
        app.req(Method::GET, "/api/v1/topics/cfg/versions/2/data").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    let r =
        app.req(Method::GET, "/api/v1/topics/cfg/versions/2/data").header("range", "bytes=1-2").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1-2/5");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bin[1..=2]);
    let r =
        app.req(Method::GET, "/api/v1/topics/cfg/versions/2/data").header("range", "bytes=9-").send().await.unwrap();
    assert_eq!(r.status(), 416);
    assert_error(
        app.req(Method::GET, "/api/v1/topics/cfg/versions/9/data").send().await.unwrap(),
        404,
        "version_not_found",
    )
    .await;
    assert_error(app.req(Method::GET, "/api/v1/topics/cfg/versions/x").send().await.unwrap(), 400, "invalid_request")
        .await;
    assert_error(app.req(Method::GET, "/api/v1/topics/cfg/versions/0").send().await.unwrap(), 400, "invalid_request")
        .await;
    assert_error(app.req(Method::GET, "/api/v1/topics/nope/versions").send().await.unwrap(), 404, "topic_not_found")
        .await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn purged_versions_answer_410(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("old").await;
    app.publish("old", json!({"data": "1"})).await;
    app.publish("old", json!({"data": "2"})).await;
    // What the janitor does: drop the payload, keep a tombstone.
    sqlx::query("UPDATE versions SET purged_at = now(), inline_data = NULL WHERE version = 1")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_error(
        app.req(Method::GET, "/api/v1/topics/old/versions/1/data").send().await.unwrap(),
        410,
        "version_purged",
    )
    .await;
    let v: Value = app.req(Method::GET, "/api/v1/topics/old/versions/1").json_body().await;
    assert_eq!(v["purged"], true);
    let r = app
        .admin(Method::POST, "/api/v1/topics/old/versions/1/scopes")
        .json(&json!({"selector": {"a": "b"}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 410, "version_purged").await;
    let r = app
        .admin(Method::PUT, "/api/v1/topics/old/pins")
        .json(&json!({"selector": {}, "version": 1}))
        .send()
        .await
        .unwrap();
    assert_error(r, 410, "version_purged").await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn rejected_publishes_store_nothing(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "small", "owner": "payments", "inline_limit_bytes": 16,
        "max_size_bytes": 16}))
        .await;
    app.create_topic_with(json!({"name": "typed", "owner": "payments",
        "json_schema": {"type": "object", "required": ["rate"], "properties": {"rate": {"type": "number"}}}}))
        .await;
    let publish = |topic: &str, body: Value| {
        app.admin(Method::POST, &format!("/api/v1/topics/{topic}/versions")).json(&body).send()
    };
    assert_error(publish("small", json!({"data": "x".repeat(17)})).await.unwrap(), 413, "payload_too_large").await;
    let big = base64::engine::general_purpose::STANDARD.encode([7u8; 17]);
    assert_error(publish("small", json!({"data_base64": big})).await.unwrap(), 413, "payload_too_large").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/small/versions")
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 17])
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "payload_too_large").await;
    // Beyond any topic's limit the body itself is refused.
    let r = app
        .admin(Method::POST, "/api/v1/topics/small/versions")
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 13 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "payload_too_large").await;
    assert_error(publish("small", json!({"data_base64": "%%%not base64"})).await.unwrap(), 400, "invalid_request")
        .await;
    assert_error(publish("small", json!({"data": "a", "data_base64": "YQ=="})).await.unwrap(), 400, "invalid_request")
        .await;
    assert_error(publish("small", json!({"message": "no payload"})).await.unwrap(), 400, "invalid_request").await;
    assert_error(publish("small", json!({"data": 12})).await.unwrap(), 400, "invalid_request").await;
    assert_error(publish("small", json!({"data": "a", "metadata": {"k": 1}})).await.unwrap(), 400, "invalid_request")
        .await;
    assert_error(
        publish("small", json!({"data": "a", "scopes": [{"region": ""}]})).await.unwrap(),
        400,
        "invalid_selector",
    )
    .await;
    assert_error(
        publish("small", json!({"data": "a", "scopes": {"region": "eu"}})).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        publish("small", json!({"data": "a", "scopes": ["region=eu"]})).await.unwrap(),
        400,
        "invalid_selector",
    )
    .await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/small/versions?scope=region")
        .header("content-type", "text/plain")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_selector").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/small/versions")
        .header("content-type", "application/json")
        .body("{\"data\": ")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    assert_error(publish("missing", json!({"data": "a"})).await.unwrap(), 404, "topic_not_found").await;
    assert_error(publish("Bad!", json!({"data": "a"})).await.unwrap(), 400, "invalid_topic_name").await;
    assert_error(publish("typed", json!({"data": "{\"rate\": \"high\"}"})).await.unwrap(), 422, "schema_violation")
        .await;
    assert_error(publish("typed", json!({"data": "not json"})).await.unwrap(), 422, "schema_violation").await;
    assert_eq!(app.versions_in_db("small").await, 0);
    assert_eq!(app.versions_in_db("typed").await, 0);
    let t: Value = app.req(Method::GET, "/api/v1/topics/small").json_body().await;
    assert_eq!(t["latest_version"], 0, "no version number was used up");
    // And the next good publish is version 1.
    assert_eq!(app.publish("small", json!({"data": "ok"})).await["version"], 1);
    assert_eq!(app.publish("typed", json!({"data": "{\"rate\": 1.5}"})).await["version"], 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn concurrent_publishes_get_gap_free_numbers(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("busy").await;
    let n = 60;
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url) = (app.client.clone(), app.url("/api/v1/topics/busy/versions"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"data": format!("payload {i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["version"].as_u64().unwrap()
        }));
    }
    let mut got: Vec<u64> = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (1..=n).collect::<Vec<u64>>(), "every publish got its own number, 1..N without gaps");
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM versions ORDER BY version").fetch_all(&app.pool).await.unwrap();
    assert_eq!(stored, (1..=n as i64).collect::<Vec<_>>());
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn scopes_resolution_and_time_travel(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("ab").await;
    app.publish("ab", json!({"data": "v1"})).await;
    app.publish("ab", json!({"data": "v2", "scopes": [{"cluster": "canary"}]})).await;
    let resolve = |labels: &str| {
        let url = format!("/api/v1/topics/ab/resolve?labels={labels}");
        let req = app.req(Method::GET, &url);
        async move { req.json_body().await }
    };
    assert_eq!(resolve("region=eu").await["version"], 1);
    assert_eq!(resolve("region=eu,cluster=canary").await["version"], 2);
    let before = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    // Widen v2 to region=eu: 201, then the same again is a no-op 200.
    let add = || {
        app.admin(Method::POST, "/api/v1/topics/ab/versions/2/scopes")
            .json(&json!({"selector": {"region": "eu"}}))
            .send()
    };
    let r = add().await.unwrap();
    assert_eq!(r.status(), 201);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["selector"], json!({"region": "eu"}));
    assert_eq!(add().await.unwrap().status(), 200);
    assert_eq!(resolve("region=eu").await, json!({"topic": "ab", "version": 2, "pinned": false, "at": null}));
    assert_eq!(resolve("region=us").await["version"], 1);

    // Time travel: before the scope was added, region=eu saw v1.
    let at = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let r: Value = app
        .req(Method::GET, &format!("/api/v1/topics/ab/resolve?labels=region=eu&at={}", at.replace('+', "%2B")))
        .json_body()
        .await;
    assert_eq!(r["version"], 1, "{r}");
    let r: Value =
        app.req(Method::GET, "/api/v1/topics/ab/resolve?labels=region=eu&at=2000-01-01T00:00:00Z").json_body().await;
    assert!(r["version"].is_null());

    // Errors.
    let r = app.req(Method::GET, "/api/v1/topics/ab/resolve?labels=region").send().await.unwrap();
    assert_error(r, 400, "invalid_selector").await;
    let r = app.req(Method::GET, "/api/v1/topics/ab/resolve?at=yesterday").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app.req(Method::GET, "/api/v1/topics/none/resolve").send().await.unwrap();
    assert_error(r, 404, "topic_not_found").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/ab/versions/7/scopes")
        .json(&json!({"selector": {}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "version_not_found").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/ab/versions/1/scopes")
        .json(&json!({"selector": {"bad key": "x"}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_selector").await;
    let r = app.admin(Method::POST, "/api/v1/topics/ab/versions/1/scopes").json(&json!({})).send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app
        .req(Method::POST, "/api/v1/topics/ab/versions/1/scopes")
        .json(&json!({"selector": {}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM scopes").fetch_one(&app.pool).await.unwrap();
    assert_eq!(count, 3, "v1 *, v2 canary, v2 region=eu");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn pins_override_and_unpin_moves_forward(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("p").await;
    for i in 1..=3 {
        app.publish("p", json!({"data": format!("v{i}")})).await;
    }
    let resolve = |labels: &'static str| {
        let req = app.req(Method::GET, &format!("/api/v1/topics/p/resolve?labels={labels}"));
        async move { req.json_body().await }
    };
    let pin = |body: Value| app.admin(Method::PUT, "/api/v1/topics/p/pins").json(&body).send();
    let r = pin(json!({"selector": {"region": "eu"}, "version": 1, "reason": "v3 breaks eu"})).await.unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["version"], 1);
    assert_eq!(p["reason"], "v3 breaks eu");
    assert_eq!(p["created_by"], "token:bootstrap");
    assert_eq!(resolve("region=eu").await["pinned"], true);
    assert_eq!(resolve("region=eu").await["version"], 1);
    assert_eq!(resolve("region=us").await["version"], 3);

    // More specific pin wins; same selector replaces.
    pin(json!({"selector": {"region": "eu", "app": "checkout"}, "version": 2})).await.unwrap();
    assert_eq!(resolve("region=eu,app=checkout").await["version"], 2);
    pin(json!({"selector": {"region": "eu"}, "version": 2, "reason": "better"})).await.unwrap();
    let pins: Value = app.req(Method::GET, "/api/v1/topics/p/pins").json_body().await;
    assert_eq!(pins["pins"].as_array().unwrap().len(), 2, "{pins}");
    let all: Value = app.req(Method::GET, "/api/v1/topics/p/pins?all=true").json_body().await;
    assert_eq!(all["pins"].as_array().unwrap().len(), 3);
    let t: Value = app.req(Method::GET, "/api/v1/topics/p").json_body().await;
    assert_eq!(t["active_pins"], 2);

    // A pin holds against later publishes.
    app.publish("p", json!({"data": "v4"})).await;
    assert_eq!(resolve("region=eu").await["version"], 2);
    assert_eq!(resolve("region=us").await["version"], 4);

    let r = app.admin(Method::DELETE, "/api/v1/topics/p/pins?selector=region=eu").send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(resolve("region=eu").await, json!({"topic": "p", "version": 4, "pinned": false, "at": null}));
    let r = app.admin(Method::DELETE, "/api/v1/topics/p/pins?selector=region=eu").send().await.unwrap();
    assert_error(r, 404, "pin_not_found").await;

    // Errors change nothing.
    assert_error(pin(json!({"selector": {}, "version": 99})).await.unwrap(), 404, "version_not_found").await;
    assert_error(pin(json!({"selector": {"a": "*"}, "version": 1})).await.unwrap(), 400, "invalid_selector").await;
    assert_error(pin(json!({"selector": {}, "version": "one"})).await.unwrap(), 400, "invalid_request").await;
    assert_error(pin(json!({"version": 1})).await.unwrap(), 400, "invalid_request").await;
    let r = app.admin(Method::DELETE, "/api/v1/topics/p/pins").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app
        .admin(Method::PUT, "/api/v1/topics/nope/pins")
        .json(&json!({"selector": {}, "version": 1}))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "topic_not_found").await;
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pins WHERE removed_at IS NULL").fetch_one(&app.pool).await.unwrap();
    assert_eq!(active, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn an_expired_pin_stops_applying_by_itself(pool: sqlx::PgPool) {
    // The expiry comes when the test moves the service's clock past it.
    let clock = ManualClock::new(chrono::Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool, |_| {}, std::sync::Arc::new(clock.clone())).await;
    app.create_topic("exp").await;
    app.publish("exp", json!({"data": "1"})).await;
    app.publish("exp", json!({"data": "2"})).await;
    let pin = |body: Value| app.admin(Method::PUT, "/api/v1/topics/exp/pins").json(&body).send();
    let resolve = || async {
        let r: Value = app.req(Method::GET, "/api/v1/topics/exp/resolve?labels=region=eu").json_body().await;
        (r["version"].as_u64(), r["pinned"].as_bool())
    };
    // Refused: an expiry in the past, or not a time.
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    assert_error(pin(json!({"selector": {}, "version": 1, "expires_at": past})).await.unwrap(), 400, "invalid_request")
        .await;
    assert_error(
        pin(json!({"selector": {}, "version": 1, "expires_at": "tomorrow"})).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let expires = app.imprint().now() + chrono::Duration::seconds(2);
    let r =
        pin(json!({"selector": {}, "version": 1, "reason": "hold", "expires_at": expires.to_rfc3339()})).await.unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert!(p["expires_at"].is_string(), "{p}");
    assert_eq!(resolve().await, (Some(1), Some(true)));
    clock.advance(chrono::Duration::seconds(3));
    eventually("the pin stops applying after its expiry", || async { resolve().await == (Some(2), Some(false)) }).await;
    let pins: Value = app.req(Method::GET, "/api/v1/topics/exp/pins?all=true").json_body().await;
    let gone = &pins["pins"][0];
    assert_eq!(gone["removed_by"], "expiry", "{pins}");
    assert_eq!(gone["removed_at"], gone["expires_at"], "{pins}");
    let active: Value = app.req(Method::GET, "/api/v1/topics/exp/pins").json_body().await;
    assert_eq!(active["pins"], json!([]));
    let audit: Vec<(String, Value)> =
        sqlx::query_as("SELECT actor, details FROM audit_log WHERE action = 'pin.expire' AND topic = 'exp'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "expiry");
    assert_eq!(audit[0].1["version"], 1);
    // A consumer held on v1 by the pin moves on to v2.
    let r = app.poll(json!({"consumer": {"instance": "i-1", "labels": {}}, "topics": {"exp": 1}})).await;
    assert_eq!(r["updates"]["exp"]["version"], 2, "{r}");
}
