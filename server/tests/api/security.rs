//! The second security review (issue 19): what is held open is bounded by what exists and
//! by the caller, revocation reaches what is held open, payload bytes are served inert,
//! and unknown tokens cost no query each.
use futures::future::join_all;
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::time::Duration;

fn made_up_topics(n: usize, salt: usize) -> Value {
    let mut topics = Map::new();
    for i in 0..n {
        topics.insert(format!("made.up.{salt}.{i}"), Value::Null);
    }
    Value::Object(topics)
}

/// The review's leak: long polls naming 1 500 made-up topics each registered a waiter
/// under every name, and names that never change were never removed. Now made-up names
/// hold one entry per poll, however many it sends, and nothing once the poll ends.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn long_polls_of_made_up_topics_hold_one_entry_each(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("real.one").await;
    const POLLS: usize = 40;
    let polls: Vec<_> = (0..POLLS)
        .map(|i| {
            let mut topics = made_up_topics(1500, i);
            topics["real.one"] = Value::Null;
            app.req(Method::POST, "/api/v1/poll")
                .json(&json!({"consumer": {"instance": format!("i{i}")}, "topics": topics, "wait_ms": 60000}))
                .send()
        })
        .collect();
    let parked = tokio::spawn(join_all(polls));
    eventually("every poll is parked", || async { app.imprint().state().waiter_entries().1 >= POLLS }).await;
    let (per_topic, newcomers) = app.imprint().state().waiter_entries();
    assert_eq!(per_topic, POLLS, "one entry per poll on the one topic that exists");
    assert_eq!(newcomers, POLLS, "one entry per poll for all its made-up names");
    // A publish answers them all; then nothing is left registered.
    app.publish("real.one", json!({"data": "x"})).await;
    for r in parked.await.unwrap() {
        let body: Value = r.unwrap().json().await.unwrap();
        assert_eq!(body["updates"]["real.one"]["version"], 1);
        assert_eq!(body["missing"].as_object().unwrap().len(), 1500);
    }
    // The next registrations prune what the ended polls left.
    for i in 0..100 {
        let _ = app.imprint().state().waiter([format!("made.up.{i}")]);
    }
    let (per_topic, newcomers) = app.imprint().state().waiter_entries();
    assert!(per_topic <= POLLS && newcomers <= 2 * 64 + 1, "{per_topic} {newcomers}");
}

/// A poll waiting for a topic that does not exist yet gets its first version as soon
/// as it is published (its newcomers entry becomes a watch on the topic).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_long_poll_follows_a_topic_that_appears_while_it_waits(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let poll = app
        .req(Method::POST, "/api/v1/poll")
        .json(&json!({"consumer": {"instance": "early"}, "topics": {"later.topic": null}, "wait_ms": 60000}))
        .send();
    let poll = tokio::spawn(poll);
    eventually("parked", || async { app.imprint().state().waiter_entries().1 == 1 }).await;
    app.create_topic("later.topic").await;
    eventually("follows the new topic", || async { app.imprint().state().waiter_entries().0 == 1 }).await;
    app.publish("later.topic", json!({"data": "first"})).await;
    let body: Value = poll.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(body["updates"]["later.topic"]["version"], 1, "{body}");
}

/// The open-long-poll caps bound memory and each anonymous address, not only sockets:
/// past them a long poll is answered at once as a short poll with a backoff.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn long_poll_caps_bound_memory_and_each_anonymous_address(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| {
        c.max_long_poll_bytes = 64 * 1024;
        c.max_long_polls_per_address = 2;
    })
    .await;
    app.create_topic("capped").await;
    let long = |instance: &str, topics: Value| {
        app.req(Method::POST, "/api/v1/poll")
            .json(&json!({"consumer": {"instance": instance}, "topics": topics, "wait_ms": 60000}))
    };
    // A poll whose request alone is more than the memory budget is not held.
    let r: Value = long("big", made_up_topics(1500, 0)).json_body().await;
    assert!(r["poll_after_ms"].as_u64().unwrap() >= 5000, "{r}");
    // Two parked polls from one address; the third is answered at once.
    let parked: Vec<_> = (0..2).map(|i| tokio::spawn(long(&format!("p{i}"), json!({"capped": null})).send())).collect();
    eventually("two parked", || async { app.imprint().state().waiter_entries().0 == 2 }).await;
    let r: Value = long("third", json!({"capped": null})).json_body().await;
    assert!(r["poll_after_ms"].as_u64().unwrap() >= 5000, "{r}");
    // A poll with a token is not counted against the address.
    let token = app.consumer_token("fleet", None, &[], &[]).await;
    let with_token = tokio::spawn(long("tokened", json!({"capped": null})).bearer_auth(token).send());
    eventually("the token's poll parks too", || async { app.imprint().state().waiter_entries().0 == 3 }).await;
    app.publish("capped", json!({"data": "x"})).await;
    for p in parked.into_iter().chain([with_token]) {
        let body: Value = p.await.unwrap().unwrap().json().await.unwrap();
        assert_eq!(body["updates"]["capped"]["version"], 1, "{body}");
    }
}

/// A token revoked elsewhere (the `imprint-server token revoke` command, another server)
/// ends the long polls it holds open within seconds, with 401.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn revoking_a_token_ends_its_parked_long_polls(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_topic("revoked.feed").await;
    let token = app.consumer_token("soon-revoked", None, &[], &[]).await;
    let poll = app
        .req(Method::POST, "/api/v1/poll")
        .bearer_auth(&token)
        .json(&json!({"consumer": {"instance": "n1"}, "topics": {"revoked.feed": null}, "wait_ms": 60000}))
        .send();
    let poll = tokio::spawn(poll);
    let kept = app.consumer_token("still-valid", None, &[], &[]).await;
    let other = app
        .req(Method::POST, "/api/v1/poll")
        .bearer_auth(&kept)
        .json(&json!({"consumer": {"instance": "n2"}, "topics": {"revoked.feed": null}, "wait_ms": 60000}))
        .send();
    let other = tokio::spawn(other);
    eventually("parked", || async { app.imprint().state().waiter_entries().0 == 2 }).await;
    app.imprint().revoke_token(&imprint_service::Caller::System, "soon-revoked").await.unwrap();
    let r = poll.await.unwrap().unwrap();
    assert_error(r, 401, "unauthorized").await;
    // The other token's poll goes on waiting, and gets the next publish.
    app.publish("revoked.feed", json!({"data": "x"})).await;
    let body: Value = other.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(body["updates"]["revoked.feed"]["version"], 1, "{body}");
}

/// A flood of made-up bearer tokens: each is looked up once, then refused from memory
/// (shown by taking the database away: the same token is still refused with 401, a new
/// one cannot be looked up).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn unknown_tokens_are_refused_without_a_query_each(pool: sqlx::PgPool) {
    let serving = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let app = spawn_app_with(serving.clone(), pool.clone()).await;
    for _ in 0..3 {
        let r = app.req(Method::GET, "/api/v1/topics").bearer_auth("imp_made_up_token").send().await.unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    serving.close().await;
    let r = app.req(Method::GET, "/api/v1/topics").bearer_auth("imp_made_up_token").send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let r = app.req(Method::GET, "/api/v1/topics").bearer_auth("imp_another_made_up_token").send().await.unwrap();
    assert_eq!(r.status(), 503, "a token never seen needs the database");
}

/// Payload bytes are inert on the console's origin: an HTML or SVG payload is a
/// sandboxed, unsniffed download; JSON stays inline but sandboxed too.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn payloads_are_served_inert_whatever_their_type(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("active.content").await;
    let cases = [
        ("text/html", Some("attachment")),
        ("image/svg+xml", Some("attachment")),
        ("application/xhtml+xml", Some("attachment")),
        ("text/html; charset=utf-8", Some("attachment")),
        ("application/json", None),
    ];
    for (n, (content_type, disposition)) in cases.iter().enumerate() {
        let r = app
            .admin(Method::POST, "/api/v1/topics/active.content/versions")
            .json(&json!({"data": "<script>alert(document.cookie)</script>", "content_type": content_type}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{content_type}");
        let v = n + 1;
        for path in
            [format!("/api/v1/topics/active.content/versions/{v}/data"), "/api/v1/topics/active.content/latest".into()]
        {
            let r = app.req(Method::GET, &path).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let h = r.headers();
            assert_eq!(h["content-type"], *content_type, "{path}");
            assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("sandbox") && csp.contains("default-src 'none'"), "{path}: {csp}");
            assert_eq!(h.get("content-disposition").map(|v| v.to_str().unwrap()), *disposition, "{content_type}");
        }
    }
}

/// Every console page carries the security headers, and its CSP allows exactly the
/// inline scripts Leptos wrote with this response's nonce.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn console_pages_carry_security_headers_with_a_fresh_nonce(pool: sqlx::PgPool) {
    let app = spawn_full_app(pool, "").await;
    let mut nonces = Vec::new();
    for path in ["/login", "/"] {
        let r = app.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        let csp = h["content-security-policy"].to_str().unwrap().to_owned();
        for part in ["frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'", "'wasm-unsafe-eval'"] {
            assert!(csp.contains(part), "{csp}");
        }
        let scripts_may = csp.split(';').find(|d| d.trim().starts_with("script-src")).expect("script-src");
        assert!(!scripts_may.contains("unsafe-inline") && !scripts_may.contains("'unsafe-eval'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "same-origin");
        let nonce = csp.split("'nonce-").nth(1).and_then(|r| r.split('\'').next()).expect("a nonce").to_owned();
        let html = r.text().await.unwrap();
        let scripts = html.matches("<script").count();
        let with_nonce = html.matches(&format!("nonce=\"{nonce}\"")).count();
        let external = html.matches("<script src=").count();
        assert!(with_nonce >= 1, "the hydration script carries the nonce: {html}");
        assert_eq!(scripts, with_nonce + external, "every inline script carries the nonce: {html}");
        nonces.push(nonce);
    }
    assert_ne!(nonces[0], nonces[1], "a nonce is used once");
    // API answers are inert too.
    let r = app.req(Method::GET, "/api/v1/topics").send().await.unwrap();
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
}

/// `IMPRINT_POLL_AUTH=required` and label-bound consumer tokens hold for every read of
/// payloads and versions, not only for polls and `/latest`.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn poll_auth_and_label_bound_tokens_apply_to_every_payload_read(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| c.poll_auth_required = true).await;
    app.create_topic("bound.data").await;
    app.publish("bound.data", json!({"data": "eu only", "scopes": [{"region": "eu"}]})).await;
    let direct = [
        "/api/v1/topics/bound.data/versions",
        "/api/v1/topics/bound.data/versions/1",
        "/api/v1/topics/bound.data/versions/1/data",
    ];
    for path in direct.iter().copied().chain(["/api/v1/topics/bound.data/resolve?labels=region=eu"]) {
        let r = app.req(Method::GET, path).send().await.unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    let us = app.consumer_token("us-nodes", None, &[("region", "us")], &[]).await;
    for path in direct {
        let r = app.req(Method::GET, path).bearer_auth(&us).send().await.unwrap();
        assert_error(r, 403, "forbidden").await;
    }
    let r = app
        .req(Method::GET, "/api/v1/topics/bound.data/resolve?labels=region=eu")
        .bearer_auth(&us)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let (status, body) =
        app.req(Method::GET, "/api/v1/topics/bound.data/resolve?labels=region=us").bearer_auth(&us).send_json().await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], Value::Null, "nothing is released to region=us");
    // An unbound consumer token and publishers read versions as before.
    let any = app.consumer_token("any-node", None, &[], &[]).await;
    for path in direct {
        let r = app.req(Method::GET, path).bearer_auth(&any).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// A cancel with rollback would pin consumers to what they held before the rollout: if
/// retention has purged that version since, it is refused (nothing changes) instead of
/// pinning them onto a payload that no longer exists.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_rollback_never_pins_a_purged_version(pool: sqlx::PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_topic("rb.purged").await;
    app.publish("rb.purged", json!({"data": "v1"})).await;
    app.publish("rb.purged", json!({"data": "v2", "scopes": []})).await;
    let ro: Value = app
        .admin(Method::POST, "/api/v1/topics/rb.purged/rollouts")
        .json(&json!({"version": 2, "stages": [{"selector": {"cluster": "canary"}, "wait_s": 3600}, {"selector": {}, "wait_s": 0}]}))
        .json_body().await;
    let id = &ro["id"];
    sqlx::query(
        "UPDATE versions v SET purged_at = now() FROM topics t WHERE t.id = v.topic_id AND t.name = 'rb.purged' AND v.version = 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let cancel = |body: Value| {
        app.admin(Method::POST, &format!("/api/v1/topics/rb.purged/rollouts/{id}/cancel")).json(&body).send()
    };
    let body = assert_error(cancel(json!({"rollback": true})).await.unwrap(), 409, "invalid_state").await;
    assert!(body.to_string().contains("purged"), "{body}");
    let pins: Value = app.req(Method::GET, "/api/v1/topics/rb.purged/pins").json_body().await;
    assert_eq!(pins["pins"].as_array().unwrap().len(), 0, "nothing was pinned");
    let r = cancel(json!({"rollback": false})).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The console's live stream with `topics=*` names only topics its user may read: a
/// change to another team's restricted topic is never announced to them.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_live_stream_never_names_restricted_topics_the_user_may_not_read(pool: sqlx::PgPool) {
    use futures::StreamExt;
    let app = spawn_full_app(pool, "").await;
    let admin = imprint_service::Caller::System;
    app.imprint().create_team(&admin, "blue", "").await.unwrap();
    app.imprint().create_user(&admin, "bob", "bob-password-123456", false).await.unwrap();
    app.imprint().set_team_member(&admin, "blue", "bob", true).await.unwrap();
    app.create_topic_with(json!({"name": "red.hidden", "owner": "red", "restricted": true})).await;
    app.create_topic_with(json!({"name": "blue.visible", "owner": "blue"})).await;
    // Sign in as bob through the console's own form.
    let login = app.req(Method::GET, "/login").send().await.unwrap().text().await.unwrap();
    let action = login
        .split("action=\"")
        .filter_map(|s| s.split('"').next())
        .find(|a| a.contains("sign_in"))
        .expect("the sign-in form")
        .to_owned();
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirects
        .post(app.url(&action))
        .header("origin", format!("http://{}", app.addr))
        .form(&[("username", "bob"), ("password", "bob-password-123456")])
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("imprint_session="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let events = app.req(Method::GET, "/console/events?topics=*").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(events.status(), 200);
    let mut body = events.bytes_stream();
    let first = body.next().await.expect("ready").unwrap();
    assert!(String::from_utf8_lossy(&first).contains("ready"));
    app.publish("red.hidden", json!({"data": "secret"})).await;
    app.publish("blue.visible", json!({"data": "open"})).await;
    let mut seen = String::new();
    while !seen.contains("blue.visible") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next()).await.expect("an event").expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(!seen.contains("red.hidden"), "{seen}");
}

/// With `IMPRINT_METRICS_ADDR` set, `/metrics` is not on the public listener (404); the
/// metrics router serves it on its own.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn metrics_can_leave_the_public_listener(pool: sqlx::PgPool) {
    let app = spawn_app_with_settings(pool, |s| s.metrics_addr = Some(([127, 0, 0, 1], 0).into())).await;
    let r = app.req(Method::GET, "/metrics").send().await.unwrap();
    assert_error(r, 404, "not_found").await;
    let addr = app.metrics_addr.expect("the metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("imprint_http_requests_total"), "{text}");
    let r = reqwest::get(format!("http://{addr}/api/v1/topics")).await.unwrap();
    assert_eq!(r.status(), 404, "the metrics listener serves nothing else");
}
