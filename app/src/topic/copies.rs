//! Where one version's object is (docs/regions.md): a card on the version page listing each
//! region's copy, its state and how the worker's copying goes. Kept apart from the version
//! page (`version.rs`), which loads the rows with `copies_of` (into `VersionDetail.copies`, so
//! hydration sees the same data) and places `<VersionCopies>`.
use crate::common::short_time;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// One region's copy as the card shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyView {
    pub region: String,
    pub home: bool,
    /// `done` or `pending`.
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub updated_at: String,
    /// A registered object's URL in this region (the publisher's object; stored copies
    /// have none: their keys are Imprint's).
    pub url: Option<String>,
}

/// The copies of version `n` of `name` (the same rights as the version): none for an
/// inline payload or with one region.
#[cfg(feature = "ssr")]
pub async fn copies_of(
    imprint: &imprint_service::Imprint,
    caller: &imprint_service::Caller,
    name: &imprint_domain::TopicName,
    n: imprint_domain::VersionNumber,
) -> Result<Vec<CopyView>, imprint_service::Error> {
    Ok(imprint
        .version_copies(caller, name, n)
        .await?
        .into_iter()
        .map(|c| CopyView {
            region: c.region,
            home: c.home,
            state: c.state,
            attempts: c.attempts,
            last_error: c.last_error,
            updated_at: c.updated_at.to_rfc3339(),
            url: c.url,
        })
        .collect())
}

/// The "Copies" card: nothing at all without copy rows (one region, an inline payload, a
/// version from before regions).
#[component]
pub fn VersionCopies(rows: Vec<CopyView>) -> impl IntoView {
    if rows.is_empty() {
        return ().into_any();
    }
    let done = rows.iter().filter(|c| c.state == "done").count();
    let total = rows.len();
    let registered = rows.iter().any(|c| c.url.is_some());
    let note = if registered {
        format!("Held by {done} of {total} regions. A registered object is the publisher's: each region's URL is the one it named, never copied.")
    } else {
        format!("Held by {done} of {total} regions. Pending copies are retried by the worker until done.")
    };
    view! {
        <section class="card copies" aria-label="Copies">
            <h2>"Copies"</h2>
            <p class="muted small">{note}</p>
            <table class="copies-table">
                <thead><tr><th>"Region"</th><th>"State"</th><th>"Attempts"</th><th>"Last error"</th><th>"Updated"</th></tr></thead>
                <tbody>
                    {rows.into_iter().map(|c| {
                        let error_class = if c.last_error.is_some() { "error-text" } else { "muted" };
                        view! {
                            <tr class=format!("copy copy-{}", c.state) data-region=c.region.clone()>
                                <td>
                                    <code>{c.region.clone()}</code>{c.home.then(|| view! { " " <span class="badge home">"home"</span> })}
                                    {c.url.clone().map(|u| view! { <div class="copy-url small"><code>{u}</code></div> })}
                                </td>
                                <td><span class=format!("badge copy-{}", c.state)>{c.state.clone()}</span></td>
                                <td>{c.attempts}</td>
                                <td class=error_class>{c.last_error.clone().unwrap_or_else(|| "—".to_owned())}</td>
                                <td>{short_time(&c.updated_at)}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
    .into_any()
}
