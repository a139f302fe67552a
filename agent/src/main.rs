//! `imprint-agent --config FILE` runs the agent; `imprint-agent check-config FILE` checks a
//! configuration and names the first bad key (and its line).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imprint_agent::config::Config;

#[derive(Parser)]
#[command(
    name = "imprint-agent",
    version,
    about = "Imprint's node agent: topics as files and on a local HTTP endpoint"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, env = "IMPRINT_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a configuration file and exit (0: valid).
    CheckConfig { file: PathBuf },
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (file, check_only) = match (cli.cmd, cli.config) {
        (Some(Cmd::CheckConfig { file }), _) => (file, true),
        (None, Some(file)) => (file, false),
        (None, None) => {
            eprintln!("imprint-agent: give --config FILE (or IMPRINT_AGENT_CONFIG); see --help");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&file, env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("imprint-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("{}: valid ({} subscription(s))", file.display(), config.subscriptions.len());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imprint-agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(imprint_agent::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imprint-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
