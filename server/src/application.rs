//! The one startup path: `Application::build(settings)` connects (or takes a pool),
//! migrates, sets up the bootstrap token and the admin user, starts the background work,
//! binds the listeners and returns an `Application` that `run_until_stopped` serves until
//! shut down. The binary (`main.rs`) only turns arguments and environment into `Settings`;
//! the tests (the `imprint-testkit` crate) build the same way.
use crate::{full_router, metrics_router, serve_with_limits, session_layer, ConnectionLimits, TrustedProxies};
use axum::Router;
use imprint_service::clock::SharedClock;
use imprint_service::{Config, Imprint};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The shortest IMPRINT_BOOTSTRAP_TOKEN accepted: it is an admin credential.
pub const MIN_BOOTSTRAP_TOKEN_CHARS: usize = 32;

/// Where the service's Postgres is.
#[derive(Clone, Debug)]
pub enum Database {
    /// Connect lazily to this URL, waiting (with backoff) while Postgres is not up yet.
    Url(String),
    /// Use this pool (tests: the database `#[sqlx::test]` made).
    Pool(sqlx::PgPool),
}

/// The `admin` console user.
#[derive(Clone, Debug)]
pub enum AdminUser {
    /// Created on the first start: with `password`, or with a generated one written once to
    /// `password_file` (mode 0600; never to stdout or the log).
    Ensure { password: Option<String>, password_file: PathBuf },
    /// Not created (tests that need no console users; the first start of a real server
    /// always ensures one).
    Skip,
}

/// Everything a server is started with.
pub struct Settings {
    /// Where the console and the APIs listen (port 0: any free port, see `address`).
    pub addr: SocketAddr,
    /// Serve `/metrics` on this address only (and not on `addr`).
    pub metrics_addr: Option<SocketAddr>,
    pub database: Database,
    /// The service's settings (roles, intervals, limits, the object store).
    pub service: Config,
    /// The service's clock (tests pass a `ManualClock`).
    pub clock: SharedClock,
    /// An admin API token with exactly this value exists while set (at least
    /// `MIN_BOOTSTRAP_TOKEN_CHARS`); started without it, an earlier start's is revoked.
    pub bootstrap_token: Option<String>,
    pub admin_user: AdminUser,
    /// The console's public URL; `https://…` makes session cookies Secure.
    pub public_url: Option<String>,
    /// Reverse proxies whose forwarding headers are believed; they are also exempt from
    /// the per-address connection cap.
    pub trusted: TrustedProxies,
    pub limits: ConnectionLimits,
    /// The console's site options; `None`: read from the environment cargo-leptos sets.
    pub leptos: Option<leptos::config::LeptosOptions>,
    /// The gRPC API's listener (`IMPRINT_GRPC_ADDR`), served by the `api` and `publish`
    /// roles.
    pub grpc: crate::GrpcSettings,
}

impl Settings {
    /// Defaults for everything but where the data is.
    pub fn new(database: Database) -> Self {
        Settings {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            metrics_addr: None,
            database,
            service: Config::default(),
            clock: std::sync::Arc::new(imprint_service::SystemClock),
            bootstrap_token: None,
            admin_user: AdminUser::Ensure { password: None, password_file: PathBuf::from("./.imprint/admin-password") },
            public_url: None,
            trusted: TrustedProxies::default(),
            limits: ConnectionLimits::default(),
            leptos: None,
            grpc: crate::GrpcSettings::default(),
        }
    }
}

/// Stops a running `Application` (as SIGTERM does the binary's): no new connections, open
/// long polls answer, then background work finishes and the pool closes.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A built server: listeners bound, state loaded, background work running.
pub struct Application {
    imprint: Imprint,
    router: Router,
    listener: TcpListener,
    addr: SocketAddr,
    metrics: Option<(TcpListener, SocketAddr)>,
    grpc: Option<(TcpListener, SocketAddr, crate::GrpcSettings)>,
    limits: ConnectionLimits,
    stop: watch::Sender<bool>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, String> {
        let Settings {
            addr,
            metrics_addr,
            database,
            mut service,
            clock,
            bootstrap_token,
            admin_user,
            public_url,
            trusted,
            mut limits,
            leptos,
            grpc,
        } = settings;
        if metrics_addr.is_some() {
            service.metrics_on_public_listener = false;
        }
        let roles = service.roles;
        let imprint = match database {
            Database::Url(url) => {
                let pool =
                    imprint_service::pool_options().connect_lazy(&url).map_err(|e| format!("DATABASE_URL: {e}"))?;
                Imprint::with_clock(pool, service, clock)
            }
            Database::Pool(pool) => Imprint::with_clock(pool, service, clock),
        };
        migrate_when_reachable(&imprint).await?;
        bootstrap(&imprint, bootstrap_token.as_deref()).await?;
        if let AdminUser::Ensure { password, password_file } = admin_user {
            ensure_admin(&imprint, password.as_deref(), &password_file).await?;
        }
        imprint.start_background().await.map_err(|e| format!("loading the serving state: {e}"))?;
        let secure = public_url.as_deref().is_some_and(|u| u.starts_with("https://"));
        let sessions = session_layer(&imprint, secure).await?;

        let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        imprint.set_public_url(public_url.clone().unwrap_or_else(|| format!("http://{addr}")));
        let mut leptos_options = match leptos {
            Some(options) => options,
            None => {
                leptos::config::get_configuration(None)
                    .map_err(|e| format!("leptos configuration: {e}"))?
                    .leptos_options
            }
        };
        leptos_options.site_addr = addr;
        limits.exempt = trusted.clone();
        tracing::info!(?limits, "connection limits");
        let metrics = match metrics_addr {
            Some(m) => {
                let l = TcpListener::bind(m)
                    .await
                    .map_err(|e| format!("IMPRINT_METRICS_ADDR: cannot listen on {m}: {e}"))?;
                let bound = l.local_addr().map_err(|e| format!("IMPRINT_METRICS_ADDR: {e}"))?;
                tracing::info!("metrics on http://{bound}/metrics (and not on {addr})");
                Some((l, bound))
            }
            None => None,
        };
        let grpc = match grpc.addr {
            Some(g) if roles.api || roles.publish => {
                let l =
                    TcpListener::bind(g).await.map_err(|e| format!("IMPRINT_GRPC_ADDR: cannot listen on {g}: {e}"))?;
                let bound = l.local_addr().map_err(|e| format!("IMPRINT_GRPC_ADDR: {e}"))?;
                tracing::info!("gRPC API on {bound} (h2c)");
                Some((l, bound, grpc))
            }
            Some(_) => {
                tracing::info!("IMPRINT_GRPC_ADDR is set, but the roles {roles} serve no gRPC (api or publish do)");
                None
            }
            None => None,
        };
        let router = full_router(imprint.clone(), leptos_options, sessions, trusted);
        tracing::info!(%roles, "Imprint listening on http://{addr}");
        Ok(Application { imprint, router, listener, addr, metrics, grpc, limits, stop: watch::channel(false).0 })
    }

    /// Where the console and the APIs listen.
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when on its own listener.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    /// Where the gRPC API listens, when it does (`IMPRINT_GRPC_ADDR`).
    pub fn grpc_address(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|(_, a, _)| *a)
    }

    /// The service behind this server.
    pub fn imprint(&self) -> &Imprint {
        &self.imprint
    }

    /// Wraps the router in `f` (a test seam: the test kit counts requests with it).
    pub fn map_router(mut self, f: impl FnOnce(Router) -> Router) -> Self {
        self.router = f(self.router);
        self
    }

    /// Stops `run_until_stopped` as its `stop` future would.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.stop.clone())
    }

    /// Serves until `stop` completes (or the shutdown handle is used), then shuts down
    /// gracefully: no new connections, long polls answer at once, open connections get
    /// the shutdown grace; then what the last polls reported is flushed, background work
    /// finishes its pass, and the pool is closed.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
        let Application { imprint, router, listener, metrics, grpc, limits, stop: handle, .. } = self;
        let grpc_server = grpc.map(|(l, _, settings)| {
            let mut draining = imprint.draining();
            let stop = async move {
                let _ = draining.wait_for(|d| *d).await;
            };
            tokio::spawn(crate::grpc::serve(imprint.clone(), l, settings, limits.clone(), stop))
        });
        if let Some((l, _)) = metrics {
            let mut draining = imprint.draining();
            let limits = limits.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = draining.wait_for(|d| *d).await;
                };
                if let Err(e) = serve_with_limits(l, metrics_router(), limits, stop).await {
                    tracing::warn!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let grace = limits.shutdown_grace;
        let stopper = imprint.clone();
        let mut stopped = handle.subscribe();
        serve_with_limits(listener, router, limits, async move {
            tokio::select! {
                () = stop => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            tracing::info!("shutting down: no new connections; answering open long polls");
            // Long polls answer now instead of holding shutdown up; background work goes on.
            stopper.begin_shutdown();
        })
        .await
        .map_err(|e| format!("server error: {e}"))?;
        if let Some(g) = grpc_server {
            // Watch streams end as the service drains; calls in flight get the grace.
            match tokio::time::timeout(grace, g).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the gRPC listener stopped"),
                Ok(_) => {}
                Err(_) => tracing::warn!("gRPC calls were still open after the shutdown grace"),
            }
        }
        // No request is in flight any more: flush what the last polls reported, let the
        // scheduler finish its pass, and only then close the pool.
        tracing::info!("flushing the consumer audit and stopping background work");
        imprint.finish_shutdown().await;
        imprint.pool().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Postgres may still be starting: wait for it, then migrate.
async fn migrate_when_reachable(imprint: &Imprint) -> Result<(), String> {
    let mut delay = Duration::from_millis(250);
    loop {
        match imprint.migrate().await {
            Ok(()) => return Ok(()),
            Err(imprint_service::Error::StorageUnavailable(e)) => {
                tracing::warn!(error = %e, "Postgres is not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("migration failed: {e}")),
        }
    }
}

/// The bootstrap token exists only while it is configured: started without it, the one
/// an earlier start created is revoked.
async fn bootstrap(imprint: &Imprint, token: Option<&str>) -> Result<(), String> {
    match token.filter(|t| !t.is_empty()) {
        Some(token) if token.chars().count() < MIN_BOOTSTRAP_TOKEN_CHARS => Err(format!(
            "IMPRINT_BOOTSTRAP_TOKEN has {} characters; an admin token needs at least {MIN_BOOTSTRAP_TOKEN_CHARS} \
             (for example `openssl rand -hex 32`)",
            token.chars().count()
        )),
        Some(token) => imprint.ensure_bootstrap_token(token).await.map_err(|e| format!("bootstrap token: {e}")),
        None => {
            if imprint.revoke_bootstrap_token().await.map_err(|e| format!("bootstrap token: {e}"))? {
                tracing::info!(
                    "IMPRINT_BOOTSTRAP_TOKEN is not set: the bootstrap token of an earlier start is revoked"
                );
            }
            Ok(())
        }
    }
}

async fn ensure_admin(
    imprint: &Imprint,
    password: Option<&str>,
    password_file: &std::path::Path,
) -> Result<(), String> {
    match imprint.ensure_admin_user(password).await.map_err(|e| format!("admin user: {e}"))? {
        Some(generated) => {
            // Written once, on the first start only, to a file only this user may read
            // (never to stdout or the log): the hash is all that is stored.
            write_private(password_file, &format!("{generated}\n")).map_err(|e| {
                format!(
                    "the admin user was created, but its password could not be written to {}: {e}",
                    password_file.display()
                )
            })?;
            tracing::warn!(
                file = %password_file.display(),
                "console user `admin` created with a generated password, written to this file (mode 0600): \
                 sign in, change it on /account, then delete the file (set IMPRINT_ADMIN_PASSWORD to choose it instead)"
            );
        }
        None => tracing::debug!("admin user exists"),
    }
    Ok(())
}

/// Writes `text` to a new file (replacing any) that only this user may read and write.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
