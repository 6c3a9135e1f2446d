//! The HTTP transport: JSON bodies in, JSON replies out.
//!
//! Handlers take the body as raw [`Bytes`] and parse it with `serde_json` themselves, so every
//! problem gets a precise JSON error (`missing field `data``) and a wrong or missing
//! `Content-Type` does not matter. Bodies borrow from those bytes: `data` is never copied or
//! re-serialized before it is encoded into the message frame. History and inbox replies carry
//! the stored message frames as they are, as JSON objects inside the reply.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use herald_api_common::auth::Caller;
use herald_api_common::extract;
use herald_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Shared;
use crate::error::ApiError;
use crate::limits::{BytesInFlight, Metered};
use crate::reads::{HistoryQuery, publications_json};
use crate::service::{Draft, Prepared, Published, Target};

/// The HTTP API: `/v1/*` needs an API key, the probes do not.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let single = DefaultBodyLimit::max(shared.limits.single_body);
    let batch = DefaultBodyLimit::max(shared.limits.batch_body);
    let v1 = Router::new()
        .route("/v1/publish", post(publish).layer(single))
        .route("/v1/publish/batch", post(publish_batch).layer(batch))
        .route("/v1/broadcast", post(broadcast).layer(single))
        .route("/v1/users/{user}/notify", post(notify).layer(single))
        .route("/v1/channels/{channel}/history", get(history))
        .route("/v1/users/{user}/inbox", get(inbox))
        .route_layer(middleware::from_fn_with_state(shared.clone(), admit));
    let v1 = v1.layer(middleware::from_fn_with_state(shared.clone(), observe));
    Router::new()
        .route("/livez", get(herald_api_common::probes::livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(shared)
}

/// `GET /metrics`, in the format the `Accept` header asks for.
async fn metrics(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    herald_api_common::metrics::respond(&headers, |format| shared.metrics.encode_as(format))
}

/// Gives every `/v1` request an id (the caller's `x-request-id`, or a new one) that its log
/// lines carry and the reply echoes, and records it in the metrics.
async fn observe(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let id = crate::metrics::request_id(request.headers().get("x-request-id").map(|v| v.as_bytes()));
    let endpoint = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| request.uri().path().to_string(), |p| p.as_str().to_string());
    let span = tracing::info_span!("request", id = %id, transport = "http", endpoint = %endpoint);
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let outcome = response.extensions().get::<ErrorCode>().map_or("ok", |c| c.as_str());
    let key = response.extensions().get::<Caller>().map(Caller::name);
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), outcome, key, "request done"));
    shared.metrics.record("http", &endpoint, key, outcome, started);
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Refuses `/v1` requests without a valid API key, with a `Content-Length` over the
/// endpoint's body limit, or over the replica's limits in flight, all before their body is
/// read; then meters the body as it arrives ([`crate::limits`]).
async fn admit(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let authorization = herald_api_common::auth::authorization(request.headers());
    let key = match herald_api_common::auth::check(&shared.keys, authorization) {
        Ok(key) => key,
        Err(e) => {
            tracing::debug!(path = %request.uri().path(), "request without a valid api key");
            return e.into_response();
        }
    };
    let limit = if request.uri().path() == "/v1/publish/batch" {
        shared.limits.batch_body
    } else {
        shared.limits.single_body
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if let Some(size) = declared.filter(|size| *size > limit) {
        shared.metrics.limited("http", "body_size");
        return with_key(too_large(size, limit).into_response(), key);
    }
    let ticket = match shared.limits.admit(declared, &shared.metrics, "http") {
        Ok(ticket) => ticket,
        Err(e) => return with_key(e.into_response(), key),
    };
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(key.clone());
    let body = Metered::new(body, ticket.clone(), || Box::new(BytesInFlight));
    let request = Request::from_parts(parts, axum::body::Body::new(body));
    let response = next.run(request).await;
    // The request's slot and bytes are given back only now, once it is answered.
    drop(ticket);
    with_key(response, key)
}

/// Leaves the request's key on its response, where [`observe`] counts it.
fn with_key(mut response: Response, key: Caller) -> Response {
    response.extensions_mut().insert(key);
    response
}

fn too_large(size: usize, limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::MessageTooLarge,
        format!("body: is {size} bytes, larger than the limit of {limit} bytes"),
    )
}

/// `POST /v1/publish` and one entry of `POST /v1/publish/batch`. Unknown fields are refused,
/// so a misspelt `event` is an error rather than silently dropped.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with `channel`, `data` and optionally `event` and `idempotency_key`"
)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    idempotency_key: Option<Cow<'a, str>>,
}

impl<'a> PublishBody<'a> {
    fn draft(&'a self) -> Draft<'a> {
        Draft {
            target: Target::Channel(&self.channel),
            data: self.data,
            event: self.event.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
        }
    }
}

/// `POST /v1/publish/batch`. Entries stay raw until the batch size is checked, then each is
/// parsed on its own so an error can name its index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object with `messages`, an array of messages")]
struct BatchBody<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

/// `POST /v1/broadcast` and `POST /v1/users/{user}/notify`. An `idempotency_key` is read for
/// both and refused (`no_history`) for the broadcast channel, which keeps no history.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with `data` and optionally `event` and `idempotency_key`"
)]
struct PayloadBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    idempotency_key: Option<Cow<'a, str>>,
}

impl<'a> PayloadBody<'a> {
    fn draft(&'a self, target: Target<'a>) -> Draft<'a> {
        Draft {
            target,
            data: self.data,
            event: self.event.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
        }
    }
}

/// What publishing one message did: `{"id"}`, plus `offset` and `epoch` on a channel with
/// history and `deduplicated: true` for a retry whose key was seen.
#[derive(Serialize)]
struct PublishReply {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deduplicated: bool,
}

impl From<Published> for PublishReply {
    fn from(p: Published) -> Self {
        Self { id: p.id, offset: p.offset, epoch: p.epoch, deduplicated: p.deduplicated }
    }
}

/// `{"ids": [...], "results": [...]}`: the ids alone (as before results existed) and each
/// message's full outcome, both in request order.
#[derive(Serialize)]
struct BatchReply {
    ids: Vec<String>,
    results: Vec<PublishReply>,
}

/// `GET /v1/channels/{channel}/history?limit=&reverse=&since_offset=&since_epoch=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    limit: Option<u64>,
    #[serde(default)]
    reverse: bool,
    since_offset: Option<u64>,
    since_epoch: Option<String>,
}

/// `GET /v1/users/{user}/inbox?limit=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxParams {
    limit: Option<u64>,
}

/// The fixed fields of a history reply; `publications` is appended as raw frames.
#[derive(Serialize)]
struct HistoryHead<'a> {
    offset: u64,
    epoch: &'a str,
}

/// The fixed fields of an inbox reply.
#[derive(Serialize)]
struct InboxHead<'a> {
    offset: u64,
    epoch: &'a str,
    acked: u64,
    unread: u64,
}

async fn publish(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishReply>, ApiError> {
    let prepared = {
        let body = read(body, &shared, shared.limits.single_body)?;
        let req: PublishBody = parse(&body, "body")?;
        let prepared = shared.service.prepare_for(&key, req.draft())?;
        shared.limits.take(&key, 1, &shared.metrics, "http")?;
        prepared
    };
    Ok(Json(shared.service.publish(prepared).await?.into()))
}

async fn publish_batch(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchReply>, ApiError> {
    let body = read(body, &shared, shared.limits.batch_body)?;
    // Parsing and encoding megabytes of JSON takes a while; off the async workers it cannot
    // hold up the small requests they serve meanwhile. The body and everything borrowing from
    // it are dropped before the broker round trips, so a batch holds its bytes only once while
    // it is published.
    let prepared = if body.len() > shared.limits.single_body {
        let shared = shared.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || prepare_batch(&shared, &key, &body))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("preparing the batch failed: {e}")))??
    } else {
        prepare_batch(&shared, &key, &body)?
    };
    shared.limits.take(&key, prepared.len(), &shared.metrics, "http")?;
    let published = shared.service.publish_batch(prepared).await?;
    let ids = published.iter().map(|p| p.id.clone()).collect();
    Ok(Json(BatchReply { ids, results: published.into_iter().map(PublishReply::from).collect() }))
}

/// Reads and checks every entry of a batch body, and encodes them.
fn prepare_batch(shared: &Shared, key: &Caller, body: &[u8]) -> Result<Vec<Prepared>, ApiError> {
    let req: BatchBody = parse(body, "body")?;
    shared.service.check_batch_len(req.messages.len())?;
    let mut prepared = Vec::with_capacity(req.messages.len());
    for (i, entry) in req.messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let entry: PublishBody = parse(entry.get().as_bytes(), &at)?;
        prepared.push(shared.service.prepare_for(key, entry.draft()).map_err(|e| e.at(&at))?);
    }
    Ok(prepared)
}

async fn broadcast(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishReply>, ApiError> {
    let prepared = {
        let body = read(body, &shared, shared.limits.single_body)?;
        let req: PayloadBody = parse(&body, "body")?;
        let prepared = shared.service.prepare_for(&key, req.draft(Target::Broadcast))?;
        shared.limits.take(&key, 1, &shared.metrics, "http")?;
        prepared
    };
    Ok(Json(shared.service.publish(prepared).await?.into()))
}

async fn notify(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Caller>,
    user: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishReply>, ApiError> {
    let user = extract::path(user, "user")?;
    let prepared = {
        let body = read(body, &shared, shared.limits.single_body)?;
        let req: PayloadBody = parse(&body, "body")?;
        let prepared = shared.service.prepare_for(&key, req.draft(Target::User(&user)))?;
        shared.limits.take(&key, 1, &shared.metrics, "http")?;
        prepared
    };
    Ok(Json(shared.service.publish(prepared).await?.into()))
}

/// `GET /v1/channels/{channel}/history`: `{"offset", "epoch", "publications": [frames]}`.
async fn history(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Caller>,
    channel: Result<Path<String>, PathRejection>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let channel = extract::path(channel, "channel")?;
    let params = extract::query(params)?;
    let since = match (params.since_offset, params.since_epoch.as_deref()) {
        (Some(offset), Some(epoch)) => Some((offset, epoch)),
        (None, None) => None,
        _ => {
            return Err(ApiError::malformed(
                "since_offset and since_epoch go together: give both or neither",
            ));
        }
    };
    let query = HistoryQuery { channel: &channel, limit: params.limit, reverse: params.reverse, since };
    let page = shared.service.history(&key, query).await?;
    let head = HistoryHead { offset: page.position.offset, epoch: &page.position.epoch };
    Ok(with_publications(&head, &page.publications))
}

/// `GET /v1/users/{user}/inbox`: `{"offset", "epoch", "acked", "unread", "publications"}`.
async fn inbox(
    State(shared): State<Arc<Shared>>,
    Extension(key): Extension<Caller>,
    user: Result<Path<String>, PathRejection>,
    params: Result<Query<InboxParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let user = extract::path(user, "user")?;
    let params = extract::query(params)?;
    let page = shared.service.inbox(&key, &user, params.limit).await?;
    let status = &page.status;
    let head = InboxHead {
        offset: status.position.offset,
        epoch: &status.position.epoch,
        acked: status.acked,
        unread: status.unread,
    };
    Ok(with_publications(&head, &page.publications))
}

/// A JSON reply of `head`'s fields followed by `"publications": [frames]`, the frames copied
/// as they are stored rather than parsed and re-encoded.
fn with_publications(head: &impl Serialize, publications: &[herald_broker::HistoryPublication]) -> Response {
    let head = serde_json::to_vec(head).expect("a struct of numbers and strings serializes");
    let mut body = BytesMut::with_capacity(head.len() + 20);
    // `{...}` without its closing brace, then the array.
    body.extend_from_slice(&head[..head.len() - 1]);
    body.extend_from_slice(b",\"publications\":");
    publications_json(&mut body, publications);
    body.extend_from_slice(b"}");
    ([(header::CONTENT_TYPE, "application/json")], body.freeze()).into_response()
}

/// Readiness: the broker accepts commands, so publishing would work right now.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    herald_api_common::probes::readyz(shared.probe().await.map_err(ApiError::Unavailable))
}

/// The body, or our JSON error instead of axum's plain-text rejection. `limit` is the route's
/// body limit, which axum applied.
fn read(body: Result<Bytes, BytesRejection>, shared: &Shared, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if caused_by::<BytesInFlight>(&rejection) {
            shared.metrics.limited("http", "bytes_in_flight");
            return ApiError::Limited {
                code: ErrorCode::Overloaded,
                message:
                    "the replica is at publisher.max_bytes_in_flight; nothing was published, retry later"
                        .into(),
                retry_after: crate::limits::OVERLOADED_RETRY_AFTER,
            };
        }
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            shared.metrics.limited("http", "body_size");
            ApiError::new(
                ErrorCode::MessageTooLarge,
                format!("body: is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::malformed(format!("body: could not be read: {}", rejection.body_text()))
        }
    })
}

/// Whether an `E` is somewhere in the chain of `error`'s sources.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Parses a JSON object, saying whether the text is not JSON at all or JSON of the wrong shape.
fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, ApiError> {
    // Derived `Deserialize` also reads a struct from an array of its fields in order; refuse
    // that undocumented form rather than publish `["chat:lobby", 1]`.
    if bytes.trim_ascii_start().starts_with(b"[") {
        return Err(ApiError::malformed(format!("{what}: expected a JSON object, found an array")));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::malformed(format!("{what}: {e}")),
        _ => ApiError::malformed(format!("{what}: is not valid JSON: {e}")),
    })
}
