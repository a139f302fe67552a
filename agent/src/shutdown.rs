//! The agent's stop signal: a `watch` flag set once on SIGTERM/SIGINT, which the local
//! endpoint, the relay and the run loop all wait on (one definition, below all of them).
use tokio::sync::watch;

/// Resolves once `rx` says the agent stops.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
