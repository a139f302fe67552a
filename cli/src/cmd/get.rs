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
    /// An age identity file: decrypt a payload of an end-to-end encrypted topic (after
    /// checking the ciphertext's SHA-256).
    #[arg(long, value_name = "FILE", conflicts_with = "raw")]
    identity: Option<PathBuf>,
    /// Write an encrypted payload as it is (the ciphertext) instead of refusing.
    #[arg(long)]
    raw: bool,
}

/// Streams a download to a file (a temporary file renamed) or standard output, checking
/// the SHA-256 when the server gives it (`ETag` of `…/versions/{n}/data`).
pub async fn run(api: &Api, args: GetArgs) -> CliResult<u8> {
    use futures::StreamExt;
    let GetArgs { topic, version, labels, output, identity, raw } = args;
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
    // With an identity the ciphertext goes to a temporary file first (checked, then
    // decrypted into the output): nothing unverified is decrypted.
    let cipher = identity.as_ref().map(|_| {
        let dir = match &output {
            Some(p) if p != "-" => {
                PathBuf::from(p).parent().map(PathBuf::from).filter(|d| !d.as_os_str().is_empty()).unwrap_or(".".into())
            }
            _ => std::env::temp_dir(),
        };
        dir.join(format!(".imprint-get-{}.age", std::process::id()))
    });
    let (mut sink, tmp): (Box<dyn Write + Send>, Option<(PathBuf, PathBuf)>) = match (&output, &cipher) {
        (_, Some(c)) => {
            let f = std::fs::File::create(c).map_err(|e| CliError::new(format!("creating {}: {e}", c.display())))?;
            (Box::new(std::io::BufWriter::new(f)), None)
        }
        (Some(path), None) if path != "-" => {
            let target = PathBuf::from(path);
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "payload".into());
            let tmp = target.with_file_name(format!(".{name}.imprint-{}", std::process::id()));
            let f =
                std::fs::File::create(&tmp).map_err(|e| CliError::new(format!("creating {}: {e}", tmp.display())))?;
            (Box::new(std::io::BufWriter::new(f)), Some((tmp, target)))
        }
        _ => (Box::new(std::io::stdout()), None),
    };
    let mut first = true;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    let result: CliResult<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CliError::new(format!("download broke off: {}", chain(&e))))?;
            if std::mem::take(&mut first) && identity.is_none() && !raw && imprint_client::crypt::is_age(&chunk) {
                return Err(CliError::new(format!(
                    "version {} of {topic} is end-to-end encrypted: give --identity FILE to decrypt it (or --raw to write the ciphertext)",
                    served_version.as_deref().unwrap_or("?")
                )));
            }
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
    if let (Some(cipher), Some(identity)) = (&cipher, &identity) {
        let decrypted = verified.and_then(|()| decrypt_out(identity, cipher, output.as_deref()));
        let _ = std::fs::remove_file(cipher);
        let plain = decrypted?;
        if let Some(path) = output.as_deref().filter(|p| *p != "-") {
            eprintln!(
                "wrote version {} of {topic} to {path} (decrypted, {}; ciphertext sha256 {})",
                served_version.as_deref().unwrap_or("?"),
                fmt::bytes(plain),
                fmt::short(&actual, 12)
            );
        }
        return Ok(0);
    }
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

/// Decrypts the verified ciphertext file into the output: a file (through a temporary
/// file renamed into place, mode 0600: it is plaintext) or standard output.
fn decrypt_out(identity: &std::path::Path, cipher: &std::path::Path, output: Option<&str>) -> CliResult<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    match output.filter(|p| *p != "-") {
        None => crate::cmd::encryption::decrypt_file(identity, cipher, &mut std::io::stdout().lock()),
        Some(path) => {
            let target = PathBuf::from(path);
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "payload".into());
            let tmp = target.with_file_name(format!(".{name}.imprint-{}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| CliError::new(format!("creating {}: {e}", tmp.display())))?;
            let mut w = std::io::BufWriter::new(f);
            let n = crate::cmd::encryption::decrypt_file(identity, cipher, &mut w);
            drop(w);
            match n {
                Ok(n) => {
                    std::fs::rename(&tmp, &target)
                        .map_err(|e| CliError::new(format!("writing {}: {e}", target.display())))?;
                    Ok(n)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(e)
                }
            }
        }
    }
}
