//! Change control (docs/change-control.md) through the API and Postgres: drafts, four-eyes
//! review, scheduled releases (and a restart before one), freezes and break glass.
use imprint_service::Clock;
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};

fn consumer(labels: Value, topics: Value) -> Value {
    json!({"consumer": {"instance": "i-1", "labels": labels}, "topics": topics})
}

async fn resolve(app: &TestApp, topic: &str) -> Value {
    app.req(Method::GET, &format!("/api/v1/topics/{topic}/resolve?labels=region=eu")).json_body().await
}

async fn audit_actions(pool: &sqlx::PgPool, topic: &str) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT action, details FROM audit_log WHERE topic = $1 ORDER BY id")
        .bind(topic)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn events(pool: &sqlx::PgPool) -> Vec<String> {
    // The outbox holds events only for matching subscriptions: the tests subscribe first.
    sqlx::query_scalar("SELECT type FROM webhook_events ORDER BY seq").fetch_all(pool).await.unwrap()
}

async fn subscribe_all(app: &TestApp) {
    let (s, b) =
        app.post_json("/api/v1/webhooks", &json!({"url": "http://127.0.0.1:9/hook", "allow_private": true})).await;
    assert_eq!(s, 201, "{b}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_draft_is_invisible_to_polls_and_becomes_version_n_only_when_released(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "{\"a\":1,\"b\":2}"})).await;
    let (s, d) =
        app.post_json("/api/v1/topics/cfg/drafts", &json!({"data": "{\"a\":1,\"b\":3}", "message": "b to 3"})).await;
    assert_eq!(s, 201, "{d}");
    let id = d["id"].as_i64().unwrap();
    assert_eq!(d["state"], "open");
    assert!(d["released_version"].is_null());
    assert_eq!(d["size"], 13);

    // Released to nobody: no version row, polls and resolve still give version 1.
    assert_eq!(app.versions_in_db("cfg").await, 1);
    let r = app.poll(consumer(json!({"region": "eu"}), json!({"cfg": null}))).await;
    assert_eq!(r["updates"]["cfg"]["version"], 1, "{r}");
    assert_eq!(resolve(&app, "cfg").await["version"], 1);
    let list: Value = app.req(Method::GET, "/api/v1/topics/cfg/versions").json_body().await;
    assert_eq!(list["versions"].as_array().unwrap().len(), 1);

    // The attack: consumer and anonymous callers never see drafts, nor their diff.
    let fleet = app.consumer_token("fleet", Some("payments"), &[], &[]).await;
    let other = app.token("other-team", Some("ops")).await;
    for path in [
        "/api/v1/topics/cfg/drafts".to_string(),
        format!("/api/v1/topics/cfg/drafts/{id}"),
        format!("/api/v1/topics/cfg/drafts/{id}/diff"),
    ] {
        assert_error(app.req(Method::GET, &path).bearer_auth(&fleet).send().await.unwrap(), 403, "forbidden").await;
        assert_error(app.req(Method::GET, &path).send().await.unwrap(), 401, "unauthorized").await;
        assert_error(app.req(Method::GET, &path).bearer_auth(&other).send().await.unwrap(), 403, "forbidden").await;
    }
    let r = app
        .req(Method::POST, &format!("/api/v1/topics/cfg/drafts/{id}/release"))
        .bearer_auth(&fleet)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    // The diff against what the scope gets now.
    let (s, diff) = app.get_json(&format!("/api/v1/topics/cfg/drafts/{id}/diff?scope=region=eu")).await;
    assert_eq!(s, 200, "{diff}");
    let sd = &diff["scopes"][0];
    assert_eq!(sd["live_version"], 1);
    assert_eq!(sd["identical"], false);
    let lines = sd["lines"].as_array().unwrap();
    assert!(lines.contains(&json!({"op": "removed", "line": "  \"b\": 2"})), "{sd}");
    assert!(lines.contains(&json!({"op": "added", "line": "  \"b\": 3"})), "{sd}");
    let (s, bad) = app.get_json(&format!("/api/v1/topics/cfg/drafts/{id}/diff?scope=!!")).await;
    assert_eq!((s, bad["error"]["code"].as_str()), (400, Some("invalid_selector")), "{bad}");

    // Replace the payload; validation applies as to a version (a JSON Schema).
    let (s, d2) = app
        .admin(Method::PUT, &format!("/api/v1/topics/cfg/drafts/{id}"))
        .json(&json!({"data": "{\"a\":1,\"b\":4}"}))
        .send_json()
        .await;
    assert_eq!(s, 200, "{d2}");
    assert_ne!(d2["sha256"], d["sha256"]);
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/cfg")
        .json(&json!({"json_schema": {"type": "object", "required": ["a"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .admin(Method::PUT, &format!("/api/v1/topics/cfg/drafts/{id}"))
        .json(&json!({"data": "{\"b\":5}"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "schema_violation").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/cfg/drafts")
        .json(&json!({"data": "{}", "data_base64": "e30="}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r = app
        .admin(Method::POST, "/api/v1/topics/cfg/drafts")
        .json(&json!({"data": "{\"a\":1}", "sha256": "00".repeat(32)}))
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "checksum_mismatch").await;
    assert_eq!(app.versions_in_db("cfg").await, 1, "nothing of that became a version");

    // Released: now version 2, polled with the draft's payload.
    let (s, v) =
        app.post_json(&format!("/api/v1/topics/cfg/drafts/{id}/release"), &json!({"scopes": [{"region": "eu"}]})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["sha256"], d2["sha256"]);
    let r = app.poll(consumer(json!({"region": "eu"}), json!({"cfg": 1}))).await;
    assert_eq!(r["updates"]["cfg"]["version"], 2, "{r}");
    let data = app.req(Method::GET, "/api/v1/topics/cfg/versions/2/data").send().await.unwrap().text().await.unwrap();
    assert_eq!(data, "{\"a\":1,\"b\":4}");
    let (_, d3) = app.get_json(&format!("/api/v1/topics/cfg/drafts/{id}")).await;
    assert_eq!((d3["state"].as_str(), d3["released_version"].as_u64()), (Some("released"), Some(2)));
    let r = app
        .admin(Method::POST, &format!("/api/v1/topics/cfg/drafts/{id}/release"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "invalid_state").await;

    // `"draft": true` on a publish saves a draft; a discarded one cannot be released.
    let (s, d4) = app.post_json("/api/v1/topics/cfg/versions", &json!({"data": "{\"a\":9}", "draft": true})).await;
    assert_eq!(s, 201, "{d4}");
    assert_eq!(d4["state"], "open");
    assert_eq!(app.versions_in_db("cfg").await, 2);
    let id4 = d4["id"].as_i64().unwrap();
    let (_, drafts) = app.get_json("/api/v1/topics/cfg/drafts").await;
    assert_eq!(drafts["drafts"].as_array().unwrap().len(), 1, "{drafts}");
    let (s, gone) = app.admin(Method::DELETE, &format!("/api/v1/topics/cfg/drafts/{id4}")).send_json().await;
    assert_eq!((s, gone["state"].as_str()), (200, Some("discarded")));
    let r = app
        .admin(Method::POST, &format!("/api/v1/topics/cfg/drafts/{id4}/release"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "invalid_state").await;
    let payload: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT data FROM drafts WHERE id = $1").bind(id4).fetch_one(&pool).await.unwrap();
    assert!(payload.is_none(), "a discarded draft's payload is deleted");
    let actions: Vec<String> = audit_actions(&pool, "cfg").await.into_iter().map(|(a, _)| a).collect();
    for a in ["draft.create", "draft.update", "draft.discard"] {
        assert!(actions.contains(&a.to_string()), "{a} audited: {actions:?}");
    }
}

async fn reviewed_topic(app: &TestApp, topic: &str, n: u32) -> (String, String, String) {
    app.create_topic_with(json!({"name": topic, "owner": "sre"})).await;
    app.publish(topic, json!({"data": "v1"})).await;
    let (s, r) = app
        .admin(Method::PUT, &format!("/api/v1/topics/{topic}/review"))
        .json(&json!({"required_approvals": n, "approvers": {"team": "sre"}}))
        .send_json()
        .await;
    assert_eq!(s, 200, "{r}");
    (app.token("alice", Some("sre")).await, app.token("bob", Some("sre")).await, app.token("carol", Some("sre")).await)
}

async fn request_release(app: &TestApp, token: &str, topic: &str, data: &str) -> Value {
    let (s, cr) = app
        .req(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
        .bearer_auth(token)
        .json(&json!({"data": data, "message": "please"}))
        .send_json()
        .await;
    assert_eq!(s, 202, "{cr}");
    cr
}

async fn act(app: &TestApp, token: &str, id: &Value, action: &str, body: Value) -> (u16, Value) {
    app.req(Method::POST, &format!("/api/v1/change-requests/{id}/{action}"))
        .bearer_auth(token)
        .json(&body)
        .send_json()
        .await
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn two_approvals_release_one_does_not_and_the_author_never_approves(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    subscribe_all(&app).await;
    let (alice, bob, carol) = reviewed_topic(&app, "rev", 2).await;
    let cr = request_release(&app, &alice, "rev", "v2").await;
    assert_eq!(cr["state"], "pending");
    assert_eq!(cr["author"], "token:alice");
    assert_eq!(cr["required_approvals"], 2);
    let id = cr["id"].clone();
    assert_eq!(app.versions_in_db("rev").await, 1);

    // Only approvers, never the author; consumers and other teams do not even see it.
    let (s, e) = act(&app, &alice, &id, "approve", json!({})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("forbidden")), "{e}");
    let ops = app.token("ops-token", Some("ops")).await;
    let (s, _) = act(&app, &ops, &id, "approve", json!({})).await;
    assert_eq!(s, 404);
    let fleet = app.consumer_token("fleet", Some("sre"), &[], &[]).await;
    let (s, _) = act(&app, &fleet, &id, "approve", json!({})).await;
    assert_eq!(s, 403);
    let r = app.req(Method::GET, "/api/v1/change-requests").bearer_auth(&fleet).send().await.unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = app.req(Method::GET, "/api/v1/change-requests").bearer_auth(&ops).send_json().await;
    assert_eq!(r.1["change_requests"], json!([]), "another team sees none");

    let (s, one) = act(&app, &bob, &id, "approve", json!({})).await;
    assert_eq!((s, one["state"].as_str()), (200, Some("pending")), "{one}");
    assert_eq!(one["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(app.versions_in_db("rev").await, 1, "one approval releases nothing");
    assert_eq!(resolve(&app, "rev").await["version"], 1);
    let (s, e) = act(&app, &bob, &id, "approve", json!({})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("conflict")), "the same approver twice: {e}");

    let (s, done) = act(&app, &carol, &id, "approve", json!({})).await;
    assert_eq!((s, done["state"].as_str()), (200, Some("applied")), "{done}");
    assert_eq!(done["applied_version"], 2);
    let v: Value = app.req(Method::GET, "/api/v1/topics/rev/versions/2").json_body().await;
    assert_eq!(v["created_by"], "token:alice", "applied as its author: {v}");
    assert_eq!(resolve(&app, "rev").await["version"], 2);
    let (s, _) = act(&app, &carol, &id, "approve", json!({})).await;
    assert_eq!(s, 409);

    let listed =
        app.req(Method::GET, "/api/v1/change-requests?topic=rev&state=applied").bearer_auth(&bob).json_body().await;
    assert_eq!(listed["change_requests"][0]["id"], id);
    let actions: Vec<String> = audit_actions(&pool, "rev").await.into_iter().map(|(a, _)| a).collect();
    for a in ["change.request", "change.approve", "change.apply", "version.publish"] {
        assert!(actions.contains(&a.to_string()), "{a}: {actions:?}");
    }
    let ev = events(&pool).await;
    for e in ["change.requested", "change.approved", "change.applied", "version.published"] {
        assert!(ev.contains(&e.to_string()), "{e}: {ev:?}");
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_rejected_request_changes_nothing_and_a_withdrawn_one_neither(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (alice, bob, carol) = reviewed_topic(&app, "rej", 1).await;
    let cr = request_release(&app, &alice, "rej", "bad").await;
    let id = cr["id"].clone();
    let (s, e) = act(&app, &bob, &id, "reject", json!({"reason": "  "})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_request")), "a reason is needed: {e}");
    let (s, r) = act(&app, &bob, &id, "reject", json!({"reason": "breaks checkout"})).await;
    assert_eq!((s, r["state"].as_str(), r["reason"].as_str()), (200, Some("rejected"), Some("breaks checkout")), "{r}");
    let (s, _) = act(&app, &carol, &id, "approve", json!({})).await;
    assert_eq!(s, 409, "a rejected request is closed");
    assert_eq!(app.versions_in_db("rej").await, 1);
    assert_eq!(resolve(&app, "rej").await["version"], 1);

    let cr = request_release(&app, &alice, "rej", "again").await;
    let id = cr["id"].clone();
    let (s, _) = act(&app, &bob, &id, "withdraw", json!({})).await;
    assert_eq!(s, 403, "only the author withdraws");
    let (s, w) = act(&app, &alice, &id, "withdraw", json!({})).await;
    assert_eq!((s, w["state"].as_str()), (200, Some("withdrawn")));
    let (s, _) = act(&app, &bob, &id, "approve", json!({})).await;
    assert_eq!(s, 409);
    assert_eq!(app.versions_in_db("rej").await, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn two_approvers_approving_at_once_apply_it_once(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (alice, bob, carol) = reviewed_topic(&app, "race", 1).await;
    for round in 0..4 {
        let cr = request_release(&app, &alice, "race", &format!("r{round}")).await;
        let id = cr["id"].clone();
        let (a, b) =
            tokio::join!(act(&app, &bob, &id, "approve", json!({})), act(&app, &carol, &id, "approve", json!({})));
        let ok: Vec<&(u16, Value)> = [&a, &b].into_iter().filter(|r| r.0 == 200).collect();
        assert_eq!(ok.len(), 1, "one approval is the one that applies, the other finds it closed: {a:?} {b:?}");
        assert!([a.0, b.0].contains(&409), "{a:?} {b:?}");
        assert_eq!(ok[0].1["state"], "applied");
        assert_eq!(app.versions_in_db("race").await, 2 + round, "applied exactly once");
    }
    // Two approvals needed, both at once: applied once.
    sqlx::query("UPDATE topic_reviews SET required_approvals = 2").execute(&pool).await.unwrap();
    let before = app.versions_in_db("race").await;
    let cr = request_release(&app, &alice, "race", "both").await;
    let id = cr["id"].clone();
    let (a, b) = tokio::join!(act(&app, &bob, &id, "approve", json!({})), act(&app, &carol, &id, "approve", json!({})));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert!([&a.1["state"], &b.1["state"]].contains(&&json!("applied")), "{a:?} {b:?}");
    assert_eq!(app.versions_in_db("race").await, before + 1);
    let applies: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'change.apply'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applies, 5);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_scheduled_release_applies_at_its_time_and_survives_a_restart(pool: sqlx::PgPool) {
    let clock = ManualClock::new(chrono::Utc::now());
    let first = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    first.create_topic("sched").await;
    first.publish("sched", json!({"data": "v1"})).await;
    let at = clock.now() + chrono::Duration::hours(1);
    let (s, cr) = first.post_json("/api/v1/topics/sched/versions", &json!({"data": "v2", "at": at})).await;
    assert_eq!((s, cr["state"].as_str()), (202, Some("approved")), "no review: only the time is missing: {cr}");
    let (s, e) =
        first.post_json("/api/v1/topics/sched/versions", &json!({"data": "v2", "at": "2001-01-01T00:00:00Z"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_request")), "{e}");
    // A second one is cancelled before its time.
    let (_, cancelled) = first.post_json("/api/v1/topics/sched/versions", &json!({"data": "never", "at": at})).await;
    let (s, w) = act(&first, "e2e-unused", &cancelled["id"], "withdraw", json!({})).await;
    assert_eq!(s, 401, "{w}");
    let (s, w) = first.post_json(&format!("/api/v1/change-requests/{}/withdraw", cancelled["id"]), &json!({})).await;
    assert_eq!((s, w["state"].as_str()), (200, Some("withdrawn")));
    // A draft waiting for its time is not released beside its request.
    let draft = cr["draft_id"].clone();
    let r = first
        .admin(Method::POST, &format!("/api/v1/topics/sched/drafts/{draft}/release"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 409, "invalid_state").await;

    // The only server goes away before the time; the time passes; nothing applied it.
    first.imprint().finish_shutdown().await;
    clock.advance(chrono::Duration::minutes(61));
    assert_eq!(first.versions_in_db("sched").await, 1);
    // A new server applies it from Postgres, once.
    let second = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    let id = cr["id"].clone();
    let done = eventually("the scheduled release is applied", || async {
        let (_, r) = second.get_json(&format!("/api/v1/change-requests/{id}")).await;
        (r["state"] == "applied").then_some(r)
    })
    .await;
    assert_eq!(done["applied_version"], 2);
    assert_eq!(second.versions_in_db("sched").await, 2, "the withdrawn one never ran");
    eventually("the scheduled release is served", || async {
        (resolve(&second, "sched").await["version"] == 2).then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_scheduled_release_without_its_approvals_expires_and_says_so(pool: sqlx::PgPool) {
    let clock = ManualClock::new(chrono::Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    let (alice, _bob, _carol) = reviewed_topic(&app, "late", 2).await;
    let at = clock.now() + chrono::Duration::minutes(5);
    let (s, cr) = app
        .req(Method::POST, "/api/v1/topics/late/versions")
        .bearer_auth(&alice)
        .json(&json!({"data": "v2", "at": at}))
        .send_json()
        .await;
    assert_eq!((s, cr["state"].as_str()), (202, Some("pending")), "{cr}");
    clock.advance(chrono::Duration::minutes(6));
    let id = cr["id"].clone();
    let r = eventually("the request expires", || async {
        let (_, r) = app.get_json(&format!("/api/v1/change-requests/{id}")).await;
        (r["state"] == "expired").then_some(r)
    })
    .await;
    assert!(r["reason"].as_str().unwrap().contains("before its approvals"), "{r}");
    assert_eq!(app.versions_in_db("late").await, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_release_in_a_freeze_is_refused_a_break_glass_goes_through_flagged_and_a_pin_works(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    subscribe_all(&app).await;
    app.create_topic("fz").await;
    app.publish("fz", json!({"data": "v1"})).await;
    let now = chrono::Utc::now();
    let (s, f) = app
        .post_json("/api/v1/freezes", &json!({"name": "year end", "from": now - chrono::Duration::hours(1), "to": now + chrono::Duration::hours(1)}))
        .await;
    assert_eq!(s, 201, "{f}");
    assert_eq!((f["active"].as_bool(), f["scope"].as_str()), (Some(true), Some("global")));
    // Bad windows are refused clearly.
    for bad in [
        json!({"name": "x", "from": now}),
        json!({"name": "x", "recurring": {"days": [], "from": "00:00", "to": "01:00", "tz": "UTC"}}),
        json!({"name": "x", "recurring": {"days": ["sat"], "from": "00:00", "to": "01:00", "tz": "Mars/Base"}}),
        json!({"name": "", "from": now, "to": now + chrono::Duration::hours(1)}),
    ] {
        let (s, e) = app.post_json("/api/v1/freezes", &bad).await;
        assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {e}");
    }
    let payments = app.token("pay", Some("payments")).await;
    let r = app
        .req(Method::POST, "/api/v1/freezes")
        .bearer_auth(&payments)
        .json(&json!({"name": "mine", "from": now, "to": now + chrono::Duration::hours(1)}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    let r = app
        .req(Method::POST, "/api/v1/topics/fz/versions")
        .bearer_auth(&payments)
        .json(&json!({"data": "v2"}))
        .send()
        .await
        .unwrap();
    let e = assert_error(r, 423, "change_frozen").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("year end"), "names the window: {e}");
    assert_eq!(app.versions_in_db("fz").await, 1);
    // A publish released to nobody is no release: allowed.
    let (s, _) =
        app.post_json("/api/v1/topics/fz/versions", &json!({"data": "dark", "scopes": [], "rollout": null})).await;
    assert_eq!(s, 201);
    // Break glass: admins only, with a reason.
    let r = app
        .req(Method::POST, "/api/v1/topics/fz/versions")
        .bearer_auth(&payments)
        .json(&json!({"data": "v3", "break_glass": "outage"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let (s, e) = app.post_json("/api/v1/topics/fz/versions", &json!({"data": "v3", "break_glass": " "})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_request")));
    let (s, v) =
        app.post_json("/api/v1/topics/fz/versions", &json!({"data": "v3", "break_glass": "INC-42 hotfix"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["version"], 3);
    let audit = audit_actions(&pool, "fz").await;
    let glass = audit.iter().find(|(a, _)| a == "change.break_glass").expect("break glass audited");
    assert_eq!(glass.1["reason"], "INC-42 hotfix");
    let publish = audit.iter().rfind(|(a, _)| a == "version.publish").unwrap();
    assert_eq!(publish.1["break_glass"], "INC-42 hotfix", "the version's publish is flagged");
    assert!(events(&pool).await.contains(&"change.break_glass".to_string()));

    // Pins and unpins are how incidents are mitigated: allowed during the freeze.
    let r = app
        .admin(Method::PUT, "/api/v1/topics/fz/pins")
        .json(&json!({"selector": {"region": "eu"}, "version": 1, "reason": "roll back"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(resolve(&app, "fz").await["version"], 1);

    // The overview's banner: the topic's active freezes.
    let (s, active) = app.get_json("/api/v1/topics/fz/freezes").await;
    assert_eq!(s, 200);
    assert_eq!(active["freezes"][0]["name"], "year end");
    // A team's window holds only that team's topics; deleted, releases go again.
    let (s, _) = app.admin(Method::DELETE, &format!("/api/v1/freezes/{}", f["id"])).send_json().await;
    assert_eq!(s, 204);
    let (s, team) = app
        .post_json("/api/v1/freezes", &json!({"name": "ops weekend", "team": "ops", "recurring": {"days": ["mon","tue","wed","thu","fri","sat","sun"], "from": "00:00", "to": "00:00", "tz": "UTC"}}))
        .await;
    assert_eq!(s, 400, "from and to differ: {team}");
    let (s, team) = app
        .post_json("/api/v1/freezes", &json!({"name": "ops always", "team": "ops", "recurring": {"days": ["mon","tue","wed","thu","fri","sat","sun"], "from": "00:00", "to": "23:59", "tz": "Europe/Berlin"}}))
        .await;
    assert_eq!(s, 201, "{team}");
    let (s, _) = app.post_json("/api/v1/topics/fz/versions", &json!({"data": "v4"})).await;
    assert_eq!(s, 201, "payments' topic is not in ops' freeze");
}

async fn resolve_for(app: &TestApp, topic: &str, labels: &str) -> Value {
    app.req(Method::GET, &format!("/api/v1/topics/{topic}/resolve?labels={labels}")).json_body().await
}

/// The resolution once it satisfies `ok`: the serving state follows a change applied by the
/// scheduler shortly after the change request is marked applied, not in the same instant.
async fn resolve_when(app: &TestApp, topic: &str, labels: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("{topic} resolves as expected for {labels}"), || async {
        let r = resolve_for(app, topic, labels).await;
        ok(&r).then_some(r)
    })
    .await
}

fn one_stage(selector: Value) -> Value {
    json!([{"selector": selector, "wait_s": 600}])
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_freeze_holds_scope_adds_and_rollout_starts_a_break_glass_passes_flagged_and_pins_work(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    subscribe_all(&app).await;
    app.create_topic("fzs").await;
    app.publish("fzs", json!({"data": "v1"})).await;
    let (s, _) =
        app.post_json("/api/v1/topics/fzs/versions", &json!({"data": "v2", "scopes": [], "rollout": null})).await;
    assert_eq!(s, 201);
    let now = chrono::Utc::now();
    let (s, f) = app
        .post_json("/api/v1/freezes", &json!({"name": "launch week", "from": now - chrono::Duration::hours(1), "to": now + chrono::Duration::hours(1)}))
        .await;
    assert_eq!(s, 201, "{f}");
    let payments = app.token("pay", Some("payments")).await;

    // A scope add and a rollout start are releases: refused, naming the window; nothing changes.
    let r = app
        .req(Method::POST, "/api/v1/topics/fzs/versions/2/scopes")
        .bearer_auth(&payments)
        .json(&json!({"selector": {"region": "eu"}}))
        .send()
        .await
        .unwrap();
    let e = assert_error(r, 423, "change_frozen").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("launch week"), "{e}");
    let r = app
        .req(Method::POST, "/api/v1/topics/fzs/rollouts")
        .bearer_auth(&payments)
        .json(&json!({"version": 2, "stages": one_stage(json!({"region": "eu"}))}))
        .send()
        .await
        .unwrap();
    assert_error(r, 423, "change_frozen").await;
    assert_eq!(resolve_for(&app, "fzs", "region=eu").await["version"], 1);
    let (_, rollouts) = app.get_json("/api/v1/topics/fzs/rollouts").await;
    assert_eq!(rollouts["rollouts"], json!([]), "no rollout started: {rollouts}");

    // Break glass: admins only, with a reason.
    let r = app
        .req(Method::POST, "/api/v1/topics/fzs/versions/2/scopes")
        .bearer_auth(&payments)
        .json(&json!({"selector": {"region": "eu"}, "break_glass": "INC-9"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let (s, e) = app
        .post_json("/api/v1/topics/fzs/versions/2/scopes", &json!({"selector": {"region": "eu"}, "break_glass": " "}))
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_request")), "{e}");
    let (s, scope) = app
        .post_json(
            "/api/v1/topics/fzs/versions/2/scopes",
            &json!({"selector": {"region": "eu"}, "break_glass": "INC-9"}),
        )
        .await;
    assert_eq!(s, 201, "{scope}");
    assert_eq!(resolve_for(&app, "fzs", "region=eu").await["version"], 2);
    let (s, _) =
        app.post_json("/api/v1/topics/fzs/versions", &json!({"data": "v3", "scopes": [], "rollout": null})).await;
    assert_eq!(s, 201);
    let (s, ro) = app
        .post_json(
            "/api/v1/topics/fzs/rollouts",
            &json!({"version": 3, "stages": one_stage(json!({"region": "us"})), "break_glass": "INC-10"}),
        )
        .await;
    assert_eq!(s, 201, "{ro}");
    assert_eq!(resolve_for(&app, "fzs", "region=us").await["version"], 3, "stage 1 added at once");

    let audit = audit_actions(&pool, "fzs").await;
    let glass: Vec<&Value> = audit.iter().filter(|(a, _)| a == "change.break_glass").map(|(_, d)| d).collect();
    assert_eq!(glass.len(), 2, "{audit:?}");
    assert_eq!((glass[0]["kind"].as_str(), glass[0]["reason"].as_str()), (Some("scope"), Some("INC-9")));
    assert_eq!((glass[1]["kind"].as_str(), glass[1]["reason"].as_str()), (Some("rollout"), Some("INC-10")));
    let added = audit.iter().find(|(a, _)| a == "scope.add").expect("scope.add audited");
    assert_eq!(added.1["break_glass"], "INC-9", "the scope add is flagged: {added:?}");
    let ev = events(&pool).await;
    assert_eq!(ev.iter().filter(|e| *e == "change.break_glass").count(), 2, "{ev:?}");

    // Pins and unpins are how incidents are mitigated: never held by a freeze.
    let r = app
        .req(Method::PUT, "/api/v1/topics/fzs/pins")
        .bearer_auth(&payments)
        .json(&json!({"selector": {"region": "eu"}, "version": 1, "reason": "roll back"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(resolve_for(&app, "fzs", "region=eu").await["version"], 1);
    let r = app
        .req(Method::DELETE, "/api/v1/topics/fzs/pins?selector=region=eu")
        .bearer_auth(&payments)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(resolve_for(&app, "fzs", "region=eu").await["version"], 2);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn on_a_reviewed_topic_scope_adds_rollout_starts_and_pins_are_change_requests(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    subscribe_all(&app).await;
    let (alice, bob, carol) = reviewed_topic(&app, "revs", 2).await;
    // Released to nobody is not a release: no review.
    let (s, v) = app
        .req(Method::POST, "/api/v1/topics/revs/versions")
        .bearer_auth(&alice)
        .json(&json!({"data": "v2", "scopes": [], "rollout": null}))
        .send_json()
        .await;
    assert_eq!(s, 201, "{v}");

    // A scope add: a request; one approval does not apply it, the author never approves.
    let (s, cr) = app
        .req(Method::POST, "/api/v1/topics/revs/versions/2/scopes")
        .bearer_auth(&alice)
        .json(&json!({"selector": {"region": "eu"}}))
        .send_json()
        .await;
    assert_eq!(s, 202, "{cr}");
    assert_eq!((cr["kind"].as_str(), cr["state"].as_str()), (Some("scope"), Some("pending")), "{cr}");
    assert_eq!(cr["summary"], "add scope region=eu to v2");
    assert_eq!(cr["version"], 2);
    assert!(cr["draft_id"].is_null());
    let id = cr["id"].clone();
    let (s, e) = act(&app, &alice, &id, "approve", json!({})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("forbidden")), "{e}");
    let (s, one) = act(&app, &bob, &id, "approve", json!({})).await;
    assert_eq!((s, one["state"].as_str()), (200, Some("pending")), "{one}");
    assert_eq!(resolve_for(&app, "revs", "region=eu").await["version"], 1, "one approval adds nothing");
    let (s, done) = act(&app, &carol, &id, "approve", json!({})).await;
    assert_eq!(
        (s, done["state"].as_str(), done["applied_version"].as_u64()),
        (200, Some("applied"), Some(2)),
        "{done}"
    );
    assert_eq!(resolve_for(&app, "revs", "region=eu").await["version"], 2);
    let v2: Value = app.req(Method::GET, "/api/v1/topics/revs/versions/2").json_body().await;
    let eu = v2["scopes"].as_array().unwrap().iter().find(|s| s["selector"] == json!({"region": "eu"})).cloned();
    assert_eq!(eu.unwrap()["added_by"], "token:alice", "applied as its author: {v2}");
    let (s, _) = act(&app, &carol, &id, "approve", json!({})).await;
    assert_eq!(s, 409);
    // A request about a version that does not exist is refused at once and stores nothing.
    let r = app
        .req(Method::POST, "/api/v1/topics/revs/versions/99/scopes")
        .bearer_auth(&alice)
        .json(&json!({"selector": {"region": "us"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A rollout start: a request; applied on the second approval.
    let (s, cr) = app
        .req(Method::POST, "/api/v1/topics/revs/rollouts")
        .bearer_auth(&alice)
        .json(&json!({"version": 2, "stages": one_stage(json!({"cluster": "canary"}))}))
        .send_json()
        .await;
    assert_eq!(s, 202, "{cr}");
    assert_eq!((cr["kind"].as_str(), cr["summary"].as_str()), (Some("rollout"), Some("start rollout of v2")));
    let id = cr["id"].clone();
    let (_, rollouts) = app.get_json("/api/v1/topics/revs/rollouts").await;
    assert_eq!(rollouts["rollouts"], json!([]));
    assert_eq!(act(&app, &bob, &id, "approve", json!({})).await.1["state"], "pending");
    assert_eq!(resolve_for(&app, "revs", "cluster=canary").await["version"], 1);
    let (s, done) = act(&app, &carol, &id, "approve", json!({})).await;
    assert_eq!((s, done["state"].as_str()), (200, Some("applied")), "{done}");
    let (_, rollouts) = app.get_json("/api/v1/topics/revs/rollouts").await;
    assert_eq!(rollouts["rollouts"].as_array().unwrap().len(), 1, "{rollouts}");
    assert_eq!(resolve_for(&app, "revs", "cluster=canary").await["version"], 2, "stage 1 added");

    // A pin: a request too (a reviewed release) …
    let (s, cr) = app
        .req(Method::PUT, "/api/v1/topics/revs/pins")
        .bearer_auth(&alice)
        .json(&json!({"selector": {"region": "eu"}, "version": 1, "reason": "v2 breaks eu"}))
        .send_json()
        .await;
    assert_eq!(s, 202, "{cr}");
    assert_eq!((cr["kind"].as_str(), cr["summary"].as_str()), (Some("pin"), Some("pin region=eu to v1")));
    assert_eq!(cr["selector"], json!({"region": "eu"}));
    let id = cr["id"].clone();
    assert_eq!(act(&app, &bob, &id, "approve", json!({})).await.1["state"], "pending");
    assert_eq!(resolve_for(&app, "revs", "region=eu").await["version"], 2);
    assert_eq!(act(&app, &carol, &id, "approve", json!({})).await.1["state"], "applied");
    let r = resolve_for(&app, "revs", "region=eu").await;
    assert_eq!((r["version"].as_u64(), r["pinned"].as_bool()), (Some(1), Some(true)), "{r}");
    // … but an admin's break glass pins now (incidents), and only an admin's.
    let r = app
        .req(Method::PUT, "/api/v1/topics/revs/pins")
        .bearer_auth(&alice)
        .json(&json!({"selector": {"region": "us"}, "version": 1, "reason": "x", "break_glass": "INC-1"}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let (s, pin) = app
        .admin(Method::PUT, "/api/v1/topics/revs/pins")
        .json(&json!({"selector": {"region": "us"}, "version": 1, "reason": "rollback", "break_glass": "INC-1"}))
        .send_json()
        .await;
    assert_eq!(s, 200, "{pin}");
    assert_eq!(resolve_for(&app, "revs", "region=us").await["pinned"], true);
    // An unpin is no release: done at once.
    let r = app
        .req(Method::DELETE, "/api/v1/topics/revs/pins?selector=region=eu")
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(resolve_for(&app, "revs", "region=eu").await["version"], 2);

    let audit = audit_actions(&pool, "revs").await;
    let applies: Vec<&str> =
        audit.iter().filter(|(a, _)| a == "change.apply").filter_map(|(_, d)| d["kind"].as_str()).collect();
    assert_eq!(applies, ["scope", "rollout", "pin"], "each applied once: {audit:?}");
    let glass = audit.iter().find(|(a, _)| a == "change.break_glass").expect("the pin's break glass");
    assert_eq!(glass.1["kind"], "pin");
    let listed = app.req(Method::GET, "/api/v1/change-requests?topic=revs").bearer_auth(&bob).json_body().await;
    let kinds: Vec<&str> =
        listed["change_requests"].as_array().unwrap().iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["pin", "rollout", "scope"], "{listed}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn scheduled_scope_adds_pins_and_unpins_apply_at_their_time(pool: sqlx::PgPool) {
    let clock = ManualClock::new(chrono::Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    app.create_topic("sch").await;
    app.publish("sch", json!({"data": "v1"})).await;
    let (s, _) =
        app.post_json("/api/v1/topics/sch/versions", &json!({"data": "v2", "scopes": [], "rollout": null})).await;
    assert_eq!(s, 201);
    let at = clock.now() + chrono::Duration::hours(1);
    let later = at + chrono::Duration::hours(1);

    let (s, scope) =
        app.post_json("/api/v1/topics/sch/versions/2/scopes", &json!({"selector": {"region": "eu"}, "at": at})).await;
    assert_eq!((s, scope["state"].as_str(), scope["kind"].as_str()), (202, Some("approved"), Some("scope")), "{scope}");
    let (s, pin) = app
        .admin(Method::PUT, "/api/v1/topics/sch/pins")
        .json(&json!({"selector": {"region": "us"}, "version": 2, "reason": "early us", "at": at}))
        .send_json()
        .await;
    assert_eq!((s, pin["kind"].as_str()), (202, Some("pin")), "{pin}");
    let (s, never) = app
        .admin(Method::PUT, "/api/v1/topics/sch/pins")
        .json(&json!({"selector": {"region": "cn"}, "version": 2, "reason": "no", "at": at}))
        .send_json()
        .await;
    assert_eq!(s, 202, "{never}");
    let (s, w) = app.post_json(&format!("/api/v1/change-requests/{}/withdraw", never["id"]), &json!({})).await;
    assert_eq!((s, w["state"].as_str()), (200, Some("withdrawn")), "cancellable until its time");
    // An unpin at a later time, of a pin set now.
    let (s, _) = app
        .admin(Method::PUT, "/api/v1/topics/sch/pins")
        .json(&json!({"selector": {"region": "ap"}, "version": 1, "reason": "hold ap"}))
        .send_json()
        .await;
    assert_eq!(s, 200);
    let r = app
        .admin(
            Method::DELETE,
            &format!(
                "/api/v1/topics/sch/pins?selector=region=ap&at={}",
                later.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let unpin: Value = r.json().await.unwrap();
    assert_eq!((unpin["kind"].as_str(), unpin["summary"].as_str()), (Some("unpin"), Some("unpin region=ap")));
    // Bad times and a break glass with a time are refused, storing nothing.
    let (s, e) = app
        .post_json(
            "/api/v1/topics/sch/versions/2/scopes",
            &json!({"selector": {"region": "xx"}, "at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_request")), "{e}");
    let (s, e) = app
        .post_json(
            "/api/v1/topics/sch/rollouts",
            &json!({"version": 2, "stages": one_stage(json!({"region": "xx"})), "at": at, "break_glass": "now"}),
        )
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_request")), "{e}");
    let r = app.admin(Method::DELETE, "/api/v1/topics/sch/pins?selector=region=ap&at=tomorrow").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM change_requests WHERE state IN ('pending', 'approved')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open, 3, "scope, pin, unpin");
    assert_eq!(resolve_for(&app, "sch", "region=eu").await["version"], 1, "not before its time");

    clock.advance(chrono::Duration::minutes(61));
    for (what, r) in [("scope", &scope), ("pin", &pin)] {
        let id = r["id"].clone();
        eventually(&format!("the scheduled {what} is applied"), || async {
            let (_, r) = app.get_json(&format!("/api/v1/change-requests/{id}")).await;
            (r["state"] == "applied").then_some(r)
        })
        .await;
    }
    resolve_when(&app, "sch", "region=eu", |r| r["version"] == 2).await;
    let us = resolve_when(&app, "sch", "region=us", |r| r["pinned"] == true).await;
    assert_eq!((us["version"].as_u64(), us["pinned"].as_bool()), (Some(2), Some(true)), "{us}");
    assert_eq!(resolve_for(&app, "sch", "region=cn").await["version"], 1, "the withdrawn pin never ran");
    let (_, u) = app.get_json(&format!("/api/v1/change-requests/{}", unpin["id"])).await;
    assert_eq!(u["state"], "approved", "its time has not come: {u}");
    assert_eq!(resolve_for(&app, "sch", "region=ap").await["pinned"], true);

    clock.advance(chrono::Duration::minutes(61));
    let id = unpin["id"].clone();
    eventually("the scheduled unpin is applied", || async {
        let (_, r) = app.get_json(&format!("/api/v1/change-requests/{id}")).await;
        (r["state"] == "applied").then_some(r)
    })
    .await;
    let ap = resolve_when(&app, "sch", "region=ap", |r| r["pinned"] == false).await;
    assert_eq!((ap["version"].as_u64(), ap["pinned"].as_bool()), (Some(1), Some(false)), "{ap}");
    let applies: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'change.apply'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applies, 3, "each once");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_scheduled_pin_on_a_reviewed_topic_needs_its_approvals_before_its_time(pool: sqlx::PgPool) {
    let clock = ManualClock::new(chrono::Utc::now());
    let app = spawn_app_clocked(pool.clone(), pool.clone(), |_| {}, std::sync::Arc::new(clock.clone())).await;
    let (alice, bob, _carol) = reviewed_topic(&app, "latepin", 2).await;
    let at = clock.now() + chrono::Duration::minutes(5);
    let (s, cr) = app
        .req(Method::PUT, "/api/v1/topics/latepin/pins")
        .bearer_auth(&alice)
        .json(&json!({"selector": {"region": "eu"}, "version": 1, "reason": "hold", "at": at}))
        .send_json()
        .await;
    assert_eq!((s, cr["state"].as_str(), cr["kind"].as_str()), (202, Some("pending"), Some("pin")), "{cr}");
    let id = cr["id"].clone();
    assert_eq!(act(&app, &bob, &id, "approve", json!({})).await.1["state"], "pending");
    clock.advance(chrono::Duration::minutes(6));
    let r = eventually("the pin request expires", || async {
        let (_, r) = app.get_json(&format!("/api/v1/change-requests/{id}")).await;
        (r["state"] == "expired").then_some(r)
    })
    .await;
    assert!(r["reason"].as_str().unwrap().contains("before its approvals"), "{r}");
    assert_eq!(resolve_for(&app, "latepin", "region=eu").await["pinned"], false, "it did not run");
}
