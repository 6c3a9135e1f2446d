//! The one error type of the presence API, shown to HTTP clients as a JSON body and to gRPC
//! clients as a status, both coded by the shared [`ErrorCode`] table.

use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        herald_api_common::error_response(self.code(), &self.to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(tonic::Code::from_i32(e.code().grpc_code()), e.to_string())
    }
}
