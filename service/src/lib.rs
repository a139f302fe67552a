//! Imprint's stateful core behind one `Imprint` handle: Postgres storage, the in-memory
//! serving state, and every operation (with its authorization) that the HTTP API and the
//! console call. Nothing above this crate talks to Postgres directly.
//!
//! Modules depend downward only (a test checks it):
//! `error`, `clock`, `cursor`, `model`, `throttle`, `audit` (the buffer) are leaves;
//! `store` holds every SQL statement; `serving`, `auth` and `handle` build on it; the
//! feature modules (`rollouts` < `versions`, `topics`, `pins`, `users`, `teams`, `audit_log`,
//! `consumers`, `tokens`, `matrix`, `poll`) build on those, `relay` on `poll`, `webhooks` on `auth` and `store` (its events are written by `store::audit`); `validation`
//! sits below `versions`, `version_reads` beside it; `background` runs the loops on top;
//! `at_rest` (the sealed format of at-rest encryption) is a leaf, `keys` (its key providers) builds on it.
#![forbid(unsafe_code)]

mod analysis;
pub mod apollo;
pub mod at_rest;
pub mod audit;
pub mod audit_log;
pub mod auth;
mod background;
pub mod blobs;
pub mod change_control;
pub mod checks;
pub mod clock;
pub mod coalesce;
mod coalesce_reads;
pub mod consumers;
pub mod cursor;
pub mod encryption;
pub mod error;
pub mod fair;
mod handle;
pub mod janitor;
pub mod keys;
pub mod long_polls;
pub mod matrix;
pub mod model;
pub mod objects;
pub mod ofrep;
pub mod overview;
pub mod payloads;
mod pins;
pub mod plaintext_audit;
pub mod plaintext_reads;
pub mod poll;
pub mod prometheus;
mod region_copies;
pub mod regions;
pub mod relay;
pub mod release_gate;
pub mod rollouts;
pub mod sealed;
pub mod serving;
pub mod snapshots;
pub mod spring;
pub mod store;
mod teams;
mod throttle;
mod tokens;
mod topics;
mod users;
mod validation;
mod version_reads;
mod versions;
pub mod webhooks;

pub use auth::Caller;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use handle::{check_register_area, pool_options, Config, Imprint, Roles, DEFAULT_REGISTER_AREA};
pub use model::{PlanChoice, RolloutInfo, RolloutRequest};
pub use pins::PinInput;
pub use poll::{PollRequest, PollResponse};
pub use topics::{double_option, NewTopic, TopicPatch};
pub use users::{ADMIN_USERNAME, MIN_PASSWORD_CHARS};
pub use versions::{BodyStream, Payload, PublishInput};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
