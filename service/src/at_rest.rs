//! The sealed format of payloads encrypted at rest (docs/encryption.md, "At rest"): defined
//! once in `imprint_seal::format` (the Rust client opens sealed snapshots with it) and used
//! here under this name.
pub use imprint_seal::format::*;
