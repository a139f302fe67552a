//! Payloads: fetched once per version into `state_dir/relay/` (inline bytes, or a streamed,
//! bounded download from upstream for the group) and verified (size, SHA-256) before they
//! are served; served inert, with `ETag`, `If-None-Match` and one byte `Range`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use imprint_domain::Labels;
use imprint_protocol::Update;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::request::error;
use super::{Key, Relay, Served, CHUNK_TIMEOUT, DOWNLOAD_TIMEOUT};

impl Relay {
    /// The verified payload file of `u` (fetched once per version: inline bytes, or a
    /// streamed download from upstream for this group).
    pub(super) async fn payload(&self, key: &Key, topic: &str, u: &Update) -> Result<PathBuf, String> {
        imprint_domain::TopicName::parse(topic).map_err(|e| format!("topic {topic:?}: {e}"))?;
        let short = u.sha256.get(..16).filter(|s| s.chars().all(|c| c.is_ascii_hexdigit())).ok_or("no SHA-256")?;
        let dir = self.dir.join(topic);
        let file = dir.join(format!("v{}-{short}", u.version));
        if tokio::fs::metadata(&file).await.is_ok_and(|m| m.len() == u.size) {
            return Ok(file);
        }
        tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("{}: {e}", dir.display()))?;
        let part = file.with_extension(format!("part{}", rand::random::<u32>()));
        let result = async {
            let mut out = tokio::fs::File::create(&part).await.map_err(|e| e.to_string())?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            if let Some(b64) = &u.data_base64 {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| e.to_string())?;
                hash.update(&bytes);
                size = bytes.len() as u64;
                out.write_all(&bytes).await.map_err(|e| e.to_string())?;
            } else {
                self.stats.downloads.fetch_add(1, Ordering::Relaxed);
                let url = format!(
                    "{}{}?labels={}",
                    self.upstream(),
                    imprint_protocol::relay_data_url(topic, u.version),
                    encode_labels(&key.0)
                );
                let mut req = self.http.get(url).bearer_auth(&self.token).timeout(DOWNLOAD_TIMEOUT);
                if let Some(t) = &key.1 {
                    req = req.header(imprint_protocol::DOWNSTREAM_TOKEN_HEADER, t);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    return Err(format!("upstream answered {status}: {}", body.chars().take(300).collect::<String>()));
                }
                let mut stream = resp.bytes_stream();
                loop {
                    let next = tokio::time::timeout(CHUNK_TIMEOUT, stream.next())
                        .await
                        .map_err(|_| "no data from upstream for 30 s".to_owned())?;
                    let Some(chunk) = next else { break };
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    size += chunk.len() as u64;
                    if size > u.size {
                        return Err(format!("upstream sent more than the {} bytes of the version", u.size));
                    }
                    hash.update(&chunk);
                    out.write_all(&chunk).await.map_err(|e| e.to_string())?;
                }
            }
            out.sync_all().await.map_err(|e| e.to_string())?;
            let sha = hex::encode(hash.finalize());
            if size != u.size || sha != u.sha256 {
                return Err(format!(
                    "the payload ({size} bytes, {sha}) is not the version's ({} bytes, {})",
                    u.size, u.sha256
                ));
            }
            tokio::fs::rename(&part, &file).await.map_err(|e| e.to_string())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result.map(|()| file)
    }
}

/// Labels as `?labels=` (percent-encoded `k=v,k=v`).
fn encode_labels(labels: &Labels) -> String {
    let text: Vec<String> = labels.pairs().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = String::new();
    for b in text.join(",").bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~=,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One byte range (`bytes=a-b`, `a-`, `-n`) of `size`: `Some(Err)` when unsatisfiable.
fn range(headers: &HeaderMap, size: u64) -> Option<Result<(u64, u64), ()>> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // several ranges: the whole payload, as the server does
    }
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 || size == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size.saturating_sub(1))),
    };
    Some(if r.0 > r.1 || r.0 >= size { Err(()) } else { Ok(r) })
}

/// A served payload: inert (nosniff, a sandbox CSP, attachment), with `ETag`, `Range`.
pub(super) async fn serve_file(s: &Served, etag: String, headers: &HeaderMap, pinned: Option<bool>) -> Response {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut out = HeaderMap::new();
    out.insert(header::ETAG, HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")));
    out.insert("x-imprint-version", HeaderValue::from(s.update.version));
    if let Some(p) = pinned {
        out.insert("x-imprint-pinned", HeaderValue::from_static(if p { "true" } else { "false" }));
    }
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    out.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let inm = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if inm.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    let ct =
        HeaderValue::from_str(&s.update.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    out.insert(header::CONTENT_TYPE, ct);
    let size = s.update.size;
    let mut file = match tokio::fs::File::open(&s.file).await {
        Ok(f) => f,
        Err(e) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the payload is unreadable: {e}"))
        }
    };
    match range(headers, size) {
        Some(Err(())) => {
            out.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"));
            let mut r =
                error(StatusCode::RANGE_NOT_SATISFIABLE, "invalid_range", format!("the payload has {size} bytes"));
            r.headers_mut().extend(out);
            r
        }
        Some(Ok((a, b))) => {
            if let Err(e) = file.seek(std::io::SeekFrom::Start(a)).await {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
            }
            let len = b - a + 1;
            out.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")).expect("ascii"));
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(len)));
            (StatusCode::PARTIAL_CONTENT, out, body).into_response()
        }
        None => {
            out.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            (out, Body::from_stream(tokio_util::io::ReaderStream::new(file))).into_response()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn one_byte_range_as_the_server_reads_it() {
        assert_eq!(range(&HeaderMap::new(), 10), None);
        assert_eq!(range(&with_range("bytes=2-4"), 10), Some(Ok((2, 4))));
        assert_eq!(range(&with_range("bytes=7-"), 10), Some(Ok((7, 9))));
        assert_eq!(range(&with_range("bytes=-3"), 10), Some(Ok((7, 9))));
        assert_eq!(range(&with_range("bytes=5-99"), 10), Some(Ok((5, 9))), "an end past the payload is cut");
        assert_eq!(range(&with_range("bytes=10-"), 10), Some(Err(())));
        assert_eq!(range(&with_range("bytes=4-2"), 10), Some(Err(())));
        assert_eq!(range(&with_range("bytes=-0"), 10), Some(Err(())));
        assert_eq!(range(&with_range("bytes=0-1,4-5"), 10), None, "several ranges: the whole payload");
        assert_eq!(range(&with_range("items=0-1"), 10), None);
    }

    #[test]
    fn labels_go_upstream_percent_encoded() {
        let l = Labels::from_pairs([("app", "check+out"), ("region", "eu&x#1")]).unwrap();
        assert_eq!(encode_labels(&l), "app=check%2Bout,region=eu%26x%231");
        assert_eq!(Labels::parse("app=check+out,region=eu&x#1").unwrap(), l, "what the server parses back");
    }
}
