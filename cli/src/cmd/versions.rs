//! `imprint versions` (a topic's versions, newest first) and `imprint scope add` (release a
//! version to more consumers).
use crate::api::{Api, CliResult};
use crate::cmd::change_control::print_if_requested;
use crate::cmd::{at_time, selector_arg, show};
use crate::fmt;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use imprint_domain::Selector;
use imprint_protocol::VersionInfo;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

#[derive(Args)]
pub struct VersionsArgs {
    topic: String,
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(Subcommand)]
pub enum ScopeCmd {
    /// Add a scope to a version: `imprint scope add TOPIC N region=eu-west-1`.
    Add {
        topic: String,
        version: u64,
        selector: String,
        /// Add it at this time (RFC 3339): a change request the server's scheduler applies then.
        #[arg(long)]
        at: Option<String>,
        /// Admins: add it now past a review rule and a change freeze, with this reason (audited).
        #[arg(long, value_name = "REASON")]
        break_glass: Option<String>,
    },
}

/// `GET …/versions`: the protocol's version list, with what the table shows besides.
#[derive(Deserialize)]
struct Versions {
    versions: Vec<VersionRow>,
}

#[derive(Deserialize)]
struct VersionRow {
    #[serde(flatten)]
    info: VersionInfo,
    created_at: DateTime<Utc>,
    created_by: String,
    #[serde(default)]
    message: String,
}

/// A scope as `POST …/versions/{n}/scopes` answers (no shared protocol type yet).
#[derive(Deserialize)]
struct Scope {
    selector: Selector,
}

pub async fn list(api: &Api, args: VersionsArgs, json_out: bool) -> CliResult<u8> {
    let v = api.get(&["topics", &args.topic, "versions"], &[("limit", args.limit.to_string())]).await?;
    show(v, json_out, |list: Versions| {
        let rows: Vec<Vec<String>> = list
            .versions
            .iter()
            .map(|v| {
                let scopes: Vec<String> = v.info.scopes.iter().map(|s| s.selector.to_string()).collect();
                vec![
                    v.info.version.to_string(),
                    fmt::time(Some(v.created_at)),
                    v.created_by.clone(),
                    if v.info.purged { "purged".into() } else { fmt::bytes(v.info.size) },
                    fmt::short(&v.info.sha256, 12),
                    if scopes.is_empty() { "-".into() } else { scopes.join(" ") },
                    v.message.clone(),
                ]
            })
            .collect();
        fmt::table(&["VERSION", "CREATED", "BY", "SIZE", "SHA256", "SCOPES", "MESSAGE"], &rows);
    })
}

pub async fn scope(api: &Api, cmd: ScopeCmd, json_out: bool) -> CliResult<u8> {
    let ScopeCmd::Add { topic, version, selector, at, break_glass } = cmd;
    let mut body = json!({"selector": selector_arg(&selector)?});
    if let Some(t) = at {
        body["at"] = json!(at_time(&t)?);
    }
    if let Some(r) = break_glass {
        body["break_glass"] = json!(r);
    }
    let v = api.send_json(Method::POST, &["topics", &topic, "versions", &version.to_string(), "scopes"], &body).await?;
    if let Some(done) = print_if_requested(&v, json_out) {
        return done;
    }
    show(v, json_out, |s: Scope| println!("version {version} of {topic} is released to {}", s.selector))
}
