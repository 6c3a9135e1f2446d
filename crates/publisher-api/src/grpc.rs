//! The gRPC transport: the generated `Publisher` service, implemented over the same
//! [`Service`](crate::service::Service) as HTTP.
//!
//! The API key is checked by an interceptor ([`RequireApiKey`]), which runs before the request
//! message is decoded. The generated request types are converted into [`Draft`]s here, at the
//! edge (`data` is checked to be JSON text on the way), and nothing past this file sees a `pb`
//! type.

use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::error::ApiError;
use crate::pb;
use crate::service::{Draft, Target, json_data};

/// The complete gRPC service as [`PublisherApi::grpc_service`](crate::PublisherApi::grpc_service)
/// returns it: the generated server behind the API key check. Add it to a
/// `tonic::transport::Server` with `add_service`.
pub type GrpcService =
    InterceptedService<pb::publisher_server::PublisherServer<GrpcPublisher>, RequireApiKey>;

/// Builds the service, accepting request messages up to `max_message` bytes.
pub(crate) fn service(shared: Arc<Shared>, max_message: usize) -> GrpcService {
    let keys = RequireApiKey { shared: shared.clone() };
    let server = pb::publisher_server::PublisherServer::new(GrpcPublisher { shared })
        .max_decoding_message_size(max_message);
    InterceptedService::new(server, keys)
}

/// Refuses calls whose `authorization` metadata is not `Bearer <api key>` with
/// UNAUTHENTICATED. As an interceptor it runs before the request message is read, so a caller
/// without a key cannot make the server buffer and decode a large message.
#[derive(Clone)]
pub struct RequireApiKey {
    shared: Arc<Shared>,
}

impl tonic::service::Interceptor for RequireApiKey {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = request.metadata().get("authorization").map(|v| v.as_bytes());
        match crate::auth::check(&self.shared.keys, value) {
            Ok(()) => Ok(request),
            Err(e) => {
                tracing::debug!("grpc call without a valid api key");
                // The method is not known here; refused calls are counted under `*`.
                self.shared.metrics.record("grpc", "*", "unauthorized", std::time::Instant::now());
                Err(e.into())
            }
        }
    }
}

/// The implementation of the generated `herald.v1.Publisher` trait.
#[derive(Clone)]
pub struct GrpcPublisher {
    shared: Arc<Shared>,
}

impl GrpcPublisher {
    async fn publish_one(&self, draft: Result<Draft<'_>, ApiError>) -> Result<pb::PublishReply, ApiError> {
        let prepared = self.shared.service.prepare(draft?)?;
        let id = self.shared.service.publish(prepared).await?;
        Ok(pb::PublishReply { id })
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
        let id = crate::metrics::request_id(request.metadata().get("x-request-id").map(|v| v.as_bytes()));
        let span = tracing::info_span!("request", id = %id, transport = "grpc", endpoint = method);
        let result = tracing::Instrument::instrument(work, span.clone()).await;
        let outcome = result.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok");
        span.in_scope(|| tracing::debug!(outcome, "request done"));
        self.shared.metrics.record("grpc", method, outcome, started);
        let mut response = Response::new(result?);
        if let Ok(value) = id.parse() {
            response.metadata_mut().insert("x-request-id", value);
        }
        Ok(response)
    }
}

impl<'a> TryFrom<&'a pb::PublishRequest> for Draft<'a> {
    type Error = ApiError;
    fn try_from(m: &'a pb::PublishRequest) -> Result<Self, ApiError> {
        Ok(Draft {
            target: Target::Channel(&m.channel),
            data: json_data(&m.data)?,
            event: m.event.as_deref(),
        })
    }
}

impl<'a> TryFrom<&'a pb::BroadcastRequest> for Draft<'a> {
    type Error = ApiError;
    fn try_from(m: &'a pb::BroadcastRequest) -> Result<Self, ApiError> {
        Ok(Draft { target: Target::Broadcast, data: json_data(&m.data)?, event: m.event.as_deref() })
    }
}

impl<'a> TryFrom<&'a pb::NotifyRequest> for Draft<'a> {
    type Error = ApiError;
    fn try_from(m: &'a pb::NotifyRequest) -> Result<Self, ApiError> {
        Ok(Draft { target: Target::User(&m.user), data: json_data(&m.data)?, event: m.event.as_deref() })
    }
}

#[tonic::async_trait]
impl pb::publisher_server::Publisher for GrpcPublisher {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        self.observed("Publish", &request, self.publish_one(Draft::try_from(request.get_ref()))).await
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchReply>, Status> {
        let work = async {
            let service = &self.shared.service;
            let messages = &request.get_ref().messages;
            service.check_batch_len(messages.len())?;
            let prepared = messages
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Draft::try_from(m)
                        .and_then(|d| service.prepare(d))
                        .map_err(|e| e.at(&format!("messages[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ids = service.publish_batch(prepared).await?;
            Ok(pb::PublishBatchReply { ids })
        };
        self.observed("PublishBatch", &request, work).await
    }

    async fn broadcast(
        &self,
        request: Request<pb::BroadcastRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        self.observed("Broadcast", &request, self.publish_one(Draft::try_from(request.get_ref()))).await
    }

    async fn notify(
        &self,
        request: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        self.observed("Notify", &request, self.publish_one(Draft::try_from(request.get_ref()))).await
    }
}
