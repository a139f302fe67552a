//! imprint-agent: hands Imprint topics to every process on a node — verified files swapped
//! atomically (with a check before and a reload after), and a local HTTP endpoint — on top
//! of `imprint-client` (long polls, verification, the disk cache and the object-store
//! snapshot at start-up, applied/failed reports that rollout gates count).
//! `agent/README.md` documents the configuration and the endpoint.
#![forbid(unsafe_code)]

pub mod command;
pub mod config;
pub mod install;
pub mod local;
pub mod relay;
pub mod render;
pub mod run;
pub mod shutdown;
