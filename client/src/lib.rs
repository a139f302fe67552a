//! # imprint-client
//!
//! The Rust consumer library of Imprint: subscribe to topics and always hold a valid,
//! recent value of each, kept up to date by one background task.
//!
//! ```no_run
//! # #[derive(serde::Deserialize, Default)] struct Methods { card: bool }
//! # async fn demo() -> Result<(), imprint_client::Error> {
//! let client = imprint_client::Client::builder("http://imprint:3000")
//!     .token("consumer-token")
//!     .instance("i-0abc")
//!     .label("region", "eu-west-1")
//!     .label("app", "checkout")
//!     .cache_dir("/var/cache/imprint")
//!     .build()?;
//! let methods = client.subscribe_json::<Methods>("payments.methods", Methods::default()).await?;
//! let now = methods.get(); // never blocks, always a valid value
//! println!("card payments: {} (version {:?}, from {})", now.card, methods.version(), methods.source());
//! # Ok(()) }
//! ```
//!
//! ## How it behaves
//! - **One request for all topics.** A client's subscriptions are long-polled together
//!   (`POST /api/v1/poll`, held up to 30 s by the server); `poll_after_ms` is honoured.
//!   Network errors and 5xx back off exponentially with jitter (0.5 s up to 30 s); 4xx
//!   (a bad token, say) are logged as errors and retried every 60 s. Every request has a
//!   time bound, and so does each pause between two chunks of a download.
//! - **Verified, then applied, then swapped.** An update's payload comes inline
//!   (`data_base64`) or is streamed from `data_url` (to memory, or for `subscribe_file`
//!   to a temporary file in the cache directory renamed into place; an interrupted
//!   download resumes with `Range`). Its size and SHA-256 must match the update (a
//!   mismatch is downloaded once more, then rejected). Then the subscription's apply
//!   function runs (off the async threads; a panic counts as a failure). Success swaps
//!   the value atomically (`arc-swap`) and wakes `changes()`; failure keeps the old value.
//!   Either outcome is reported on the next poll (`applied`), so the server's Consumers
//!   view and rollout health gates see it. A version that failed is not tried again
//!   until the server offers another (a newer version, or a pin). While the server offers
//!   only that version, the topic leaves the long poll (the server would answer it at
//!   once, again and again) and is asked about on a short poll every 10 s instead.
//! - **Start-up fallback** (as Netflix's Gutenberg does): when the newest version fails
//!   to apply and the subscription holds nothing from the server yet, up to 3 older
//!   versions released to this node's labels are tried, newest first.
//! - **Disk cache** (`cache_dir`): the last payload that applied, per topic, written
//!   atomically with its version and SHA-256 in `meta.json`. A node whose server is
//!   unreachable starts from it (checked against its SHA-256), else from the default.
//!   `subscribe_*` waits at most `initial_wait` (5 s) for the server's first answer and
//!   returns at once when the server cannot be reached.
//! - **Metrics** (through the `metrics` facade; install any recorder):
//!   `imprint_client_version{topic}` (gauge: version held),
//!   `imprint_client_last_poll_success_seconds` (gauge: unix time of the last good poll),
//!   `imprint_client_apply_failures_total{topic}`, `imprint_client_poll_errors_total{kind}`
//!   (`network`, `server`, `client`, `download`), `imprint_client_updates_applied_total{topic}`.
//!   `tracing` spans: `imprint_client.poll`, `imprint_client.apply`.
//! - **Shutdown**: [`Client::shutdown`], or drop the client and every subscription.
//!
//! - **Object-store snapshots** (`snapshot_store`, feature `snapshots`, on by default):
//!   the server's worker keeps `snapshots/<topic>.json` in its payload store — what `*`
//!   resolves to, with the payload inline or as the key of its object. When the server is
//!   unreachable (network errors, 5xx) and a subscription has no cached value, it starts
//!   from that snapshot (verified against its SHA-256; `Source::Snapshot`); the first
//!   poll that gets through confirms the version or replaces it with the node's own.
//!   Topics encrypted at rest have sealed snapshots: they open with
//!   `snapshot_keyring` (a copy of the server's keyring file) or `snapshot_key_provider`
//!   ([`seal::AwsKms`], …); without the key the snapshot is not used (logged).
#![forbid(unsafe_code)]

mod cache;
mod client;
pub mod crypt;
mod deliver;
mod error;
mod fetch;
mod inner;
mod poller;
#[cfg(feature = "snapshots")]
mod snapshot;
mod subscription;

pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
/// The sealed format and key providers (`LocalKeyring`, `AwsKms`, the `KeyProvider` trait)
/// for opening snapshots of topics encrypted at rest (`ClientBuilder::snapshot_key_provider`).
#[cfg(feature = "snapshots")]
pub use imprint_seal as seal;
pub use subscription::{Changes, Current, Payload, Source, Subscription};

/// Parses a selector or label string (`region=eu-west-1,app=checkout`, `*` or empty for
/// none) into pairs, with the server's rules for keys and values (the domain's: at most
/// 32 pairs and 4096 bytes).
pub fn parse_labels(s: &str) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
    imprint_domain::Labels::parse(s).map(|l| l.pairs().clone()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_parse_like_the_server() {
        let m = super::parse_labels(" region=eu-west-1 , app=checkout").expect("parses");
        assert_eq!(m.len(), 2);
        assert_eq!(m["region"], "eu-west-1");
        assert!(super::parse_labels("*").expect("star").is_empty());
        assert!(super::parse_labels("").expect("empty").is_empty());
        assert!(super::parse_labels("a").is_err());
        assert!(super::parse_labels("a=1,a=2").is_err());
        assert!(super::parse_labels("a=x y").is_err());
        assert!(super::parse_labels("-a=1").is_err());
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(super::parse_labels(&many.join(",")).is_err(), "at most 32 pairs, as the server says");
    }
}
