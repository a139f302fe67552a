//! Change control (docs/change-control.md): `imprint draft …` (save, show, diff, replace,
//! discard, release — now, `--at TIME` or with `--break-glass REASON`), `imprint review …`
//! (change requests: list, show, approve, reject, withdraw; a topic's review rule) and
//! `imprint freeze …` (change-freeze windows).
use crate::api::{Api, CliError, CliResult};
use crate::cmd::{print_json, selector_arg, show};
use crate::fmt;
use base64::Engine;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum DraftCmd {
    /// Save a payload (a file, `-` for standard input) as a draft: released to nobody.
    Create(DraftFile),
    /// A topic's open drafts.
    List { topic: String },
    /// One draft.
    Show { topic: String, id: i64 },
    /// The draft against what a scope's consumers get now (`--scope`, repeatable; default everyone).
    Diff {
        topic: String,
        id: i64,
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Replace an open draft's payload.
    Update {
        #[command(flatten)]
        file: DraftFile,
        #[arg(long)]
        id: i64,
    },
    /// Discard an open draft.
    Discard { topic: String, id: i64 },
    /// Release a draft: a version now, or a change request (review, `--at`).
    Release(ReleaseArgs),
}

#[derive(Args)]
pub struct DraftFile {
    topic: String,
    /// The payload file, `-` for standard input.
    file: String,
    #[arg(long, short)]
    message: Option<String>,
    #[arg(long)]
    content_type: Option<String>,
}

#[derive(Args)]
pub struct ReleaseArgs {
    topic: String,
    id: i64,
    /// Released to these selectors (repeatable; default everyone).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Apply at this time (RFC 3339, e.g. 2026-12-24T06:00:00Z): the scheduler does.
    #[arg(long)]
    at: Option<String>,
    /// Admins: release now past a review rule or a freeze, with this reason.
    #[arg(long, value_name = "REASON")]
    break_glass: Option<String>,
    #[arg(long, short)]
    message: Option<String>,
}

#[derive(Subcommand)]
pub enum ReviewCmd {
    /// Change requests you may see (newest first).
    List {
        #[arg(long)]
        topic: Option<String>,
        /// pending, approved, applied, rejected, withdrawn, expired, failed (comma-separated).
        #[arg(long)]
        state: Option<String>,
    },
    /// One change request with its approvals.
    Show { id: i64 },
    /// Approve (approvers of the topic, never the author).
    Approve { id: i64 },
    /// Reject with a reason.
    Reject {
        id: i64,
        #[arg(long)]
        reason: String,
    },
    /// Withdraw your own request (or cancel a scheduled one).
    Withdraw { id: i64 },
    /// Require approvals for a topic's releases (admins).
    Require {
        topic: String,
        #[arg(long, default_value_t = 1)]
        approvals: u32,
        /// Approvers: the members of this team …
        #[arg(long, conflicts_with = "users")]
        team: Option<String>,
        /// … or these users (comma-separated).
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
    },
    /// Remove a topic's review rule (admins).
    Lift { topic: String },
}

#[derive(Subcommand)]
pub enum FreezeCmd {
    /// Every freeze window, with whether it is in force now.
    List,
    /// A window: one-off (`--from`, `--to`) or weekly (`--days`, `--start`, `--end`, `--tz`).
    Create(Box<FreezeArgs>),
    /// Delete a window.
    Delete { id: i64 },
}

#[derive(Args)]
pub struct FreezeArgs {
    name: String,
    /// Only this team's topics.
    #[arg(long, conflicts_with = "topic")]
    team: Option<String>,
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// RFC 3339 start of a one-off window.
    #[arg(long)]
    from: Option<String>,
    /// RFC 3339 end of a one-off window.
    #[arg(long)]
    to: Option<String>,
    /// Weekdays of a weekly window: sat,sun.
    #[arg(long, value_delimiter = ',')]
    days: Vec<String>,
    /// Local start time HH:MM of a weekly window.
    #[arg(long)]
    start: Option<String>,
    /// Local end time HH:MM (not after start: overnight).
    #[arg(long)]
    end: Option<String>,
    /// IANA time zone of a weekly window.
    #[arg(long, default_value = "UTC")]
    tz: String,
}

#[derive(Deserialize)]
struct Draft {
    id: i64,
    topic: String,
    state: String,
    created_by: String,
    updated_at: DateTime<Utc>,
    size: u64,
    sha256: String,
    message: String,
    released_version: Option<u64>,
}

#[derive(Deserialize)]
struct DraftList {
    drafts: Vec<Draft>,
}

#[derive(Deserialize)]
struct Line {
    op: String,
    line: String,
}

#[derive(Deserialize)]
struct ScopeDiff {
    selector: Value,
    live_version: Option<u64>,
    identical: bool,
    lines: Option<Vec<Line>>,
    note: Option<String>,
}

#[derive(Deserialize)]
struct DraftDiff {
    scopes: Vec<ScopeDiff>,
}

#[derive(Deserialize)]
struct Approval {
    approver: String,
}

#[derive(Deserialize)]
struct Request {
    id: i64,
    topic: String,
    #[serde(default)]
    summary: String,
    state: String,
    author: String,
    required_approvals: u32,
    approvals: Vec<Approval>,
    at: Option<DateTime<Utc>>,
    reason: Option<String>,
    applied_version: Option<u64>,
    draft_id: Option<i64>,
}

#[derive(Deserialize)]
struct RequestList {
    change_requests: Vec<Request>,
}

#[derive(Deserialize)]
struct Freeze {
    id: i64,
    name: String,
    scope: String,
    team: Option<String>,
    topic: Option<String>,
    active: bool,
    description: String,
}

#[derive(Deserialize)]
struct FreezeList {
    freezes: Vec<Freeze>,
}

/// A payload file as the JSON form's `data` (UTF-8) or `data_base64`.
fn payload_body(f: &DraftFile) -> CliResult<serde_json::Map<String, Value>> {
    let bytes = if f.file == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        b
    } else {
        std::fs::read(&f.file).map_err(|e| CliError::new(format!("cannot read {}: {e}", f.file)))?
    };
    let mut body = serde_json::Map::new();
    match String::from_utf8(bytes) {
        Ok(s) => body.insert("data".into(), json!(s)),
        Err(e) => {
            body.insert("data_base64".into(), json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())))
        }
    };
    if let Some(m) = &f.message {
        body.insert("message".into(), json!(m));
    }
    if let Some(ct) = &f.content_type {
        body.insert("content_type".into(), json!(ct));
    }
    Ok(body)
}

fn time_arg(s: &str, what: &str) -> CliResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| CliError::new(format!("{what} {s:?} is not an RFC 3339 time (2026-12-24T06:00:00Z): {e}")))
}

fn print_draft(d: &Draft) {
    println!("draft {} of {} ({})", d.id, d.topic, d.state);
    println!("  by {}, updated {}", d.created_by, fmt::time(Some(d.updated_at)));
    println!("  {} bytes, sha256 {}", d.size, d.sha256);
    if !d.message.is_empty() {
        println!("  message: {}", d.message);
    }
    if let Some(v) = d.released_version {
        println!("  released as version {v}");
    }
}

fn print_request(r: &Request) {
    let who: Vec<&str> = r.approvals.iter().map(|a| a.approver.as_str()).collect();
    println!("change request {} on {}: {}", r.id, r.topic, r.state);
    if !r.summary.is_empty() {
        println!("  {}", r.summary);
    }
    match r.draft_id {
        Some(d) => println!("  asked by {} (draft {d})", r.author),
        None => println!("  asked by {}", r.author),
    }
    println!("  approvals {}/{}: {}", r.approvals.len(), r.required_approvals, who.join(", "));
    if let Some(at) = r.at {
        println!("  scheduled at {}", fmt::time(Some(at)));
    }
    if let Some(reason) = &r.reason {
        println!("  reason: {reason}");
    }
    if let Some(v) = r.applied_version {
        println!("  applied as version {v}");
    }
}

/// A change's answer when it became a change request (202: review, `--at`): printed, and
/// `Some(exit code)`; `None` for any other answer (the change was done).
pub fn print_if_requested(v: &Value, json_out: bool) -> Option<CliResult<u8>> {
    v.get("required_approvals")?;
    if json_out {
        print_json(v);
        return Some(Ok(0));
    }
    Some(crate::cmd::read(v.clone()).map(|r: Request| {
        print_request(&r);
        0
    }))
}

/// A release's answer: a version (201) or a change request (202).
fn print_released(v: Value, json_out: bool) -> CliResult<u8> {
    if json_out {
        print_json(&v);
    } else if v.get("required_approvals").is_none() {
        println!("released {} version {}", v["topic"].as_str().unwrap_or_default(), v["version"]);
    } else {
        print_request(&crate::cmd::read(v)?);
    }
    Ok(0)
}

pub async fn draft(api: &Api, cmd: DraftCmd, json_out: bool) -> CliResult<u8> {
    match cmd {
        DraftCmd::Create(f) => {
            let body = Value::Object(payload_body(&f)?);
            let v = api.send_json(Method::POST, &["topics", &f.topic, "drafts"], &body).await?;
            show(v, json_out, |d: Draft| print_draft(&d))
        }
        DraftCmd::List { topic } => {
            show(api.get(&["topics", &topic, "drafts"], &[]).await?, json_out, |l: DraftList| {
                let rows: Vec<Vec<String>> = l
                    .drafts
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            d.created_by.clone(),
                            fmt::time(Some(d.updated_at)),
                            d.size.to_string(),
                            d.message.clone(),
                        ]
                    })
                    .collect();
                fmt::table(&["ID", "BY", "UPDATED", "SIZE", "MESSAGE"], &rows);
            })
        }
        DraftCmd::Show { topic, id } => {
            show(api.get(&["topics", &topic, "drafts", &id.to_string()], &[]).await?, json_out, |d: Draft| {
                print_draft(&d)
            })
        }
        DraftCmd::Diff { topic, id, scopes } => {
            for s in &scopes {
                selector_arg(s)?;
            }
            let query: Vec<(&str, String)> = scopes.into_iter().map(|s| ("scope", s)).collect();
            let v = api.get(&["topics", &topic, "drafts", &id.to_string(), "diff"], &query).await?;
            show(v, json_out, |d: DraftDiff| {
                for s in d.scopes {
                    let live = s.live_version.map(|v| format!("version {v}")).unwrap_or_else(|| "nothing".into());
                    println!("scope {} (live: {live}){}", s.selector, if s.identical { ": identical" } else { "" });
                    for l in s.lines.unwrap_or_default() {
                        let sign = match l.op.as_str() {
                            "added" => '+',
                            "removed" => '-',
                            _ => ' ',
                        };
                        println!("{sign}{}", l.line);
                    }
                    if let Some(n) = s.note {
                        println!("  ({n})");
                    }
                }
            })
        }
        DraftCmd::Update { file, id } => {
            let body = Value::Object(payload_body(&file)?);
            let v = api.send_json(Method::PUT, &["topics", &file.topic, "drafts", &id.to_string()], &body).await?;
            show(v, json_out, |d: Draft| print_draft(&d))
        }
        DraftCmd::Discard { topic, id } => {
            let v = api.delete(&["topics", &topic, "drafts", &id.to_string()], &[]).await?;
            show(v, json_out, |d: Draft| print_draft(&d))
        }
        DraftCmd::Release(a) => {
            let mut body = serde_json::Map::new();
            if !a.scopes.is_empty() {
                let sels =
                    a.scopes.iter().map(|s| selector_arg(s).map(|s| s.to_json())).collect::<CliResult<Vec<_>>>()?;
                body.insert("scopes".into(), Value::Array(sels));
            }
            if let Some(at) = &a.at {
                body.insert("at".into(), json!(time_arg(at, "--at")?));
            }
            if let Some(r) = a.break_glass {
                body.insert("break_glass".into(), json!(r));
            }
            if let Some(m) = a.message {
                body.insert("message".into(), json!(m));
            }
            let path = ["topics", a.topic.as_str(), "drafts", &a.id.to_string(), "release"];
            let v = api.send_json(Method::POST, &path, &Value::Object(body)).await?;
            print_released(v, json_out)
        }
    }
}

pub async fn review(api: &Api, cmd: ReviewCmd, json_out: bool) -> CliResult<u8> {
    match cmd {
        ReviewCmd::List { topic, state } => {
            let mut q = Vec::new();
            if let Some(t) = topic {
                q.push(("topic", t));
            }
            if let Some(s) = state {
                q.push(("state", s));
            }
            show(api.get(&["change-requests"], &q).await?, json_out, |l: RequestList| {
                let rows: Vec<Vec<String>> = l
                    .change_requests
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.topic.clone(),
                            r.summary.clone(),
                            r.state.clone(),
                            r.author.clone(),
                            format!("{}/{}", r.approvals.len(), r.required_approvals),
                            r.at.map(|t| fmt::time(Some(t))).unwrap_or_default(),
                        ]
                    })
                    .collect();
                fmt::table(&["ID", "TOPIC", "CHANGE", "STATE", "AUTHOR", "APPROVALS", "AT"], &rows);
            })
        }
        ReviewCmd::Show { id } => {
            show(api.get(&["change-requests", &id.to_string()], &[]).await?, json_out, |r: Request| print_request(&r))
        }
        ReviewCmd::Approve { id } => {
            let v = api.send_json(Method::POST, &["change-requests", &id.to_string(), "approve"], &json!({})).await?;
            show(v, json_out, |r: Request| print_request(&r))
        }
        ReviewCmd::Reject { id, reason } => {
            let body = json!({"reason": reason});
            let v = api.send_json(Method::POST, &["change-requests", &id.to_string(), "reject"], &body).await?;
            show(v, json_out, |r: Request| print_request(&r))
        }
        ReviewCmd::Withdraw { id } => {
            let v = api.send_json(Method::POST, &["change-requests", &id.to_string(), "withdraw"], &json!({})).await?;
            show(v, json_out, |r: Request| print_request(&r))
        }
        ReviewCmd::Require { topic, approvals, team, users } => {
            let approvers = match team {
                Some(t) => json!({"team": t}),
                None if !users.is_empty() => json!({"users": users}),
                None => return Err(CliError::new("name the approvers: --team TEAM or --users a,b")),
            };
            let body = json!({"required_approvals": approvals, "approvers": approvers});
            let v = api.send_json(Method::PUT, &["topics", &topic, "review"], &body).await?;
            print_json(&v);
            Ok(0)
        }
        ReviewCmd::Lift { topic } => {
            let v = api.delete(&["topics", &topic, "review"], &[]).await?;
            print_json(&v);
            Ok(0)
        }
    }
}

pub async fn freeze(api: &Api, cmd: FreezeCmd, json_out: bool) -> CliResult<u8> {
    match cmd {
        FreezeCmd::List => show(api.get(&["freezes"], &[]).await?, json_out, |l: FreezeList| {
            let rows: Vec<Vec<String>> = l
                .freezes
                .iter()
                .map(|f| {
                    let scope = match (&f.team, &f.topic) {
                        (Some(t), _) => format!("team {t}"),
                        (_, Some(t)) => format!("topic {t}"),
                        _ => f.scope.clone(),
                    };
                    vec![
                        f.id.to_string(),
                        f.name.clone(),
                        scope,
                        f.description.clone(),
                        if f.active { "ACTIVE" } else { "" }.into(),
                    ]
                })
                .collect();
            fmt::table(&["ID", "NAME", "SCOPE", "WINDOW", "NOW"], &rows);
        }),
        FreezeCmd::Create(a) => {
            let mut body = json!({"name": a.name, "team": a.team, "topic": a.topic});
            match (&a.from, &a.to, a.days.is_empty()) {
                (Some(f), Some(t), true) => {
                    body["from"] = json!(time_arg(f, "--from")?);
                    body["to"] = json!(time_arg(t, "--to")?);
                }
                (None, None, false) => {
                    let (Some(start), Some(end)) = (&a.start, &a.end) else {
                        return Err(CliError::new("a weekly window needs --start HH:MM and --end HH:MM"));
                    };
                    body["recurring"] = json!({"days": a.days, "from": start, "to": end, "tz": a.tz});
                }
                _ => return Err(CliError::new("give --from and --to (one-off) or --days, --start, --end (weekly)")),
            }
            let v = api.send_json(Method::POST, &["freezes"], &body).await?;
            show(v, json_out, |f: Freeze| {
                println!(
                    "freeze {} {:?}: {} {}",
                    f.id,
                    f.name,
                    f.description,
                    if f.active { "(in force now)" } else { "" }
                )
            })
        }
        FreezeCmd::Delete { id } => {
            api.delete(&["freezes", &id.to_string()], &[]).await?;
            println!("deleted freeze {id}");
            Ok(0)
        }
    }
}
