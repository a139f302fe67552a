//! The worker's copies of committed objects from the home region (where publishes stream
//! to) to the other regions (docs/regions.md), claimed from `object_copies`.
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::objects::Objects;
use crate::regions::{backoff, copy_verified};
use crate::store;
use futures::StreamExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};

/// Copies claimed per worker pass.
const COPY_BATCH: i64 = 16;

impl Imprint {
    /// The region a topic's publishes stream to now (`regions::primary_region`; None: home)
    /// and its store.
    pub(crate) async fn upload_region(
        &self,
        conn: &mut sqlx::PgConnection,
        topic_id: i64,
    ) -> Result<(Option<String>, Objects)> {
        if !self.config().regions.several() {
            return Ok((None, self.objects().clone()));
        }
        let (list, min) = store::copies::topic_settings(conn, topic_id).await?;
        let (list, _) = crate::regions::topic_regions(&self.config().regions, list.as_deref(), min);
        let region = crate::regions::primary_region(&self.config().regions, &list);
        let objects = self
            .region_objects(region.as_deref().unwrap_or_default())
            .cloned()
            .ok_or_else(|| Error::Internal(format!("region {region:?} is not configured")))?;
        Ok((region, objects))
    }

    /// The store of a region (home or other; `""`: home).
    pub fn region_objects(&self, region: &str) -> Option<&Objects> {
        if region == self.config().regions.home() || region.is_empty() {
            Some(self.objects())
        } else {
            self.config().regions.other(region)
        }
    }

    /// Copies an object to another region and checks the copy against the version's
    /// SHA-256: as it streams for a plain object; for an object sealed at rest (whose
    /// SHA-256 is the plaintext's) by opening the copy just written and hashing the
    /// plaintext, so every chunk of the copy authenticates and decrypts to the version's
    /// bytes (docs/encryption.md, "Several regions"). A copy that does not check is deleted.
    pub(crate) async fn copy_checked(
        &self,
        from: &Objects,
        from_key: &Path,
        to: &Objects,
        to_key: &Path,
        sha256: &str,
        sealed: bool,
    ) -> Result<u64> {
        if !sealed {
            return copy_verified(from, from_key, to, to_key, Some(sha256)).await;
        }
        let bytes = copy_verified(from, from_key, to, to_key, None).await?;
        let checked: Result<()> = async {
            let raw = to.store().get(to_key).await.map_err(crate::objects::store_error)?.into_stream();
            let mut opened = self.open_object_stream(raw.map(|r| r.map_err(std::io::Error::other)).boxed())?;
            let mut hash = Sha256::new();
            while let Some(chunk) = opened.next().await {
                hash.update(&chunk.map_err(|e| self.opened_stream_error(e))?);
            }
            let got = hex::encode(hash.finalize());
            if got != sha256 {
                return Err(Error::ObjectStoreUnavailable(format!(
                    "the sealed copy {to_key} opens to SHA-256 {got}, not the version's {sha256}: not kept"
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = checked {
            let _ = to.delete(to_key).await;
            return Err(e);
        }
        Ok(bytes)
    }

    /// One copy pass: up to `COPY_BATCH` due copies, each claimed with SKIP LOCKED for
    /// the time it takes (another worker takes others), retried with backoff until done.
    pub async fn copy_pass(&self) -> Result<usize> {
        if !self.config().regions.several() {
            return Ok(0);
        }
        let mut done = 0;
        for _ in 0..COPY_BATCH {
            let mut tx = self.pool().begin().await?;
            let Some(c) = store::copies::claim_due(&mut tx, self.now()).await? else { break };
            let Some(to) = self.config().regions.other(&c.region).cloned() else {
                // A region no longer configured: it waits (never lost) until it is again.
                store::copies::failed(&mut tx, &c, self.now() + backoff(10), "the region is not configured").await?;
                tx.commit().await?;
                continue;
            };
            let from_key = Path::parse(&c.home_key).map_err(|e| Error::Internal(format!("stored key: {e}")))?;
            let to_key = Path::parse(&c.key).map_err(|e| Error::Internal(format!("stored key: {e}")))?;
            let Some(from) = self.region_objects(c.from_region.as_deref().unwrap_or_default()).cloned() else {
                store::copies::failed(&mut tx, &c, self.now() + backoff(10), "the source region is not configured")
                    .await?;
                tx.commit().await?;
                continue;
            };
            let copied = self.copy_checked(&from, &from_key, &to, &to_key, &c.sha256, c.sealed).await;
            match copied {
                Ok(bytes) => {
                    if store::copies::done(&mut tx, &c, self.now()).await? {
                        store::notify(&mut tx, c.topic_id).await?;
                        done += 1;
                        metrics::counter!("imprint_region_copies_total", "region" => c.region.clone()).increment(1);
                        metrics::counter!("imprint_region_copy_bytes_total", "region" => c.region.clone())
                            .increment(bytes);
                    } else {
                        // Purged while copying: the janitor queued this region's key already,
                        // or does so now; delete what was just written either way.
                        store::objects::mark_in(&mut *tx, &c.region, &c.key, self.now(), "purge").await?;
                    }
                    tx.commit().await?;
                    self.refresh_topic(c.topic_id).await;
                }
                Err(e) => {
                    let msg: String = e.to_string().chars().take(500).collect();
                    tracing::warn!(error = %msg, region = c.region, topic_id = c.topic_id, version = c.version, "copying an object to a region failed; retried with backoff");
                    store::copies::failed(&mut tx, &c, self.now() + backoff(c.attempts), &msg).await?;
                    tx.commit().await?;
                    metrics::counter!("imprint_region_copy_failures_total", "region" => c.region.clone()).increment(1);
                }
            }
        }
        Ok(done)
    }
}
