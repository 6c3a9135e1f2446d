//! `GET /livez` and `GET /readyz` of both APIs: the same bodies on every role, so a probe or
//! a dashboard reads them one way.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{ApiFailure, http_response};

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// Liveness: the process answers. Says nothing about Redis, so an orchestrator does not
/// restart healthy replicas while Redis is down.
pub async fn livez() -> Response {
    Json(Status { status: "live" }).into_response()
}

/// The `/readyz` answer for a readiness probe's `outcome`: `{"status": "ready"}`, or the
/// failure as every other error is shown (503 `unavailable`).
pub fn readyz<E: ApiFailure>(outcome: Result<(), E>) -> Response {
    match outcome {
        Ok(()) => Json(Status { status: "ready" }).into_response(),
        Err(e) => http_response(&e),
    }
}
