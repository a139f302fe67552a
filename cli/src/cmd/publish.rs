//! `imprint publish`: the payload is hashed first, then streamed as the request body with
//! `X-Imprint-Sha256` (the server verifies it and stores nothing on a mismatch). Standard
//! input is spooled to a temporary file first, so it is hashed and sized like a file.
use crate::api::{chain, Api, CliError, CliResult};
use crate::cmd::rollouts::Rollout;
use crate::cmd::show;
use crate::cmd::topics::Topic;
use crate::fmt;
use bytes::Bytes;
use clap::Args;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct PublishArgs {
    topic: String,
    /// The payload file; `-` (the default) reads standard input.
    #[arg(default_value = "-")]
    file: String,
    /// Release to these consumers (repeatable; default everyone, or the rollout's first stage).
    #[arg(long = "scope", value_name = "SEL")]
    scopes: Vec<String>,
    #[arg(short, long)]
    message: Option<String>,
    /// Metadata, repeatable: --meta commit=abc123
    #[arg(long = "meta", value_name = "K=V", value_parser = parse_pair)]
    meta: Vec<(String, String)>,
    /// Roll the version out with this plan of the topic.
    #[arg(long, conflicts_with = "no_rollout")]
    plan: Option<String>,
    /// No rollout, even if the topic has a default plan.
    #[arg(long)]
    no_rollout: bool,
    /// The payload's media type (default: the topic's, or guessed from .json/.txt/.yaml/…).
    #[arg(long)]
    content_type: Option<String>,
    /// No progress line.
    #[arg(short, long)]
    quiet: bool,
    /// Check the payload against this JSON Schema file before sending it (for an
    /// end-to-end encrypted topic, whose server cannot check what it cannot read).
    #[arg(long, value_name = "FILE")]
    schema: Option<PathBuf>,
    /// Publish even if a `reject` check of the topic fails (needs --reason; audited).
    #[arg(long, requires = "reason")]
    force: bool,
    /// Why the checks are overridden (with --force).
    #[arg(long, requires = "force", value_name = "TEXT")]
    reason: Option<String>,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

/// What `POST …/versions` answers, the fields printed (no shared protocol type yet).
#[derive(Deserialize)]
struct Published {
    topic: String,
    version: u64,
    size: u64,
    sha256: String,
    content_type: String,
    storage: String,
    #[serde(default)]
    scopes: Vec<imprint_protocol::ScopeInfo>,
    rollout: Option<Rollout>,
    /// The failed `warn` checks.
    #[serde(default)]
    warnings: Vec<String>,
}

/// `imprint publish`: sends the payload, prints what was published.
pub async fn run(api: &Api, a: PublishArgs, json_out: bool) -> CliResult<u8> {
    let rollout = if a.no_rollout { Some("none".to_owned()) } else { a.plan };
    let request = PublishRequest {
        topic: a.topic,
        file: a.file,
        scopes: a.scopes,
        message: a.message,
        meta: a.meta,
        rollout,
        content_type: a.content_type,
        progress: !a.quiet && !json_out,
        schema: a.schema,
        force_reason: if a.force { a.reason } else { None },
    };
    show(publish(api, request).await?, json_out, |p: Published| {
        println!(
            "published {} version {} ({}, sha256 {}, {}, stored {})",
            p.topic,
            p.version,
            fmt::bytes(p.size),
            fmt::short(&p.sha256, 12),
            p.content_type,
            p.storage,
        );
        let scopes: Vec<String> = p.scopes.iter().map(|s| s.selector.to_string()).collect();
        println!("released to: {}", if scopes.is_empty() { "nobody yet".into() } else { scopes.join(" ") });
        if let Some(r) = &p.rollout {
            println!("rollout {} started ({})", r.id, r.view.state.as_str());
        }
        for w in &p.warnings {
            println!("warning: {w}");
        }
    })
}

struct PublishRequest {
    topic: String,
    file: String,
    scopes: Vec<String>,
    message: Option<String>,
    meta: Vec<(String, String)>,
    /// `Some("none")` for no rollout, a plan name, or `None` for the topic's default.
    rollout: Option<String>,
    content_type: Option<String>,
    progress: bool,
    schema: Option<PathBuf>,
    /// `--force --reason`: override failing checks for this reason.
    force_reason: Option<String>,
}

/// A temporary file removed when dropped.
struct Spooled(PathBuf);

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads `r` to the end into `out` (when given), returning SHA-256 and size.
fn hash_reader(mut r: impl Read, mut out: Option<&mut std::fs::File>) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Some(f) = out.as_deref_mut() {
            f.write_all(&buf[..n])?;
        }
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The content type to send: the flag, else (when the topic declares none) a guess from a
/// few well-known file extensions, else none (the topic's or the server's default).
fn content_type_for(file: &str, flag: Option<&str>, topic_content_type: Option<&str>) -> Option<String> {
    if let Some(ct) = flag {
        return Some(ct.to_owned());
    }
    if topic_content_type.is_some() {
        return None;
    }
    let ext = Path::new(file).extension()?.to_str()?.to_ascii_lowercase();
    let ct = match ext.as_str() {
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "csv" => "text/csv",
        "xml" => "application/xml",
        "properties" => "text/x-java-properties",
        _ => return None,
    };
    Some(ct.to_owned())
}

/// The raw-body form cannot carry these media types (the server reads them as the JSON
/// or form publish); such payloads go as a streamed multipart form instead.
fn needs_form(content_type: Option<&str>) -> bool {
    let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    matches!(media.as_deref(), Some("application/json" | "multipart/form-data" | "application/x-www-form-urlencoded"))
}

fn progress_stream(
    inner: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    total: u64,
    label: String,
    show: bool,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let sent = Arc::new(AtomicU64::new(0));
    let mut last = Instant::now() - Duration::from_secs(1);
    inner.map(move |chunk| {
        if let Ok(c) = &chunk {
            let n = sent.fetch_add(c.len() as u64, Ordering::Relaxed) + c.len() as u64;
            if show && (last.elapsed() >= Duration::from_millis(200) || n == total) {
                last = Instant::now();
                let pct = if total == 0 { 100.0 } else { n as f64 * 100.0 / total as f64 };
                eprint!("\r{label}: {} / {} ({pct:.0}%)   ", crate::fmt::bytes(n), crate::fmt::bytes(total));
                let _ = std::io::stderr().flush();
            }
        }
        chunk
    })
}

fn form_field(boundary: &str, name: &str, value: &str) -> String {
    let name = name.replace('"', "%22").replace(['\r', '\n'], " ");
    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

/// Sends the payload; the answer is the API's JSON as it is.
async fn publish(api: &Api, req: PublishRequest) -> CliResult<Value> {
    // The topic first: a clear "not found" before any upload, and its content type.
    let topic: Topic = crate::cmd::read(api.get(&["topics", &req.topic], &[]).await?)?;

    let (path, _spool) = if req.file == "-" {
        if std::io::stdin().is_terminal() {
            return Err(CliError::new("no payload: give a FILE, or pipe the payload into `imprint publish TOPIC -`"));
        }
        let tmp = std::env::temp_dir().join(format!("imprint-publish-{}-{}", std::process::id(), rand_suffix()));
        (tmp.clone(), Some(Spooled(tmp)))
    } else {
        (PathBuf::from(&req.file), None)
    };
    // An end-to-end topic gets the payload encrypted to its recipients (docs/encryption.md):
    // into a temporary file, which is what is hashed and sent. Standard input goes
    // straight into it, so no plaintext copy is spooled.
    // (At rest the server seals: the CLI sends plaintext.)
    let recipients = topic.encryption.as_ref().filter(|e| e.mode == "end_to_end").map(|e| e.recipients.clone());
    let encrypted = recipients.as_ref().map(|_| {
        let tmp = std::env::temp_dir().join(format!("imprint-publish-{}-{}.age", std::process::id(), rand_suffix()));
        Spooled(tmp)
    });
    let plain_path = path.clone();
    let path = encrypted.as_ref().map_or(path, |s| s.0.clone());
    if let Some(schema) = &req.schema {
        if req.file == "-" {
            return Err(CliError::new("--schema checks a payload FILE, not standard input"));
        }
        crate::cmd::encryption::check_schema(schema, &plain_path)?;
    }
    let (sha256, size) = {
        let path = path.clone();
        let from_stdin = req.file == "-";
        tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
            if let Some(r) = recipients {
                let out = std::fs::File::create(&path)?;
                let mut out = std::io::BufWriter::new(out);
                let done = if from_stdin {
                    imprint_client::crypt::encrypt_to(&r, std::io::stdin().lock(), &mut out)
                } else {
                    let f = std::io::BufReader::new(std::fs::File::open(&plain_path)?);
                    imprint_client::crypt::encrypt_to(&r, f, &mut out)
                };
                done.map_err(std::io::Error::other)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                hash_reader(std::fs::File::open(&path)?, None)
            } else if from_stdin {
                let mut out = std::fs::File::create(&path)?;
                let r = hash_reader(std::io::stdin().lock(), Some(&mut out))?;
                out.sync_all()?;
                Ok(r)
            } else {
                hash_reader(std::fs::File::open(&path)?, None)
            }
        })
        .await
        .map_err(|e| CliError::new(format!("reading the payload: {e}")))?
        .map_err(|e| {
            CliError::new(format!("reading {}: {e}", if req.file == "-" { "standard input" } else { &req.file }))
        })?
    };
    if size > topic.max_size_bytes {
        return Err(CliError::new(format!(
            "{} is larger than the topic's max_size_bytes ({}): the server would refuse it",
            fmt::bytes(size),
            fmt::bytes(topic.max_size_bytes)
        )));
    }
    let content_type = content_type_for(&req.file, req.content_type.as_deref(), topic.content_type.as_deref());
    if encrypted.is_some() && req.progress {
        eprintln!(
            "encrypted for the topic's {} recipient(s)",
            topic.encryption.as_ref().map_or(0, |e| e.recipients.len())
        );
    }
    let file = tokio::fs::File::open(&path).await.map_err(|e| CliError::new(format!("opening {}: {e}", req.file)))?;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let show = req.progress && std::io::stderr().is_terminal();
    let label = format!("publishing {}", req.topic);

    let url_segments = ["topics", req.topic.as_str(), "versions"];
    let rb = if needs_form(content_type.as_deref()) {
        let boundary = format!("imprint-{}", rand_suffix());
        let mut head = String::new();
        if let Some(m) = &req.message {
            head.push_str(&form_field(&boundary, "message", m));
        }
        for s in &req.scopes {
            head.push_str(&form_field(&boundary, "scope", s));
        }
        for (k, v) in &req.meta {
            head.push_str(&form_field(&boundary, &format!("meta.{k}"), v));
        }
        if let Some(r) = &req.rollout {
            head.push_str(&form_field(&boundary, "rollout", r));
        }
        if let Some(ct) = &content_type {
            head.push_str(&form_field(&boundary, "content_type", ct));
        }
        if let Some(reason) = &req.force_reason {
            head.push_str(&form_field(&boundary, "force", "true"));
            head.push_str(&form_field(&boundary, "force_reason", reason));
        }
        head.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"payload\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        let tail = format!("\r\n--{boundary}--\r\n");
        let len = head.len() as u64 + size + tail.len() as u64;
        let stream = futures::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(progress_stream(body, size, label, show))
            .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }));
        api.request(Method::POST, api.url(&url_segments, &[]))
            .header(CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .header(CONTENT_LENGTH, len)
            .header("X-Imprint-Sha256", &sha256)
            .body(reqwest::Body::wrap_stream(stream))
    } else {
        let mut query: Vec<(&str, String)> = Vec::new();
        for s in &req.scopes {
            query.push(("scope", s.clone()));
        }
        let meta: Vec<(String, String)> = req.meta.iter().map(|(k, v)| (format!("meta.{k}"), v.clone())).collect();
        for (k, v) in &meta {
            query.push((k.as_str(), v.clone()));
        }
        if let Some(m) = &req.message {
            query.push(("message", m.clone()));
        }
        if let Some(r) = &req.rollout {
            query.push(("rollout", r.clone()));
        }
        if let Some(reason) = &req.force_reason {
            query.push(("force", "true".into()));
            query.push(("force_reason", reason.clone()));
        }
        let mut rb = api
            .request(Method::POST, api.url(&url_segments, &query))
            .header(CONTENT_LENGTH, size)
            .header("X-Imprint-Sha256", &sha256)
            .body(reqwest::Body::wrap_stream(progress_stream(body, size, label, show)));
        if let Some(ct) = &content_type {
            rb = rb.header(CONTENT_TYPE, ct);
        }
        rb
    };
    let result = api.send(rb).await;
    if show {
        eprintln!();
    }
    let resp = result?;
    let published: Value =
        resp.json().await.map_err(|e| CliError::new(format!("reading the answer: {}", chain(&e))))?;
    Ok(published)
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let bare = None;
        assert_eq!(content_type_for("a.json", None, bare).as_deref(), Some("application/json"));
        assert_eq!(content_type_for("a.bin", None, bare), None);
        assert_eq!(content_type_for("a.json", None, Some("text/plain")), None);
        assert_eq!(content_type_for("a.json", Some("x/y"), bare).as_deref(), Some("x/y"));
        assert!(needs_form(Some("application/json; charset=utf-8")));
        assert!(!needs_form(Some("text/plain")));
        assert!(!needs_form(None));
    }

    #[test]
    fn hashes_while_copying() {
        let (sha, size) = hash_reader(&b"abc"[..], None).expect("hash");
        assert_eq!(size, 3);
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
