//! `/topics/:name/drafts` (change control, docs/change-control.md): the topic's open drafts,
//! each with its diff against what everyone gets now and a form to release it (a change
//! request on a reviewed topic: "Request review"), the topic's change requests with Approve
//! and Reject for approvers, and the freeze windows in force.
use super::{TopicHead, TopicHeader};
use crate::common::{error_text, short_time, ActionResult};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffRow {
    pub op: String,
    pub line: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftRow {
    pub id: i64,
    pub created_by: String,
    pub updated_at: String,
    pub size: u64,
    pub sha256: String,
    pub message: String,
    pub live_version: Option<u64>,
    pub identical: bool,
    pub diff: Vec<DiffRow>,
    pub note: Option<String>,
    /// An open change request of this draft.
    pub request: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    pub id: i64,
    /// What the change is: "release draft #3 to *", "add scope region=eu to v4", "pin …".
    pub summary: String,
    pub state: String,
    pub author: String,
    pub approvals: Vec<String>,
    pub required: u32,
    pub at: Option<String>,
    pub reason: Option<String>,
    pub applied_version: Option<u64>,
    pub draft_id: Option<i64>,
    pub draft_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DraftsPage {
    pub head: TopicHead,
    pub drafts: Vec<DraftRow>,
    pub requests: Vec<RequestRow>,
    /// The review rule, in words (none: releases need no approval).
    pub review: Option<String>,
    pub freezes: Vec<String>,
}

#[server(prefix = "/console/fn")]
pub async fn load_drafts(name: String) -> Result<DraftsPage, ServerFnError> {
    use crate::ssr::{imprint, load, require_user, topic_name};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let name = load(topic_name(&name))?;
    let topic = load(imprint.topic(&caller, &name).await)?;
    let head = super::head_of(&topic, &caller);
    let freezes = load(imprint.active_freezes(&caller, &name).await)?
        .into_iter()
        .map(|f| format!("{} ({})", f.name, f.description))
        .collect();
    // Readers who may not write see the page's head only: drafts are the writers'.
    let (drafts, review) = if head.can_write {
        (load(imprint.drafts(&caller, &name).await)?, load(imprint.review_rule(&caller, &name).await)?)
    } else {
        (vec![], None)
    };
    let requests = load(imprint.change_requests(&caller, Some(&name), vec![]).await)?;
    let mut rows = Vec::new();
    for d in drafts {
        let diff = load(imprint.draft_diff(&caller, &name, d.id, vec![]).await)?;
        let first = diff.into_iter().next();
        let open =
            requests.iter().find(|r| r.draft_id == Some(d.id) && (r.state == "pending" || r.state == "approved"));
        rows.push(DraftRow {
            id: d.id,
            created_by: d.created_by,
            updated_at: d.updated_at.to_rfc3339(),
            size: d.size,
            sha256: d.sha256,
            message: d.message,
            live_version: first.as_ref().and_then(|s| s.live_version),
            identical: first.as_ref().is_some_and(|s| s.identical),
            diff: first
                .as_ref()
                .and_then(|s| s.lines.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|l| DiffRow { op: l.op.to_owned(), line: l.line })
                .collect(),
            note: first.and_then(|s| s.note),
            request: open.map(|r| r.id),
        });
    }
    let review = review.map(|r| {
        let who = match (r.approvers.team, r.approvers.users) {
            (Some(t), _) => format!("members of team “{t}”"),
            (_, Some(u)) => u.join(", "),
            _ => String::new(),
        };
        format!("Releases need {} approval(s) by {who}, never the author.", r.required_approvals)
    });
    Ok(DraftsPage {
        head,
        drafts: rows,
        requests: requests
            .into_iter()
            .take(50)
            .map(|r| RequestRow {
                id: r.id,
                summary: r.summary,
                state: r.state,
                author: r.author,
                approvals: r.approvals.into_iter().map(|a| a.approver).collect(),
                required: r.required_approvals,
                at: r.at.map(|t| t.to_rfc3339()),
                reason: r.reason,
                applied_version: r.applied_version,
                draft_id: r.draft_id,
                draft_sha256: r.draft_sha256,
            })
            .collect(),
        review,
        freezes,
    })
}

/// Releases a draft: a version now, or a change request (review rule, or a time).
#[server(prefix = "/console/fn")]
pub async fn release_draft_form(topic: String, id: i64, scopes: String, at: String) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    use imprint_service::change_control::{ReleaseInput, Released};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = async {
        let lines: Vec<&str> = scopes.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let scopes = if lines.is_empty() {
            None
        } else {
            Some(lines.iter().map(|l| imprint_domain::Selector::parse(l)).collect::<Result<Vec<_>, _>>()?)
        };
        let at = crate::ssr::scheduled_at(Some(&at))?;
        let input = ReleaseInput {
            scopes,
            rollout: imprint_service::RolloutRequest::TopicDefault,
            message: None,
            at,
            break_glass: None,
        };
        imprint.release_draft(&caller, &topic_name(&topic)?, id, input).await
    }
    .await;
    let notice = match &result {
        Ok(Released::Published(p)) => Some(format!("Released v{}", p.version)),
        Ok(Released::Requested(r)) => Some(format!("Change request #{} is {}", r.id, r.state)),
        _ => None,
    };
    finish(result.map(|_| ()), Some(format!("/topics/{topic}/drafts")), notice.as_deref())
}

/// Approve, reject (with a reason), withdraw a change request, or discard a draft. Back on
/// the Drafts tab afterwards, or on the Versions tab with `back` = "versions" (its list of
/// scheduled changes withdraws through here too).
#[server(prefix = "/console/fn")]
pub async fn change_act(
    topic: String,
    id: i64,
    action: String,
    reason: Option<String>,
    back: Option<String>,
) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    use imprint_service::Error;
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let result = async {
        let notice = match action.as_str() {
            "approve" => {
                let r = imprint.approve_change(&caller, id).await?;
                match r.applied_version {
                    Some(v) => format!("Approved: released v{v}"),
                    None => format!("Approved ({}/{})", r.approvals.len(), r.required_approvals),
                }
            }
            "reject" => {
                imprint.reject_change(&caller, id, reason.as_deref().unwrap_or_default()).await?;
                "Rejected".to_owned()
            }
            "withdraw" => {
                imprint.withdraw_change(&caller, id).await?;
                "Withdrawn".to_owned()
            }
            "discard" => {
                imprint.discard_draft(&caller, &topic_name(&topic)?, id).await?;
                "Draft discarded".to_owned()
            }
            other => return Err(Error::invalid(format!("unknown action {other:?}"))),
        };
        Ok(notice)
    }
    .await;
    let notice = result.as_ref().ok().cloned();
    // Only the two tabs of this topic: `back` never names an address.
    let then = match back.as_deref() {
        Some("versions") => format!("/topics/{topic}"),
        _ => format!("/topics/{topic}/drafts"),
    };
    finish(result.map(|_| ()), Some(then), notice.as_deref())
}

#[component]
pub fn DraftsPageView() -> impl IntoView {
    let params = use_params_map();
    let release = ServerAction::<ReleaseDraftForm>::new();
    let act = ServerAction::<ChangeAct>::new();
    let page = Resource::new(
        move || (params.read().get("name").unwrap_or_default(), release.version().get(), act.version().get()),
        |(n, ..)| load_drafts(n),
    );
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(p) => {
                        let topic = p.head.name.clone();
                        let t2 = topic.clone();
                        let reviewed = p.review.is_some();
                        view! {
                            <TopicHeader head=p.head.clone() active="drafts"/>
                            {p.freezes.iter().map(|f| view! { <p class="flash error freeze-banner" role="status">{format!("Change freeze in force: {f}. Releases are refused; pins still work.")}</p> }).collect_view()}
                            <ActionResult value=move || release.value().get() ok="Done"/>
                            <ActionResult value=move || act.value().get() ok="Done"/>
                            {p.review.clone().map(|r| view! { <p class="muted review-rule">{r}</p> })}
                            <h2>"Open drafts"</h2>
                            {if p.drafts.is_empty() {
                                view! { <p class="empty">"No open drafts. Save one from the Publish tab (“Save as draft”)."</p> }.into_any()
                            } else {
                                p.drafts.into_iter().map(move |d| { let topic = topic.clone(); view! { <DraftCard topic d reviewed release act/> } }).collect_view().into_any()
                            }}
                            <h2>"Change requests"</h2>
                            {if p.requests.is_empty() {
                                view! { <p class="empty">"No change requests."</p> }.into_any()
                            } else {
                                p.requests.into_iter().map(move |r| { let topic = t2.clone(); view! { <RequestCard topic r act/> } }).collect_view().into_any()
                            }}
                        }.into_any()
                    }
                }
            })}
        </Transition>
    }
}

#[component]
fn DraftCard(
    topic: String,
    d: DraftRow,
    reviewed: bool,
    release: ServerAction<ReleaseDraftForm>,
    act: ServerAction<ChangeAct>,
) -> impl IntoView {
    let id = d.id.to_string();
    let (t1, t2, i1, i2) = (topic.clone(), topic, id.clone(), id);
    let against = d
        .live_version
        .map(|v| format!("v{v} (what everyone gets now)"))
        .unwrap_or_else(|| "nothing released yet".into());
    view! {
        <section class="card draft" id=format!("draft-{}", d.id) aria-label=format!("Draft {}", d.id)>
            <h3>{format!("Draft #{}", d.id)} " " <span class="badge">"draft"</span></h3>
            <p class="muted small">{format!("by {}, updated {} · {} bytes · sha256 {}", d.created_by, short_time(&d.updated_at), d.size, &d.sha256[..12.min(d.sha256.len())])}</p>
            {(!d.message.is_empty()).then(|| view! { <p>{d.message.clone()}</p> })}
            <p class="small">{format!("Diff against {against}")}{d.identical.then_some(": identical")}</p>
            <pre class="diff mono" aria-label="Diff">
                {d.diff.into_iter().map(|l| {
                    let (class, sign) = match l.op.as_str() { "added" => ("diff-added", "+"), "removed" => ("diff-removed", "-"), _ => ("diff-same", " ") };
                    view! { <span class=class>{format!("{sign}{}\n", l.line)}</span> }
                }).collect_view()}
            </pre>
            {d.note.map(|n| view! { <p class="muted small">{n}</p> })}
            {match d.request {
                Some(r) => view! { <p class="small">{format!("Change request #{r} is open for this draft.")}</p> }.into_any(),
                None => view! {
                    <ActionForm action=release attr:class="stack release-form">
                        <input type="hidden" name="topic" value=t1/>
                        <input type="hidden" name="id" value=i1/>
                        <label>"Scopes (one selector per line; empty: everyone)" <textarea name="scopes" rows="2" class="mono" placeholder="*"></textarea></label>
                        <label>"At (RFC 3339, optional: scheduled)" <input type="text" name="at" placeholder="2026-12-24T06:00:00Z"/></label>
                        <button type="submit">{if reviewed { "Request review" } else { "Release" }}</button>
                    </ActionForm>
                }.into_any(),
            }}
            <ActionForm action=act>
                <input type="hidden" name="topic" value=t2/>
                <input type="hidden" name="id" value=i2/>
                <input type="hidden" name="action" value="discard"/>
                <button type="submit" class="danger">"Discard"</button>
            </ActionForm>
        </section>
    }
}

#[component]
fn RequestCard(topic: String, r: RequestRow, act: ServerAction<ChangeAct>) -> impl IntoView {
    let open = r.state == "pending" || r.state == "approved";
    let id = r.id.to_string();
    view! {
        <section class=format!("card change-request change-{}", r.state) id=format!("change-{}", r.id) aria-label=format!("Change request {}", r.id)>
            <h3>{format!("Change request #{}", r.id)} " " <span class=format!("badge change-{}", r.state)>{r.state.clone()}</span></h3>
            <p class="change-summary"><strong>{r.summary.clone()}</strong></p>
            <p class="small">{format!("asked by {}{} · approvals {}/{}{}", r.author,
                r.draft_id.map(|d| format!(" · draft #{d}")).unwrap_or_default(),
                r.approvals.len(), r.required, if r.approvals.is_empty() { String::new() } else { format!(": {}", r.approvals.join(", ")) })}</p>
            {r.draft_sha256.clone().map(|s| view! { <p class="muted small">{format!("payload sha256 {s} (validated when saved)")}</p> })}
            {r.at.clone().map(|t| view! { <p class="small">{format!("scheduled for {}", short_time(&t))}</p> })}
            {r.reason.clone().map(|why| view! { <p class="small reason">{format!("reason: {why}")}</p> })}
            {r.applied_version.filter(|_| r.draft_id.is_some()).map(|v| view! { <p class="small">{format!("released as v{v}")}</p> })}
            {open.then(|| { let (t1, t2, t3, i1, i2, i3) = (topic.clone(), topic.clone(), topic.clone(), id.clone(), id.clone(), id.clone()); view! {
                <div class="actions">
                    <ActionForm action=act>
                        <input type="hidden" name="topic" value=t1/>
                        <input type="hidden" name="id" value=i1/>
                        <input type="hidden" name="action" value="approve"/>
                        <button type="submit">"Approve"</button>
                    </ActionForm>
                    <ActionForm action=act>
                        <input type="hidden" name="topic" value=t2/>
                        <input type="hidden" name="id" value=i2/>
                        <input type="hidden" name="action" value="reject"/>
                        <input type="text" name="reason" placeholder="why not" aria-label="Reason"/>
                        <button type="submit" class="secondary">"Reject"</button>
                    </ActionForm>
                    <ActionForm action=act>
                        <input type="hidden" name="topic" value=t3/>
                        <input type="hidden" name="id" value=i3/>
                        <input type="hidden" name="action" value="withdraw"/>
                        <button type="submit" class="secondary">"Withdraw"</button>
                    </ActionForm>
                </div>
            }})}
        </section>
    }
}
