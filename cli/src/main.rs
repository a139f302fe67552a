//! `imprint`: Imprint's command-line tool for pipelines and people — topics, publishing,
//! scopes, pins, rollouts, the consumer audit, webhooks, and `watch` (a consumer in a shell).
//! Tables for people, `--json` for scripts (the API's JSON as it is). This file holds the
//! command line's entry and the dispatch; each command lives in `cmd/<feature>.rs`.
#![forbid(unsafe_code)]

mod api;
mod cmd;
mod fmt;

use api::{Api, CliResult};
use clap::{Parser, Subcommand};
use cmd::{change_control, consumers, diff, get, pins, publish, resolve, rollouts, topics, versions, watch, webhooks};
use std::io::Write;
use std::process::ExitCode;

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
    Topics(topics::TopicsCmd),
    /// Publish a new version (a file, or `-` for standard input), streamed.
    Publish(publish::PublishArgs),
    /// A topic's versions, newest first.
    Versions(versions::VersionsArgs),
    /// Download a payload: a version, or what consumers with some labels get now.
    Get(get::GetArgs),
    /// Line diff of two versions (JSON payloads are compared pretty-printed).
    Diff(diff::DiffArgs),
    /// Release a version to more consumers.
    #[command(subcommand)]
    Scope(versions::ScopeCmd),
    /// Pin consumers matching a selector to a version.
    Pin(pins::PinArgs),
    /// Remove the pin on a selector.
    Unpin(pins::UnpinArgs),
    /// Active pins (`--all`: removed ones too).
    Pins(pins::PinsArgs),
    /// Which version consumers with these labels get (now, or `--at` a past time).
    Resolve(resolve::ResolveArgs),
    /// Start, steer and watch rollouts.
    #[command(subcommand)]
    Rollout(rollouts::RolloutCmd),
    /// Who consumes a topic, what they hold and what they should hold.
    Consumers(consumers::ConsumersArgs),
    /// Consume a topic from the shell: print each new version, or run a command.
    Watch(watch::WatchArgs),
    /// Subscribe URLs to change events (signed CloudEvents), see their delivery log.
    #[command(subcommand)]
    Webhook(webhooks::WebhookCmd),
    /// Drafts: save, diff against the live version, replace, discard, release (now, --at, --break-glass).
    #[command(subcommand)]
    Draft(change_control::DraftCmd),
    /// Change requests of reviewed topics: list, approve, reject, withdraw; a topic's review rule.
    #[command(subcommand)]
    Review(change_control::ReviewCmd),
    /// Change-freeze windows: list, create, delete.
    #[command(subcommand)]
    Freeze(change_control::FreezeCmd),
    /// Print a shell completion script, e.g. `imprint completions bash > /etc/bash_completion.d/imprint`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    let json = cli.json;
    match cli.cmd {
        Cmd::Topics(cmd) => topics::run(&api, cmd, json).await,
        Cmd::Publish(args) => publish::run(&api, args, json).await,
        Cmd::Versions(args) => versions::list(&api, args, json).await,
        Cmd::Get(args) => get::run(&api, args).await,
        Cmd::Diff(args) => diff::run(&api, args, json).await,
        Cmd::Scope(cmd) => versions::scope(&api, cmd, json).await,
        Cmd::Pin(args) => pins::pin(&api, args, json).await,
        Cmd::Unpin(args) => pins::unpin(&api, args, json).await,
        Cmd::Pins(args) => pins::list(&api, args, json).await,
        Cmd::Resolve(args) => resolve::run(&api, args, json).await,
        Cmd::Rollout(cmd) => rollouts::run(&api, cmd, json).await,
        Cmd::Consumers(args) => consumers::run(&api, args, json).await,
        Cmd::Watch(args) => watch::run(&cli.url, cli.token, args).await,
        Cmd::Webhook(cmd) => webhooks::run(&api, cmd, json).await,
        Cmd::Draft(cmd) => change_control::draft(&api, cmd, json).await,
        Cmd::Review(cmd) => change_control::review(&api, cmd, json).await,
        Cmd::Freeze(cmd) => change_control::freeze(&api, cmd, json).await,
        Cmd::Completions { shell } => completions(shell),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
