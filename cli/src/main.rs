//! `imprint`: Imprint's command-line tool for pipelines and people — topics, publishing,
//! scopes, pins, rollouts, the consumer audit, and `watch` (a consumer in a shell).
//! Tables for people, `--json` for scripts (the API's JSON as it is).
#![forbid(unsafe_code)]

mod api;
mod fmt;
mod publish;
mod watch;

use api::{chain, Api, CliError, CliResult};
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "imprint",
    version,
    about = "Publish, pin and roll out Imprint datasets; watch them like a consumer",
    after_help = "Selectors and labels are written k=v,k2=v2 (`*` = everyone).\n\
                  Configuration: IMPRINT_URL (default http://127.0.0.1:3000) and IMPRINT_TOKEN, or --url/--token."
)]
struct Cli {
    /// The Imprint server.
    #[arg(long, env = "IMPRINT_URL", default_value = "http://127.0.0.1:3000", global = true)]
    url: String,
    /// API token (publishing and administration need one).
    #[arg(long, env = "IMPRINT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List, create, show and change topics.
    #[command(subcommand)]
    Topics(TopicsCmd),
    /// Publish a new version (a file, or `-` for standard input), streamed.
    Publish(PublishArgs),
    /// A topic's versions, newest first.
    Versions {
        topic: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Download a payload: a version, or what consumers with some labels get now.
    Get {
        topic: String,
        #[arg(long, conflicts_with = "labels")]
        version: Option<u64>,
        /// Labels of the consumer to resolve for (`/latest?labels=`).
        #[arg(long)]
        labels: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Line diff of two versions (JSON payloads are compared pretty-printed).
    Diff {
        topic: String,
        a: u64,
        b: u64,
        /// Compare the bytes as they are, without normalising JSON.
        #[arg(long)]
        raw: bool,
    },
    /// Release a version to more consumers.
    #[command(subcommand)]
    Scope(ScopeCmd),
    /// Pin consumers matching a selector to a version.
    Pin {
        topic: String,
        selector: String,
        version: u64,
        #[arg(long)]
        reason: String,
        /// When the pin stops applying: an RFC 3339 time, or a duration from now (2h, 7d).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Remove the pin on a selector.
    Unpin { topic: String, selector: String },
    /// Active pins (`--all`: removed ones too).
    Pins {
        topic: String,
        #[arg(long)]
        all: bool,
    },
    /// Which version consumers with these labels get (now, or `--at` a past time).
    Resolve {
        topic: String,
        #[arg(long, default_value = "")]
        labels: String,
        /// RFC 3339 time, e.g. 2026-01-31T12:00:00Z.
        #[arg(long)]
        at: Option<String>,
    },
    /// Start, steer and watch rollouts.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Who consumes a topic, what they hold and what they should hold.
    Consumers {
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
    },
    /// Consume a topic from the shell: print each new version, or run a command.
    Watch(WatchCli),
    /// Print a shell completion script, e.g. `imprint completions bash > /etc/bash_completion.d/imprint`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum TopicsCmd {
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
struct TopicSettings {
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
}

#[derive(Args)]
struct PublishArgs {
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
}

#[derive(Subcommand)]
enum ScopeCmd {
    /// Add a scope to a version: `imprint scope add TOPIC N region=eu-west-1`.
    Add { topic: String, version: u64, selector: String },
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Roll out a version (the topic's newest) stage by stage.
    Start {
        topic: String,
        version: u64,
        /// A stage: "SELECTOR WAIT [min_applied=R] [max_failures=R]", e.g. "cluster=canary 10m" (repeatable, in order).
        #[arg(long = "stage", value_name = "STAGE", required_unless_present = "plan")]
        stages: Vec<String>,
        /// Use this plan of the topic instead of --stage.
        #[arg(long, conflicts_with = "stages")]
        plan: Option<String>,
    },
    /// A topic's rollouts, newest first.
    List {
        topic: String,
    },
    /// One rollout.
    Show {
        topic: String,
        id: i64,
    },
    /// Stop the clock (no stage is added while paused).
    Pause {
        topic: String,
        id: i64,
    },
    Resume {
        topic: String,
        id: i64,
    },
    /// Reach the next stage now.
    Advance {
        topic: String,
        id: i64,
    },
    /// Reach all stages now.
    Complete {
        topic: String,
        id: i64,
    },
    /// Stop the rollout; `--rollback` pins each reached stage to what it had before.
    Cancel {
        topic: String,
        id: i64,
        #[arg(long)]
        rollback: bool,
    },
    /// Follow a rollout until it ends (exit 0 when completed, 1 otherwise).
    Watch {
        topic: String,
        id: i64,
        /// Seconds between two looks (0.2-60).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Give up after this many seconds (exit 1).
        #[arg(long)]
        timeout: Option<u64>,
    },
}

#[derive(Args)]
struct WatchCli {
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

fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
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

/// `90`, `30s`, `10m`, `1h`, `1h30m` → seconds.
fn parse_wait(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a wait such as 600, 30s, 10m or 1h30m");
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// `--expires-at`: an RFC 3339 time as it is, or a duration from now (`2h`, `7d`).
fn expiry_time(s: &str) -> CliResult<String> {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return Ok(s.to_owned());
    }
    let secs = parse_wait(s).map_err(|_| {
        CliError::new(format!("{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration (2h, 7d)"))
    })?;
    let at = i64::try_from(secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
        .ok_or_else(|| CliError::new(format!("{s:?} is too far in the future")))?;
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A selector string as the API's JSON object (checked like the server does).
fn selector_json(s: &str) -> CliResult<Value> {
    let pairs = imprint_client::parse_labels(s).map_err(|e| CliError::new(format!("invalid selector {s:?}: {e}")))?;
    Ok(Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect()))
}

/// "SELECTOR WAIT [min_applied=R] [max_failures=R]" → a stage.
fn parse_stage(s: &str) -> CliResult<Value> {
    let mut parts = s.split_whitespace();
    let selector = parts.next().ok_or_else(|| CliError::new("an empty --stage: give \"SELECTOR WAIT\""))?;
    let wait = parts.next().map(parse_wait).transpose().map_err(CliError::new)?.unwrap_or(0);
    let mut stage = json!({"selector": selector_json(selector)?, "wait_s": wait});
    let mut gate = Map::new();
    for extra in parts {
        let (k, v) =
            extra.split_once('=').ok_or_else(|| CliError::new(format!("{extra:?} in --stage is not KEY=VALUE")))?;
        let r: f64 = v.parse().map_err(|_| CliError::new(format!("{v:?} is not a ratio between 0 and 1")))?;
        let key = match k {
            "min_applied" | "min_applied_ratio" => "min_applied_ratio",
            "max_failures" | "max_failure" | "max_failure_ratio" => "max_failure_ratio",
            _ => return Err(CliError::new(format!("unknown gate {k:?}: use min_applied=R or max_failures=R"))),
        };
        gate.insert(key.into(), json!(r));
    }
    if !gate.is_empty() {
        stage["gate"] = Value::Object(gate);
    }
    Ok(stage)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("imprint: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Writes the completion script of `shell` to standard output (no server involved).
fn completions(shell: clap_complete::Shell) -> CliResult<u8> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "imprint", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

async fn run(cli: Cli) -> CliResult<u8> {
    if let Cmd::Completions { shell } = cli.cmd {
        return completions(shell);
    }
    let api = Api::new(&cli.url, cli.token.clone())?;
    let json_out = cli.json;
    match cli.cmd {
        Cmd::Topics(cmd) => topics(&api, cmd, json_out).await,
        Cmd::Publish(a) => {
            let rollout = if a.no_rollout { Some("none".to_owned()) } else { a.plan };
            let published = publish::publish(
                &api,
                publish::PublishRequest {
                    topic: a.topic,
                    file: a.file,
                    scopes: a.scopes,
                    message: a.message,
                    meta: a.meta,
                    rollout,
                    content_type: a.content_type,
                    progress: !a.quiet && !json_out,
                },
            )
            .await?;
            if json_out {
                print_json(&published);
            } else {
                let p = &published;
                println!(
                    "published {} version {} ({}, sha256 {}, {}, stored {})",
                    fmt::cell(&p["topic"]),
                    fmt::cell(&p["version"]),
                    fmt::bytes(p["size"].as_u64().unwrap_or(0)),
                    fmt::short(p["sha256"].as_str().unwrap_or(""), 12),
                    fmt::cell(&p["content_type"]),
                    fmt::cell(&p["storage"]),
                );
                let scopes: Vec<String> =
                    p["scopes"].as_array().into_iter().flatten().map(|s| fmt::selector(&s["selector"])).collect();
                println!("released to: {}", if scopes.is_empty() { "nobody yet".into() } else { scopes.join(" ") });
                if p["rollout"].is_object() {
                    println!(
                        "rollout {} started ({})",
                        fmt::cell(&p["rollout"]["id"]),
                        fmt::cell(&p["rollout"]["state"])
                    );
                }
            }
            Ok(0)
        }
        Cmd::Versions { topic, limit } => {
            let v = api.get(&["topics", &topic, "versions"], &[("limit", limit.to_string())]).await?;
            if json_out {
                print_json(&v);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = v["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let scopes: Vec<String> =
                        v["scopes"].as_array().into_iter().flatten().map(|s| fmt::selector(&s["selector"])).collect();
                    vec![
                        fmt::cell(&v["version"]),
                        fmt::time(&v["created_at"]),
                        fmt::cell(&v["created_by"]),
                        if v["purged"].as_bool() == Some(true) {
                            "purged".into()
                        } else {
                            fmt::bytes(v["size"].as_u64().unwrap_or(0))
                        },
                        fmt::short(v["sha256"].as_str().unwrap_or(""), 12),
                        if scopes.is_empty() { "-".into() } else { scopes.join(" ") },
                        fmt::cell(&v["message"]),
                    ]
                })
                .collect();
            fmt::table(&["VERSION", "CREATED", "BY", "SIZE", "SHA256", "SCOPES", "MESSAGE"], &rows);
            Ok(0)
        }
        Cmd::Get { topic, version, labels, output } => get(&api, &topic, version, labels, output).await,
        Cmd::Diff { topic, a, b, raw } => diff(&api, &topic, a, b, raw, json_out).await,
        Cmd::Scope(ScopeCmd::Add { topic, version, selector }) => {
            let body = json!({"selector": selector_json(&selector)?});
            let v = api
                .send_json(Method::POST, &["topics", &topic, "versions", &version.to_string(), "scopes"], &body)
                .await?;
            if json_out {
                print_json(&v);
            } else {
                println!("version {version} of {topic} is released to {}", fmt::selector(&v["selector"]));
            }
            Ok(0)
        }
        Cmd::Pin { topic, selector, version, reason, expires_at } => {
            let mut body = json!({"selector": selector_json(&selector)?, "version": version, "reason": reason});
            if let Some(t) = expires_at {
                body["expires_at"] = json!(expiry_time(&t)?);
            }
            let v = api.send_json(Method::PUT, &["topics", &topic, "pins"], &body).await?;
            if json_out {
                print_json(&v);
            } else {
                let until = v["expires_at"]
                    .as_str()
                    .map(|_| format!(" until {}", fmt::time(&v["expires_at"])))
                    .unwrap_or_default();
                println!(
                    "pinned {} of {topic} to version {}{until}",
                    fmt::selector(&v["selector"]),
                    fmt::cell(&v["version"])
                );
            }
            Ok(0)
        }
        Cmd::Unpin { topic, selector } => {
            selector_json(&selector)?;
            api.delete(&["topics", &topic, "pins"], &[("selector", selector.clone())]).await?;
            if json_out {
                print_json(&json!({"unpinned": selector}));
            } else {
                println!("unpinned {selector} of {topic}");
            }
            Ok(0)
        }
        Cmd::Pins { topic, all } => {
            let q = if all { vec![("all", "true".to_owned())] } else { vec![] };
            let v = api.get(&["topics", &topic, "pins"], &q).await?;
            if json_out {
                print_json(&v);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = v["pins"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let mut row = vec![
                        fmt::selector(&p["selector"]),
                        fmt::cell(&p["version"]),
                        fmt::cell(&p["created_by"]),
                        fmt::time(&p["created_at"]),
                        fmt::time(&p["expires_at"]),
                    ];
                    if all {
                        row.push(fmt::time(&p["removed_at"]));
                    }
                    row.push(fmt::cell(&p["reason"]));
                    row
                })
                .collect();
            if all {
                fmt::table(&["SELECTOR", "VERSION", "BY", "PINNED", "EXPIRES", "REMOVED", "REASON"], &rows);
            } else {
                fmt::table(&["SELECTOR", "VERSION", "BY", "PINNED", "EXPIRES", "REASON"], &rows);
            }
            Ok(0)
        }
        Cmd::Resolve { topic, labels, at } => {
            imprint_client::parse_labels(&labels).map_err(|e| CliError::new(format!("invalid labels: {e}")))?;
            let mut q = vec![("labels", labels.clone())];
            if let Some(at) = at {
                q.push(("at", at));
            }
            let v = api.get(&["topics", &topic, "resolve"], &q).await?;
            if json_out {
                print_json(&v);
            } else {
                match v["version"].as_u64() {
                    Some(n) => println!("{}{}", n, if v["pinned"].as_bool() == Some(true) { " (pinned)" } else { "" }),
                    None => println!("no version in scope"),
                }
            }
            Ok(0)
        }
        Cmd::Rollout(cmd) => rollout(&api, cmd, json_out).await,
        Cmd::Consumers { topic, lagging, labels, version, group_by } => {
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
            let v = api.get(&["topics", &topic, "consumers"], &q).await?;
            if json_out {
                print_json(&v);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = v["consumers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    vec![
                        fmt::cell(&c["instance"]),
                        fmt::selector(&c["labels"]),
                        fmt::cell(&c["version"]),
                        fmt::cell(&c["expected_version"]),
                        if c["lagging"].as_bool() == Some(true) { "yes".into() } else { "".into() },
                        fmt::time(&c["last_seen"]),
                        fmt::cell(&c["last_error"]),
                    ]
                })
                .collect();
            fmt::table(&["INSTANCE", "LABELS", "HOLDS", "EXPECTED", "LAGGING", "LAST SEEN", "LAST ERROR"], &rows);
            if let Some(by) = v["by_version"].as_object() {
                let parts: Vec<String> = by.iter().map(|(k, n)| format!("v{k}: {n}")).collect();
                println!(
                    "{} listed; versions held: {}",
                    fmt::cell(&v["total"]),
                    if parts.is_empty() { "-".into() } else { parts.join(", ") }
                );
            }
            if let (Some(key), Some(groups)) = (&group_by, v["groups"].as_array()) {
                println!();
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        let held = g["by_version"]
                            .as_object()
                            .map(|m| m.iter().map(|(k, n)| format!("v{k}: {n}")).collect::<Vec<_>>().join(", "))
                            .unwrap_or_default();
                        vec![
                            fmt::cell(&g["value"]),
                            fmt::cell(&g["total"]),
                            held,
                            fmt::cell(&g["lagging"]),
                            fmt::cell(&g["failed"]),
                        ]
                    })
                    .collect();
                fmt::table(&[&key.to_uppercase(), "NODES", "HOLDING", "LAGGING", "FAILED"], &rows);
            }
            if v["next"].is_string() {
                println!("(more consumers: use --json and ?cursor=, or narrow with --labels)");
            }
            Ok(0)
        }
        Cmd::Watch(w) => {
            watch::watch(watch::WatchArgs {
                url: cli.url,
                token: cli.token,
                topic: w.topic,
                labels: w.labels,
                instance: w.instance,
                exec: w.exec,
                cache_dir: w.cache_dir,
                max_versions: w.max_versions,
            })
            .await
        }
        Cmd::Completions { shell } => completions(shell),
    }
}

async fn topics(api: &Api, cmd: TopicsCmd, json_out: bool) -> CliResult<u8> {
    match cmd {
        TopicsCmd::List { query, owner, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = query {
                q.push(("q", s));
            }
            if let Some(o) = owner {
                q.push(("owner", o));
            }
            let v = api.get(&["topics"], &q).await?;
            if json_out {
                print_json(&v);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = v["topics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        fmt::cell(&t["name"]),
                        fmt::cell(&t["latest_version"]),
                        fmt::time(&t["last_published_at"]),
                        fmt::cell(&t["active_pins"]),
                        fmt::cell(&t["rollout_state"]),
                        fmt::cell(&t["owner"]),
                        fmt::cell(&t["description"]),
                    ]
                })
                .collect();
            fmt::table(&["NAME", "LATEST", "LAST PUBLISH", "PINS", "ROLLOUT", "OWNER", "DESCRIPTION"], &rows);
            Ok(0)
        }
        TopicsCmd::Create { name, settings } => {
            let mut body = settings_json(&settings, None)?;
            body.insert("name".into(), json!(name));
            let v = api.send_json(Method::POST, &["topics"], &Value::Object(body)).await?;
            if json_out {
                print_json(&v);
            } else {
                println!("created topic {}", fmt::cell(&v["name"]));
            }
            Ok(0)
        }
        TopicsCmd::Show { name } => {
            let v = api.get(&["topics", &name], &[]).await?;
            if json_out {
                print_json(&v);
                return Ok(0);
            }
            let plans: Vec<&String> = v["plans"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
            let retention = match (v["retention"]["max_versions"].as_u64(), v["retention"]["max_age_days"].as_u64()) {
                (None, None) => "keep everything".to_owned(),
                (n, d) => [n.map(|n| format!("{n} newest versions")), d.map(|d| format!("{d} days"))]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let rows = [
                ("name", fmt::cell(&v["name"])),
                ("description", fmt::cell(&v["description"])),
                ("owner", fmt::cell(&v["owner"])),
                ("latest version", fmt::cell(&v["latest_version"])),
                ("last publish", fmt::time(&v["last_published_at"])),
                ("active pins", fmt::cell(&v["active_pins"])),
                ("rollout", fmt::cell(&v["rollout_state"])),
                ("consumers", fmt::cell(&v["consumers"])),
                ("last polled", fmt::time(&v["last_polled_at"])),
                ("content type", fmt::cell(&v["content_type"])),
                ("inline limit", v["inline_limit_bytes"].as_u64().map(fmt::bytes).unwrap_or_else(|| "-".into())),
                ("max size", v["max_size_bytes"].as_u64().map(fmt::bytes).unwrap_or_else(|| "-".into())),
                ("retention", retention),
                ("json schema", if v["json_schema"].is_null() { "none".into() } else { "yes".into() }),
                (
                    "plans",
                    if plans.is_empty() {
                        "-".into()
                    } else {
                        plans.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    },
                ),
                ("default plan", fmt::cell(&v["default_plan"])),
                ("restricted", fmt::cell(&v["restricted"])),
                ("created", format!("{} by {}", fmt::time(&v["created_at"]), fmt::cell(&v["created_by"]))),
            ];
            for (k, val) in rows {
                println!("{:<16}{val}", format!("{k}:"));
            }
            Ok(0)
        }
        TopicsCmd::Set { name, settings, default_plan } => {
            // Retention is replaced as a whole: keep the half that is not given.
            let current = if settings.keep_versions.is_some() != settings.keep_days.is_some() {
                Some(api.get(&["topics", &name], &[]).await?)
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
            if json_out {
                print_json(&v);
            } else {
                println!("updated topic {}", fmt::cell(&v["name"]));
            }
            Ok(0)
        }
    }
}

fn read_json_file(path: &str, what: &str) -> CliResult<Value> {
    let bytes = std::fs::read(path).map_err(|e| CliError::new(format!("reading {what} {path}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| CliError::new(format!("{what} {path} is not JSON: {e}")))
}

fn settings_json(s: &TopicSettings, current: Option<&Value>) -> CliResult<Map<String, Value>> {
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
        let keep = |given: Option<u32>, key: &str| -> Value {
            match given {
                Some(0) => Value::Null,
                Some(n) => json!(n),
                None => current.map(|c| c["retention"][key].clone()).unwrap_or(Value::Null),
            }
        };
        body.insert(
            "retention".into(),
            json!({"max_versions": keep(s.keep_versions, "max_versions"), "max_age_days": keep(s.keep_days, "max_age_days")}),
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
    Ok(body)
}

/// Streams a download to a file (atomically: a temporary file renamed) or standard output,
/// checking the SHA-256 when the server gives it (`ETag` of `…/versions/{n}/data`).
async fn get(
    api: &Api,
    topic: &str,
    version: Option<u64>,
    labels: Option<String>,
    output: Option<String>,
) -> CliResult<u8> {
    use futures::StreamExt;
    let url = match version {
        Some(n) => api.url(&["topics", topic, "versions", &n.to_string(), "data"], &[]),
        None => {
            let labels = labels.unwrap_or_default();
            imprint_client::parse_labels(&labels).map_err(|e| CliError::new(format!("invalid labels: {e}")))?;
            let q = if labels.is_empty() { vec![] } else { vec![("labels", labels)] };
            api.url(&["topics", topic, "latest"], &q)
        }
    };
    let resp = api.send(api.request(Method::GET, url)).await?;
    let served_version = resp.headers().get("x-imprint-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let expected_sha = version
        .and_then(|_| resp.headers().get("etag"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start_matches("W/").trim_matches('"').to_owned())
        .filter(|s| s.len() == 64);
    let (mut sink, tmp): (Box<dyn Write + Send>, Option<(std::path::PathBuf, std::path::PathBuf)>) = match &output {
        Some(path) if path != "-" => {
            let target = std::path::PathBuf::from(path);
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

/// A payload as text for diffing: JSON pretty-printed with sorted keys (unless `raw`).
fn diff_text(bytes: &[u8], raw: bool) -> Option<String> {
    if !raw {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return serde_json::to_string_pretty(&v).ok().map(|s| s + "\n");
        }
    }
    String::from_utf8(bytes.to_vec()).ok()
}

async fn diff(api: &Api, topic: &str, a: u64, b: u64, raw: bool, json_out: bool) -> CliResult<u8> {
    let fetch = |n: u64| async move {
        let resp = api
            .send(api.request(Method::GET, api.url(&["topics", topic, "versions", &n.to_string(), "data"], &[])))
            .await?;
        resp.bytes().await.map_err(|e| CliError::new(format!("downloading version {n}: {}", chain(&e))))
    };
    let (left, right) = (fetch(a).await?, fetch(b).await?);
    let (ta, tb) = match (diff_text(&left, raw), diff_text(&right, raw)) {
        (Some(x), Some(y)) => (x, y),
        _ => {
            let same = left == right;
            if json_out {
                print_json(&json!({"topic": topic, "from": a, "to": b, "binary": true, "changed": !same}));
            } else if same {
                println!("versions {a} and {b} are identical (binary, {})", fmt::bytes(left.len() as u64));
            } else {
                println!(
                    "binary payloads differ: version {a} has {}, version {b} has {}",
                    fmt::bytes(left.len() as u64),
                    fmt::bytes(right.len() as u64)
                );
            }
            return Ok(0);
        }
    };
    let diff = similar::TextDiff::from_lines(&ta, &tb);
    let unified =
        diff.unified_diff().context_radius(3).header(&format!("{topic} v{a}"), &format!("{topic} v{b}")).to_string();
    if json_out {
        print_json(
            &json!({"topic": topic, "from": a, "to": b, "binary": false, "changed": ta != tb, "unified": unified}),
        );
    } else if ta == tb {
        println!("no differences between versions {a} and {b}");
    } else {
        print!("{unified}");
    }
    Ok(0)
}

fn rollout_line(r: &Value) -> String {
    let stages = r["stages"].as_array().cloned().unwrap_or_default();
    let reached = stages.iter().filter(|s| s["state"] == "reached").count();
    let mut line = format!(
        "rollout {} of version {}: {} ({reached}/{} stages reached)",
        fmt::cell(&r["id"]),
        fmt::cell(&r["version"]),
        fmt::cell(&r["state"]),
        stages.len()
    );
    if let Some(reason) = r["pause_reason"].as_str() {
        line.push_str(&format!(" — {reason}"));
    }
    line
}

fn print_rollout(r: &Value) {
    println!("{}", rollout_line(r));
    let now = chrono::Utc::now();
    let rows: Vec<Vec<String>> = r["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| {
            let due = s["due_at"]
                .as_str()
                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                .map(|d| format!("in {}", fmt::secs((d.with_timezone(&chrono::Utc) - now).num_seconds())))
                .unwrap_or_else(|| "-".into());
            let gate = match s["gate"].as_object() {
                Some(g) => g.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                None => "-".into(),
            };
            vec![
                (i + 1).to_string(),
                fmt::selector(&s["selector"]),
                fmt::secs(s["wait_s"].as_i64().unwrap_or(0)),
                fmt::cell(&s["state"]),
                fmt::time(&s["reached_at"]),
                due,
                gate,
            ]
        })
        .collect();
    fmt::table(&["STAGE", "SELECTOR", "WAIT", "STATE", "REACHED", "DUE", "GATE"], &rows);
}

async fn rollout(api: &Api, cmd: RolloutCmd, json_out: bool) -> CliResult<u8> {
    let (topic, id, action, body) = match cmd {
        RolloutCmd::Start { topic, version, stages, plan } => {
            let body = match plan {
                Some(p) => json!({"version": version, "plan": p}),
                None => {
                    json!({"version": version, "stages": stages.iter().map(|s| parse_stage(s)).collect::<CliResult<Vec<_>>>()?})
                }
            };
            let r = api.send_json(Method::POST, &["topics", &topic, "rollouts"], &body).await?;
            if json_out {
                print_json(&r);
            } else {
                print_rollout(&r);
            }
            return Ok(0);
        }
        RolloutCmd::List { topic } => {
            let v = api.get(&["topics", &topic, "rollouts"], &[]).await?;
            if json_out {
                print_json(&v);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = v["rollouts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let stages = r["stages"].as_array().map(Vec::len).unwrap_or(0);
                    let reached =
                        r["stages"].as_array().into_iter().flatten().filter(|s| s["state"] == "reached").count();
                    vec![
                        fmt::cell(&r["id"]),
                        fmt::cell(&r["version"]),
                        fmt::cell(&r["state"]),
                        format!("{reached}/{stages}"),
                        fmt::time(&r["created_at"]),
                        fmt::cell(&r["created_by"]),
                    ]
                })
                .collect();
            fmt::table(&["ID", "VERSION", "STATE", "STAGES", "STARTED", "BY"], &rows);
            return Ok(0);
        }
        RolloutCmd::Show { topic, id } => {
            let r = api.get(&["topics", &topic, "rollouts", &id.to_string()], &[]).await?;
            if json_out {
                print_json(&r);
            } else {
                print_rollout(&r);
            }
            return Ok(0);
        }
        RolloutCmd::Watch { topic, id, interval, timeout } => {
            return rollout_watch(api, &topic, id, interval, timeout, json_out).await
        }
        RolloutCmd::Pause { topic, id } => (topic, id, "pause", None),
        RolloutCmd::Resume { topic, id } => (topic, id, "resume", None),
        RolloutCmd::Advance { topic, id } => (topic, id, "advance", None),
        RolloutCmd::Complete { topic, id } => (topic, id, "complete", None),
        RolloutCmd::Cancel { topic, id, rollback } => {
            (topic, id, "cancel", rollback.then(|| json!({"rollback": true})))
        }
    };
    let segments = ["topics", topic.as_str(), "rollouts", &id.to_string(), action];
    let rb = api.request(Method::POST, api.url(&segments, &[]));
    let rb = match &body {
        Some(b) => rb.json(b),
        None => rb,
    };
    let resp = api.send(rb.timeout(Duration::from_secs(60))).await?;
    let r: Value = resp.json().await.map_err(|e| CliError::new(format!("reading the answer: {}", chain(&e))))?;
    if json_out {
        print_json(&r);
    } else {
        print_rollout(&r);
    }
    Ok(0)
}

/// Polls a rollout and prints each change until it is completed, cancelled or superseded.
async fn rollout_watch(
    api: &Api,
    topic: &str,
    id: i64,
    interval: f64,
    timeout: Option<u64>,
    json_out: bool,
) -> CliResult<u8> {
    let interval = Duration::from_secs_f64(if interval.is_finite() { interval.clamp(0.2, 60.0) } else { 2.0 });
    let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
    let mut last = String::new();
    let mut errors = 0u32;
    loop {
        match api.get(&["topics", topic, "rollouts", &id.to_string()], &[]).await {
            Ok(r) => {
                errors = 0;
                let state = r["state"].as_str().unwrap_or("").to_owned();
                let stages: Vec<String> = r["stages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("{}:{}", fmt::selector(&s["selector"]), fmt::cell(&s["state"])))
                    .collect();
                let key = format!("{state} {} {}", stages.join(" "), fmt::cell(&r["pause_reason"]));
                if key != last {
                    last = key;
                    if json_out {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        let now = chrono::Local::now().format("%H:%M:%S");
                        let next = r["stages"].as_array().into_iter().flatten().find(|s| s["state"] == "pending");
                        let due = next
                            .and_then(|s| s["due_at"].as_str())
                            .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                            .map(|d| {
                                format!(
                                    "; next {} in {}",
                                    fmt::selector(&next.map(|s| s["selector"].clone()).unwrap_or_default()),
                                    fmt::secs((d.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds())
                                )
                            })
                            .unwrap_or_default();
                        println!("{now} {}{due}", rollout_line(&r));
                    }
                    let _ = std::io::stdout().flush();
                }
                match state.as_str() {
                    "completed" => return Ok(0),
                    "cancelled" | "superseded" => return Ok(1),
                    _ => {}
                }
            }
            Err(e) if e.status.is_some_and(|s| (400..500).contains(&s)) => return Err(e),
            Err(e) => {
                errors += 1;
                eprintln!("imprint: {} (retrying)", e.message);
                if errors >= 30 {
                    return Err(e);
                }
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            eprintln!("imprint: rollout {id} has not ended yet (timed out)");
            return Ok(1);
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_waits() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("1.5MiB").is_err());
        assert_eq!(parse_wait("600"), Ok(600));
        assert_eq!(parse_wait("1h30m"), Ok(5400));
        assert_eq!(parse_wait("10m"), Ok(600));
        assert!(parse_wait("10x").is_err());
        assert!(parse_wait("m").is_err());
    }

    #[test]
    fn stages() {
        let s = parse_stage("cluster=canary,region=eu 10m min_applied=0.9 max_failures=0.05").expect("stage");
        assert_eq!(s["selector"], json!({"cluster": "canary", "region": "eu"}));
        assert_eq!(s["wait_s"], 600);
        assert_eq!(s["gate"]["min_applied_ratio"], 0.9);
        assert_eq!(s["gate"]["max_failure_ratio"], 0.05);
        assert_eq!(parse_stage("*").expect("stage"), json!({"selector": {}, "wait_s": 0}));
        assert!(parse_stage("nope 1m").is_err());
        assert!(parse_stage("a=b 1m other=1").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
