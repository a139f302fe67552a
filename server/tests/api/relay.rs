//! The relay endpoints (docs/agent.md "Relay mode"): a relay token alone grants nothing
//! downstream, a downstream token cannot claim other labels through a relay, forged
//! reports for topics the principal may not see are refused, and the batch poll is held
//! until some group's resolution changes.
use imprint_service::auth::{NewToken, TokenKind};
use imprint_service::Caller;
use imprint_testkit::{spawn_app, SendJson, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn relay_token(app: &TestApp, name: &str) -> String {
    let spec = NewToken { name: name.into(), kind: TokenKind::Relay, ..NewToken::default() };
    app.imprint().create_token_with(&Caller::System, &spec).await.expect("relay token")
}

async fn relay_poll(app: &TestApp, token: &str, groups: Value, wait_ms: u64) -> (u16, Value) {
    app.req(Method::POST, "/api/v1/relay/poll")
        .bearer_auth(token)
        .json(&json!({"relay": {"instance": "relay-1"}, "groups": groups, "wait_ms": wait_ms}))
        .send_json()
        .await
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_relay_token_alone_reads_no_restricted_topic(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "secret.keys", "owner": "payments", "restricted": true})).await;
    app.publish("secret.keys", json!({"data": "k1"})).await;
    app.create_topic("open.cfg").await;
    app.publish("open.cfg", json!({"data": "c1"})).await;
    let relay = relay_token(&app, "relay").await;
    let payments = app.consumer_token("payments-nodes", Some("payments"), &[], &[]).await;
    let other = app.consumer_token("search-nodes", Some("search"), &[], &[]).await;

    // Only a relay token may relay.
    let groups = json!([{"labels": {}, "topics": {"open.cfg": null}}]);
    let (status, body) = app
        .req(Method::POST, "/api/v1/relay/poll")
        .json(&json!({"relay": {"instance": "r"}, "groups": groups}))
        .send_json()
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = relay_poll(&app, &payments, groups.clone(), 0).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");

    // No downstream token, another team's, the relay's own as the downstream's: forbidden.
    // The team's token: the payload.
    let topics = json!({"secret.keys": null, "open.cfg": null});
    let (status, body) = relay_poll(
        &app,
        &relay,
        json!([{"labels": {}, "topics": topics}, {"labels": {}, "token": other, "topics": topics},
               {"labels": {}, "token": relay, "topics": topics}, {"labels": {}, "token": payments, "topics": topics}]),
        0,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (i, g) in body["groups"].as_array().unwrap()[..3].iter().enumerate() {
        assert_eq!(g["missing"]["secret.keys"], "forbidden", "group {i}: {g}");
        assert!(g["updates"].get("secret.keys").is_none(), "group {i}: {g}");
        assert_eq!(g["updates"]["open.cfg"]["version"], 1, "group {i}: {g}");
    }
    let team = &body["groups"][3];
    assert_eq!(team["updates"]["secret.keys"]["data_base64"], "azE=", "{team}");

    // The payload download follows the same rule.
    let data = "/api/v1/relay/topics/secret.keys/versions/1/data";
    let r = app.req(Method::GET, data).bearer_auth(&relay).send().await.unwrap();
    assert_eq!(r.status(), 401, "no downstream token: anonymous, and the topic is restricted");
    let r = app.req(Method::GET, data).bearer_auth(&relay).header("x-imprint-downstream-token", &other).send().await;
    assert_eq!(r.unwrap().status(), 403);
    let r = app.req(Method::GET, data).bearer_auth(&relay).header("x-imprint-downstream-token", &payments).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.text().await.unwrap(), "k1");
    // Without the relay token, the downstream token alone is no relay.
    let r =
        app.req(Method::GET, data).bearer_auth(&payments).header("x-imprint-downstream-token", &payments).send().await;
    assert_eq!(r.unwrap().status(), 403);

    // A relay token polling directly is a bare consumer: restricted topics are forbidden.
    let poll = json!({"consumer": {"instance": "r"}, "topics": {"secret.keys": null}});
    let (status, body) = app.req(Method::POST, "/api/v1/poll").bearer_auth(&relay).json(&poll).send_json().await;
    assert_eq!((status, body["missing"]["secret.keys"].as_str()), (200, Some("forbidden")), "{body}");
    // A relay token changes nothing.
    let (status, _) = app
        .req(Method::POST, "/api/v1/topics/open.cfg/versions")
        .bearer_auth(&relay)
        .json(&json!({"data": "x"}))
        .send_json()
        .await;
    assert_eq!(status, 403);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_label_bound_token_cannot_claim_other_labels_through_a_relay(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "everyone"})).await;
    app.publish("cfg", json!({"data": "us only", "scopes": [{"region": "us"}]})).await;
    let relay = relay_token(&app, "relay").await;
    let eu = app.consumer_token("eu-nodes", None, &[("region", "eu")], &[]).await;
    let (status, body) = relay_poll(
        &app,
        &relay,
        json!([{"labels": {"region": "us"}, "token": eu, "topics": {"cfg": null}},
               {"labels": {"region": "eu"}, "token": eu, "topics": {"cfg": null}},
               {"labels": {"region": "us"}, "token": "imp_not_a_token", "topics": {"cfg": null}}]),
        0,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let claimed = &body["groups"][0];
    assert_eq!(
        (claimed["error"]["status"].as_u64(), claimed["error"]["code"].as_str()),
        (Some(403), Some("forbidden"))
    );
    assert!(claimed["updates"].as_object().is_none_or(|u| u.is_empty()), "{claimed}");
    assert_eq!(body["groups"][1]["updates"]["cfg"]["version"], 1, "eu resolves to v1: {body}");
    assert_eq!(body["groups"][2]["error"]["status"], 401, "an unknown token: {body}");
    // Nor can it download the other labels' version.
    let r = app
        .req(Method::GET, "/api/v1/relay/topics/cfg/versions/2/data?labels=region=us")
        .bearer_auth(&relay)
        .header("x-imprint-downstream-token", &eu)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A version other than the one the labels resolve to is not served either.
    let r = app
        .req(Method::GET, "/api/v1/relay/topics/cfg/versions/1/data?labels=region=us")
        .bearer_auth(&relay)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .req(Method::GET, "/api/v1/relay/topics/cfg/versions/2/data?labels=region=us")
        .bearer_auth(&relay)
        .header("range", "bytes=3-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().await.unwrap(), "only");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn forged_relayed_reports_are_refused_and_real_ones_are_marked_relayed(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "secret.keys", "owner": "payments", "restricted": true})).await;
    app.publish("secret.keys", json!({"data": "k1"})).await;
    app.create_topic("open.cfg").await;
    app.publish("open.cfg", json!({"data": "c1"})).await;
    let relay = relay_token(&app, "relay").await;
    let payments = app.consumer_token("payments-nodes", Some("payments"), &[], &[]).await;
    let eu = app.consumer_token("eu-nodes", None, &[("region", "eu")], &[]).await;
    let report = |instance: &str, labels: Value, token: Option<&str>, topics: Value| {
        let mut r = json!({"consumer": {"instance": instance, "labels": labels}, "topics": topics});
        if let Some(t) = token {
            r["token"] = json!(t);
        }
        r
    };
    let reports = json!([
        report("forger", json!({}), None, json!({"secret.keys": 1, "open.cfg": 1})),
        report("liar", json!({"region": "us"}), Some(&eu), json!({"open.cfg": 1})),
        report("real", json!({}), Some(&payments), json!({"secret.keys": 1})),
        report("eu-node", json!({"region": "eu"}), Some(&eu), json!({"open.cfg": 1})),
    ]);
    let (status, body) = app
        .req(Method::POST, "/api/v1/relay/reports")
        .bearer_auth(&relay)
        .json(&json!({"relay": {"instance": "relay-1"}, "reports": reports}))
        .send_json()
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recorded"], 3, "{body}");
    let refused = body["refused"].as_array().unwrap();
    assert!(refused.iter().any(|r| r["report"] == 0 && r["topic"] == "secret.keys" && r["error"]["status"] == 401));
    assert!(refused.iter().any(|r| r["report"] == 1 && r["topic"].is_null() && r["error"]["status"] == 403));
    assert_eq!(refused.len(), 2, "{body}");
    // A non-relay token may not send reports.
    let (status, _) = app
        .req(Method::POST, "/api/v1/relay/reports")
        .bearer_auth(&payments)
        .json(&json!({"relay": {"instance": "relay-1"}, "reports": []}))
        .send_json()
        .await;
    assert_eq!(status, 403);

    let real = app.consumer_where("secret.keys", "real", |c| c["version"] == 1).await;
    assert_eq!(
        (real["relayed_by"].as_str(), real["principal"].as_str()),
        (Some("relay-1"), Some("token:payments-nodes"))
    );
    let node = app.consumer_where("open.cfg", "eu-node", |c| c["version"] == 1).await;
    assert_eq!(node["relayed_by"], "relay-1");
    let forger = app.consumer_where("open.cfg", "forger", |c| c["version"] == 1).await;
    assert_eq!((forger["authenticated"].clone(), forger["relayed_by"].clone()), (json!(false), json!("relay-1")));
    let secret: Value = app.admin(Method::GET, "/api/v1/topics/secret.keys/consumers").json_body().await;
    let listed: Vec<&str> =
        secret["consumers"].as_array().unwrap().iter().map(|c| c["instance"].as_str().unwrap()).collect();
    assert_eq!(listed, ["real"], "the forged report of the restricted topic left no trace");
    let open: Value = app.admin(Method::GET, "/api/v1/topics/open.cfg/consumers").json_body().await;
    assert!(!open["consumers"].as_array().unwrap().iter().any(|c| c["instance"] == "liar"), "{open}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_relay_poll_is_held_until_a_group_changes(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "v1"})).await;
    let relay = relay_token(&app, "relay").await;
    let groups = |held: Value| {
        json!([{"labels": {"region": "eu"}, "topics": {"cfg": held, "later": null}},
               {"labels": {"region": "us"}, "topics": {"cfg": held}}])
    };
    let (_, body) = relay_poll(&app, &relay, groups(Value::Null), 0).await;
    assert_eq!(body["groups"][0]["updates"]["cfg"]["version"], 1, "{body}");
    assert_eq!(body["groups"][0]["updates"]["cfg"]["pinned"], false, "{body}");
    assert_eq!(body["groups"][0]["missing"]["later"], "topic_not_found", "{body}");
    let held = json!({"version": 1, "pinned": false});
    // Nothing differs: held the whole wait.
    let started = std::time::Instant::now();
    let (_, body) = relay_poll(&app, &relay, groups(held.clone()), 300).await;
    assert!(started.elapsed() >= Duration::from_millis(290), "answered early: {body}");
    assert!(body["groups"][0]["updates"].as_object().unwrap().is_empty(), "{body}");
    // A publish scoped to one region wakes the poll with that group's update only.
    let waiting = {
        let (url, relay, body) = (format!("{}/api/v1/relay/poll", app.base_url()), relay.clone(), groups(held.clone()));
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(relay)
                .json(&json!({"relay": {"instance": "relay-1"}, "groups": body, "wait_ms": 30000}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.publish("cfg", json!({"data": "v2", "scopes": [{"region": "us"}]})).await;
    let body = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken").unwrap();
    assert!(body["groups"][0]["updates"].as_object().unwrap().is_empty(), "{body}");
    assert_eq!(body["groups"][1]["updates"]["cfg"]["version"], 2, "{body}");
    // A pin back to v1 for us changes its resolution (pinned), though not to a newer one.
    app.admin(Method::PUT, "/api/v1/topics/cfg/pins")
        .json(&json!({"selector": {"region": "us"}, "version": 1}))
        .send_json()
        .await;
    let (_, body) = relay_poll(
        &app,
        &relay,
        json!([{"labels": {"region": "us"}, "topics": {"cfg": {"version": 2, "pinned": false}}}]),
        5000,
    )
    .await;
    assert_eq!(body["groups"][0]["updates"]["cfg"]["version"], 1, "{body}");
    assert_eq!(body["groups"][0]["updates"]["cfg"]["pinned"], true, "{body}");
    // Bounds: wait and group count.
    let (status, _) = relay_poll(&app, &relay, json!([]), 60_001).await;
    assert_eq!(status, 400);
    let many: Vec<Value> = (0..1001).map(|i| json!({"labels": {"n": i.to_string()}, "topics": {}})).collect();
    let (status, _) = relay_poll(&app, &relay, json!(many), 0).await;
    assert_eq!(status, 400);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_revoked_downstream_token_ends_a_parked_relay_poll(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "v1"})).await;
    let relay = relay_token(&app, "relay").await;
    let node = app.consumer_token("nodes", None, &[], &[]).await;
    let held = json!({"version": 1, "pinned": false});
    let body = json!({"relay": {"instance": "relay-1"}, "wait_ms": 30000,
                      "groups": [{"labels": {}, "token": node, "topics": {"cfg": held}},
                                 {"labels": {}, "topics": {"cfg": held}}]});
    let waiting = {
        let (url, relay) = (format!("{}/api/v1/relay/poll", app.base_url()), relay.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new().post(url).bearer_auth(relay).json(&body).send().await.unwrap();
            (std::time::Instant::now(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked_at = std::time::Instant::now();
    app.imprint().revoke_token(&Caller::System, "nodes").await.unwrap();
    let (at, body) = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("ended").unwrap();
    assert!(at.duration_since(revoked_at) < Duration::from_secs(15), "held past the revocation: {body}");
    assert_eq!(body["groups"][0]["error"]["status"], 401, "{body}");
    assert!(body["groups"][1].get("error").is_none(), "the anonymous group is not refused: {body}");
}
