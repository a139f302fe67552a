//! What the CLI does for end-to-end encrypted topics (docs/encryption.md) besides
//! encrypting in `publish`: the JSON Schema check the server cannot run on ciphertext
//! (`publish --schema FILE`), and decrypting downloads (`get --identity FILE`).
use crate::api::{CliError, CliResult};
use std::path::Path;

/// Payloads checked locally are read into memory: at most this big (the server's limit
/// for validated payloads).
const MAX_CHECKED: u64 = 64 << 20;

/// Checks the payload file against a JSON Schema file, before anything is encrypted or sent.
pub fn check_schema(schema: &Path, payload: &Path) -> CliResult<()> {
    let read = |p: &Path, max: u64| -> CliResult<Vec<u8>> {
        let len = std::fs::metadata(p).map_err(|e| CliError::new(format!("reading {}: {e}", p.display())))?.len();
        if len > max {
            return Err(CliError::new(format!("{} is larger than {max} bytes: not checked here", p.display())));
        }
        std::fs::read(p).map_err(|e| CliError::new(format!("reading {}: {e}", p.display())))
    };
    let schema: serde_json::Value = serde_json::from_slice(&read(schema, 1 << 20)?)
        .map_err(|e| CliError::new(format!("the schema {} is not JSON: {e}", schema.display())))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| CliError::new(format!("the schema is not a valid JSON Schema: {e}")))?;
    let doc: serde_json::Value = serde_json::from_slice(&read(payload, MAX_CHECKED)?)
        .map_err(|e| CliError::new(format!("the payload {} is not JSON: {e}", payload.display())))?;
    let errors: Vec<String> =
        validator.iter_errors(&doc).take(5).map(|e| format!("{}: {e}", e.instance_path)).collect();
    if !errors.is_empty() {
        return Err(CliError::new(format!("the payload does not satisfy the schema: {}", errors.join("; "))));
    }
    Ok(())
}

/// Decrypts the age file `from` into `to` with the identities of `identity` (streamed).
/// A file that is not an age file (a version published before the topic was encrypted)
/// is copied as it is. Returns the plaintext size.
pub fn decrypt_file(identity: &Path, from: &Path, to: &mut dyn std::io::Write) -> CliResult<u64> {
    use std::io::Read;
    let ids = imprint_client::crypt::Identities::from_file(identity).map_err(|e| CliError::new(e.to_string()))?;
    let open = || std::fs::File::open(from).map_err(|e| CliError::new(format!("reading {}: {e}", from.display())));
    let mut head = Vec::new();
    open()?.take(imprint_client::crypt::AGE_MAGIC.len() as u64).read_to_end(&mut head)?;
    let n = if imprint_client::crypt::is_age(&head) {
        let mut plain = ids.decrypt_reader(open()?).map_err(|e| CliError::new(e.to_string()))?;
        std::io::copy(&mut plain, to).map_err(|e| CliError::new(format!("cannot decrypt the payload: {e}")))?
    } else {
        std::io::copy(&mut open()?, to)?
    };
    to.flush()?;
    Ok(n)
}
