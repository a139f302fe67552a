//! Trust on the consumer path and hardening (issue 10): consumer credentials, restricted
//! topics, gates that ignore forged reports, limits, the proxy-aware sign-in throttle,
//! races, graceful shutdown, HTTP details and pagination — all through real HTTP.
use imprint_testkit::{
    assert_error, eventually, spawn_app, spawn_app_configured, spawn_full_app, SendJson, ADMIN_PASSWORD, ADMIN_TOKEN,
};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn poll_body(instance: &str, labels: Value, topics: Value) -> Value {
    json!({"consumer": {"instance": instance, "labels": labels}, "topics": topics})
}

async fn rollout_state(app: &imprint_testkit::TestApp, topic: &str, id: &Value) -> Value {
    app.req(Method::GET, &format!("/api/v1/topics/{topic}/rollouts/{id}")).json_body().await
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn forged_reports_do_not_move_gates(pool: sqlx::PgPool) {
    // The test writes the consumer audit itself (`flush_audit`), so it knows what the
    // scheduler's gate reads.
    let app = spawn_app_configured(pool.clone(), pool, |c| c.audit_flush_every = Duration::from_secs(3600)).await;
    app.create_topic("g").await;
    app.publish("g", json!({"data": "v1"})).await;
    app.publish("g", json!({"data": "v2", "scopes": []})).await;
    let stages = json!([{"selector": {"cluster": "canary"}, "wait_s": 0, "gate": {"min_applied_ratio": 0.5, "max_failure_ratio": 0.2}},
                        {"selector": {}, "wait_s": 0}]);
    let ro: Value = app
        .admin(Method::POST, "/api/v1/topics/g/rollouts")
        .json(&json!({"version": 2, "stages": stages}))
        .json_body()
        .await;
    let id = ro["id"].clone();
    let token = app.consumer_token("canaries", None, &[("cluster", "canary")], &[]).await;
    // One real canary, holding v1 for now.
    let mut real = poll_body("real-1", json!({"cluster": "canary"}), json!({"g": 1}));
    let r = app.req(Method::POST, "/api/v1/poll").bearer_auth(&token).json(&real).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // An attacker floods made-up canaries claiming success, then failure, and tries to
    // overwrite the real node's row.
    for i in 0..20 {
        let mut b = poll_body(&format!("fake-{i}"), json!({"cluster": "canary"}), json!({"g": 2}));
        b["applied"] = json!({"g": {"version": 2, "ok": i % 2 == 0, "error": "forged"}});
        app.poll(b).await;
    }
    let mut hijack = poll_body("real-1", json!({"cluster": "canary"}), json!({"g": 2}));
    hijack["applied"] = json!({"g": {"version": 2, "ok": false, "error": "forged"}});
    app.poll(hijack).await;
    app.imprint().flush_audit().await.unwrap();
    app.imprint().tick_rollouts().await.unwrap();
    let held = rollout_state(&app, "g", &id).await;
    assert_eq!((held["state"].clone(), held["current_stage"].clone()), (json!("running"), json!(0)), "{held}");
    let consumers: Value = app.req(Method::GET, "/api/v1/topics/g/consumers").json_body().await;
    let rows = consumers["consumers"].as_array().unwrap();
    let real_row = rows.iter().find(|c| c["instance"] == "real-1").expect("real node listed");
    assert_eq!(real_row["authenticated"], true);
    assert_eq!(real_row["version"], 1, "an anonymous poll did not overwrite the real node: {real_row}");
    assert_eq!(real_row["last_error"], Value::Null);
    let fake = rows.iter().find(|c| c["instance"] == "fake-1").expect("forged reports are still recorded");
    assert_eq!(fake["authenticated"], false);

    // The real canary applies v2: the gate (1 of 1 authenticated) opens.
    real["topics"] = json!({"g": 2});
    real["applied"] = json!({"g": {"version": 2, "ok": true}});
    let r = app.req(Method::POST, "/api/v1/poll").bearer_auth(&token).json(&real).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.imprint().flush_audit().await.unwrap();
    eventually("the gate opens", || async { rollout_state(&app, "g", &id).await["state"] == "completed" }).await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn label_bound_tokens_claim_their_labels(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "x"})).await;
    let eu = app.consumer_token("eu-nodes", None, &[("region", "eu-west-1")], &[]).await;
    let post = |body: Value| app.req(Method::POST, "/api/v1/poll").bearer_auth(&eu).json(&body).send();
    let ok = post(poll_body("n1", json!({"region": "eu-west-1", "app": "x"}), json!({"cfg": null}))).await.unwrap();
    assert_eq!(ok.status(), 200);
    let us = post(poll_body("n2", json!({"region": "us-east-1"}), json!({"cfg": null}))).await.unwrap();
    assert_error(us, 403, "forbidden").await;
    let none = post(poll_body("n3", json!({}), json!({"cfg": null}))).await.unwrap();
    assert_error(none, 403, "forbidden").await;
    let r = app.req(Method::GET, "/api/v1/topics/cfg/latest?labels=region=us-east-1").bearer_auth(&eu).send().await;
    assert_error(r.unwrap(), 403, "forbidden").await;
    let r = app.req(Method::GET, "/api/v1/topics/cfg/latest?labels=region=eu-west-1").bearer_auth(&eu).send().await;
    assert_eq!(r.unwrap().status(), 200);
    // A consumer token reads, but never writes.
    let r = app.req(Method::POST, "/api/v1/topics/cfg/versions").bearer_auth(&eu).json(&json!({"data": "y"})).send();
    assert_error(r.await.unwrap(), 403, "forbidden").await;
    assert_eq!(app.versions_in_db("cfg").await, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn restricted_topics_need_a_token_allowed_on_them(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "secret.keys", "owner": "payments", "restricted": true})).await;
    app.create_topic("open.cfg").await;
    app.publish("secret.keys", json!({"data": "k1"})).await;
    app.publish("open.cfg", json!({"data": "o1"})).await;
    let stranger = app.consumer_token("stranger", None, &[], &[]).await;
    let named = app.consumer_token("named", None, &[], &["secret.*"]).await;
    let team = app.token("payments-ci", Some("payments")).await;

    let get = |token: Option<&str>, path: &str| {
        let r = app.req(Method::GET, path);
        match token {
            Some(t) => r.bearer_auth(t).send(),
            None => r.send(),
        }
    };
    for path in
        ["/api/v1/topics/secret.keys", "/api/v1/topics/secret.keys/versions", "/api/v1/topics/secret.keys/latest"]
    {
        assert_error(get(None, path).await.unwrap(), 401, "unauthorized").await;
        assert_error(get(Some(&stranger), path).await.unwrap(), 403, "forbidden").await;
        assert_eq!(get(Some(&named), path).await.unwrap().status(), 200, "{path}");
        assert_eq!(get(Some(&team), path).await.unwrap().status(), 200, "{path}");
    }
    let topics = json!({"secret.keys": null, "open.cfg": null});
    let anon = app.poll(poll_body("a", json!({}), topics.clone())).await;
    assert_eq!(anon["missing"]["secret.keys"], "forbidden", "{anon}");
    assert!(anon["updates"]["open.cfg"].is_object(), "{anon}");
    let r = app.req(Method::POST, "/api/v1/poll").bearer_auth(&named).json(&poll_body("b", json!({}), topics)).send();
    let with_token: Value = r.await.unwrap().json().await.unwrap();
    assert!(with_token["updates"]["secret.keys"].is_object(), "{with_token}");
    // Lists show it only to those who may read it.
    let listed: Value = get(None, "/api/v1/topics").await.unwrap().json().await.unwrap();
    let names: Vec<&str> = listed["topics"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["open.cfg"]);
    // An anonymous poll of a restricted topic leaves no trace in its consumers.
    let c: Value = get(Some(ADMIN_TOKEN), "/api/v1/topics/secret.keys/consumers").await.unwrap().json().await.unwrap();
    assert_eq!(c["consumers"].as_array().unwrap().iter().filter(|c| c["instance"] == "a").count(), 0);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn poll_auth_required_and_bodies_and_long_polls_are_bounded(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| {
        c.poll_auth_required = true;
        c.max_long_polls = 1;
    })
    .await;
    app.create_topic("t").await;
    app.publish("t", json!({"data": "1"})).await;
    let token = app.consumer_token("node", None, &[], &[]).await;
    let r = app.req(Method::POST, "/api/v1/poll").json(&poll_body("x", json!({}), json!({"t": 1}))).send().await;
    assert_error(r.unwrap(), 401, "unauthorized").await;
    // Over 256 KiB of poll: refused before it is read.
    let big = json!({"consumer": {"instance": "x"}, "topics": {"t": 1}, "padding": "p".repeat(300 * 1024)});
    let r = app.req(Method::POST, "/api/v1/poll").bearer_auth(&token).json(&big).send().await;
    assert_error(r.unwrap(), 413, "payload_too_large").await;
    // One long poll may wait; the next answers at once, as a short poll with a backoff.
    let mut waiting = poll_body("w1", json!({}), json!({"t": 1}));
    waiting["wait_ms"] = json!(10_000);
    let first = {
        let req = app.req(Method::POST, "/api/v1/poll").bearer_auth(&token).json(&waiting);
        tokio::spawn(async move { req.send().await })
    };
    eventually("the first long poll is parked", || async { app.imprint().state().waiter_entries().0 == 1 }).await;
    waiting["consumer"]["instance"] = json!("w2");
    let second: Value = app.req(Method::POST, "/api/v1/poll").bearer_auth(&token).json(&waiting).json_body().await;
    assert!(!first.is_finished(), "the second long poll was held (answered after the first, parked before it)");
    assert!(second["poll_after_ms"].as_u64().unwrap() >= 5000, "{second}");
    let first: Value = first.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(first["poll_after_ms"], 0, "the first was a real long poll: {first}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn console_limits_csrf_and_the_proxy_aware_throttle(pool: sqlx::PgPool) {
    let app = spawn_full_app(pool, "127.0.0.1/32").await;
    let login = app.req(Method::GET, "/login").send().await.unwrap().text().await.unwrap();
    let action = login
        .split("action=\"")
        .filter_map(|s| s.split('"').next())
        .find(|a| a.contains("sign_in"))
        .expect("the sign-in form")
        .to_owned();
    let origin = format!("http://{}", app.addr);
    let sign_in = |user: &str, password: &str, forwarded: &str| {
        app.req(Method::POST, &action)
            .header("origin", &origin)
            .header("x-forwarded-for", forwarded)
            .form(&[("username", user), ("password", password)])
            .send()
    };
    // Oversized and cross-site posts are refused before anything else.
    let r = app
        .req(Method::POST, &action)
        .header("origin", &origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "payload_too_large").await;
    let r = app
        .req(Method::POST, &action)
        .header("origin", "https://evil.example")
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let r = app
        .req(Method::POST, &action)
        .header("sec-fetch-site", "cross-site")
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    // The attacker, behind the trusted proxy, guesses five usernames' passwords.
    for i in 0..5 {
        let r = sign_in(&format!("victim{i}"), "wrong-password", "203.0.113.9").await.unwrap();
        // A refusal, not a server error.
        assert_eq!(r.status(), 401);
        let body = r.text().await.unwrap();
        assert!(body.contains("wrong username or password"), "{body}");
    }
    let r = sign_in("victim9", "wrong-password", "203.0.113.9").await.unwrap();
    assert_eq!(r.status(), 429);
    let body = r.text().await.unwrap();
    assert!(body.contains("too many failed sign-in attempts"), "the attacker's address is locked: {body}");
    // A client-written address further left is not believed: still the same client.
    let body = sign_in("victim9", "wrong-password", "10.9.9.9, 203.0.113.9").await.unwrap().text().await.unwrap();
    assert!(body.contains("too many failed sign-in attempts"), "{body}");
    // Everyone else, behind the same proxy, signs in.
    let r = sign_in("admin", ADMIN_PASSWORD, "198.51.100.7").await.unwrap();
    let body = r.text().await.unwrap();
    assert!(!body.contains("too many") && !body.contains("wrong username"), "{body}");
    // An admin lifts the lockout.
    let ip = "203.0.113.9".parse().unwrap();
    let admin = imprint_service::Caller::System;
    assert!(app.imprint().clear_sign_in_lockout(&admin, None, Some(ip)).await.unwrap());
    let body = sign_in("victim9", "wrong-password", "203.0.113.9").await.unwrap().text().await.unwrap();
    assert!(body.contains("wrong username or password"), "{body}");
}

/// The console's sign-in form action (its server function's URL).
async fn sign_in_action(app: &imprint_testkit::TestApp) -> String {
    let login = app.req(Method::GET, "/login").send().await.unwrap().text().await.unwrap();
    login
        .split("action=\"")
        .filter_map(|s| s.split('"').next())
        .find(|a| a.contains("sign_in"))
        .expect("the sign-in form")
        .to_owned()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_sign_in_burst_gets_no_extra_guesses_and_one_address_cannot_lock_admin_out(pool: sqlx::PgPool) {
    let app = spawn_full_app(pool, "127.0.0.1/32").await;
    let action = sign_in_action(&app).await;
    let origin = format!("http://{}", app.addr);
    let sign_in = |user: &str, password: &str, forwarded: &str| {
        app.req(Method::POST, &action)
            .header("origin", &origin)
            .header("x-forwarded-for", forwarded)
            .form(&[("username", user), ("password", password)])
    };
    // Twenty wrong passwords for `admin` at once from one address: no more of them are
    // checked than five sequential ones would be; the rest are refused unchecked.
    let checks_before = app.imprint().sign_in_checks();
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let r = sign_in("admin", "wrong-password", "203.0.113.50");
            tokio::spawn(async move { r.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for b in burst {
        statuses.push(b.await.unwrap());
    }
    let wrong = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(wrong + refused, 20, "{statuses:?}");
    assert!(wrong <= 5, "{wrong} of the burst had their password checked: {statuses:?}");
    assert!(app.imprint().sign_in_checks() - checks_before <= 5);
    let failures = app
        .imprint()
        .audit_log(
            &imprint_service::Caller::System,
            &imprint_service::model::AuditFilter { action: Some("user.sign_in_failed".into()), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(failures.items.len(), wrong, "every checked attempt and no other is a failure");

    // The attacker's address has locked `admin` for itself, even with the right password ...
    for _ in 0..5 {
        if sign_in("admin", "wrong-password", "203.0.113.50").send().await.unwrap().status() == 429 {
            break;
        }
    }
    let r = sign_in("admin", ADMIN_PASSWORD, "203.0.113.50").send().await.unwrap();
    assert_eq!(r.status(), 429);
    // ... not for everyone: the right password from another address signs in.
    let r = sign_in("admin", ADMIN_PASSWORD, "198.51.100.20").send().await.unwrap();
    let body = r.text().await.unwrap();
    assert!(!body.contains("too many") && !body.contains("wrong username"), "{body}");
}

/// Signs in through the console's form and returns the session cookie.
async fn console_session(app: &imprint_testkit::TestApp, user: &str, password: &str) -> String {
    let action = sign_in_action(app).await;
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirects
        .post(app.url(&action))
        .header("origin", format!("http://{}", app.addr))
        .form(&[("username", user), ("password", password)])
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("imprint_session="))
        .unwrap_or_else(|| panic!("{user} signs in: {}", r.status()));
    cookie.split(';').next().unwrap().to_owned()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_audit_log_keeps_restricted_topics_to_their_readers_and_never_shows_apollo_secrets(pool: sqlx::PgPool) {
    let app = spawn_full_app(pool, "").await;
    let system = imprint_service::Caller::System;
    // Red's restricted topic, bound to Apollo with a secret that is changed once; blue's open one.
    app.create_topic_with(json!({"name": "red.vault", "owner": "red", "restricted": true,
        "json_schema": {"type": "object", "title": "red-schema-title"},
        "apollo": {"app_id": "vault", "namespace": "application", "secret": "apollo-first-secret"}}))
        .await;
    let v = app.publish("red.vault", json!({"data": "{\"k\": \"v\"}"})).await;
    let red_sha = v["sha256"].as_str().expect("sha256").to_owned();
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/red.vault")
        .json(&json!({"apollo": {"app_id": "vault", "namespace": "application", "secret": "apollo-second-secret"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.create_topic_with(json!({"name": "blue.open", "owner": "blue"})).await;
    app.publish("blue.open", json!({"data": "{}"})).await;
    let imp = app.imprint();
    imp.create_team(&system, "blue", "").await.unwrap();
    imp.create_user(&system, "bluey", "bluey-password", false).await.unwrap();
    imp.set_team_member(&system, "blue", "bluey", true).await.unwrap();

    // A member of another team: blue's entries, none of red's restricted topic.
    let cookie = console_session(&app, "bluey", "bluey-password").await;
    let page = app.req(Method::GET, "/audit").header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("blue.open"), "{page}");
    for hidden in ["red.vault", red_sha.as_str(), "red-schema-title"] {
        assert!(!page.contains(hidden), "{hidden} is shown to another team: {page}");
    }
    // An admin sees them.
    let cookie = console_session(&app, "admin", ADMIN_PASSWORD).await;
    let page = app.req(Method::GET, "/audit").header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("red.vault") && page.contains(&red_sha), "{page}");
    let all = imp.audit_log(&system, &imprint_service::model::AuditFilter::default()).await.unwrap();
    let update = all.items.iter().find(|e| e.action == "topic.update").expect("the secret change is recorded");
    assert_eq!(update.details["apollo_secret"], "set", "{}", update.details);

    // No form of a secret in any entry: not as given, not hashed.
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT details::text FROM audit_log").fetch_all(&app.pool).await.unwrap();
    for secret in ["apollo-first-secret", "apollo-second-secret"] {
        let md5: String = sqlx::query_scalar("SELECT md5($1)").bind(secret).fetch_one(&app.pool).await.unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
        for row in &rows {
            for form in [secret, md5.as_str(), sha.as_str()] {
                assert!(!row.contains(form), "{form} in {row}");
            }
        }
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn changing_ones_password_on_the_account_page_ends_the_other_sessions(pool: sqlx::PgPool) {
    let app = spawn_full_app(pool, "").await;
    let system = imprint_service::Caller::System;
    app.imprint().create_user(&system, "ada", "adas-first-password", false).await.unwrap();
    let this = console_session(&app, "ada", "adas-first-password").await;
    let other = console_session(&app, "ada", "adas-first-password").await;
    let app = &app;
    let account = |cookie: String| async move {
        let r = app.req(Method::GET, "/account").header("cookie", cookie).send().await.unwrap();
        r.text().await.unwrap()
    };
    let page = account(this.clone()).await;
    assert!(page.contains("Signed in as"), "{page}");
    let action = page
        .split("action=\"")
        .filter_map(|s| s.split('"').next())
        .find(|a| a.contains("change_password"))
        .expect("the change-password form")
        .to_owned();
    // A plain form post, as without JavaScript; the wrong current password is refused.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let post = |current: &'static str| {
        no_redirects
            .post(app.url(&action))
            .header("origin", format!("http://{}", app.addr))
            .header("accept", "text/html")
            .header("referer", app.url("/account"))
            .header("cookie", &this)
            .form(&[
                ("current_password", current),
                ("new_password", "adas-second-password"),
                ("repeat_password", "adas-second-password"),
            ])
            .send()
    };
    let r = post("not-adas-password").await.unwrap();
    let to = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(to.contains("error="), "{} {to}", r.status());
    let r = post("adas-first-password").await.unwrap();
    let to = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(to.starts_with("/account") && to.contains("notice="), "{} {to}", r.status());
    // The session id changed with the password: the answer carries the new cookie.
    let this = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("imprint_session="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .unwrap_or(this);
    assert!(account(this).await.contains("Signed in as"), "the session that changed it goes on");
    assert!(!account(other).await.contains("Signed in as"), "the other session ended");
    console_session(app, "ada", "adas-second-password").await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn concurrent_pins_on_one_selector_never_fail(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("p").await;
    for i in 0..3 {
        app.publish("p", json!({"data": format!("v{i}")})).await;
    }
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let req = app
            .admin(Method::PUT, "/api/v1/topics/p/pins")
            .json(&json!({"selector": {"region": "eu"}, "version": 1 + i % 3, "reason": format!("pin {i}")}));
        tasks.push(tokio::spawn(async move { req.send().await.unwrap().status().as_u16() }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409), "{statuses:?}");
    let pins: Value = app.req(Method::GET, "/api/v1/topics/p/pins").json_body().await;
    assert_eq!(pins["pins"].as_array().unwrap().len(), 1, "one active pin: {pins}");
    let all: Value = app.req(Method::GET, "/api/v1/topics/p/pins?all=true&limit=500").json_body().await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(all["pins"].as_array().unwrap().len(), ok, "every acknowledged pin is in the history");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn weak_and_listed_etags_answer_not_modified(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "big", "owner": "payments", "inline_limit_bytes": 1048576})).await;
    app.publish("big", json!({"data": "small"})).await;
    let large = "x".repeat(100 * 1024); // not held in serving memory
    app.publish("big", json!({"data": large})).await;
    for inm in ["W/\"v2\"", "\"v2\"", "\"nope\", W/\"v2\"", "*"] {
        let r = app.req(Method::GET, "/api/v1/topics/big/latest").header("if-none-match", inm).send().await.unwrap();
        assert_eq!(r.status(), 304, "If-None-Match: {inm}");
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = app.req(Method::GET, "/api/v1/topics/big/latest").header("if-none-match", "W/\"v1\"").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 100 * 1024, "never an empty 200");
}

async fn pages(app: &imprint_testkit::TestApp, path: &str, key: &str) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit=2&cursor={c}"),
            None => format!("{path}{sep}limit=2"),
        };
        let page: Value = app.admin(Method::GET, &url).json_body().await;
        sizes.push(page[key].as_array().unwrap_or_else(|| panic!("{url}: {page}")).len());
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
        assert!(sizes.len() < 10, "{url} pages forever");
    }
    sizes
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn every_list_pages_with_a_cursor(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    for t in ["a", "b", "c", "d"] {
        app.create_topic(t).await;
    }
    for v in 1..=3 {
        app.publish("a", json!({"data": format!("{v}"), "scopes": []})).await;
        let r = app
            .admin(Method::POST, "/api/v1/topics/a/rollouts")
            .json(&json!({"version": v, "stages": [{"selector": {"n": "1"}, "wait_s": 600}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    for (i, sel) in ["x", "y", "z"].iter().enumerate() {
        let r = app
            .admin(Method::PUT, "/api/v1/topics/a/pins")
            .json(&json!({"selector": {"k": sel}, "version": i + 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for i in 0..3 {
        app.poll(poll_body(&format!("n{i}"), json!({}), json!({"a": null}))).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pages(&app, "/api/v1/topics/a/pins", "pins").await, [2, 1]);
    assert_eq!(pages(&app, "/api/v1/topics/a/rollouts", "rollouts").await, [2, 1]);
    assert_eq!(pages(&app, "/api/v1/topics/a/consumers", "consumers").await, [2, 1]);
    assert_eq!(pages(&app, "/api/v1/topics?unused_days=1", "topics").await, [2, 1]);
    assert_eq!(pages(&app, "/api/v1/topics/a/versions", "versions").await, [2, 1]);
    let c: Value = app.req(Method::GET, "/api/v1/topics/a/consumers?limit=2").json_body().await;
    assert_eq!(c["total"], 3, "the total counts every page: {c}");
}

/// A free port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn sigterm_right_after_polls_loses_no_audit_row(pool: sqlx::PgPool) {
    // The real binary, against this test's database.
    let db = pool.connect_options().get_database().expect("database name").to_owned();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("DATABASE_URL {base}"),
    };
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imprint-server"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("IMPRINT_ADDR", format!("127.0.0.1:{port}"))
        .env("IMPRINT_BOOTSTRAP_TOKEN", ADMIN_TOKEN)
        .env("IMPRINT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("LEPTOS_OUTPUT_NAME", "imprint")
        .env("LEPTOS_SITE_ROOT", "target/site")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start imprint");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = format!("{base}/readyz");
    eventually("the server to become ready", || async {
        client.get(&ready).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let r = client
        .post(format!("{base}/api/v1/topics"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "t", "owner": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for i in 0..5 {
        let r = client
            .post(format!("{base}/api/v1/poll"))
            .json(&poll_body(&format!("node-{i}"), json!({}), json!({"t": null})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // At once: no flush interval has passed.
    let killed = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "imprint exited with {status}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM consumers").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 5, "every poll answered before SIGTERM is in the audit");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_binary_refuses_short_bootstrap_tokens_and_writes_the_admin_password_to_a_private_file(pool: sqlx::PgPool) {
    let db = pool.connect_options().get_database().expect("database name").to_owned();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("DATABASE_URL {base}"),
    };
    let home = std::env::temp_dir().join(format!("imprint-admin-file-{}-{db}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let port = free_port();
    let server = |token: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imprint-server"));
        c.arg("serve")
            .env("DATABASE_URL", &url)
            .env("IMPRINT_HOME", &home)
            .env("IMPRINT_ADDR", format!("127.0.0.1:{port}"))
            .env("IMPRINT_BOOTSTRAP_TOKEN", token)
            .env_remove("IMPRINT_ADMIN_PASSWORD")
            .env("LEPTOS_OUTPUT_NAME", "imprint")
            .env("LEPTOS_SITE_ROOT", "target/site")
            .env("RUST_LOG", "info");
        c
    };
    // A short bootstrap token: the server does not start, and says why.
    let out = server("short-token").output().expect("run imprint");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("IMPRINT_BOOTSTRAP_TOKEN") && err.contains("at least 32"), "{err}");
    assert!(!home.join("admin-password").exists(), "nothing was created");

    // First start: the generated password is in a 0600 file, in neither stdout nor the log.
    let child = server(ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start imprint");
    let client = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    eventually("the server to become ready", || async {
        client.get(&ready).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let file = home.join("admin-password");
    let password = std::fs::read_to_string(&file).expect("the password file").trim().to_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(password.len() >= 20);
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains(&password) && !stderr.contains(&password), "the password was printed");
    assert!(stdout.contains(&file.display().to_string()), "the log says where it is: {stdout}");
    let _ = std::fs::remove_dir_all(&home);
}
