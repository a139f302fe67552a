//! Keeping the serving state current: LISTEN for change notifications and reload what
//! changed, with a periodic catch-up behind it.
use super::state::ServingState;
use crate::store::CHANGE_CHANNEL;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::watch;

/// Keeps the state current: LISTEN for changes and reload what changed; periodically
/// (and after every reconnect: notifications may have been missed) compare change
/// sequences and reload the topics that differ.
pub async fn follow_changes(
    state: Arc<ServingState>,
    pool: PgPool,
    full_every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(CHANGE_CHANNEL).await {
                Ok(()) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    sleep_or_stop(&mut stop, backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to Postgres to follow changes; serving from memory, retrying");
                sleep_or_stop(&mut stop, backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        // Listening now: catch up with anything missed before.
        if let Err(e) = state.catch_up(&pool).await {
            tracing::warn!(error = %e, "full reload failed; retrying");
            sleep_or_stop(&mut stop, backoff).await;
            continue;
        }
        backoff = std::time::Duration::from_millis(200);
        tracing::info!(topics = state.topic_count(), "serving state loaded; following changes");
        let mut tick = tokio::time::interval(full_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    match state.catch_up(&pool).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(topics = n, "the safety net reloaded topics whose change was not notified"),
                        Err(e) => tracing::warn!(error = %e, "periodic catch-up failed"),
                    }
                }
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        // This one and whatever else has arrived meanwhile: one reload for
                        // the lot, skipping changes this server holds already (its own
                        // writes were applied before they were acknowledged).
                        let mut changed = vec![parse_change(n.payload())];
                        while let Some(more) = listener.next_buffered() {
                            changed.push(parse_change(more.payload()));
                        }
                        metrics::counter!("imprint_notifications_total").increment(changed.len() as u64);
                        let result = if changed.iter().any(Option::is_none) {
                            state.reload(&pool, None).await
                        } else {
                            let mut ids: Vec<i64> = changed
                                .into_iter()
                                .flatten()
                                .filter(|(id, seq)| !state.holds(*id, *seq))
                                .map(|(id, _)| id)
                                .collect();
                            ids.sort_unstable();
                            ids.dedup();
                            if ids.is_empty() { Ok(()) } else { state.reload_ids(&pool, Some(&ids)).await }
                        };
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "reload after notification failed");
                        }
                    }
                    // Connection lost: notifications in between are lost, so start over.
                    Ok(None) | Err(_) => {
                        tracing::warn!("lost the LISTEN connection; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// A change notification: `<topic id>:<change seq>` (or a bare id from an older server).
fn parse_change(payload: &str) -> Option<(i64, i64)> {
    match payload.split_once(':') {
        Some((id, seq)) => Some((id.parse().ok()?, seq.parse().ok()?)),
        None => Some((payload.parse().ok()?, i64::MAX)),
    }
}

async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: std::time::Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
