//! The gRPC API (proto/imprint/v1/imprint.proto, its documentation): the service's
//! operations over tonic on their own listener (`IMPRINT_GRPC_ADDR`), with the HTTP API's
//! auth, roles, limits, consumer audit and error codes (`crate::error::grpc_status`), plus
//! the standard health and reflection services. `watch` holds the Watch stream, `transfer`
//! Publish and Download, `convert` the wire types.
mod connections;
mod convert;
mod transfer;
mod watch;

use crate::error::grpc_status;
use imprint_domain::{Labels, TopicName, VersionNumber};
use imprint_service::auth::Caller;
use imprint_service::{Error, Imprint};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The code generated from the protos (build.rs, in OUT_DIR).
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("imprint.v1");
}

/// The encoded descriptor set of the protos, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/imprint_descriptor.bin"));

/// The largest message a call may send or receive (a payload chunk and its framing).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The largest payload chunk of a Publish, and the chunks a Download sends.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// The Watch's and Publish's first message must arrive within this long.
pub const FIRST_MESSAGE_WITHIN: Duration = Duration::from_secs(10);
/// HTTP/2 streams (calls) open at once on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// How the gRPC listener is run.
#[derive(Clone, Debug)]
pub struct GrpcSettings {
    /// Where it listens (`IMPRINT_GRPC_ADDR`; port 0: any free port). None: no gRPC.
    pub addr: Option<SocketAddr>,
    /// A Watch stream ends (OK) after this long (`IMPRINT_GRPC_WATCH_MAX_SECS`).
    pub watch_max: Duration,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings { addr: None, watch_max: Duration::from_secs(3600) }
    }
}

/// The `imprint.v1.Imprint` service over the `Imprint` handle.
#[derive(Clone)]
pub struct GrpcApi {
    imprint: Imprint,
    watch_max: Duration,
    /// The server's fair-serving limiter (shared with its HTTP API), if enabled.
    fairness: Option<std::sync::Arc<crate::fairness::Fairness>>,
}

/// Which of the server's roles serves a call.
#[derive(Clone, Copy)]
enum Role {
    /// Poll, Watch, Report.
    Api,
    /// Reads: served by `api` and `publish`.
    Read,
    Publish,
}

/// Who called: the caller and the SHA-256 of its token (for revocation of held streams).
struct Who {
    caller: Caller,
    credential: Option<String>,
    client: Option<std::net::IpAddr>,
}

/// The bearer token of a call's `authorization` metadata, as the HTTP API reads its
/// Authorization header.
fn bearer(meta: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = meta.get("authorization") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(imprint_protocol::bearer_token)
        .map(|t| Some(t.to_owned()))
        .ok_or_else(|| grpc_status(Error::Unauthorized("the authorization metadata must be `Bearer <token>`".into())))
}

impl GrpcApi {
    pub fn new(imprint: Imprint, watch_max: Duration) -> Self {
        let fairness = crate::fairness::layer(&imprint);
        GrpcApi { imprint, watch_max, fairness }
    }

    /// Runs a consumer or read call's work in its application's fair-serving place — the
    /// token's bucket, else the address's, shared with the HTTP API (docs/fairness.md) —
    /// or refuses it with RESOURCE_EXHAUSTED (`overloaded`). Watch streams are capped as
    /// streams, not here.
    async fn fair<T>(
        &self,
        who: &Who,
        work: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        use crate::fairness::BucketKey;
        let Some(f) = &self.fairness else { return work.await };
        let key = match &who.credential {
            Some(hash) => BucketKey::Token(hash.clone()),
            None => BucketKey::Address(who.client.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))),
        };
        f.run(key, work).await.map_err(grpc_status)?
    }

    /// Refuses a call this server's roles do not serve (as the HTTP role gate does).
    fn serves(&self, role: Role, call: &str) -> Result<(), Status> {
        let roles = self.imprint.config().roles;
        let (served, needed) = match role {
            Role::Api => (roles.api, "api"),
            Role::Read => (roles.api || roles.publish, "api or publish"),
            Role::Publish => (roles.publish, "publish"),
        };
        if served {
            return Ok(());
        }
        metrics::counter!("imprint_role_refused_total").increment(1);
        Err(grpc_status(Error::NotFound(format!(
            "this server runs the roles {roles}; {call} is served by servers with the {needed} role"
        ))))
    }

    /// The caller of a request; `polling`: a token looked up in the last seconds is not
    /// looked up again (as the HTTP poll's).
    async fn who<T>(&self, req: &Request<T>, role: Role, call: &str, polling: bool) -> Result<Who, Status> {
        self.serves(role, call)?;
        let token = bearer(req.metadata())?;
        let caller = match (&token, polling) {
            (None, _) => Caller::Anonymous,
            (Some(t), true) => self.imprint.authenticate_cached(t).await.map_err(grpc_status)?,
            (Some(t), false) => self.imprint.authenticate(Some(t)).await.map_err(grpc_status)?,
        };
        let credential = token.map(|t| imprint_service::auth::hash_token(&t));
        Ok(Who { caller, credential, client: req.remote_addr().map(|a| a.ip()) })
    }
}

fn topic_name(s: &str) -> Result<TopicName, Status> {
    TopicName::parse(s).map_err(|e| grpc_status(Error::from(e)))
}

fn labels_of(m: &std::collections::HashMap<String, String>) -> Result<Labels, Status> {
    Labels::from_pairs(m.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(|e| grpc_status(Error::from(e)))
}

fn version_number(n: u64) -> Result<VersionNumber, Status> {
    VersionNumber::new(n).map_err(|_| grpc_status(Error::invalid(format!("{n} is not a version number (1, 2, 3, …)"))))
}

#[tonic::async_trait]
impl pb::imprint_server::Imprint for GrpcApi {
    async fn poll(&self, req: Request<pb::PollRequest>) -> Result<Response<pb::PollResponse>, Status> {
        let who = self.who(&req, Role::Api, "Poll", true).await?;
        let r = req.into_inner();
        let mut poll = convert::poll_request(r.consumer, r.topics, r.applied, r.wait_ms)?;
        poll.client = who.client;
        poll.credential = who.credential.clone();
        let answer = self.fair(&who, async { self.imprint.poll(&who.caller, poll).await.map_err(grpc_status) }).await?;
        Ok(Response::new(pb::PollResponse {
            updates: convert::updates(answer.updates),
            missing: answer.missing.into_iter().collect(),
            poll_after_ms: answer.poll_after_ms,
        }))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        req: Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.who(&req, Role::Api, "Watch", true).await?;
        watch::start(self.imprint.clone(), who, req.into_inner(), self.watch_max).await.map(Response::new)
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        let who = self.who(&req, Role::Api, "Report", true).await?;
        let r = req.into_inner();
        let mut poll = convert::poll_request(r.consumer, r.topics, r.applied, 0)?;
        poll.client = who.client;
        poll.credential = who.credential.clone();
        self.fair(&who, async { self.imprint.poll(&who.caller, poll).await.map_err(grpc_status) }).await?;
        Ok(Response::new(pb::ReportResponse {}))
    }

    async fn resolve(&self, req: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        let who = self.who(&req, Role::Read, "Resolve", false).await?;
        let r = req.into_inner();
        let topic = topic_name(&r.topic)?;
        let labels = labels_of(&r.labels)?;
        let resolved = self
            .fair(&who, async { self.imprint.resolve(&who.caller, &topic, &labels, None).await.map_err(grpc_status) })
            .await?;
        Ok(Response::new(pb::ResolveResponse {
            topic: topic.to_string(),
            version: resolved.map_or(0, |r| r.version),
            pinned: resolved.is_some_and(|r| r.pinned),
        }))
    }

    async fn get_version(&self, req: Request<pb::GetVersionRequest>) -> Result<Response<pb::Version>, Status> {
        let who = self.who(&req, Role::Read, "GetVersion", false).await?;
        let r = req.into_inner();
        let topic = topic_name(&r.topic)?;
        let n = version_number(r.version)?;
        let v =
            self.fair(&who, async { self.imprint.version(&who.caller, &topic, n).await.map_err(grpc_status) }).await?;
        Ok(Response::new(convert::version(v)))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let who = self.who(&req, Role::Read, "ListVersions", false).await?;
        let r = req.into_inner();
        let topic = topic_name(&r.topic)?;
        let limit = (r.limit > 0).then_some(r.limit);
        let cursor = Some(r.cursor.as_str()).filter(|c| !c.is_empty());
        let page = self
            .fair(&who, async {
                self.imprint.list_versions(&who.caller, &topic, limit, cursor).await.map_err(grpc_status)
            })
            .await?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: page.items.into_iter().map(convert::version).collect(),
            next: page.next.unwrap_or_default(),
        }))
    }

    type DownloadStream = transfer::DownloadStream;

    async fn download(&self, req: Request<pb::DownloadRequest>) -> Result<Response<Self::DownloadStream>, Status> {
        let who = self.who(&req, Role::Read, "Download", true).await?;
        let r = req.into_inner();
        self.fair(&who, transfer::download(&self.imprint, &who.caller, r)).await.map(Response::new)
    }

    async fn publish(
        &self,
        req: Request<tonic::Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let who = self.who(&req, Role::Publish, "Publish", false).await?;
        transfer::publish(self.imprint.clone(), who.caller, req.into_inner()).await.map(Response::new)
    }
}

/// Serves the gRPC API, health and reflection on `listener` until `stop` completes.
pub async fn serve(
    imprint: Imprint,
    listener: tokio::net::TcpListener,
    settings: GrpcSettings,
    limits: crate::ConnectionLimits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::imprint_server::ImprintServer<GrpcApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    let api = pb::imprint_server::ImprintServer::new(GrpcApi::new(imprint.clone(), settings.watch_max))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut draining = imprint.draining();
    let stop = async move {
        stop.await;
        // Watch streams end when the service drains; the health service says so first.
        health.set_not_serving::<pb::imprint_server::ImprintServer<GrpcApi>>().await;
        let _ = draining.wait_for(|d| *d).await;
    };
    let incoming = connections::incoming(listener, limits.max_conns_per_ip, limits.exempt);
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(api)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}
