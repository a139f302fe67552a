//! Object-store snapshots: the worker keeps one small manifest per topic in the payload
//! store, `snapshots/<topic>.json`, naming what `*` (a node with no labels) resolves to
//! now — version, checksum, and the payload itself (inline bytes, or the key of its
//! object in the same store). A client configured with the store's URL starts from it
//! when the server is unreachable and it has no disk cache (`Source::Snapshot`).
//!
//! An at-rest topic's manifest is a `SealedManifest` (docs/encryption.md, "Snapshots"):
//! the manifest sealed under the key of the version it names, so only a node holding that
//! key opens it.
//!
//! A pass compares each topic's current `*` resolution with the `snapshots` table and
//! rewrites only the manifests that changed (a topic that resolves to nothing for `*`
//! loses its manifest). The leading worker runs it (once across replicas).
use crate::error::Result;
use crate::handle::Imprint;
use crate::store;
use base64::Engine;
use imprint_domain::Labels;
use std::collections::HashMap;

/// Manifests written per pass at most (the next pass goes on).
const MAX_WRITES_PER_PASS: usize = 500;

/// The manifest's JSON is the wire type (`format` 1; exactly one of `data_base64` and
/// `object` is set).
pub use imprint_protocol::{Manifest, SealedManifest, MANIFEST_FORMAT};

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPass {
    pub written: usize,
    pub removed: usize,
}

impl Imprint {
    /// Brings every topic's manifest up to date with what `*` resolves to now.
    pub async fn snapshot_pass(&self) -> Result<SnapshotPass> {
        let mut conn = self.pool().acquire().await?;
        let written: HashMap<i64, (i64, String)> =
            store::snapshots::all(&mut *conn).await?.into_iter().map(|r| (r.topic_id, (r.version, r.sha256))).collect();
        // A topic this server's serving state has not caught up with yet (another server
        // changed it a moment ago) is left for a later pass: acting on the stale state would
        // delete or roll back a manifest a server that knows better has just written.
        let current: HashMap<i64, i64> = store::serving::change_seqs(&mut conn).await?.into_iter().collect();
        let state = self.state();
        let nobody = Labels::default();
        let mut pass = SnapshotPass::default();
        let mut todo = Vec::new();
        for topic in state.all_topics() {
            if current.get(&topic.id).is_some_and(|seq| *seq > topic.change_seq) {
                continue;
            }
            let now = topic.index.resolve(&nobody).and_then(|r| topic.served.get(&r.version).cloned());
            match (now, written.get(&topic.id)) {
                (Some(v), Some((n, sha))) if *n == v.version as i64 && *sha == v.sha256 => {}
                (None, None) => {}
                (now, _) => todo.push((topic, now)),
            }
        }
        for (topic, now) in todo.into_iter().take(MAX_WRITES_PER_PASS) {
            let key = self.objects().snapshot_key(topic.name.as_str());
            match now {
                None => {
                    self.objects().delete(&key).await?;
                    store::snapshots::delete(&mut *conn, topic.id).await?;
                    pass.removed += 1;
                }
                Some(v) => {
                    let Some(row) = store::versions::get(&mut *conn, topic.id, v.version as i64).await? else {
                        continue;
                    };
                    if row.purged_at.is_some() {
                        continue;
                    }
                    if row.object_region.is_some() {
                        // An object outside the home region (a topic whose regions leave
                        // it out, docs/regions.md) is not in the store manifests are read
                        // with: no manifest (an older one is removed). The row records that
                        // this version was dealt with, so later passes do not come back to it.
                        if written.contains_key(&topic.id) {
                            self.objects().delete(&key).await?;
                            pass.removed += 1;
                        }
                        store::snapshots::upsert(&mut *conn, topic.id, v.version as i64, &v.sha256, self.now()).await?;
                        continue;
                    }
                    // The key a sealed version's payload is sealed under: its manifest is
                    // sealed under the same one.
                    let mut seal_under = None;
                    let (data_base64, object) = match row.object_key.as_deref() {
                        Some(k) => {
                            if row.sealed {
                                match self.sealed_object_header(k).await {
                                    Ok((h, _)) => seal_under = Some(h.key_id),
                                    Err(e) => {
                                        tracing::warn!(topic = %topic.name, error = %e, "sealed snapshot manifest not written (the object's header did not read): a later pass tries again");
                                        continue;
                                    }
                                }
                            }
                            (None, Some(self.objects().relative(k)))
                        }
                        None => {
                            let (bytes, sealed) =
                                store::serving::inline_payloads(&mut conn, &[topic.id], &[v.version as i64])
                                    .await?
                                    .pop()
                                    .map(|(_, _, d, sealed)| (d, sealed))
                                    .unwrap_or_default();
                            // A sealed inline payload goes into the manifest in the clear:
                            // the manifest as a whole is sealed below.
                            if sealed {
                                if let Ok(Some((h, _))) = crate::at_rest::Header::parse(&bytes) {
                                    seal_under = Some(h.key_id);
                                }
                            }
                            let bytes = match self.open_bytes(bytes.into(), sealed).await {
                                Ok(b) => b,
                                Err(e) => {
                                    tracing::warn!(topic = %topic.name, error = %e, "snapshot manifest not written (the payload did not open): a later pass tries again");
                                    continue;
                                }
                            };
                            (Some(base64::engine::general_purpose::STANDARD.encode(bytes)), None)
                        }
                    };
                    let manifest = Manifest {
                        format: MANIFEST_FORMAT,
                        topic: topic.name.to_string(),
                        version: v.version,
                        sha256: v.sha256.clone(),
                        size: v.size,
                        content_type: v.content_type.clone(),
                        metadata: v.metadata.clone(),
                        published_at: row.created_at,
                        written_at: self.now(),
                        data_base64,
                        object_sealed: row.sealed && object.is_some(),
                        object,
                    };
                    let body =
                        serde_json::to_vec_pretty(&manifest).map_err(|e| crate::Error::Internal(e.to_string()))?;
                    let body = if row.sealed {
                        // At rest (docs/encryption.md): the manifest is sealed under the
                        // key the version's payload is sealed under, so the store never
                        // holds it (or the inline payload in it) in the clear.
                        match self.sealed_manifest(topic.name.as_str(), seal_under.as_deref(), &body).await {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::warn!(topic = %topic.name, error = %e, "sealed snapshot manifest not written: a later pass tries again");
                                continue;
                            }
                        }
                    } else {
                        body
                    };
                    self.objects().put(&key, body.into()).await?;
                    store::snapshots::upsert(&mut *conn, topic.id, v.version as i64, &v.sha256, self.now()).await?;
                    pass.written += 1;
                }
            }
        }
        if pass.written + pass.removed > 0 {
            metrics::counter!("imprint_snapshots_written_total").increment((pass.written + pass.removed) as u64);
        }
        Ok(pass)
    }
}

impl Imprint {
    /// A manifest's JSON sealed under `key_id` (a fresh data key), as `SealedManifest`'s JSON.
    async fn sealed_manifest(&self, topic: &str, key_id: Option<&str>, manifest: &[u8]) -> Result<Vec<u8>> {
        let key_id =
            key_id.ok_or_else(|| crate::Error::PayloadAltered("the sealed payload's header names no key".into()))?;
        let sealed = self.seal_bytes(key_id, manifest).await?;
        let file = SealedManifest {
            format: MANIFEST_FORMAT,
            topic: topic.to_owned(),
            key: key_id.to_owned(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
        };
        serde_json::to_vec_pretty(&file).map_err(|e| crate::Error::Internal(e.to_string()))
    }
}
