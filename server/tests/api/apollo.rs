//! The Apollo-compatible endpoint through the real router: each request form, 304 rules,
//! scoped releases, pins and long polls reaching Apollo clients, and signatures.
use base64::Engine;
use hmac::{Hmac, Mac};
use imprint_testkit::{assert_error, spawn_app_configured, SendJson, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn app_with_hold(pool: sqlx::PgPool, hold: Duration) -> TestApp {
    spawn_app_configured(pool.clone(), pool, |c| c.apollo_hold = hold).await
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.req(Method::GET, path).send().await.unwrap()
}

async fn config(app: &TestApp, path: &str) -> Value {
    let r = get(app, path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

fn sign(secret: &str, ts: &str, target: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}\n{target}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn configs_files_and_release_keys(pool: sqlx::PgPool) {
    let app = app_with_hold(pool, Duration::from_secs(2)).await;
    app.create_topic_with(
        json!({"name": "shop.app", "owner": "shop", "apollo": {"app_id": "shop", "namespace": "application"}}),
    )
    .await;
    app.publish("shop.app", json!({"data": "{\"timeout\": \"100\", \"retries\": 3, \"debug\": false}"})).await;

    let c = config(&app, "/apollo/configs/shop/default/application?ip=10.0.0.5").await;
    assert_eq!(c["appId"], "shop");
    assert_eq!(c["cluster"], "default");
    assert_eq!(c["namespaceName"], "application");
    assert_eq!(c["configurations"], json!({"timeout": "100", "retries": "3", "debug": "false"}));
    let key = c["releaseKey"].as_str().unwrap().to_owned();
    // 304 only when the client's key is the current one; never without a key.
    let r = get(&app, &format!("/apollo/configs/shop/default/application?releaseKey={key}")).await;
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());
    for q in ["", "?releaseKey=", "?releaseKey=-1", "?releaseKey=other"] {
        assert_eq!(get(&app, &format!("/apollo/configs/shop/default/application{q}")).await.status(), 200, "{q}");
    }
    // `.properties` is dropped from the name, and names match whatever their case.
    let c = config(&app, "/apollo/configs/shop/default/Application.properties").await;
    assert_eq!(c["namespaceName"], "Application");
    // The file forms.
    let j = config(&app, "/apollo/configfiles/json/shop/default/application").await;
    assert_eq!(j, json!({"timeout": "100", "retries": "3", "debug": "false"}));
    let r = get(&app, "/apollo/configfiles/shop/default/application").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "debug=false\nretries=3\ntimeout=100\n");
    // Nothing bound, or nothing released: 404.
    assert_eq!(get(&app, "/apollo/configs/other/default/application").await.status(), 404);
    assert_eq!(get(&app, "/apollo/configs/shop/default/nope").await.status(), 404);
    // A bound properties topic refuses payloads Apollo clients could not read.
    let r = app
        .admin(Method::POST, "/api/v1/topics/shop.app/versions")
        .json(&json!({"data": "{\"nested\": {\"a\": 1}}"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "schema_violation").await;
    // A pair is bound to one topic at most.
    let r = app
        .admin(Method::POST, "/api/v1/topics")
        .json(&json!({"name": "shop.dup", "owner": "shop", "apollo": {"app_id": "shop", "namespace": "APPLICATION"}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "conflict").await;
    // File namespaces answer {"content": …}.
    app.create_topic_with(
        json!({"name": "shop.rules", "owner": "shop", "apollo": {"app_id": "shop", "namespace": "rules.json"}}),
    )
    .await;
    app.publish("shop.rules", json!({"data": "{\"a\": {\"b\": 1}}"})).await;
    let c = config(&app, "/apollo/configs/shop/default/rules.json").await;
    assert_eq!(c["configurations"], json!({"content": "{\"a\": {\"b\": 1}}"}));
    // Apollo clients are consumers like any other.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cons: Value = app.req(Method::GET, "/api/v1/topics/shop.app/consumers").json_body().await;
    let node = &cons["consumers"].as_array().unwrap().iter().find(|c| c["instance"] == "apollo:10.0.0.5").cloned();
    let node = node.as_ref().expect("the Apollo client is in the consumer audit");
    assert_eq!(node["labels"], json!({"cluster": "default", "ip": "10.0.0.5"}));
    assert_eq!(node["version"], 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn scopes_pins_and_long_polls_reach_apollo_clients(pool: sqlx::PgPool) {
    let app = app_with_hold(pool, Duration::from_secs(3)).await;
    app.create_topic_with(
        json!({"name": "flags", "owner": "shop", "apollo": {"app_id": "shop", "namespace": "flags"}}),
    )
    .await;
    // No release yet: 404, and a -1 notification waits (then 304).
    assert_eq!(get(&app, "/apollo/configs/shop/default/flags").await.status(), 404);
    app.publish("flags", json!({"data": "mode=old"})).await;
    // A raw query as Python clients send it: `+` for spaces inside the JSON.
    let raw = "/apollo/notifications/v2?appId=shop&cluster=default&notifications=%5B%7B%22namespaceName%22%3A+%22flags%22%2C+%22notificationId%22%3A+-1%7D%5D";
    let r = get(&app, raw).await;
    assert_eq!(r.status(), 200);
    let n: Value = r.json().await.unwrap();
    let id = n[0]["notificationId"].as_i64().unwrap();
    assert_eq!(n[0]["namespaceName"], "flags");
    assert_eq!(n[0]["messages"]["details"]["shop+default+flags"], id);

    // A release scoped to the canary cluster: only canary clients see it.
    app.publish("flags", json!({"data": "mode=new", "scopes": [{"cluster": "canary"}]})).await;
    let canary = config(&app, "/apollo/configs/shop/canary/flags").await;
    let general = config(&app, "/apollo/configs/shop/default/flags").await;
    assert_eq!(canary["configurations"]["mode"], "new");
    assert_eq!(general["configurations"]["mode"], "old");
    assert_ne!(canary["releaseKey"], general["releaseKey"]);
    // A pin moves canary back at its next /configs.
    let r = app
        .admin(Method::PUT, "/api/v1/topics/flags/pins")
        .json(&json!({"selector": {"cluster": "canary"}, "version": 1}))
        .send();
    assert_eq!(r.await.unwrap().status(), 200);
    let pinned = config(&app, "/apollo/configs/shop/canary/flags").await;
    assert_eq!(pinned["configurations"]["mode"], "old");
    assert_ne!(pinned["releaseKey"], canary["releaseKey"]);

    // A long poll at the current id is answered within a second of a publish.
    let current = {
        let notes = json!([{"namespaceName": "flags", "notificationId": -1}]).to_string();
        let r = app.req(Method::GET, "/apollo/notifications/v2").query(&[
            ("appId", "shop"),
            ("cluster", "default"),
            ("notifications", &notes),
        ]);
        let n: Value = r.json_body().await;
        n[0]["notificationId"].as_i64().unwrap()
    };
    let notes = json!([{"namespaceName": "flags", "notificationId": current}]).to_string();
    let waiting = {
        let r = app.req(Method::GET, "/apollo/notifications/v2").query(&[
            ("appId", "shop"),
            ("cluster", "default"),
            ("notifications", &notes),
        ]);
        tokio::spawn(async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), Instant::now(), r.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = Instant::now();
    app.publish("flags", json!({"data": "mode=newest"})).await;
    let (status, at, body) = waiting.await.unwrap();
    // 200 with a newer id: answered by the publish (the hold running out answers 304).
    assert_eq!(status, 200, "{body}");
    println!("answered {:?} after the publish (informational)", at.duration_since(published));
    let n: Value = serde_json::from_str(&body).unwrap();
    assert!(n[0]["notificationId"].as_i64().unwrap() > current);
    // Nothing changes: 304 after the hold.
    let notes = json!([{"namespaceName": "flags", "notificationId": n[0]["notificationId"]}]).to_string();
    let r = app.req(Method::GET, "/apollo/notifications/v2").query(&[
        ("appId", "shop"),
        ("cluster", "default"),
        ("notifications", &notes),
    ]);
    assert_eq!(r.send().await.unwrap().status(), 304);
    // A missing or malformed list: 400.
    assert_eq!(get(&app, "/apollo/notifications/v2?appId=shop&cluster=default").await.status(), 400);
    assert_eq!(
        get(&app, "/apollo/notifications/v2?appId=shop&cluster=default&notifications=%5Bnope").await.status(),
        400
    );
    assert_eq!(
        get(&app, "/apollo/notifications/v2?appId=shop&cluster=default&notifications=%5B%5D").await.status(),
        400
    );
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn signatures_are_checked_when_the_app_has_a_secret(pool: sqlx::PgPool) {
    let app = app_with_hold(pool, Duration::from_secs(1)).await;
    app.create_topic_with(json!({"name": "sec", "owner": "shop", "apollo": {"app_id": "vault", "namespace": "application", "secret": "s3cr3t"}}))
        .await;
    app.publish("sec", json!({"data": "{\"k\": \"v\"}"})).await;
    // The secret is never shown.
    let t: Value = app.req(Method::GET, "/api/v1/topics/sec").json_body().await;
    assert_eq!(t["apollo"], json!({"app_id": "vault", "namespace": "application", "secret_set": true}));
    assert!(!t.to_string().contains("s3cr3t"));

    let path = "/apollo/configs/vault/default/application?ip=10.1.1.1&label=a+b";
    let now = || chrono::Utc::now().timestamp_millis().to_string();
    let send = |ts: String, sig: String| {
        app.req(Method::GET, path).header("Timestamp", ts).header("Authorization", format!("Apollo vault:{sig}")).send()
    };
    assert_error(get(&app, path).await, 401, "unauthorized").await;
    let ts = now();
    assert_eq!(send(ts.clone(), sign("s3cr3t", &ts, path)).await.unwrap().status(), 200, "the whole path");
    let relative = path.strip_prefix("/apollo").unwrap();
    assert_eq!(send(ts.clone(), sign("s3cr3t", &ts, relative)).await.unwrap().status(), 200, "after the config URL");
    assert_error(send(ts.clone(), sign("wrong", &ts, path)).await.unwrap(), 401, "unauthorized").await;
    assert_error(
        send(ts.clone(), sign("s3cr3t", &ts, "/apollo/configs/vault/default/application")).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let stale = (chrono::Utc::now().timestamp_millis() - 120_000).to_string();
    assert_error(send(stale.clone(), sign("s3cr3t", &stale, path)).await.unwrap(), 401, "unauthorized").await;
    // Notifications are signed too.
    let notes = "/apollo/notifications/v2?appId=vault&cluster=default&notifications=%5B%7B%22namespaceName%22%3A%22application%22%2C%22notificationId%22%3A-1%7D%5D";
    assert_error(get(&app, notes).await, 401, "unauthorized").await;
    let ts = now();
    let r = app
        .req(Method::GET, notes)
        .header("Timestamp", &ts)
        .header("Authorization", format!("Apollo vault:{}", sign("s3cr3t", &ts, notes)))
        .send();
    assert_eq!(r.await.unwrap().status(), 200);
    // Removing the secret (`""`) opens the app again.
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/sec")
        .json(&json!({"apollo": {"app_id": "vault", "namespace": "application", "secret": ""}}))
        .send();
    assert_eq!(r.await.unwrap().status(), 200);
    assert_eq!(get(&app, path).await.status(), 200);
}

/// A signed GET: `Authorization: Apollo {app}:{sig}` over the whole path and query.
async fn signed(app: &TestApp, path: &str, app_id: &str, secret: &str) -> reqwest::Response {
    let ts = chrono::Utc::now().timestamp_millis().to_string();
    app.req(Method::GET, path)
        .header("Timestamp", &ts)
        .header("Authorization", format!("Apollo {app_id}:{}", sign(secret, &ts, path)))
        .send()
        .await
        .unwrap()
}

fn notifications(app_id: &str, namespaces: &[&str]) -> String {
    let list: Vec<Value> = namespaces.iter().map(|n| json!({"namespaceName": n, "notificationId": -1})).collect();
    let list = urlencoding::encode(&Value::Array(list).to_string()).into_owned();
    format!("/apollo/notifications/v2?appId={app_id}&cluster=default&notifications={list}")
}

async fn answered(r: reqwest::Response) -> Vec<String> {
    assert_eq!(r.status(), 200);
    let n: Value = r.json().await.unwrap();
    let mut names: Vec<String> =
        n.as_array().unwrap().iter().map(|n| n["namespaceName"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn each_namespace_is_verified_with_its_own_bindings_secret(pool: sqlx::PgPool) {
    let app = app_with_hold(pool, Duration::from_secs(1)).await;
    // Team red's app `shop`: a restricted namespace with red's secret, and an open one.
    app.create_topic_with(json!({"name": "red.secrets", "owner": "red", "restricted": true,
        "apollo": {"app_id": "shop", "namespace": "application", "secret": "red-secret"}}))
        .await;
    app.publish("red.secrets", json!({"data": "{\"db_password\": \"hunter2\"}"})).await;
    app.create_topic_with(json!({"name": "red.plain", "owner": "red", "restricted": true,
        "apollo": {"app_id": "shop", "namespace": "plain"}}))
        .await;
    app.publish("red.plain", json!({"data": "{\"k\": \"v\"}"})).await;
    let blue = app.token("blue-ci", Some("blue")).await;
    let red = app.token("red-ci", Some("red")).await;

    // Blue binds its own topic to red's app, with its own secret: refused (and so is
    // moving an existing topic there).
    let r = app
        .req(Method::POST, "/api/v1/topics")
        .bearer_auth(&blue)
        .json(&json!({"name": "blue.cfg", "owner": "blue",
            "apollo": {"app_id": "shop", "namespace": "blue", "secret": "blue-secret"}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = app
        .req(Method::POST, "/api/v1/topics")
        .bearer_auth(&blue)
        .json(&json!({"name": "blue.cfg", "owner": "blue"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .req(Method::PATCH, "/api/v1/topics/blue.cfg")
        .bearer_auth(&blue)
        .json(&json!({"apollo": {"app_id": "shop", "namespace": "blue", "secret": "blue-secret"}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    // Its own app is blue's; red binds its own topics to its own app as before.
    let r = app
        .req(Method::POST, "/api/v1/topics")
        .bearer_auth(&red)
        .json(&json!({"name": "red.more", "owner": "red", "apollo": {"app_id": "shop", "namespace": "more"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .req(Method::POST, "/api/v1/topics")
        .bearer_auth(&red)
        .json(&json!({"name": "red.elsewhere", "owner": "red", "apollo": {"app_id": "blues-app", "namespace": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a new app is free");
    let r = app
        .req(Method::PATCH, "/api/v1/topics/blue.cfg")
        .bearer_auth(&blue)
        .json(&json!({"apollo": {"app_id": "blues-app", "namespace": "y"}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    // An admin shares red's app with blue.
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/blue.cfg")
        .json(&json!({"apollo": {"app_id": "shop", "namespace": "blue", "secret": "blue-secret"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.publish("blue.cfg", json!({"data": "{\"b\": \"1\"}"})).await;

    // Blue's secret opens blue's namespace only: not red's secret one, not red's
    // restricted one without a secret.
    let red_ns = "/apollo/configs/shop/default/application";
    assert_error(signed(&app, red_ns, "shop", "blue-secret").await, 401, "unauthorized").await;
    let plain = "/apollo/configs/shop/default/plain";
    assert_error(signed(&app, plain, "shop", "blue-secret").await, 403, "forbidden").await;
    let r = signed(&app, "/apollo/configs/shop/default/blue", "shop", "blue-secret").await;
    assert_eq!(r.status(), 200);
    // Red's clients signing with red's secret still work; unsigned, they do not.
    let r = signed(&app, red_ns, "shop", "red-secret").await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["configurations"]["db_password"], "hunter2");
    assert_error(get(&app, red_ns).await, 401, "unauthorized").await;
    assert_error(signed(&app, "/apollo/configs/shop/default/blue", "shop", "red-secret").await, 401, "unauthorized")
        .await;

    // Notifications likewise: each listed namespace answers only its own secret.
    let both = notifications("shop", &["application", "blue", "plain"]);
    assert_eq!(answered(signed(&app, &both, "shop", "blue-secret").await).await, ["blue"]);
    assert_eq!(answered(signed(&app, &both, "shop", "red-secret").await).await, ["application"]);
    assert_error(get(&app, &both).await, 401, "unauthorized").await;
    let red_only = notifications("shop", &["application"]);
    assert_error(signed(&app, &red_only, "shop", "blue-secret").await, 401, "unauthorized").await;
}
