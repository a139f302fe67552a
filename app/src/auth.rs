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

/// Only a local path: never send the browser elsewhere after signing in.
fn safe_next(next: Option<String>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\')).unwrap_or_else(|| "/".into())
}

#[server(prefix = "/console/fn")]
pub async fn sign_in(username: String, password: String, next: Option<String>) -> Result<(), ServerFnError> {
    use crate::ssr::{finish, imprint, session, USER_KEY};
    // The server puts the client's address on every request (the TCP peer, or what a
    // trusted proxy forwarded for: IMPRINT_TRUSTED_PROXIES).
    let client = use_context::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<imprint_service::auth::ClientIp>().map(|c| c.0));
    let result = imprint()?.sign_in(username.trim(), &password, client).await;
    if let Ok(user) = &result {
        let session = session().await?;
        // A new session id at sign-in: a session fixed before cannot be taken over.
        session.cycle_id().await.map_err(|e| ServerFnError::new(format!("session: {e}")))?;
        session.insert(USER_KEY, user.id).await.map_err(|e| ServerFnError::new(format!("session: {e}")))?;
    }
    finish(result.map(|_| ()), Some(safe_next(next)), None)
}

#[server(prefix = "/console/fn")]
pub async fn sign_out() -> Result<(), ServerFnError> {
    let session = crate::ssr::session().await?;
    session.flush().await.map_err(|e| ServerFnError::new(format!("session: {e}")))?;
    leptos_axum::redirect("/login?notice=Signed%20out");
    Ok(())
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
            let to = safe_next(q.read_untracked().get("next"));
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
                            <span class="whoami" title=u.teams.join(", ")>{u.username.clone()}</span>
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
