//! The test kit of the server, client and CLI tests (dev-only): `spawn_app…` starts a
//! real server through the production startup path (`imprint_server::Application`) on a
//! free port against the test's database; `TestApp` holds the fixtures (topics, tokens,
//! publishing) and JSON requests in one call; `eventually` polls until something holds;
//! `assert_error` checks an API error.
// A failed unwrap in a helper fails the test that called it, which is what it should do.
#![allow(clippy::unwrap_used)]

mod app;
mod fixtures;
mod http;
mod moto;
mod prometheus;

pub use app::{
    spawn_app, spawn_app_clocked, spawn_app_configured, spawn_app_limited, spawn_app_with, spawn_app_with_settings,
    spawn_full_app, test_config, TestApp, ADMIN_PASSWORD, ADMIN_TOKEN, LAG_GRACE_SECS,
};
pub use fixtures::{bytes_of, closed_port_url, scratch_dir};
pub use http::{assert_error, eventually, Outcome, SendJson, HANG_GUARD};
pub use imprint_service::ManualClock;
pub use moto::{two_regions, Moto, MOTO_BUCKET};
pub use prometheus::{Exporter, Prometheus, PROMETHEUS_BIN};
