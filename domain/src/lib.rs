//! Imprint's pure domain: validated names, selectors and labels, and the resolution
//! rule of docs/design.md. No I/O here, so it compiles to wasm and is tested in isolation.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod apollo;
pub mod checks;
mod diff;
pub mod encryption;
pub mod fairness;
pub mod freeze;
mod names;
mod pins;
mod resolve;
mod retention;
mod rollout;
mod selector;
pub mod spring;
mod stage_text;
pub mod webhooks;

pub use diff::{diff_lines, render_payload, DiffLine, Rendered};
pub use names::{TopicName, TopicNameError, VersionNumber, VersionNumberError};
pub use pins::{pin_is_stale, STALE_PIN_DAYS};
pub use resolve::{is_update, CurrentIndex, PinEntry, Resolution, ScopeEntry, TopicHistory, VersionEntry};
pub use retention::{retention_decisions, versions_to_purge, Kept, RetentionDecision, RetentionPolicy};
pub use rollout::{
    AnalysisGate, Effect, Gate, GateError, GateReading, Plan, PlanError, RecordError, Rollout, RolloutAction,
    RolloutError, RolloutRecord, RolloutState, RolloutView, Stage, StageState, StageView,
};
pub use selector::{Labels, Selector, SelectorError};
pub use stage_text::{format_stage, format_wait, parse_plan, parse_stage, parse_wait, StageTextError};
