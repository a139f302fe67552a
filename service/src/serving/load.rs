//! Reading from Postgres what the serving state holds: each topic's present (best live
//! version per selector, active pins) with its servable versions and small payloads, and
//! the resolution histories of a snapshot.
use super::served::{ApolloServed, OfrepServed, ServedVersion, ServingTopic, SpringServed, INLINE_POLL_BYTES};
use crate::store;
use bytes::Bytes;
use imprint_domain::{CurrentIndex, PinEntry, ScopeEntry, Selector, TopicHistory, TopicName, VersionEntry};
use sqlx::PgConnection;
use std::collections::HashMap;
use std::sync::Arc;

/// The resolution history of each topic of a snapshot.
pub(crate) fn histories(snap: &store::serving::Snapshot) -> HashMap<i64, TopicHistory> {
    let mut histories: HashMap<i64, TopicHistory> =
        snap.topics.iter().map(|t| (t.id, TopicHistory::default())).collect();
    for row in &snap.versions {
        let v = row.version as u64;
        if let Some(h) = histories.get_mut(&row.topic_id) {
            h.versions.insert(v, VersionEntry { version: v, created_at: row.created_at, purged_at: row.purged_at });
        }
    }
    for s in &snap.scopes {
        if let (Some(h), Ok(selector)) = (histories.get_mut(&s.topic_id), Selector::parse(&s.selector_key)) {
            h.scopes.push(ScopeEntry { version: s.version as u64, selector, added_at: s.added_at });
        }
    }
    add_pins(&mut histories, &snap.pins);
    histories
}

/// Adds pin rows to the histories of their topics (rows of other topics are ignored).
fn add_pins(histories: &mut HashMap<i64, TopicHistory>, pins: &[store::serving::ServedPinRow]) {
    for p in pins {
        if let (Some(h), Ok(selector)) = (histories.get_mut(&p.topic_id), Selector::parse(&p.selector_key)) {
            h.pins.push(PinEntry {
                id: p.id,
                selector,
                version: p.version as u64,
                created_at: p.created_at,
                removed_at: p.removed_at,
            });
        }
    }
}

pub(super) async fn load(
    conn: &mut PgConnection,
    ids: Option<&[i64]>,
    cache: &HashMap<(i64, u64), (Bytes, bool)>,
    (regions, region_urls): (&[String], &crate::regions::PublicUrls),
    keys: Option<&crate::keys::Keys>,
) -> crate::Result<Vec<ServingTopic>> {
    let now = store::serving::current(conn, ids).await?;
    // Per topic, a history of just the present: each selector's best live version and
    // the active pins. The index built from it answers exactly as the full history would.
    let mut present: HashMap<i64, TopicHistory> = now.topics.iter().map(|t| (t.id, TopicHistory::default())).collect();
    for b in &now.best {
        if let (Some(h), Ok(selector)) = (present.get_mut(&b.topic_id), Selector::parse(&b.selector_key)) {
            let v = b.version as u64;
            h.versions.insert(v, VersionEntry { version: v, created_at: b.added_at, purged_at: None });
            h.scopes.push(ScopeEntry { version: v, selector, added_at: b.added_at });
        }
    }
    add_pins(&mut present, &now.pins);
    let indexes: HashMap<i64, CurrentIndex> = present.iter().map(|(id, h)| (*id, h.current_index())).collect();
    // The rows of the versions resolution can return, and the payloads still needed.
    let (tids, vs): (Vec<i64>, Vec<i64>) =
        indexes.iter().flat_map(|(id, ix)| ix.versions().into_iter().map(move |v| (*id, v as i64))).unzip();
    let mut meta: HashMap<(i64, u64), store::serving::ServedVersionRow> = HashMap::new();
    for chunk in (0..tids.len()).step_by(10_000) {
        let end = (chunk + 10_000).min(tids.len());
        for row in store::serving::version_rows(conn, &tids[chunk..end], &vs[chunk..end]).await? {
            meta.insert((row.topic_id, row.version as u64), row);
        }
    }
    let wanted: Vec<(i64, i64)> = meta
        .values()
        .filter(|r| {
            r.size as u64 <= INLINE_POLL_BYTES
                && r.purged_at.is_none()
                && !cache.contains_key(&(r.topic_id, r.version as u64))
        })
        .map(|r| (r.topic_id, r.version))
        .collect();
    let mut payloads: HashMap<(i64, u64), (Bytes, bool)> = HashMap::new();
    // Once the key provider is found down, this load asks it nothing more (each call could
    // wait for its timeout): the rest of the sealed payloads stay unheld until a later load.
    let mut provider_down = false;
    for chunk in wanted.chunks(10_000) {
        let (t, v): (Vec<i64>, Vec<i64>) = chunk.iter().copied().unzip();
        for (t, v, d, sealed) in store::serving::inline_payloads(conn, &t, &v).await? {
            // At rest: opened once here and held in memory as plaintext, so polls keep
            // serving while the key provider is down. One that cannot be opened now is
            // left out (polls point to the download, which answers why).
            let d = Bytes::from(d);
            let plain = match (sealed, keys) {
                (false, _) => Some(d),
                (true, Some(_)) if provider_down => None,
                (true, Some(keys)) => match keys.open(&d).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        provider_down =
                            matches!(e, crate::keys::AtRestError::Key(crate::keys::KeyError::Unavailable(_)));
                        tracing::warn!(topic_id = t, version = v, error = %e, "a sealed payload is not held: it did not open");
                        None
                    }
                },
                (true, None) => None,
            };
            if let Some(p) = plain {
                payloads.insert((t, v as u64), (p, sealed));
            }
        }
    }

    // With several regions: which regions hold each version's object (docs/regions.md).
    let mut holding: HashMap<(i64, u64), Vec<String>> = HashMap::new();
    if !regions.is_empty() {
        for chunk in (0..tids.len()).step_by(10_000) {
            let end = (chunk + 10_000).min(tids.len());
            for (t, v, r) in store::copies::holding(conn, &tids[chunk..end], &vs[chunk..end]).await? {
                holding.entry((t, v as u64)).or_default().push(r);
            }
        }
    }
    let mut out = Vec::with_capacity(now.topics.len());
    let mut indexes = indexes;
    for t in now.topics {
        let Ok(name) = TopicName::parse(&t.name) else { continue };
        let index = indexes.remove(&t.id).unwrap_or_default();
        let mut served = HashMap::new();
        for v in index.versions() {
            let Some(row) = meta.remove(&(t.id, v)) else { continue };
            let payload = cache.get(&(t.id, v)).cloned().or_else(|| payloads.remove(&(t.id, v)));
            let sealed = payload.as_ref().is_some_and(|p| p.1);
            let payload = payload.map(|p| p.0);
            served.insert(
                v,
                Arc::new(
                    ServedVersion::new(
                        name.clone(),
                        v,
                        row.content_type,
                        row.size as u64,
                        row.sha256,
                        row.metadata.0,
                        row.created_at,
                        payload,
                    )
                    .with_sealed(sealed)
                    .with_regions(
                        holding
                            .remove(&(t.id, v))
                            .map(|h| crate::regions::order_for(regions, &h, None))
                            .unwrap_or_default(),
                        region_urls.clone(),
                    ),
                ),
            );
        }
        let apollo = match (t.apollo_app_id, t.apollo_namespace) {
            (Some(app_id), Some(namespace)) => Some(ApolloServed { app_id, namespace, secret: t.apollo_secret }),
            _ => None,
        };
        out.push(ServingTopic {
            id: t.id,
            name,
            change_seq: t.change_seq,
            owner: t.owner,
            restricted: t.restricted,
            apollo,
            ofrep: t.ofrep_flag_key.map(|flag_key| OfrepServed { flag_key, field: t.ofrep_field }),
            spring: t.spring_application.map(|application| SpringServed { application, profile: t.spring_profile }),
            has_live: t.has_live,
            index,
            served,
        });
    }
    Ok(out)
}
