//! `imprint pin`, `unpin` and `pins`: pin consumers matching a selector to a version (with
//! a reason and an optional expiry), remove the pin, list pins.
use crate::api::{Api, CliError, CliResult};
use crate::cmd::change_control::print_if_requested;
use crate::cmd::{at_time, print_json, selector_arg, show};
use crate::fmt;
use chrono::{DateTime, Utc};
use clap::Args;
use imprint_domain::Selector;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

#[derive(Args)]
pub struct PinArgs {
    topic: String,
    selector: String,
    version: u64,
    #[arg(long)]
    reason: String,
    /// When the pin stops applying: an RFC 3339 time, or a duration from now (2h, 7d).
    #[arg(long)]
    expires_at: Option<String>,
    /// Do it at this time (RFC 3339): a change request the server's scheduler applies then.
    #[arg(long)]
    at: Option<String>,
    /// Admins: do it now past the topic's review rule (freezes never hold pins), with this reason (audited).
    #[arg(long, value_name = "REASON")]
    break_glass: Option<String>,
}

#[derive(Args)]
pub struct UnpinArgs {
    topic: String,
    selector: String,
    /// Do it at this time (RFC 3339): a change request the server's scheduler applies then.
    #[arg(long)]
    at: Option<String>,
}

#[derive(Args)]
pub struct PinsArgs {
    topic: String,
    #[arg(long)]
    all: bool,
}

/// A pin as `PUT …/pins` and `GET …/pins` answer it (no shared protocol type yet).
#[derive(Deserialize)]
struct Pin {
    selector: Selector,
    version: u64,
    reason: String,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    removed_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct PinList {
    pins: Vec<Pin>,
}

/// `--expires-at`: an RFC 3339 time as it is, or a duration from now (`2h`, `7d`, read as
/// a rollout stage's wait is).
fn expiry_time(s: &str) -> CliResult<String> {
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return Ok(s.to_owned());
    }
    let secs = imprint_domain::parse_wait(s).map_err(|_| {
        CliError::new(format!("{s:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration (2h, 7d)"))
    })?;
    let at = i64::try_from(secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
        .ok_or_else(|| CliError::new(format!("{s:?} is too far in the future")))?;
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

pub async fn pin(api: &Api, args: PinArgs, json_out: bool) -> CliResult<u8> {
    let PinArgs { topic, selector, version, reason, expires_at, at, break_glass } = args;
    let mut body = json!({"selector": selector_arg(&selector)?, "version": version, "reason": reason});
    if let Some(t) = expires_at {
        body["expires_at"] = json!(expiry_time(&t)?);
    }
    if let Some(t) = at {
        body["at"] = json!(at_time(&t)?);
    }
    if let Some(r) = break_glass {
        body["break_glass"] = json!(r);
    }
    let v = api.send_json(Method::PUT, &["topics", &topic, "pins"], &body).await?;
    if let Some(done) = print_if_requested(&v, json_out) {
        return done;
    }
    show(v, json_out, |p: Pin| {
        let until = p.expires_at.map(|t| format!(" until {}", fmt::time(Some(t)))).unwrap_or_default();
        println!("pinned {} of {topic} to version {}{until}", p.selector, p.version);
    })
}

pub async fn unpin(api: &Api, args: UnpinArgs, json_out: bool) -> CliResult<u8> {
    let UnpinArgs { topic, selector, at } = args;
    selector_arg(&selector)?;
    let mut q = vec![("selector", selector.clone())];
    if let Some(t) = at {
        q.push(("at", at_time(&t)?));
    }
    let v = api.delete(&["topics", &topic, "pins"], &q).await?;
    if let Some(done) = print_if_requested(&v, json_out) {
        return done;
    }
    if json_out {
        print_json(&json!({"unpinned": selector}));
    } else {
        println!("unpinned {selector} of {topic}");
    }
    Ok(0)
}

pub async fn list(api: &Api, args: PinsArgs, json_out: bool) -> CliResult<u8> {
    let PinsArgs { topic, all } = args;
    let q = if all { vec![("all", "true".to_owned())] } else { vec![] };
    show(api.get(&["topics", &topic, "pins"], &q).await?, json_out, |list: PinList| {
        let rows: Vec<Vec<String>> = list
            .pins
            .iter()
            .map(|p| {
                let mut row = vec![
                    p.selector.to_string(),
                    p.version.to_string(),
                    p.created_by.clone(),
                    fmt::time(Some(p.created_at)),
                    fmt::time(p.expires_at),
                ];
                if all {
                    row.push(fmt::time(p.removed_at));
                }
                row.push(p.reason.clone());
                row
            })
            .collect();
        if all {
            fmt::table(&["SELECTOR", "VERSION", "BY", "PINNED", "EXPIRES", "REMOVED", "REASON"], &rows);
        } else {
            fmt::table(&["SELECTOR", "VERSION", "BY", "PINNED", "EXPIRES", "REASON"], &rows);
        }
    })
}

#[cfg(test)]
mod tests {
    use imprint_domain::parse_wait;

    /// Expiry durations are read as the domain reads a stage's wait.
    #[test]
    fn waits() {
        assert_eq!(parse_wait("600"), Ok(600));
        assert_eq!(parse_wait("1h30m"), Ok(5400));
        assert_eq!(parse_wait("10m"), Ok(600));
        assert!(parse_wait("10x").is_err());
        assert!(parse_wait("m").is_err());
    }
}
