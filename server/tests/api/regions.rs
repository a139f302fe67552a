//! Several object stores, one per region (docs/regions.md), against two real S3 servers:
//! each test starts two moto processes of its own (`IMPRINT_TEST_MOTO_SERVER`, exported
//! by `./dev s3-start` / `./dev test`), so it can stop one of them.
use imprint_service::objects::Objects;
use imprint_testkit::*;
use object_store::path::Path;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

struct TwoRegions {
    eu: Moto,
    _us: Moto,
    eu_store: Objects,
    us_store: Objects,
    app: TestApp,
}

async fn two_regions(pool: &sqlx::PgPool) -> Option<TwoRegions> {
    let eu = Moto::start().await?;
    let us = Moto::start().await?;
    let (eu_store, us_store) = (eu.objects("eu"), us.objects("us"));
    let (home, regions) = imprint_testkit::two_regions(&eu, &us);
    let app = spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = home;
        c.regions = regions;
        // Passes run when the test calls them (janitor) or often (copies).
        c.janitor_every = Duration::from_secs(3600);
        c.rollout_tick_every = Duration::from_millis(100);
    })
    .await;
    Some(TwoRegions { eu, _us: us, eu_store, us_store, app })
}

async fn publish(app: &TestApp, topic: &str, body: Vec<u8>) -> Value {
    let r = app
        .admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    r.json().await.expect("json")
}

async fn exists(objects: &Objects, key: &str) -> bool {
    objects.store().head(&Path::from(key)).await.is_ok()
}

fn key(prefix: &str, topic: &str, v: u64, digest: &str) -> String {
    format!("{prefix}/topics/{topic}/{v}/{digest}")
}

async fn copies(app: &TestApp, topic: &str, v: u64) -> Vec<(String, String)> {
    let r: Value = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/{v}/regions")).json_body().await;
    r["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .map(|c| (c["region"].as_str().unwrap_or("").to_owned(), c["state"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_publish_lands_in_every_region_and_consumers_get_their_own_first(pool: sqlx::PgPool) {
    let Some(t) = two_regions(&pool).await else { return };
    let app = &t.app;
    app.create_topic_with(json!({"name": "models.ranker", "owner": "ml", "inline_limit_bytes": 1024})).await;
    let data = payload(300_000, 1);
    let digest = sha(&data);
    let p = publish(app, "models.ranker", data.clone()).await;
    assert_eq!(p["storage"], "object", "{p}");
    // min_regions defaults to all: both hold it at commit.
    assert!(exists(&t.eu_store, &key("eu", "models.ranker", 1, &digest)).await);
    assert!(exists(&t.us_store, &key("us", "models.ranker", 1, &digest)).await);
    assert_eq!(copies(app, "models.ranker", 1).await, [("eu".into(), "done".into()), ("us".into(), "done".into())]);

    // The consumer's own region first, then the preference order (eu, us).
    for (own, first) in [("us", "us"), ("eu", "eu"), ("ap", "eu")] {
        let polled = app
            .poll(
                json!({"consumer": {"instance": "i-1", "labels": {"region": own}}, "topics": {"models.ranker": null}}),
            )
            .await;
        let u = &polled["updates"]["models.ranker"];
        let urls = u["data_urls"].as_array().expect("data_urls");
        assert_eq!(urls.len(), 2, "{polled}");
        assert_eq!(urls[0]["region"], first, "{polled}");
        assert_eq!(u["data_url"], urls[0]["url"], "{polled}");
        // Each URL sends that region's copy.
        for d in urls {
            let r = app.admin(Method::GET, d["url"].as_str().unwrap()).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-imprint-region"], d["region"].as_str().unwrap());
            assert_eq!(sha(&r.bytes().await.unwrap()), digest);
        }
    }
    // A region that is not configured is a bad request.
    let r = app.admin(Method::GET, "/api/v1/topics/models.ranker/versions/1/data?region=mars").send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;

    // A topic's regions are checked against the configuration.
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/models.ranker")
        .json(&json!({"regions": ["eu", "mars"]}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    let r =
        app.admin(Method::PATCH, "/api/v1/topics/models.ranker").json(&json!({"min_regions": 3})).send().await.unwrap();
    assert_error(r, 400, "invalid_request").await;

    // min_regions 1: the version commits with the home copy; the worker copies the rest.
    let r =
        app.admin(Method::PATCH, "/api/v1/topics/models.ranker").json(&json!({"min_regions": 1})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let data2 = payload(200_000, 2);
    let digest2 = sha(&data2);
    publish(app, "models.ranker", data2).await;
    eventually("the worker copies version 2 to us", || async {
        copies(app, "models.ranker", 2).await == [("eu".to_owned(), "done".to_owned()), ("us".into(), "done".into())]
    })
    .await;
    assert!(exists(&t.us_store, &key("us", "models.ranker", 2, &digest2)).await);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn with_eu_down_the_client_downloads_from_us_and_a_corrupt_copy_is_skipped(pool: sqlx::PgPool) {
    let Some(mut t) = two_regions(&pool).await else { return };
    let app = &t.app;
    app.create_topic_with(json!({"name": "models.a", "owner": "ml", "inline_limit_bytes": 1024})).await;
    app.create_topic_with(json!({"name": "models.b", "owner": "ml", "inline_limit_bytes": 1024})).await;
    let a = payload(150_000, 3);
    publish(app, "models.a", a.clone()).await;
    let b = payload(150_000, 4);
    publish(app, "models.b", b.clone()).await;

    // A corrupted copy in eu: an eu client skips it and takes us's.
    t.eu_store
        .store()
        .put(&Path::from(key("eu", "models.a", 1, &sha(&a))), payload(150_000, 99).into())
        .await
        .expect("corrupt the eu copy");
    let client = |instance: &str| {
        imprint_client::Client::builder(app.url(""))
            .instance(instance)
            .label("region", "eu")
            .backoff(Duration::from_millis(50), Duration::from_millis(300))
            .build()
            .expect("client")
    };
    let c = client("i-corrupt");
    let sub = c.subscribe_bytes("models.a").await.expect("subscribe");
    eventually("the eu client holds models.a", || async { sub.get().as_ref() == a.as_slice() }).await;
    assert_eq!(c.served_region("models.a").as_deref(), Some("us"));

    // eu stopped: the client still gets its payload, from us, and says so.
    t.eu.stop();
    let c = client("i-failover");
    let sub = c.subscribe_bytes("models.b").await.expect("subscribe");
    eventually("the eu client holds models.b with eu down", || async { sub.get().as_ref() == b.as_slice() }).await;
    assert_eq!(c.served_region("models.b").as_deref(), Some("us"));
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn retention_deletes_every_region_and_a_region_that_was_down_once_it_is_back(pool: sqlx::PgPool) {
    let Some(mut t) = two_regions(&pool).await else { return };
    let app = &t.app;
    app.create_topic_with(
        json!({"name": "models.r", "owner": "ml", "inline_limit_bytes": 1024, "retention": {"max_versions": 1}}),
    )
    .await;
    let v1 = payload(100_000, 5);
    publish(app, "models.r", v1.clone()).await;
    publish(app, "models.r", payload(100_000, 6)).await;
    let (eu1, us1) = (key("eu", "models.r", 1, &sha(&v1)), key("us", "models.r", 1, &sha(&v1)));
    app.imprint().janitor_pass().await.expect("janitor");
    assert!(!exists(&t.eu_store, &eu1).await, "eu copy of the purged version deleted");
    assert!(!exists(&t.us_store, &us1).await, "us copy of the purged version deleted");

    // eu down while version 2 is purged: its deletion waits in Postgres.
    let v3 = payload(100_000, 7);
    let v2 = payload(100_000, 6);
    publish(app, "models.r", v3).await;
    let port = t.eu.port();
    t.eu.stop();
    app.imprint().janitor_pass().await.expect("janitor");
    let us2 = key("us", "models.r", 2, &sha(&v2));
    let eu2 = key("eu", "models.r", 2, &sha(&v2));
    assert!(!exists(&t.us_store, &us2).await, "us copy deleted while eu is down");
    let pending: Vec<(String, String)> =
        sqlx::query_as("SELECT region, key FROM stray_objects ORDER BY region").fetch_all(&app.pool).await.unwrap();
    assert!(pending.iter().any(|(r, k)| (r.as_str(), k.as_str()) == ("", eu2.as_str())), "{pending:?}");

    // eu back (on its port, holding the object again): the next pass deletes it there.
    t.eu = Moto::start_on(Some(port)).await.expect("moto again");
    t.eu_store.store().put(&Path::from(eu2.clone()), v2.clone().into()).await.expect("put");
    app.imprint().janitor_pass().await.expect("janitor");
    assert!(!exists(&t.eu_store, &eu2).await, "eu copy deleted once eu is back");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM stray_objects").fetch_one(&app.pool).await.unwrap();
    assert_eq!(left, 0);
}

/// The region endpoints of a restricted topic: without rights they are refused exactly as
/// the topic's other reads are (whatever `?region=` says); a region that is not configured
/// is a clear 400; no `?region=` value makes the server read outside the topic's keys.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn region_endpoints_of_a_restricted_topic_need_its_read_rights(pool: sqlx::PgPool) {
    let Some(t) = two_regions(&pool).await else { return };
    let app = &t.app;
    app.create_topic_with(json!({"name": "red.vault", "owner": "red", "restricted": true, "inline_limit_bytes": 1024}))
        .await;
    app.create_topic_with(json!({"name": "blue.open", "owner": "blue", "inline_limit_bytes": 1024})).await;
    let secret = payload(50_000, 11);
    publish(app, "red.vault", secret.clone()).await;
    publish(app, "blue.open", payload(50_000, 12)).await;
    let red = app.consumer_token("red-reader", Some("red"), &[], &[]).await;
    let blue = app.consumer_token("blue-reader", Some("blue"), &[], &[]).await;
    let get = |path: String, token: Option<&str>| {
        let r = app.req(Method::GET, &path);
        let r = match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            (status, serde_json::from_slice::<Value>(&body).ok().map(|b| b["error"]["code"].clone()), body)
        }
    };
    let v = "/api/v1/topics/red.vault/versions/1";
    for token in [Some(blue.as_str()), None] {
        // The reference: how the topic's other reads refuse this caller.
        let (status, code, _) = get(v.to_owned(), token).await;
        assert!(status == 401 || status == 403 || status == 404, "{token:?}: {status}");
        for path in [
            format!("{v}/regions"),
            format!("{v}/data"),
            format!("{v}/data?region=us"),
            format!("{v}/data?region=eu"),
            format!("{v}/data?region=mars"),
            format!("{v}/data?region=..%2F..%2Fblue"),
            format!("{v}/data?region=us&redirect=true"),
        ] {
            let (s, c, body) = get(path.clone(), token).await;
            assert_eq!((s, &c), (status, &code), "{path} as {token:?}: {}", String::from_utf8_lossy(&body));
            assert!(!body.windows(64).any(|w| secret.windows(64).next() == Some(w)), "{path}: no payload bytes");
        }
    }
    // With the rights: each region's copy, and the copies listed.
    let (s, _, body) = get(format!("{v}/data?region=us"), Some(&red)).await;
    assert_eq!((s, sha(&body)), (200, sha(&secret)));
    let (s, _, body) = get(format!("{v}/regions"), Some(&red)).await;
    let listed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(s, 200, "{listed}");
    assert_eq!(listed["copies"].as_array().map(Vec::len), Some(2), "{listed}");
    // A region that is not configured, or that is no region name at all, is a clear 400
    // (no path games: the key read is the one recorded for the region's copy).
    for bad in ["mars", "..%2F..%2Fblue", "us%2F..%2Feu", "US", "eu%00", "", &"a".repeat(200)] {
        let r = app.req(Method::GET, &format!("{v}/data?region={bad}")).bearer_auth(&red).send().await.unwrap();
        let body = assert_error(r, 400, "invalid_request").await;
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("region"), "{bad}: {body}");
    }
    // A report naming a region that is no region name is refused, and changes nothing.
    let r = app
        .req(Method::POST, "/api/v1/poll")
        .bearer_auth(&red)
        .json(&json!({"consumer": {"instance": "i-bad-region"}, "topics": {"red.vault": 1},
                      "applied": {"red.vault": {"version": 1, "ok": true, "region": "../us"}}}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, list) = app.get_json("/api/v1/topics/red.vault/consumers").await;
    assert_eq!(list["consumers"].as_array().map(Vec::len), Some(0), "{list}");
}

async fn register(app: &TestApp, topic: &str, object: Value) -> reqwest::Response {
    app.admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
        .json(&json!({"object": object}))
        .send()
        .await
        .expect("send")
}

/// Runs the snapshot and janitor passes until version `v` of `topic` is purged: the version
/// a snapshot still names is kept until a snapshot pass names the newer one (a background
/// snapshot pass may have named `v` just before the newer version was published).
async fn purged_after_passes(app: &TestApp, topic: &str, v: u64) {
    eventually("the janitor purges the version", || async {
        app.imprint().snapshot_pass().await.expect("snapshot pass");
        app.imprint().janitor_pass().await.expect("janitor");
        let row: Value = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/{v}")).json_body().await;
        row["purged"] == true
    })
    .await;
}

async fn version_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM versions").fetch_one(&app.pool).await.unwrap()
}

/// A registered object may name its URL per region (`locations`). Each is checked as the
/// home `url` is — inside that region's store, in the owner team's folder, not another
/// topic's payload, the same bytes — and nothing a caller sends makes the server read (or
/// serve) anything outside that; once published, each region serves its own object.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn registered_objects_name_a_url_per_region_each_checked_like_the_home_one(pool: sqlx::PgPool) {
    let Some(mut t) = two_regions(&pool).await else { return };
    let app = &t.app;
    app.create_topic_with(json!({"name": "models.reg", "owner": "ml", "inline_limit_bytes": 1024})).await;
    app.create_topic_with(json!({"name": "models.other", "owner": "ml", "inline_limit_bytes": 1024})).await;
    let data = payload(120_000, 21);
    let digest = sha(&data);
    let put = |objects: &Objects, key: &str, bytes: Vec<u8>| {
        let (objects, key) = (objects.clone(), key.to_owned());
        async move { objects.store().put(&Path::from(key), bytes.into()).await.expect("put") }
    };
    put(&t.eu_store, "eu/external/ml/a.bin", data.clone()).await;
    put(&t.us_store, "us/external/ml/a.bin", data.clone()).await;
    put(&t.us_store, "us/external/ml/shared.bin", data.clone()).await;
    put(&t.eu_store, "eu/external/ml/shared.bin", data.clone()).await;
    put(&t.us_store, "us/external/red/a.bin", data.clone()).await;
    put(&t.us_store, "us/external/ml/other.bin", payload(120_000, 22)).await;
    put(&t.us_store, "us/external/ml/short.bin", data[..1000].to_vec()).await;
    // Another topic's version holds shared.bin in us (registered there, with its eu twin).
    let eu_url = |k: &str| format!("s3://imprint-regions/eu/external/ml/{k}");
    let us_url = |k: &str| format!("s3://imprint-regions/us/{k}");
    let r = register(
        app,
        "models.other",
        json!({"url": eu_url("shared.bin"), "locations": {"us": us_url("external/ml/shared.bin")}}),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // An object published through Imprint to models.other: its us copy is Imprint's own.
    publish(app, "models.other", data.clone()).await;
    assert_eq!(version_count(app).await, 2);

    let home = eu_url("a.bin");
    for (us, status, code) in [
        // The eu store's object named as us's: outside the us store.
        ("s3://imprint-regions/eu/external/ml/a.bin".to_owned(), 403, "forbidden"),
        // Imprint's own keys in us: another topic's copy, an upload, the bucket's root.
        (us_url(&format!("topics/models.other/2/{digest}")), 403, "forbidden"),
        (us_url("uploads/x"), 403, "forbidden"),
        ("s3://imprint-regions/a.bin".to_owned(), 403, "forbidden"),
        // Another team's folder, in any spelling.
        (us_url("external/red/a.bin"), 403, "forbidden"),
        (us_url("external/ml/../red/a.bin"), 400, "invalid_request"),
        (us_url("external/ml/%2e%2e/red/a.bin"), 400, "invalid_request"),
        (us_url("external/ml//a.bin"), 400, "invalid_request"),
        (us_url("external/ml/a.bin?versionId=1"), 400, "invalid_request"),
        // Another topic's version's object in us.
        (us_url("external/ml/shared.bin"), 403, "forbidden"),
        // Other bytes than the home object, fewer bytes, none at all.
        (us_url("external/ml/other.bin"), 422, "checksum_mismatch"),
        (us_url("external/ml/short.bin"), 422, "checksum_mismatch"),
        (us_url("external/ml/missing.bin"), 422, "object_not_found"),
    ] {
        let r = register(app, "models.reg", json!({"url": home, "locations": {"us": us}})).await;
        let body = assert_error(r, status, code).await;
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(!message.contains("127.0.0.1"), "{us}: the store's location is not told: {body}");
    }
    // Region names: not configured, the home region (its URL is `url`), not a region name.
    for region in ["mars", "eu", "US", "../us", ""] {
        let r =
            register(app, "models.reg", json!({"url": home, "locations": {region: us_url("external/ml/a.bin")}})).await;
        let body = assert_error(r, 400, "invalid_request").await;
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("locations"), "{region}: {body}");
    }
    // A region the topic leaves out.
    let r =
        app.admin(Method::PATCH, "/api/v1/topics/models.reg").json(&json!({"regions": ["eu"]})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = register(app, "models.reg", json!({"url": home, "locations": {"us": us_url("external/ml/a.bin")}})).await;
    assert_error(r, 400, "invalid_request").await;
    let r = app.admin(Method::PATCH, "/api/v1/topics/models.reg").json(&json!({"regions": null})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Unknown fields stay refused.
    let r = register(app, "models.reg", json!({"url": home, "location": {"us": us_url("external/ml/a.bin")}})).await;
    assert_eq!(r.status(), 400);
    // Nothing was stored by any of these.
    assert_eq!(version_count(app).await, 2);
    let copies_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM object_copies").fetch_one(&app.pool).await.unwrap();
    assert_eq!(copies_rows, 4);

    // The real thing: each region holds the publisher's object from the commit on.
    let r = register(app, "models.reg", json!({"url": home, "locations": {"us": us_url("external/ml/a.bin")}})).await;
    let p: Value = r.json().await.unwrap();
    assert_eq!((p["storage"].as_str(), p["sha256"].as_str()), (Some("object"), Some(digest.as_str())), "{p}");
    let listed: Value = app.admin(Method::GET, "/api/v1/topics/models.reg/versions/1/regions").json_body().await;
    let rows: Vec<(String, String, String)> = listed["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["region"].as_str().unwrap().into(),
                c["state"].as_str().unwrap().into(),
                c["url"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("eu".into(), "done".into(), home.clone()), ("us".into(), "done".into(), us_url("external/ml/a.bin"))],
        "{listed}"
    );
    // Objects Imprint stored show no URL.
    let listed: Value = app.admin(Method::GET, "/api/v1/topics/models.other/versions/2/regions").json_body().await;
    assert!(listed["copies"].as_array().unwrap().iter().all(|c| c["url"].is_null()), "{listed}");
    // Consumers get their own region's object first; each URL sends that region's object.
    let polled = app
        .poll(json!({"consumer": {"instance": "i-us", "labels": {"region": "us"}}, "topics": {"models.reg": null}}))
        .await;
    let urls = polled["updates"]["models.reg"]["data_urls"].as_array().expect("data_urls").clone();
    assert_eq!(urls.iter().map(|d| d["region"].as_str().unwrap()).collect::<Vec<_>>(), ["us", "eu"], "{polled}");
    for d in &urls {
        let r = app.admin(Method::GET, d["url"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-imprint-region"], d["region"].as_str().unwrap());
        assert_eq!(sha(&r.bytes().await.unwrap()), digest);
    }
    // The us object is the one served for us: spoiled there, the us URL sends other bytes
    // (and a client skips it, below).
    put(&t.us_store, "us/external/ml/a.bin", payload(120_000, 23)).await;
    let r = app.admin(Method::GET, "/api/v1/topics/models.reg/versions/1/data?region=us").send().await.unwrap();
    assert_ne!(sha(&r.bytes().await.unwrap()), digest);
    let client = |instance: &str, region: &str| {
        imprint_client::Client::builder(app.url(""))
            .instance(instance)
            .label("region", region)
            .backoff(Duration::from_millis(50), Duration::from_millis(300))
            .build()
            .expect("client")
    };
    let c = client("i-us-spoiled", "us");
    let sub = c.subscribe_bytes("models.reg").await.expect("subscribe");
    eventually("the us client skips the spoiled us object", || async { sub.get().as_ref() == data.as_slice() }).await;
    assert_eq!(c.served_region("models.reg").as_deref(), Some("eu"));
    put(&t.us_store, "us/external/ml/a.bin", data.clone()).await;

    // Registered objects are never deleted, in any region, and nothing copies them.
    app.imprint().copy_pass().await.expect("copy pass");
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/models.reg")
        .json(&json!({"retention": {"max_versions": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    publish(app, "models.reg", payload(50_000, 24)).await;
    purged_after_passes(app, "models.reg", 1).await;
    assert!(exists(&t.eu_store, "eu/external/ml/a.bin").await && exists(&t.us_store, "us/external/ml/a.bin").await);

    // A fresh registration, and eu stopped: an eu client fails over to the us object.
    let r = register(app, "models.other", json!({"url": eu_url("b.bin"), "locations": {}})).await;
    assert_error(r, 422, "object_not_found").await;
    put(&t.eu_store, "eu/external/ml/b.bin", data.clone()).await;
    put(&t.us_store, "us/external/ml/b.bin", data.clone()).await;
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/models.reg")
        .json(&json!({"retention": {"max_versions": null}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r =
        register(app, "models.reg", json!({"url": eu_url("b.bin"), "locations": {"us": us_url("external/ml/b.bin")}}))
            .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    t.eu.stop();
    let c = client("i-eu-down", "eu");
    let sub = c.subscribe_bytes("models.reg").await.expect("subscribe");
    eventually("the eu client holds the registered object with eu down", || async {
        sub.get().as_ref() == data.as_slice()
    })
    .await;
    assert_eq!(c.served_region("models.reg").as_deref(), Some("us"));
}

/// A topic whose regions leave out the home region: publishes stream to the most preferred
/// of its regions, the worker copies the rest from there, and serving, copies, failover and
/// retention never assume the home region holds the object. Three regions: eu (home, on the
/// eu moto), us (the us moto) and ap (a prefix of the eu moto's bucket).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_topic_outside_the_home_region_streams_to_its_own_and_never_touches_home(pool: sqlx::PgPool) {
    use imprint_service::regions::{Region, Regions};
    let Some(eu) = Moto::start().await else { return };
    let Some(mut us) = Moto::start().await else { return };
    let (eu_store, us_store, ap_store) = (eu.objects("eu"), us.objects("us"), eu.objects("ap"));
    let others = vec![
        Region { name: "us".into(), objects: us_store.clone() },
        Region { name: "ap".into(), objects: ap_store.clone() },
    ];
    let regions = Regions::new("eu".into(), others, &["eu".to_owned(), "us".to_owned(), "ap".to_owned()]).unwrap();
    let home = eu_store.clone();
    let app = spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = home;
        c.regions = regions;
        c.janitor_every = Duration::from_secs(3600);
        c.rollout_tick_every = Duration::from_millis(100);
    })
    .await;
    let app = &app;
    app.create_topic_with(
        json!({"name": "models.apac", "owner": "ml", "inline_limit_bytes": 1024, "retention": {"max_versions": 1}}),
    )
    .await;
    // Leaving out home is allowed now; names must still be configured.
    let r = app
        .admin(Method::PATCH, "/api/v1/topics/models.apac")
        .json(&json!({"regions": ["us", "ap"], "min_regions": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let data = payload(200_000, 31);
    let digest = sha(&data);
    let p = publish(app, "models.apac", data.clone()).await;
    assert_eq!(p["storage"], "object", "{p}");
    // Streamed to us (the most preferred of its regions), never written to home.
    assert!(exists(&us_store, &key("us", "models.apac", 1, &digest)).await);
    assert!(!exists(&eu_store, &key("eu", "models.apac", 1, &digest)).await);
    use futures::StreamExt;
    let in_eu = eu_store.store().list(Some(&Path::from("eu"))).collect::<Vec<_>>().await;
    assert!(in_eu.is_empty(), "nothing of this topic in the home store: {in_eu:?}");
    // The worker copies it to ap, from us.
    eventually("the worker copies version 1 to ap", || async {
        copies(app, "models.apac", 1).await == [("ap".to_owned(), "done".to_owned()), ("us".into(), "done".into())]
    })
    .await;
    assert!(exists(&ap_store, &key("ap", "models.apac", 1, &digest)).await);
    let listed: Value = app.admin(Method::GET, "/api/v1/topics/models.apac/versions/1/regions").json_body().await;
    assert!(listed["copies"].as_array().unwrap().iter().all(|c| c["home"] == false), "{listed}");
    let v: Value = app.admin(Method::GET, "/api/v1/topics/models.apac/versions/1").json_body().await;
    assert_eq!(v["object_url"], format!("s3://imprint-regions/us/topics/models.apac/1/{digest}"), "{v}");

    // Serving: without ?region= the object's own region (us); home has none (404); an eu
    // consumer is sent to us then ap.
    let r = app.admin(Method::GET, "/api/v1/topics/models.apac/versions/1/data").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-imprint-region"], "us");
    assert_eq!(sha(&r.bytes().await.unwrap()), digest);
    let r = app.admin(Method::GET, "/api/v1/topics/models.apac/versions/1/data?region=eu").send().await.unwrap();
    assert_error(r, 404, "not_found").await;
    let r = app.admin(Method::GET, "/api/v1/topics/models.apac/versions/1/data?region=ap").send().await.unwrap();
    assert_eq!(sha(&r.bytes().await.unwrap()), digest);
    eventually("polls list us and ap", || async {
        let polled = app
            .poll(
                json!({"consumer": {"instance": "i-eu", "labels": {"region": "eu"}}, "topics": {"models.apac": null}}),
            )
            .await;
        let urls = polled["updates"]["models.apac"]["data_urls"].as_array().cloned().unwrap_or_default();
        urls.iter().map(|d| d["region"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>() == ["us", "ap"]
    })
    .await;
    // Registered objects name their url in the home store: refused for this topic.
    let r = register(app, "models.apac", json!({"url": "s3://imprint-regions/eu/external/ml/a.bin"})).await;
    let body = assert_error(r, 400, "invalid_request").await;
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("home region"), "{body}");

    // us stopped: an eu client gets the ap copy.
    us.stop();
    let client = imprint_client::Client::builder(app.url(""))
        .instance("i-us-down")
        .label("region", "eu")
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .expect("client");
    let sub = client.subscribe_bytes("models.apac").await.expect("subscribe");
    eventually("the eu client holds models.apac from ap", || async { sub.get().as_ref() == data.as_slice() }).await;
    assert_eq!(client.served_region("models.apac").as_deref(), Some("ap"));
    // A publish with us down fails cleanly (its region is where it streams), storing nothing.
    let r = app
        .admin(Method::POST, "/api/v1/topics/models.apac/versions")
        .header("content-type", "application/octet-stream")
        .body(payload(200_000, 32))
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "storage_unavailable").await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM versions").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 1);

    // us back (empty: a fresh moto on its port): version 2 is published; retention purges
    // version 1 in every region that has a copy row, and home is never asked for it.
    let port = us.port();
    us = Moto::start_on(Some(port)).await.expect("moto again");
    let _ = &us;
    us_store.store().put(&Path::from(key("us", "models.apac", 1, &digest)), data.clone().into()).await.expect("put");
    publish(app, "models.apac", payload(150_000, 33)).await;
    purged_after_passes(app, "models.apac", 1).await;
    assert!(!exists(&us_store, &key("us", "models.apac", 1, &digest)).await, "us copy of the purged version deleted");
    assert!(!exists(&ap_store, &key("ap", "models.apac", 1, &digest)).await, "ap copy of the purged version deleted");
    let left: Vec<(String, String)> = sqlx::query_as("SELECT region, key FROM stray_objects WHERE reason = 'purge'")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// Per-region public base URLs (`IMPRINT_REGION_URLS`): `data_urls` entries are absolute per
/// region, so a consumer that cannot reach one region's servers (a dead address for eu here)
/// moves on to the next region's servers (a second real server for us, on the same Postgres
/// and stores).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn region_base_urls_make_data_urls_absolute_and_a_dead_region_server_fails_over(pool: sqlx::PgPool) {
    let Some(eu) = Moto::start().await else { return };
    let Some(us) = Moto::start().await else { return };
    let (home, regions) = imprint_testkit::two_regions(&eu, &us);
    let (home2, regions2) = (home.clone(), regions.clone());
    // us's own server: no public URLs of its own (its data_urls stay relative).
    let us_server = spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = home2;
        c.regions = regions2;
    })
    .await;
    // A port nothing listens on: eu's servers are down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spec = format!("eu=http://127.0.0.1:{dead}/,us={}", us_server.url(""));
    let regions = regions.with_public_urls(&spec).expect("urls");
    let app = spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = home;
        c.regions = regions;
    })
    .await;
    let app = &app;
    app.create_topic_with(json!({"name": "models.far", "owner": "ml", "inline_limit_bytes": 1024})).await;
    let data = payload(100_000, 41);
    publish(app, "models.far", data.clone()).await;
    let polled = app
        .poll(json!({"consumer": {"instance": "i-eu", "labels": {"region": "eu"}}, "topics": {"models.far": null}}))
        .await;
    let u = &polled["updates"]["models.far"];
    let urls: Vec<(String, String)> = u["data_urls"]
        .as_array()
        .expect("data_urls")
        .iter()
        .map(|d| (d["region"].as_str().unwrap().to_owned(), d["url"].as_str().unwrap().to_owned()))
        .collect();
    let path = "/api/v1/topics/models.far/versions/1/data";
    assert_eq!(
        urls,
        [
            ("eu".to_owned(), format!("http://127.0.0.1:{dead}{path}?region=eu")),
            ("us".to_owned(), us_server.url(&format!("{path}?region=us"))),
        ],
        "{polled}"
    );
    assert_eq!(u["data_url"], urls[0].1.as_str());
    // The us server answers its URL.
    let r = reqwest::get(&urls[1].1).await.unwrap();
    assert_eq!(r.headers()["x-imprint-region"], "us");
    assert_eq!(sha(&r.bytes().await.unwrap()), sha(&data));
    // The us server's own polls stay relative.
    let polled = us_server
        .poll(json!({"consumer": {"instance": "i-us", "labels": {"region": "us"}}, "topics": {"models.far": null}}))
        .await;
    assert_eq!(polled["updates"]["models.far"]["data_url"], format!("{path}?region=us"), "{polled}");

    // An eu client: eu's server refuses the connection, us's serves it.
    let client = imprint_client::Client::builder(app.url(""))
        .instance("i-eu-client")
        .label("region", "eu")
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .expect("client");
    let sub = client.subscribe_bytes("models.far").await.expect("subscribe");
    eventually("the eu client holds models.far from us's server", || async { sub.get().as_ref() == data.as_slice() })
        .await;
    assert_eq!(client.served_region("models.far").as_deref(), Some("us"));
}

/// Encryption at rest on a server with several regions (docs/encryption.md, "Several
/// regions"): every region's copy is the sealed bytes; a copy is checked by opening it (its
/// SHA-256 is the plaintext's), so a spoiled source is never kept as a copy; each region
/// serves the plaintext to a reader; a rewrap rewrites every region's copy.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn at_rest_copies_are_sealed_in_every_region_and_checked_by_opening_them(pool: sqlx::PgPool) {
    use imprint_service::keys::{Keyring, LocalKeyring};
    let Some(eu) = Moto::start().await else { return };
    let Some(us) = Moto::start().await else { return };
    let (path, keys) = crate::at_rest::keyring(&["orders"]);
    let (eu_store, us_store) = (eu.objects("eu"), us.objects("us"));
    let spawn = |keys: imprint_service::keys::Keys| {
        let (home, regions) = imprint_testkit::two_regions(&eu, &us);
        spawn_app_configured(pool.clone(), pool.clone(), move |c| {
            c.objects = home;
            c.regions = regions;
            c.keys = Some(keys);
            c.janitor_every = Duration::from_secs(3600);
        })
    };
    let app = spawn(keys).await;
    let app = &app;
    app.create_topic_with(json!({"name": "vault.cfg", "owner": "ml", "inline_limit_bytes": 1024,
                                 "encryption": {"mode": "at_rest", "key": "orders"}}))
        .await;
    let marker = b"PLAINTEXT-MARKER-0123456789".repeat(6_000);
    let digest = sha(&marker);
    publish(app, "vault.cfg", marker.clone()).await;
    let (eu1, us1) = (key("eu", "vault.cfg", 1, &digest), key("us", "vault.cfg", 1, &digest));
    let stored = |objects: &Objects, k: &str| {
        let (objects, k) = (objects.clone(), k.to_owned());
        async move { objects.store().get(&Path::from(k)).await.expect("get").bytes().await.expect("bytes").to_vec() }
    };
    // Sealed in both regions: neither store holds the plaintext.
    for (objects, k) in [(&eu_store, &eu1), (&us_store, &us1)] {
        let raw = stored(objects, k).await;
        assert!(!raw.windows(27).any(|w| w == b"PLAINTEXT-MARKER-0123456789"), "{k} is sealed");
        assert_ne!(sha(&raw), digest);
    }
    assert_eq!(copies(app, "vault.cfg", 1).await, [("eu".into(), "done".into()), ("us".into(), "done".into())]);
    // Each region's copy opens to the plaintext for a reader.
    for region in ["eu", "us"] {
        let r = app
            .admin(Method::GET, &format!("/api/v1/topics/vault.cfg/versions/1/data?region={region}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-imprint-region"], region);
        assert_eq!(sha(&r.bytes().await.unwrap()), digest, "{region}");
    }

    // The worker's copy is checked by opening it: with the eu source spoiled (one byte of a
    // later chunk flipped), the us copy is refused, retried, and not kept.
    let r = app.admin(Method::PATCH, "/api/v1/topics/vault.cfg").json(&json!({"min_regions": 1})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v2 = b"SECOND-VERSION-PLAINTEXT".repeat(8_000);
    let d2 = sha(&v2);
    publish(app, "vault.cfg", v2.clone()).await;
    eventually("the worker copies the sealed version 2 to us", || async {
        copies(app, "vault.cfg", 2).await == [("eu".to_owned(), "done".to_owned()), ("us".into(), "done".into())]
    })
    .await;
    let (eu2, us2) = (key("eu", "vault.cfg", 2, &d2), key("us", "vault.cfg", 2, &d2));
    let r = app.admin(Method::GET, "/api/v1/topics/vault.cfg/versions/2/data?region=us").send().await.unwrap();
    assert_eq!(sha(&r.bytes().await.unwrap()), d2);
    let mut spoiled = stored(&eu_store, &eu2).await;
    let at = spoiled.len() - 100;
    spoiled[at] ^= 0x01;
    eu_store.store().put(&Path::from(eu2.clone()), spoiled.into()).await.unwrap();
    us_store.store().delete(&Path::from(us2.clone())).await.unwrap();
    sqlx::query("UPDATE object_copies SET state = 'pending', next_attempt = now() WHERE version = 2 AND region = 'us'")
        .execute(&app.pool)
        .await
        .unwrap();
    eventually("the spoiled copy is refused", || async {
        let r: Value = app.admin(Method::GET, "/api/v1/topics/vault.cfg/versions/2/regions").json_body().await;
        r["copies"].as_array().unwrap().iter().any(|c| {
            c["region"] == "us"
                && c["state"] == "pending"
                && c["attempts"].as_u64() >= Some(2)
                && !c["last_error"].is_null()
        })
    })
    .await;
    assert!(!exists(&us_store, &us2).await, "a copy that does not open to the version's bytes is not kept");

    // A rewrap rewrites every region's copy; after the old key version is retired, a fresh
    // server opens each region's copy.
    let header = |b: &[u8]| imprint_service::at_rest::Header::parse(b).unwrap().unwrap().0;
    let mut ring = Keyring::load(&path).unwrap();
    assert_eq!(ring.rotate("orders").unwrap(), 2);
    ring.save(&path).unwrap();
    app.imprint().rewrap_at_rest("orders").await.expect("rewrap");
    assert_eq!(header(&stored(&eu_store, &eu1).await).key_version, 2);
    assert_eq!(header(&stored(&us_store, &us1).await).key_version, 2);
    let mut ring = Keyring::load(&path).unwrap();
    ring.retire("orders", 1).unwrap();
    ring.save(&path).unwrap();
    let fresh = spawn(crate::at_rest::keys_on(std::sync::Arc::new(LocalKeyring::open(&path).unwrap()))).await;
    for region in ["eu", "us"] {
        let r = fresh
            .admin(Method::GET, &format!("/api/v1/topics/vault.cfg/versions/1/data?region={region}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{region}");
        assert_eq!(sha(&r.bytes().await.unwrap()), digest, "{region}");
    }
}
