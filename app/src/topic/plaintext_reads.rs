//! The plaintext-read audit of a topic encrypted at rest (docs/encryption.md, "Plaintext-read
//! audit"): a card on the topic's consumers page listing who read which version's plaintext,
//! how often, first and last — for the topic's publishers and admins only (the service
//! refuses anyone else; the page asks only for them). Kept apart from the consumers page
//! (`consumers.rs`), which loads the rows with `plaintext_reads_of` into its page data.
use crate::common::short_time;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// One (reader, version) row as the card shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaintextReadView {
    pub reader: String,
    pub version: u64,
    pub reads: u64,
    pub first_at: String,
    pub last_at: String,
}

/// The audit of `name` when it is encrypted at rest and the caller may write it (`None`
/// otherwise: the card is not shown).
#[cfg(feature = "ssr")]
pub async fn plaintext_reads_of(
    imprint: &imprint_service::Imprint,
    caller: &imprint_service::Caller,
    name: &imprint_domain::TopicName,
    head: &super::TopicHead,
) -> Result<Option<Vec<PlaintextReadView>>, imprint_service::Error> {
    if head.at_rest_key.is_none() || !head.can_write {
        return Ok(None);
    }
    let rows = imprint.plaintext_read_audit(caller, name).await?;
    Ok(Some(
        rows.into_iter()
            .map(|r| PlaintextReadView {
                reader: r.reader,
                version: r.version,
                reads: r.reads,
                first_at: r.first_at.to_rfc3339(),
                last_at: r.last_at.to_rfc3339(),
            })
            .collect(),
    ))
}

/// The "Plaintext reads" card.
#[component]
pub fn PlaintextReadAudit(rows: Vec<PlaintextReadView>) -> impl IntoView {
    let total: u64 = rows.iter().map(|r| r.reads).sum();
    view! {
        <section class="card plaintext-reads" aria-label="Plaintext reads">
            <h2>"Plaintext reads"</h2>
            <p class="muted small">{format!(
                "This topic is sealed at rest: every read that handed out plaintext (polls, downloads, /latest, console views, Apollo, OpenFeature and Spring reads) is counted per reader and version. {total} read(s) in all; newest first, at most 1000 rows. Shown to the topic's publishers and admins only."
            )}</p>
            {if rows.is_empty() {
                view! { <p class="muted">"Nobody has read this topic's plaintext yet."</p> }.into_any()
            } else {
                view! {
                    <table class="plaintext-reads-table">
                        <thead><tr><th>"Reader"</th><th>"Version"</th><th class="num">"Reads"</th><th>"First"</th><th>"Last"</th></tr></thead>
                        <tbody>
                            {rows.into_iter().map(|r| view! {
                                <tr class="plaintext-read" data-reader=r.reader.clone() data-version=r.version.to_string()>
                                    <td><code>{r.reader.clone()}</code></td>
                                    <td>{format!("v{}", r.version)}</td>
                                    <td class="num reads">{r.reads}</td>
                                    <td class="nowrap">{short_time(&r.first_at)}</td>
                                    <td class="nowrap">{short_time(&r.last_at)}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            }}
        </section>
    }
}
