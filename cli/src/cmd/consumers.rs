//! `imprint consumers`: who consumes a topic, what each holds and should hold, counted per
//! version held and, with `--group-by`, per value of a label.
use crate::api::{Api, CliResult};
use crate::cmd::show;
use crate::fmt;
use chrono::{DateTime, Utc};
use clap::Args;
use imprint_domain::Labels;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Args)]
pub struct ConsumersArgs {
    topic: String,
    /// Only consumers holding another version than they should.
    #[arg(long)]
    lagging: bool,
    #[arg(long)]
    labels: Option<String>,
    #[arg(long)]
    version: Option<u64>,
    /// Count consumers per value of this label key (e.g. region).
    #[arg(long)]
    group_by: Option<String>,
}

/// `GET …/consumers`: the fields printed (no shared protocol type yet).
#[derive(Deserialize)]
struct ConsumerList {
    consumers: Vec<Consumer>,
    by_version: Option<BTreeMap<String, u64>>,
    total: u64,
    next: Option<String>,
    groups: Option<Vec<LabelGroup>>,
}

#[derive(Deserialize)]
struct Consumer {
    instance: String,
    labels: Labels,
    version: Option<u64>,
    expected_version: Option<u64>,
    lagging: bool,
    last_seen: DateTime<Utc>,
    last_error: Option<String>,
}

#[derive(Deserialize)]
struct LabelGroup {
    value: String,
    total: u64,
    by_version: BTreeMap<String, u64>,
    lagging: u64,
    failed: u64,
}

/// `v1: 3, v2: 1`
fn held(by_version: &BTreeMap<String, u64>) -> String {
    by_version.iter().map(|(k, n)| format!("v{k}: {n}")).collect::<Vec<_>>().join(", ")
}

pub async fn run(api: &Api, args: ConsumersArgs, json_out: bool) -> CliResult<u8> {
    let ConsumersArgs { topic, lagging, labels, version, group_by } = args;
    let mut q = vec![];
    if lagging {
        q.push(("lagging", "true".to_owned()));
    }
    if let Some(l) = labels {
        q.push(("labels", l));
    }
    if let Some(v) = version {
        q.push(("version", v.to_string()));
    }
    if let Some(g) = &group_by {
        q.push(("group_by", g.clone()));
    }
    show(api.get(&["topics", &topic, "consumers"], &q).await?, json_out, |list: ConsumerList| {
        let rows: Vec<Vec<String>> = list
            .consumers
            .iter()
            .map(|c| {
                vec![
                    c.instance.clone(),
                    c.labels.to_string(),
                    fmt::opt(&c.version),
                    fmt::opt(&c.expected_version),
                    if c.lagging { "yes".into() } else { "".into() },
                    fmt::time(Some(c.last_seen)),
                    fmt::opt(&c.last_error),
                ]
            })
            .collect();
        fmt::table(&["INSTANCE", "LABELS", "HOLDS", "EXPECTED", "LAGGING", "LAST SEEN", "LAST ERROR"], &rows);
        if let Some(by) = &list.by_version {
            println!("{} listed; versions held: {}", list.total, if by.is_empty() { "-".into() } else { held(by) });
        }
        if let (Some(key), Some(groups)) = (&group_by, &list.groups) {
            println!();
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    vec![
                        g.value.clone(),
                        g.total.to_string(),
                        held(&g.by_version),
                        g.lagging.to_string(),
                        g.failed.to_string(),
                    ]
                })
                .collect();
            fmt::table(&[&key.to_uppercase(), "NODES", "HOLDING", "LAGGING", "FAILED"], &rows);
        }
        if list.next.is_some() {
            println!("(more consumers: use --json and ?cursor=, or narrow with --labels)");
        }
    })
}
