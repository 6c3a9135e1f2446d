//! The path and query parameters of both HTTP APIs, with our JSON errors in place of axum's
//! plain-text rejections, worded alike on every route.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use herald_protocol::ErrorCode;

use crate::error::Refusal;

/// A path parameter (a user id, a channel name), or `invalid_channel` naming it: `what: ...`.
pub fn path<T>(value: Result<Path<T>, PathRejection>, what: &str) -> Result<T, Refusal> {
    value
        .map(|Path(v)| v)
        .map_err(|e| Refusal::new(ErrorCode::InvalidChannel, format!("{what}: {}", e.body_text())))
}

/// The query parameters, or `malformed_frame`: `query: ...`.
pub fn query<T>(value: Result<Query<T>, QueryRejection>) -> Result<T, Refusal> {
    value
        .map(|Query(v)| v)
        .map_err(|e| Refusal::new(ErrorCode::MalformedFrame, format!("query: {}", e.body_text())))
}
