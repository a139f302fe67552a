//! The agent on an end-to-end encrypted topic (docs/encryption.md), against a real server:
//! with `identity_file` it installs the plaintext (mode 0600, as is its state copy) while
//! its client cache holds ciphertext; without it the version is not installed and the
//! server sees a clear error; a tampered chunk keeps the old file.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use imprint_client::crypt;
use imprint_testkit::{eventually, scratch_dir, spawn_app};
use serde_json::json;

mod support;
use support::Agent;

const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

fn config(dir: &Path, server: &str, top: &str) -> std::path::PathBuf {
    let file = dir.join("agent.toml");
    let text = format!(
        "server = \"{server}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n{top}\n\n\
         [[subscription]]\ntopic = \"db.creds\"\npath = \"{}\"\ntimeout = \"10s\"\n",
        dir.join("state").display(),
        dir.join("out").join("creds.json").display(),
    );
    std::fs::write(&file, text).unwrap();
    file
}

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
async fn installs_the_plaintext_with_the_identity_and_nothing_without(pool: sqlx::PgPool) {
    let app = spawn_app(pool).await;
    let (secret, public) = crypt::generate();
    app.create_topic_with(json!({
        "name": "db.creds", "owner": "payments",
        "encryption": {"mode": "end_to_end", "recipients": [public]},
    }))
    .await;
    let creds = format!("{{\"password\": \"{MARKER}\"}}");
    app.publish_raw("db.creds", crypt::encrypt(std::slice::from_ref(&public), creds.as_bytes()).unwrap()).await;

    // Without an identity: nothing installed, the error reported to the server.
    let bare = scratch_dir("agent-e2e-bare");
    let agent = Agent::start(&config(&bare, &app.base_url(), "instance = \"bare\"")).await;
    let row = app.consumer_where("db.creds", "bare", |r| !r["last_error"].is_null()).await;
    assert!(row["last_error"].as_str().unwrap().contains("no identity"), "{row}");
    assert!(!bare.join("out").join("creds.json").exists());
    agent.stop().await;

    // With the identity file: the plaintext, readable by its owner only.
    let dir = scratch_dir("agent-e2e");
    let key = dir.join("agent.key");
    std::fs::write(&key, format!("{secret}\n")).unwrap();
    let top = format!("instance = \"node-1\"\nidentity_file = \"{}\"", key.display());
    let agent = Agent::start(&config(&dir, &app.base_url(), &top)).await;
    let target = dir.join("out").join("creds.json");
    eventually("the decrypted file", || async { std::fs::read_to_string(&target).ok().filter(|t| *t == creds) }).await;
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600, "0644 less group/other");
    // The state copy is plaintext too (0600); the client cache holds only ciphertext.
    for (p, b) in files(&dir.join("state")) {
        let name = p.display().to_string();
        if name.contains("/cache/") {
            assert!(!contains(&b, MARKER), "{name} holds plaintext");
        } else if contains(&b, MARKER) {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{name}");
        }
    }
    assert!(files(&dir.join("state"))
        .iter()
        .any(|(p, b)| p.display().to_string().contains("/cache/") && crypt::is_age(b)));
    // The local endpoint serves what it installed: the plaintext.
    let r = agent.get("/v1/topics/db.creds").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), creds);

    // A tampered chunk: not installed, reported, the old file stays.
    let mut tampered = crypt::encrypt(std::slice::from_ref(&public), b"{\"password\": \"new\"}").unwrap();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    app.publish_raw("db.creds", tampered).await;
    let row = app.consumer_where("db.creds", "node-1", |r| !r["last_error"].is_null()).await;
    assert!(row["last_error"].as_str().unwrap().contains("decrypt"), "{row}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), creds);
    agent.stop().await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(bare);
}
