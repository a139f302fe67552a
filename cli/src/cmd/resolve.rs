//! `imprint resolve`: which version consumers with some labels get (now, or `--at` a past time).
use crate::api::{Api, CliResult};
use crate::cmd::{check_labels, show};
use clap::Args;
use serde::Deserialize;

#[derive(Args)]
pub struct ResolveArgs {
    topic: String,
    #[arg(long, default_value = "")]
    labels: String,
    /// RFC 3339 time, e.g. 2026-01-31T12:00:00Z.
    #[arg(long)]
    at: Option<String>,
}

/// `GET …/resolve` (no shared protocol type yet).
#[derive(Deserialize)]
struct Resolved {
    version: Option<u64>,
    #[serde(default)]
    pinned: bool,
}

pub async fn run(api: &Api, args: ResolveArgs, json_out: bool) -> CliResult<u8> {
    let ResolveArgs { topic, labels, at } = args;
    check_labels(&labels)?;
    let mut q = vec![("labels", labels)];
    if let Some(at) = at {
        q.push(("at", at));
    }
    show(api.get(&["topics", &topic, "resolve"], &q).await?, json_out, |r: Resolved| match r.version {
        Some(n) => println!("{}{}", n, if r.pinned { " (pinned)" } else { "" }),
        None => println!("no version in scope"),
    })
}
