//! The HTTP transport: `/v1/presence/*` behind the API key, and the probes.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use herald_api_common::auth::{Caller, Operation};
use herald_api_common::extract;
use herald_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Shared;
use crate::error::ApiError;
use crate::model::{ChannelPresence, Stats, UserPresence};

/// Room per user id in a bulk body (the id, quotes, comma, escapes).
const PER_USER: usize = 160;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let bulk_limit = shared.service.config().max_bulk.saturating_mul(PER_USER).saturating_add(1024);
    let v1 = Router::new()
        .route("/v1/presence/users/{user}", get(user))
        .route("/v1/presence/users", post(users).layer(DefaultBodyLimit::max(bulk_limit)))
        .route("/v1/presence/channels/{channel}", get(channel))
        .route("/v1/presence/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require_api_key));
    Router::new()
        .route("/livez", get(herald_api_common::probes::livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(shared)
}

/// Refuses requests without a valid key, leaves the key for the handlers, and counts each
/// request under its key and outcome.
async fn require_api_key(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let authorization = herald_api_common::auth::authorization(request.headers());
    let keys = &shared.service.metrics().keys;
    match herald_api_common::auth::check(&shared.keys, authorization) {
        Ok(caller) => {
            request.extensions_mut().insert(caller.clone());
            let response = next.run(request).await;
            let outcome = response.extensions().get::<ErrorCode>().map_or("ok", |c| c.as_str());
            keys.record(Some(caller.name()), outcome);
            response
        }
        Err(e) => {
            keys.record(None, e.code.as_str());
            e.into_response()
        }
    }
}

/// `GET /metrics`, with the state gauges refreshed from the store, in the format the `Accept`
/// header asks for.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let metrics = shared.service.metrics();
    if let Ok(stats) = shared.service.store().stats().await {
        metrics.set_state(&stats);
    }
    herald_api_common::metrics::respond(&headers, |format| metrics.encode_as(format))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object with `users`, an array of user ids")]
struct UsersBody {
    users: Vec<String>,
}

#[derive(Serialize)]
struct UsersReply {
    users: Vec<UserPresence>,
}

#[derive(Serialize)]
struct ChannelReply<'a> {
    channel: &'a str,
    count: u64,
    members: Box<RawValue>,
}

impl<'a> From<&'a ChannelPresence> for ChannelReply<'a> {
    fn from(p: &'a ChannelPresence) -> Self {
        ChannelReply {
            channel: p.channel.as_str(),
            count: p.count,
            members: crate::reporter::members_json(p),
        }
    }
}

async fn user(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<UserPresence>, ApiError> {
    shared.authorize(&caller, Operation::PresenceRead, None)?;
    Ok(Json(shared.service.user(&extract::path(user, "user")?).await?))
}

async fn users(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UsersReply>, ApiError> {
    shared.authorize(&caller, Operation::PresenceRead, None)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let max = shared.service.config().max_bulk;
            ApiError::new(
                ErrorCode::BatchTooLarge,
                format!("body: too large; at most {max} users per request"),
            )
        } else {
            ApiError::new(
                ErrorCode::MalformedFrame,
                format!("body: could not be read: {}", rejection.body_text()),
            )
        }
    })?;
    if body.trim_ascii_start().starts_with(b"[") {
        return Err(ApiError::new(ErrorCode::MalformedFrame, "body: expected a JSON object, found an array"));
    }
    let req: UsersBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::MalformedFrame, format!("body: {e}")))?;
    Ok(Json(UsersReply { users: shared.service.users(&req.users).await? }))
}

/// `?limit=N` lists at most N members; `?limit=0` asks for the count alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelQuery {
    limit: Option<usize>,
}

async fn channel(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    channel: Result<Path<String>, PathRejection>,
    query: Result<Query<ChannelQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = extract::query(query)?;
    let channel = extract::path(channel, "channel")?;
    shared.authorize(&caller, Operation::PresenceRead, Some(&channel))?;
    let presence = shared.service.channel(&channel, query.limit).await?;
    Ok(Json(ChannelReply::from(&presence)).into_response())
}

async fn stats(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Stats>, ApiError> {
    shared.authorize(&caller, Operation::PresenceRead, None)?;
    Ok(Json(shared.service.stats().await?))
}

/// Ready while the store answers.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    herald_api_common::probes::readyz(shared.probe().await)
}
