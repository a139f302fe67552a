//! The OpenFeature Remote Evaluation Protocol (`/ofrep/v1`) through the real router: the
//! topic setting, values and fields, reasons for scoped releases and pins, the bulk ETag
//! and 304, the protocol's error shapes, auth and restricted topics, the consumer audit
//! and the change event stream.
use imprint_testkit::{assert_error, spawn_app, spawn_app_configured, SendJson, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn eval(app: &TestApp, key: &str, context: Value) -> (u16, Value) {
    app.req(Method::POST, &format!("/ofrep/v1/evaluate/flags/{key}"))
        .json(&json!({"context": context}))
        .send_json()
        .await
}

async fn eval_with(app: &TestApp, token: &str, key: &str, context: Value) -> (u16, Value) {
    app.req(Method::POST, &format!("/ofrep/v1/evaluate/flags/{key}"))
        .bearer_auth(token)
        .json(&json!({"context": context}))
        .send_json()
        .await
}

async fn bulk(app: &TestApp, token: Option<&str>, context: Value, etag: Option<&str>) -> reqwest::Response {
    let mut r = app.req(Method::POST, "/ofrep/v1/evaluate/flags").json(&json!({"context": context}));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(e) = etag {
        r = r.header("if-none-match", e);
    }
    r.send().await.unwrap()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_topic_opts_in_and_is_evaluated_as_a_flag(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let t = app.create_topic_with(json!({"name": "shop.banner", "owner": "shop", "ofrep": {}})).await;
    assert_eq!(t["ofrep"], json!({"flag_key": "shop.banner", "field": null}));
    app.publish("shop.banner", json!({"data": "{\"text\": \"hello\", \"on\": true}"})).await;

    let (status, e) = eval(&app, "shop.banner", json!({"targetingKey": "web-1"})).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["key"], "shop.banner");
    assert_eq!(e["value"], json!({"text": "hello", "on": true}));
    assert_eq!(e["reason"], "STATIC");
    assert_eq!(e["variant"], "v1");
    assert_eq!(e["metadata"], json!({"topic": "shop.banner", "version": 1, "pinned": false}));

    // A flag key of its own and one field of the payload.
    app.create_topic_with(
        json!({"name": "shop.checkout", "owner": "shop", "ofrep": {"flag_key": "new-checkout", "field": "enabled"}}),
    )
    .await;
    app.publish("shop.checkout", json!({"data": "{\"enabled\": true, \"note\": \"x\"}"})).await;
    let (status, e) = eval(&app, "new-checkout", json!({})).await;
    assert_eq!((status, &e["value"]), (200, &json!(true)), "{e}");
    // The topic's own name is not a flag key then.
    let (status, e) = eval(&app, "shop.checkout", json!({})).await;
    assert_eq!((status, e["errorCode"].as_str()), (404, Some("FLAG_NOT_FOUND")), "{e}");
    // No body at all, or no context: evaluated without labels (Python's provider sends `{}`).
    let (status, e) = app.req(Method::POST, "/ofrep/v1/evaluate/flags/new-checkout").json(&json!({})).send_json().await;
    assert_eq!((status, &e["value"]), (200, &json!(true)), "{e}");

    // A key is one topic's: a second binding of it is refused, and so are bad keys and fields.
    for (body, status, code) in [
        (json!({"name": "shop.other", "owner": "shop", "ofrep": {"flag_key": "new-checkout"}}), 409, "conflict"),
        (json!({"name": "shop.bad", "owner": "shop", "ofrep": {"flag_key": "has space"}}), 400, "invalid_request"),
        (json!({"name": "shop.bad", "owner": "shop", "ofrep": {"field": ""}}), 400, "invalid_request"),
        (json!({"name": "shop.bad", "owner": "shop", "ofrep": {"flagkey": "x"}}), 400, "invalid_request"),
    ] {
        let r = app.admin(Method::POST, "/api/v1/topics").json(&body).send().await.unwrap();
        assert_error(r, status, code).await;
    }
    let (status, _) = app.get_json("/api/v1/topics/shop.bad").await;
    assert_eq!(status, 404, "nothing was created");

    // The setting changes and goes by PATCH; null removes it.
    let (status, t) = app
        .admin(Method::PATCH, "/api/v1/topics/shop.banner")
        .json(&json!({"ofrep": {"flag_key": "banner", "field": "text"}}))
        .send_json()
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["ofrep"], json!({"flag_key": "banner", "field": "text"}));
    let (_, e) = eval(&app, "banner", json!({})).await;
    assert_eq!(e["value"], "hello");
    let (status, _) = eval(&app, "shop.banner", json!({})).await;
    assert_eq!(status, 404, "the old key is gone");
    let (status, t) =
        app.admin(Method::PATCH, "/api/v1/topics/shop.banner").json(&json!({"ofrep": null})).send_json().await;
    assert_eq!((status, &t["ofrep"]), (200, &Value::Null), "{t}");
    let (status, e) = eval(&app, "banner", json!({})).await;
    assert_eq!((status, e["errorCode"].as_str()), (404, Some("FLAG_NOT_FOUND")));
    // The key is free again.
    let (status, _) = app
        .admin(Method::PATCH, "/api/v1/topics/shop.checkout")
        .json(&json!({"ofrep": {"flag_key": "banner"}}))
        .send_json()
        .await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn scoped_releases_reach_matching_contexts_and_pins_say_so(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "limits", "owner": "shop", "ofrep": {"field": "max"}})).await;
    // Only a scoped release yet: other contexts get no value (DISABLED: the code's default).
    app.publish("limits", json!({"data": "{\"max\": 5}", "scopes": [{"region": "eu"}]})).await;
    let (status, e) = eval(&app, "limits", json!({"targetingKey": "n1", "region": "us"})).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["reason"], "DISABLED");
    assert_eq!(e["variant"], "none");
    assert!(e.get("value").is_none(), "{e}");

    app.publish("limits", json!({"data": "{\"max\": 10}"})).await;
    app.publish("limits", json!({"data": "{\"max\": 20}", "scopes": [{"region": "eu", "tier": "gold"}]})).await;
    let cases = [
        (json!({"region": "eu", "tier": "gold"}), 20, "TARGETING_MATCH", "v3"),
        // Numbers and booleans are labels as text.
        (json!({"region": "eu", "tier": "gold", "beta": true, "shard": 4}), 20, "TARGETING_MATCH", "v3"),
        (json!({"region": "eu"}), 10, "STATIC", "v2"),
        (json!({"region": "us", "tier": "gold"}), 10, "STATIC", "v2"),
        (json!({}), 10, "STATIC", "v2"),
    ];
    for (ctx, value, reason, variant) in cases {
        let (status, e) = eval(&app, "limits", ctx.clone()).await;
        assert_eq!(status, 200, "{ctx}: {e}");
        assert_eq!(
            (&e["value"], e["reason"].as_str(), e["variant"].as_str()),
            (&json!(value), Some(reason), Some(variant)),
            "{ctx}: {e}"
        );
        assert_eq!(e["metadata"]["pinned"], false);
    }

    // A pin for the gold tier holds it at version 1: a targeting match that says pinned.
    let (status, p) = app
        .admin(Method::PUT, "/api/v1/topics/limits/pins")
        .json(&json!({"selector": {"tier": "gold"}, "version": 1, "reason": "incident"}))
        .send_json()
        .await;
    assert_eq!(status, 200, "{p}");
    let (_, e) = eval(&app, "limits", json!({"region": "eu", "tier": "gold"})).await;
    assert_eq!(
        (&e["value"], e["reason"].as_str(), e["variant"].as_str()),
        (&json!(5), Some("TARGETING_MATCH"), Some("v1"))
    );
    assert_eq!(e["metadata"], json!({"topic": "limits", "version": 1, "pinned": true}));
    let (_, e) = eval(&app, "limits", json!({"region": "eu"})).await;
    assert_eq!((&e["value"], &e["metadata"]["pinned"]), (&json!(10), &json!(false)));
    // A pin for everyone is static, and pinned.
    let (status, _) = app
        .admin(Method::PUT, "/api/v1/topics/limits/pins")
        .json(&json!({"selector": {}, "version": 2}))
        .send_json()
        .await;
    assert_eq!(status, 200);
    let (_, e) = eval(&app, "limits", json!({"region": "us"})).await;
    assert_eq!(
        (&e["value"], e["reason"].as_str(), &e["metadata"]["pinned"]),
        (&json!(10), Some("STATIC"), &json!(true))
    );
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn bulk_evaluation_has_an_etag_and_answers_304_until_a_change(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "b.one", "owner": "shop", "ofrep": {"flag_key": "b-one"}})).await;
    app.create_topic_with(json!({"name": "a.two", "owner": "shop", "ofrep": {"flag_key": "a-two"}})).await;
    app.create_topic("not.a.flag").await;
    app.publish("b.one", json!({"data": "1"})).await;
    app.publish("a.two", json!({"data": "not json"})).await;
    app.publish("not.a.flag", json!({"data": "1"})).await;

    let r = bulk(&app, None, json!({"targetingKey": "web-1"}), None).await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let b: Value = r.json().await.unwrap();
    let flags = b["flags"].as_array().unwrap();
    // Sorted by key; a flag that fails is an item of its own.
    assert_eq!(flags.len(), 2, "{b}");
    assert_eq!(flags[0]["key"], "a-two");
    assert_eq!(flags[0]["errorCode"], "PARSE_ERROR");
    assert!(flags[0]["errorDetails"].as_str().unwrap().contains("imprint-agent"), "{b}");
    assert_eq!(
        flags[1],
        json!({"key": "b-one", "value": 1, "reason": "STATIC", "variant": "v1",
                                "metadata": {"topic": "b.one", "version": 1, "pinned": false}})
    );
    assert_eq!(
        b["eventStreams"],
        json!([{"type": "sse", "endpoint": {"requestUri": "/ofrep/v1/events"}, "inactivityDelaySec": 120}])
    );

    // Unchanged: 304 without a body (weak and listed tags too), also with the SSE re-fetch
    // parameters; another context or a change: 200 with another tag.
    for tag in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
        let r = bulk(&app, None, json!({"targetingKey": "web-1"}), Some(&tag)).await;
        assert_eq!(r.status(), 304, "{tag}");
        assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = app
        .req(Method::POST, "/ofrep/v1/evaluate/flags?flagConfigEtag=abc&flagConfigLastModified=1771622898")
        .header("if-none-match", &etag)
        .json(&json!({"context": {"targetingKey": "web-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = bulk(&app, None, json!({"targetingKey": "web-1"}), Some("\"other\"")).await;
    assert_eq!(r.status(), 200);
    app.publish("b.one", json!({"data": "2", "scopes": [{"region": "eu"}]})).await;
    let r = bulk(&app, None, json!({"targetingKey": "web-1"}), Some(&etag)).await;
    assert_eq!(r.status(), 304, "a scoped release elsewhere changes nothing for this context");
    let r = bulk(&app, None, json!({"targetingKey": "web-1", "region": "eu"}), Some(&etag)).await;
    assert_eq!(r.status(), 200);
    let eu = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(eu, etag);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["flags"][1]["value"], 2);
    assert_eq!(b["flags"][1]["reason"], "TARGETING_MATCH");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn bad_requests_and_payloads_get_the_protocols_errors(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "cfg", "owner": "shop", "ofrep": {"field": "mode"}})).await;
    app.publish("cfg", json!({"data": "{\"other\": 1}"})).await;
    let post = |path: &str, body: &'static str| {
        app.req(Method::POST, path).header("content-type", "application/json").body(body).send_json()
    };
    // Not JSON, the wrong shape, contexts that are not labels.
    for (body, code) in [
        ("{not json", "PARSE_ERROR"),
        ("\"text\"", "PARSE_ERROR"),
        (r#"{"context": "x"}"#, "INVALID_CONTEXT"),
        (r#"{"context": {"nested": {"a": 1}}}"#, "INVALID_CONTEXT"),
        (r#"{"context": {"targetingKey": 7}}"#, "INVALID_CONTEXT"),
        (r#"{"context": {"bad key!": "x"}}"#, "INVALID_CONTEXT"),
        (r#"{"context": {"region": "has space"}}"#, "INVALID_CONTEXT"),
    ] {
        let (status, e) = post("/ofrep/v1/evaluate/flags/cfg", body).await;
        assert_eq!((status, e["errorCode"].as_str(), e["key"].as_str()), (400, Some(code), Some("cfg")), "{body}: {e}");
        assert!(!e["errorDetails"].as_str().unwrap_or_default().is_empty(), "{e}");
        let (status, e) = post("/ofrep/v1/evaluate/flags", body).await;
        assert_eq!((status, e["errorCode"].as_str()), (400, Some(code)), "bulk {body}: {e}");
    }
    let many: serde_json::Map<String, Value> = (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, e) = eval(&app, "cfg", Value::Object(many)).await;
    assert_eq!((status, e["errorCode"].as_str()), (400, Some("INVALID_CONTEXT")), "{e}");
    // A body past the bound is refused before it is read in full.
    let big = format!("{{\"context\": {{\"a\": \"{}\"}}}}", "x".repeat(20_000));
    let r = app
        .req(Method::POST, "/ofrep/v1/evaluate/flags/cfg")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // The bound field is missing from the payload.
    let (status, e) = eval(&app, "cfg", json!({})).await;
    assert_eq!((status, e["errorCode"].as_str()), (400, Some("PARSE_ERROR")), "{e}");
    assert!(e["errorDetails"].as_str().unwrap().contains("\"mode\""), "{e}");
    // Not JSON at all.
    app.admin(Method::PATCH, "/api/v1/topics/cfg").json(&json!({"ofrep": {}})).send().await.unwrap();
    app.publish("cfg", json!({"data": "mode=fast"})).await;
    let (status, e) = eval(&app, "cfg", json!({})).await;
    assert_eq!((status, e["errorCode"].as_str()), (400, Some("PARSE_ERROR")), "{e}");
    assert!(e["errorDetails"].as_str().unwrap().contains("imprint-agent"), "{e}");
    // Too big for a flag: refused with a pointer to the agent.
    let huge = format!("{{\"blob\": \"{}\"}}", "x".repeat(70 * 1024));
    app.publish("cfg", json!({"data": huge})).await;
    let (status, e) = eval(&app, "cfg", json!({})).await;
    assert_eq!((status, e["errorCode"].as_str()), (400, Some("GENERAL")), "{e}");
    let details = e["errorDetails"].as_str().unwrap();
    assert!(details.contains("imprint-agent") && details.contains("65536"), "{details}");
    // A key that is not a flag.
    let (status, e) = eval(&app, "nope", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(e, json!({"key": "nope", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "flag \"nope\" was not found"}));
}

/// The attack: a consumer token of team red must not read team blue's restricted flag
/// through OFREP, nor learn that it exists; anonymous callers neither.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn restricted_flags_are_not_found_by_callers_who_may_not_read_them(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(
        json!({"name": "blue.secret", "owner": "blue", "restricted": true, "ofrep": {"flag_key": "blue-secret"}}),
    )
    .await;
    app.create_topic_with(json!({"name": "blue.open", "owner": "blue", "ofrep": {"flag_key": "blue-open"}})).await;
    app.publish("blue.secret", json!({"data": "{\"key\": \"s3cr3t\"}"})).await;
    app.publish("blue.open", json!({"data": "true"})).await;
    let red = app.consumer_token("red-nodes", Some("red"), &[], &[]).await;
    let blue = app.consumer_token("blue-nodes", Some("blue"), &[], &[]).await;

    let (_, unknown) = eval(&app, "no-such-flag", json!({})).await;
    for token in [None, Some(red.as_str())] {
        let (status, e) = match token {
            None => eval(&app, "blue-secret", json!({})).await,
            Some(t) => eval_with(&app, t, "blue-secret", json!({})).await,
        };
        assert_eq!(status, 404, "{e}");
        // Exactly what an unknown key gets, but for the key.
        assert_eq!(e["errorCode"], unknown["errorCode"]);
        assert_eq!(e["errorDetails"], unknown["errorDetails"].as_str().unwrap().replace("no-such-flag", "blue-secret"));
        assert!(!e.to_string().contains("s3cr3t") && !e.to_string().contains("restricted"), "{e}");
        let b: Value = bulk(&app, token, json!({}), None).await.json().await.unwrap();
        let keys: Vec<&str> = b["flags"].as_array().unwrap().iter().filter_map(|f| f["key"].as_str()).collect();
        assert_eq!(keys, ["blue-open"], "{b}");
    }
    let (status, e) = eval_with(&app, &blue, "blue-secret", json!({})).await;
    assert_eq!((status, &e["value"]), (200, &json!({"key": "s3cr3t"})), "{e}");
    let b: Value = bulk(&app, Some(&blue), json!({}), None).await.json().await.unwrap();
    assert_eq!(b["flags"].as_array().unwrap().len(), 2, "{b}");

    // Tokens as the API checks them: a bad one is 401; one bound to labels must be claimed.
    let r = app
        .req(Method::POST, "/ofrep/v1/evaluate/flags/blue-open")
        .bearer_auth("not-a-token")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let us = app.consumer_token("us-nodes", None, &[("region", "us")], &[]).await;
    let r = app
        .req(Method::POST, "/ofrep/v1/evaluate/flags/blue-open")
        .bearer_auth(&us)
        .json(&json!({"context": {"region": "eu"}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    let (status, _) = eval_with(&app, &us, "blue-open", json!({"region": "us"})).await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn evaluations_are_recorded_in_the_consumer_audit(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "audited", "owner": "shop", "ofrep": {}})).await;
    app.publish("audited", json!({"data": "{\"on\": true}"})).await;
    let token = app.consumer_token("web", Some("shop"), &[], &[]).await;
    let (status, _) = eval_with(&app, &token, "audited", json!({"targetingKey": "web-7", "region": "eu"})).await;
    assert_eq!(status, 200);
    let c = app.consumer_where("audited", "web-7", |c| c["version"] == 1).await;
    assert_eq!(c["labels"], json!({"region": "eu"}));
    assert_eq!(c["expected_version"], 1);
    assert_eq!(c["principal"], "token:web");
    // Bulk evaluations count too.
    let r = bulk(&app, None, json!({"targetingKey": "web-8"}), None).await;
    assert_eq!(r.status(), 200);
    app.consumer_where("audited", "web-8", |c| c["version"] == 1).await;
}

/// Reads server-sent events until `want` returns true for one (or the time is up).
async fn next_event(resp: &mut reqwest::Response, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = String::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await.ok()?.ok()??;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf[..end].to_owned();
            buf = buf[end + 2..].to_owned();
            if event.lines().any(|l| l.starts_with("data:")) {
                return Some(event);
            }
        }
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_event_stream_announces_flag_changes_the_caller_may_see(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "open.flag", "owner": "shop", "ofrep": {}})).await;
    app.create_topic_with(json!({"name": "hidden.flag", "owner": "blue", "restricted": true, "ofrep": {}})).await;
    app.create_topic("plain").await;
    let mut stream = app.req(Method::GET, "/ofrep/v1/events").send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A restricted flag and a topic that is no flag are not announced to an anonymous stream.
    app.publish("hidden.flag", json!({"data": "1"})).await;
    app.publish("plain", json!({"data": "1"})).await;
    assert_eq!(next_event(&mut stream, Duration::from_millis(1500)).await, None);
    app.publish("open.flag", json!({"data": "1"})).await;
    let event = next_event(&mut stream, Duration::from_secs(5)).await.expect("an event for open.flag");
    assert!(event.contains("event: message"), "{event}");
    assert!(event.contains("id: 1"), "{event}");
    let data: Value = serde_json::from_str(event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(data["type"], "refetchEvaluation");
    assert!(data["lastModified"].as_i64().unwrap() > 1_700_000_000);

    // A token allowed on the restricted flag hears about it; a bad token gets no stream.
    let blue = app.consumer_token("blue-nodes", Some("blue"), &[], &[]).await;
    let mut stream = app.req(Method::GET, "/ofrep/v1/events").bearer_auth(&blue).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.publish("hidden.flag", json!({"data": "2"})).await;
    assert!(next_event(&mut stream, Duration::from_secs(5)).await.is_some());
    let r = app.req(Method::GET, "/ofrep/v1/events").bearer_auth("not-a-token").send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
}

/// With `IMPRINT_POLL_AUTH=required`, anonymous evaluations and streams are refused (before
/// the body is read) and tokens work as for polls.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_server_that_requires_tokens_to_poll_requires_them_here(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| c.poll_auth_required = true).await;
    app.create_topic_with(json!({"name": "gated", "owner": "shop", "ofrep": {}})).await;
    app.publish("gated", json!({"data": "1"})).await;
    for (method, path) in [
        (Method::POST, "/ofrep/v1/evaluate/flags/gated"),
        (Method::POST, "/ofrep/v1/evaluate/flags"),
        (Method::GET, "/ofrep/v1/events"),
    ] {
        let r = app.req(method.clone(), path).json(&json!({})).send().await.unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    let token = app.consumer_token("any", None, &[], &[]).await;
    let (status, e) = eval_with(&app, &token, "gated", json!({})).await;
    assert_eq!((status, &e["value"]), (200, &json!(1)), "{e}");
}

/// Event streams are held among the server's open requests: past its cap a stream is
/// refused at once with 503 and OFREP's `{"errorDetails"}` (and a Retry-After).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn event_streams_are_bounded_by_the_open_request_caps(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| c.max_long_polls = 1).await;
    let first = app.req(Method::GET, "/ofrep/v1/events").send().await.unwrap();
    assert_eq!(first.status(), 200);
    let r = app.req(Method::GET, "/ofrep/v1/events").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert!(body["errorDetails"].as_str().unwrap().contains("event streams"), "{body}");
    assert!(body.get("error").is_none(), "{body}");
    // The place is given back when the stream ends.
    drop(first);
    imprint_testkit::eventually("a stream place to free up", || async {
        let r = app.req(Method::GET, "/ofrep/v1/events").send().await.unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
}

/// A revoked token's event stream ends within seconds; another token's goes on.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn revoking_a_token_ends_its_event_stream(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "live.flag", "owner": "shop", "ofrep": {}})).await;
    let doomed = app.consumer_token("soon-revoked", None, &[], &[]).await;
    let kept = app.consumer_token("still-valid", None, &[], &[]).await;
    let mut gone = app.req(Method::GET, "/ofrep/v1/events").bearer_auth(&doomed).send().await.unwrap();
    let mut stays = app.req(Method::GET, "/ofrep/v1/events").bearer_auth(&kept).send().await.unwrap();
    assert_eq!((gone.status().as_u16(), stays.status().as_u16()), (200, 200));
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.imprint().revoke_token(&imprint_service::Caller::System, "soon-revoked").await.unwrap();
    // The stream ends (its body finishes) rather than waiting for changes.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(c) = gone.chunk().await.unwrap() {
            assert!(!String::from_utf8_lossy(&c).contains("data:"), "no event before the publish");
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked token's stream is still open");
    app.publish("live.flag", json!({"data": "1"})).await;
    assert!(next_event(&mut stays, Duration::from_secs(5)).await.is_some());
}
