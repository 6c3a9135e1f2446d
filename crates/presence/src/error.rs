//! The one error type of the presence API. What it shows the caller (an HTTP JSON body or a
//! gRPC status, both coded by the shared [`ErrorCode`] table) is written once, in
//! [`herald_api_common::error`]; this file says what can go wrong here.

use herald_api_common::{ApiFailure, Refusal};
use herald_protocol::ErrorCode;

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong; the message says what to fix.
    #[error(transparent)]
    Request(#[from] Refusal),
    /// The store (Redis) cannot be reached. The cause is logged, not shown.
    #[error("presence is unavailable right now; retry later")]
    Unavailable(#[source] StoreError),
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Request(Refusal::new(code, message))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Request(refusal) => refusal.code,
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

impl ApiFailure for ApiError {
    fn code(&self) -> ErrorCode {
        ApiError::code(self)
    }
}

herald_api_common::transport_conversions!(ApiError);
