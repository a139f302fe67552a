//! `imprint`: the server (`serve`) and its admin subcommands (`migrate`, `token …`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use imprint_service::{auth, Caller, Config, Imprint};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "imprint", version, about = "Publish versioned datasets to many consumer nodes")]
struct Cli {
    /// Postgres connection URL (`./dev run` starts a private cluster and sets it).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the console and the APIs (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Where the console and the APIs listen.
    #[arg(long, env = "IMPRINT_ADDR", default_value = "127.0.0.1:3000")]
    addr: Option<SocketAddr>,
    /// Embedded-default state directory (payload objects live under it by default).
    #[arg(long, env = "IMPRINT_HOME", default_value = "./.imprint")]
    home: Option<String>,
    /// Payload store URL (object storage is not used yet: payloads are inline).
    #[arg(long, env = "IMPRINT_OBJECT_STORE")]
    object_store: Option<String>,
    /// An admin API token with exactly this value exists while set.
    #[arg(long, env = "IMPRINT_BOOTSTRAP_TOKEN", hide_env_values = true)]
    bootstrap_token: Option<String>,
    /// Password of the `admin` console user created on the first start (else generated and printed).
    #[arg(long, env = "IMPRINT_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// The console's public URL; `https://…` makes session cookies Secure.
    #[arg(long, env = "IMPRINT_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seconds between full reloads of the serving state (the safety net behind NOTIFY).
    #[arg(long, env = "IMPRINT_FULL_RELOAD_SECS", default_value_t = 30)]
    full_reload_secs: u64,
    /// Consumers not seen for this many hours are forgotten by the audit.
    #[arg(long, env = "IMPRINT_CONSUMER_EXPIRY_HOURS", default_value_t = 168)]
    consumer_expiry_hours: u64,
    /// Record consumers' polls for the audit (turn off only to measure its cost).
    #[arg(long, env = "IMPRINT_AUDIT", default_value_t = true, action = clap::ArgAction::Set)]
    audit: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (shown once; stored hashed).
    Create {
        name: String,
        /// May do everything.
        #[arg(long)]
        admin: bool,
        /// Acts on the topics this team owns.
        #[arg(long)]
        team: Option<String>,
    },
    /// Revoke the active token with this name.
    Revoke { name: String },
    /// List active tokens.
    List,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imprint: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let url = cli.database_url.ok_or(
        "DATABASE_URL is not set: start Imprint with `./dev run` (it runs a private Postgres) or point DATABASE_URL at a Postgres",
    )?;
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::parse_from_env()));
    match command {
        Command::Serve(args) => serve(&url, args).await,
        Command::Migrate => {
            let imprint = Imprint::connect_lazy(&url, Config::default()).map_err(|e| e.to_string())?;
            imprint.migrate().await.map_err(|e| format!("migration failed: {e}"))?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token { command } => {
            let imprint = Imprint::connect_lazy(&url, Config::default()).map_err(|e| e.to_string())?;
            imprint.migrate().await.map_err(|e| format!("migration failed: {e}"))?;
            let pool = imprint.pool();
            match command {
                TokenCommand::Create { name, admin, team } => {
                    if !admin && team.is_none() {
                        return Err(
                            "a token needs --admin or --team <team> (the team whose topics it may write)".into()
                        );
                    }
                    let token = auth::create_token(pool, &Caller::System, &name, admin, team.as_deref())
                        .await
                        .map_err(|e| e.to_string())?;
                    eprintln!("token {name:?} created; it is shown once, store it now:");
                    println!("{token}");
                }
                TokenCommand::Revoke { name } => {
                    auth::revoke_token(pool, &Caller::System, &name).await.map_err(|e| e.to_string())?;
                    println!("token {name:?} revoked");
                }
                TokenCommand::List => {
                    for t in auth::list_tokens(pool, &Caller::System).await.map_err(|e| e.to_string())? {
                        let rights = if t.is_admin {
                            "admin".to_owned()
                        } else {
                            format!("team {}", t.team.unwrap_or_default())
                        };
                        let used = t.last_used_at.map(|d| d.to_rfc3339()).unwrap_or_else(|| "never".into());
                        println!("{}\t{}\tcreated {}\tlast used {}", t.name, rights, t.created_at.to_rfc3339(), used);
                    }
                }
            }
            Ok(())
        }
    }
}

impl ServeArgs {
    fn parse_from_env() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        Only::parse_from(["imprint"]).args
    }
}

async fn serve(url: &str, args: ServeArgs) -> Result<(), String> {
    let addr = args.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    if let Some(store) = &args.object_store {
        tracing::warn!(
            store,
            "IMPRINT_OBJECT_STORE is set, but payloads are stored inline in Postgres in this version"
        );
    }
    tracing::debug!(home = ?args.home, "state directory");
    let config = Config {
        full_reload_every: Duration::from_secs(args.full_reload_secs.max(1)),
        consumer_expiry: Duration::from_secs(args.consumer_expiry_hours.max(1) * 3600),
        audit_enabled: args.audit,
        ..Config::default()
    };
    let imprint = Imprint::connect_lazy(url, config).map_err(|e| e.to_string())?;

    // Postgres may still be starting: wait for it, then migrate and load.
    let mut delay = Duration::from_millis(250);
    loop {
        match imprint.migrate().await {
            Ok(()) => break,
            Err(imprint_service::Error::StorageUnavailable(e)) => {
                tracing::warn!(error = %e, "Postgres is not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("migration failed: {e}")),
        }
    }
    if let Some(token) = &args.bootstrap_token {
        auth::ensure_bootstrap_token(imprint.pool(), token).await.map_err(|e| format!("bootstrap token: {e}"))?;
    }
    match imprint.ensure_admin_user(args.admin_password.as_deref()).await.map_err(|e| format!("admin user: {e}"))? {
        Some(generated) => {
            // Printed once, on the first start only: the hash is all that is stored.
            println!("\n  Console user `admin` created with password: {generated}\n  (shown once; set IMPRINT_ADMIN_PASSWORD to choose it)\n");
        }
        None => tracing::debug!("admin user exists"),
    }
    imprint.start_background().await.map_err(|e| format!("loading the serving state: {e}"))?;
    let secure = args.public_url.as_deref().is_some_and(|u| u.starts_with("https://"));
    let sessions = imprint_server::session_layer(&imprint, secure).await?;

    let mut leptos_options =
        leptos::config::get_configuration(None).map_err(|e| format!("leptos configuration: {e}"))?.leptos_options;
    leptos_options.site_addr = addr;
    let app = imprint_server::full_router(imprint.clone(), leptos_options, sessions);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!("Imprint listening on http://{addr}");
    let stopper = imprint.clone();
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing requests in flight");
            // Wakes long polls so they answer now instead of holding shutdown up.
            stopper.shutdown();
        })
        .await
        .map_err(|e| format!("server error: {e}"))?;
    imprint.pool().close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
