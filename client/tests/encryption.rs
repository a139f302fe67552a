//! The client on end-to-end encrypted topics (docs/encryption.md), against a real server:
//! with the identity it holds the plaintext (in memory, and through `Payload::open` for a
//! file subscription) while its disk cache holds only ciphertext; without the identity,
//! or with a tampered chunk, the version is rejected with a clear error the server sees.
#![allow(clippy::unwrap_used)]

use imprint_client::{crypt, Client, Source};
use imprint_testkit::*;
use serde::Deserialize;
use serde_json::json;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

#[derive(Debug, Default, Deserialize, PartialEq)]
struct Db {
    password: String,
}

fn client(server_url: &str, instance: &str) -> imprint_client::ClientBuilder {
    Client::builder(server_url).instance(instance).backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// Every file under `dir`, read.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let b = std::fs::read(&p).unwrap();
                out.push((p, b));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[sqlx::test(migrator = "imprint_service::MIGRATOR")]
async fn decrypts_with_the_identity_caches_ciphertext_and_rejects_without_it(pool: sqlx::PgPool) {
    let server = spawn_app(pool).await;
    let (secret, public) = crypt::generate();
    let key_dir = scratch_dir("identity");
    let identity = key_dir.join("key.txt");
    std::fs::write(&identity, format!("# created by the test\n# public key: {public}\n{secret}\n")).unwrap();
    for (topic, limit) in [("db.creds", 1 << 20), ("ml.secret-model", 4096)] {
        server
            .create_topic_with(json!({
                "name": topic, "inline_limit_bytes": limit,
                "encryption": {"mode": "end_to_end", "recipients": [public]},
            }))
            .await;
    }
    let creds = format!("{{\"password\": \"{MARKER}\"}}");
    server.publish_raw("db.creds", crypt::encrypt(std::slice::from_ref(&public), creds.as_bytes()).unwrap()).await;
    let model = MARKER.repeat(20_000);
    server
        .publish_raw("ml.secret-model", crypt::encrypt(std::slice::from_ref(&public), model.as_bytes()).unwrap())
        .await;

    let cache = scratch_dir("e2e-cache");
    let c = client(&server.base_url(), "i-1").cache_dir(&cache).identity_file(&identity).build().unwrap();
    let db = c.subscribe_json::<Db>("db.creds", Db::default()).await.unwrap();
    assert_eq!(db.get().password, MARKER, "decrypted, then parsed");
    assert_eq!(db.version(), Some(1));
    // A file subscription hands over the ciphertext file and a decrypting reader.
    let plain = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let got = plain.clone();
    let f = c
        .subscribe_file_with("ml.secret-model", false, move |p| {
            assert!(p.encrypted());
            let mut out = Vec::new();
            p.open()?.read_to_end(&mut out)?;
            *got.lock().unwrap() = out;
            Ok::<_, std::io::Error>(true)
        })
        .await
        .unwrap();
    assert!(*f.get());
    assert_eq!(*plain.lock().unwrap(), model.as_bytes());
    c.shutdown().await;
    // The disk cache: ciphertext only.
    let cached = files(&cache);
    assert!(cached.iter().any(|(p, _)| p.starts_with(cache.join("db.creds"))), "{cached:?}");
    for (p, b) in &cached {
        assert!(!contains(b, MARKER), "{} holds plaintext", p.display());
    }
    // Restarting from the cache (server down) decrypts the cached ciphertext again.
    let down = closed_port_url().await;
    let c = client(&down, "i-1").cache_dir(&cache).identity_file(&identity).build().unwrap();
    let db = c.subscribe_json::<Db>("db.creds", Db::default()).await.unwrap();
    assert_eq!((db.get().password.as_str(), db.source()), (MARKER, Source::Cache));
    c.shutdown().await;

    // Without the identity: rejected, reported with a clear error, the default stays.
    let c = client(&server.base_url(), "i-2").build().unwrap();
    let db = c.subscribe_json::<Db>("db.creds", Db::default()).await.unwrap();
    assert_eq!(db.get().password, "");
    let row = server.consumer_where("db.creds", "i-2", |r| !r["last_error"].is_null()).await;
    let err = row["last_error"].as_str().unwrap();
    assert!(err.contains("end-to-end encrypted") && err.contains("no identity"), "{err}");
    c.shutdown().await;

    // Another key: rejected as not a recipient.
    let (other, _) = crypt::generate();
    let c = client(&server.base_url(), "i-3").identities(crypt::Identities::parse(&other).unwrap()).build().unwrap();
    let db = c.subscribe_json::<Db>("db.creds", Db::default()).await.unwrap();
    assert_eq!(db.get().password, "");
    let row = server.consumer_where("db.creds", "i-3", |r| !r["last_error"].is_null()).await;
    assert!(row["last_error"].as_str().unwrap().contains("none of the given identities"), "{row}");
    c.shutdown().await;

    // A tampered chunk (the header intact, so the server takes it; the checksum is of the
    // tampered bytes, so it verifies): decryption fails, the old value stays.
    let c = client(&server.base_url(), "i-4").identity_file(&identity).build().unwrap();
    let db = c.subscribe_json::<Db>("db.creds", Db::default()).await.unwrap();
    assert_eq!(db.get().password, MARKER);
    let mut tampered = crypt::encrypt(std::slice::from_ref(&public), b"{\"password\": \"new\"}").unwrap();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x40;
    server.publish_raw("db.creds", tampered).await;
    let row = server.consumer_where("db.creds", "i-4", |r| !r["last_error"].is_null()).await;
    let err = row["last_error"].as_str().unwrap();
    assert!(err.contains("cannot decrypt the payload") && err.contains("altered"), "{err}");
    assert_eq!((db.get().password.as_str(), db.version()), (MARKER, Some(1)), "the old value stays");
    c.shutdown().await;

    // A bad identity file is a build error, not a silent plaintext-less client.
    std::fs::write(key_dir.join("bad.txt"), "not a key\n").unwrap();
    let e = client(&server.base_url(), "i-5").identity_file(key_dir.join("bad.txt")).build().unwrap_err();
    assert!(e.to_string().contains("AGE-SECRET-KEY-1"), "{e}");
    let _ = std::fs::remove_dir_all(cache);
    let _ = std::fs::remove_dir_all(key_dir);
}
