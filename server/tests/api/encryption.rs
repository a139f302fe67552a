//! End-to-end encrypted topics (docs/encryption.md): the topic setting and its checks, the
//! server's refusal of anything but an age file for the topic's recipients, and that the
//! bytes it holds — in Postgres, in the object store, in the snapshot manifest — are
//! ciphertext.
use crate::objects::file_store;
use base64::Engine;
use imprint_client::crypt;
use imprint_testkit::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Text no ciphertext contains by chance: where it shows up, plaintext leaked.
const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn raw(app: &TestApp, topic: &str, body: Vec<u8>) -> reqwest::Response {
    app.admin(Method::POST, &format!("/api/v1/topics/{topic}/versions"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("send")
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn the_setting_is_checked_and_refuses_server_side_plaintext_checks(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let (_, r1) = crypt::generate();
    let (_, r2) = crypt::generate();
    let bad = |body: Value| {
        let app = &app;
        async move {
            let r = app.admin(Method::POST, "/api/v1/topics").json(&body).send().await.expect("send");
            assert_error(r, 400, "invalid_request").await["error"]["message"].as_str().unwrap().to_owned()
        }
    };
    let e2e = |recipients: Value| json!({"mode": "end_to_end", "recipients": recipients});
    assert!(bad(json!({"name": "s.a", "encryption": e2e(json!([]))})).await.contains("1-64"));
    assert!(bad(json!({"name": "s.a", "encryption": e2e(json!(["age1nope"]))})).await.contains("age1"));
    let mut broken = r1.clone();
    broken.replace_range(20..21, if &r1[20..21] == "q" { "p" } else { "q" });
    assert!(bad(json!({"name": "s.a", "encryption": e2e(json!([broken]))})).await.contains("checksum"));
    let r = app
        .admin(Method::POST, "/api/v1/topics")
        .json(&json!({"name": "s.a", "encryption": {"mode": "at_rest_someday"}}))
        .send()
        .await
        .expect("send");
    let body = assert_error(r, 400, "invalid_request").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("end_to_end"), "an unknown mode: {body}");
    let msg = bad(json!({"name": "s.a", "json_schema": {"type": "object"}, "encryption": e2e(json!([r1]))})).await;
    assert!(msg.contains("JSON Schema") && msg.contains("imprint publish --schema"), "{msg}");
    let msg =
        bad(json!({"name": "s.a", "apollo": {"app_id": "a", "namespace": "n"}, "encryption": e2e(json!([r1]))})).await;
    assert!(msg.contains("Apollo"), "{msg}");
    // Pre-release checks that count records would count ciphertext (docs/validation.md).
    let counted = json!([{"type": "record_count_change_pct", "max_pct": 20}]);
    let msg = bad(json!({"name": "s.a", "checks": counted, "encryption": e2e(json!([r1]))})).await;
    assert!(msg.contains("record_count_change_pct") && msg.contains("plaintext"), "{msg}");
    assert_eq!(app.versions_in_db("s.a").await, 0);
    let (s, _) = app.get_json("/api/v1/topics/s.a").await;
    assert_eq!(s, 404, "nothing was created by a refused setting");

    // A good one: normalised (lowercase, duplicates gone), shown, audited.
    let t = app.create_topic_with(json!({"name": "s.a", "encryption": e2e(json!([r1.to_uppercase(), r1, r2]))})).await;
    assert_eq!(t["encryption"], e2e(json!([r1, r2])));
    // Binding it later is refused too, and so is a schema; the topic is unchanged.
    for patch in [
        json!({"spring": {"application": "shop"}}),
        json!({"json_schema": {"type": "object"}}),
        json!({"ofrep": {}}),
        json!({"checks": [{"type": "not_empty"}]}),
    ] {
        let r = app.admin(Method::PATCH, "/api/v1/topics/s.a").json(&patch).send().await.expect("send");
        let body = assert_error(r, 400, "invalid_request").await;
        assert!(body["error"]["message"].as_str().unwrap().contains("end-to-end"), "{body}");
    }
    let (_, t) = app.get_json("/api/v1/topics/s.a").await;
    assert!(t["json_schema"].is_null() && t["spring"].is_null() && t["ofrep"].is_null(), "{t}");
    // A new recipient set applies to later versions; `null` removes the encryption.
    let (s, t) = app
        .req(Method::PATCH, "/api/v1/topics/s.a")
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"encryption": e2e(json!([r2]))}))
        .send_json()
        .await;
    assert_eq!((s, &t["encryption"]["recipients"]), (200, &json!([r2])));
    let audit: Value = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE topic = 's.a' AND action = 'topic.update' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audit["encryption"]["from"]["recipients"], json!([r1, r2]), "{audit}");
    assert_eq!(audit["encryption"]["to"]["recipients"], json!([r2]), "{audit}");
    let (s, t) = app
        .req(Method::PATCH, "/api/v1/topics/s.a")
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"encryption": null}))
        .send_json()
        .await;
    assert_eq!((s, &t["encryption"]), (200, &Value::Null));
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn plaintext_and_headers_for_other_recipients_are_refused(pool: sqlx::PgPool) {
    let store = file_store();
    let objects = store.clone();
    let app = spawn_app_configured(pool.clone(), pool, move |c| c.objects = objects).await;
    let (_, r1) = crypt::generate();
    let (_, r2) = crypt::generate();
    let recipients = vec![r1.clone(), r2.clone()];
    app.create_topic_with(json!({
        "name": "secrets.db", "owner": "payments", "inline_limit_bytes": 4096,
        "encryption": {"mode": "end_to_end", "recipients": recipients},
    }))
    .await;
    // Plaintext, in every form a publish takes.
    let (s, body) =
        app.post_json("/api/v1/topics/secrets.db/versions", &json!({"data": format!("{{\"x\": \"{MARKER}\"}}")})).await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["error"]["code"], "not_encrypted");
    assert!(body["error"]["message"].as_str().unwrap().contains("not an age v1 file"), "{body}");
    assert_error(raw(&app, "secrets.db", MARKER.repeat(1000).into_bytes()).await, 422, "not_encrypted").await;
    assert_error(raw(&app, "secrets.db", vec![]).await, 422, "not_encrypted").await;
    // A header that does not parse.
    let junk = b"age-encryption.org/v1\n-> X25519 short\n\n--- x\n".to_vec();
    let body = assert_error(raw(&app, "secrets.db", junk).await, 422, "not_encrypted").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("does not parse"), "{body}");
    // Encrypted, but to one recipient of two (inline and streamed to the object store).
    for size in [100, 200_000] {
        let one = crypt::encrypt(std::slice::from_ref(&r1), &vec![b'a'; size]).unwrap();
        let body = assert_error(raw(&app, "secrets.db", one).await, 422, "not_encrypted").await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains("to 1 X25519 recipient(s); this topic has 2"),
            "{body}"
        );
    }
    // Three recipients for a topic of two: refused too (exactly the topic's count).
    let (_, r3) = crypt::generate();
    let three = crypt::encrypt(&[r1.clone(), r2.clone(), r3], b"x").unwrap();
    assert_error(raw(&app, "secrets.db", three).await, 422, "not_encrypted").await;
    assert_eq!(app.versions_in_db("secrets.db").await, 0, "nothing refused was stored");
    // The right recipients: accepted, inline and as an object.
    let ok = crypt::encrypt(&recipients, MARKER.as_bytes()).unwrap();
    assert_eq!(raw(&app, "secrets.db", ok).await.status(), 201);
    let big = crypt::encrypt(&recipients, MARKER.repeat(20_000).as_bytes()).unwrap();
    let r = raw(&app, "secrets.db", big).await;
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["storage"], "object");
    // A registered object on such a topic has its header read from the store as well.
    let key = object_store::path::Path::from("external/payments/plain.json");
    store.store().put(&key, MARKER.as_bytes().to_vec().into()).await.expect("put");
    let url = format!("{}/external/payments/plain.json", store.url());
    let (s, body) = app.post_json("/api/v1/topics/secrets.db/versions", &json!({"object": {"url": url}})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (422, Some("not_encrypted")), "{body}");
    assert_eq!(app.versions_in_db("secrets.db").await, 2);
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn postgres_the_object_store_and_the_snapshot_hold_only_ciphertext(pool: sqlx::PgPool) {
    let store = file_store();
    let objects = store.clone();
    let app = spawn_app_configured(pool.clone(), pool, move |c| c.objects = objects).await;
    let (secret, public) = crypt::generate();
    let ids = crypt::Identities::parse(&secret).unwrap();
    for (topic, limit) in [("small.secret", 1 << 20), ("big.secret", 4096)] {
        app.create_topic_with(json!({
            "name": topic, "inline_limit_bytes": limit,
            "encryption": {"mode": "end_to_end", "recipients": [public]},
        }))
        .await;
    }
    let small = format!("{{\"password\": \"{MARKER}\"}}");
    let big = MARKER.repeat(10_000);
    app.publish_raw("small.secret", crypt::encrypt(std::slice::from_ref(&public), small.as_bytes()).unwrap()).await;
    let p = app.publish_raw("big.secret", crypt::encrypt(std::slice::from_ref(&public), big.as_bytes()).unwrap()).await;
    assert_eq!(p["storage"], "object");

    // Postgres: the inline payload column, and nowhere else in the versions table.
    let inline: Vec<u8> = sqlx::query_scalar(
        "SELECT v.inline_data FROM versions v JOIN topics t ON t.id = v.topic_id WHERE t.name = 'small.secret'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(crypt::is_age(&inline) && !contains(&inline, MARKER), "the inline payload is ciphertext");
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(v::text, '') FROM versions v").fetch_one(&app.pool).await.unwrap();
    assert!(!dump.contains(MARKER), "no plaintext anywhere in the versions rows");
    assert_eq!(ids.decrypt(&inline).unwrap(), small.as_bytes());

    // The object store: every object, the payload and the snapshot manifests.
    app.imprint().snapshot_pass().await.expect("snapshots");
    let root = store.url().strip_prefix("file://").unwrap().to_owned();
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(&root)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    assert!(names.iter().any(|n| n.ends_with("snapshots/small.secret.json")), "{names:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(!contains(&bytes, MARKER), "{} holds plaintext", f.display());
        if f.extension().is_some_and(|e| e == "json") {
            // A manifest carries a small payload as base64: that is ciphertext too.
            let m: imprint_protocol::Manifest = serde_json::from_slice(&bytes).unwrap();
            if let Some(b64) = &m.data_base64 {
                let data = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
                assert!(crypt::is_age(&data) && !contains(&data, MARKER), "manifest of {}", m.topic);
                assert_eq!(ids.decrypt(&data).unwrap(), small.as_bytes());
            }
        } else {
            assert!(crypt::is_age(&bytes), "{} is an age file", f.display());
            assert_eq!(ids.decrypt(&bytes).unwrap(), big.as_bytes());
        }
    }
    // Polls and downloads hand out the ciphertext, its checksum the ciphertext's.
    let r = app.admin(Method::GET, "/api/v1/topics/big.secret/versions/1/data").send().await.unwrap();
    let bytes = r.bytes().await.unwrap();
    assert!(crypt::is_age(&bytes) && !contains(&bytes, MARKER));
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), p["sha256"].as_str().unwrap());
}
