//! Imprint's web console: Leptos pages and their server functions. Server-rendered, then
//! hydrated by the `hydrate()` entry when JavaScript runs; every page works without it.
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod auth;
mod common;
mod live;
mod overview;
#[cfg(feature = "ssr")]
pub mod ssr;
mod topic;
mod topics;
mod webhooks;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes, A};
use leptos_router::{path, SsrMode};

/// The HTML document around the app (server side only).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="data:,"/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                // The upload form's progress bar (a document-level listener: it works on
                // pages reached by client-side navigation too).
                <script src="/upload.js" defer></script>
                <script src="/live.js"></script>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/imprint.css"/>
        <Title formatter=|t: String| if t.is_empty() { "Imprint".to_owned() } else { format!("{t} · Imprint") }/>
        <Router>
            <header class="topbar">
                <A href="/" attr:class="brand">"Imprint"</A>
                <nav>
                    <A href="/">"Topics"</A>
                    <A href="/unused">"Unused"</A>
                    <A href="/audit">"Audit log"</A>
                    <A href="/webhooks">"Webhooks"</A>
                    <A href="/admin">"Admin"</A>
                    <a href="/api/v1/openapi.json">"API"</a>
                </nav>
                <auth::UserMenu/>
            </header>
            <main>
                <Routes fallback=|| view! { <NotFound/> }>
                    // Async: the server waits for the page's data before sending it, so every page
                    // is complete without JavaScript (no streamed fallbacks to swap in).
                    <Route path=path!("/") view=topics::TopicsPage ssr=SsrMode::Async/>
                    <Route path=path!("/login") view=auth::LoginPage ssr=SsrMode::Async/>
                    <Route path=path!("/account") view=auth::AccountPage ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name") view=topic::TopicPageView ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name/publish") view=topic::PublishPage ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name/drafts") view=topic::DraftsPageView ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name/matrix") view=topic::MatrixPage ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name/rollouts") view=topic::RolloutsPageView ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name/consumers") view=topic::ConsumersPageView ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name/settings") view=topic::SettingsPage ssr=SsrMode::Async/>
                    <Route path=path!("/topics/:name/versions/:n") view=topic::VersionPage ssr=SsrMode::Async/>
                    <Route path=path!("/unused") view=topics::UnusedPage ssr=SsrMode::Async/>
                    <Route path=path!("/audit") view=audit::AuditPage ssr=SsrMode::Async/>
                    <Route path=path!("/admin") view=admin::AdminPage ssr=SsrMode::Async/>
                    <Route path=path!("/webhooks") view=webhooks::WebhooksPage ssr=SsrMode::Async/>
                    <Route path=path!("/webhooks/:id") view=webhooks::WebhookPage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
}

#[component]
fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    {
        if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
            resp.set_status(http::StatusCode::NOT_FOUND);
        }
    }
    view! {
        <Title text="Not found"/>
        <section class="empty">
            <h1>"Page not found"</h1>
            <p><a href="/">"Back to the topics"</a></p>
        </section>
    }
}

#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
    // A marker for browser tests (and curious humans): the page is interactive now.
    if let Some(body) = leptos::prelude::document().body() {
        let _ = body.set_attribute("data-hydrated", "true");
    }
}
