//! `keep_rejected` (docs/validation.md): a publish the topic's checks reject is stored
//! unreleased, marked rejected with every check's result, and the 422 names it — and
//! then nothing releases or serves it: poll, `/latest`, resolve, `…/data` and blobs never
//! return it; scopes, pins, rollouts and change requests for it are refused with 409
//! `version_rejected`; the variance guards compare with the newest accepted version; a
//! restricted topic's rejected version is invisible to callers without rights. Real
//! Postgres, real HTTP.
use imprint_testkit::{assert_error, spawn_app, SendJson, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn publish(app: &TestApp, topic: &str, body: Value) -> reqwest::Response {
    app.admin(Method::POST, &format!("/api/v1/topics/{topic}/versions")).json(&body).send().await.unwrap()
}

fn consumer(labels: Value, topics: Value) -> Value {
    json!({"consumer": {"instance": "i-1", "labels": labels}, "topics": topics})
}

async fn status(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.unwrap().status().as_u16()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_rejected_version_is_kept_unreleased_and_never_served(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let t = app
        .create_topic_with(json!({"name": "prices", "owner": "payments", "keep_rejected": true, "checks": [
            {"type": "record_count_change_pct", "max_pct": 30},
            {"type": "not_empty"},
        ]}))
        .await;
    assert_eq!(t["keep_rejected"], true, "{t}");
    app.publish("prices", json!({"data": "[1,2,3,4]"})).await;

    // The record count halves: refused as before, and kept as v2 for the owner to look at.
    let err = assert_error(publish(&app, "prices", json!({"data": "[1,2]"})).await, 422, "validation_failed").await;
    assert_eq!(err["error"]["details"]["version"], 2, "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("record count varied by 50% (4 → 2) vs v1"), "{msg}");
    assert!(msg.contains("kept unreleased as rejected version 2"), "{msg}");
    assert_eq!(err["error"]["details"]["checks"][0]["status"], "failed");
    assert_eq!(app.versions_in_db("prices").await, 2);

    let (s, v2) = app.get_json("/api/v1/topics/prices/versions/2").await;
    assert_eq!(s, 200, "{v2}");
    let reasons = v2["rejected"]["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{v2}");
    assert!(reasons[0].as_str().unwrap().starts_with("record_count_change_pct: record count varied by 50%"), "{v2}");
    assert_eq!(v2["scopes"], json!([]));
    let statuses: Vec<&str> =
        v2["checks"]["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["failed", "passed"]);
    let (_, v1) = app.get_json("/api/v1/topics/prices/versions/1").await;
    assert_eq!(v1["rejected"], Value::Null, "{v1}");
    let (_, list) = app.get_json("/api/v1/topics/prices/versions").await;
    assert_eq!(list["versions"][0]["version"], 2);
    assert!(list["versions"][0]["rejected"]["reasons"].is_array(), "{list}");
    let (_, topic) = app.get_json("/api/v1/topics/prices").await;
    assert_eq!(topic["latest_version"], 1, "a rejected version is not the latest: {topic}");

    // Never served: poll, latest, resolve, its data, its blob.
    let r = app.poll(consumer(json!({}), json!({"prices": null}))).await;
    assert_eq!(r["updates"]["prices"]["version"], 1, "{r}");
    let r = app.poll(consumer(json!({}), json!({"prices": 1}))).await;
    assert_eq!(r["updates"], json!({}), "{r}");
    let r = app.req(Method::GET, "/api/v1/topics/prices/latest").send().await.unwrap();
    assert_eq!(r.headers()["x-imprint-version"], "1");
    assert_eq!(r.text().await.unwrap(), "[1,2,3,4]");
    let (_, r) = app.get_json("/api/v1/topics/prices/resolve?labels=region=eu").await;
    assert_eq!(r["version"], 1, "{r}");
    let now = chrono::Utc::now().to_rfc3339().replace('+', "%2B");
    let (_, r) = app.get_json(&format!("/api/v1/topics/prices/resolve?labels=region=eu&at={now}")).await;
    assert_eq!(r["version"], 1, "time travel never finds it either: {r}");
    let r = app.admin(Method::GET, "/api/v1/topics/prices/versions/2/data").send().await.unwrap();
    let err = assert_error(r, 409, "version_rejected").await;
    assert_eq!(err["error"]["details"]["version"], 2);
    let r = app.req(Method::GET, "/api/v1/topics/prices/versions/2/data").send().await.unwrap();
    assert_error(r, 409, "version_rejected").await;
    let sha = hex::encode(Sha256::digest(b"[1,2]"));
    let r = app.req(Method::GET, &format!("/api/v1/blobs/sha256/{sha}")).send().await.unwrap();
    assert_error(r, 404, "not_found").await;

    // Never released: a scope, a pin, a rollout, a scheduled scope — each refused, nothing changes.
    let r = app.admin(Method::POST, "/api/v1/topics/prices/versions/2/scopes").json(&json!({"selector": {}})).send();
    assert_error(r.await.unwrap(), 409, "version_rejected").await;
    let r =
        app.admin(Method::PUT, "/api/v1/topics/prices/pins").json(&json!({"selector": {"region": "eu"}, "version": 2}));
    assert_error(r.send().await.unwrap(), 409, "version_rejected").await;
    let stages = json!([{"selector": {"cluster": "canary"}, "wait_s": 60}, {"selector": {}, "wait_s": 0}]);
    let r = app.admin(Method::POST, "/api/v1/topics/prices/rollouts").json(&json!({"version": 2, "stages": stages}));
    assert_error(r.send().await.unwrap(), 409, "version_rejected").await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = app
        .admin(Method::POST, "/api/v1/topics/prices/versions/2/scopes")
        .json(&json!({"selector": {"region": "eu"}, "at": later}));
    assert_error(r.send().await.unwrap(), 409, "version_rejected").await;
    let (_, pins) = app.get_json("/api/v1/topics/prices/pins?all=true").await;
    assert_eq!(pins["pins"], json!([]), "{pins}");
    let (_, rollouts) = app.get_json("/api/v1/topics/prices/rollouts").await;
    assert_eq!(rollouts["rollouts"], json!([]), "{rollouts}");
    let (_, v2) = app.get_json("/api/v1/topics/prices/versions/2").await;
    assert_eq!(v2["scopes"], json!([]));
    // The database refuses too (the second line, should a path ever miss the check).
    let topic_id: i64 =
        sqlx::query_scalar("SELECT id FROM topics WHERE name = 'prices'").fetch_one(&app.pool).await.unwrap();
    let e = sqlx::query(
        "INSERT INTO scopes (topic_id, version, selector, selector_key, added_at, added_by)
         VALUES ($1, 2, '{}'::jsonb, '*', now(), 'test')",
    )
    .bind(topic_id)
    .execute(&app.pool)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("rejected"), "{e}");

    // The guards compare with the newest accepted version (v1: 4 → 3 is 25%), not with
    // the rejected v2 (2 → 3 would be 50%); the next number comes after v2.
    let v3 = app.publish("prices", json!({"data": "[1,2,3]"})).await;
    assert_eq!(v3["version"], 3, "{v3}");
    assert!(v3["checks"]["results"][0]["message"].as_str().unwrap().contains("25% (4 → 3)"), "{v3}");
    let (_, topic) = app.get_json("/api/v1/topics/prices").await;
    assert_eq!(topic["latest_version"], 3);
    let r = app.poll(consumer(json!({}), json!({"prices": 1}))).await;
    assert_eq!(r["updates"]["prices"]["version"], 3, "{r}");

    // Audited with the evidence (and the `version.rejected` webhook event's action).
    let audited: Value =
        sqlx::query_scalar("SELECT details FROM audit_log WHERE action = 'version.reject' AND topic = 'prices'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited["version"], 2, "{audited}");
    assert!(audited["rejected_by"].as_str().unwrap().contains("record count"), "{audited}");
    assert_eq!(audited["checks"][0]["status"], "failed", "{audited}");

    // Forced past a reject check, a publish is accepted as ever (not kept as rejected).
    let body = json!({"data": "[1]", "force": true, "force_reason": "the catalogue shrinks today"});
    let r = publish(&app, "prices", body).await;
    assert_eq!(r.status(), 201);
    let (_, v4) = app.get_json("/api/v1/topics/prices/versions/4").await;
    assert_eq!(v4["rejected"], Value::Null, "{v4}");
    assert_eq!(v4["checks"]["forced_by"], "token:bootstrap", "{v4}");
}

/// Off (the default), a rejected publish stores nothing (as before); the setting is a
/// topic setting that PATCH turns on and off, audited.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn keep_rejected_is_a_topic_setting(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "cfg", "owner": "payments", "checks": [{"type": "not_empty"}]})).await;
    app.publish("cfg", json!({"data": "[1]"})).await;
    let err = assert_error(publish(&app, "cfg", json!({"data": "[]"})).await, 422, "validation_failed").await;
    assert!(err["error"]["details"].get("version").is_none(), "{err}");
    assert_eq!(app.versions_in_db("cfg").await, 1);

    let r = app.admin(Method::PATCH, "/api/v1/topics/cfg").json(&json!({"keep_rejected": true})).send_json().await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["keep_rejected"], true);
    let r = app.admin(Method::PATCH, "/api/v1/topics/cfg").json(&json!({"keep_rejected": "yes"})).send().await;
    assert_error(r.unwrap(), 400, "invalid_request").await;
    let err = assert_error(publish(&app, "cfg", json!({"data": "[]"})).await, 422, "validation_failed").await;
    assert_eq!(err["error"]["details"]["version"], 2, "{err}");
    let audited: Value = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'topic.update' AND topic = 'cfg' ORDER BY id LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited["checks"]["to"]["keep_rejected"], true, "{audited}");

    let r = app.admin(Method::PATCH, "/api/v1/topics/cfg").json(&json!({"keep_rejected": false})).send_json().await;
    assert_eq!(r.1["keep_rejected"], false);
    assert_error(publish(&app, "cfg", json!({"data": "{}"})).await, 422, "validation_failed").await;
    assert_eq!(app.versions_in_db("cfg").await, 2);
}

/// A restricted topic's rejected version is as invisible as the topic to callers
/// without rights: its record, its reasons and its data are refused (401/403), and a
/// consumer allowed on the topic still never gets it.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_restricted_topics_rejected_version_is_invisible_without_rights(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "red.secret", "owner": "red", "restricted": true, "keep_rejected": true,
        "checks": [{"type": "not_empty"}]}))
        .await;
    app.publish("red.secret", json!({"data": "[1]"})).await;
    let err = assert_error(publish(&app, "red.secret", json!({"data": "[]"})).await, 422, "validation_failed").await;
    assert_eq!(err["error"]["details"]["version"], 2);

    let blue = app.consumer_token("blue-fleet", Some("blue"), &[], &[]).await;
    let blue_pub = app.token("blue-publisher", Some("blue")).await;
    let red = app.consumer_token("red-fleet", Some("red"), &[], &[]).await;
    for path in [
        "/api/v1/topics/red.secret/versions/2",
        "/api/v1/topics/red.secret/versions/2/data",
        "/api/v1/topics/red.secret/versions",
    ] {
        assert_eq!(status(app.req(Method::GET, path)).await, 401, "anonymous {path}");
        for token in [&blue, &blue_pub] {
            let r = app.req(Method::GET, path).bearer_auth(token).send().await.unwrap();
            assert_error(r, 403, "forbidden").await;
        }
    }
    // An outsider's pin on it is refused for the topic, before the version is looked at.
    let r = app
        .req(Method::PUT, "/api/v1/topics/red.secret/pins")
        .bearer_auth(&blue_pub)
        .json(&json!({"selector": {}, "version": 2}));
    assert_error(r.send().await.unwrap(), 403, "forbidden").await;

    // The owning team's consumer reads the record, never the payload or a poll of it.
    let r = app.req(Method::GET, "/api/v1/topics/red.secret/versions/2").bearer_auth(&red).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["rejected"]["reasons"][0].as_str().unwrap().starts_with("not_empty"), "{v}");
    let r = app.req(Method::GET, "/api/v1/topics/red.secret/versions/2/data").bearer_auth(&red).send().await.unwrap();
    assert_error(r, 409, "version_rejected").await;
    let r = app
        .req(Method::POST, "/api/v1/poll")
        .bearer_auth(&red)
        .json(&consumer(json!({}), json!({"red.secret": null})))
        .send_json()
        .await;
    assert_eq!(r.1["updates"]["red.secret"]["version"], 1, "{}", r.1);
}

/// Retention treats a rejected version as any other: outside the policy and neither
/// pinned, rolled out nor resolved (it never can be), it is purged; its record and
/// reasons stay as a tombstone.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn retention_purges_rejected_versions(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "ret", "owner": "payments", "keep_rejected": true,
        "retention": {"max_versions": 1}, "checks": [{"type": "not_empty"}]}))
        .await;
    app.publish("ret", json!({"data": "[1]"})).await;
    assert_error(publish(&app, "ret", json!({"data": "[]"})).await, 422, "validation_failed").await;
    // Inside the policy (the newest version): kept.
    app.imprint().janitor_pass().await.unwrap();
    let (_, v2) = app.get_json("/api/v1/topics/ret/versions/2").await;
    assert_eq!(v2["purged"], false, "{v2}");
    app.publish("ret", json!({"data": "[1,2]"})).await;
    app.imprint().janitor_pass().await.unwrap();
    let (_, v2) = app.get_json("/api/v1/topics/ret/versions/2").await;
    assert_eq!(v2["purged"], true, "{v2}");
    assert!(v2["rejected"]["reasons"].is_array(), "{v2}");
    let r = app.admin(Method::GET, "/api/v1/topics/ret/versions/2/data").send().await.unwrap();
    assert_error(r, 410, "version_purged").await;
    let r = app.poll(consumer(json!({}), json!({"ret": null}))).await;
    assert_eq!(r["updates"]["ret"]["version"], 3, "{r}");
}
