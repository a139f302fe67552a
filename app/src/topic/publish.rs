//! `/topics/:name/publish`: publish a text payload (checked as JSON in the browser when it
//! is JSON) or upload a file of any size.
use super::versions::load_topic;
use super::TopicHeader;
use crate::common::error_text;
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

// The form's fields, one argument each (a server function reads them by name).
#[allow(clippy::too_many_arguments)]
#[server(prefix = "/console/fn")]
pub async fn publish_form(
    topic: String,
    data: String,
    content_type: String,
    message: String,
    metadata: String,
    scopes: String,
    rollout: Option<String>,
    draft: Option<String>,
) -> Result<u64, ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, topic_name};
    use imprint_service::{Error, Payload, PublishInput, RolloutRequest};
    let (_, caller) = require_user().await?;
    let imprint = imprint()?;
    let parsed = (|| -> Result<PublishInput, Error> {
        let ct = content_type.trim();
        if ct.starts_with("application/json") {
            serde_json::from_str::<serde_json::Value>(&data)
                .map_err(|e| Error::invalid(format!("the payload is not valid JSON: {e}")))?;
        }
        let mut meta = std::collections::BTreeMap::new();
        for line in metadata.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| Error::invalid(format!("metadata line {line:?} is not key=value")))?;
            meta.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let scope_lines: Vec<&str> = scopes.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let scopes = if scope_lines.is_empty() {
            None
        } else if scope_lines == ["none"] {
            Some(vec![])
        } else {
            Some(scope_lines.iter().map(|l| imprint_domain::Selector::parse(l)).collect::<Result<Vec<_>, _>>()?)
        };
        Ok(PublishInput {
            payload: Payload::Text(data),
            content_type: (!ct.is_empty()).then(|| ct.to_owned()),
            metadata: meta,
            scopes,
            message,
            rollout: match rollout.as_deref().map(str::trim).unwrap_or("") {
                "" => RolloutRequest::TopicDefault,
                "none" => RolloutRequest::None,
                name => RolloutRequest::Plan(imprint_service::PlanChoice::Named(name.to_owned())),
            },
            sha256: None,
            force: None,
        })
    })();
    // Change control (docs/change-control.md): "save as draft", and on a reviewed topic a
    // release becomes a change request; both are then on the Drafts tab.
    use imprint_service::change_control::{PublishControl, Released};
    let control = PublishControl { draft: draft.is_some_and(|d| !d.is_empty()), ..Default::default() };
    let result = async {
        let input = parsed?;
        imprint.publish_controlled(&caller, &topic_name(&topic)?, input, control).await
    }
    .await;
    let (then, notice) = match &result {
        Ok(Released::Published(p)) => {
            (Some(format!("/topics/{topic}#v{}", p.version)), Some(format!("Published v{}", p.version)))
        }
        Ok(Released::Draft(d)) => {
            (Some(format!("/topics/{topic}/drafts#draft-{}", d.id)), Some(format!("Saved draft #{}", d.id)))
        }
        Ok(Released::Requested(r)) => (
            Some(format!("/topics/{topic}/drafts#change-{}", r.id)),
            Some(format!("Change request #{} awaits approval", r.id)),
        ),
        Err(_) => (None, None),
    };
    let result = result.map(|r| match r {
        Released::Published(p) => p.version,
        _ => 0,
    });
    finish(result, then, notice.as_deref())
}

#[component]
pub fn PublishPage() -> impl IntoView {
    let params = use_params_map();
    let name = move || params.read().get("name").unwrap_or_default();
    let page = Resource::new(name, |n| load_topic(n, None));
    let action = ServerAction::<PublishForm>::new();
    let (json_error, set_json_error) = signal(None::<String>);
    let (is_json, set_is_json) = signal(true);
    let check = move |text: String| {
        set_json_error.set(if is_json.get_untracked() {
            serde_json::from_str::<serde_json::Value>(&text).err().map(|e| format!("Not valid JSON: {e}"))
        } else {
            None
        })
    };
    view! {
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Err(e) => view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any(),
                    Ok(p) => {
                        let topic = p.head.name.clone();
                        view! {
                        <TopicHeader head=p.head.clone() active="publish"/>
                        {move || action.value().get().and_then(|r| r.err()).map(|e| view! { <p class="flash error" role="alert">{error_text(&e)}</p> })}
                        <ActionForm action=action attr:class="stack publish" attr:id="publish-form">
                            <input type="hidden" name="topic" value=p.head.name.clone()/>
                            <label>"Payload"
                                <textarea name="data" rows="14" class="mono" required
                                    on:input=move |ev| check(event_target_value(&ev))></textarea>
                            </label>
                            {move || json_error.get().map(|e| view! { <p class="hint error" role="alert">{e}</p> })}
                            <label>"Content type"
                                <select name="content_type" on:change=move |ev| { set_is_json.set(event_target_value(&ev) == "application/json"); set_json_error.set(None); }>
                                    <option value="application/json" selected>"application/json"</option>
                                    <option value="text/plain; charset=utf-8">"text/plain"</option>
                                    <option value="">"topic default"</option>
                                </select>
                            </label>
                            <label>"Message" <input type="text" name="message" placeholder="what changed and why"/></label>
                            <label>"Metadata (one key=value per line)" <textarea name="metadata" rows="3" class="mono" placeholder="build=1234"></textarea></label>
                            <label>"Scopes (one selector per line; empty: everyone, or the topic's default rollout plan; none: nobody yet)"
                                <textarea name="scopes" rows="3" class="mono" placeholder="*"></textarea>
                            </label>
                            <label>"Rollout plan (a plan name from the settings; empty: the topic's default plan; none: no rollout)"
                                <input type="text" name="rollout" placeholder="canary-first"/>
                            </label>
                            <label class="inline"><input type="checkbox" name="draft" value="true"/>" Save as draft (released to nobody; review and release it on the Drafts tab)"</label>
                            <button type="submit" disabled=move || json_error.get().is_some()>"Publish"</button>
                        </ActionForm>
                        <UploadForm topic=topic/>
                    }.into_any()
                    }
                }
            })}
        </Transition>
    }
}

/// A file of any size, streamed to the server (and on to the object store when it is
/// larger than the topic's inline limit). Without JavaScript a plain multipart post;
/// with it, `/upload.js` sends it with a progress bar of the bytes sent.
#[component]
fn UploadForm(topic: String) -> impl IntoView {
    // A refused upload posted without JavaScript comes back here with its reason.
    let q = leptos_router::hooks::use_query_map();
    view! {
        <h3 id="upload">"Or upload a file"</h3>
        {move || q.read().get("upload_error").map(|e| view! { <p class="flash error" role="alert">{e}</p> })}
        <p class="muted small">"Any size up to the topic's largest payload; files beyond the inline limit are kept in the object store."</p>
        <form method="post" action=format!("/console/upload/{topic}") enctype="multipart/form-data"
            class="stack publish" id="upload-form">
            <label>"Message" <input type="text" name="message" placeholder="what changed and why"/></label>
            <label>"Content type"
                <select name="content_type">
                    <option value="" selected>"from the file (or the topic default)"</option>
                    <option value="application/json">"application/json"</option>
                    <option value="application/octet-stream">"application/octet-stream"</option>
                    <option value="text/plain; charset=utf-8">"text/plain"</option>
                </select>
            </label>
            <label>"Scope (one selector; empty: everyone, or the topic's default rollout plan)"
                <input type="text" name="scope" class="mono" placeholder="*"/>
            </label>
            <label>"Rollout plan (empty: the topic's default plan; none: no rollout)"
                <input type="text" name="rollout" placeholder="canary-first"/>
            </label>
            // The file goes last: the server streams it as it arrives.
            <label>"File" <input type="file" name="file" required/></label>
            <progress class="upload-progress" max="1" value="0" hidden></progress>
            <p class="upload-status muted small" role="status"></p>
            <button type="submit">"Upload and publish"</button>
        </form>
    }
}
