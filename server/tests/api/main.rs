//! HTTP API tests: each test gets a fresh database (`#[sqlx::test]`) and a real server on
//! a free port (the test kit, `imprint-testkit`, starts it as the binary does), and talks to
//! it over HTTP like any client would.
// Helpers shared by the tests are not `#[test]` fns: a failed unwrap there fails a test.
#![allow(clippy::unwrap_used)]
mod analysis;
mod apollo;
mod at_rest;
mod change_control;
mod connection;
mod consumers;
mod encryption;
mod fairness;
mod fuzz;
mod keep_rejected;
mod objects;
mod ofrep;
mod openapi;
mod poll;
mod publish;
mod regions;
mod relay;
mod resilience;
mod rollouts;
mod security;
mod spring;
mod topics;
mod trust;
mod validation;
mod webhooks;
