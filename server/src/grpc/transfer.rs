//! `Publish` (a client stream: the header, then payload chunks) and `Download` (a server
//! stream: the header, then chunks), both streamed through the service's publish and
//! payload reads: a payload is never held whole in memory, and HTTP/2 flow control is the
//! back-pressure both ways.
use super::{convert, pb, topic_name, version_number, FIRST_MESSAGE_WITHIN, MAX_CHUNK_BYTES};
use crate::error::grpc_status;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use imprint_domain::Selector;
use imprint_service::payloads::PayloadBody;
use imprint_service::{BodyStream, Caller, Error, Imprint, Payload, PlanChoice, PublishInput, RolloutRequest};
use std::sync::{Arc, Mutex};
use tonic::{Status, Streaming};

pub type DownloadStream = BoxStream<'static, Result<pb::DownloadResponse, Status>>;

/// What the header says, as the service's publish input (the payload still to come).
fn publish_input(h: pb::PublishHeader, body: BodyStream) -> Result<PublishInput, Error> {
    let scopes = match (h.no_scopes, h.scopes.is_empty()) {
        (true, false) => return Err(Error::invalid("no_scopes is set: scopes must be empty")),
        (true, true) => Some(vec![]),
        (false, true) => None,
        (false, false) => Some(h.scopes.iter().map(|s| Selector::parse(s)).collect::<Result<Vec<_>, _>>()?),
    };
    let rollout = match h.rollout.as_str() {
        "" => RolloutRequest::TopicDefault,
        "none" => RolloutRequest::None,
        name => RolloutRequest::Plan(PlanChoice::Named(name.to_owned())),
    };
    Ok(PublishInput {
        payload: Payload::Stream { body, len: (h.size > 0).then_some(h.size) },
        content_type: Some(h.content_type).filter(|c| !c.trim().is_empty()),
        metadata: h.metadata.into_iter().collect(),
        scopes,
        message: h.message,
        rollout,
        sha256: Some(h.sha256).filter(|s| !s.trim().is_empty()),
        force: None,
    })
}

/// The chunks after the header, as the body the service's publish reads, up to the `end`
/// message; anything but chunks then `end`, a chunk over the limit, a payload of another
/// size than `announced` (0: not announced), or a stream that stops without `end` (hyper
/// turns a client's RST_STREAM CANCEL into a clean end of the request body) breaks the body
/// off (nothing is stored). A transport failure of the call (an
/// oversized message, a reset) is kept in `broke`: the publish then answers with it rather
/// than with the body's error.
fn chunks(inbound: Streaming<pb::PublishRequest>, announced: u64, broke: Arc<Mutex<Option<Status>>>) -> BodyStream {
    let other = |m: String| std::io::Error::other(m);
    futures::stream::unfold((inbound, 0u64, false), move |(mut inbound, seen, done)| {
        let broke = broke.clone();
        async move {
            if done {
                return None;
            }
            let item = match inbound.next().await {
                None => Err(other("the Publish stopped before its end message: the upload broke off".into())),
                Some(Ok(pb::PublishRequest { kind: Some(pb::publish_request::Kind::End(_)) })) => {
                    if announced > 0 && seen != announced {
                        Err(other(format!("the payload has {seen} bytes, not the {announced} its header announced")))
                    } else {
                        match inbound.next().await {
                            None => return None,
                            Some(Err(status)) => {
                                let e = other(format!("the call broke off: {}", status.message()));
                                *broke.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                                Err(e)
                            }
                            Some(Ok(_)) => Err(other("a Publish sends nothing after its end message".into())),
                        }
                    }
                }
                Some(Ok(pb::PublishRequest { kind: Some(pb::publish_request::Kind::Chunk(c)) })) => {
                    let seen = seen + c.len() as u64;
                    if c.len() > MAX_CHUNK_BYTES {
                        Err(other(format!("a chunk has {} bytes; chunks have at most {MAX_CHUNK_BYTES}", c.len())))
                    } else if announced > 0 && seen > announced {
                        Err(other(format!("the payload has more than the {announced} bytes its header announced")))
                    } else {
                        return Some((Ok(c), (inbound, seen, false)));
                    }
                }
                Some(Ok(_)) => Err(other("after the header, a Publish sends chunks, then its end message".into())),
                Some(Err(status)) => {
                    let e = other(format!("the call broke off: {}", status.message()));
                    *broke.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    Err(e)
                }
            };
            Some((item, (inbound, seen, true)))
        }
    })
    .boxed()
}

pub(super) async fn publish(
    imprint: Imprint,
    caller: Caller,
    mut inbound: Streaming<pb::PublishRequest>,
) -> Result<pb::PublishResponse, Status> {
    let first = match tokio::time::timeout(FIRST_MESSAGE_WITHIN, inbound.next()).await {
        Err(_) => return Err(grpc_status(Error::invalid("a Publish must send its header within 10 s"))),
        Ok(None) => return Err(grpc_status(Error::invalid("a Publish must begin with a header message"))),
        Ok(Some(m)) => m?,
    };
    let Some(pb::publish_request::Kind::Header(header)) = first.kind else {
        return Err(grpc_status(Error::invalid("a Publish must begin with a header message")));
    };
    let topic = topic_name(&header.topic)?;
    let broke = Arc::new(Mutex::new(None));
    let announced = header.size;
    let input = publish_input(header, chunks(inbound, announced, broke.clone())).map_err(grpc_status)?;
    // In its own task, as over HTTP: a client that goes away mid-upload does not cancel
    // the publish half-way; the body breaks off and the publish cleans up.
    let task = tokio::spawn(async move { imprint.publish(&caller, &topic, input).await });
    let published = task.await.map_err(|e| grpc_status(Error::Internal(format!("publish task: {e}"))))?;
    match published {
        Ok(p) => Ok(convert::published(p)),
        Err(e) => Err(broke.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(|| grpc_status(e))),
    }
}

/// Splits a stream's chunks to at most `MAX_CHUNK_BYTES` (slices, not copies).
fn split(chunk: Bytes) -> impl futures::Stream<Item = Bytes> {
    let mut parts = Vec::with_capacity(chunk.len() / MAX_CHUNK_BYTES + 1);
    let mut at = 0;
    while at < chunk.len() {
        let end = (at + MAX_CHUNK_BYTES).min(chunk.len());
        parts.push(chunk.slice(at..end));
        at = end;
    }
    futures::stream::iter(parts)
}

pub(super) async fn download(
    imprint: &Imprint,
    caller: &Caller,
    r: pb::DownloadRequest,
) -> Result<DownloadStream, Status> {
    let topic = topic_name(&r.topic)?;
    let (payload, pinned) = if r.version > 0 {
        if !r.labels.is_empty() {
            return Err(grpc_status(Error::invalid("labels are for version 0 (what they resolve to)")));
        }
        (imprint.version_payload(caller, &topic, version_number(r.version)?).await.map_err(grpc_status)?, false)
    } else {
        // As GET …/latest: the resolved version, its bytes from memory when held there.
        let labels = super::labels_of(&r.labels)?;
        let (v, pinned) = imprint.latest(caller, &topic, &labels).map_err(grpc_status)?;
        let p = match &v.payload {
            Some(bytes) => imprint_service::payloads::VersionPayload {
                version: v.version,
                content_type: v.content_type.clone(),
                sha256: v.sha256.clone(),
                size: bytes.len() as u64,
                body: PayloadBody::Inline(bytes.clone()),
                region: None,
            },
            None => imprint
                .version_payload(caller, &topic, Error::known_version(v.version).map_err(grpc_status)?)
                .await
                .map_err(grpc_status)?,
        };
        (p, pinned)
    };
    let header = pb::DownloadResponse {
        kind: Some(pb::download_response::Kind::Header(pb::DownloadHeader {
            version: payload.version,
            size: payload.size,
            sha256: payload.sha256.clone(),
            content_type: payload.content_type.clone(),
            pinned,
        })),
    };
    let body: BoxStream<'static, Result<Bytes, std::io::Error>> =
        imprint.payload_stream(payload.body, payload.region.as_deref(), None).await.map_err(grpc_status)?;
    let chunks = body
        .map_ok(|c| split(c).map(Ok::<_, std::io::Error>))
        .try_flatten()
        .filter(|c| futures::future::ready(c.as_ref().map_or(true, |c| !c.is_empty())))
        .map(|c| match c {
            Ok(c) => Ok(pb::DownloadResponse { kind: Some(pb::download_response::Kind::Chunk(c)) }),
            Err(e) => Err(grpc_status(Error::ObjectStoreUnavailable(format!("reading the payload: {e}")))),
        });
    Ok(futures::stream::once(async move { Ok(header) }).chain(chunks).boxed())
}
