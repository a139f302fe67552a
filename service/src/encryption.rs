//! Encrypted topics (docs/encryption.md). End to end: the topic lists age X25519
//! recipients; publishers encrypt before upload, consumers decrypt after download, and
//! the server, which never holds a key, refuses any payload whose age header does not fit
//! the recipients (the rules are the domain's `encryption`). The checksum of a version is
//! the ciphertext's; the plaintext is authenticated by age.
use crate::error::{Error, Result};
use crate::handle::Imprint;
pub use crate::model::{Encryption, EncryptionMode};
use crate::objects::store_error;
use crate::store;
use imprint_domain::encryption::{check_header, check_recipient, parse_header, MAX_HEADER_BYTES, MAX_RECIPIENTS};

/// A setting as given, checked and normalised (recipients lowercased, duplicates gone);
/// an at-rest key is checked with the server's key provider (400 for a key it does not
/// have, 503 `key_unavailable` when it cannot be reached).
pub(crate) async fn check_encryption(imprint: &Imprint, e: &Encryption) -> Result<Encryption> {
    match e.mode {
        EncryptionMode::AtRest => {
            if !e.recipients.is_empty() {
                return Err(Error::invalid("encryption.recipients is for end_to_end; at_rest takes a key"));
            }
            let Some(key) = e.key.as_deref().map(str::trim).filter(|k| !k.is_empty()) else {
                return Err(Error::invalid("encryption at_rest needs a key: the key provider's key id"));
            };
            imprint.check_at_rest_key(key).await?;
            Ok(Encryption { mode: e.mode, recipients: vec![], key: Some(key.to_owned()) })
        }
        EncryptionMode::EndToEnd => {
            if e.key.is_some() {
                return Err(Error::invalid("encryption.key is for at_rest; end_to_end takes recipients"));
            }
            let mut recipients = Vec::with_capacity(e.recipients.len());
            for r in &e.recipients {
                let r = check_recipient(r).map_err(Error::invalid)?;
                if !recipients.contains(&r) {
                    recipients.push(r);
                }
            }
            if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
                return Err(Error::invalid(format!(
                    "encryption.recipients lists 1-{MAX_RECIPIENTS} age X25519 recipients (age1…)"
                )));
            }
            Ok(Encryption { mode: e.mode, recipients, key: None })
        }
    }
}

/// Writes a topic's encryption setting inside the settings transaction (`Some(None)`
/// clears it), then checks the topic as it will be: an encrypted topic cannot have the
/// server-side checks and bindings that read plaintext.
pub(crate) async fn apply_setting(
    conn: &mut sqlx::PgConnection,
    id: i64,
    setting: Option<Option<&Encryption>>,
) -> Result<()> {
    if let Some(e) = setting {
        store::encryption::set(conn, id, e).await?;
    }
    let c = store::encryption::combination(conn, id).await?;
    // At rest the server reads plaintext: every setting goes with it.
    if !c.encryption.as_ref().is_some_and(|e| e.end_to_end()) {
        return Ok(());
    }
    let clash = [
        (c.json_schema, "a JSON Schema (the CLI checks it before encrypting: `imprint publish --schema FILE`)"),
        (c.apollo, "an Apollo binding"),
        (c.ofrep, "an OpenFeature binding"),
        (c.spring, "a Spring binding"),
    ];
    if let Some((_, what)) = clash.iter().find(|(set, _)| *set) {
        return Err(Error::invalid(format!(
            "an end-to-end encrypted topic cannot have {what}: the server never sees its plaintext"
        )));
    }
    // Pre-release checks that read the payload's records (docs/validation.md) would count
    // ciphertext; size, content type and external validators see what they would anyway.
    use imprint_domain::checks::CheckKind;
    let checks = store::checks::settings(&mut *conn, id).await?;
    if let Some(c) =
        checks.checks.iter().find(|c| matches!(c.kind, CheckKind::RecordCountChangePct | CheckKind::NotEmpty))
    {
        let what = if c.kind == CheckKind::NotEmpty { "not_empty" } else { "record_count_change_pct" };
        return Err(Error::invalid(format!(
            "an end-to-end encrypted topic cannot have a {what} check: the server never sees its plaintext"
        )));
    }
    Ok(())
}

/// Where a received payload is, for its header to be read.
pub(crate) enum PayloadAt<'a> {
    Inline(&'a bytes::Bytes),
    /// `objects`: the store of the region it was written to.
    Object {
        key: &'a object_store::path::Path,
        size: u64,
        objects: &'a crate::objects::Objects,
    },
}

impl Imprint {
    /// Refuses a payload for an end-to-end topic unless it is an age v1 file whose header
    /// fits the topic's recipients. Only the header is read: from memory for an inline
    /// payload, as the first bytes of the object for an uploaded or registered one.
    pub(crate) async fn check_encrypted_payload(
        &self,
        conn: &mut sqlx::PgConnection,
        topic_id: i64,
        received: PayloadAt<'_>,
    ) -> Result<()> {
        let Some(enc) = store::encryption::get(conn, topic_id).await?.filter(Encryption::end_to_end) else {
            return Ok(());
        };
        let (prefix, complete) = match received {
            PayloadAt::Inline(b) => (b.clone(), true),
            PayloadAt::Object { key, size, objects } => {
                let n = size.min(MAX_HEADER_BYTES as u64);
                let bytes = objects.store().get_range(key, 0..n).await.map_err(store_error)?;
                (bytes, n == size)
            }
        };
        let refused = |e: imprint_domain::encryption::HeaderError| Error::NotEncrypted(e.to_string());
        let header = parse_header(&prefix, complete).map_err(refused)?.ok_or_else(|| {
            Error::NotEncrypted(format!("the payload's age header is longer than {MAX_HEADER_BYTES} bytes"))
        })?;
        check_header(&header, enc.recipients.len()).map_err(refused)?;
        metrics::counter!("imprint_encrypted_publishes_total").increment(1);
        Ok(())
    }
}
