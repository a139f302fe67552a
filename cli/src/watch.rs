//! `imprint watch`: a consumer in a shell. It long-polls through `imprint-client` like any
//! node, and on each new version prints it or runs a command with the payload's path in
//! `IMPRINT_PAYLOAD`; the command's exit status is reported to the server as the version
//! applied (0) or failed (anything else).
use crate::api::{CliError, CliResult};
use imprint_client::{Client, Payload};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub struct WatchArgs {
    pub url: String,
    pub token: Option<String>,
    pub topic: String,
    pub labels: String,
    pub instance: Option<String>,
    pub exec: Option<String>,
    pub cache_dir: Option<String>,
    pub max_versions: Option<usize>,
}

/// Largest payload printed to the terminal (larger or binary ones print their path).
const PRINT_LIMIT: u64 = 1 << 20;

fn handle(p: &Payload<'_>, exec: Option<&str>) -> Result<u64, String> {
    let path = p.path().ok_or("no payload file")?;
    eprintln!(
        "imprint watch: {} version {} ({} bytes, sha256 {}{}, from {})",
        p.topic(),
        p.version(),
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        crate::fmt::short(p.sha256(), 12),
        if p.pinned() { ", pinned" } else { "" },
        p.source(),
    );
    match exec {
        Some(cmd) => {
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .env("IMPRINT_PAYLOAD", path)
                .env("IMPRINT_TOPIC", p.topic())
                .env("IMPRINT_VERSION", p.version().to_string())
                .env("IMPRINT_SHA256", p.sha256())
                .env("IMPRINT_CONTENT_TYPE", p.content_type())
                .stdin(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
            if status.success() {
                eprintln!("imprint watch: version {} applied", p.version());
                Ok(p.version())
            } else {
                let why = match status.code() {
                    Some(c) => format!("`{cmd}` exited with status {c}"),
                    None => format!("`{cmd}` was killed by a signal"),
                };
                eprintln!("imprint watch: version {} failed: {why}", p.version());
                Err(why)
            }
        }
        None => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
            let text = (size <= PRINT_LIMIT)
                .then(|| std::fs::read(path).ok())
                .flatten()
                .and_then(|b| String::from_utf8(b).ok());
            let mut out = std::io::stdout().lock();
            let _ = match text {
                Some(t) if t.ends_with('\n') => write!(out, "{t}"),
                Some(t) => writeln!(out, "{t}"),
                None => writeln!(out, "{}", path.display()),
            };
            let _ = out.flush();
            Ok(p.version())
        }
    }
}

pub async fn watch(args: WatchArgs) -> CliResult<u8> {
    let labels = imprint_client::parse_labels(&args.labels).map_err(CliError::new)?;
    let mut builder = Client::builder(&args.url).labels(labels).initial_wait(Duration::ZERO);
    if let Some(t) = args.token {
        builder = builder.token(t);
    }
    if let Some(i) = args.instance {
        builder = builder.instance(i);
    }
    if let Some(d) = args.cache_dir {
        builder = builder.cache_dir(d);
    }
    let client = builder.build()?;
    let handled = Arc::new(AtomicUsize::new(0));
    let last_ok = Arc::new(AtomicBool::new(true));
    let done = Arc::new(Notify::new());
    let exec = args.exec.clone();
    let (h, ok, d, max) = (handled.clone(), last_ok.clone(), done.clone(), args.max_versions);
    let sub = client
        .subscribe_file_with(&args.topic, None::<u64>, move |p: &Payload<'_>| {
            let outcome = handle(p, exec.as_deref());
            ok.store(outcome.is_ok(), Ordering::SeqCst);
            if max.is_some_and(|m| h.fetch_add(1, Ordering::SeqCst) + 1 >= m) {
                d.notify_one();
            }
            outcome.map(Some)
        })
        .await?;
    eprintln!(
        "imprint watch: watching {} as {} (labels {}); Ctrl-C to stop",
        args.topic,
        client.instance(),
        if args.labels.trim().is_empty() { "none" } else { args.labels.trim() }
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.map_err(|e| CliError::new(format!("waiting for Ctrl-C: {e}")))?; }
        _ = done.notified() => {}
    }
    // Sends the last outcome to the server before leaving.
    client.shutdown().await;
    drop(sub);
    Ok(if last_ok.load(Ordering::SeqCst) { 0 } else { 1 })
}
