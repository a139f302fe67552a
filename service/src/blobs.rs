//! Content-addressed payloads (`/api/v1/blobs/sha256/{hash}`, docs/fairness.md): a payload
//! by its SHA-256, with the rights of a version that holds it — the caller must be able
//! to read some topic with a live version of it, as `versions/{n}/data` would need
//! (`require_direct_reader`, `Caller::require_read`). Whether any unrestricted topic holds
//! it says whether the answer may be cached publicly.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::payloads::VersionPayload;
use crate::{store, Imprint};
use imprint_domain::TopicName;

/// Holders considered for one blob (a payload published to more topics than this is
/// found through the first ones, unrestricted first).
const MAX_HOLDERS: i64 = 100;

/// A blob and how it may be cached.
pub struct Blob {
    pub payload: VersionPayload,
    /// Some unrestricted topic holds these bytes: anyone may read them, any cache keep them.
    pub public: bool,
}

/// A SHA-256 as the URL gives it: 64 hex digits (either case), answered in lower case.
pub fn parse_sha256(s: &str) -> Result<String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Error::invalid("a blob is named by its SHA-256: 64 hexadecimal digits"))
    }
}

impl Imprint {
    pub async fn blob(&self, caller: &Caller, sha256: &str) -> Result<Blob> {
        let sha256 = parse_sha256(sha256)?;
        self.require_direct_reader(caller)?;
        let holders = store::blobs::holders(self.pool(), &sha256, MAX_HOLDERS).await?;
        let not_found = || Error::NotFound(format!("no live version holds a payload with SHA-256 {sha256}"));
        let first = holders.first().ok_or_else(not_found)?;
        let public = !first.restricted;
        let readable = holders.iter().find(|h| caller.require_read(&h.topic, &h.owner, h.restricted).is_ok());
        let Some(h) = readable else {
            // Refused as the topic would refuse this caller (401 anonymous, 403 otherwise),
            // without naming which topic holds the bytes.
            return Err(match caller {
                Caller::Anonymous => Error::Unauthorized(
                    "this blob is held only by restricted topics: it is read with a token allowed on one of them"
                        .into(),
                ),
                _ => Error::Forbidden(format!("{} may not read the restricted topics holding this blob", caller.who())),
            });
        };
        let topic = TopicName::parse(&h.topic).map_err(|e| Error::Internal(format!("stored topic name: {e}")))?;
        let payload = self.version_payload(caller, &topic, Error::known_version(h.version as u64)?).await?;
        if payload.sha256 != sha256 {
            return Err(not_found()); // purged or replaced between the two reads
        }
        Ok(Blob { payload, public })
    }
}
