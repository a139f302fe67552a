//! `imprint get`: download a payload — a version, or what consumers with some labels get
//! now — to a file (atomically) or standard output, checking its SHA-256.
use crate::api::{chain, Api, CliError, CliResult};
use crate::cmd::check_labels;
use crate::fmt;
use clap::Args;
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct GetArgs {
    topic: String,
    #[arg(long, conflicts_with = "labels")]
    version: Option<u64>,
    /// Labels of the consumer to resolve for (`/latest?labels=`).
    #[arg(long)]
    labels: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<String>,
}

/// Streams a download to a file (a temporary file renamed) or standard output, checking
/// the SHA-256 when the server gives it (`ETag` of `…/versions/{n}/data`).
pub async fn run(api: &Api, args: GetArgs) -> CliResult<u8> {
    use futures::StreamExt;
    let GetArgs { topic, version, labels, output } = args;
    let url = match version {
        Some(n) => api.data_url(&topic, n),
        None => {
            let labels = labels.unwrap_or_default();
            check_labels(&labels)?;
            let q = if labels.is_empty() { vec![] } else { vec![("labels", labels)] };
            api.url(&["topics", &topic, "latest"], &q)
        }
    };
    let resp = api.send(api.request(Method::GET, url)).await?;
    let served_version = resp.headers().get("x-imprint-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let expected_sha = version
        .and_then(|_| resp.headers().get("etag"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("W/").trim_matches('"').to_owned())
        .filter(|s| s.len() == 64);
    let (mut sink, tmp): (Box<dyn Write + Send>, Option<(PathBuf, PathBuf)>) = match &output {
        Some(path) if path != "-" => {
            let target = PathBuf::from(path);
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "payload".into());
            let tmp = target.with_file_name(format!(".{name}.imprint-{}", std::process::id()));
            let f =
                std::fs::File::create(&tmp).map_err(|e| CliError::new(format!("creating {}: {e}", tmp.display())))?;
            (Box::new(std::io::BufWriter::new(f)), Some((tmp, target)))
        }
        _ => (Box::new(std::io::stdout()), None),
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    let result: CliResult<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CliError::new(format!("download broke off: {}", chain(&e))))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            sink.write_all(&chunk)?;
        }
        sink.flush()?;
        Ok(())
    }
    .await;
    drop(sink);
    let actual = hex::encode(hasher.finalize());
    let verified = match (&result, &expected_sha) {
        (Ok(()), Some(exp)) if *exp != actual => {
            Err(CliError::new(format!("checksum mismatch: the server announced sha256 {exp}, received {actual}")))
        }
        _ => result,
    };
    match (verified, tmp) {
        (Ok(()), Some((tmp, target))) => {
            std::fs::rename(&tmp, &target).map_err(|e| CliError::new(format!("writing {}: {e}", target.display())))?;
            eprintln!(
                "wrote version {} of {topic} to {} ({}, sha256 {})",
                served_version.as_deref().unwrap_or("?"),
                target.display(),
                fmt::bytes(size),
                fmt::short(&actual, 12)
            );
            Ok(0)
        }
        (Ok(()), None) => Ok(0),
        (Err(e), tmp) => {
            if let Some((tmp, _)) = tmp {
                let _ = std::fs::remove_file(tmp);
            }
            Err(e)
        }
    }
}
