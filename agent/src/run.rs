//! The running agent: its stable instance id, one `imprint-client` with every subscription
//! (one long poll carries them all), the local endpoint, and a graceful stop on SIGTERM or
//! Ctrl-C.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, Listen};
use crate::install::{write_atomically, Installer};
use crate::local::{Local, Topic};
use crate::shutdown::stopped;

/// The instance id: the config's, or the one persisted in the state directory (made once
/// from the host name and a random suffix; never the address, which changes).
pub fn instance_id(config: &Config) -> std::io::Result<String> {
    if let Some(i) = &config.instance {
        return Ok(i.clone());
    }
    let file = config.state_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_owned());
    let id = format!("{host}-{:08x}", rand::random::<u32>());
    write_atomically(&file, id.as_bytes())?;
    Ok(id)
}

fn prepare_state_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir.join("cache")).map_err(|e| format!("state_dir {}: {e}", dir.display()))
}

/// How long open requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Every second, each subscription looks at its failover file (off the async workers:
/// installing runs commands and copies files).
async fn follow_failover(installers: Vec<Arc<Installer>>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for i in &installers {
            let i = i.clone();
            match tokio::task::spawn_blocking(move || i.failover_pass()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "failover file not installed"),
                Err(e) => tracing::error!(error = %e, "failover pass failed"),
            }
        }
    }
}

pub async fn run(config: Config) -> Result<(), String> {
    prepare_state_dir(&config.state_dir)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let instance = instance_id(&config).map_err(|e| format!("instance id: {e}"))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok();
    let mut builder = imprint_client::Client::builder(&config.server)
        .fallback_urls(config.fallback_servers.clone())
        .instance(&instance)
        .labels(config.labels.clone())
        .cache_dir(config.state_dir.join("cache"));
    if let Some(t) = &config.token {
        builder = builder.token(t);
    }
    if let Some(s) = &config.snapshot_store {
        builder = builder.snapshot_store(s);
    }
    if let Some(k) = &config.snapshot_keyring {
        builder = builder.snapshot_keyring(k);
    }
    if let Some(f) = &config.identity_file {
        builder = builder.identity_file(f);
    }
    let client = builder.build().map_err(|e| format!("client: {e}"))?;
    let mut topics = BTreeMap::new();
    let mut installers = Vec::new();
    for sub in &config.subscriptions {
        let installer = Arc::new(
            Installer::new(sub.clone(), &config.state_dir, config.failover_dir.as_deref())
                .map_err(|e| format!("state_dir for {}: {e}", sub.topic))?,
        );
        // A failover file present at start is in place before the server is asked.
        if let Err(e) = installer.failover_pass() {
            tracing::error!(topic = %sub.topic, error = %e, "failover file not installed");
        }
        let held = installer.held();
        let (topic, apply_with) = (sub.topic.clone(), installer.clone());
        let subscription = client
            .subscribe_file_with(&sub.topic, None, move |p| {
                let result = apply_with.apply(p);
                match &result {
                    Ok(i) => {
                        tracing::info!(topic = %topic, version = i.version, source = %p.source(), "installed");
                    }
                    Err(e) => {
                        metrics::counter!("imprint_agent_check_failures_total", "topic" => topic.clone()).increment(1);
                        tracing::warn!(topic = %topic, version = p.version(), error = %e, "version not installed");
                    }
                }
                result.map(Some)
            })
            .await
            .map_err(|e| format!("subscribe {}: {e}", sub.topic))?;
        topics.insert(
            sub.topic.clone(),
            Topic {
                held,
                sub: subscription,
                required: sub.required,
                appconfig: sub.appconfig.clone(),
                client: client.clone(),
            },
        );
        installers.push(installer);
    }
    if config.failover_dir.is_some() {
        tokio::spawn(follow_failover(installers));
    }
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        let _ = stop_tx.send(true);
    });
    let mut app = Local::new(topics, metrics, stop_rx.clone()).router();
    if let Some(relay) = &config.relay {
        let upstreams: Vec<String> =
            std::iter::once(config.server.clone()).chain(config.fallback_servers.clone()).collect();
        // Relay mode: the consumer API for downstream clients, agents and relays, on the
        // same address (its routes first; the local endpoint keeps the fallback).
        let relay = crate::relay::Relay::new(&upstreams, &instance, relay.clone(), &config.state_dir, stop_rx.clone())?;
        relay.start();
        app = relay.router().merge(app);
    }
    // Open streams and waits end at the stop; whatever is still open after the grace is cut.
    let grace = {
        let rx = stop_rx.clone();
        async move {
            stopped(rx).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let served: std::io::Result<()> = match &config.listen {
        Listen::Off => {
            println!("imprint-agent {instance}: running (no local endpoint)");
            stopped(stop_rx.clone()).await;
            Ok(())
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("listen {addr}: {e}"))?;
            let at = listener.local_addr().map_err(|e| e.to_string())?;
            println!("imprint-agent {instance}: listening on http://{at}");
            tokio::select! {
                r = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx.clone())) => r,
                () = grace => Ok(()),
            }
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|e| format!("listen unix:{}: {e}", path.display()))?;
            println!("imprint-agent {instance}: listening on unix:{}", path.display());
            tokio::select! {
                r = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx.clone())) => r,
                () = grace => Ok(()),
            }
        }
    };
    client.shutdown().await;
    served.map_err(|e| format!("local endpoint: {e}"))
}
