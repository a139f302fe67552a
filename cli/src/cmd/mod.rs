//! The commands, one file per feature: each holds its clap arguments, the calls it makes
//! and how it prints the answer. What they share is here: `--json` prints the API's JSON
//! as it is; tables read the answer into typed structs (the protocol crate's where one
//! exists, else a small struct of the fields printed next to the command).
pub mod change_control;
pub mod consumers;
pub mod diff;
pub mod encryption;
pub mod get;
pub mod pins;
pub mod publish;
pub mod resolve;
pub mod rollouts;
pub mod topics;
pub mod versions;
pub mod watch;
pub mod webhooks;

use crate::api::{CliError, CliResult};
use imprint_domain::{Labels, Selector};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `--at`: an RFC 3339 time, as the API takes it.
pub fn at_time(s: &str) -> CliResult<String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .map_err(|e| {
            crate::api::CliError::new(format!("--at {s:?} is not an RFC 3339 time (2026-12-24T06:00:00Z): {e}"))
        })
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Reads an answer as `T` (an answer of another shape is an error, not a blank table).
pub fn read<T: DeserializeOwned>(v: Value) -> CliResult<T> {
    serde_json::from_value(v)
        .map_err(|e| CliError::new(format!("the server's answer is not what imprint expects: {e}")))
}

/// `--json`: the answer as it is; otherwise read as `T` and printed by `human`.
pub fn show<T: DeserializeOwned>(v: Value, json_out: bool, human: impl FnOnce(T)) -> CliResult<u8> {
    if json_out {
        print_json(&v);
    } else {
        human(read(v)?);
    }
    Ok(0)
}

/// A selector argument (`region=eu,app=x`, `*`), checked as the server checks it.
pub fn selector_arg(s: &str) -> CliResult<Selector> {
    Selector::parse(s).map_err(|e| CliError::new(format!("invalid selector {s:?}: {e}")))
}

/// A labels argument, checked as the server checks it, passed on as written.
pub fn check_labels(s: &str) -> CliResult<()> {
    Labels::parse(s).map(drop).map_err(|e| CliError::new(format!("invalid labels: {e}")))
}
