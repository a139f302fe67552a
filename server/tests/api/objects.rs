//! Datasets of any size: payloads beyond the inline limit in the object store — the same
//! tests against a local directory (`file://`) and a real S3 API (moto, started by
//! `./dev test`: `IMPRINT_TEST_S3_ENDPOINT`, `IMPRINT_TEST_S3_BUCKET`).
use futures::TryStreamExt;
use imprint_service::objects::Objects;
use imprint_testkit::*;
use object_store::path::Path;
use object_store::ObjectStore;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub struct Store {
    /// `file` or `s3`: also a topic-name suffix, so both stores can share one database.
    pub tag: &'static str,
    pub objects: Objects,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// A fresh S3 store under a random prefix of the test bucket, if the test S3 runs.
pub fn s3_store(presign: bool) -> Option<Objects> {
    let (Ok(endpoint), Ok(bucket)) =
        (std::env::var("IMPRINT_TEST_S3_ENDPOINT"), std::env::var("IMPRINT_TEST_S3_BUCKET"))
    else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs the S3 half of the storage tests: IMPRINT_TEST_S3_ENDPOINT is not set (./dev test starts moto)"
        );
        eprintln!("IMPRINT_TEST_S3_ENDPOINT is not set: skipping the S3 half (eval \"$(./dev s3-start)\" to run it)");
        return None;
    };
    let options: Vec<(String, String)> = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
        ("aws_allow_http", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Some(Objects::open(&format!("s3://{bucket}/t{}", random_hex()), &options, presign).expect("S3 store"))
}

pub fn file_store() -> Objects {
    let dir = std::env::temp_dir().join("imprint-test-objects").join(random_hex());
    Objects::local(&dir).expect("local store")
}

pub fn stores() -> Vec<Store> {
    let mut out = vec![Store { tag: "file", objects: file_store() }];
    if let Some(objects) = s3_store(false) {
        out.push(Store { tag: "s3", objects });
    }
    out
}

async fn app_on(pool: &sqlx::PgPool, store: &Store) -> TestApp {
    let objects = store.objects.clone();
    spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = objects;
        c.janitor_every = Duration::from_millis(200);
    })
    .await
}

/// Every key in the store (under its prefix).
pub(crate) async fn keys(objects: &Objects) -> Vec<String> {
    let prefix = objects.url().strip_prefix("s3://").and_then(|r| r.split_once('/')).map(|(_, p)| Path::from(p));
    let list: Vec<_> = objects.store().list(prefix.as_ref()).try_collect().await.expect("list");
    let mut out: Vec<String> = list.into_iter().map(|m| m.location.to_string()).collect();
    out.sort();
    out
}

fn bytes_of(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8).collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn raw_publish(app: &TestApp, topic: &str, body: Vec<u8>, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut r = app
        .admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
        .header("content-type", "application/octet-stream")
        .body(body);
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.send().await.expect("send")
}

async fn stray_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stray_objects").fetch_one(&app.pool).await.expect("count")
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_64_mib_payload_round_trips_through_the_object_store(pool: sqlx::PgPool) {
    for store in stores() {
        let app = app_on(&pool, &store).await;
        let topic = format!("big.{}", store.tag);
        app.create_topic(&topic).await;
        let payload = bytes_of(64 << 20, 7);
        let digest = sha(&payload);
        let r = raw_publish(&app, &topic, payload, &[("x-imprint-sha256", &digest)]).await;
        assert_eq!(r.status(), 201, "{}", store.tag);
        let p: Value = r.json().await.expect("json");
        assert_eq!(p["storage"], "object");
        assert_eq!(p["size"], 64 << 20);
        assert_eq!(p["sha256"], digest);
        // Keyed by topic, version and checksum; nothing left in uploads/.
        let keys = keys(&store.objects).await;
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].ends_with(&format!("topics/{topic}/1/{digest}")), "{keys:?}");
        assert_eq!(stray_rows(&app).await, 0);
        let v: Value = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/1")).json_body().await;
        assert_eq!(v["storage"], "object");
        assert!(v["object_url"].as_str().is_some_and(|u| u.ends_with(&keys[0].rsplit("topics/").next().unwrap_or(""))));
        let r = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/1/data")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], (64u64 << 20).to_string().as_str());
        assert_eq!(r.headers()["etag"], format!("\"{digest}\"").as_str());
        let body = r.bytes().await.unwrap();
        assert_eq!(sha(&body), digest, "download of {}", store.tag);
        // Polls carry a data_url (never the bytes) for an object payload.
        let polled =
            app.poll(json!({"consumer": {"instance": "i-1", "labels": {}}, "topics": {topic.clone(): null}})).await;
        let u = &polled["updates"][&topic];
        assert_eq!(u["version"], 1, "{polled}");
        assert!(u.get("data_base64").is_none_or(Value::is_null), "{polled}");
        assert_eq!(u["data_url"], format!("/api/v1/topics/{topic}/versions/1/data"));
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn an_interrupted_upload_leaves_no_version_and_no_object(pool: sqlx::PgPool) {
    for store in stores() {
        let app = app_on(&pool, &store).await;
        let topic = format!("cut.{}", store.tag);
        app.create_topic(&topic).await;
        // Announce 24 MiB, send 12 MiB, hang up.
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
        let head = format!(
            "POST /api/v1/topics/{topic}/versions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            24 << 20
        );
        conn.write_all(head.as_bytes()).await.expect("head");
        conn.write_all(&bytes_of(12 << 20, 1)).await.expect("body");
        conn.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(conn);
        eventually("the abandoned upload is cleaned up", || async {
            stray_rows(&app).await == 0 && keys(&store.objects).await.is_empty()
        })
        .await;
        assert_eq!(app.versions_in_db(&topic).await, 0, "{}", store.tag);
        // The topic still works.
        let r = raw_publish(&app, &topic, bytes_of(3 << 20, 2), &[]).await;
        assert_eq!(r.status(), 201);
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn checksums_and_sizes_are_enforced_and_refusals_store_nothing(pool: sqlx::PgPool) {
    for store in stores() {
        let app = app_on(&pool, &store).await;
        let topic = format!("check.{}", store.tag);
        app.create_topic_with(json!({"name": topic, "owner": "payments", "inline_limit_bytes": 1024,
            "max_size_bytes": 4 << 20}))
            .await;
        let payload = bytes_of(2 << 20, 3);
        let wrong = sha(b"something else");
        // Object-sized and inline-sized payloads with a wrong checksum.
        let r = raw_publish(&app, &topic, payload.clone(), &[("x-imprint-sha256", &wrong)]).await;
        let e = assert_error(r, 422, "checksum_mismatch").await;
        assert!(e["error"]["message"].as_str().unwrap_or("").contains(&sha(&payload)), "{e}");
        let r = raw_publish(&app, &topic, b"small".to_vec(), &[("x-imprint-sha256", &wrong)]).await;
        assert_error(r, 422, "checksum_mismatch").await;
        let r = app
            .admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
            .json(&json!({"data": "small", "sha256": wrong}))
            .send()
            .await
            .unwrap();
        assert_error(r, 422, "checksum_mismatch").await;
        let r = raw_publish(&app, &topic, b"small".to_vec(), &[("x-imprint-sha256", "not-hex")]).await;
        assert_error(r, 400, "invalid_request").await;
        // Beyond max_size_bytes: refused by Content-Length before reading …
        let r = raw_publish(&app, &topic, bytes_of((4 << 20) + 1, 4), &[]).await;
        assert_error(r, 413, "payload_too_large").await;
        // … and while streaming when there is none (chunked).
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..5).map(|i| Ok(bytes_of(1 << 20, i))).collect();
        let r = app
            .admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_error(r, 413, "payload_too_large").await;
        assert_eq!(app.versions_in_db(&topic).await, 0);
        eventually("nothing is left in the store", || async {
            keys(&store.objects).await.is_empty() && stray_rows(&app).await == 0
        })
        .await;
        // The right checksum (upper case is fine) publishes.
        let r =
            raw_publish(&app, &topic, payload.clone(), &[("x-imprint-sha256", &sha(&payload).to_uppercase())]).await;
        assert_eq!(r.status(), 201);
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn registered_objects_are_checked_read_once_and_served(pool: sqlx::PgPool) {
    for store in stores() {
        let app = app_on(&pool, &store).await;
        let topic = format!("reg.{}", store.tag);
        app.create_topic(&topic).await;
        let payload = bytes_of(3 << 20, 9);
        let base = store.objects.url().to_owned();
        // The object key inside the store (the S3 prefix is the part after the bucket).
        let key = match base.strip_prefix("s3://") {
            Some(r) => format!("{}/external/payments/model.bin", r.split_once('/').map(|(_, p)| p).unwrap_or("")),
            None => "external/payments/model.bin".to_owned(),
        };
        store.objects.store().put(&Path::parse(&key).unwrap(), payload.clone().into()).await.expect("put");
        let url = format!("{base}/external/payments/model.bin");
        let register =
            |body: Value| app.admin(Method::POST, &format!("/api/v1/topics/{topic}/versions")).json(&body).send();
        let r = register(json!({"object": {"url": url}, "message": "model"})).await.unwrap();
        assert_eq!(r.status(), 201, "{}", store.tag);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["storage"], "object");
        assert_eq!(p["size"], 3 << 20);
        assert_eq!(p["sha256"], sha(&payload));
        let v: Value = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/1")).json_body().await;
        assert_eq!(v["object_url"], url);
        assert_eq!(v["object_registered"], true);
        let body = app
            .admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/1/data"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha(&body), sha(&payload));
        // A given checksum is verified.
        let r = register(json!({"object": {"url": url}, "sha256": sha(b"x")})).await.unwrap();
        assert_error(r, 422, "checksum_mismatch").await;
        // Missing, outside the store, in Imprint's own area, or not even a URL.
        let r = register(json!({"object": {"url": format!("{base}/external/payments/missing.bin")}})).await.unwrap();
        assert_error(r, 422, "object_not_found").await;
        let r = register(json!({"object": {"url": "s3://another-bucket/datasets/model.bin"}})).await.unwrap();
        assert_error(r, 403, "forbidden").await;
        let r = register(json!({"object": {"url": "file:///etc/passwd"}})).await.unwrap();
        assert_error(r, 403, "forbidden").await;
        let own = keys(&store.objects).await;
        let r = register(json!({"object": {"url": format!("{base}/topics/{topic}/1/x")}})).await.unwrap();
        assert_error(r, 403, "forbidden").await;
        let r = register(json!({"object": {"url": url, "extra": 1}})).await.unwrap();
        assert_error(r, 400, "invalid_request").await;
        let r = register(json!({"object": {"url": url}, "data": "x"})).await.unwrap();
        assert_error(r, 400, "invalid_request").await;
        assert_eq!(app.versions_in_db(&topic).await, 1);
        assert_eq!(keys(&store.objects).await, own, "refusals wrote nothing");
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn object_downloads_honour_range_and_if_none_match(pool: sqlx::PgPool) {
    for store in stores() {
        let app = app_on(&pool, &store).await;
        let topic = format!("range.{}", store.tag);
        app.create_topic(&topic).await;
        let payload = bytes_of((2 << 20) + 123, 5);
        assert_eq!(raw_publish(&app, &topic, payload.clone(), &[]).await.status(), 201);
        let path = format!("/api/v1/topics/{topic}/versions/1/data");
        let get = |h: (&'static str, String)| app.admin(Method::GET, &path).header(h.0, h.1).send();
        let r = get(("range", "bytes=1000-1999".into())).await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["content-range"], format!("bytes 1000-1999/{}", payload.len()).as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), &payload[1000..2000]);
        let r = get(("range", "bytes=-10".into())).await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &payload[payload.len() - 10..]);
        let r = get(("range", format!("bytes={}-", payload.len()))).await.unwrap();
        assert_error(r, 416, "invalid_range").await;
        let etag = format!("\"{}\"", sha(&payload));
        let r = get(("if-none-match", format!("W/\"other\", {etag}"))).await.unwrap();
        assert_eq!(r.status(), 304);
        assert!(r.bytes().await.unwrap().is_empty());
        let r = get(("if-none-match", "\"other\"".into())).await.unwrap();
        assert_eq!(r.status(), 200);
        // Without presigning, ?redirect=true streams as usual; bad values are refused.
        let r = app.admin(Method::GET, &format!("{path}?redirect=true")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = app.admin(Method::GET, &format!("{path}?redirect=maybe")).send().await.unwrap();
        assert_error(r, 400, "invalid_request").await;
        // /latest streams the object as well.
        let r = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/latest")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sha(&r.bytes().await.unwrap()), sha(&payload));
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn multipart_publishes_stream_the_file_part(pool: sqlx::PgPool) {
    for store in stores() {
        let app = app_on(&pool, &store).await;
        let topic = format!("form.{}", store.tag);
        app.create_topic_with(json!({"name": topic, "owner": "payments", "inline_limit_bytes": 1024})).await;
        let payload = bytes_of(3 << 20, 11);
        let boundary = "imprint-test-boundary";
        let part = |name: &str, value: &str| {
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").into_bytes()
        };
        let file = |bytes: &[u8]| {
            let mut b = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.bin\"\r\n\
                 Content-Type: application/x-model\r\n\r\n"
            )
            .into_bytes();
            b.extend_from_slice(bytes);
            b.extend_from_slice(b"\r\n");
            b
        };
        let end = format!("--{boundary}--\r\n").into_bytes();
        let send = |body: Vec<u8>| {
            app.admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .body(body)
                .send()
        };
        let body = [
            part("message", "nightly model"),
            part("scope", "region=eu"),
            part("meta.build", "42"),
            part("sha256", &sha(&payload)),
            file(&payload),
            end.clone(),
        ]
        .concat();
        let r = send(body).await.unwrap();
        assert_eq!(r.status(), 201, "{}", store.tag);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["storage"], "object");
        assert_eq!(p["sha256"], sha(&payload));
        assert_eq!(p["content_type"], "application/x-model");
        assert_eq!(p["scopes"][0]["selector"], json!({"region": "eu"}));
        let v: Value = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/1")).json_body().await;
        assert_eq!(v["message"], "nightly model");
        assert_eq!(v["metadata"], json!({"build": "42"}));
        // A small file stays inline.
        let r = send([part("message", "tiny"), file(b"{\"a\":1}"), end.clone()].concat()).await.unwrap();
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["storage"], "inline", "{p}");
        // Refused, storing nothing: an unknown field, a part after the file, no file.
        let before = keys(&store.objects).await;
        let r = send([part("colour", "red"), file(&payload), end.clone()].concat()).await.unwrap();
        assert_error(r, 400, "invalid_request").await;
        let r = send([file(&payload), part("message", "late"), end.clone()].concat()).await.unwrap();
        let e = assert_error(r, 400, "invalid_request").await;
        assert!(e["error"]["message"].as_str().unwrap_or("").contains("last part"), "{e}");
        let r = send([part("message", "no file"), end.clone()].concat()).await.unwrap();
        assert_error(r, 400, "invalid_request").await;
        assert_eq!(app.versions_in_db(&topic).await, 2);
        eventually("refused uploads leave nothing", || async {
            keys(&store.objects).await == before && stray_rows(&app).await == 0
        })
        .await;
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_store_that_is_down_refuses_publishes_and_polls_go_on(pool: sqlx::PgPool) {
    let options: Vec<(String, String)> = [
        ("aws_endpoint", "http://127.0.0.1:9"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
        ("aws_allow_http", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let down = Objects::open("s3://nowhere/x", &options, false).expect("store");
    let store = Store { tag: "down", objects: down };
    let app = app_on(&pool, &store).await;
    app.create_topic_with(json!({"name": "down", "owner": "payments", "inline_limit_bytes": 1024})).await;
    app.publish("down", json!({"data": "small and inline"})).await;
    let r = raw_publish(&app, "down", bytes_of(1 << 20, 1), &[]).await;
    assert_error(r, 503, "storage_unavailable").await;
    assert_eq!(app.versions_in_db("down").await, 1);
    let polled = app.poll(json!({"consumer": {"instance": "i-1", "labels": {}}, "topics": {"down": null}})).await;
    assert_eq!(polled["updates"]["down"]["version"], 1, "{polled}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn presigned_downloads_redirect_to_s3(pool: sqlx::PgPool) {
    let Some(objects) = s3_store(true) else { return };
    let store = Store { tag: "s3", objects };
    let app = app_on(&pool, &store).await;
    app.create_topic_with(json!({"name": "signed", "owner": "payments", "inline_limit_bytes": 1024})).await;
    let payload = bytes_of(1 << 20, 3);
    assert_eq!(raw_publish(&app, "signed", payload.clone(), &[]).await.status(), 201);
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirects
        .get(app.url("/api/v1/topics/signed/versions/1/data?redirect=true"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("X-Amz-Signature=") && location.contains("X-Amz-Expires=900"), "{location}");
    let direct = reqwest::get(&location).await.unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(sha(&direct.bytes().await.unwrap()), sha(&payload));
    // Inline payloads are served directly even when a redirect is asked for.
    app.publish("signed", json!({"data": "small"})).await;
    let r = no_redirects
        .get(app.url("/api/v1/topics/signed/versions/2/data?redirect=true"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn status_of(app: &TestApp, path: &str) -> u16 {
    app.admin(Method::GET, path).send().await.expect("send").status().as_u16()
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_janitor_purges_what_retention_allows_and_keeps_the_rest(pool: sqlx::PgPool) {
    for store in stores() {
        let clock = imprint_service::ManualClock::new(chrono::Utc::now());
        let objects = store.objects.clone();
        let app = spawn_app_clocked(
            pool.clone(),
            pool.clone(),
            move |c| {
                c.objects = objects;
                c.janitor_every = Duration::from_millis(200);
            },
            std::sync::Arc::new(clock.clone()),
        )
        .await;
        let t = format!("ret.{}", store.tag);
        app.create_topic_with(json!({"name": t, "owner": "payments", "inline_limit_bytes": 1024,
            "retention": {"max_age_days": 1}}))
            .await;
        let base = format!("/api/v1/topics/{t}");
        // v1: an object, to everyone — superseded by v3: purged.
        assert_eq!(raw_publish(&app, &t, bytes_of(2 << 20, 1), &[]).await.status(), 201);
        let v1_key = keys(&store.objects).await;
        assert_eq!(v1_key.len(), 1);
        // v2: pinned for region=us: kept. v3: what `*` still resolves to: kept.
        app.publish(&t, json!({"data": "two"})).await;
        let r = app
            .admin(Method::PUT, &format!("{base}/pins"))
            .json(&json!({"selector": {"region": "us"}, "version": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        app.publish(&t, json!({"data": "three"})).await;
        // v4: a registered object released to nobody: purged, but its object is never deleted.
        store.objects.store().put(&registered_path(&store.objects), bytes_of(4096, 2).into()).await.expect("put");
        let url = format!("{}/external/payments/r.bin", store.objects.url());
        let r = app
            .admin(Method::POST, &format!("{base}/versions"))
            .json(&json!({"object": {"url": url}, "scopes": [], "rollout": null}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        // v5: rolling out (its first stage waits ten days): kept.
        app.publish(
            &t,
            json!({"data": "five", "rollout": {"stages": [
            {"selector": {"cluster": "canary"}, "wait_s": 864000}, {"selector": {}, "wait_s": 0}]}}),
        )
        .await;
        // Within the policy nothing goes.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(status_of(&app, &format!("{base}/versions/1/data")).await, 200);
        // Two days later every version is older than the policy's day. The topic's row is
        // held meanwhile, so the janitor (which skips a locked topic) cannot purge before the
        // preview is read.
        let mut hold = pool.begin().await.unwrap();
        sqlx::query("SELECT id FROM topics WHERE name = $1 FOR UPDATE").bind(&t).execute(&mut *hold).await.unwrap();
        clock.advance(chrono::Duration::days(2));
        let preview: Value = app.admin(Method::GET, &format!("{base}/retention")).json_body().await;
        let action = |v: u64| {
            preview["versions"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["version"] == v))
                .map(|i| i["action"].clone())
        };
        assert_eq!(action(1), Some(json!("purge")), "{preview}");
        assert_eq!(action(2), Some(json!("pinned")), "{preview}");
        assert_eq!(action(3), Some(json!("still_resolved")), "{preview}");
        assert_eq!(action(4), Some(json!("purge")), "{preview}");
        assert_eq!(action(5), Some(json!("in_rollout")), "{preview}");
        hold.commit().await.unwrap();
        eventually("the janitor purges v1 and v4", || async {
            status_of(&app, &format!("{base}/versions/1/data")).await == 410
                && status_of(&app, &format!("{base}/versions/4/data")).await == 410
        })
        .await;
        eventually("v1's object is deleted", || async { !keys(&store.objects).await.contains(&v1_key[0]) }).await;
        assert!(
            keys(&store.objects).await.iter().any(|k| k.ends_with("external/payments/r.bin")),
            "registered object kept"
        );
        for kept in [2, 3, 5] {
            assert_eq!(status_of(&app, &format!("{base}/versions/{kept}/data")).await, 200, "v{kept} kept");
        }
        let v1: Value = app.admin(Method::GET, &format!("{base}/versions/1")).json_body().await;
        assert_eq!(v1["purged"], true);
        assert!(v1["purged_at"].is_string());
        let audit: Vec<(String, Value)> = sqlx::query_as(
            "SELECT actor, details FROM audit_log WHERE action = 'version.purge' AND topic = $1 ORDER BY id",
        )
        .bind(&t)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(audit.len(), 2, "{audit:?}");
        assert!(audit.iter().all(|(actor, _)| actor == "janitor"));
        assert_eq!(audit[0].1["version"], 1);
        assert_eq!(audit[0].1["object_deleted"], true);
        assert_eq!(audit[1].1["object_deleted"], false);
        // Consumers are told: `*` resolves to v3, the pin still holds v2.
        let polled = app
            .poll(json!({"consumer": {"instance": "i", "labels": {"region": "us"}}, "topics": {t.clone(): null}}))
            .await;
        assert_eq!(polled["updates"][&t]["version"], 2, "{polled}");
        app.imprint_shutdown();
    }
}

fn registered_path(objects: &Objects) -> Path {
    match objects.url().strip_prefix("s3://").and_then(|r| r.split_once('/')) {
        Some((_, prefix)) => Path::from(format!("{prefix}/external/payments/r.bin")),
        None => Path::from("external/payments/r.bin"),
    }
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn two_janitors_never_purge_a_version_twice(pool: sqlx::PgPool) {
    let store = Store { tag: "file", objects: file_store() };
    let objects = store.objects.clone();
    let app = spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = objects;
        c.janitor_every = Duration::from_secs(3600);
    })
    .await;
    app.create_topic_with(json!({"name": "many", "owner": "payments", "inline_limit_bytes": 1024,
        "retention": {"max_versions": 1}}))
        .await;
    for i in 0..12 {
        if i % 3 == 0 {
            assert_eq!(raw_publish(&app, "many", bytes_of(5000, i), &[]).await.status(), 201);
        } else {
            app.publish("many", json!({"data": format!("v{i}")})).await;
        }
    }
    let config = |c: &mut imprint_service::Config| c.objects = store.objects.clone();
    let a = imprint_service::Imprint::with_pool(pool.clone(), test_config(config));
    let b = imprint_service::Imprint::with_pool(pool.clone(), test_config(config));
    let c = app.imprint().clone();
    let (ra, rb, rc) = tokio::join!(a.janitor_pass(), b.janitor_pass(), c.janitor_pass());
    let purged = ra.unwrap().purged + rb.unwrap().purged + rc.unwrap().purged;
    // Another round finds nothing left; whoever did it, each version went exactly once.
    let again = a.janitor_pass().await.unwrap().purged + b.janitor_pass().await.unwrap().purged;
    assert_eq!(purged + again, 11);
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'version.purge'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audits, 11);
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT details->>'version') FROM audit_log WHERE action = 'version.purge'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(distinct, 11);
    // The objects of the purged versions (1, 4, 7, 10) are gone; v12 is inline.
    assert_eq!(keys(&store.objects).await, Vec::<String>::new());
    assert_eq!(stray_rows(&app).await, 0);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_body_longer_than_its_content_length_publishes_exactly_the_announced_bytes(pool: sqlx::PgPool) {
    let store = Store { tag: "file", objects: file_store() };
    let app = app_on(&pool, &store).await;
    app.create_topic("exact").await;
    let body = bytes_of(1500, 4);
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/topics/exact/versions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    conn.write_all(&body).await.expect("body");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // The bytes after the announced length are not a request: refused, not published.
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    let v: Value = app.admin(Method::GET, "/api/v1/topics/exact/versions/1").json_body().await;
    assert_eq!(v["size"], 1000);
    assert_eq!(v["sha256"], sha(&body[..1000]));
    assert_eq!(app.versions_in_db("exact").await, 1);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_sweep_deletes_due_stray_objects_but_never_a_version_s(pool: sqlx::PgPool) {
    for store in stores() {
        let app = spawn_app_configured(pool.clone(), pool.clone(), {
            let objects = store.objects.clone();
            move |c| {
                c.objects = objects;
                c.janitor_every = Duration::from_secs(3600);
            }
        })
        .await;
        let topic = format!("sweep.{}", store.tag);
        app.create_topic_with(json!({"name": topic, "owner": "payments", "inline_limit_bytes": 1024})).await;
        assert_eq!(raw_publish(&app, &topic, bytes_of(4096, 1), &[]).await.status(), 201);
        let committed = keys(&store.objects).await;
        assert_eq!(committed.len(), 1);
        // What a server that died mid-upload leaves: an object and its stray row.
        let prefix =
            store.objects.url().strip_prefix("s3://").and_then(|r| r.split_once('/')).map(|(_, p)| format!("{p}/"));
        let orphan = format!("{}uploads/orphan", prefix.clone().unwrap_or_default());
        store.objects.store().put(&Path::from(orphan.as_str()), bytes_of(100, 2).into()).await.expect("put");
        for (key, due) in
            [(orphan.as_str(), "now() - interval '1 minute'"), (committed[0].as_str(), "now() - interval '1 minute'")]
        {
            sqlx::query(&format!("INSERT INTO stray_objects (key, delete_after, reason) VALUES ($1, {due}, 'upload')"))
                .bind(key)
                .execute(&app.pool)
                .await
                .unwrap();
        }
        // A fresh upload (not yet an hour old) is left alone.
        let fresh = format!("{}uploads/fresh", prefix.unwrap_or_default());
        store.objects.store().put(&Path::from(fresh.as_str()), bytes_of(100, 3).into()).await.expect("put");
        sqlx::query(
            "INSERT INTO stray_objects (key, delete_after, reason) VALUES ($1, now() + interval '1 hour', 'upload')",
        )
        .bind(&fresh)
        .execute(&app.pool)
        .await
        .unwrap();
        let pass = app.imprint().janitor_pass().await.expect("pass");
        assert_eq!(pass.swept, 2, "{}", store.tag);
        let left = keys(&store.objects).await;
        assert!(left.contains(&committed[0]), "a committed version's object is never swept: {left:?}");
        assert!(!left.iter().any(|k| k.ends_with("uploads/orphan")), "{left:?}");
        assert!(left.iter().any(|k| k.ends_with("uploads/fresh")), "{left:?}");
        assert_eq!(stray_rows(&app).await, 1);
        let data = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/1/data")).send().await.unwrap();
        assert_eq!(data.status(), 200);
        sqlx::query("DELETE FROM stray_objects").execute(&app.pool).await.unwrap();
    }
}

/// The review's attack (issue 19): a publisher of team blue registers, into its own open
/// topic, objects that belong to red's restricted topic — its snapshot manifest (small
/// payloads inline), its payload objects, an upload — in every spelling of the key, and
/// through links on the local store. Every attempt is refused, nothing is published, and
/// no message names where the store is.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn no_publisher_registers_another_team_s_objects_in_any_spelling(pool: sqlx::PgPool) {
    for store in stores() {
        let app = app_on(&pool, &store).await;
        let (red, blue) = (format!("red.secrets.{}", store.tag), format!("blue.open.{}", store.tag));
        app.create_topic_with(json!({"name": red, "owner": "red", "restricted": true, "inline_limit_bytes": 1024}))
            .await;
        app.create_topic_with(json!({"name": blue, "owner": "blue"})).await;
        app.publish(&red, json!({"data": "the red team's secret"})).await;
        let big = bytes_of(4096, 7);
        let r = raw_publish(&app, &red, big.clone(), &[]).await;
        assert_eq!(r.status(), 201);
        app.imprint().snapshot_pass().await.expect("snapshots");
        let base = store.objects.url().to_owned();
        let prefix = base.strip_prefix("s3://").and_then(|r| r.split_once('/')).map(|(_, p)| format!("{p}/"));
        let relative = |k: &str| prefix.as_deref().and_then(|p| k.strip_prefix(p)).unwrap_or(k).to_owned();
        let own = keys(&store.objects).await;
        let red_object = own.iter().map(|k| relative(k)).find(|k| k.starts_with("topics/")).expect("red's object");
        assert!(own.iter().any(|k| k.ends_with(&format!("snapshots/{red}.json"))), "{own:?}");
        // Red's own registered object, in red's area.
        let red_file = format!("external/red/model-{}.bin", store.tag);
        let put = |k: String, b: Vec<u8>| {
            let path = Path::parse(format!("{}{k}", prefix.as_deref().unwrap_or(""))).expect("path");
            let objects = store.objects.clone();
            async move { objects.store().put(&path, b.into()).await.expect("put") }
        };
        put(red_file.clone(), b"red's model".to_vec()).await;
        let blue_token = app.token(&format!("blue-publisher-{}", store.tag), Some("blue")).await;
        let attempts = [
            format!("{base}//snapshots/{red}.json"),
            format!("{base}/snapshots/{red}.json"),
            format!("{base}///snapshots/{red}.json"),
            format!("{base}//{red_object}"),
            format!("{base}/{red_object}"),
            format!("{base}/./{red_object}"),
            format!("{base}/external/blue/../../{red_object}"),
            format!("{base}/external/blue/%2e%2e/%2e%2e/{red_object}"),
            format!("{base}/external/blue/..%2F..%2F{red_object}"),
            format!("{base}/external%2Fblue%2F..%2F..%2Fsnapshots%2F{red}.json"),
            format!("{base}/%73napshots/{red}.json"),
            format!("{base}/external/blue\\..\\..\\snapshots\\{red}.json"),
            format!("{base}/external/red/model-{}.bin", store.tag),
            format!("{base}//external/red/model-{}.bin", store.tag),
            format!("{base}/external//red/model-{}.bin", store.tag),
            format!("{base}/external/blue/../red/model-{}.bin", store.tag),
            format!("{base}/uploads/x"),
            format!("{base}/{red_file}?x=1"),
        ];
        for url in &attempts {
            let r = app
                .req(Method::POST, &format!("/api/v1/topics/{blue}/versions"))
                .bearer_auth(&blue_token)
                .json(&json!({"object": {"url": url}}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert!(status == 400 || status == 403, "{url}: {status} {body}");
        }
        // On the local store a link out of blue's folder is refused as well.
        if store.tag == "file" {
            let root = base.strip_prefix("file://").expect("file URL");
            let blue_dir = std::path::Path::new(root).join("external/blue");
            std::fs::create_dir_all(&blue_dir).unwrap();
            std::os::unix::fs::symlink(
                std::path::Path::new(root).join(format!("snapshots/{red}.json")),
                blue_dir.join("m.json"),
            )
            .unwrap();
            std::os::unix::fs::symlink(std::path::Path::new(root).join("external/red"), blue_dir.join("red")).unwrap();
            for url in [format!("{base}/external/blue/m.json"), format!("{base}/external/blue/red/model-file.bin")] {
                let r = app
                    .req(Method::POST, &format!("/api/v1/topics/{blue}/versions"))
                    .bearer_auth(&blue_token)
                    .json(&json!({"object": {"url": url}}))
                    .send()
                    .await
                    .unwrap();
                assert_error(r, 403, "forbidden").await;
            }
        }
        assert_eq!(app.versions_in_db(&blue).await, 0, "nothing was published to blue's topic");
        // A key outside the store is refused without saying where the store is.
        let r = app
            .req(Method::POST, &format!("/api/v1/topics/{blue}/versions"))
            .bearer_auth(&blue_token)
            .json(&json!({"object": {"url": "file:///etc/passwd"}}))
            .send()
            .await
            .unwrap();
        let body = assert_error(r, 403, "forbidden").await;
        assert!(!body.to_string().contains(&base), "{body}");
        // Blue's own area works; red's registered object cannot be registered by another
        // topic, even of red.
        put(format!("external/blue/own-{}.bin", store.tag), b"blue's".to_vec()).await;
        let r = app
            .req(Method::POST, &format!("/api/v1/topics/{blue}/versions"))
            .bearer_auth(&blue_token)
            .json(&json!({"object": {"url": format!("{base}/external/blue/own-{}.bin", store.tag)}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let red2 = format!("red.other.{}", store.tag);
        app.create_topic_with(json!({"name": red2, "owner": "red"})).await;
        app.publish(&red, json!({"object": {"url": format!("{base}/{red_file}")}})).await;
        let r = app
            .admin(Method::POST, &format!("/api/v1/topics/{red2}/versions"))
            .json(&json!({"object": {"url": format!("{base}/{red_file}")}}))
            .send()
            .await
            .unwrap();
        assert_error(r, 403, "forbidden").await;
        app.imprint_shutdown();
    }
}

/// A local object is fsynced (file and directory) before its version commits, and a
/// commit that fails — its outcome cannot be known from here — deletes nothing: the
/// sweep, which never deletes what a version points at, decides later.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn objects_are_durable_before_commit_and_an_unknown_commit_deletes_nothing(pool: sqlx::PgPool) {
    let store = Store { tag: "file", objects: file_store() };
    let app = app_on(&pool, &store).await;
    app.create_topic("durable.t").await;
    let before = store.objects.syncs();
    let r = raw_publish(&app, "durable.t", bytes_of(2 << 20, 3), &[]).await;
    assert_eq!(r.status(), 201);
    assert_eq!(store.objects.syncs(), before + 1, "the object was fsynced before the commit");
    // Every commit of a version now fails at COMMIT (a deferred check).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON versions DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION refuse_commit();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let payload = bytes_of(2 << 20, 4);
    let r = raw_publish(&app, "durable.t", payload.clone(), &[]).await;
    assert_error(r, 503, "storage_unavailable").await;
    assert_eq!(app.versions_in_db("durable.t").await, 1);
    let kept = keys(&store.objects).await;
    assert!(kept.iter().any(|k| k.ends_with(&format!("durable.t/2/{}", sha(&payload)))), "{kept:?}");
    assert!(stray_rows(&app).await >= 1, "the sweep looks at it later");
    app.imprint_shutdown();
}

/// The janitor keeps the version a topic's snapshot manifest still names (clients that
/// start from the manifest fetch its object) until a snapshot pass names another.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_janitor_keeps_what_the_snapshot_manifest_names(pool: sqlx::PgPool) {
    let store = Store { tag: "file", objects: file_store() };
    let objects = store.objects.clone();
    let app = spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = objects;
        c.janitor_every = Duration::from_secs(3600);
        c.snapshot_every = Duration::from_secs(3600);
    })
    .await;
    app.create_topic_with(json!({"name": "snap.kept", "owner": "payments", "retention": {"max_versions": 1}})).await;
    let first = bytes_of(2 << 20, 5);
    assert_eq!(raw_publish(&app, "snap.kept", first.clone(), &[]).await.status(), 201);
    app.imprint().snapshot_pass().await.expect("snapshot names v1");
    assert_eq!(raw_publish(&app, "snap.kept", bytes_of(2 << 20, 6), &[]).await.status(), 201);
    // The preview says what the pass will do.
    let preview: Value = app.admin(Method::GET, "/api/v1/topics/snap.kept/retention").json_body().await;
    let v1 = preview["versions"].as_array().and_then(|a| a.iter().find(|i| i["version"] == 1)).cloned();
    assert_eq!(v1.map(|i| i["action"].clone()), Some(json!("in_snapshot")), "{preview}");
    app.imprint().janitor_pass().await.expect("pass");
    let app = &app;
    let held = |v: u64| async move {
        let r = app.admin(Method::GET, &format!("/api/v1/topics/snap.kept/versions/{v}/data")).send().await.unwrap();
        r.status().as_u16()
    };
    assert_eq!(held(1).await, 200, "v1 is what the manifest names");
    app.imprint().snapshot_pass().await.expect("snapshot names v2");
    app.imprint().janitor_pass().await.expect("pass");
    assert_eq!(held(1).await, 410, "purged once the manifest moved on");
    app.imprint_shutdown();
}
