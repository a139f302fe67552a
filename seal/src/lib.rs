//! Envelope encryption at rest (docs/encryption.md, "At rest"), the parts a server and a
//! consumer node share: the sealed format (`format`), the key-provider trait and the
//! streamed opener (`provider`), and the two built providers — the local keyring file
//! (`keyring`) and AWS KMS (`aws_kms`). The server adds its data-key cache on top
//! (`imprint_service::keys::Keys`); the Rust client opens sealed snapshot manifests and
//! objects with a provider it is given.
pub mod aws_kms;
pub mod format;
pub mod keyring;
pub mod provider;

pub use aws_kms::AwsKms;
pub use keyring::{KeyEntry, KeyInfo, Keyring, LocalKeyring};
pub use provider::{open_stream, random_key, DataKey, KeyError, KeyProvider};
