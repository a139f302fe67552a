//! One version: its payload shown readably, and a diff against the previous or any version.
use super::copies::{CopyView, VersionCopies};
use super::{TopicHead, TopicHeader, VersionRow};
use crate::common::{error_text, human_size, short_time};
use imprint_domain::{DiffLine, Rendered};
use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionDetail {
    pub head: TopicHead,
    pub version: VersionRow,
    pub rendered: Option<Rendered>,
    /// The page shows at most the first `PREVIEW_BYTES` of a payload.
    pub truncated: bool,
    pub against: Option<u64>,
    /// The diff against `against`; None when there is nothing to compare.
    pub diff: Option<Result<Vec<DiffLine>, String>>,
    pub others: Vec<u64>,
    /// An end-to-end encrypted payload: (X25519 recipients, its age header as text). Never
    /// previewed or compared: the server holds ciphertext only.
    #[serde(default)]
    pub encrypted: Option<(usize, String)>,
    /// Its pre-release check results (docs/validation.md), when the topic had checks.
    pub checks: Option<ChecksView>,
    /// Where its object is, region by region (docs/regions.md; `copies.rs`).
    #[serde(default)]
    pub copies: Vec<CopyView>,
    /// Its rollouts' consumer gates, analyses and automatic evidence (`checks.rs`).
    #[serde(default)]
    pub rollouts: Vec<super::checks::RolloutChecks>,
}

/// A version's check results as the page shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChecksView {
    pub results: Vec<imprint_domain::checks::CheckResult>,
    pub forced_by: Option<String>,
    pub force_reason: Option<String>,
}

/// Above this many lines either side a diff is "too large" (the page offers downloads).
#[cfg(feature = "ssr")]
const MAX_DIFF_LINES: usize = 2000;
/// A page never loads more of a payload than this (large ones are downloaded instead).
pub const PREVIEW_BYTES: u64 = 64 * 1024;

#[server(prefix = "/console/fn")]
pub async fn load_version(name: String, n: u64, against: Option<u64>) -> Result<VersionDetail, ServerFnError> {
    use crate::ssr::{imprint, load, require_user, topic_name};
    use imprint_domain::render_payload;
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let name = load(topic_name(&name))?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    let pins: Vec<super::PinView> = load(imprint.pins(&caller, &name, false, Some(500), None).await)?
        .items
        .into_iter()
        .map(|p| super::pin_of(p, imprint.now()))
        .collect();
    let number = imprint_domain::VersionNumber::new(n).map_err(|e| ServerFnError::new(e.to_string()))?;
    let v = load(imprint.version(&caller, &name, number).await)?;
    let copies = load(super::copies::copies_of(&imprint, &caller, &name, number).await)?;
    let checks = v.checks.clone().map(|c| ChecksView {
        results: c.results,
        forced_by: c.forced_by,
        force_reason: c.force_reason,
    });
    let others: Vec<u64> = load(imprint.list_versions(&caller, &name, Some(500), None).await)?
        .items
        .iter()
        .filter(|o| !o.purged && o.rejected.is_none() && o.version != n)
        .map(|o| o.version)
        .collect();
    // At most the first PREVIEW_BYTES of a payload: (rendered, whole payload shown).
    let payload = |k: imprint_domain::VersionNumber| {
        let imprint = imprint.clone();
        let name = name.clone();
        let caller = caller.clone();
        async move {
            imprint
                .version_preview(&caller, &name, k, PREVIEW_BYTES)
                .await
                .map(|(bytes, size)| (render_payload(&bytes, 512), bytes.len() as u64 == size))
        }
    };
    // An end-to-end encrypted payload shows its header, never a preview or a diff.
    let encrypted = if topic.encryption.as_ref().is_some_and(|e| e.end_to_end()) && !v.purged {
        let (bytes, size) = load(imprint.version_preview(&caller, &name, number, PREVIEW_BYTES).await)?;
        let complete = bytes.len() as u64 == size;
        match imprint_domain::encryption::parse_header(&bytes, complete) {
            Ok(Some(h)) => Some((h.x25519, String::from_utf8_lossy(&bytes[..h.len]).into_owned())),
            _ => None,
        }
    } else {
        None
    };
    // Rejected and kept (`keep_rejected`): never served, so neither previewed nor compared;
    // the page explains the rejection.
    if v.rejected.is_some() {
        return Ok(VersionDetail {
            head: super::head_of(&topic, &caller),
            version: super::version_of(v, &pins),
            rendered: None,
            truncated: false,
            against: None,
            diff: None,
            others,
            encrypted: None,
            checks,
            copies,
            rollouts: Vec::new(),
        });
    }
    let rollouts = super::rollouts::rollout_rows(&imprint, &caller, &name, Some(n))
        .await?
        .into_iter()
        .map(|r| super::checks::RolloutChecks {
            id: r.id,
            state: r.state,
            rolled_back: r.rolled_back,
            pause_reason: r.pause_reason,
            end_reason: r.end_reason,
            stages: r
                .stages
                .into_iter()
                .map(|s| super::checks::StageCheck {
                    selector: s.selector,
                    state: s.state,
                    gate: s.gate,
                    health: s.health,
                })
                .collect(),
            analysis: r.analysis,
            evidence: r.evidence,
        })
        .collect();
    if encrypted.is_some() {
        return Ok(VersionDetail {
            head: super::head_of(&topic, &caller),
            version: super::version_of(v, &pins),
            rendered: None,
            truncated: false,
            against: None,
            diff: None,
            others,
            encrypted,
            checks,
            copies,
            rollouts,
        });
    }
    let (rendered, truncated) = if v.purged {
        (None, false)
    } else {
        let (r, whole) = load(payload(number).await)?;
        (Some(r), !whole)
    };
    // Default comparison: the previous live version.
    let against = against.or_else(|| others.iter().copied().filter(|o| *o < n).max());
    let diff = match (against, &rendered) {
        (Some(_), Some(_)) if truncated => Some(Err(format!(
            "payloads over {} are not compared in the console; download them",
            human_size(PREVIEW_BYTES)
        ))),
        (Some(a), Some(r)) => Some(
            match match imprint_domain::VersionNumber::new(a) {
                Ok(a) => payload(a).await,
                Err(e) => Err(imprint_service::Error::invalid(e.to_string())),
            } {
                Err(e) => Err(e.to_string()),
                Ok((_, false)) => Err(format!(
                    "payloads over {} are not compared in the console; download them",
                    human_size(PREVIEW_BYTES)
                )),
                Ok((other, true)) => match (other.text(), r.text()) {
                    (Some(old), Some(new)) => {
                        // Quadratic work: on a blocking thread, never on the async workers.
                        let (old, new) = (old.to_owned(), new.to_owned());
                        load(imprint_service::consumers::diff_off_thread(old, new, MAX_DIFF_LINES).await)?
                        .ok_or_else(|| {
                            format!("too large to diff (more than {MAX_DIFF_LINES} lines, or too many changes); download them")
                        })
                    }
                    _ => Err("binary payloads cannot be compared line by line".to_owned()),
                },
            },
        ),
        _ => None,
    };
    Ok(VersionDetail {
        head: super::head_of(&topic, &caller),
        version: super::version_of(v, &pins),
        rendered,
        truncated,
        against,
        diff,
        others,
        encrypted: None,
        checks,
        copies,
        rollouts,
    })
}

#[component]
pub fn VersionPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let page = Resource::new(
        move || {
            (
                params.read().get("name").unwrap_or_default(),
                params.read().get("n").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0),
                query.read().get("against").and_then(|a| a.parse::<u64>().ok()),
            )
        },
        |(name, n, against)| load_version(name, n, against),
    );
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(d) => {
                        let v = d.version.clone();
                        let base = format!("/topics/{}/versions/{}", d.head.name, v.version);
                        view! {
                            <TopicHeader head=d.head.clone() active="versions"/>
                            <section class="card version-detail">
                                <h2>{format!("Version {}", v.version)}
                                    {v.purged.then(|| view! { <span class="badge purged">"purged"</span> })}
                                    {v.rejected.is_some().then(|| view! { " " <span class="badge rejected">"rejected"</span> })}
                                    {v.pinned_by.iter().map(|s| view! { <span class="badge pin">{format!("pinned: {s}")}</span> }).collect_view()}
                                </h2>
                                <dl class="grid">
                                    <dt>"Published"</dt><dd>{format!("{} by {}", short_time(&v.created_at), v.created_by)}</dd>
                                    <dt>"Size"</dt><dd>{human_size(v.size)}</dd>
                                    <dt>"Stored"</dt><dd class="storage">{match (v.storage.as_str(), v.object_url.clone()) {
                                        ("object", Some(url)) => view! {
                                            "in the object store" {v.object_registered.then_some(" (registered; Imprint never deletes it)")}
                                            <br/><code class="small">{url}</code>
                                        }.into_any(),
                                        _ => view! { "inline (in Postgres)" }.into_any(),
                                    }}{v.sealed.then_some(", sealed at rest (this view is counted in the plaintext-read audit)")}</dd>
                                    <dt>"Content type"</dt><dd>{v.content_type.clone()}</dd>
                                    <dt>"SHA-256"</dt><dd><code class="small">{v.sha256.clone()}</code></dd>
                                    <dt>"Message"</dt><dd>{if v.message.is_empty() { "—".to_owned() } else { v.message.clone() }}</dd>
                                    <dt>"Metadata"</dt><dd>{if v.metadata.is_empty() { "—".to_owned() } else { v.metadata.iter().map(|(k, x)| format!("{k}={x}")).collect::<Vec<_>>().join(", ") }}</dd>
                                    <dt>"Scopes"</dt><dd>{if v.scopes.is_empty() { "none".to_owned() } else { v.scopes.iter().map(|s| s.selector.clone()).collect::<Vec<_>>().join(", ") }}</dd>
                                </dl>
                            </section>
                            {v.rejected.clone().map(|reasons| view! { <super::checks::RejectedBanner reasons/> })}
                            <VersionCopies rows=d.copies.clone()/>
                            {d.checks.clone().map(|c| view! {
                                <section class="card checks" aria-label="Checks">
                                    <h2>"Checks before release"</h2>
                                    {c.forced_by.clone().map(|who| view! {
                                        <p class="flash error forced" role="status">
                                            {format!("Published despite failing checks by {who}: {}", c.force_reason.clone().unwrap_or_default())}
                                        </p>
                                    })}
                                    <table class="checks-table">
                                        <thead><tr><th>"#"</th><th>"Check"</th><th>"Result"</th><th>"On failure"</th><th>"Detail"</th></tr></thead>
                                        <tbody>
                                            {c.results.iter().map(|r| {
                                                let status = format!("{:?}", r.status).to_lowercase();
                                                let on_fail = format!("{:?}", r.on_fail).to_lowercase();
                                                view! {
                                                    <tr class=format!("check check-{status}")>
                                                        <td>{r.index + 1}</td>
                                                        <td><code>{r.kind.as_str()}</code></td>
                                                        <td><span class=format!("badge check-{status}")>{status.clone()}</span></td>
                                                        <td>{on_fail}</td>
                                                        <td>{r.message.clone()}</td>
                                                    </tr>
                                                }
                                            }).collect_view()}
                                        </tbody>
                                    </table>
                                </section>
                            })}
                            <super::checks::VersionRolloutChecks topic=d.head.name.clone() rollouts=d.rollouts.clone()/>
                            <section class="card">
                                <h2>"Payload"</h2>
                                {(!v.purged && v.rejected.is_none()).then(|| view! {
                                    <p><a class="button" href=format!("/console/download/{}/{}", d.head.name, v.version) download="">
                                        {format!("Download ({})", human_size(v.size))}</a></p>
                                })}
                                {d.truncated.then(|| view! {
                                    <p class="muted small preview-note">{format!("Showing the first {} of {}.", human_size(PREVIEW_BYTES), human_size(v.size))}</p>
                                })}
                                {match (d.encrypted.clone(), d.rendered.clone()) {
                                    (Some((n, header)), _) => view! {
                                        <p class="encrypted-note">{format!("End-to-end encrypted for {n} recipient{} (age). The server holds only ciphertext: consumers decrypt it with their identity; there is no preview or diff.", if n == 1 { "" } else { "s" })}</p>
                                        <p class="muted small">"Its age header:"</p>
                                        <pre class="payload age-header">{header}</pre>
                                    }.into_any(),
                                    (None, None) if v.rejected.is_some() && !v.purged => view! { <p class="muted rejected-payload">{format!("Kept but never served: a rejected version's payload is not shown or downloadable ({}, SHA-256 above).", human_size(v.size))}</p> }.into_any(),
                                    (None, None) => view! { <p class="muted">"The payload was deleted by retention."</p> }.into_any(),
                                    (None, Some(Rendered::Json(s))) => view! { <pre class="payload json">{s}</pre> }.into_any(),
                                    (None, Some(Rendered::Text(s))) => view! { <pre class="payload text">{s}</pre> }.into_any(),
                                    (None, Some(Rendered::Binary { size, hex_preview })) => view! {
                                        <p class="muted">{format!("Binary, {}; first bytes:", human_size(size))}</p>
                                        <pre class="payload hex">{hex_preview}</pre>
                                    }.into_any(),
                                }}
                            </section>
                            <section class="card diff-card">
                                <h2>"Compare"</h2>
                                {v.rejected.is_none().then(|| view! {
                                <form method="get" action=base.clone() class="inline">
                                    <label>"Against version"
                                        <select name="against">
                                            {d.others.iter().map(|o| view! { <option value=o.to_string() selected=Some(*o) == d.against>{format!("v{o}")}</option> }).collect_view()}
                                        </select>
                                    </label>
                                    <button type="submit">"Show diff"</button>
                                </form>
                                })}
                                {match (d.against, d.diff.clone()) {
                                    _ if d.encrypted.is_some() => view! { <p class="muted">"Encrypted payloads are not compared: the server cannot read them."</p> }.into_any(),
                                    _ if v.rejected.is_some() => view! { <p class="muted">"A rejected version is not compared: it is never served."</p> }.into_any(),
                                    (None, _) | (_, None) => view! { <p class="muted">"No other version to compare with."</p> }.into_any(),
                                    (Some(a), Some(Err(e))) => view! {
                                        <p class="muted diff-refused">{format!("v{a} → v{}: {e}", v.version)}</p>
                                        <p class="diff-downloads">
                                            <a class="button" href=format!("/console/download/{}/{a}", d.head.name) download="">{format!("Download v{a}")}</a>
                                            " "
                                            <a class="button" href=format!("/console/download/{}/{}", d.head.name, v.version) download="">{format!("Download v{}", v.version)}</a>
                                        </p>
                                    }.into_any(),
                                    (Some(a), Some(Ok(lines))) => {
                                        let changed = lines.iter().filter(|l| !matches!(l, DiffLine::Same(_))).count();
                                        view! {
                                            <p class="muted">{if changed == 0 { format!("v{a} → v{}: identical", v.version) } else { format!("v{a} → v{}: {changed} changed lines", v.version) }}</p>
                                            <pre class="diff">{lines.into_iter().map(|l| match l {
                                                DiffLine::Same(s) => view! { <span class="same">{format!("  {s}\n")}</span> }.into_any(),
                                                DiffLine::Added(s) => view! { <ins class="added">{format!("+ {s}\n")}</ins> }.into_any(),
                                                DiffLine::Removed(s) => view! { <del class="removed">{format!("- {s}\n")}</del> }.into_any(),
                                            }).collect_view()}</pre>
                                        }.into_any()
                                    }
                                }}
                            </section>
                        }.into_any()
                    }
                }
            })}
        </Transition>
    }
}
