//! `Watch`: the consumer long poll as one server stream. The stream holds one long-poll
//! place (the cap shared with HTTP long polls) for its whole life and runs the service's
//! poll again and again with the versions it sent as held: the first answer is the current
//! state, each later one an update released to the consumer's labels. `report` messages
//! on the same call go into the next poll at once (the consumer audit records them).
use super::{convert, pb, Who, FIRST_MESSAGE_WITHIN};
use crate::error::grpc_status;
use futures::StreamExt;
use imprint_service::poll::{parked_bytes, PollRequest, MAX_WAIT_MS};
use imprint_service::{Error, Imprint};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

pub type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchResponse, Status>>;

/// Answers queued for a slow reader before the stream waits for it.
const QUEUED_ANSWERS: usize = 4;

/// Reads the start, takes a place, and runs the stream in its own task.
pub(super) async fn start(
    imprint: Imprint,
    who: Who,
    mut inbound: Streaming<pb::WatchRequest>,
    lifetime: Duration,
) -> Result<WatchStream, Status> {
    let first = match tokio::time::timeout(FIRST_MESSAGE_WITHIN, inbound.next()).await {
        Err(_) => return Err(grpc_status(Error::invalid("a Watch must send its start within 10 s"))),
        Ok(None) => return Err(grpc_status(Error::invalid("a Watch must begin with a start message"))),
        Ok(Some(m)) => m?,
    };
    let Some(pb::watch_request::Kind::Start(s)) = first.kind else {
        return Err(grpc_status(Error::invalid("a Watch must begin with a start message")));
    };
    let mut req = convert::poll_request(s.consumer, s.topics, s.applied, MAX_WAIT_MS)?;
    req.client = who.client;
    req.credential = who.credential;
    req.placed = true;
    let anonymous = matches!(who.caller, imprint_service::Caller::Anonymous).then_some(who.client).flatten();
    let place = imprint.long_poll_place(parked_bytes(&req), anonymous).ok_or_else(|| {
        grpc_status(Error::TooManyStreams(
            "this server holds as many long polls and Watch streams as it may; retry in a few seconds".into(),
        ))
    })?;
    let (tx, rx) = mpsc::channel(QUEUED_ANSWERS);
    tokio::spawn(async move {
        let _place = place;
        if let Err(status) = run(&imprint, &who.caller, req, inbound, &tx, lifetime).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The stream's loop: poll (the first at once, then long polls), send what changed, take
/// reports; ends at its lifetime, on shutdown, or when the client goes away.
async fn run(
    imprint: &Imprint,
    caller: &imprint_service::Caller,
    mut req: PollRequest,
    mut inbound: Streaming<pb::WatchRequest>,
    tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>,
    lifetime: Duration,
) -> Result<(), Status> {
    let ends = tokio::time::Instant::now() + lifetime;
    let mut draining = imprint.draining();
    let mut first = true;
    let mut inbound_open = true;
    loop {
        if *draining.borrow() {
            return Ok(());
        }
        let mut poll = req.clone();
        if first {
            poll.wait_ms = 0;
        }
        // Reports go with this poll only.
        req.applied.clear();
        let answer = {
            let polling = imprint.poll(caller, poll);
            tokio::pin!(polling);
            tokio::select! {
                a = &mut polling => Some(a.map_err(grpc_status)?),
                _ = tokio::time::sleep_until(ends) => return Ok(()),
                _ = draining.wait_for(|d| *d) => return Ok(()),
                () = tx.closed() => return Ok(()),
                m = inbound.next(), if inbound_open => {
                    match m {
                        None => inbound_open = false,
                        Some(Err(e)) => return Err(e),
                        Some(Ok(pb::WatchRequest { kind: Some(pb::watch_request::Kind::Report(r)) })) => {
                            req.applied = convert::applied_reports(r.applied);
                            req.validate().map_err(grpc_status)?;
                        }
                        Some(Ok(_)) => {
                            return Err(grpc_status(Error::invalid(
                                "after the start, a Watch sends only report messages",
                            )))
                        }
                    }
                    None
                }
            }
        };
        let Some(answer) = answer else { continue };
        if !first && answer.updates.is_empty() {
            // A long poll that ran out (or was woken by a change that is no update).
            continue;
        }
        for (topic, u) in &answer.updates {
            req.topics.insert(topic.clone(), Some(u.version.version));
        }
        let out = pb::WatchResponse {
            updates: convert::updates(answer.updates),
            missing: answer.missing.into_iter().collect(),
        };
        first = false;
        if tx.send(Ok(out)).await.is_err() {
            return Ok(());
        }
    }
}
