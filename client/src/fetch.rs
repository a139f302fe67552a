//! Getting one version's payload: inline (`data_base64`) or streamed from `data_url`
//! (into memory, or into a temporary file in the cache directory that is renamed into
//! place once complete), with its size and SHA-256 checked against the update. An
//! interrupted download resumes with a `Range` request.
use crate::error::{Error, Result};
use crate::inner::Inner;
use crate::subscription::{Fetched, Kind};
use base64::Engine;
use futures::StreamExt;
use imprint_protocol::Update;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Attempts of one download (each resumes where the previous one broke off).
const MAX_ATTEMPTS: u32 = 3;

/// Why a version could not be delivered.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth trying again later (network, timeouts, 5xx): not reported, retried after a
    /// backoff.
    Transient(Error),
    /// This version will not do (bad checksum, purged, does not apply): reported as
    /// failed and not tried again until the server offers another.
    Rejected(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::Checksum { .. } | Error::Size { .. } | Error::Protocol(_) => Failure::Rejected(e.to_string()),
            e if e.is_transient() => Failure::Transient(e),
            e @ Error::Api { .. } => Failure::Rejected(e.to_string()),
            e => Failure::Transient(e),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Fetches and verifies `u`'s payload for a subscription of `kind`.
pub(crate) async fn fetch(inner: &Inner, topic: &str, u: &Update, kind: Kind) -> Result<Fetched, Failure> {
    if let Some(b64) = &u.data_base64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| Failure::Rejected(format!("data_base64 is not valid base64: {e}")))?;
        let actual = sha256_hex(&bytes);
        if actual == u.sha256 && bytes.len() as u64 == u.size {
            inner.set_served_region(topic, None);
            return match kind {
                Kind::Memory => Ok(Fetched::Memory(bytes)),
                Kind::File => {
                    let store = inner.store.clone();
                    let (topic, version, sha) = (topic.to_owned(), u.version, u.sha256.clone());
                    let path = tokio::task::spawn_blocking(move || store.write_payload(&topic, version, &sha, &bytes))
                        .await
                        .map_err(|e| Failure::Transient(Error::Protocol(format!("writing the payload: {e}"))))??;
                    Ok(Fetched::File(path))
                }
            };
        }
        let e = if actual != u.sha256 {
            Error::Checksum { expected: u.sha256.clone(), actual }
        } else {
            Error::Size { expected: u.size, actual: bytes.len() as u64 }
        };
        // As every official client does (docs/protocol.md §3): a mismatch is downloaded once
        // more, from data_url, before the version is given up.
        if u.data_url.is_empty() {
            return Err(e.into());
        }
        tracing::warn!(topic, version = u.version, error = %e, "the inline payload does not verify; downloading it");
    }
    if u.data_url.is_empty() {
        return Err(Failure::Rejected("the update has neither data_base64 nor data_url".into()));
    }
    let urls = u.download_urls();
    if urls.len() > 1 {
        return fetch_failover(inner, topic, u, kind, &urls).await;
    }
    let (region, url) = (urls[0].0, inner.url(urls[0].1));
    // A mismatch may be a transfer accident: one more download before giving up on it.
    let mut last = None;
    for _ in 0..2 {
        match download(inner, topic, &url, u, kind).await {
            Ok(f) => {
                inner.set_served_region(topic, region);
                return Ok(f);
            }
            Err(e @ (Error::Checksum { .. } | Error::Size { .. })) => {
                tracing::warn!(topic, version = u.version, error = %e, "downloaded payload does not verify");
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Failure::Rejected(last.map(|e| e.to_string()).unwrap_or_default()))
}

/// Several regions (`data_urls`, docs/protocol.md §3): each URL in order; a connect
/// error, a 5xx or a payload that does not verify moves on to the next. The version is
/// given up (rejected) only when every region's copy failed to verify; if some region was
/// unreachable, it is a transient failure (retried with backoff).
async fn fetch_failover(
    inner: &Inner,
    topic: &str,
    u: &Update,
    kind: Kind,
    urls: &[(Option<&str>, &str)],
) -> Result<Fetched, Failure> {
    let mut unreachable = None;
    let mut mismatch = None;
    for (region, url) in urls {
        let region = region.unwrap_or_default();
        match download(inner, topic, &inner.url(url), u, kind).await {
            Ok(f) => {
                inner.set_served_region(topic, Some(region));
                metrics::counter!("imprint_client_region_downloads_total", "region" => region.to_owned()).increment(1);
                return Ok(f);
            }
            Err(e @ (Error::Checksum { .. } | Error::Size { .. })) => {
                tracing::warn!(topic, version = u.version, region, error = %e, "this region's copy does not verify; trying the next region");
                metrics::counter!("imprint_client_region_failovers_total", "region" => region.to_owned()).increment(1);
                mismatch = Some(e);
            }
            Err(e @ (Error::Http { .. } | Error::Api { status: 500..=599, .. })) => {
                tracing::warn!(topic, version = u.version, region, error = %e, "this region failed; trying the next region");
                metrics::counter!("imprint_client_region_failovers_total", "region" => region.to_owned()).increment(1);
                unreachable = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    match (unreachable, mismatch) {
        (Some(e), _) => Err(e.into()),
        (None, e) => Err(Failure::Rejected(e.map(|e| e.to_string()).unwrap_or_default())),
    }
}

enum Sink {
    Memory(Vec<u8>),
    File { file: tokio::fs::File, path: PathBuf },
}

impl Sink {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        match self {
            Sink::Memory(v) => {
                v.extend_from_slice(chunk);
                Ok(())
            }
            Sink::File { file, path } => file.write_all(chunk).await.map_err(|e| Error::io(&*path, e)),
        }
    }

    async fn reset(&mut self) -> Result<()> {
        match self {
            Sink::Memory(v) => {
                v.clear();
                Ok(())
            }
            Sink::File { file, path } => {
                file.set_len(0).await.map_err(|e| Error::io(&*path, e))?;
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| Error::io(&*path, e))?;
                Ok(())
            }
        }
    }
}

async fn download(inner: &Inner, topic: &str, url: &str, u: &Update, kind: Kind) -> Result<Fetched> {
    let mut sink = match kind {
        Kind::Memory => Sink::Memory(Vec::with_capacity(u.size.min(64 << 20) as usize)),
        Kind::File => {
            let store = inner.store.clone();
            let t = topic.to_owned();
            tokio::task::spawn_blocking(move || store.prepare(&t))
                .await
                .map_err(|e| Error::Protocol(format!("preparing the cache directory: {e}")))??;
            let path = inner.store.temp_path(topic);
            let file = tokio::fs::File::create(&path).await.map_err(|e| Error::io(&path, e))?;
            Sink::File { file, path }
        }
    };
    let outcome = download_into(inner, url, u, &mut sink).await;
    match (sink, outcome) {
        (Sink::Memory(v), Ok(())) => Ok(Fetched::Memory(v)),
        (Sink::File { file, path }, Ok(())) => {
            let synced = file.sync_all().await;
            drop(file);
            if let Err(e) = synced {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Error::io(&path, e));
            }
            let store = inner.store.clone();
            let (topic, version, sha) = (topic.to_owned(), u.version, u.sha256.clone());
            let tmp = path.clone();
            let placed = tokio::task::spawn_blocking(move || store.adopt_file(&topic, version, &sha, &tmp))
                .await
                .map_err(|e| Error::Protocol(format!("moving the download into place: {e}")))?;
            if placed.is_err() {
                let _ = tokio::fs::remove_file(&path).await;
            }
            Ok(Fetched::File(placed?))
        }
        (Sink::Memory(_), Err(e)) => Err(e),
        (Sink::File { file, path }, Err(e)) => {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            Err(e)
        }
    }
}

/// The start of a `Content-Range: bytes a-b/n` header.
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

async fn download_into(inner: &Inner, url: &str, u: &Update, sink: &mut Sink) -> Result<()> {
    let settings = &inner.settings;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut attempts = 0;
    'attempt: while written < u.size || attempts == 0 {
        attempts += 1;
        let mut req = inner.request(Method::GET, url);
        if written > 0 {
            req = req.header(RANGE, format!("bytes={written}-"));
        }
        let resp = tokio::time::timeout(settings.request_timeout, req.send())
            .await
            .map_err(|_| Error::Timeout(format!("GET {url}: no answer within {:?}", settings.request_timeout)))?
            .map_err(|e| Error::http(url, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::from_response(resp).await);
        }
        let resumed = status == StatusCode::PARTIAL_CONTENT && written > 0 && range_start(&resp) == Some(written);
        if !resumed && written > 0 {
            // The server sent everything again (or another range): start over.
            sink.reset().await?;
            hasher = Sha256::new();
            written = 0;
        }
        let mut body = resp.bytes_stream();
        loop {
            let broke = match tokio::time::timeout(settings.idle_timeout, body.next()).await {
                Err(_) => Error::Timeout(format!("GET {url}: no data for {:?}", settings.idle_timeout)),
                Ok(None) => break 'attempt,
                Ok(Some(Err(e))) => Error::http(url, e),
                Ok(Some(Ok(chunk))) => {
                    written += chunk.len() as u64;
                    if written > u.size {
                        return Err(Error::Size { expected: u.size, actual: written });
                    }
                    hasher.update(&chunk);
                    sink.write(&chunk).await?;
                    continue;
                }
            };
            if attempts >= MAX_ATTEMPTS {
                return Err(broke);
            }
            tracing::warn!(url, written, error = %broke, "download interrupted; resuming");
            continue 'attempt;
        }
    }
    if written != u.size {
        return Err(Error::Size { expected: u.size, actual: written });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != u.sha256 {
        return Err(Error::Checksum { expected: u.sha256.clone(), actual });
    }
    Ok(())
}
