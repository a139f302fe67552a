//! `imprint`: the server (`serve`) and its admin subcommands (`migrate`, `token …`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use imprint_server::{AdminUser, Application, Database, Settings};
use imprint_service::{auth, Caller, Config, Imprint};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "imprint-server", version, about = "Publish versioned datasets to many consumer nodes")]
struct Cli {
    /// Postgres connection URL (`./dev run` starts a private cluster and sets it).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once at start: `Serve`'s many settings being larger than the rest costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Manage the local keyring of at-rest encryption (docs/encryption.md); needs no database.
    Keys {
        /// The keyring file. Default: `$IMPRINT_HOME/keyring.json`.
        #[arg(long, env = "IMPRINT_KEYRING")]
        keyring: Option<std::path::PathBuf>,
        /// Embedded-default state directory.
        #[arg(long, env = "IMPRINT_HOME", default_value = "./.imprint")]
        home: std::path::PathBuf,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key-encryption key (version 1) with this id.
    Create { id: String },
    /// Add a new primary version of a key: new data keys are wrapped by it, the old
    /// versions stay to unwrap the existing ones. With `--rewrap`, then rewrap the data
    /// keys of every stored payload sealed under it (as `keys rewrap`).
    Rotate {
        id: String,
        /// Also rewrap every stored data key of this key (needs DATABASE_URL and the
        /// server's object store and key provider settings).
        #[arg(long)]
        rewrap: bool,
    },
    /// Rewrap the data keys of every stored payload sealed under this key with its current
    /// primary version (headers only; the encrypted chunks are kept byte for byte). For
    /// AWS KMS after its own rotation; needs DATABASE_URL and the server's settings.
    Rewrap { id: String },
    /// Remove an old (not primary) version of a key. Data keys still wrapped by it can no
    /// longer be unwrapped.
    Retire { id: String, version: u32 },
    /// List the keys with their primary and kept versions (never the key material).
    List,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// What this process does, comma-separated: `api` (polls, reads, downloads, /apollo),
    /// `publish` (every other API call), `console`, `worker` (rollout scheduler, janitor,
    /// pin expiry, snapshots; once across replicas). See README "Running several servers".
    #[arg(long, env = "IMPRINT_ROLES", default_value = "api,publish,console,worker")]
    roles: Option<String>,
    /// Where the console and the APIs listen.
    #[arg(long, env = "IMPRINT_ADDR", default_value = "127.0.0.1:3000")]
    addr: Option<SocketAddr>,
    /// Serve `/metrics` on this address only (and not on IMPRINT_ADDR): a port for the
    /// monitoring network.
    #[arg(long, env = "IMPRINT_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Serve the gRPC API (proto/imprint/v1/imprint.proto) on this address (h2c), with the
    /// api and/or publish role. Unset: no gRPC.
    #[arg(long, env = "IMPRINT_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// A gRPC Watch stream ends (OK; the client calls again) after this many seconds.
    #[arg(long, env = "IMPRINT_GRPC_WATCH_MAX_SECS", default_value_t = 3600)]
    grpc_watch_max_secs: u64,
    /// Embedded-default state directory (payload objects live under it by default).
    #[arg(long, env = "IMPRINT_HOME", default_value = "./.imprint")]
    home: Option<String>,
    /// Payload object store: `file:///abs/path`, `s3://bucket/prefix` (configured by the
    /// standard `AWS_*` variables), `gs://bucket/prefix`, `az://container/prefix`.
    /// Default: `$IMPRINT_HOME/objects`.
    #[arg(long, env = "IMPRINT_OBJECT_STORE")]
    object_store: Option<String>,
    /// Several object stores, one per region (docs/regions.md):
    /// `eu=s3://bucket-eu/prefix?endpoint=…&secret_access_key_env=EU_SECRET,us=s3://…`; the
    /// first is the home region. Replaces `IMPRINT_OBJECT_STORE`.
    #[arg(long, env = "IMPRINT_OBJECT_STORES")]
    object_stores: Option<String>,
    /// The order consumers are sent to the regions in after their own (`eu,us`).
    #[arg(long, env = "IMPRINT_REGION_PREFERENCE", default_value = "")]
    region_preference: String,
    /// The public base URL of each region's servers (`eu=https://eu.imprint.example,us=…`):
    /// `data_urls` entries of those regions are absolute, so a consumer that cannot reach
    /// one region's servers moves on to the next (docs/regions.md).
    #[arg(long, env = "IMPRINT_REGION_URLS", default_value = "")]
    region_urls: String,
    /// Registered objects (published as pointers) must live under `<area>/<owning team>/`
    /// of the object store.
    #[arg(long, env = "IMPRINT_REGISTER_AREA", default_value = imprint_service::DEFAULT_REGISTER_AREA)]
    register_area: String,
    /// Spring Cloud Config requests: headers whose values become labels, as
    /// `Header-Name=label,Other-Header=other` (e.g. `X-Imprint-Region=region`).
    #[arg(long, env = "IMPRINT_SPRING_LABEL_HEADERS", default_value = "")]
    spring_label_headers: String,
    /// The key provider of at-rest encryption: `keyring` (the local keyring file) or
    /// `aws-kms` (docs/encryption.md).
    #[arg(long, env = "IMPRINT_KEY_PROVIDER", default_value = "keyring")]
    key_provider: String,
    /// The local keyring file (`keyring` provider). Default: `$IMPRINT_HOME/keyring.json`.
    #[arg(long, env = "IMPRINT_KEYRING")]
    keyring: Option<std::path::PathBuf>,
    /// The KMS endpoint (`aws-kms`). Default: `https://kms.<region>.amazonaws.com/`.
    #[arg(long, env = "IMPRINT_KMS_ENDPOINT")]
    kms_endpoint: Option<String>,
    /// The KMS region (`aws-kms`). Default: `AWS_REGION`, else `AWS_DEFAULT_REGION`;
    /// credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    #[arg(long, env = "IMPRINT_KMS_REGION")]
    kms_region: Option<String>,
    /// Unwrapped data keys kept in memory at most (0: none).
    #[arg(long, env = "IMPRINT_KEY_CACHE_ENTRIES", default_value_t = 1024)]
    key_cache_entries: usize,
    /// Seconds an unwrapped data key stays in memory at most (0: not kept).
    #[arg(long, env = "IMPRINT_KEY_CACHE_SECS", default_value_t = 300)]
    key_cache_secs: u64,
    /// `?redirect=true` downloads (and nothing else) answer 307 to a presigned S3 URL.
    #[arg(long, env = "IMPRINT_PRESIGN", default_value_t = false, action = clap::ArgAction::Set)]
    presign: bool,
    /// Seconds between janitor passes (retention, stray objects).
    #[arg(long, env = "IMPRINT_JANITOR_SECS", default_value_t = 60)]
    janitor_secs: u64,
    /// Seconds between passes that bring the object-store snapshot manifests
    /// (`snapshots/<topic>.json`) up to date.
    #[arg(long, env = "IMPRINT_SNAPSHOT_SECS", default_value_t = 10)]
    snapshot_secs: u64,
    /// Seconds one webhook delivery attempt may take, connecting included (1-60).
    #[arg(long, env = "IMPRINT_WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    webhook_timeout_secs: u64,
    /// The Prometheus that rollout analyses query (`http://prometheus:9090`); unset: plans
    /// naming an analysis are refused.
    #[arg(long, env = "IMPRINT_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Milliseconds between rollout scheduler (and pin expiry) passes.
    #[arg(long, env = "IMPRINT_ROLLOUT_TICK_MS", default_value_t = 500)]
    rollout_tick_ms: u64,
    /// An admin API token with exactly this value exists while set.
    #[arg(long, env = "IMPRINT_BOOTSTRAP_TOKEN", hide_env_values = true)]
    bootstrap_token: Option<String>,
    /// Password of the `admin` console user created on the first start (else generated and
    /// written to `$IMPRINT_HOME/admin-password`).
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
    /// Anonymous consumers (polls without a token) not seen for this many minutes are
    /// forgotten: anyone can make them up, so they are kept for less.
    #[arg(long, env = "IMPRINT_ANONYMOUS_CONSUMER_EXPIRY_MINUTES", default_value_t = 60)]
    anonymous_consumer_expiry_minutes: u64,
    /// Record consumers' polls for the audit (turn off only to measure its cost).
    #[arg(long, env = "IMPRINT_AUDIT", default_value_t = true, action = clap::ArgAction::Set)]
    audit: bool,
    /// `required`: polls (and /latest) need a token; `optional`: anonymous polls are
    /// served too (their reports never move health gates).
    #[arg(long, env = "IMPRINT_POLL_AUTH", value_enum, default_value_t = PollAuth::Optional)]
    poll_auth: PollAuth,
    /// Long polls held open at once; past it they are answered as short polls with a
    /// backoff. Default: derived from the open-file limit.
    #[arg(long, env = "IMPRINT_MAX_LONG_POLLS")]
    max_long_polls: Option<usize>,
    /// Memory the requests held open (long polls, Apollo notifications, live streams)
    /// may hold together, in MiB; past it a long poll is answered at once with a backoff.
    #[arg(long, env = "IMPRINT_LONG_POLL_MEMORY_MB", default_value_t = 256)]
    long_poll_memory_mb: usize,
    /// Long polls one anonymous client address may hold open (0: no limit); token
    /// holders are bounded by the other caps only.
    #[arg(long, env = "IMPRINT_MAX_LONG_POLLS_PER_ADDRESS", default_value_t = 1000)]
    max_long_polls_per_address: usize,
    /// Reverse proxies (comma-separated CIDRs) whose X-Forwarded-For / Forwarded header
    /// names the client (sign-in throttling counts per client address).
    #[arg(long, env = "IMPRINT_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: String,
    /// Seconds a client has to send a request's head (request line and headers), also
    /// between keep-alive requests; then the connection is closed.
    #[arg(long, env = "IMPRINT_HEADER_TIMEOUT_SECS", default_value_t = 40)]
    header_timeout_secs: u64,
    /// Seconds a request body may go without data while it is read; then it fails.
    #[arg(long, env = "IMPRINT_BODY_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    body_idle_timeout_secs: u64,
    /// Connections open at once per client address (IPv6: per /64); trusted proxies are
    /// not counted. 0: no limit.
    #[arg(long, env = "IMPRINT_MAX_CONNS_PER_IP", default_value_t = 256)]
    max_conns_per_ip: usize,
    /// Seconds open connections get to finish on shutdown before they are dropped.
    #[arg(long, env = "IMPRINT_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Fair serving (docs/fairness.md): an adaptive concurrency limit per application on
    /// the consumer and read paths.
    #[arg(long, env = "IMPRINT_FAIR_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    fair_enabled: bool,
    /// How long a request over its application's limit waits before 429 (ms, at most 1000).
    #[arg(long, env = "IMPRINT_FAIR_QUEUE_MS", default_value_t = 100)]
    fair_queue_ms: u64,
    /// Refusals of one application per second at most; a request past that rate waits its
    /// turn, up to IMPRINT_FAIR_MAX_WAIT_MS in all (0: no pacing).
    #[arg(long, env = "IMPRINT_FAIR_REFUSALS_PER_S", default_value_t = 200)]
    fair_refusals_per_s: u32,
    /// The longest a request over its application's limit waits before 429 (ms, at most 10000).
    #[arg(long, env = "IMPRINT_FAIR_MAX_WAIT_MS", default_value_t = 2000)]
    fair_max_wait_ms: u64,
    /// The runtime queue delay fair serving aims under (µs); above it, applications with
    /// requests waiting hand their freed places on later (0: at once).
    #[arg(long, env = "IMPRINT_FAIR_TARGET_DELAY_US", default_value_t = 250)]
    fair_target_delay_us: u64,
    #[arg(long, env = "IMPRINT_FAIR_INITIAL_LIMIT", default_value_t = 20)]
    fair_initial_limit: usize,
    #[arg(long, env = "IMPRINT_FAIR_MIN_LIMIT", default_value_t = 4)]
    fair_min_limit: usize,
    #[arg(long, env = "IMPRINT_FAIR_MAX_LIMIT", default_value_t = 200)]
    fair_max_limit: usize,
    /// Applications tracked at once; past it idle ones are forgotten, busy ones overflow.
    #[arg(long, env = "IMPRINT_FAIR_MAX_BUCKETS", default_value_t = 1024)]
    fair_max_buckets: usize,
    #[arg(long, env = "IMPRINT_FAIR_RETRY_AFTER_SECS", default_value_t = 1)]
    fair_retry_after_secs: u64,
    /// How long a coalesced read's answer is reused (ms, at most 5000; 0: only requests in
    /// flight together share a query).
    #[arg(long, env = "IMPRINT_COALESCE_MS", default_value_t = 500)]
    coalesce_ms: u64,
    #[arg(long, env = "IMPRINT_COALESCE_ENTRIES", default_value_t = 10_000)]
    coalesce_entries: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum PollAuth {
    #[default]
    Optional,
    Required,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (shown once; stored hashed).
    Create {
        name: String,
        /// May do everything.
        #[arg(long, conflicts_with = "consumer")]
        admin: bool,
        /// Reads and polls only (restricted topics: its team's and the --topic ones).
        #[arg(long)]
        consumer: bool,
        /// A relay's token (docs/agent.md): polls and reports for downstream consumers, each
        /// as its own token; nothing of its own.
        #[arg(long, conflicts_with_all = ["admin", "consumer", "team"])]
        relay: bool,
        /// Acts on (a consumer token: reads) the topics this team owns.
        #[arg(long)]
        team: Option<String>,
        /// A consumer token's label, `key=value`: every poll must claim it (repeatable).
        #[arg(long = "label", requires = "consumer")]
        labels: Vec<String>,
        /// A restricted topic (or `prefix.*`) a consumer token may read (repeatable).
        #[arg(long = "topic", requires = "consumer")]
        topics: Vec<String>,
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
    let command = cli.command.unwrap_or_else(|| Command::Serve(ServeArgs::parse_from_env()));
    if let Command::Keys { keyring, home, command } = command {
        let rewrap = match &command {
            KeysCommand::Rotate { id, rewrap: true } | KeysCommand::Rewrap { id } => Some(id.clone()),
            _ => None,
        };
        if !matches!(command, KeysCommand::Rewrap { .. }) {
            keys(keyring.unwrap_or_else(|| home.join("keyring.json")), command)?;
        }
        let Some(id) = rewrap else { return Ok(()) };
        let url = cli.database_url.ok_or("rewrapping stored data keys needs DATABASE_URL")?;
        return rewrap_keys(&url, &id).await;
    }
    let url = cli.database_url.ok_or(
        "DATABASE_URL is not set: start Imprint with `./dev run` (it runs a private Postgres) or point DATABASE_URL at a Postgres",
    )?;
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
            match command {
                TokenCommand::Create { name, admin, consumer, relay, team, labels, topics } => {
                    if !admin && !consumer && !relay && team.is_none() {
                        return Err(
                            "a token needs --admin, --consumer, --relay or --team <team> (the team whose topics it may write)"
                                .into(),
                        );
                    }
                    let kind = match (admin, consumer, relay) {
                        (true, _, _) => auth::TokenKind::Admin,
                        (_, true, _) => auth::TokenKind::Consumer,
                        (_, _, true) => auth::TokenKind::Relay,
                        _ => auth::TokenKind::Publisher,
                    };
                    let labels = labels
                        .iter()
                        .map(|l| {
                            l.split_once('=')
                                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                                .ok_or_else(|| format!("--label {l:?}: expected key=value"))
                        })
                        .collect::<Result<_, _>>()?;
                    let spec = auth::NewToken { name: name.clone(), kind, team, labels, topics };
                    let token = imprint.create_token_with(&Caller::System, &spec).await.map_err(|e| e.to_string())?;
                    eprintln!("token {name:?} created; it is shown once, store it now:");
                    println!("{token}");
                }
                TokenCommand::Revoke { name } => {
                    imprint.revoke_token(&Caller::System, &name).await.map_err(|e| e.to_string())?;
                    println!("token {name:?} revoked");
                }
                TokenCommand::List => {
                    for t in imprint.list_tokens(&Caller::System).await.map_err(|e| e.to_string())? {
                        let mut rights = t.kind.clone();
                        if let Some(team) = &t.team {
                            rights.push_str(&format!(" team {team}"));
                        }
                        for (k, v) in &t.labels {
                            rights.push_str(&format!(" {k}={v}"));
                        }
                        for topic in &t.topics {
                            rights.push_str(&format!(" topic {topic}"));
                        }
                        let used = t.last_used_at.map(|d| d.to_rfc3339()).unwrap_or_else(|| "never".into());
                        println!("{}\t{}\tcreated {}\tlast used {}", t.name, rights, t.created_at.to_rfc3339(), used);
                    }
                }
            }
            Ok(())
        }
        Command::Keys { .. } => unreachable!("answered above, without a database"),
    }
}

/// `imprint-server keys …` on the local keyring file.
fn keys(path: std::path::PathBuf, command: KeysCommand) -> Result<(), String> {
    use imprint_service::keys::Keyring;
    let mut ring = Keyring::load(&path)?;
    match command {
        KeysCommand::Create { id } => {
            ring.create(&id)?;
            ring.save(&path)?;
            println!("key {id:?} created (version 1) in {}", path.display());
        }
        KeysCommand::Rewrap { .. } => {}
        KeysCommand::Rotate { id, .. } => {
            let v = ring.rotate(&id)?;
            ring.save(&path)?;
            println!("key {id:?} rotated: version {v} is the primary");
        }
        KeysCommand::Retire { id, version } => {
            ring.retire(&id, version)?;
            ring.save(&path)?;
            println!("version {version} of key {id:?} retired");
        }
        KeysCommand::List => {
            for k in ring.list() {
                let versions: Vec<String> = k.versions.iter().map(u32::to_string).collect();
                println!("{}\tprimary {}\tversions {}", k.id, k.primary, versions.join(","));
            }
        }
    }
    Ok(())
}

/// The key provider of at-rest encryption as configured (`IMPRINT_KEY_PROVIDER`), with
/// its cache of unwrapped data keys. Nothing is called here: a KMS that is down at startup
/// does not stop the server (publishing to an at-rest topic would answer 503 then).
fn key_provider(
    args: &ServeArgs,
    home: &std::path::Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<imprint_service::keys::Keys, String> {
    use imprint_service::keys::{AwsKms, KeyCacheLimits, KeyProvider, Keys, LocalKeyring};
    let provider: std::sync::Arc<dyn KeyProvider> = match args.key_provider.as_str() {
        "keyring" | "local" => {
            let path = args.keyring.clone().unwrap_or_else(|| home.join("keyring.json"));
            std::sync::Arc::new(LocalKeyring::open(path).map_err(|e| format!("IMPRINT_KEYRING: {e}"))?)
        }
        "aws-kms" => {
            let region = args
                .kms_region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .ok_or("IMPRINT_KEY_PROVIDER=aws-kms needs IMPRINT_KMS_REGION (or AWS_REGION)")?;
            let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) else {
                return Err("IMPRINT_KEY_PROVIDER=aws-kms needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
            };
            let token = env("AWS_SESSION_TOKEN");
            let kms = AwsKms::new(args.kms_endpoint.as_deref(), &region, &id, &secret, token.as_deref())
                .map_err(|e| format!("IMPRINT_KMS_ENDPOINT: {e}"))?;
            std::sync::Arc::new(kms)
        }
        other => return Err(format!("IMPRINT_KEY_PROVIDER: {other:?} is not `keyring` or `aws-kms`")),
    };
    let limits = KeyCacheLimits { max_entries: args.key_cache_entries, ttl: Duration::from_secs(args.key_cache_secs) };
    tracing::info!(provider = provider.kind(), cache_entries = limits.max_entries, "at-rest key provider");
    Ok(Keys::new(provider, limits))
}

impl ServeArgs {
    fn parse_from_env() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        Only::parse_from(["imprint-server"]).args
    }
}

/// `keys rewrap ID` (and `keys rotate ID --rewrap`): with the server's object store and
/// key provider as configured (the `serve` environment), every stored data key of `id`
/// rewrapped under its primary version.
async fn rewrap_keys(url: &str, id: &str) -> Result<(), String> {
    let args = ServeArgs::parse_from_env();
    let home = std::path::PathBuf::from(args.home.clone().unwrap_or_else(|| "./.imprint".into()));
    let (objects, regions) = object_stores(&args, &home)?;
    let keys = key_provider(&args, &home, |name| std::env::var(name).ok())?;
    let config = Config { objects, regions, keys: Some(keys), ..Config::default() };
    let imprint = Imprint::connect_lazy(url, config).map_err(|e| e.to_string())?;
    let done = imprint.rewrap_at_rest(id).await.map_err(|e| e.public_message())?;
    println!(
        "key {id:?}: rewrapped {} inline payload(s), {} object(s), {} draft(s), {} snapshot manifest(s); {} sealed under \
         other keys left alone",
        done.inline, done.objects, done.drafts, done.manifests, done.other_keys
    );
    Ok(())
}

/// The payload object store(s) as configured (`IMPRINT_OBJECT_STORE(S)`).
fn object_stores(
    args: &ServeArgs,
    home: &std::path::Path,
) -> Result<(imprint_service::objects::Objects, imprint_service::regions::Regions), String> {
    let preference: Vec<String> =
        args.region_preference.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let (objects, regions) = match (&args.object_stores, &args.object_store) {
        (Some(_), Some(_)) => return Err("set IMPRINT_OBJECT_STORES or IMPRINT_OBJECT_STORE, not both".into()),
        (Some(spec), None) => imprint_service::regions::Regions::open(spec, &preference, args.presign)
            .map_err(|e| format!("IMPRINT_OBJECT_STORES: {e}"))?,
        (None, single) => {
            let objects = match single {
                Some(url) => imprint_service::objects::Objects::open(url, &[], args.presign),
                None if args.presign => {
                    Err("IMPRINT_PRESIGN needs an S3 object store (IMPRINT_OBJECT_STORE=s3://…)".into())
                }
                None => imprint_service::objects::Objects::local(&home.join("objects")),
            }
            .map_err(|e| format!("IMPRINT_OBJECT_STORE: {e}"))?;
            let regions = imprint_service::regions::Regions::new(
                imprint_service::regions::DEFAULT_REGION.into(),
                Vec::new(),
                &preference,
            )
            .map_err(|e| format!("IMPRINT_REGION_PREFERENCE: {e}"))?;
            (objects, regions)
        }
    };
    let regions = regions.with_public_urls(&args.region_urls).map_err(|e| format!("IMPRINT_REGION_URLS: {e}"))?;
    Ok((objects, regions))
}

/// Turns the arguments into `Settings` and runs the one startup path until a signal.
async fn serve(url: &str, args: ServeArgs) -> Result<(), String> {
    let addr = args.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
    let roles = imprint_service::Roles::parse(args.roles.as_deref().unwrap_or("all"))
        .map_err(|e| format!("IMPRINT_ROLES: {e}"))?;
    let home = std::path::PathBuf::from(args.home.clone().unwrap_or_else(|| "./.imprint".into()));
    let (objects, regions) = object_stores(&args, &home)?;
    tracing::info!(regions = ?regions.names(), "object store regions");
    tracing::info!(store = objects.url(), presign = objects.presigns(), "payload object store");
    tracing::debug!(home = ?args.home, "state directory");
    let trusted = imprint_server::TrustedProxies::parse(&args.trusted_proxies)
        .map_err(|e| format!("IMPRINT_TRUSTED_PROXIES: {e}"))?;
    let max_long_polls = args.max_long_polls.unwrap_or_else(|| long_poll_cap(raise_open_file_limit()));
    tracing::info!(max_long_polls, poll_auth = ?args.poll_auth, "consumer limits");
    let service = Config {
        roles,
        snapshot_every: Duration::from_secs(args.snapshot_secs.max(1)),
        rollout_tick_every: Duration::from_millis(args.rollout_tick_ms.clamp(50, 60_000)),
        full_reload_every: Duration::from_secs(args.full_reload_secs.max(1)),
        consumer_expiry: Duration::from_secs(args.consumer_expiry_hours.max(1) * 3600),
        anonymous_consumer_expiry: Duration::from_secs(args.anonymous_consumer_expiry_minutes.max(1) * 60),
        audit_enabled: args.audit,
        poll_auth_required: args.poll_auth == PollAuth::Required,
        max_long_polls,
        max_long_poll_bytes: args.long_poll_memory_mb.max(1).saturating_mul(1 << 20),
        max_long_polls_per_address: if args.max_long_polls_per_address == 0 {
            usize::MAX
        } else {
            args.max_long_polls_per_address
        },
        objects,
        regions,
        janitor_every: Duration::from_secs(args.janitor_secs.max(1)),
        webhook_timeout: Duration::from_secs(args.webhook_timeout_secs.clamp(1, 60)),
        prometheus: match args.prometheus_url.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => Some(
                imprint_service::prometheus::PrometheusClient::new(url, imprint_service::prometheus::DEFAULT_TIMEOUT)
                    .map_err(|e| e.to_string())?,
            ),
        },
        metrics_on_public_listener: args.metrics_addr.is_none(),
        register_area: {
            let area = args.register_area.trim_matches('/').to_owned();
            imprint_service::check_register_area(&area).map_err(|e| format!("IMPRINT_REGISTER_AREA: {e}"))?;
            area
        },
        spring_label_headers: imprint_service::spring::parse_label_headers(&args.spring_label_headers)
            .map_err(|e| format!("IMPRINT_SPRING_LABEL_HEADERS: {e}"))?,
        fair: imprint_service::fair::FairConfig {
            enabled: args.fair_enabled,
            queue_wait: Duration::from_millis(args.fair_queue_ms.min(1000)),
            refusals_per_s: args.fair_refusals_per_s,
            target_delay: Duration::from_micros(args.fair_target_delay_us.min(1_000_000)),
            max_wait: Duration::from_millis(args.fair_max_wait_ms.clamp(args.fair_queue_ms.min(1000), 10_000)),
            initial_limit: args.fair_initial_limit.max(1),
            min_limit: args.fair_min_limit.max(1),
            max_limit: args.fair_max_limit.max(args.fair_min_limit.max(1)),
            max_buckets: args.fair_max_buckets.max(1),
            retry_after_s: args.fair_retry_after_secs.clamp(1, 3600),
            coalesce_ttl: Duration::from_millis(args.coalesce_ms.min(5000)),
            coalesce_entries: args.coalesce_entries.max(1),
        },
        keys: Some(key_provider(&args, &home, |name| std::env::var(name).ok())?),
        ..Config::default()
    };
    let settings = Settings {
        addr,
        metrics_addr: args.metrics_addr,
        service,
        bootstrap_token: args.bootstrap_token,
        admin_user: AdminUser::Ensure { password: args.admin_password, password_file: home.join("admin-password") },
        public_url: args.public_url,
        trusted,
        limits: imprint_server::ConnectionLimits {
            header_read_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
            body_idle_timeout: Duration::from_secs(args.body_idle_timeout_secs.max(1)),
            max_conns_per_ip: args.max_conns_per_ip,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            exempt: Default::default(),
        },
        grpc: imprint_server::GrpcSettings {
            addr: args.grpc_addr,
            watch_max: Duration::from_secs(args.grpc_watch_max_secs.max(1)),
        },
        ..Settings::new(Database::Url(url.to_owned()))
    };
    Application::build(settings).await?.run_until_stopped(shutdown_signal()).await
}

/// Raises the soft open-file limit to the hard one (every long poll holds a socket) and
/// returns the soft limit now in force.
fn raise_open_file_limit() -> u64 {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    let now = rlimit::increase_nofile_limit(u64::MAX).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not raise the open-file limit");
        before.map_or(1024, |(soft, _)| soft)
    });
    if let Some((soft, hard)) = before {
        tracing::info!(soft_before = soft, hard, soft_now = now, "open-file limit");
    }
    now
}

/// Long polls this process may hold: most of the descriptors, leaving room for the pool,
/// ordinary requests and files.
fn long_poll_cap(open_files: u64) -> usize {
    let usable = open_files.saturating_sub(1024).max(256) * 3 / 4;
    usize::try_from(usable.min(1_000_000)).unwrap_or(1_000_000)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        let mut argv = vec!["imprint-server"];
        argv.extend_from_slice(extra);
        Only::parse_from(argv).args
    }

    #[test]
    fn the_key_provider_is_the_keyring_by_default_or_aws_kms_when_fully_configured() {
        let home = std::env::temp_dir().join(format!("imprint-keyprovider-{}", std::process::id()));
        let none = |_: &str| None;
        let keys = key_provider(&args(&[]), &home, none).unwrap();
        assert_eq!((keys.kind(), keys.limits().max_entries), ("local", 1024));
        let keys = key_provider(&args(&["--key-cache-entries", "7", "--key-cache-secs", "9"]), &home, none).unwrap();
        assert_eq!((keys.limits().max_entries, keys.limits().ttl), (7, Duration::from_secs(9)));

        let kms = args(&["--key-provider", "aws-kms"]);
        let e = key_provider(&kms, &home, none).unwrap_err();
        assert!(e.contains("IMPRINT_KMS_REGION"), "{e}");
        let region_only = |n: &str| (n == "AWS_REGION").then(|| "eu-west-1".to_owned());
        let e = key_provider(&kms, &home, region_only).unwrap_err();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        let all = |n: &str| Some(if n == "AWS_REGION" { "eu-west-1".to_owned() } else { "x".to_owned() });
        assert_eq!(key_provider(&kms, &home, all).unwrap().kind(), "aws-kms");
        let bad = args(&["--key-provider", "aws-kms", "--kms-endpoint", "not a url"]);
        assert!(key_provider(&bad, &home, all).unwrap_err().contains("IMPRINT_KMS_ENDPOINT"));

        let e = key_provider(&args(&["--key-provider", "vault"]), &home, none).unwrap_err();
        assert!(e.contains("vault"), "{e}");
        // a keyring file that is not one stops the start
        std::fs::create_dir_all(&home).unwrap();
        let broken = home.join("broken.json");
        std::fs::write(&broken, "{").unwrap();
        let e = key_provider(&args(&["--keyring", broken.to_str().unwrap()]), &home, none).unwrap_err();
        assert!(e.contains("IMPRINT_KEYRING"), "{e}");
        let _ = std::fs::remove_dir_all(&home);
    }
}
