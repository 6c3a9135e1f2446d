//! The gRPC transport: the generated `Publisher` service, implemented over the same
//! [`Service`](crate::service::Service) as HTTP.
//!
//! Every call first passes [`Guarded`], which admits it under the replica's limits and meters
//! the request body as it arrives (both before the message is decoded), and which gives the
//! errors tonic itself produces our documented codes: a message that does not decode is
//! INVALID_ARGUMENT (`malformed_frame`), not INTERNAL; one over the size limit is
//! RESOURCE_EXHAUSTED (`message_too_large`), not OUT_OF_RANGE. The API key is then checked by
//! an interceptor ([`RequireApiKey`]), which also runs before the request message is decoded. The generated request types are converted into [`Draft`]s here, at the
//! edge (`data` is checked to be JSON text on the way), and nothing past this file sees a `pb`
//! type.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use herald_api_common::auth::Caller;
pub use herald_api_common::auth::RequireApiKey;
use herald_protocol::ErrorCode;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};

use crate::Shared;
use crate::error::ApiError;
use crate::limits::Metered;
use crate::pb;
use crate::reads::HistoryQuery;
use crate::service::{Draft, Prepared, Published, Target, json_data};

/// The complete gRPC service as [`PublisherApi::grpc_service`](crate::PublisherApi::grpc_service)
/// returns it: the generated server behind the API key check, behind the limits. Add it to a
/// `tonic::transport::Server` with `add_service`.
pub type GrpcService =
    Guarded<InterceptedService<pb::publisher_server::PublisherServer<GrpcPublisher>, RequireApiKey>>;

/// Builds the service, accepting request messages up to `max_message` bytes.
pub(crate) fn service(shared: Arc<Shared>, max_message: usize) -> GrpcService {
    let metrics = shared.clone();
    // The method is not known to an interceptor; refused calls are counted under `*`.
    let keys = RequireApiKey::new(shared.keys.clone()).on_refused(move || {
        metrics.metrics.record("grpc", "*", None, "unauthorized", std::time::Instant::now())
    });
    let server = pb::publisher_server::PublisherServer::new(GrpcPublisher { shared: shared.clone() })
        .max_decoding_message_size(max_message);
    Guarded { inner: InterceptedService::new(server, keys), shared }
}

/// Admits each call under the replica's limits before anything is read, meters its body, and
/// maps tonic's own decoding errors to the documented codes.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let method = request.uri().path().rsplit('/').next().unwrap_or("*").to_string();
            let started = std::time::Instant::now();
            let ticket = match shared.limits.admit(None, &shared.metrics, "grpc") {
                Ok(ticket) => ticket,
                Err(e) => {
                    shared.metrics.record("grpc", &method, None, e.code().as_str(), started);
                    return Ok(Status::from(e).into_http());
                }
            };
            let (mut parts, body) = request.into_parts();
            let answered = Answered::default();
            parts.extensions.insert(answered.clone());
            let body = Body::new(Metered::new(body, ticket.clone(), bytes_in_flight));
            let response = inner.call(http::Request::from_parts(parts, body)).await?;
            // The call's slot and bytes are given back once it is answered.
            drop(ticket);
            if answered.0.load(std::sync::atomic::Ordering::Relaxed) {
                // The handler's own status: already coded and recorded.
                return Ok(response.map(Body::new));
            }
            Ok(remap(response, &shared, &method, started))
        })
    }
}

/// Set by the handler once it runs, so that [`remap`] leaves its statuses alone: only errors
/// tonic raised before the handler (decoding, size) need their codes replaced, and the
/// handler's own OUT_OF_RANGE (`unrecoverable`) or INTERNAL must pass as they are.
#[derive(Clone, Default)]
struct Answered(Arc<std::sync::atomic::AtomicBool>);

/// The status a [`Metered`] gRPC body fails with; tonic passes it on to the caller as it is.
fn bytes_in_flight() -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(Status::from(ApiError::Limited {
        code: ErrorCode::Overloaded,
        message: "the replica is at publisher.max_bytes_in_flight; nothing was published, retry later".into(),
        retry_after: crate::limits::OVERLOADED_RETRY_AFTER,
    }))
}

/// Replaces the codes tonic gives errors of its own (the handler never ran) by documented
/// ones: INTERNAL from decoding a malformed message becomes INVALID_ARGUMENT, OUT_OF_RANGE
/// for a message over the size limit becomes RESOURCE_EXHAUSTED. Such calls are recorded in
/// the metrics here, as the handler that would record them never ran.
fn remap<B>(
    response: http::Response<B>,
    shared: &Shared,
    method: &str,
    started: std::time::Instant,
) -> http::Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let replaced = response.extensions().get::<Status>().and_then(|status| match status.code() {
        Code::Internal => Some(ApiError::malformed(format!(
            "the request message could not be decoded: {}",
            status.message()
        ))),
        Code::OutOfRange => {
            shared.metrics.limited("grpc", "body_size");
            Some(ApiError::new(ErrorCode::MessageTooLarge, format!("message: {}", status.message())))
        }
        Code::Unavailable if status.metadata().contains_key("retry-after") => {
            shared.metrics.limited("grpc", "bytes_in_flight");
            None
        }
        _ => None,
    });
    match replaced {
        Some(e) => {
            // The key is not known here: the interceptor's extensions are not on the response.
            shared.metrics.record("grpc", method, None, e.code().as_str(), started);
            Status::from(e).into_http()
        }
        None => response.map(Body::new),
    }
}

/// The implementation of the generated `herald.v1.Publisher` trait.
#[derive(Clone)]
pub struct GrpcPublisher {
    shared: Arc<Shared>,
}

impl GrpcPublisher {
    async fn publish_one(
        &self,
        key: Result<Caller, ApiError>,
        draft: Result<Draft<'_>, ApiError>,
    ) -> Result<pb::PublishReply, ApiError> {
        let key = key?;
        let prepared = self.shared.service.prepare_for(&key, draft?)?;
        self.shared.limits.take(&key, 1, &self.shared.metrics, "grpc")?;
        Ok(self.shared.service.publish(prepared).await?.into())
    }

    /// Runs one call inside a span carrying its request id (the caller's `x-request-id`
    /// metadata, or a new one) and records it in the metrics.
    async fn observed<M, T>(
        &self,
        method: &'static str,
        request: &Request<M>,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let started = std::time::Instant::now();
        if let Some(answered) = request.extensions().get::<Answered>() {
            answered.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let id = crate::metrics::request_id(request.metadata().get("x-request-id").map(|v| v.as_bytes()));
        let span = tracing::info_span!("request", id = %id, transport = "grpc", endpoint = method);
        let result = tracing::Instrument::instrument(work, span.clone()).await;
        let outcome = result.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok");
        let key = request.extensions().get::<Caller>().map(Caller::name);
        span.in_scope(|| tracing::debug!(outcome, key, "request done"));
        self.shared.metrics.record("grpc", method, key, outcome, started);
        let mut response = Response::new(result?);
        if let Ok(value) = id.parse() {
            response.metadata_mut().insert("x-request-id", value);
        }
        Ok(response)
    }
}

/// Checks and encodes every message of a batch; errors name the entry.
fn prepare_batch(
    shared: &Shared,
    key: &Caller,
    messages: &[pb::PublishRequest],
) -> Result<Vec<Prepared>, ApiError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Draft::try_from(m)
                .and_then(|d| shared.service.prepare_for(key, d))
                .map_err(|e| e.at(&format!("messages[{i}]")))
        })
        .collect()
}

/// The API key a call authenticated with, as the interceptor found it.
fn key<M>(request: &Request<M>) -> Result<Caller, ApiError> {
    Ok(herald_api_common::auth::caller(request)?)
}

impl<'a> TryFrom<&'a pb::PublishRequest> for Draft<'a> {
    type Error = ApiError;
    fn try_from(m: &'a pb::PublishRequest) -> Result<Self, ApiError> {
        Ok(Draft {
            target: Target::Channel(&m.channel),
            data: json_data(&m.data)?,
            event: m.event.as_deref(),
            idempotency_key: m.idempotency_key.as_deref(),
        })
    }
}

impl<'a> TryFrom<&'a pb::BroadcastRequest> for Draft<'a> {
    type Error = ApiError;
    fn try_from(m: &'a pb::BroadcastRequest) -> Result<Self, ApiError> {
        Ok(Draft {
            target: Target::Broadcast,
            data: json_data(&m.data)?,
            event: m.event.as_deref(),
            idempotency_key: None,
        })
    }
}

impl<'a> TryFrom<&'a pb::NotifyRequest> for Draft<'a> {
    type Error = ApiError;
    fn try_from(m: &'a pb::NotifyRequest) -> Result<Self, ApiError> {
        Ok(Draft {
            target: Target::User(&m.user),
            data: json_data(&m.data)?,
            event: m.event.as_deref(),
            idempotency_key: m.idempotency_key.as_deref(),
        })
    }
}

impl From<Published> for pb::PublishReply {
    fn from(p: Published) -> Self {
        Self { id: p.id, offset: p.offset, epoch: p.epoch, deduplicated: p.deduplicated }
    }
}

impl<'a> From<&'a pb::HistoryRequest> for HistoryQuery<'a> {
    fn from(m: &'a pb::HistoryRequest) -> Self {
        HistoryQuery {
            channel: &m.channel,
            limit: m.limit.map(u64::from),
            reverse: m.reverse,
            since: m.since.as_ref().map(|p| (p.offset, p.epoch.as_str())),
        }
    }
}

/// The stored frames, as the broker returned them.
fn frames(publications: Vec<herald_broker::HistoryPublication>) -> Vec<bytes::Bytes> {
    publications.into_iter().map(|p| p.payload).collect()
}

#[tonic::async_trait]
impl pb::publisher_server::Publisher for GrpcPublisher {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let work = self.publish_one(key(&request), Draft::try_from(request.get_ref()));
        self.observed("Publish", &request, work).await
    }

    async fn publish_batch(
        &self,
        mut request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchReply>, Status> {
        let messages = std::mem::take(&mut request.get_mut().messages);
        let work = async {
            let shared = &self.shared;
            let key = key(&request)?;
            shared.service.check_batch_len(messages.len())?;
            // As over HTTP: checking megabytes of JSON happens off the async workers.
            let size: usize = messages.iter().map(|m| m.data.len()).sum();
            let prepared = if size > shared.limits.single_body {
                let shared = shared.clone();
                let key = key.clone();
                tokio::task::spawn_blocking(move || prepare_batch(&shared, &key, &messages)).await.map_err(
                    |e| ApiError::new(ErrorCode::Internal, format!("preparing the batch failed: {e}")),
                )??
            } else {
                prepare_batch(shared, &key, &messages)?
            };
            shared.limits.take(&key, prepared.len(), &shared.metrics, "grpc")?;
            let published = shared.service.publish_batch(prepared).await?;
            let ids = published.iter().map(|p| p.id.clone()).collect();
            Ok(pb::PublishBatchReply { ids, results: published.into_iter().map(Into::into).collect() })
        };
        self.observed("PublishBatch", &request, work).await
    }

    async fn broadcast(
        &self,
        request: Request<pb::BroadcastRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let work = self.publish_one(key(&request), Draft::try_from(request.get_ref()));
        self.observed("Broadcast", &request, work).await
    }

    async fn notify(
        &self,
        request: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let work = self.publish_one(key(&request), Draft::try_from(request.get_ref()));
        self.observed("Notify", &request, work).await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let work = async {
            let page =
                self.shared.service.history(&key(&request)?, HistoryQuery::from(request.get_ref())).await?;
            Ok(pb::HistoryReply {
                offset: page.position.offset,
                epoch: page.position.epoch,
                publications: frames(page.publications),
            })
        };
        self.observed("History", &request, work).await
    }

    async fn inbox(&self, request: Request<pb::InboxRequest>) -> Result<Response<pb::InboxReply>, Status> {
        let work = async {
            let m = request.get_ref();
            let page = self.shared.service.inbox(&key(&request)?, &m.user, m.limit.map(u64::from)).await?;
            Ok(pb::InboxReply {
                offset: page.status.position.offset,
                epoch: page.status.position.epoch,
                acked: page.status.acked,
                unread: page.status.unread,
                publications: frames(page.publications),
            })
        };
        self.observed("Inbox", &request, work).await
    }
}
