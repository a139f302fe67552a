//! Envelope encryption at rest in the request paths (docs/encryption.md, "At rest"): an
//! at-rest topic's payload bytes are sealed (`at_rest`, under a data key of the server's
//! key provider, `keys`) before they are stored — inline in Postgres, streamed into the
//! object store, kept for external validators, kept in drafts — and opened on every read.
//! Whether stored bytes are sealed is recorded with them (`sealed` columns), never guessed
//! from the bytes: a topic's setting may change, its older versions stay as stored.
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::keys::{AtRestError, KeyError, KeyProvider, Keys};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// What a key provider failure means to a caller.
pub(crate) fn key_error(key_id: &str, e: KeyError) -> Error {
    match e {
        KeyError::Unavailable(why) => Error::KeyUnavailable(format!(
            "the key provider is unavailable ({why}); nothing was stored, try again later"
        )),
        KeyError::UnknownKey(why) => Error::invalid(format!("key {key_id:?} cannot be used: {why}")),
        KeyError::Refused(why) => Error::PayloadAltered(format!("a stored data key did not unwrap: {why}")),
    }
}

fn open_error(e: AtRestError) -> Error {
    match e {
        AtRestError::Key(KeyError::Unavailable(why)) => Error::KeyUnavailable(format!(
            "the key provider is unavailable ({why}): this payload is sealed at rest and cannot be opened now"
        )),
        AtRestError::Key(e) => Error::PayloadAltered(format!("the stored payload cannot be opened: {e}")),
        AtRestError::Sealed(e) => Error::PayloadAltered(format!("the stored payload was not served: {e}")),
    }
}

/// The io error a failed chunk ends a download stream with, as the caller's error.
pub(crate) fn stream_error(e: std::io::Error) -> Error {
    Error::PayloadAltered(format!("the stored payload was not served whole: {e}"))
}

impl Imprint {
    /// The server's key provider, or a clear refusal when none is configured.
    pub(crate) fn keys(&self) -> Result<&Keys> {
        self.config().keys.as_ref().ok_or_else(|| {
            Error::KeyUnavailable("this server has no key provider configured (IMPRINT_KEY_PROVIDER)".into())
        })
    }

    /// Checks that the provider knows `key_id` and can make data keys with it now (one
    /// `generate`: a KMS answers for the key, a keyring looks it up).
    pub(crate) async fn check_at_rest_key(&self, key_id: &str) -> Result<()> {
        crate::at_rest::check_key_id(key_id).map_err(|e| Error::invalid(format!("encryption.key: {e}")))?;
        let keys = self.config().keys.as_ref().ok_or_else(|| {
            Error::invalid(
                "this server has no key provider configured (IMPRINT_KEY_PROVIDER): at_rest is not available",
            )
        })?;
        keys.generate(key_id).await.map(|_| ()).map_err(|e| key_error(key_id, e))
    }

    /// Bytes held whole (an inline payload, a draft, a candidate) sealed under `key_id`.
    pub(crate) async fn seal_bytes(&self, key_id: &str, plain: &[u8]) -> Result<Bytes> {
        let sealed = self.keys()?.seal(key_id, plain).await.map_err(|e| key_error(key_id, e))?;
        metrics::counter!("imprint_at_rest_sealed_total").increment(1);
        Ok(sealed)
    }

    /// Stored bytes opened when `sealed`, as they are otherwise.
    pub(crate) async fn open_bytes(&self, stored: Bytes, sealed: bool) -> Result<Bytes> {
        if !sealed {
            return Ok(stored);
        }
        self.keys()?.open(&stored).await.map_err(open_error)
    }

    /// A fresh data key of `key_id` for a payload streamed into the store, and its sealer.
    pub(crate) async fn sealer(&self, key_id: &str) -> Result<crate::at_rest::Sealer> {
        let dk = self.keys()?.generate(key_id).await.map_err(|e| key_error(key_id, e))?;
        let header = crate::at_rest::Header::new(key_id, dk.key_version, dk.wrapped);
        Ok(crate::at_rest::Sealer::new(&dk.key, &header))
    }

    /// A sealed object's stream opened chunk by chunk: it ends with an error at the first
    /// chunk that does not authenticate (never with its bytes).
    pub(crate) fn open_object_stream(
        &self,
        sealed: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let opened = self.keys()?.open_stream(sealed);
        Ok(opened
            .map(|r| {
                r.inspect_err(|e| {
                    metrics::counter!("imprint_at_rest_open_failures_total").increment(1);
                    tracing::error!(error = %e, "a sealed payload failed to open while it was served");
                })
            })
            .boxed())
    }

    /// A sealed object read whole into memory (at most `limit` plaintext bytes).
    pub(crate) async fn open_object_whole(&self, key: &str, region: Option<&str>, limit: u64) -> Result<Bytes> {
        let raw = self.read_object_in(region, key, None).await?;
        let mut s = self.open_object_stream(raw)?;
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| self.opened_stream_error(e))?;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(Error::PayloadTooLarge { size: out.len() as u64, limit });
            }
        }
        Ok(out.freeze())
    }

    /// Plaintext bytes `range` (within the payload) of a sealed object: only the chunks
    /// holding it are read and opened (the STREAM positioned at the first of them,
    /// docs/encryption.md "Byte ranges"). The first bytes are awaited here, so a data key
    /// that does not unwrap or an altered first chunk is a clear error before an answer.
    pub(crate) async fn open_sealed_range(
        &self,
        region: Option<&str>,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>> {
        use crate::at_rest::{chunk_span, RangeOpener, CHUNK, TAG};
        let objects =
            self.region_objects(region.unwrap_or_default()).ok_or_else(|| crate::regions::unknown_region(region))?;
        let path = object_store::path::Path::parse(key)
            .map_err(|e| Error::Internal(format!("stored object key {key:?}: {e}")))?;
        let size = objects.size(&path).await?;
        let (h, header_len) = sealed_header(objects, key).await?;
        let body = size.saturating_sub(header_len as u64);
        let chunks = body.div_ceil((CHUNK + TAG) as u64).max(1);
        let plain = body.saturating_sub(chunks * TAG as u64);
        if range.start >= range.end || range.end > plain {
            return Err(Error::RangeNotSatisfiable { size: plain });
        }
        let span = chunk_span(header_len, plain, range.clone());
        let data_key =
            self.keys()?.unwrap(&h.key_id, h.key_version, &h.wrapped).await.map_err(|e| key_error(&h.key_id, e))?;
        let raw = self.read_object_in(region, key, Some(span.sealed.clone())).await?;
        let opener = RangeOpener::new(&data_key, &h, &span);
        let invalid = |e: crate::at_rest::SealError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let opened = futures::stream::try_unfold((raw, Some(opener)), move |(mut raw, opener)| async move {
            let Some(mut o) = opener else { return Ok(None) };
            match raw.next().await.transpose()? {
                Some(b) => Ok(Some((o.push(&b).map_err(invalid)?, (raw, Some(o))))),
                None => Ok(Some((o.finish().map_err(invalid)?, (raw, None)))),
            }
        });
        // Only the asked bytes: the first chunk's bytes before the range are dropped, and
        // the stream ends with the range.
        let (mut skip, mut want) = (span.skip as usize, range.end - range.start);
        let mut trimmed = opened
            .map_ok(move |mut b: Bytes| {
                let drop = skip.min(b.len());
                skip -= drop;
                b = b.slice(drop..);
                let keep = (want as usize).min(b.len());
                want -= keep as u64;
                b.slice(..keep)
            })
            .try_filter(|b| futures::future::ready(!b.is_empty()))
            .boxed();
        match trimmed.next().await {
            None => Ok(futures::stream::empty().boxed()),
            Some(Err(e)) => Err(self.opened_stream_error(e)),
            Some(Ok(first)) => Ok(futures::stream::once(async move { Ok(first) }).chain(trimmed).boxed()),
        }
    }

    /// Why an opened stream failed: the provider (503) or the bytes (altered).
    pub(crate) fn opened_stream_error(&self, e: std::io::Error) -> Error {
        if let Some(KeyError::Unavailable(why)) = e.get_ref().and_then(|inner| inner.downcast_ref::<KeyError>()) {
            return Error::KeyUnavailable(format!(
                "the key provider is unavailable ({why}): this payload is sealed at rest and cannot be opened now"
            ));
        }
        if let Some(store) = e.get_ref().and_then(|inner| inner.downcast_ref::<object_store::Error>()) {
            return Error::ObjectStoreUnavailable(store.to_string());
        }
        stream_error(e)
    }
}

impl Imprint {
    /// Registered objects (pointers to objects the publisher wrote) cannot be sealed by
    /// the server: an at-rest topic refuses them.
    pub(crate) async fn refuse_registered_at_rest(conn: &mut sqlx::PgConnection, topic_id: i64) -> Result<()> {
        if at_rest_key(conn, topic_id).await?.is_some() {
            return Err(Error::invalid(
                "this topic is encrypted at rest: the server seals what it stores, so it cannot take a registered \
                 object (upload the payload instead)",
            ));
        }
        Ok(())
    }
}

/// The key id an at-rest topic seals under (None for other topics).
pub(crate) async fn at_rest_key(conn: &mut sqlx::PgConnection, topic_id: i64) -> Result<Option<String>> {
    Ok(crate::store::encryption::get(conn, topic_id).await?.and_then(|e| e.at_rest_key().map(str::to_owned)))
}

/// What a rewrap did (`keys rotate --rewrap`, `keys rewrap`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rewrapped {
    /// Inline payloads (Postgres) whose header was rewritten.
    pub inline: u64,
    /// Objects rewritten with the new header and their chunks byte for byte.
    pub objects: u64,
    pub drafts: u64,
    /// Sealed snapshot manifests (`snapshots/<topic>.json`) rewritten with the new header.
    pub manifests: u64,
    /// Sealed under another key id: left alone.
    pub other_keys: u64,
}

/// The most a sealed header can take: magic, version, key id, key version, wrapped key,
/// chunk size and nonce prefix.
const MAX_HEADER: u64 = (8 + crate::at_rest::MAX_KEY_ID + 4 + 2 + crate::at_rest::MAX_WRAPPED + 4 + 7) as u64;

impl Imprint {
    /// Rewraps the data key of every stored payload sealed under `key_id` with the key's
    /// current primary version (the provider's `rewrap`: KMS `ReEncrypt`, the keyring's
    /// unwrap + wrap). Only headers change: inline payloads get the new header in place,
    /// objects are rewritten as the new header followed by their chunks, copied byte for
    /// byte as they stream (nothing is decrypted, memory stays flat). Run after `keys
    /// rotate`; afterwards the old key version can be retired.
    pub async fn rewrap_at_rest(&self, key_id: &str) -> Result<Rewrapped> {
        use crate::at_rest::Header;
        let keys = self.keys()?.clone();
        let mut done = Rewrapped::default();
        let mut after = (0i64, 0i64);
        loop {
            let rows = crate::store::versions::sealed_after(self.pool(), after, 200).await?;
            let Some(last) = rows.last() else { break };
            after = (last.topic_id, last.version);
            for row in rows {
                match (row.inline_data, row.object_key) {
                    (Some(old), _) => {
                        let (h, _) = Header::parse(&old)
                            .map_err(|e| Error::PayloadAltered(e.to_string()))?
                            .ok_or_else(|| Error::PayloadAltered("a sealed payload ends inside its header".into()))?;
                        if h.key_id != key_id {
                            done.other_keys += 1;
                            continue;
                        }
                        let new = keys.rewrap_sealed(&old).await.map_err(open_error)?;
                        if crate::store::versions::replace_sealed_inline(
                            self.pool(),
                            row.topic_id,
                            row.version,
                            &old,
                            &new,
                        )
                        .await?
                        {
                            done.inline += 1;
                        }
                    }
                    (None, Some(key)) => {
                        // The object in its own region, and (several regions) every
                        // region's copy, each rewritten in its store (docs/regions.md).
                        let own = row.object_region.as_deref().unwrap_or_default();
                        let mut stores = vec![(own.to_owned(), key)];
                        let home = self.config().regions.home();
                        let copies = crate::store::copies::of_version(self.pool(), row.topic_id, row.version).await?;
                        stores.extend(
                            copies
                                .into_iter()
                                .filter(|(c, _)| c.state == "done" && c.region != home && c.region != own)
                                .map(|(c, k)| (c.region, k)),
                        );
                        let mut rewrapped = false;
                        for (region, key) in stores {
                            let Some(objects) = self.region_objects(&region).cloned() else { continue };
                            rewrapped |= self.rewrap_object(&objects, &keys, key_id, &key).await?;
                        }
                        if rewrapped {
                            done.objects += 1;
                        } else {
                            done.other_keys += 1;
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        for (id, old) in crate::store::change_control::sealed_drafts(self.pool()).await? {
            let Ok(Some((h, _))) = Header::parse(&old) else { continue };
            if h.key_id != key_id {
                done.other_keys += 1;
                continue;
            }
            let new = keys.rewrap_sealed(&old).await.map_err(open_error)?;
            if crate::store::change_control::replace_sealed_draft(self.pool(), id, &old, &new).await? {
                done.drafts += 1;
            }
        }
        done.manifests = self.rewrap_manifests(&keys, key_id).await?;
        tracing::info!(key_id, ?done, "at-rest data keys rewrapped");
        Ok(done)
    }

    /// Sealed snapshot manifests under `key_id` rewritten with a rewrapped header (the
    /// worker rewrites a manifest only when its version changes).
    async fn rewrap_manifests(&self, keys: &Keys, key_id: &str) -> Result<u64> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        // Listed from the store: `keys rewrap` runs without the serving state.
        let prefix = self.objects().key_under_prefix("snapshots");
        let listed: Vec<object_store::ObjectMeta> =
            self.objects().store().list(Some(&prefix)).try_collect().await.map_err(crate::objects::store_error)?;
        let mut done = 0;
        for meta in listed {
            let (path, name) = (meta.location.clone(), meta.location.to_string());
            let body = match self.objects().store().get(&path).await {
                Ok(r) => r.bytes().await.map_err(crate::objects::store_error)?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(crate::objects::store_error(e)),
            };
            let Ok(mut m) = serde_json::from_slice::<imprint_protocol::SealedManifest>(&body) else { continue };
            if m.key != key_id {
                continue;
            }
            let old = b64.decode(&m.sealed).map_err(|e| Error::PayloadAltered(format!("manifest of {name}: {e}")))?;
            m.sealed = b64.encode(keys.rewrap_sealed(&old).await.map_err(open_error)?);
            let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
            self.objects().put(&path, json.into()).await?;
            done += 1;
        }
        Ok(done)
    }

    /// The header at the start of a sealed object in the home region's store, and its length.
    pub(crate) async fn sealed_object_header(&self, key: &str) -> Result<(crate::at_rest::Header, usize)> {
        sealed_header(self.objects(), key).await
    }

    /// One sealed object rewritten with a rewrapped header (false: another key's).
    async fn rewrap_object(
        &self,
        objects: &crate::objects::Objects,
        keys: &Keys,
        key_id: &str,
        key: &str,
    ) -> Result<bool> {
        use crate::at_rest::Header;
        use object_store::{path::Path, WriteMultipart};
        let path = Path::parse(key).map_err(|e| Error::Internal(format!("stored object key {key:?}: {e}")))?;
        let store = objects.store();
        let (h, start) = sealed_header(objects, key).await?;
        if h.key_id != key_id {
            return Ok(false);
        }
        let (version, wrapped) =
            keys.rewrap(&h.key_id, h.key_version, &h.wrapped).await.map_err(|e| key_error(key_id, e))?;
        let header = Header { key_id: h.key_id.clone(), key_version: version, wrapped, nonce_prefix: h.nonce_prefix };
        // The chunks as they are, streamed from the old object into the new one.
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Offset(start as u64)),
            ..Default::default()
        };
        let mut chunks = store.get_opts(&path, opts).await.map_err(crate::objects::store_error)?.into_stream();
        let upload = store.put_multipart(&path).await.map_err(crate::objects::store_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        writer.put(Bytes::from(header.encode()));
        let copied: Result<()> = async {
            while let Some(c) = chunks.next().await {
                writer.wait_for_capacity(2).await.map_err(crate::objects::store_error)?;
                writer.put(c.map_err(crate::objects::store_error)?);
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => {
                writer.finish().await.map_err(crate::objects::store_error)?;
            }
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
        objects.sync(&path).await?;
        Ok(true)
    }
}

/// The header at the start of a sealed object in `objects`, and its length.
async fn sealed_header(objects: &crate::objects::Objects, key: &str) -> Result<(crate::at_rest::Header, usize)> {
    use crate::at_rest::Header;
    let path =
        object_store::path::Path::parse(key).map_err(|e| Error::Internal(format!("stored object key {key:?}: {e}")))?;
    let size = objects.size(&path).await?;
    let head = objects.store().get_range(&path, 0..size.min(MAX_HEADER)).await.map_err(crate::objects::store_error)?;
    Header::parse(&head)
        .map_err(|e| Error::PayloadAltered(format!("object {key}: {e}")))?
        .ok_or_else(|| Error::PayloadAltered(format!("object {key} ends inside its sealed header")))
}
