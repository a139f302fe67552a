//! Live pages: with JavaScript, a page follows its topics through the server's change
//! stream (`/console/events`, opened by `/live.js`) and reloads its data when one changes;
//! countdowns tick in the browser. Without JavaScript nothing here runs: pages are
//! complete and correct on reload.
use leptos::prelude::*;

#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// `/live.js`: follow these topics (comma-separated, `*` for all; empty: none).
    #[wasm_bindgen(js_namespace = imprintLive, js_name = watch)]
    fn live_watch(topics: &str);
}

/// A counter that moves each time one of `topics` changes on the server (hydrated pages
/// only). Put it in a Resource's source so the data reloads by itself.
pub fn live_changes(topics: impl Fn() -> String + Send + Sync + 'static) -> ReadSignal<u64> {
    let (changes, set_changes) = signal(0u64);
    #[cfg(feature = "hydrate")]
    {
        Effect::new(move |_| live_watch(&topics()));
        let listener = window_event_listener_untyped("imprint-change", move |_| set_changes.update(|n| *n += 1));
        on_cleanup(move || {
            listener.remove();
            live_watch("");
        });
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = (topics, set_changes);
    }
    changes
}

/// Seconds since the page started, ticking in the browser (constant on the server).
#[derive(Clone, Copy)]
pub struct Ticker(pub RwSignal<i64>);

pub fn provide_ticker() -> Ticker {
    let t = Ticker(RwSignal::new(0));
    #[cfg(feature = "hydrate")]
    {
        if let Ok(handle) = set_interval_with_handle(move || t.0.update(|s| *s += 1), std::time::Duration::from_secs(1))
        {
            on_cleanup(move || handle.clear());
        }
    }
    provide_context(t);
    t
}
