//! Small pieces shared by the console pages: messages, time formatting, error text.
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// The human message of a server function error (without the framework's prefix).
pub fn error_text(e: &ServerFnError) -> String {
    match e {
        ServerFnError::ServerError(m) => m.clone(),
        other => other.to_string(),
    }
}

/// `?error=` / `?notice=` messages left by a form post without JavaScript.
#[component]
pub fn Flash() -> impl IntoView {
    let q = use_query_map();
    view! {
        {move || q.read().get("error").map(|e| view! { <p class="flash error" role="alert">{e}</p> })}
        {move || q.read().get("notice").map(|n| view! { <p class="flash notice" role="status">{n}</p> })}
    }
}

/// The outcome of an action in a hydrated page.
#[component]
pub fn ActionResult<T: 'static, F: Fn() -> Option<Result<T, ServerFnError>> + Send + Sync + 'static>(
    value: F,
    ok: &'static str,
) -> impl IntoView {
    move || match value() {
        Some(Err(e)) => Some(view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any()),
        Some(Ok(_)) => Some(view! { <p class="flash notice" role="status">{ok}</p> }.into_any()),
        None => None,
    }
}

/// A secret the server shows once (a new token, a webhook's signing secret); `what` names it.
#[component]
pub fn SecretShownOnce(what: String, secret: String) -> impl IntoView {
    view! {
        <p class="flash notice token" role="status">{format!("{what} (shown once, store it now): ")}<code class="secret">{secret}</code></p>
    }
}

/// The outcome of an action in a hydrated page whose answer is a secret shown once.
#[component]
pub fn SecretResult<F: Fn() -> Option<Result<String, ServerFnError>> + Send + Sync + 'static>(
    value: F,
    what: &'static str,
) -> impl IntoView {
    move || match value() {
        Some(Err(e)) => Some(view! { <p class="flash error" role="alert">{error_text(&e)}</p> }.into_any()),
        Some(Ok(secret)) => Some(view! { <SecretShownOnce what=what.to_owned() secret/> }.into_any()),
        None => None,
    }
}

/// An RFC 3339 time shown compactly in UTC.
pub fn short_time(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| t.to_owned())
}

pub fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
