//! Delivering one version to one subscription: fetch and verify it (`fetch`), run the
//! subscription's apply function off the async threads, swap the value in, save it to
//! the disk cache and record the outcome to report. Also the two other ways a version
//! arrives: the start-up fallback to older versions when the newest does not apply, and
//! the object-store snapshot read while the server is unreachable.
use crate::cache::{unix_now, CacheMeta, Store};
use crate::error::{Error, Result};
use crate::fetch::{fetch, Failure};
use crate::inner::Inner;
use crate::subscription::{Data, Fetched, Payload, Slot, Source};
use imprint_protocol::{Applied as AppliedReport, Update, VersionList};
use reqwest::Method;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::Instrument;

/// One update for one subscription: deliver it, record the outcome, and at start-up fall
/// back to older versions when it does not apply. `Err` only for transient failures.
pub(crate) async fn handle_update(inner: &Inner, slot: &Arc<dyn Slot>, u: &Update) -> Result<()> {
    let topic = slot.topic();
    let key = (u.version, u.pinned);
    {
        let mut st = slot.state();
        if st.rejected == Some(key) {
            st.stuck = true;
            return Ok(());
        }
        st.stuck = false;
    }
    let first = slot.source() != Source::Server;
    let span = tracing::info_span!("imprint_client.apply", topic, version = u.version, pinned = u.pinned);
    match deliver(inner, slot, u).instrument(span.clone()).await {
        Ok(()) => {
            let mut st = slot.state();
            st.rejected = None;
            st.report =
                Some(AppliedReport { version: u.version, ok: true, error: None, region: inner.served_region(topic) });
            Ok(())
        }
        Err(Failure::Transient(e)) => Err(e),
        Err(Failure::Rejected(msg)) => {
            tracing::warn!(parent: &span, error = %msg, "version rejected; keeping the current value");
            metrics::counter!("imprint_client_apply_failures_total", "topic" => topic.to_owned()).increment(1);
            {
                let mut st = slot.state();
                st.rejected = Some(key);
                st.stuck = true;
                let error: String = msg.chars().take(2000).collect();
                st.report = Some(AppliedReport { version: u.version, ok: false, error: Some(error), region: None });
            }
            if first && inner.settings.startup_fallback > 0 {
                fallback(inner, slot, u.version).instrument(span).await;
            }
            Ok(())
        }
    }
}

/// Gutenberg's start-up fallback: the newest version failed to apply and this node has
/// nothing from the server yet, so try the older versions released to it, newest first.
async fn fallback(inner: &Inner, slot: &Arc<dyn Slot>, failed: u64) {
    let topic = slot.topic();
    let held = slot.version().unwrap_or(0);
    let list = match list_versions(inner, topic).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list older versions to fall back to");
            return;
        }
    };
    let candidates: Vec<_> = list
        .versions
        .into_iter()
        .filter(|v| v.version < failed && v.version > held && !v.purged && v.released_to(&inner.consumer.labels))
        .take(inner.settings.startup_fallback)
        .collect();
    for v in candidates {
        let version = v.version;
        match deliver(inner, slot, &v.into_update(topic)).await {
            Ok(()) => {
                tracing::warn!(version, failed, "started from an older version: the newest does not apply");
                return;
            }
            Err(Failure::Rejected(e)) => {
                tracing::warn!(version, error = %e, "older version does not apply either");
                metrics::counter!("imprint_client_apply_failures_total", "topic" => topic.to_owned()).increment(1);
            }
            Err(Failure::Transient(e)) => {
                tracing::warn!(version, error = %e, "cannot fetch an older version; giving up the fallback");
                return;
            }
        }
    }
}

async fn list_versions(inner: &Inner, topic: &str) -> Result<VersionList> {
    // Newest first; a few more than needed, as some may be purged or scoped elsewhere.
    let limit = (inner.settings.startup_fallback * 4 + 10).min(500);
    let url = inner.url(&format!("/api/v1/topics/{topic}/versions?limit={limit}"));
    let resp = inner
        .request(Method::GET, &url)
        .timeout(inner.settings.request_timeout)
        .send()
        .await
        .map_err(|e| Error::http(&url, e))?;
    if !resp.status().is_success() {
        return Err(Error::from_response(resp).await);
    }
    resp.json().await.map_err(|e| Error::Protocol(format!("versions list: {e}")))
}

/// Fetch, verify, apply (off the async threads) and, on success, cache.
async fn deliver(inner: &Inner, slot: &Arc<dyn Slot>, u: &Update) -> Result<(), Failure> {
    let fetched = fetch(inner, slot.topic(), u, slot.kind()).await?;
    apply_fetched(inner, slot, u, fetched, Source::Server).await
}

/// Runs the subscription's apply function on a fetched (and verified) payload; on
/// success the value is swapped in and the payload saved to the disk cache.
async fn apply_fetched(
    inner: &Inner,
    slot: &Arc<dyn Slot>,
    u: &Update,
    fetched: Fetched,
    source: Source,
) -> Result<(), Failure> {
    let topic = slot.topic().to_owned();
    let file = match &fetched {
        Fetched::File(p) => Some(p.clone()),
        Fetched::Memory(_) => None,
    };
    let applying = slot.clone();
    let update = u.clone();
    let identities = inner.identities.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let data = match &fetched {
            Fetched::Memory(b) => Data::Bytes(b),
            Fetched::File(p) => Data::File(p),
        };
        let payload = Payload {
            topic: applying.topic(),
            version: update.version,
            sha256: &update.sha256,
            content_type: &update.content_type,
            metadata: &update.metadata,
            pinned: update.pinned,
            source,
            data,
            identities: identities.as_ref(),
        };
        crate::subscription::apply_decrypted(applying.as_ref(), &payload).map(|()| fetched)
    })
    .await;
    let fetched = match applied {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            discard(slot, file).await;
            return Err(Failure::Rejected(format!("apply failed: {e}")));
        }
        Err(join) => {
            discard(slot, file).await;
            let what = if join.is_panic() {
                join.into_panic()
                    .downcast::<String>()
                    .map(|s| *s)
                    .or_else(|p| p.downcast::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|_| "panic".into())
            } else {
                join.to_string()
            };
            return Err(Failure::Rejected(format!("apply panicked: {what}")));
        }
    };
    metrics::gauge!("imprint_client_version", "topic" => topic.clone()).set(u.version as f64);
    metrics::counter!("imprint_client_updates_applied_total", "topic" => topic.clone()).increment(1);
    tracing::info!(topic, version = u.version, ?source, "applied");
    save(inner, &topic, u, fetched).await;
    Ok(())
}

/// A downloaded file that did not apply goes (unless it is the one in use).
async fn discard(slot: &Arc<dyn Slot>, file: Option<std::path::PathBuf>) {
    let Some(path) = file else { return };
    let in_use = match (slot.version(), slot.sha256()) {
        (Some(v), Some(sha)) => path.file_name().is_some_and(|n| n.to_string_lossy() == Store::file_name(v, &sha)),
        _ => false,
    };
    if !in_use {
        let _ = tokio::fs::remove_file(&path).await;
    }
}

/// Records the applied payload in the cache (failures only logged: the value is in use).
async fn save(inner: &Inner, topic: &str, u: &Update, fetched: Fetched) {
    let store = inner.store.clone();
    if !store.persistent() && matches!(fetched, Fetched::Memory(_)) {
        return;
    }
    let (topic, u) = (topic.to_owned(), u.clone());
    let saved = tokio::task::spawn_blocking(move || -> Result<()> {
        let path = match fetched {
            Fetched::File(p) => p,
            Fetched::Memory(bytes) => store.write_payload(&topic, u.version, &u.sha256, &bytes)?,
        };
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        store.commit(&CacheMeta {
            topic,
            version: u.version,
            sha256: u.sha256,
            size: u.size,
            content_type: u.content_type,
            metadata: u.metadata,
            file,
            saved_at: unix_now(),
        })
    })
    .await;
    let failed = match saved {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    // Said once (at warn level): the client goes on without its cache.
    if !inner.cache_warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %failed, dir = %inner.store.root().display(), "cannot write the disk cache; going on without it (a restart while the server is unreachable will start from the default)");
    } else {
        tracing::debug!(error = %failed, "cannot write the disk cache");
    }
}

/// Starts a subscription from its topic's snapshot, if there is one that verifies and
/// applies. Never fails: what went wrong is logged and the default stays.
#[cfg(feature = "snapshots")]
pub(crate) async fn start_from_snapshot(inner: &Inner, snapshots: &crate::snapshot::Snapshots, slot: &Arc<dyn Slot>) {
    let topic = slot.topic().to_owned();
    let m = match snapshots.manifest(&topic).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            tracing::info!(topic, store = %snapshots.url(), "no snapshot of this topic in the object store");
            return;
        }
        Err(e) => {
            tracing::warn!(topic, error = %e, "cannot read the topic's snapshot");
            return;
        }
    };
    let update = Update {
        version: m.version,
        pinned: false,
        metadata: m.metadata.clone(),
        content_type: m.content_type.clone(),
        size: m.size,
        sha256: m.sha256.clone(),
        data_base64: None,
        data_url: imprint_protocol::data_url(&topic, m.version),
        data_urls: Vec::new(),
    };
    let fetched = match crate::snapshot::payload(&inner.store, snapshots, slot.kind(), &m).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(topic, version = m.version, error = %e, "the snapshot's payload does not verify; not using it");
            return;
        }
    };
    match apply_fetched(inner, slot, &update, fetched, Source::Snapshot).await {
        Ok(()) => {
            tracing::warn!(
                topic,
                version = m.version,
                "the server is unreachable: started from the object-store snapshot"
            )
        }
        Err(Failure::Rejected(e)) => {
            tracing::warn!(topic, version = m.version, error = %e, "the snapshot does not apply; keeping the default")
        }
        Err(Failure::Transient(e)) => {
            tracing::warn!(topic, version = m.version, error = %e, "the snapshot does not apply; keeping the default")
        }
    }
}
