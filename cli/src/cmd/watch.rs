//! `imprint watch`: a consumer in a shell. It long-polls through `imprint-client` like any
//! node, and on each new version prints it or runs a command with the payload's path in
//! `IMPRINT_PAYLOAD`; the command's exit status is reported to the server as the version
//! applied (0) or failed (anything else).
use crate::api::{CliError, CliResult};
use clap::Args;
use imprint_client::{Client, Payload};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Args)]
pub struct WatchArgs {
    topic: String,
    /// This consumer's labels: region=eu-west-1,app=checkout.
    #[arg(long, default_value = "")]
    labels: String,
    /// Run this shell command on each new version, with IMPRINT_PAYLOAD (the payload
    /// file), IMPRINT_TOPIC, IMPRINT_VERSION, IMPRINT_SHA256 and IMPRINT_CONTENT_TYPE set.
    /// Exit status 0 reports the version applied, anything else failed.
    #[arg(long)]
    exec: Option<String>,
    /// Name in the consumer audit (default: the host name).
    #[arg(long)]
    instance: Option<String>,
    /// Keep the last good payload here and start from it when the server is unreachable.
    #[arg(long)]
    cache_dir: Option<String>,
    /// Stop after handling this many versions.
    #[arg(long)]
    max_versions: Option<usize>,
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

/// Watches as a consumer of the server at `url` (with `token`, if any).
pub async fn run(url: &str, token: Option<String>, args: WatchArgs) -> CliResult<u8> {
    let labels = imprint_client::parse_labels(&args.labels).map_err(CliError::new)?;
    let mut builder = Client::builder(url).labels(labels).initial_wait(Duration::ZERO);
    if let Some(t) = token {
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
