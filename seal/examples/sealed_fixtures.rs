//! Writes the sealed-format fixtures the Python, TypeScript and Go clients' own tests open
//! (`clients/testdata/sealed/`), so each client is checked against bytes this crate made:
//!
//! - `keyring.json`: a keyring with the key `orders` at versions 1 and 2 (primary 2);
//! - `inline.json`: a snapshot manifest sealed at rest (`SealedManifest`) whose manifest
//!   holds its payload inline (`data_base64`), its data key wrapped by `orders` v1;
//! - `object.json` + `object.sealed`: a manifest naming a sealed object (`object_sealed`),
//!   the object 150 000 bytes of plaintext in three chunks, wrapped by `orders` v2;
//! - `object.plain`: that object's plaintext.
//!
//!     cargo run -p imprint-seal --example sealed_fixtures -- clients/testdata/sealed
//!
//! The manifests are written as the server's snapshot pass writes them
//! (`imprint_service::snapshots`): the manifest's JSON sealed whole, in base64.
use imprint_seal::format::{seal, Header};
use imprint_seal::{KeyProvider, Keyring, LocalKeyring};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: sealed_fixtures DIR")?);
    std::fs::create_dir_all(&dir)?;
    let ring_path = dir.join("keyring.json");
    let _ = std::fs::remove_file(&ring_path);
    let mut ring = Keyring::load(&ring_path)?;
    ring.create("orders")?;
    ring.save(&ring_path)?;
    let v1 = LocalKeyring::open(&ring_path)?;
    // Version 1's data key, before the rotation makes version 2 the primary.
    let dk1 = futures::executor::block_on(v1.generate("orders"))?;
    ring.rotate("orders")?;
    ring.save(&ring_path)?;
    let v2 = LocalKeyring::open(&ring_path)?;
    let dk2 = futures::executor::block_on(v2.generate("orders"))?;
    assert_eq!((dk1.key_version, dk2.key_version), (1, 2));

    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let at = "2026-12-08T00:00:00Z";
    let sealed_manifest = |topic: &str, dk: &imprint_seal::DataKey, manifest: serde_json::Value| {
        let json = serde_json::to_vec_pretty(&manifest).expect("json");
        let h = Header::new("orders", dk.key_version, dk.wrapped.clone());
        let file =
            serde_json::json!({"format": 1, "topic": topic, "key": "orders", "sealed": b64(&seal(&dk.key, &h, &json))});
        serde_json::to_vec_pretty(&file).expect("json")
    };

    let inline = br#"{"password": "hunter2", "rates": [1, 2, 3]}"#;
    let m = serde_json::json!({
        "format": 1, "topic": "orders.inline", "version": 3, "sha256": sha(inline), "size": inline.len(),
        "content_type": "application/json", "metadata": {"team": "payments"},
        "published_at": at, "written_at": at, "data_base64": b64(inline),
    });
    std::fs::write(dir.join("inline.json"), sealed_manifest("orders.inline", &dk1, m))?;

    let plain: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let dk_obj = futures::executor::block_on(v2.generate("orders"))?;
    let h = Header::new("orders", dk_obj.key_version, dk_obj.wrapped.clone());
    std::fs::write(dir.join("object.sealed"), seal(&dk_obj.key, &h, &plain))?;
    std::fs::write(dir.join("object.plain"), &plain)?;
    let m = serde_json::json!({
        "format": 1, "topic": "orders.object", "version": 7, "sha256": sha(&plain), "size": plain.len(),
        "content_type": "application/octet-stream", "metadata": {},
        "published_at": at, "written_at": at, "object": "object.sealed", "object_sealed": true,
    });
    std::fs::write(dir.join("object.json"), sealed_manifest("orders.object", &dk2, m))?;
    println!("wrote {}", dir.display());
    Ok(())
}
