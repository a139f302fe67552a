//! Topics encrypted at rest (docs/encryption.md, "At rest"): the setting checked with the
//! key provider, payload bytes sealed wherever they are stored (Postgres, the object store,
//! snapshot manifests; a client holding the key starts from a sealed snapshot, one without
//! does not) and opened for allowed readers, 503 `key_unavailable` while the
//! provider is down (polls keep serving from memory), rewrap after rotation, and a tampered
//! chunk failing the download. The provider is the local keyring or moto's KMS (`eval
//! "$(./dev s3-start)"`: the same endpoint as its S3).
use crate::objects::{file_store, keys as store_keys, s3_store};
use crate::resilience::Proxy;
use crate::validation::{external, Mode, Validator};
use imprint_service::keys::{AwsKms, KeyCacheLimits, KeyProvider, Keyring, Keys, LocalKeyring};
use imprint_service::objects::Objects;
use imprint_testkit::*;
use object_store::path::Path;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Text no sealed payload contains by chance: where it shows up, plaintext leaked.
const MARKER: &str = "ATREST-PLAINTEXT-MARKER-51c9";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A keyring file holding `ids`, and the server's provider on it.
pub(crate) fn keyring(ids: &[&str]) -> (std::path::PathBuf, Keys) {
    let path = scratch_dir("keyring").join("keyring.json");
    let mut ring = Keyring::load(&path).unwrap();
    for id in ids {
        ring.create(id).unwrap();
    }
    ring.save(&path).unwrap();
    (path.clone(), keys_on(Arc::new(LocalKeyring::open(path).unwrap())))
}

pub(crate) fn keys_on(p: Arc<dyn KeyProvider>) -> Keys {
    Keys::new(p, KeyCacheLimits::default())
}

/// moto's KMS endpoint, when the test S3 runs.
fn moto_endpoint() -> Option<String> {
    let e = std::env::var("IMPRINT_TEST_S3_ENDPOINT").ok();
    if e.is_none() {
        assert!(std::env::var("CI").is_err(), "CI runs the KMS tests: IMPRINT_TEST_S3_ENDPOINT is not set");
        eprintln!("IMPRINT_TEST_S3_ENDPOINT is not set: the moto KMS half is skipped (eval \"$(./dev s3-start)\")");
    }
    e
}

/// A fresh KMS key on moto (reached at `endpoint`), and its id.
async fn moto_key(endpoint: &str) -> (Arc<AwsKms>, String) {
    let kms = Arc::new(AwsKms::new(Some(endpoint), "us-east-1", "test", "test", None).unwrap());
    let created = kms.call("CreateKey", json!({"Description": "imprint at-rest test"})).await.unwrap();
    let id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    (kms, id)
}

async fn app_with(pool: &sqlx::PgPool, objects: Objects, keys: Option<Keys>) -> TestApp {
    spawn_app_configured(pool.clone(), pool.clone(), move |c| {
        c.objects = objects;
        c.keys = keys;
    })
    .await
}

async fn raw(app: &TestApp, topic: &str, body: Vec<u8>) -> reqwest::Response {
    app.admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("send")
}

async fn download(app: &TestApp, topic: &str, version: u64) -> (u16, Vec<u8>) {
    let r = app.admin(Method::GET, &format!("/api/v1/topics/{topic}/versions/{version}/data")).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

fn at_rest(key: &str) -> Value {
    json!({"mode": "at_rest", "key": key})
}

/// Every stored byte of a Postgres table, as text (BYTEA shows as hex).
async fn table_text(app: &TestApp, table: &str) -> String {
    sqlx::query_scalar::<_, Option<String>>(&format!("SELECT string_agg(t::text, '') FROM {table} t"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Neither the marker nor its hex (how BYTEA prints) in `text`.
fn no_marker(text: &str, what: &str) {
    assert!(!text.contains(MARKER), "plaintext in {what}");
    assert!(!text.contains(&hex::encode(MARKER)), "plaintext (as hex) in {what}");
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_at_rest_setting_is_checked_with_the_key_provider(pool: sqlx::PgPool) {
    let (_, keys) = keyring(&["orders"]);
    let store = file_store();
    let app = app_with(&pool, store.clone(), Some(keys)).await;
    let create = |body: Value| app.admin(Method::POST, "/api/v1/topics").json(&body).send();
    let msg = |v: Value| v["error"]["message"].as_str().unwrap().to_owned();

    let r = create(json!({"name": "s.a", "encryption": at_rest("nope")})).await.unwrap();
    assert!(msg(assert_error(r, 400, "invalid_request").await).contains("nope"), "an unknown key id");
    let r = create(json!({"name": "s.a", "encryption": {"mode": "at_rest"}})).await.unwrap();
    assert!(msg(assert_error(r, 400, "invalid_request").await).contains("needs a key"));
    let r = create(json!({"name": "s.a", "encryption": {"mode": "at_rest", "key": "orders", "recipients": ["age1x"]}}))
        .await
        .unwrap();
    assert!(msg(assert_error(r, 400, "invalid_request").await).contains("recipients"));
    let r = create(json!({"name": "s.a", "encryption": at_rest("bad key!")})).await.unwrap();
    assert_error(r, 400, "invalid_request").await;
    assert_eq!(app.get_json("/api/v1/topics/s.a").await.0, 404, "nothing was created");

    // A good one, shown as set; a JSON Schema goes with it (the server reads plaintext).
    let t = app
        .create_topic_with(json!({"name": "s.a", "json_schema": {"type": "object"}, "encryption": at_rest("orders")}))
        .await;
    assert_eq!(t["encryption"], at_rest("orders"));
    let r = app.admin(Method::PATCH, "/api/v1/topics/s.a").json(&json!({"encryption": at_rest("nope")})).send().await;
    assert_error(r.unwrap(), 400, "invalid_request").await;
    assert_eq!(app.get_json("/api/v1/topics/s.a").await.1["encryption"], at_rest("orders"), "unchanged");

    // Registered objects cannot be sealed by the server: refused, nothing stored.
    let url = format!("{}/external/payments/model.bin", store.url());
    store.store().put(&Path::from("external/payments/model.bin"), b"{}".to_vec().into()).await.unwrap();
    let r = app
        .admin(Method::POST, "/api/v1/topics/s.a/versions")
        .json(&json!({"object": {"url": url}}))
        .send()
        .await
        .unwrap();
    assert!(msg(assert_error(r, 400, "invalid_request").await).contains("registered object"));
    assert_eq!(app.versions_in_db("s.a").await, 0);

    // Off again (later versions are stored in the clear), and on through PATCH.
    let patch = |body: Value| app.admin(Method::PATCH, "/api/v1/topics/s.a").json(&body).send_json();
    let (s, t) = patch(json!({"encryption": null})).await;
    assert_eq!((s, t["encryption"].clone()), (200, Value::Null), "{t}");
    // Later versions are stored in the clear (and say so).
    app.publish("s.a", json!({"data": "{}"})).await;
    assert_eq!(app.get_json("/api/v1/topics/s.a/versions/1").await.1["sealed"], false);
    let (s, t) = patch(json!({"encryption": at_rest("orders")})).await;
    assert_eq!((s, t["encryption"].clone()), (200, at_rest("orders")), "{t}");

    // No key provider configured: the mode is not available.
    let bare = app_with(&pool, file_store(), None).await;
    let r = bare.admin(Method::POST, "/api/v1/topics").json(&json!({"name": "s.b", "encryption": at_rest("orders")}));
    assert!(msg(assert_error(r.send().await.unwrap(), 400, "invalid_request").await).contains("key provider"));

    // A KMS that cannot be reached: 503 key_unavailable, nothing created.
    let dead = closed_port_url().await;
    let kms = AwsKms::new(Some(&dead), "us-east-1", "test", "test", None).unwrap();
    let down = app_with(&pool, file_store(), Some(keys_on(Arc::new(kms)))).await;
    let r = down.admin(Method::POST, "/api/v1/topics").json(&json!({"name": "s.c", "encryption": at_rest("k")}));
    assert_error(r.send().await.unwrap(), 503, "key_unavailable").await;
    assert_eq!(app.get_json("/api/v1/topics/s.c").await.0, 404);
}

/// Postgres (versions, drafts, validator candidates) and the object store (file and moto's
/// S3, which presigns: at-rest downloads are never redirected to it) hold sealed bytes only,
/// while allowed readers get the plaintext with the plaintext's checksum. With moto running,
/// the data keys come from moto's KMS, and a second server (no cached keys) unwraps them there.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn payload_bytes_of_an_at_rest_topic_never_reach_postgres_or_the_store(pool: sqlx::PgPool) {
    let moto = moto_endpoint();
    let mut cases: Vec<(&str, Objects)> = vec![("file", file_store())];
    if let Some(s3) = s3_store(true) {
        cases.push(("s3", s3));
    }
    for (tag, store) in cases {
        // How to reach the provider again with nothing cached (a second server).
        let (make, key_id): (Box<dyn Fn() -> Keys>, String) = match &moto {
            Some(e) => {
                let (_, id) = moto_key(e).await;
                let e = e.clone();
                (
                    Box::new(move || {
                        keys_on(Arc::new(AwsKms::new(Some(&e), "us-east-1", "test", "test", None).unwrap()))
                    }),
                    id,
                )
            }
            None => {
                let (path, _) = keyring(&["orders"]);
                (Box::new(move || keys_on(Arc::new(LocalKeyring::open(&path).unwrap()))), "orders".to_owned())
            }
        };
        let app = app_with(&pool, store.clone(), Some(make())).await;
        let (small, big) = (format!("small.{tag}"), format!("big.{tag}"));
        for (topic, limit) in [(&small, 1 << 20), (&big, 4096)] {
            app.create_topic_with(json!({"name": topic, "inline_limit_bytes": limit, "encryption": at_rest(&key_id)}))
                .await;
        }
        let small_plain = format!("{{\"password\": \"{MARKER}\"}}");
        let p = app.publish(&small, json!({"data": small_plain})).await;
        assert_eq!(
            (p["storage"].as_str(), p["sha256"].as_str()),
            (Some("inline"), Some(sha(small_plain.as_bytes()).as_str()))
        );
        // Several 64 KiB chunks, streamed into the store.
        let big_plain = MARKER.repeat(12_000).into_bytes();
        let r = raw(&app, &big, big_plain.clone()).await;
        assert_eq!(r.status(), 201);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["storage"], "object");
        assert_eq!(
            (p["size"].as_u64(), p["sha256"].as_str()),
            (Some(big_plain.len() as u64), Some(sha(&big_plain).as_str()))
        );
        let draft_plain = format!("{{\"password\": \"{MARKER}-2\"}}");
        let (s, d) = app.post_json(&format!("/api/v1/topics/{small}/drafts"), &json!({"data": draft_plain})).await;
        assert_eq!(s, 201, "{d}");
        assert_eq!(d["size"], draft_plain.len(), "a draft's size is the plaintext's");
        let (_, v) = app.get_json(&format!("/api/v1/topics/{big}/versions/1")).await;
        assert_eq!((v["sealed"].as_bool(), v["size"].as_u64()), (Some(true), Some(big_plain.len() as u64)), "{v}");

        // Postgres: the BYTEA columns hold the sealed format, nothing anywhere the plaintext.
        let stored: Vec<(Vec<u8>, bool)> = sqlx::query_as(
            "SELECT v.inline_data, v.sealed FROM versions v JOIN topics t ON t.id = v.topic_id WHERE t.name = $1",
        )
        .bind(&small)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(stored.len(), 1);
        assert!(stored[0].1 && stored[0].0.starts_with(b"IMPRAR") && !contains(&stored[0].0, MARKER.as_bytes()));
        let draft: (Vec<u8>, bool) =
            sqlx::query_as("SELECT data, sealed FROM drafts").fetch_one(&app.pool).await.unwrap();
        assert!(draft.1 && draft.0.starts_with(b"IMPRAR") && !contains(&draft.0, MARKER.as_bytes()));
        for table in ["versions", "drafts", "audit_log"] {
            no_marker(&table_text(&app, table).await, table);
        }

        // The object store: every object is sealed, the snapshot manifests too (sealed
        // under the topic's key: the inline payload, its checksum and metadata are inside).
        app.imprint().snapshot_pass().await.expect("snapshots");
        let names = store_keys(&store).await;
        assert_eq!(names.len(), 3, "the one object and two manifests: {names:?}");
        for name in &names {
            let bytes = store.store().get(&Path::from(name.as_str())).await.unwrap().bytes().await.unwrap();
            assert!(!contains(&bytes, MARKER.as_bytes()), "{tag}: {name} holds the plaintext");
            if name.contains("snapshots/") {
                let m: imprint_protocol::SealedManifest = serde_json::from_slice(&bytes).expect("a sealed manifest");
                assert_eq!(m.key, key_id, "{tag}: {name}");
                let sealed = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &m.sealed).unwrap();
                assert!(sealed.starts_with(b"IMPRAR"), "{tag}: {name}");
                assert!(!contains(&bytes, sha(small_plain.as_bytes()).as_bytes()), "{tag}: {name} shows a checksum");
            } else {
                assert!(bytes.starts_with(b"IMPRAR"), "{tag}: the object is sealed");
            }
        }

        // Readers get plaintext: polls (from memory), downloads (streamed open, never a
        // presigned redirect, a Range answered whole), /latest.
        let r = app.poll(json!({"consumer": {"instance": "i-1", "labels": {}}, "topics": {&small: null}})).await;
        let got = r["updates"][&small]["data_base64"].as_str().unwrap();
        use base64::Engine;
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(got).unwrap(), small_plain.as_bytes());
        assert_eq!(download(&app, &small, 1).await, (200, small_plain.clone().into_bytes()));
        let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let r = no_redirects
            .get(app.url(&format!("/api/v1/topics/{big}/versions/1/data")))
            .bearer_auth(ADMIN_TOKEN)
            .header("range", "bytes=10-20")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{tag}: no redirect to the sealed object; the range opened from its chunk");
        assert_eq!(r.headers()["accept-ranges"], "bytes");
        assert_eq!(r.headers()["content-range"], format!("bytes 10-20/{}", big_plain.len()));
        assert_eq!(r.bytes().await.unwrap().to_vec(), big_plain[10..=20].to_vec());
        // Ranges across a chunk boundary, of the last chunk, open-ended; and the whole.
        let n = big_plain.len();
        for (asked, from, to) in [
            ("bytes=65530-65545".to_string(), 65530, 65545),
            (format!("bytes={}-", n - 7), n - 7, n - 1),
            ("bytes=-100".to_string(), n - 100, n - 1),
            (format!("bytes=70000-{}", 3 * 65536 + 3), 70000, 3 * 65536 + 3),
        ] {
            let r = no_redirects
                .get(app.url(&format!("/api/v1/topics/{big}/versions/1/data")))
                .bearer_auth(ADMIN_TOKEN)
                .header("range", &asked)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{tag}: {asked}");
            assert_eq!(r.bytes().await.unwrap().to_vec(), big_plain[from..=to].to_vec(), "{tag}: {asked}");
        }
        assert_eq!(download(&app, &big, 1).await, (200, big_plain.clone()));
        let r = no_redirects
            .get(app.url(&format!("/api/v1/topics/{big}/versions/1/data")))
            .bearer_auth(ADMIN_TOKEN)
            .header("range", format!("bytes={n}-"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{tag}: past the plaintext's end");
        let r = app.admin(Method::GET, &format!("/api/v1/topics/{small}/latest")).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().to_vec(), small_plain.as_bytes());
        // The change-control diff opens the live inline payload.
        let (s, diff) = app.get_json(&format!("/api/v1/topics/{small}/drafts/{}/diff", d["id"])).await;
        assert_eq!(s, 200, "{diff}");
        let lines = diff["scopes"][0]["lines"].as_array().cloned().unwrap_or_default();
        assert!(lines.contains(&json!({"op": "removed", "line": format!("  \"password\": \"{MARKER}\"")})), "{diff}");
        assert!(lines.contains(&json!({"op": "added", "line": format!("  \"password\": \"{MARKER}-2\"")})), "{diff}");

        // A second server with no key cached: the data keys unwrap at the provider (moto's
        // KMS `Decrypt` when it runs).
        let other = app_with(&pool, store.clone(), Some(make())).await;
        assert_eq!(download(&other, &big, 1).await, (200, big_plain.clone()));
        assert_eq!(download(&other, &small, 1).await, (200, small_plain.into_bytes()));
    }
}

/// A candidate kept for an external validator is sealed in Postgres too, and the validator
/// downloads the plaintext.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_candidate_kept_for_external_validators_is_sealed(pool: sqlx::PgPool) {
    let (_, keys) = keyring(&["orders"]);
    let app = app_with(&pool, file_store(), Some(keys)).await;
    let v = Validator::start(Mode::Slow(std::time::Duration::from_millis(1500))).await;
    app.create_topic_with(
        json!({"name": "val", "encryption": at_rest("orders"), "checks": [external(&v.url, json!({}))]}),
    )
    .await;
    let plain = format!("{{\"secret\": \"{MARKER}\"}}");
    let publishing = {
        let (app_url, plain) = (app.url("/api/v1/topics/val/versions"), plain.clone());
        tokio::spawn(async move {
            reqwest::Client::new().post(app_url).bearer_auth(ADMIN_TOKEN).json(&json!({"data": plain})).send().await
        })
    };
    let seen = eventually("the validator is called", || {
        let v = v.clone();
        async move { v.seen().first().cloned() }
    })
    .await;
    // While the validator thinks, the candidate row is there: sealed.
    let (data, sealed): (Vec<u8>, bool) =
        sqlx::query_as("SELECT inline_data, sealed FROM validation_candidates").fetch_one(&app.pool).await.unwrap();
    assert!(sealed && data.starts_with(b"IMPRAR") && !contains(&data, MARKER.as_bytes()));
    assert_eq!(seen.download, (200, plain.into_bytes()), "the validator downloads plaintext");
    assert_eq!(publishing.await.unwrap().unwrap().status(), 201);
}

/// moto's KMS reached through a proxy the test cuts: publishing answers 503 and stores
/// nothing, polls keep serving the payload held in memory (also across a reload), and once
/// the KMS is back publishing works again.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn with_the_kms_down_publishing_answers_503_while_polls_keep_serving(pool: sqlx::PgPool) {
    let Some(endpoint) = moto_endpoint() else { return };
    let (_, key_id) = moto_key(&endpoint).await;
    let proxy = Proxy::start(endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned()).await;
    let kms =
        AwsKms::new(Some(&format!("http://127.0.0.1:{}", proxy.port)), "us-east-1", "test", "test", None).unwrap();
    let store = file_store();
    let app = app_with(&pool, store.clone(), Some(keys_on(Arc::new(kms)))).await;
    app.create_topic_with(json!({"name": "cfg", "inline_limit_bytes": 4096, "encryption": at_rest(&key_id)})).await;
    let v1 = format!("{{\"v\": 1, \"m\": \"{MARKER}\"}}");
    app.publish("cfg", json!({"data": v1})).await;
    let poll = || app.poll(json!({"consumer": {"instance": "i-1", "labels": {}}, "topics": {"cfg": null}}));
    assert_eq!(poll().await["updates"]["cfg"]["version"], 1);
    app.create_topic_with(json!({"name": "big", "inline_limit_bytes": 4096, "encryption": at_rest(&key_id)})).await;
    let big = vec![3u8; 200_000];
    assert_eq!(raw(&app, "big", big.clone()).await.status(), 201);

    proxy.cut();
    let r = app.admin(Method::POST, "/api/v1/topics/cfg/versions").json(&json!({"data": "{\"v\": 2}"})).send().await;
    let e = assert_error(r.unwrap(), 503, "key_unavailable").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("nothing was stored"), "{e}");
    let r = raw(&app, "cfg", vec![7u8; 300_000]).await;
    assert_error(r, 503, "key_unavailable").await;
    assert_eq!(app.versions_in_db("cfg").await, 1, "nothing stored");
    assert_eq!(store_keys(&store).await.len(), 1, "no object was written but big's");

    // Polls serve from memory, also after the state is reloaded from Postgres.
    app.imprint().state().reload(&app.pool, None).await.unwrap();
    let u = poll().await["updates"]["cfg"].clone();
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(u["data_base64"].as_str().unwrap()).unwrap(),
        v1.as_bytes()
    );
    // A server that never held the key cannot open the payload now: its download says why.
    let kms =
        AwsKms::new(Some(&format!("http://127.0.0.1:{}", proxy.port)), "us-east-1", "test", "test", None).unwrap();
    let cold = app_with(&pool, store.clone(), Some(keys_on(Arc::new(kms)))).await;
    let r = cold.admin(Method::GET, "/api/v1/topics/cfg/versions/1/data").send().await.unwrap();
    assert_error(r, 503, "key_unavailable").await;
    // Also for an object: the data key is unwrapped before the answer starts.
    let r = cold.admin(Method::GET, "/api/v1/topics/big/versions/1/data").send().await.unwrap();
    assert_error(r, 503, "key_unavailable").await;
    // The server that sealed it still has the data key in its cache.
    assert_eq!(download(&app, "big", 1).await, (200, big.clone()));

    proxy.restore();
    let p = app.publish("cfg", json!({"data": "{\"v\": 2}"})).await;
    assert_eq!(p["version"], 2);
    assert_eq!(download(&cold, "cfg", 1).await, (200, v1.into_bytes()));
    assert_eq!(download(&cold, "big", 1).await, (200, big));
}

/// `keys rotate --rewrap`: after a rotation every stored data key is rewrapped under the
/// new primary (inline payloads, objects, drafts; the chunks byte for byte), the old
/// version is retired, and every version still opens — through the service and through
/// the `imprint-server keys rotate ID --rewrap` command.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn rotation_with_rewrap_keeps_every_version_readable(pool: sqlx::PgPool) {
    let (path, keys) = keyring(&["orders"]);
    let dir = scratch_dir("rewrap-objects");
    let store = Objects::local(&dir).unwrap();
    let app = app_with(&pool, store.clone(), Some(keys)).await;
    app.create_topic_with(json!({"name": "cfg", "inline_limit_bytes": 4096, "encryption": at_rest("orders")})).await;
    let v1 = format!("{{\"v\": \"{MARKER}\"}}").into_bytes();
    let v2 = MARKER.repeat(9_000).into_bytes();
    assert_eq!(raw(&app, "cfg", v1.clone()).await.status(), 201);
    assert_eq!(raw(&app, "cfg", v2.clone()).await.status(), 201);
    let (s, _) = app.post_json("/api/v1/topics/cfg/drafts", &json!({"data": "{\"draft\": 1}"})).await;
    assert_eq!(s, 201);
    let object_key = store_keys(&store).await.pop().unwrap();
    let read_object =
        || async { store.store().get(&Path::from(object_key.as_str())).await.unwrap().bytes().await.unwrap() };
    let header = |b: &[u8]| imprint_service::at_rest::Header::parse(b).unwrap().unwrap();
    let before = read_object().await;
    assert_eq!(header(&before).0.key_version, 1);

    let mut ring = Keyring::load(&path).unwrap();
    assert_eq!(ring.rotate("orders").unwrap(), 2);
    ring.save(&path).unwrap();
    let done = app.imprint().rewrap_at_rest("orders").await.unwrap();
    assert_eq!((done.inline, done.objects, done.drafts), (1, 1, 1), "{done:?}");
    let after = read_object().await;
    let ((h_before, at_before), (h_after, at_after)) = (header(&before), header(&after));
    assert_eq!(h_after.key_version, 2);
    assert_ne!(h_after.wrapped, h_before.wrapped);
    assert_eq!(&after[at_after..], &before[at_before..], "the chunks are kept byte for byte");
    let inline: Vec<u8> =
        sqlx::query_scalar("SELECT inline_data FROM versions WHERE version = 1").fetch_one(&app.pool).await.unwrap();
    assert_eq!(header(&inline).0.key_version, 2);

    // The old version goes: a server with no cached keys still opens everything.
    let mut ring = Keyring::load(&path).unwrap();
    ring.retire("orders", 1).unwrap();
    ring.save(&path).unwrap();
    let fresh = app_with(&pool, store.clone(), Some(keys_on(Arc::new(LocalKeyring::open(&path).unwrap())))).await;
    assert_eq!(download(&fresh, "cfg", 1).await, (200, v1.clone()));
    assert_eq!(download(&fresh, "cfg", 2).await, (200, v2.clone()));
    let drafts: Value = fresh.admin(Method::GET, "/api/v1/topics/cfg/drafts").json_body().await;
    let id = drafts["drafts"][0]["id"].as_i64().unwrap();
    let name = imprint_domain::TopicName::parse("cfg").unwrap();
    let (_, data) = fresh.imprint().draft_payload(&imprint_service::Caller::System, &name, id).await.unwrap();
    assert_eq!(&data[..], b"{\"draft\": 1}");

    // The command does the same: rotate to 3, rewrap, retire 2, and everything opens.
    let opts = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imprint-server"))
        .args(["keys", "rotate", "orders", "--rewrap"])
        .env("DATABASE_URL", &url)
        .env("IMPRINT_KEYRING", &path)
        .env("IMPRINT_OBJECT_STORE", format!("file://{}", dir.display()))
        .env("IMPRINT_HOME", scratch_dir("rewrap-home"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("rewrapped 1 inline payload(s), 1 object(s), 1 draft(s)"), "{said}");
    let mut ring = Keyring::load(&path).unwrap();
    ring.retire("orders", 2).unwrap();
    ring.save(&path).unwrap();
    let fresh = app_with(&pool, store.clone(), Some(keys_on(Arc::new(LocalKeyring::open(&path).unwrap())))).await;
    assert_eq!(download(&fresh, "cfg", 1).await, (200, v1));
    assert_eq!(download(&fresh, "cfg", 2).await, (200, v2));
    assert_eq!(header(&read_object().await).0.key_version, 3);
}

/// A chunk altered in the store: the download stops before it (only chunks that
/// authenticated went out) and fails; an altered inline payload is refused whole.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_tampered_chunk_fails_the_download_with_a_clear_error(pool: sqlx::PgPool) {
    let (_, keys) = keyring(&["orders"]);
    let dir = scratch_dir("tamper-objects");
    let store = Objects::local(&dir).unwrap();
    let app = app_with(&pool, store.clone(), Some(keys)).await;
    app.create_topic_with(json!({"name": "cfg", "inline_limit_bytes": 4096, "encryption": at_rest("orders")})).await;
    let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(raw(&app, "cfg", plain.clone()).await.status(), 201);
    let key = store_keys(&store).await.pop().unwrap();
    let file = dir.join(&key);
    let mut sealed = std::fs::read(&file).unwrap();
    let (_, start) = imprint_service::at_rest::Header::parse(&sealed).unwrap().unwrap();
    let chunk = imprint_service::at_rest::CHUNK + imprint_service::at_rest::TAG;
    let original = sealed.clone();
    // A byte inside the first chunk: found before the answer starts, a clear error.
    sealed[start + 100] ^= 0x01;
    std::fs::write(&file, &sealed).unwrap();
    let r = app.admin(Method::GET, "/api/v1/topics/cfg/versions/1/data").send().await.unwrap();
    let e = assert_error(r, 500, "payload_altered").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("failed authentication at chunk 0"), "{e}");

    // A byte inside the fifth chunk, read after the answer started: the download stops
    // before it (only chunks that authenticated went out) and fails.
    let mut sealed = original;
    sealed[start + 4 * chunk + 100] ^= 0x01;
    std::fs::write(&file, &sealed).unwrap();
    let mut got = Vec::new();
    let mut failed = false;
    match app.admin(Method::GET, "/api/v1/topics/cfg/versions/1/data").send().await {
        Err(_) => failed = true,
        Ok(mut r) => loop {
            match r.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        },
    }
    assert!(failed, "the download fails rather than ending as if complete");
    assert!(got.len() <= 4 * imprint_service::at_rest::CHUNK, "nothing from the altered chunk on: {}", got.len());
    assert_eq!(&plain[..got.len()], &got[..], "only authenticated plaintext went out");
    // Reading it whole (the console's preview, a binding) says so plainly.
    let name = imprint_domain::TopicName::parse("cfg").unwrap();
    let n = imprint_domain::VersionNumber::new(1).unwrap();
    let e = app.imprint().version_data(&imprint_service::Caller::System, &name, n).await.unwrap_err();
    assert_eq!(e.code(), "payload_altered");
    assert!(e.to_string().contains("altered"), "{e}");

    // Inline: a flipped byte in Postgres, refused whole with the reason.
    app.publish("cfg", json!({"data": "{\"small\": true}"})).await;
    sqlx::query(
        "UPDATE versions SET inline_data = set_byte(inline_data, length(inline_data) - 3, 0) WHERE version = 2",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app.admin(Method::GET, "/api/v1/topics/cfg/versions/2/data").send().await.unwrap();
    let e = assert_error(r, 500, "payload_altered").await;
    assert!(e["error"]["message"].as_str().unwrap().contains("failed authentication"), "{e}");
}

/// The attack: a caller without rights to a restricted at-rest topic gets none of it —
/// not by download, poll, `/latest` or the version list — and anonymous callers neither.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_reader_without_rights_gets_nothing_of_a_restricted_at_rest_topic(pool: sqlx::PgPool) {
    let (_, keys) = keyring(&["orders"]);
    let app = app_with(&pool, file_store(), Some(keys)).await;
    app.create_topic_with(
        json!({"name": "red.secret", "owner": "red", "restricted": true, "encryption": at_rest("orders")}),
    )
    .await;
    let plain = format!("{{\"k\": \"{MARKER}\"}}");
    app.publish("red.secret", json!({"data": plain})).await;
    let blue = app.token("blue-pub", Some("blue")).await;
    let fleet = app.consumer_token("fleet", Some("blue"), &[], &[]).await;
    // Rights come first: with the stored bytes unopenable, those callers still learn
    // nothing (no 500, no provider call made for them).
    let mut broken = false;
    for round in 0..2 {
        if round == 1 {
            sqlx::query("UPDATE versions SET inline_data = set_byte(inline_data, length(inline_data) - 3, 0)")
                .execute(&app.pool)
                .await
                .unwrap();
            broken = true;
        }
        for token in [Some(blue.as_str()), Some(fleet.as_str()), None] {
            for path in [
                "/api/v1/topics/red.secret/versions/1/data",
                "/api/v1/topics/red.secret/latest",
                "/api/v1/topics/red.secret/versions",
            ] {
                let mut req = app.req(Method::GET, path);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap();
                assert!(matches!(status, 401 | 403 | 404), "{path} with {token:?}: {status}");
                assert!(!contains(&body, MARKER.as_bytes()), "{path} leaked");
            }
            let mut req = app.req(Method::POST, "/api/v1/poll");
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req
                .json(&json!({"consumer": {"instance": "i-9", "labels": {}}, "topics": {"red.secret": null}}))
                .send()
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            assert!(!body.contains(MARKER) && !body.contains("data_base64"), "a poll leaked: {body}");
        }
    }
    assert!(broken);
    // The owner's admin is refused the altered bytes with the reason (once the coalesced
    // read of before the change, kept 500 ms, is gone).
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let r = app.admin(Method::GET, "/api/v1/topics/red.secret/versions/1/data").send().await.unwrap();
    assert_error(r, 500, "payload_altered").await;
}

/// Every plaintext read of an at-rest version is counted per reader and version — polls
/// answered with the payload, `/latest`, downloads — batched and shown to the topic's
/// writers; reads of other topics are not counted, and readers cannot see the audit.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn plaintext_reads_are_audited_per_reader_and_version(pool: sqlx::PgPool) {
    let (_, keys) = keyring(&["orders"]);
    let app = app_with(&pool, file_store(), Some(keys)).await;
    app.create_topic_with(json!({"name": "sealed", "encryption": at_rest("orders")})).await;
    app.create_topic("plain").await;
    app.publish("sealed", json!({"data": "{\"v\": 1}"})).await;
    app.publish("plain", json!({"data": "{\"v\": 1}"})).await;
    let fleet = app.consumer_token("fleet", None, &[], &[]).await;
    let as_fleet = |m: Method, path: &str| app.req(m, path).bearer_auth(&fleet);
    let r = as_fleet(Method::POST, "/api/v1/poll")
        .json(&json!({"consumer": {"instance": "i-1", "labels": {}}, "topics": {"sealed": null, "plain": null}}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body["updates"]["sealed"]["data_base64"].is_string(), "{body}");
    for path in [
        "/api/v1/topics/sealed/versions/1/data",
        "/api/v1/topics/sealed/versions/1/data",
        "/api/v1/topics/sealed/latest",
        "/api/v1/topics/plain/versions/1/data",
    ] {
        assert_eq!(as_fleet(Method::GET, path).send().await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(download(&app, "sealed", 1).await.0, 200);

    let (s, audit) = app.get_json("/api/v1/topics/sealed/plaintext-reads").await;
    assert_eq!(s, 200, "{audit}");
    let reads = audit["reads"].as_array().unwrap();
    let of = |reader: &str| reads.iter().find(|r| r["reader"] == reader).cloned();
    let f = of("token:fleet").unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(
        (f["version"].as_u64(), f["reads"].as_u64()),
        (Some(1), Some(4)),
        "poll + 2 downloads + latest: {audit}"
    );
    assert!(f["first_at"].as_str() <= f["last_at"].as_str());
    assert_eq!(reads.len(), 2, "fleet and the admin: {audit}");
    let stored: i64 =
        sqlx::query_scalar("SELECT sum(reads)::bigint FROM plaintext_reads").fetch_one(&app.pool).await.unwrap();
    assert_eq!(stored, 5, "written to Postgres; nothing of the plain topic");
    let (_, plain) = app.get_json("/api/v1/topics/plain/plaintext-reads").await;
    assert_eq!(plain["reads"], json!([]));
    // A reader does not see who else read.
    let r = as_fleet(Method::GET, "/api/v1/topics/sealed/plaintext-reads").send().await.unwrap();
    assert_error(r, 403, "forbidden").await;
}

/// A topic's snapshot is sealed under its key; a client given the key (a copy of the
/// keyring, or access to the KMS key) starts from it with the server down — inline and
/// object payloads, checked against the plaintext's checksum — while a client without the
/// key, or with another keyring, does not use it (it logs why and starts from the default).
/// A rewrap after a rotation rewraps the sealed manifests too.
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn a_client_with_the_key_starts_from_a_sealed_snapshot_and_one_without_does_not(pool: sqlx::PgPool) {
    use imprint_client::{Client, Source};
    /// How the client is given the key: a copy of the keyring file, or the KMS.
    enum ClientKey {
        Keyring(std::path::PathBuf),
        Kms(Arc<dyn KeyProvider>),
    }
    let mut providers: Vec<(&str, Keys, String, ClientKey)> = Vec::new();
    let (path, keys) = keyring(&["orders"]);
    providers.push(("keyring", keys, "orders".into(), ClientKey::Keyring(path.clone())));
    if let Some(e) = moto_endpoint() {
        let (kms, id) = moto_key(&e).await;
        providers.push(("kms", keys_on(kms.clone()), id, ClientKey::Kms(kms)));
    }
    let down = closed_port_url().await;
    for (tag, keys, key_id, client_key) in providers {
        let dir = scratch_dir(&format!("sealed-snapshots-{tag}"));
        let store = Objects::local(&dir).unwrap();
        let app = spawn_app_configured(pool.clone(), pool.clone(), {
            let store = store.clone();
            move |c| {
                c.objects = store;
                c.keys = Some(keys);
                c.snapshot_every = std::time::Duration::from_secs(3600);
            }
        })
        .await;
        let (small, big) = (format!("snap-small.{tag}"), format!("snap-big.{tag}"));
        for (topic, limit) in [(&small, 1 << 20), (&big, 4096)] {
            app.create_topic_with(json!({"name": topic, "inline_limit_bytes": limit, "encryption": at_rest(&key_id)}))
                .await;
        }
        let small_plain = format!("{{\"password\": \"{MARKER}\"}}").into_bytes();
        // Several chunks: the object is opened as it streams.
        let big_plain = MARKER.repeat(9_000).into_bytes();
        assert_eq!(raw(&app, &small, small_plain.clone()).await.status(), 201);
        assert_eq!(raw(&app, &big, big_plain.clone()).await.status(), 201);
        let pass = app.imprint().snapshot_pass().await.expect("snapshots");
        assert_eq!(pass.written, 2, "{tag}: {pass:?}");
        for name in store_keys(&store).await {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            assert!(!contains(&bytes, MARKER.as_bytes()), "{tag}: {name} holds the plaintext");
        }

        let store_url = format!("file://{}", dir.display());
        let builder = |instance: &str| {
            Client::builder(&down)
                .instance(instance)
                .snapshot_store(&store_url)
                .backoff(std::time::Duration::from_millis(50), std::time::Duration::from_millis(500))
        };
        let with_key = |b: imprint_client::ClientBuilder| match &client_key {
            ClientKey::Keyring(p) => b.snapshot_keyring(p),
            ClientKey::Kms(k) => b.snapshot_key_provider(k.clone()),
        };
        // With the key: both start from the snapshot, with the plaintext.
        let c = with_key(builder("i-key")).build().expect("client");
        let s = c.subscribe_bytes(&small).await.expect("subscribe");
        let b = c.subscribe_file(&big).await.expect("subscribe file");
        assert_eq!((s.source(), s.version()), (Source::Snapshot, Some(1)), "{tag}");
        assert_eq!(s.get().to_vec(), small_plain, "{tag}");
        assert_eq!(b.source(), Source::Snapshot, "{tag}");
        assert_eq!(std::fs::read(b.get().as_ref().as_ref().expect("a file")).unwrap(), big_plain, "{tag}");
        c.shutdown().await;

        // Without a key, or with another keyring holding a key of the same id: not used.
        let other = scratch_dir(&format!("other-keyring-{tag}")).join("keyring.json");
        let mut ring = Keyring::load(&other).unwrap();
        ring.create(&key_id).unwrap();
        ring.save(&other).unwrap();
        for (what, b) in
            [("no key", builder("i-none")), ("another keyring", builder("i-other").snapshot_keyring(&other))]
        {
            let c = b.build().expect("client");
            let s = c.subscribe_bytes(&small).await.expect("subscribe");
            let o = c.subscribe_bytes(&big).await.expect("subscribe");
            assert_eq!((s.source(), o.source()), (Source::Default, Source::Default), "{tag}, {what}");
            assert!(s.get().is_empty() && o.get().is_empty(), "{tag}, {what}");
            c.shutdown().await;
        }

        if let ClientKey::Keyring(keyring_path) = &client_key {
            // A rotation with rewrap rewraps the manifests; with the old version retired,
            // the client (a fresh copy of the keyring) still opens them.
            let mut ring = Keyring::load(keyring_path).unwrap();
            ring.rotate("orders").unwrap();
            ring.save(keyring_path).unwrap();
            let done = app.imprint().rewrap_at_rest("orders").await.unwrap();
            assert_eq!(done.manifests, 2, "{done:?}");
            let mut ring = Keyring::load(keyring_path).unwrap();
            ring.retire("orders", 1).unwrap();
            ring.save(keyring_path).unwrap();
            let c = with_key(builder("i-rotated")).build().expect("client");
            let s = c.subscribe_bytes(&small).await.expect("subscribe");
            assert_eq!(s.source(), Source::Snapshot, "the rewrapped manifest opens");
            assert_eq!(s.get().to_vec(), small_plain);
            c.shutdown().await;
        }
    }
}

/// Apollo, OpenFeature (OFREP) and Spring Cloud Config hand out an at-rest topic's
/// plaintext too: each read is counted in the plaintext-read audit under the caller (the
/// token's name; an Apollo client, which has no token, by its app id).
#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn apollo_openfeature_and_spring_reads_are_counted_in_the_plaintext_audit(pool: sqlx::PgPool) {
    use hmac::Mac;
    let (_, keys) = keyring(&["orders"]);
    let app = app_with(&pool, file_store(), Some(keys)).await;
    let bindings = [
        ("a.apollo", json!({"apollo": {"app_id": "vault", "namespace": "application", "secret": "s3cr3t"}})),
        ("a.flag", json!({"ofrep": {"flag_key": "new-checkout", "field": "enabled"}})),
        ("a.spring", json!({"spring": {"application": "shop"}})),
    ];
    for (name, binding) in &bindings {
        let mut t = json!({"name": name, "owner": "shop", "encryption": at_rest("orders")});
        t.as_object_mut().unwrap().extend(binding.as_object().unwrap().clone());
        app.create_topic_with(t).await;
        app.publish(name, json!({"data": format!("{{\"enabled\": true, \"secret\": \"{MARKER}\"}}")})).await;
    }
    let fleet = app.consumer_token("fleet", None, &[], &[]).await;

    // Apollo: a signed config read (twice).
    let path = "/apollo/configs/vault/default/application?ip=10.1.1.1";
    for _ in 0..2 {
        let ts = chrono::Utc::now().timestamp_millis().to_string();
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cr3t").unwrap();
        mac.update(format!("{ts}\n{path}").as_bytes());
        let sig = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, mac.finalize().into_bytes());
        let r = app
            .req(Method::GET, path)
            .header("Timestamp", &ts)
            .header("Authorization", format!("Apollo vault:{sig}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let c: Value = r.json().await.unwrap();
        assert_eq!(c["configurations"]["secret"], MARKER, "{c}");
    }
    // OFREP: one flag, then the bulk evaluation, with the fleet token.
    let r = app
        .req(Method::POST, "/ofrep/v1/evaluate/flags/new-checkout")
        .bearer_auth(&fleet)
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    let flag: Value = r.json().await.unwrap();
    assert_eq!(flag["value"], true, "{flag}");
    let r = app
        .req(Method::POST, "/ofrep/v1/evaluate/flags")
        .bearer_auth(&fleet)
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Spring: the environment, with the fleet token (Basic, as Spring clients send it).
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("app:{fleet}"));
    let r = app.req(Method::GET, "/spring/shop/default").header("authorization", format!("Basic {basic}")).send();
    let env: Value = r.await.unwrap().json().await.unwrap();
    assert!(env.to_string().contains(MARKER), "{env}");

    for (topic, reader, reads) in
        [("a.apollo", "apollo:vault", 2), ("a.flag", "token:fleet", 2), ("a.spring", "token:fleet", 1)]
    {
        let (s, audit) = app.get_json(&format!("/api/v1/topics/{topic}/plaintext-reads")).await;
        assert_eq!(s, 200, "{audit}");
        let row = audit["reads"].as_array().unwrap().iter().find(|r| r["reader"] == reader).cloned();
        let row = row.unwrap_or_else(|| panic!("{topic}: no read by {reader}: {audit}"));
        assert_eq!((row["version"].as_u64(), row["reads"].as_u64()), (Some(1), Some(reads)), "{topic}: {audit}");
    }
}
