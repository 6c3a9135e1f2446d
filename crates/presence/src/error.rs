//! The one error type of the presence API, shown to HTTP clients as a JSON body and to gRPC
//! clients as a status, both coded by the shared [`ErrorCode`] table.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;
use serde::Serialize;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong; the message says what to fix.
    #[error("{message}")]
    Request { code: ErrorCode, message: String },
    /// The store (Redis) cannot be reached. The cause is logged, not shown.
    #[error("presence is unavailable right now; retry later")]
    Unavailable(#[source] StoreError),
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Request { code, message: message.into() }
    }

    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "a valid API key is required: `Authorization: Bearer <key>`")
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Request { code, .. } => *code,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "presence store failed");
        Self::Unavailable(e)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = self.to_string();
        let mut response =
            (status, axum::Json(Body { error: Detail { code: code.as_str(), message: &message } }))
                .into_response();
        if code == ErrorCode::Unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(tonic::Code::from_i32(e.code().grpc_code()), e.to_string())
    }
}
