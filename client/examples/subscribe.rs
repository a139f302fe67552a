//! Subscribes to one topic and prints its value now and each new value as it arrives.
//!
//! ```sh
//! cargo run -p imprint-client --example subscribe -- http://127.0.0.1:3000 payments.methods region=eu
//! ```
//!
//! Arguments: the server URL, the topic, then this node's labels (`k=v`, or `k=v,k2=v2`).
//! `IMPRINT_TOKEN` is sent as the consumer token when set; with `IMPRINT_CACHE_DIR` the
//! last good payload is kept on disk and used at the next start if the server is down; with
//! `IMPRINT_SNAPSHOT_STORE` (the server's object store URL) a start with the server down and
//! no cache reads the topic's snapshot there.
//! Warnings go to standard error (`RUST_LOG=imprint_client=debug` for more). Ctrl-C stops it.
use imprint_client::{Client, Payload};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// What the example keeps of each version: enough to print it.
struct Shown {
    version: u64,
    sha256: String,
    content_type: String,
    pinned: bool,
    size: usize,
    /// The payload as text (cut at 4 KiB), or `None` for binary payloads.
    text: Option<String>,
}

impl Shown {
    fn from_payload(p: &Payload<'_>) -> Result<Option<Shown>, String> {
        let bytes = p.bytes().ok_or("the payload is not in memory")?;
        let text = std::str::from_utf8(bytes).ok().map(|s| match s.char_indices().nth(4096) {
            Some((cut, _)) => format!("{}… ({} more bytes)", &s[..cut], s.len() - cut),
            None => s.to_owned(),
        });
        Ok(Some(Shown {
            version: p.version(),
            sha256: p.sha256().to_owned(),
            content_type: p.content_type().to_owned(),
            pinned: p.pinned(),
            size: bytes.len(),
            text,
        }))
    }
}

fn print(topic: &str, value: Option<&Shown>, source: imprint_client::Source) {
    match value {
        None => println!("{topic}: no version yet (source: {source})"),
        Some(v) => {
            println!(
                "{topic} version {}{} ({} bytes, {}, sha256 {}) (source: {source})",
                v.version,
                if v.pinned { " pinned" } else { "" },
                v.size,
                v.content_type,
                v.sha256.get(..12).unwrap_or(&v.sha256),
            );
            match &v.text {
                Some(text) => println!("{}", text.trim_end()),
                None => println!("(binary payload)"),
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("imprint_client=warn")),
        )
        .init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, topic) = match (args.first(), args.get(1)) {
        (Some(url), Some(topic)) if !url.starts_with('-') => (url.clone(), topic.clone()),
        _ => {
            eprintln!("usage: subscribe SERVER_URL TOPIC [LABEL=VALUE]...");
            eprintln!("  e.g. subscribe http://127.0.0.1:3000 payments.methods region=eu app=checkout");
            return ExitCode::from(2);
        }
    };
    let mut labels = BTreeMap::new();
    for arg in &args[2..] {
        match imprint_client::parse_labels(arg) {
            Ok(pairs) => labels.extend(pairs),
            Err(e) => {
                eprintln!("subscribe: invalid label {arg:?}: {e}");
                return ExitCode::from(2);
            }
        }
    }

    match run(&url, &topic, labels).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("subscribe: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, topic: &str, labels: BTreeMap<String, String>) -> imprint_client::Result<()> {
    let mut builder = Client::builder(url).labels(labels);
    if let Some(token) = std::env::var("IMPRINT_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.token(token);
    }
    if let Some(dir) = std::env::var_os("IMPRINT_CACHE_DIR") {
        builder = builder.cache_dir(dir);
    }
    if let Some(store) = std::env::var("IMPRINT_SNAPSHOT_STORE").ok().filter(|s| !s.is_empty()) {
        builder = builder.snapshot_store(store);
    }
    let client = builder.build()?;
    eprintln!("subscribing to {topic} at {url} as {} with labels {:?}", client.instance(), client.labels());

    // Waits at most 5 s for the server's first answer; then holds the server's value, the
    // cached one, or the default (`None`).
    let sub = client.subscribe_payload_with(topic, None, Shown::from_payload).await?;
    // Listen before reading the current value, so no version falls between the two.
    let mut changes = sub.changes();
    let now = sub.current();
    print(topic, Option::as_ref(&now.value), now.source);

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            next = changes.next() => match next {
                Some(value) => print(topic, Option::as_ref(&value), sub.source()),
                None => break,
            },
        }
    }
    eprintln!("stopping");
    client.shutdown().await;
    Ok(())
}
