//! `imprint topics list|create|show|set`: topics and their settings, given as flags.
use crate::api::{Api, CliError, CliResult};
use crate::cmd::{read, show};
use crate::fmt;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

#[derive(Subcommand)]
pub enum TopicsCmd {
    /// Topics, with their latest version, pins and rollout state.
    List {
        /// Search names, descriptions and owners.
        #[arg(short, long)]
        query: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Create a topic.
    Create {
        name: String,
        #[command(flatten)]
        settings: TopicSettings,
    },
    /// A topic's settings and state.
    Show { name: String },
    /// Change a topic's settings (only those given).
    Set {
        name: String,
        #[command(flatten)]
        settings: TopicSettings,
        /// Name of the plan publishes use when they name none (`none` to clear).
        #[arg(long)]
        default_plan: Option<String>,
    },
}

#[derive(Args)]
pub struct TopicSettings {
    #[arg(long)]
    description: Option<String>,
    /// Owning team.
    #[arg(long)]
    owner: Option<String>,
    /// Default content type of payloads (`none` to clear, with `set`).
    #[arg(long)]
    content_type: Option<String>,
    /// Payloads up to this size live in Postgres (e.g. 65536, 512KiB, 1MiB).
    #[arg(long, value_parser = parse_size)]
    inline_limit: Option<u64>,
    /// Larger payloads are refused (e.g. 10GiB).
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
    /// Retention: keep at most this many versions.
    #[arg(long)]
    keep_versions: Option<u32>,
    /// Retention: keep versions younger than this many days.
    #[arg(long)]
    keep_days: Option<u32>,
    /// Readable and pollable only with a token allowed on the topic.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    restricted: Option<bool>,
    /// A JSON Schema file payloads must satisfy (`none` to clear, with `set`).
    #[arg(long)]
    json_schema: Option<String>,
    /// A JSON file of named rollout plans: {"canary-first": {"stages": [...]}}.
    #[arg(long)]
    plans: Option<String>,
    /// End-to-end encryption: an age X25519 recipient (`age1…`), repeatable; the list
    /// replaces the topic's. `none` removes the encryption (with `set`).
    #[arg(long = "recipient", value_name = "AGE1…")]
    recipients: Vec<String>,
}

/// A topic as `GET /api/v1/topics/{name}` (and each row of the list) answers: the fields
/// printed here (no shared protocol type yet).
#[derive(Deserialize)]
pub struct Topic {
    pub name: String,
    description: String,
    owner: String,
    retention: Retention,
    inline_limit_bytes: u64,
    pub max_size_bytes: u64,
    pub content_type: Option<String>,
    json_schema: Option<serde::de::IgnoredAny>,
    latest_version: u64,
    last_published_at: Option<DateTime<Utc>>,
    active_pins: u64,
    rollout_state: Option<String>,
    #[serde(default)]
    plans: BTreeMap<String, imprint_domain::Plan>,
    default_plan: Option<String>,
    consumers: u64,
    last_polled_at: Option<DateTime<Utc>>,
    restricted: bool,
    /// End-to-end encryption (docs/encryption.md).
    #[serde(default)]
    pub encryption: Option<Encryption>,
    created_at: DateTime<Utc>,
    created_by: String,
}

/// A topic's encryption setting as the API shows it.
#[derive(Deserialize)]
pub struct Encryption {
    pub mode: String,
    #[serde(default)]
    pub recipients: Vec<String>,
    /// At rest: the server's key id (the server seals; the CLI sends plaintext).
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct Retention {
    max_versions: Option<u32>,
    max_age_days: Option<u32>,
}

#[derive(Deserialize)]
struct TopicList {
    topics: Vec<Topic>,
}

/// `1048576`, `512KiB`, `1MiB`, `10GiB` (also KB/MB/GB as powers of 1000, K/M/G as binary).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size such as 1048576 or 1MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

pub async fn run(api: &Api, cmd: TopicsCmd, json_out: bool) -> CliResult<u8> {
    match cmd {
        TopicsCmd::List { query, owner, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = query {
                q.push(("q", s));
            }
            if let Some(o) = owner {
                q.push(("owner", o));
            }
            show(api.get(&["topics"], &q).await?, json_out, |list: TopicList| {
                let rows: Vec<Vec<String>> = list
                    .topics
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.latest_version.to_string(),
                            fmt::time(t.last_published_at),
                            t.active_pins.to_string(),
                            fmt::opt(&t.rollout_state),
                            t.owner.clone(),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                fmt::table(&["NAME", "LATEST", "LAST PUBLISH", "PINS", "ROLLOUT", "OWNER", "DESCRIPTION"], &rows);
            })
        }
        TopicsCmd::Create { name, settings } => {
            let mut body = settings_json(&settings, None)?;
            body.insert("name".into(), json!(name));
            let v = api.send_json(Method::POST, &["topics"], &Value::Object(body)).await?;
            show(v, json_out, |t: Named| println!("created topic {}", t.name))
        }
        TopicsCmd::Show { name } => show(api.get(&["topics", &name], &[]).await?, json_out, print_topic),
        TopicsCmd::Set { name, settings, default_plan } => {
            // Retention is replaced as a whole: keep the half that is not given.
            let current: Option<Topic> = if settings.keep_versions.is_some() != settings.keep_days.is_some() {
                Some(read(api.get(&["topics", &name], &[]).await?)?)
            } else {
                None
            };
            let mut body = settings_json(&settings, current.as_ref())?;
            if let Some(p) = default_plan {
                body.insert("default_plan".into(), if p == "none" { Value::Null } else { json!(p) });
            }
            for key in ["content_type", "json_schema"] {
                if body.get(key).and_then(Value::as_str) == Some("none") {
                    body.insert(key.into(), Value::Null);
                }
            }
            if body.is_empty() {
                return Err(CliError::new("nothing to change: give at least one setting (see --help)"));
            }
            let v = api.send_json(Method::PATCH, &["topics", &name], &Value::Object(body)).await?;
            show(v, json_out, |t: Named| println!("updated topic {}", t.name))
        }
    }
}

/// The name of the topic an answer is about.
#[derive(Deserialize)]
struct Named {
    name: String,
}

fn print_topic(t: Topic) {
    let retention = match (t.retention.max_versions, t.retention.max_age_days) {
        (None, None) => "keep everything".to_owned(),
        (n, d) => [n.map(|n| format!("{n} newest versions")), d.map(|d| format!("{d} days"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
    };
    let plans = if t.plans.is_empty() { "-".into() } else { t.plans.keys().cloned().collect::<Vec<_>>().join(", ") };
    let rows = [
        ("name", t.name),
        ("description", t.description),
        ("owner", t.owner),
        ("latest version", t.latest_version.to_string()),
        ("last publish", fmt::time(t.last_published_at)),
        ("active pins", t.active_pins.to_string()),
        ("rollout", fmt::opt(&t.rollout_state)),
        ("consumers", t.consumers.to_string()),
        ("last polled", fmt::time(t.last_polled_at)),
        ("content type", fmt::opt(&t.content_type)),
        ("inline limit", fmt::bytes(t.inline_limit_bytes)),
        ("max size", fmt::bytes(t.max_size_bytes)),
        ("retention", retention),
        ("json schema", if t.json_schema.is_none() { "none".into() } else { "yes".into() }),
        ("plans", plans),
        ("default plan", fmt::opt(&t.default_plan)),
        ("restricted", t.restricted.to_string()),
        (
            "encryption",
            match &t.encryption {
                None => "none".into(),
                Some(e) if e.mode == "at_rest" => format!("at_rest, key {}", e.key.as_deref().unwrap_or("?")),
                Some(e) => format!("{} for {} recipient(s): {}", e.mode, e.recipients.len(), e.recipients.join(" ")),
            },
        ),
        ("created", format!("{} by {}", fmt::time(Some(t.created_at)), t.created_by)),
    ];
    for (k, val) in rows {
        println!("{:<16}{val}", format!("{k}:"));
    }
}

fn read_json_file(path: &str, what: &str) -> CliResult<Value> {
    let bytes = std::fs::read(path).map_err(|e| CliError::new(format!("reading {what} {path}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| CliError::new(format!("{what} {path} is not JSON: {e}")))
}

/// The request body of the settings given (`current`: the topic, to keep the half of the
/// retention that is not given).
fn settings_json(s: &TopicSettings, current: Option<&Topic>) -> CliResult<Map<String, Value>> {
    let mut body = Map::new();
    if let Some(d) = &s.description {
        body.insert("description".into(), json!(d));
    }
    if let Some(o) = &s.owner {
        body.insert("owner".into(), json!(o));
    }
    if let Some(c) = &s.content_type {
        body.insert("content_type".into(), json!(c));
    }
    if let Some(n) = s.inline_limit {
        body.insert("inline_limit_bytes".into(), json!(n));
    }
    if let Some(n) = s.max_size {
        body.insert("max_size_bytes".into(), json!(n));
    }
    if s.keep_versions.is_some() || s.keep_days.is_some() {
        let now = current.map(|c| c.retention).unwrap_or_default();
        let keep = |given: Option<u32>, current: Option<u32>| match given {
            Some(0) => None,
            Some(n) => Some(n),
            None => current,
        };
        body.insert(
            "retention".into(),
            json!({"max_versions": keep(s.keep_versions, now.max_versions), "max_age_days": keep(s.keep_days, now.max_age_days)}),
        );
    }
    if let Some(r) = s.restricted {
        body.insert("restricted".into(), json!(r));
    }
    if let Some(path) = &s.json_schema {
        let v = if path == "none" { json!("none") } else { read_json_file(path, "JSON Schema")? };
        body.insert("json_schema".into(), v);
    }
    if let Some(path) = &s.plans {
        body.insert("plans".into(), read_json_file(path, "plans file")?);
    }
    match s.recipients.as_slice() {
        [] => {}
        [none] if none == "none" => {
            body.insert("encryption".into(), Value::Null);
        }
        r => {
            body.insert("encryption".into(), json!({"mode": "end_to_end", "recipients": r}));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("1.5MiB").is_err());
    }
}
