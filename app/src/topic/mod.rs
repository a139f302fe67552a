//! The pages of one topic, one file each, and what they all share here: the header
//! (`head_of`, `TopicHead`, `TopicHeader`, the tabs) and the view rows of versions and pins
//! built from the service's model. Pages: `versions` (`/topics/:name`: the timeline, pins
//! and scopes), `publish`, `drafts` (change control), `matrix`, `rollouts`, `consumers`, `settings` and `version`
//! (`/topics/:name/versions/:n`); their routes are in `lib.rs`.
use crate::common::{short_time, Flash};
use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

mod checks;
mod consumers;
mod copies;
mod drafts;
mod matrix;
mod plaintext_reads;
mod publish;
mod rollouts;
mod settings;
mod version;
mod versions;

pub use consumers::ConsumersPageView;
pub use drafts::DraftsPageView;
pub use matrix::MatrixPage;
pub use publish::PublishPage;
pub use rollouts::RolloutsPageView;
pub use settings::SettingsPage;
pub use version::VersionPage;
pub use versions::TopicPageView;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinView {
    pub selector: String,
    pub version: u64,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
    /// When the pin stops applying by itself, if it does.
    pub expires_at: Option<String>,
    /// Set long ago (more than `imprint_domain::STALE_PIN_DAYS`) and never expiring: worth a second look.
    pub stale: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScopeView {
    pub selector: String,
    pub added_at: String,
    pub added_by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRow {
    pub version: u64,
    pub created_at: String,
    pub created_by: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub message: String,
    pub metadata: Vec<(String, String)>,
    pub scopes: Vec<ScopeView>,
    pub purged: bool,
    /// Selectors of active pins holding consumers on this version.
    pub pinned_by: Vec<String>,
    /// `inline` (in Postgres) or `object` (the object store).
    pub storage: String,
    pub object_url: Option<String>,
    /// Published as a pointer to an existing object (never deleted by Imprint).
    pub object_registered: bool,
    /// Sealed at rest in storage (docs/encryption.md).
    #[serde(default)]
    pub sealed: bool,
    /// Rejected by the topic's checks and kept unreleased (`keep_rejected`): each failed
    /// check as `type: message`.
    #[serde(default)]
    pub rejected: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicHead {
    pub name: String,
    pub description: String,
    pub owner: String,
    pub latest_version: u64,
    pub last_published_at: Option<String>,
    pub rollout_state: Option<String>,
    pub can_write: bool,
    /// End-to-end encrypted for this many recipients (docs/encryption.md).
    #[serde(default)]
    pub encrypted_for: Option<usize>,
    /// Encrypted at rest under this key id of the server's key provider.
    #[serde(default)]
    pub at_rest_key: Option<String>,
}

#[cfg(feature = "ssr")]
pub fn head_of(t: &imprint_service::model::Topic, caller: &imprint_service::Caller) -> TopicHead {
    TopicHead {
        name: t.name.clone(),
        description: t.description.clone(),
        owner: t.owner.clone(),
        latest_version: t.latest_version,
        last_published_at: t.last_published_at.map(|d| d.to_rfc3339()),
        rollout_state: t.rollout_state.clone(),
        can_write: caller.require_write(&t.name, &t.owner).is_ok(),
        encrypted_for: t.encryption.as_ref().filter(|e| e.end_to_end()).map(|e| e.recipients.len()),
        at_rest_key: t.encryption.as_ref().and_then(|e| e.at_rest_key().map(str::to_owned)),
    }
}

/// A pin as shown, stale or not as of `now` (the service's clock: `Imprint::now`).
#[cfg(feature = "ssr")]
pub fn pin_of(p: imprint_service::model::Pin, now: chrono::DateTime<chrono::Utc>) -> PinView {
    PinView {
        selector: p.selector.to_string(),
        version: p.version,
        reason: p.reason,
        created_by: p.created_by,
        created_at: p.created_at.to_rfc3339(),
        expires_at: p.expires_at.map(|e| e.to_rfc3339()),
        stale: imprint_domain::pin_is_stale(p.created_at, p.expires_at, now),
    }
}

#[cfg(feature = "ssr")]
pub fn version_of(v: imprint_service::model::Version, pins: &[PinView]) -> VersionRow {
    VersionRow {
        version: v.version,
        created_at: v.created_at.to_rfc3339(),
        created_by: v.created_by,
        size: v.size,
        sha256: v.sha256,
        content_type: v.content_type,
        message: v.message,
        metadata: v.metadata.into_iter().collect(),
        scopes: v
            .scopes
            .into_iter()
            .map(|s| ScopeView {
                selector: s.selector.to_string(),
                added_at: s.added_at.to_rfc3339(),
                added_by: s.added_by,
            })
            .collect(),
        purged: v.purged,
        pinned_by: pins.iter().filter(|p| p.version == v.version).map(|p| p.selector.clone()).collect(),
        storage: v.storage,
        object_url: v.object_url,
        object_registered: v.object_registered,
        sealed: v.sealed,
        rejected: v.rejected.map(|r| r.reasons),
    }
}

/// The tabs of a topic.
#[component]
pub fn TopicTabs(name: String, active: &'static str) -> impl IntoView {
    let tabs = [
        ("versions", ""),
        ("publish", "/publish"),
        ("drafts", "/drafts"),
        ("matrix", "/matrix"),
        ("rollouts", "/rollouts"),
        ("consumers", "/consumers"),
        ("settings", "/settings"),
    ];
    view! {
        <nav class="tabs" aria-label="Topic">
            {tabs.into_iter().map(|(label, suffix)| {
                let href = format!("/topics/{name}{suffix}");
                let class = if label == active { "tab active" } else { "tab" };
                view! { <a href=href class=class>{label}</a> }
            }).collect_view()}
        </nav>
    }
}

#[component]
pub fn TopicHeader(head: TopicHead, active: &'static str) -> impl IntoView {
    let name = head.name.clone();
    view! {
        <Title text=head.name.clone()/>
        <section class="page-head topic-head">
            <div>
                <h1 class="topic-name">{head.name.clone()}</h1>
                <p class="muted">{head.description.clone()}</p>
            </div>
            <dl class="facts">
                <div><dt>"Owner"</dt><dd title="the team whose members and tokens may change this topic">{if head.owner.is_empty() { "no team (admins only)".to_owned() } else { head.owner.clone() }}</dd></div>
                <div><dt>"Latest"</dt><dd class="latest">{if head.latest_version == 0 { "—".into() } else { format!("v{}", head.latest_version) }}</dd></div>
                <div><dt>"Last publish"</dt><dd>{head.last_published_at.as_deref().map(short_time).unwrap_or_else(|| "never".into())}</dd></div>
                {head.rollout_state.clone().map(|s| view! { <div><dt>"Rollout"</dt><dd><span class=format!("badge rollout-{s}")>{s.clone()}</span></dd></div> })}
                {head.encrypted_for.map(|n| view! { <div><dt>"Encryption"</dt><dd><span class="badge encrypted" title="payloads are age files the server cannot read; consumers decrypt them (docs/encryption.md)">{format!("end to end, {n} recipient{}", if n == 1 { "" } else { "s" })}</span></dd></div> })}
                {head.at_rest_key.clone().map(|k| view! { <div><dt>"Encryption"</dt><dd><span class="badge encrypted" title="the server seals what it stores under this key of its key provider and serves plaintext to allowed readers; views of payloads are audited (docs/encryption.md)">{format!("at rest, key {k}")}</span></dd></div> })}
            </dl>
        </section>
        {(!head.can_write).then(|| view! {
            <p class="flash readonly">{format!("Read only: changes to this topic need membership of team “{}” (or admin).", head.owner)}</p>
        })}
        <TopicTabs name active/>
        <Flash/>
    }
}
