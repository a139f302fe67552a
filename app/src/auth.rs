//! Signing in and out, and who is signed in.
use crate::common::{error_text, Flash};
use leptos::form::ActionForm;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurrentUser {
    pub username: String,
    pub is_admin: bool,
    pub teams: Vec<String>,
}

/// Who is signed in (None: nobody). Open to everyone: it only reveals the caller's own name.
#[server(prefix = "/console/fn")]
pub async fn whoami() -> Result<Option<CurrentUser>, ServerFnError> {
    Ok(crate::ssr::signed_in().await?.map(|(u, _)| CurrentUser {
        username: u.username,
        is_admin: u.is_admin,
        teams: u.teams,
    }))
}

/// Where to go after signing in: only a path on this site, else `/`. Browsers drop ASCII
/// tab, newline and carriage return from URLs and read `\\` as `/`, so `/\t/evil.example`
/// and `/\\evil.example` both mean `//evil.example`, another site. What remains after
/// dropping those must start with one `/` followed by neither `/` nor `\\`, and contain
/// no backslash at all.
pub fn safe_next(next: Option<&str>) -> String {
    let Some(next) = next else { return "/".into() };
    let cleaned: String = next.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    let mut chars = cleaned.chars();
    let local = chars.next() == Some('/') && !matches!(chars.next(), Some('/') | Some('\\')) && !cleaned.contains('\\');
    if local {
        cleaned
    } else {
        "/".into()
    }
}

#[server(prefix = "/console/fn")]
pub async fn sign_in(username: String, password: String, next: Option<String>) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, session, start_session};
    // The server puts the client's address on every request (the TCP peer, or what a
    // trusted proxy forwarded for: IMPRINT_TRUSTED_PROXIES).
    let client = use_context::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<imprint_service::auth::ClientIp>().map(|c| c.0));
    let imprint = imprint()?;
    let result = imprint.sign_in(username.trim(), &password, client).await;
    if let Ok(user) = &result {
        let session = session().await?;
        // A new session id at sign-in: a session fixed before cannot be taken over.
        session.cycle_id().await.map_err(|e| ServerFnError::new(format!("session: {e}")))?;
        start_session(&imprint, &session, user.id).await?;
    }
    finish(result.map(|_| ()), Some(safe_next(next.as_deref())), None)
}

#[server(prefix = "/console/fn")]
pub async fn sign_out() -> Result<(), ServerFnError> {
    let session = crate::ssr::session().await?;
    session.flush().await.map_err(|e| ServerFnError::new(format!("session: {e}")))?;
    leptos_axum::redirect("/login?notice=Signed%20out");
    Ok(())
}

/// The signed-in user changes their own password (the current one proves it is them).
/// Every other session of the user ends; this one goes on.
#[server(prefix = "/console/fn")]
pub async fn change_password(
    current_password: String,
    new_password: String,
    repeat_password: String,
) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, require_user, session, EPOCH_KEY};
    let (_, caller) = require_user().await?;
    if new_password != repeat_password {
        let e = imprint_service::Error::invalid("the new password and its repetition differ");
        return finish(Err(e), None, None);
    }
    let result = imprint()?.change_password(&caller, &current_password, &new_password).await;
    if let Ok(epoch) = &result {
        let session = session().await?;
        session.cycle_id().await.map_err(|e| ServerFnError::new(format!("session: {e}")))?;
        session.insert(EPOCH_KEY, *epoch).await.map_err(|e| ServerFnError::new(format!("session: {e}")))?;
    }
    finish(result.map(|_| ()), Some("/account".into()), Some("Password changed; your other sessions have ended"))
}

/// The signed-in user's account: who they are, and a form to change their password.
#[component]
pub fn AccountPage() -> impl IntoView {
    let action = ServerAction::<ChangePassword>::new();
    let user = Resource::new(|| (), |_| whoami());
    view! {
        <Title text="Account"/>
        <section class="account">
            <h1>"Account"</h1>
            <Flash/>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    match user.await {
                        Ok(Some(u)) => view! { <p>"Signed in as " <strong>{u.username}</strong></p> }.into_any(),
                        _ => view! { <p><a href="/login?next=/account">"Sign in"</a>" to change your password."</p> }.into_any(),
                    }
                })}
            </Transition>
            <h2>"Change password"</h2>
            <crate::common::ActionResult value=move || action.value().get() ok="Password changed; your other sessions have ended"/>
            <ActionForm action=action attr:class="stack">
                <label>"Current password" <input type="password" name="current_password" autocomplete="current-password" required/></label>
                <label>"New password (10+ characters)" <input type="password" name="new_password" autocomplete="new-password" minlength="10" required/></label>
                <label>"New password again" <input type="password" name="repeat_password" autocomplete="new-password" minlength="10" required/></label>
                <button type="submit">"Change password"</button>
            </ActionForm>
        </section>
    }
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let action = ServerAction::<SignIn>::new();
    let q = use_query_map();
    let next = move || q.read().get("next").unwrap_or_else(|| "/".into());
    // Signed in from a hydrated page: go on to `next` with the address bar saying so
    // (the server's redirect alone left it at /login?next=…).
    let navigate = leptos_router::hooks::use_navigate();
    Effect::new(move |_| {
        if let Some(Ok(())) = action.value().get() {
            let to = safe_next(q.read_untracked().get("next").as_deref());
            navigate(&to, leptos_router::NavigateOptions { replace: true, ..Default::default() });
        }
    });
    view! {
        <Title text="Sign in"/>
        <section class="login">
            <h1>"Sign in to Imprint"</h1>
            <Flash/>
            {move || action.value().get().and_then(|r| r.err()).map(|e| view! {
                <p class="flash error" role="alert">{error_text(&e)}</p>
            })}
            <ActionForm action=action attr:class="stack">
                <input type="hidden" name="next" value=next/>
                <label>"Username" <input type="text" name="username" autocomplete="username" required autofocus/></label>
                <label>"Password" <input type="password" name="password" autocomplete="current-password" required/></label>
                <button type="submit">"Sign in"</button>
            </ActionForm>
        </section>
    }
}

/// The signed-in user in the top bar, with the sign-out button.
#[component]
pub fn UserMenu() -> impl IntoView {
    // Asked again on every navigation: signing in or out changes the answer.
    let location = leptos_router::hooks::use_location();
    let user = Resource::new(move || location.pathname.get(), |_| whoami());
    let sign_out = ServerAction::<SignOut>::new();
    view! {
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                match user.await {
                    Ok(Some(u)) => view! {
                        <div class="usermenu">
                            <a class="whoami" href="/account" title=u.teams.join(", ")>{u.username.clone()}</a>
                            <ActionForm action=sign_out>
                                <button type="submit" class="link">"Sign out"</button>
                            </ActionForm>
                        </div>
                    }.into_any(),
                    _ => view! { <a href="/login" class="signin">"Sign in"</a> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_never_leaves_the_site() {
        for ok in ["/", "/topics/a.b?tab=versions#v2", "/audit?topic=x%2F%2Fy", "/a//b"] {
            assert_eq!(safe_next(Some(ok)), ok, "{ok:?}");
        }
        // Tabs and newlines are dropped, as browsers drop them.
        assert_eq!(safe_next(Some("/top\nics")), "/topics");
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "\t//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/ok\\..\\x",
            "https://evil.example/",
            "evil.example",
            "javascript:alert(1)",
            "",
            "\t",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
