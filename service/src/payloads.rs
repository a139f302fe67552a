//! Payload bytes in and out: streamed uploads into the object store (memory stays flat
//! whatever the size), registered objects, downloads (whole, ranges, presigned) and the
//! sweep that deletes objects no committed version claims.
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handle::Imprint;
use crate::objects::{store_error, Objects};
use crate::regions::unknown_region;
use crate::store;
use crate::versions::{verify_sha256, BodyStream, Received, MAX_VALIDATED_BYTES};
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use imprint_domain::{TopicName, VersionNumber};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, WriteMultipart};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::Range;

/// Upload part size (S3 wants ≥ 5 MiB) and parts in flight: at most ~24 MiB of a body
/// is in memory at any time.
const PART_BYTES: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;
/// An upload not claimed by a committed version within this is swept.
const UPLOAD_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// What a payload may weigh on this topic, and whether it must be kept in memory for
/// validation (JSON Schema or Apollo binding: then at most `MAX_VALIDATED_BYTES`).
fn limits(t: &store::topics::TopicRef) -> (u64, bool) {
    let keep = t.json_schema.is_some() || t.apollo_namespace.is_some() || t.spring_application.is_some();
    let max = t.max_size as u64;
    (if keep { max.min(MAX_VALIDATED_BYTES) } else { max }, keep)
}

/// A payload as it streams by: counted against the limit, hashed, and kept when asked.
struct Tally {
    size: u64,
    limit: u64,
    hasher: Sha256,
    content: Option<BytesMut>,
}

impl Tally {
    fn new(limit: u64, keep: bool) -> Self {
        Self { size: 0, limit, hasher: Sha256::new(), content: keep.then(BytesMut::new) }
    }

    fn add(&mut self, chunk: &[u8]) -> Result<()> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(Error::PayloadTooLarge { size: self.size, limit: self.limit });
        }
        self.hasher.update(chunk);
        if let Some(c) = &mut self.content {
            c.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// (size, SHA-256 hex, the bytes when kept)
    fn finish(self) -> (u64, String, Option<Bytes>) {
        (self.size, hex::encode(self.hasher.finalize()), self.content.map(BytesMut::freeze))
    }
}

// A version's payload, to send it (defined with the other answers in crate::model).
pub use crate::model::{PayloadBody, VersionPayload};

/// A body that sends nothing for this long is given up on (the upload is discarded).
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The next chunk of a body: `Ok(None)` at its end; an error when it broke off or stalled.
async fn next_chunk(body: &mut BodyStream) -> Result<Option<Bytes>> {
    match tokio::time::timeout(BODY_IDLE, body.next()).await {
        Err(_) => Err(Error::invalid(format!(
            "the request body sent nothing for {} s; nothing was stored",
            BODY_IDLE.as_secs()
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(e))) => Err(cut_off(e)),
    }
}

/// Chunk size of downloads from a local store.
const FILE_CHUNK: usize = 1 << 20;

/// `range` of a local file as a stream of up to `FILE_CHUNK`-byte chunks.
async fn file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> Result<BoxStream<'static, std::result::Result<Bytes, std::io::Error>>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::from_std(file);
    file.seek(std::io::SeekFrom::Start(range.start)).await.map_err(|e| Error::ObjectStoreUnavailable(e.to_string()))?;
    let left = range.end.saturating_sub(range.start);
    Ok(futures::stream::try_unfold((file, left), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = (left as usize).min(FILE_CHUNK);
        let mut buf = BytesMut::zeroed(want);
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the object file is shorter than its size",
            ));
        }
        buf.truncate(n);
        Ok(Some((buf.freeze(), (file, left - n as u64))))
    })
    .boxed())
}

fn cut_off(e: std::io::Error) -> Error {
    Error::invalid(format!("the request body ended before it was complete ({e}); nothing was stored"))
}

fn parse_key(key: &str) -> Result<Path> {
    Path::parse(key).map_err(|e| Error::Internal(format!("stored object key {key:?}: {e}")))
}

impl Imprint {
    /// Reads a streamed body: inline when it fits the topic's inline limit, otherwise
    /// into an upload in the object store, hashed and counted on the fly.
    pub(crate) async fn receive(
        &self,
        caller: &Caller,
        topic: &TopicName,
        mut body: BodyStream,
        len: Option<u64>,
        expected: Option<&str>,
    ) -> Result<Received> {
        let t = {
            let mut conn = self.pool().acquire().await?;
            store::topics::require(&mut conn, topic, false).await?
        };
        // Refused before a byte is read: no rights, or announced too large.
        caller.require_write(&t.name, &t.owner)?;
        let (limit, keep) = limits(&t);
        if let Some(n) = len.filter(|n| *n > limit) {
            return Err(Error::PayloadTooLarge { size: n, limit });
        }
        // At rest (docs/encryption.md): the data key is made before a byte is read, so a
        // key provider that is down refuses the publish (503) with nothing stored.
        let at_rest = crate::sealed::at_rest_key(&mut *self.pool().acquire().await?, t.id).await?;
        let inline_limit = t.inline_limit as u64;
        let mut head = BytesMut::new();
        while head.len() as u64 <= inline_limit {
            match next_chunk(&mut body).await? {
                None => return Ok(Received::Inline(head.freeze())),
                Some(chunk) => head.extend_from_slice(&chunk),
            }
            if head.len() as u64 > limit {
                return Err(Error::PayloadTooLarge { size: head.len() as u64, limit });
            }
        }
        let sealer = match &at_rest {
            Some(k) => Some(self.sealer(k).await?),
            None => None,
        };
        let sealed = sealer.is_some();
        // The topic's own region (home, unless its regions leave it out; docs/regions.md).
        let (region, objects) = self.upload_region(&mut *self.pool().acquire().await?, t.id).await?;
        let key = objects.staging_key();
        let stray_region = region.as_deref().unwrap_or_default();
        store::objects::mark_in(self.pool(), stray_region, key.as_ref(), self.now() + UPLOAD_GRACE, "upload").await?;
        let uploaded = match self.upload(&objects, &key, head.freeze(), body, limit, keep, sealer).await {
            Ok((size, sha256, content)) => verify_sha256(expected, &sha256).map(|()| (size, sha256, content)),
            Err(e) => Err(e),
        };
        match uploaded {
            Ok((size, sha256, content)) => {
                Ok(Received::Object { key, owned: true, size, sha256, content, sealed, located: Vec::new(), region })
            }
            Err(e) => {
                self.discard_upload_in(region.as_deref(), &key).await;
                Err(e)
            }
        }
    }

    /// Streams `first` and the rest of `body` into a multipart upload at `key`; with a
    /// `sealer` (an at-rest topic) the bytes written are sealed as they go (about one
    /// 64 KiB chunk held), while size, checksum and kept content are the plaintext's.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        objects: &Objects,
        key: &Path,
        first: Bytes,
        mut body: BodyStream,
        limit: u64,
        keep: bool,
        mut sealer: Option<crate::at_rest::Sealer>,
    ) -> Result<(u64, String, Option<Bytes>)> {
        let upload = objects.store().put_multipart(key).await.map_err(store_error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut tally = Tally::new(limit, keep);
        let mut next = Some(first);
        let streamed: Result<()> = async {
            loop {
                let chunk = match next.take() {
                    Some(c) => c,
                    None => match next_chunk(&mut body).await? {
                        None => return Ok(()),
                        Some(c) => c,
                    },
                };
                tally.add(&chunk)?;
                let chunk = match &mut sealer {
                    Some(s) => s.push(&chunk),
                    None => chunk,
                };
                if !chunk.is_empty() {
                    writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_error)?;
                    writer.put(chunk);
                }
            }
        }
        .await;
        match streamed {
            Ok(()) => {
                if let Some(s) = sealer {
                    writer.put(s.finish());
                }
                writer.finish().await.map_err(store_error)?;
                let done = tally.finish();
                metrics::counter!("imprint_object_bytes_written_total").increment(done.0);
                Ok(done)
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, %key, "aborting an upload failed; the sweep removes it");
                }
                Err(e)
            }
        }
    }

    /// Checks a registered object (inside the store, present, within limits) and reads it
    /// once to know its checksum; with several regions, also its `locations` in other
    /// regions' stores, each checked the same way and holding the same bytes.
    pub(crate) async fn inspect_registered(
        &self,
        caller: &Caller,
        topic: &TopicName,
        url: &str,
        locations: &BTreeMap<String, String>,
        expected: Option<&str>,
    ) -> Result<Received> {
        let t = {
            let mut conn = self.pool().acquire().await?;
            store::topics::require(&mut conn, topic, false).await?
        };
        caller.require_write(&t.name, &t.owner)?;
        Self::refuse_registered_at_rest(&mut *self.pool().acquire().await?, t.id).await?;
        // The regions named are checked before any store is read.
        let regions = &self.config().regions;
        let (topic_regions, _) = {
            let mut conn = self.pool().acquire().await?;
            let (list, min) = store::copies::topic_settings(&mut conn, t.id).await?;
            crate::regions::topic_regions(regions, list.as_deref(), min)
        };
        if crate::regions::primary_region(regions, &topic_regions).is_some() {
            return Err(Error::invalid(format!(
                "this topic's regions ({}) leave out the home region {:?}, where registered objects' url is: \
                 upload the payload instead (docs/regions.md)",
                topic_regions.join(", "),
                regions.home()
            )));
        }
        for region in locations.keys() {
            crate::regions::check_location_region(regions, &topic_regions, region)?;
        }
        let (limit, keep) = limits(&t);
        let (key, read, sha256, content) = self.registered_in(self.objects(), None, url, &t, limit, keep).await?;
        verify_sha256(expected, &sha256)?;
        let mut located = Vec::with_capacity(locations.len());
        for (region, url) in locations {
            let objects = regions.other(region).ok_or_else(|| unknown_region(Some(region)))?;
            let (key, size, got, _) = self.registered_in(objects, Some(region), url, &t, limit, false).await?;
            // The same object everywhere: a consumer gets these bytes whichever region serves it.
            if (size, got.as_str()) != (read, sha256.as_str()) {
                return Err(Error::ChecksumMismatch { expected: sha256, actual: got });
            }
            located.push((region.clone(), key.to_string()));
        }
        Ok(Received::Object { key, owned: false, size: read, sha256, content, sealed: false, located, region: None })
    }

    /// One registered object in one region's store (`region` None: home): its key (inside
    /// that store, in the owner team's folder of the registration area, not a link out of
    /// it, not another topic's payload there), size, SHA-256 and (with `keep`) its bytes.
    async fn registered_in(
        &self,
        objects: &Objects,
        region: Option<&str>,
        url: &str,
        t: &store::topics::TopicRef,
        limit: u64,
        keep: bool,
    ) -> Result<(Path, u64, String, Option<Bytes>)> {
        let area = &self.config().register_area;
        let key = objects.key_of_url(url, area, &t.owner)?;
        let missing = |e: Error| match e {
            Error::ObjectNotFound(_) => Error::ObjectNotFound(url.to_owned()),
            e => e,
        };
        objects.check_registered_target(&key, area, &t.owner).await.map_err(missing)?;
        let used = match region {
            None => store::objects::used_by_another_topic(self.pool(), key.as_ref(), t.id).await?,
            Some(r) => store::objects::used_by_another_topic_in(self.pool(), r, key.as_ref(), t.id).await?,
        };
        if used {
            return Err(Error::Forbidden(format!("{url:?} is the payload of another topic's version")));
        }
        let size = objects.size(&key).await.map_err(missing)?;
        if size > limit {
            return Err(Error::PayloadTooLarge { size, limit });
        }
        let mut stream = objects.store().get(&key).await.map_err(store_error).map_err(missing)?.into_stream();
        let mut tally = Tally::new(limit, keep);
        while let Some(chunk) = stream.next().await {
            tally.add(&chunk.map_err(store_error)?)?;
        }
        let (read, sha256, content) = tally.finish();
        Ok((key, read, sha256, content))
    }

    /// Deletes an upload that will not be committed, and forgets it. Failures are left
    /// to the sweep (the stray row stays).
    /// In a region's store (None: home).
    pub(crate) async fn discard_upload_in(&self, region: Option<&str>, key: &Path) {
        let Some(objects) = self.region_objects(region.unwrap_or_default()) else { return };
        match objects.delete(key).await {
            Ok(()) => {
                let stray_region = region.unwrap_or_default();
                if let Err(e) = store::objects::unmark_in(self.pool(), stray_region, &[key.to_string()]).await {
                    tracing::debug!(error = %e, %key, "stray row left for the sweep");
                }
            }
            Err(e) => tracing::warn!(error = %e, %key, "deleting an abandoned upload failed; the sweep retries"),
        }
    }

    /// Deletes up to `limit` due stray objects (abandoned uploads, purged payloads).
    /// Several servers may sweep at once: each row is taken by one of them.
    pub async fn sweep_stray_objects(&self, limit: i64) -> Result<usize> {
        let mut tx = self.pool().begin().await?;
        let keys = store::objects::due(&mut tx, self.now(), limit).await?;
        // Per region ("" is home): a region that is down keeps its rows for the next sweep.
        let mut done: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (region, key) in keys {
            let used = if region.is_empty() {
                store::objects::in_use(&mut *tx, &key).await?
            } else {
                store::objects::in_use_in(&mut *tx, &region, &key).await?
            };
            if !used {
                let Some(objects) = self.region_objects(&region) else {
                    tracing::warn!(region, key, "a stray object of a region that is not configured waits until it is");
                    continue;
                };
                let path = parse_key(&key)?;
                if let Err(e) = objects.delete(&path).await {
                    tracing::warn!(error = %e, region, key, "deleting a stray object failed; retrying on the next sweep");
                    continue;
                }
            }
            done.entry(region).or_default().push(key);
        }
        let mut n = 0;
        for (region, keys) in &done {
            store::objects::unmark_in(&mut *tx, region, keys).await?;
            n += keys.len();
        }
        tx.commit().await?;
        if n > 0 {
            metrics::counter!("imprint_stray_objects_deleted_total").increment(n as u64);
            tracing::info!(deleted = n, "stray objects deleted");
        }
        Ok(n)
    }

    /// Where a version's payload is (410 once purged).
    pub async fn version_payload(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
    ) -> Result<VersionPayload> {
        let version = version.get();
        self.require_direct_reader(caller)?;
        // Coalesced (crate::coalesce): identical concurrent downloads share the two queries.
        let key = format!("{}\u{0}{}\u{0}{version}", topic.as_str(), self.change_seq(topic.as_str()));
        let p = self
            .coalesced(
                |r| &r.payloads,
                key,
                caller,
                || async {
                    let mut conn = self.pool().acquire().await?;
                    self.inner.coalesced.queried(2);
                    let t = store::topics::require(&mut conn, topic, false).await?;
                    let row = store::versions::data(&mut *conn, t.id, version as i64).await?;
                    let guard = |value| crate::coalesce::Guarded {
                        name: t.name.clone(),
                        owner: t.owner.clone(),
                        restricted: t.restricted,
                        value,
                    };
                    // A caller who may not read the topic is refused before learning anything of it.
                    let Some(row) = row else { return Ok(guard(Err(crate::coalesce::Missing::Version))) };
                    if row.purged_at.is_some() {
                        return Ok(guard(Err(crate::coalesce::Missing::Purged)));
                    }
                    // keep_rejected (docs/validation.md): kept for its owner's eyes, never served.
                    if row.rejected {
                        return Ok(guard(Err(crate::coalesce::Missing::Rejected)));
                    }
                    // Sealed at rest (docs/encryption.md): inline bytes are opened here (the
                    // data key usually comes from the key cache), an object as it streams out.
                    let body = match (row.inline_data, row.object_key) {
                        (Some(data), _) if row.sealed => PayloadBody::SealedInline(Bytes::from(data)),
                        (Some(data), _) => PayloadBody::Inline(Bytes::from(data)),
                        (None, Some(key)) if row.sealed => PayloadBody::Sealed(key),
                        (None, Some(key)) => PayloadBody::Object(key),
                        (None, None) => {
                            return Err(Error::Internal(format!(
                                "version {version} of {} has no stored payload",
                                t.name
                            )))
                        }
                    };
                    Ok(guard(Ok(VersionPayload {
                        version,
                        content_type: row.content_type,
                        sha256: row.sha256,
                        size: row.size as u64,
                        body,
                        // The object's own region, when it is not home (docs/regions.md).
                        region: row.object_region,
                    })))
                },
            )
            .await?
            .map_err(|m| m.error(topic.as_str(), version))?;
        // The caller may read the topic (checked above): sealed inline bytes are opened now,
        // and the plaintext read is counted (docs/encryption.md).
        let mut p = p;
        if matches!(p.body, PayloadBody::SealedInline(_) | PayloadBody::Sealed(_)) {
            if let Some(t) = self.state().get(topic.as_str()) {
                self.plaintext_reads().record(t.id, version, caller, self.now());
            }
        }
        if let PayloadBody::SealedInline(b) = p.body {
            p.body = PayloadBody::Inline(self.open_bytes(b, true).await?);
        }
        Ok(p)
    }

    /// A candidate's bytes for an external validator, by the token in its download URL
    /// (404 once the checks are done or the URL expired; the token is the credential).
    pub async fn validation_candidate(&self, token: &str) -> Result<VersionPayload> {
        let gone = || Error::CandidateNotFound;
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(gone());
        }
        let token_sha256 = hex::encode(Sha256::digest(token.as_bytes()));
        let row = store::checks::candidate(self.pool(), &token_sha256).await?.ok_or_else(gone)?;
        if row.expires_at < self.now() {
            return Err(gone());
        }
        let _ = row.topic_id;
        let body = match (row.inline_data, row.object_key) {
            (Some(b), _) => PayloadBody::Inline(self.open_bytes(Bytes::from(b), row.sealed).await?),
            (None, Some(k)) if row.sealed => PayloadBody::Sealed(k),
            (None, Some(k)) => PayloadBody::Object(k),
            (None, None) => return Err(gone()),
        };
        Ok(VersionPayload {
            version: 0,
            content_type: row.content_type,
            sha256: row.sha256,
            size: row.size as u64,
            body,
            region: row.object_region,
        })
    }

    /// A stream of an object's bytes (a byte range of it, if given).
    pub async fn read_object(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, std::result::Result<Bytes, std::io::Error>>> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        let got = self.objects().store().get_opts(&parse_key(key)?, options).await.map_err(store_error)?;
        match got.payload {
            // A local file: read it in large chunks on tokio's file I/O (object_store's own
            // stream reads 8 KiB at a time, a blocking task each: ~5× slower than `cp`).
            object_store::GetResultPayload::File(file, _) => Ok(file_stream(file, got.range).await?),
            object_store::GetResultPayload::Stream(s) => Ok(s.map(|r| r.map_err(std::io::Error::other)).boxed()),
        }
    }

    /// A payload's bytes as a stream: inline bytes as they are, an object read from the
    /// store (`range` of it, if given), a sealed object opened chunk by chunk (for a
    /// `range`, only the chunks holding it are read and opened).
    /// A sealed chunk that does not authenticate ends the stream with an error, so a
    /// download is cut short (and fails its checksum) rather than given altered bytes.
    pub async fn payload_stream(
        &self,
        body: PayloadBody,
        region: Option<&str>,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, std::result::Result<Bytes, std::io::Error>>> {
        let inline = |b: Bytes| {
            let b = match range.clone() {
                Some(r) => b.slice((r.start as usize).min(b.len())..(r.end as usize).min(b.len())),
                None => b,
            };
            futures::stream::once(async move { Ok(b) }).boxed()
        };
        match body {
            PayloadBody::Inline(b) => Ok(inline(b)),
            PayloadBody::SealedInline(b) => Ok(inline(self.open_bytes(b, true).await?)),
            PayloadBody::Object(key) => self.read_object_in(region, &key, range).await,
            PayloadBody::Sealed(key) if range.is_some() => {
                let r = range.expect("a range");
                self.open_sealed_range(region, &key, r).await
            }
            PayloadBody::Sealed(key) => {
                // The first piece is awaited here: the data key's unwrap and the first
                // chunks' authentication then fail as a clear error (503 `key_unavailable`,
                // 500 `payload_altered`) before any response is started.
                let mut s = self.open_object_stream(self.read_object_in(region, &key, None).await?)?;
                match s.next().await {
                    None => Ok(futures::stream::empty().boxed()),
                    Some(Err(e)) => Err(self.opened_stream_error(e)),
                    Some(Ok(first)) => Ok(futures::stream::once(async move { Ok(first) }).chain(s).boxed()),
                }
            }
        }
    }

    /// A presigned download URL of an object (S3 with `IMPRINT_PRESIGN=true`), else None.
    pub async fn presigned_url(&self, key: &str) -> Result<Option<String>> {
        self.objects().presigned(parse_key(key)?.as_ref()).await
    }

    /// `presigned_url` in a region's store (None: home).
    pub async fn presigned_url_in(&self, region: Option<&str>, key: &str) -> Result<Option<String>> {
        let objects = self.region_objects(region.unwrap_or_default()).ok_or_else(|| unknown_region(region))?;
        objects.presigned(parse_key(key)?.as_ref()).await
    }

    /// `read_object` from a region's store (None: home).
    pub async fn read_object_in(
        &self,
        region: Option<&str>,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, std::result::Result<Bytes, std::io::Error>>> {
        let Some(region) = region.filter(|r| *r != self.config().regions.home()) else {
            return self.read_object(key, range).await;
        };
        let objects = self.region_objects(region).ok_or_else(|| unknown_region(Some(region)))?;
        let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        let got = objects.store().get_opts(&parse_key(key)?, options).await.map_err(store_error)?;
        Ok(got.into_stream().map(|r| r.map_err(std::io::Error::other)).boxed())
    }

    /// `version_payload` from one region's copy (`?region=`): 400 for a region that is not
    /// configured, 404 when that region holds no copy (yet). Inline payloads are the same
    /// everywhere. The caller's rights come first: a caller who may not read the topic is
    /// refused as every other read refuses it, whatever the region says. The key read is
    /// the one the server recorded for that region's copy, never built from the request.
    pub async fn version_payload_in(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
        region: &str,
    ) -> Result<VersionPayload> {
        let mut p = self.version_payload(caller, topic, version).await?;
        if !self.config().regions.is_configured(region) {
            return Err(unknown_region(Some(region)));
        }
        if !matches!(p.body, PayloadBody::Object(_) | PayloadBody::Sealed(_)) {
            return Ok(p);
        }
        // The object's own region (home unless its topic leaves it out) needs no lookup.
        if region == p.region.as_deref().unwrap_or(self.config().regions.home()) {
            p.region = Some(region.to_owned());
            return Ok(p);
        }
        let mut conn = self.pool().acquire().await?;
        let t = store::topics::require(&mut conn, topic, false).await?;
        let key = store::copies::done_key(&mut *conn, t.id, version.get() as i64, region).await?.ok_or_else(|| {
            Error::NotFound(format!("version {} of {} has no copy in region {region} (yet)", version.get(), t.name))
        })?;
        p.body = match p.body {
            PayloadBody::Sealed(_) => PayloadBody::Sealed(key),
            _ => PayloadBody::Object(key),
        };
        p.region = Some(region.to_owned());
        Ok(p)
    }

    /// Where a version's object is: each region that holds it or is still to get it.
    pub async fn version_copies(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
    ) -> Result<Vec<crate::model::ObjectCopy>> {
        let t = self.readable_topic(caller, topic).await?;
        let rows = store::copies::of_version(self.pool(), t.id, version.get() as i64).await?;
        let home = self.config().regions.home();
        let mut out: Vec<crate::model::ObjectCopy> = rows
            .into_iter()
            .map(|(c, key)| crate::model::ObjectCopy {
                url: c.registered.then(|| self.region_objects(&c.region).map(|o| o.url_of(&key))).flatten(),
                home: c.region == home,
                region: c.region,
                state: c.state,
                attempts: c.attempts.max(0) as u32,
                last_error: c.last_error,
                updated_at: c.updated_at,
            })
            .collect();
        out.sort_by_key(|c| (!c.home, c.region.clone()));
        Ok(out)
    }

    /// At most the first `max` bytes of a version's payload, and its whole size: what a
    /// page may show without loading a large payload.
    pub async fn version_preview(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
        max: u64,
    ) -> Result<(Bytes, u64)> {
        let p = self.version_payload(caller, topic, version).await?;
        match p.body {
            PayloadBody::SealedInline(b) => {
                let b = self.open_bytes(b, true).await?;
                Ok((b.slice(..(b.len()).min(max as usize)), p.size))
            }
            PayloadBody::Inline(b) => Ok((b.slice(..(b.len()).min(max as usize)), p.size)),
            PayloadBody::Object(key) => {
                let n = p.size.min(max);
                if n == 0 {
                    return Ok((Bytes::new(), p.size));
                }
                let objects = self.region_objects(p.region.as_deref().unwrap_or_default()).unwrap_or(self.objects());
                let bytes = objects.store().get_range(&parse_key(&key)?, 0..n).await.map_err(store_error)?;
                Ok((bytes, p.size))
            }
            PayloadBody::Sealed(key) => {
                // The first chunks opened, the rest of the stream dropped unread.
                let mut s = self.open_object_stream(self.read_object_in(p.region.as_deref(), &key, None).await?)?;
                let mut out = BytesMut::new();
                while (out.len() as u64) < max {
                    match s.next().await {
                        Some(chunk) => out.extend_from_slice(&chunk.map_err(|e| self.opened_stream_error(e))?),
                        None => break,
                    }
                }
                out.truncate(max as usize);
                Ok((out.freeze(), p.size))
            }
        }
    }

    /// A whole payload in memory (with its content type and checksum); objects larger
    /// than `MAX_VALIDATED_BYTES` are refused — stream those with `version_payload`.
    pub async fn version_data(
        &self,
        caller: &Caller,
        topic: &TopicName,
        version: VersionNumber,
    ) -> Result<(Bytes, String, String)> {
        let p = self.version_payload(caller, topic, version).await?;
        let bytes = match p.body {
            PayloadBody::Inline(b) => b,
            PayloadBody::SealedInline(b) => self.open_bytes(b, true).await?,
            PayloadBody::Object(_) | PayloadBody::Sealed(_) if p.size > MAX_VALIDATED_BYTES => {
                return Err(Error::PayloadTooLarge { size: p.size, limit: MAX_VALIDATED_BYTES })
            }
            PayloadBody::Sealed(key) => self.open_object_whole(&key, p.region.as_deref(), MAX_VALIDATED_BYTES).await?,
            PayloadBody::Object(key) => self
                .region_objects(p.region.as_deref().unwrap_or_default())
                .unwrap_or(self.objects())
                .store()
                .get(&parse_key(&key)?)
                .await
                .map_err(store_error)?
                .bytes()
                .await
                .map_err(store_error)?,
        };
        Ok((bytes, p.content_type, p.sha256))
    }
}
