//! Fair serving under overload and cacheable blob URLs (issue 23, docs/fairness.md), through
//! real HTTP: a flooding application (by token, `app` label or address) gets 429
//! `overloaded` with `Retry-After` while another is served; a parked long poll holds no
//! place; identical concurrent reads share their queries and never one caller's restricted
//! answer with another; `/api/v1/blobs/sha256/{hash}` is cacheable and guarded as its topic.
use futures::future::join_all;
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Every application may hold two requests, and one over waits 50 ms.
fn two_each(c: &mut imprint_service::Config) {
    c.fair.enabled = true;
    c.fair.initial_limit = 2;
    c.fair.min_limit = 2;
    c.fair.max_limit = 2;
    c.fair.queue_wait = Duration::from_millis(50);
}

/// A poll whose body never comes: it holds its application's place (the handler waits
/// for the body) until the connection is dropped.
async fn stuck_poll(app: &TestApp, query: &str, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/poll{query} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n{headers}\r\n{{"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    s
}

/// Gives the stuck polls time to reach their handler (and take their places): local
/// sockets, well under this; the 429 asserted next fails if they had not.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn assert_overloaded(r: reqwest::Response) {
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body = assert_error(r, 429, "overloaded").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("retry"), "{body}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_flooding_token_gets_429_with_retry_after_while_another_token_is_served(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, two_each).await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "v1"})).await;
    let flood = app.consumer_token("flood", None, &[], &[]).await;
    let calm = app.consumer_token("calm", None, &[], &[]).await;
    let auth = format!("authorization: Bearer {flood}\r\n");
    let _held = [stuck_poll(&app, "", &auth).await, stuck_poll(&app, "", &auth).await];
    settle().await;
    // The flooding token's third request queues briefly, then 429 with Retry-After.
    let started = Instant::now();
    let r = app.req(Method::GET, "/api/v1/topics/cfg/latest").bearer_auth(&flood).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(45), "it waited for a place first");
    assert_overloaded(r).await;
    // Another token's polls and reads are served, at once.
    for _ in 0..5 {
        let started = Instant::now();
        let r = app.req(Method::GET, "/api/v1/topics/cfg/latest").bearer_auth(&calm).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() < Duration::from_millis(45), "not queued behind the flood");
        let poll = json!({"consumer": {"instance": "c1"}, "topics": {"cfg": null}});
        let r = app.req(Method::POST, "/api/v1/poll").bearer_auth(&calm).json(&poll).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Operations are not limited, nor is the token's publishing.
    assert_eq!(app.req(Method::GET, "/readyz").bearer_auth(&flood).send().await.unwrap().status(), 200);
    let r = app.req(Method::GET, "/api/v1/openapi.json").bearer_auth(&flood).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The rejection is counted per bucket, and the limit and in-flight gauges exist.
    let metrics = app.req(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    for name in ["imprint_fair_rejected_total{bucket=", "imprint_fair_limit{", "imprint_fair_in_flight{"] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    assert!(!metrics.contains(&imprint_service::auth::hash_token(&flood)), "no whole token hash in a label");
    // Dropping the stuck polls gives their places back.
    drop(_held);
    eventually("the flooding token is served again", || async {
        app.req(Method::GET, "/api/v1/topics/cfg/latest").bearer_auth(&flood).send().await.unwrap().status() == 200
    })
    .await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn anonymous_callers_are_bucketed_by_app_label_then_by_address(pool: sqlx::PgPool) {
    let app = spawn_app_with_settings(pool, |s| {
        two_each(&mut s.service);
        s.trusted = imprint_server::TrustedProxies::parse("127.0.0.1/32").unwrap();
    })
    .await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "v1"})).await;
    // By app label: app=flood is full, app=calm (same address) is not.
    let q = "?labels=region%3Deu%2Capp%3Dflood";
    let _held = [stuck_poll(&app, q, "").await, stuck_poll(&app, q, "").await];
    settle().await;
    let r = app.req(Method::GET, "/api/v1/topics/cfg/latest?labels=app%3Dflood,region%3Deu").send().await.unwrap();
    assert_overloaded(r).await;
    let r = app.req(Method::GET, "/api/v1/topics/cfg/latest?labels=app%3Dcalm").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // By address (behind the trusted proxy): 203.0.113.7 is full, 198.51.100.9 is not.
    let xff = "x-forwarded-for: 203.0.113.7\r\n";
    let _held2 = [stuck_poll(&app, "", xff).await, stuck_poll(&app, "", xff).await];
    settle().await;
    let from = |ip: &str| app.req(Method::GET, "/api/v1/topics/cfg/latest").header("x-forwarded-for", ip).send();
    assert_overloaded(from("203.0.113.7").await.unwrap()).await;
    assert_eq!(from("198.51.100.9").await.unwrap().status(), 200);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_other_protocols_reads_share_their_applications_limit(pool: sqlx::PgPool) {
    use base64::Engine;
    let app = spawn_app_configured(pool.clone(), pool, |c| {
        two_each(c);
        c.apollo_hold = Duration::from_secs(30);
    })
    .await;
    app.create_topic_with(
        json!({"name": "shop.app", "owner": "shop", "apollo": {"app_id": "shop", "namespace": "application"}}),
    )
    .await;
    app.publish("shop.app", json!({"data": "{\"timeout\": \"100\"}"})).await;
    let flood = app.consumer_token("flood", None, &[], &[]).await;
    let calm = app.consumer_token("calm", None, &[], &[]).await;
    let apollo = "/apollo/configs/shop/default/application";
    // Apollo's appId is its application: parked notification long polls of `shop` hold no
    // place (they gave it back when they parked)…
    let notify = "/apollo/notifications/v2?appId=shop&cluster=default&notifications=%5B%7B%22namespaceName%22%3A%22application%22%2C%22notificationId%22%3A999999%7D%5D";
    let parked: Vec<_> = (0..4).map(|_| app.req(Method::GET, notify).send()).collect();
    let parked = tokio::spawn(join_all(parked));
    eventually("the notifications are parked", || async { app.imprint().state().waiter_entries().0 >= 4 }).await;
    assert_eq!(app.req(Method::GET, apollo).send().await.unwrap().status(), 200);
    // …while two working requests of the application `shop` (polls labelled app=shop) fill
    // its bucket: Apollo's config reads of appId shop queue, then 429.
    let q = "?labels=app%3Dshop";
    let held = [stuck_poll(&app, q, "").await, stuck_poll(&app, q, "").await];
    settle().await;
    assert_overloaded(app.req(Method::GET, apollo).send().await.unwrap()).await;
    drop(held);
    // A token's bucket covers OpenFeature's evaluations and Spring's files (Basic password).
    let auth = format!("authorization: Bearer {flood}\r\n");
    let _held = [stuck_poll(&app, "", &auth).await, stuck_poll(&app, "", &auth).await];
    settle().await;
    let ofrep = |token: &str| {
        app.req(Method::POST, "/ofrep/v1/evaluate/flags")
            .bearer_auth(token)
            .json(&json!({"context": {"targetingKey": "n1"}}))
            .send()
    };
    assert_overloaded(ofrep(&flood).await.unwrap()).await;
    assert_ne!(ofrep(&calm).await.unwrap().status(), 429);
    let basic =
        |token: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("u:{token}")));
    let spring =
        |token: &str| app.req(Method::GET, "/spring/shop/default").header("authorization", basic(token)).send();
    assert_overloaded(spring(&flood).await.unwrap()).await;
    assert_ne!(spring(&calm).await.unwrap().status(), 429);
    parked.abort();
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_parked_long_poll_holds_no_place(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, two_each).await;
    app.create_topic("cfg").await;
    app.publish("cfg", json!({"data": "v1"})).await;
    let token = app.consumer_token("fleet", None, &[], &[]).await;
    // Ten long polls of one token, all parked (they hold version 1 already).
    let polls: Vec<_> = (0..10)
        .map(|i| {
            let body = json!({"consumer": {"instance": format!("n{i}")}, "topics": {"cfg": 1}, "wait_ms": 30000});
            app.req(Method::POST, "/api/v1/poll").bearer_auth(&token).json(&body).send()
        })
        .collect();
    let parked = tokio::spawn(join_all(polls));
    eventually("every poll is parked", || async { app.imprint().state().waiter_entries().0 >= 10 }).await;
    // The same token's reads are served: the parked polls gave their places back.
    for _ in 0..3 {
        let r = app.req(Method::GET, "/api/v1/topics/cfg/latest").bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    app.publish("cfg", json!({"data": "v2"})).await;
    for r in parked.await.unwrap() {
        let body: Value = r.unwrap().json().await.unwrap();
        assert_eq!(body["updates"]["cfg"]["version"], 2);
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_thousand_identical_concurrent_version_lists_cost_at_most_five_queries(pool: sqlx::PgPool) {
    let app = spawn_app_with_settings(pool, |s| {
        // This test counts queries, not fairness: one address sends all 1 000.
        s.service.fair.enabled = false;
        // Long enough that the whole burst (a debug build on a shared machine) is in it.
        s.service.fair.coalesce_ttl = Duration::from_secs(5);
        s.limits.max_conns_per_ip = 0;
    })
    .await;
    app.create_topic("fleet.cfg").await;
    for i in 0..3 {
        app.publish("fleet.cfg", json!({"data": format!("v{i}")})).await;
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(1100).build().unwrap();
    let before = app.imprint().coalesced_queries();
    let url = app.url("/api/v1/topics/fleet.cfg/versions");
    let answers = join_all((0..1000).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    }))
    .await;
    let queries = app.imprint().coalesced_queries() - before;
    assert!(queries <= 5, "1 000 identical version lists cost {queries} queries");
    assert!(answers.iter().all(|a| a["versions"].as_array().map(Vec::len) == Some(3)));
    // A publish this node acknowledged is in the very next list (the key holds the
    // topic's change sequence): no stale answer from the cache.
    app.publish("fleet.cfg", json!({"data": "v3"})).await;
    let list: Value = app.req(Method::GET, "/api/v1/topics/fleet.cfg/versions").json_body().await;
    assert_eq!(list["versions"][0]["version"], 4, "{list}");
    // Without coalescing each list costs its own three queries (the counter is honest).
    let before = app.imprint().coalesced_queries();
    app.req(Method::GET, "/api/v1/topics/fleet.cfg/versions?limit=2").send().await.unwrap();
    assert_eq!(app.imprint().coalesced_queries() - before, 3);
}

/// The attack: the coalescer shares what Postgres answered between callers; it must never
/// hand a restricted topic's versions, consumers, resolutions or payloads to a caller who
/// may not read them, whichever caller's request did the query.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn coalesced_reads_never_give_a_restricted_topic_to_another_caller(pool: sqlx::PgPool) {
    let app = spawn_app_configured(pool.clone(), pool, |c| {
        c.fair.enabled = false;
        c.fair.coalesce_ttl = Duration::from_secs(5);
    })
    .await;
    app.create_topic_with(json!({"name": "red.vault", "owner": "red", "restricted": true})).await;
    app.publish("red.vault", json!({"data": "red-secret"})).await;
    let red = app.consumer_token("red-reader", Some("red"), &[], &[]).await;
    let blue = app.consumer_token("blue-reader", Some("blue"), &[], &[]).await;
    let at = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let paths = [
        "/api/v1/topics/red.vault/versions".to_owned(),
        "/api/v1/topics/red.vault/consumers".to_owned(),
        "/api/v1/topics/red.vault/versions/1/data".to_owned(),
        format!("/api/v1/topics/red.vault/resolve?at={}", urlencoding::encode(&at)),
    ];
    for path in &paths {
        // Both orders: red loads and blue asks within the TTL, and blue loads first.
        for first_red in [true, false] {
            let get = |token: Option<String>| {
                let r = app.req(Method::GET, path);
                let r = match token {
                    Some(t) => r.bearer_auth(t),
                    None => r,
                };
                async move {
                    let r = r.send().await.unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                }
            };
            let (a, b) = if first_red {
                (Some(red.clone()), Some(blue.clone()))
            } else {
                (Some(blue.clone()), Some(red.clone()))
            };
            let mut burst = vec![get(a.clone())];
            for i in 0..40 {
                burst.push(get(if i % 3 == 0 {
                    None
                } else if i % 2 == 0 {
                    a.clone()
                } else {
                    b.clone()
                }));
            }
            let mut answers = join_all(burst).await;
            answers.push(get(b.clone()).await);
            for (status, body) in answers {
                // Red (allowed) gets 200; blue 403 and anonymous 401, never red's data.
                assert!(matches!(status, 200 | 401 | 403), "{path}: {status} {body}");
                if status != 200 {
                    assert!(!body.contains("red-secret") && !body.contains("\"versions\""), "{path}: {body}");
                }
            }
            let r = app.req(Method::GET, path).bearer_auth(&blue).send().await.unwrap();
            assert_error(r, 403, "forbidden").await;
            let r = app.req(Method::GET, path).send().await.unwrap();
            assert_error(r, 401, "unauthorized").await;
            let r = app.req(Method::GET, path).bearer_auth(&red).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_restricted_blob_needs_the_topics_rights(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic_with(json!({"name": "red.vault", "owner": "red", "restricted": true})).await;
    app.publish("red.vault", json!({"data": "only-red"})).await;
    let red = app.consumer_token("red-reader", Some("red"), &[], &[]).await;
    let blue = app.consumer_token("blue-reader", Some("blue"), &[], &[]).await;
    let path = format!("/api/v1/blobs/sha256/{}", sha256_hex(b"only-red"));
    let anon = assert_error(app.req(Method::GET, &path).send().await.unwrap(), 401, "unauthorized").await;
    let other =
        assert_error(app.req(Method::GET, &path).bearer_auth(&blue).send().await.unwrap(), 403, "forbidden").await;
    for refusal in [anon, other] {
        assert!(!refusal.to_string().contains("red.vault"), "the refusal does not say which topic holds it: {refusal}");
    }
    let r = app.req(Method::GET, &path).bearer_auth(&red).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "private, max-age=31536000, immutable", "no shared cache keeps it");
    assert_eq!(r.text().await.unwrap(), "only-red");
    // A label-bound consumer reads what its labels resolve to, not payloads by name.
    let bound = app.consumer_token("eu", Some("red"), &[("region", "eu")], &[]).await;
    assert_error(app.req(Method::GET, &path).bearer_auth(&bound).send().await.unwrap(), 403, "forbidden").await;
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn blob_urls_are_content_addressed_cacheable_and_inert(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    app.create_topic("site").await;
    let html = "<script>alert(1)</script>";
    app.publish("site", json!({"data": html, "content_type": "text/html"})).await;
    let hash = sha256_hex(html.as_bytes());
    let path = format!("/api/v1/blobs/sha256/{hash}");
    let r = app.req(Method::GET, &path).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["etag"], format!("\"{hash}\""));
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-disposition"].to_str().unwrap().starts_with("attachment"), "{h:?}");
    assert!(h.get("x-imprint-version").is_none(), "the same bytes whichever version holds them");
    assert_eq!(r.text().await.unwrap(), html);
    // Upper-case hex names the same blob; If-None-Match gives 304; a range, 206.
    let r = app.req(Method::GET, &path.to_uppercase().replace("/API/V1/BLOBS/SHA256/", "/api/v1/blobs/sha256/")).send();
    assert_eq!(r.await.unwrap().status(), 200);
    let r = app.req(Method::GET, &path).header("if-none-match", format!("\"{hash}\"")).send().await.unwrap();
    assert_eq!(r.status(), 304);
    let r = app.req(Method::GET, &path).header("range", "bytes=0-7").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().await.unwrap(), "<script>");
    // Bad hashes are 400, unknown ones 404.
    for bad in ["xyz", &"g".repeat(64), &hash[..63], &format!("{hash}0")] {
        let r = app.req(Method::GET, &format!("/api/v1/blobs/sha256/{bad}")).send().await.unwrap();
        assert_error(r, 400, "invalid_request").await;
    }
    let r = app.req(Method::GET, &format!("/api/v1/blobs/sha256/{}", sha256_hex(b"never published"))).send().await;
    assert_error(r.unwrap(), 404, "not_found").await;
    // Bytes an unrestricted topic holds are public even if a restricted one holds them too.
    app.create_topic_with(json!({"name": "red.copy", "owner": "red", "restricted": true})).await;
    app.publish("red.copy", json!({"data": html, "content_type": "text/html"})).await;
    let r = app.req(Method::GET, &path).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
}
