//! The one error type of the API. What it shows the caller (an HTTP JSON body or a gRPC
//! status, both coded by the shared [`ErrorCode`] table) is written once, in
//! [`herald_api_common::error`]; this file says what can go wrong here.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use herald_api_common::{ApiFailure, Refusal};
use herald_broker::BrokerError;
use herald_protocol::ErrorCode;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong; the message tells the caller what to fix. Messages start
    /// with the path of the offending field (`messages[3].channel: ...`) when there is one.
    #[error(transparent)]
    Request(#[from] Refusal),
    /// The broker could not take the message: nothing was published and the call may be
    /// retried. The cause is logged where it happened, not shown to the caller.
    #[error("the broker is unavailable, nothing was published; retry later")]
    Unavailable(#[source] BrokerError),
    /// The broker got the message(s) and did not answer in time: they may or may not have
    /// been published. Saying `unavailable` here would invite a retry that publishes twice.
    #[error(
        "the broker did not answer in time: {confirmed} of {total} message(s) are confirmed published, \
         the rest may or may not have been; a retry may publish them twice"
    )]
    OutcomeUnknown {
        confirmed: usize,
        total: usize,
        #[source]
        source: BrokerError,
    },
    /// A limit of the replica or of the caller's key; nothing happened. The caller should wait
    /// `retry_after` (sent as `Retry-After`) before trying again.
    #[error("{message}")]
    Limited { code: ErrorCode, message: String, retry_after: Duration },
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Request(Refusal::new(code, message))
    }

    /// A request whose body could not be read as the JSON the endpoint expects.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::MalformedFrame, message)
    }

    /// The error for a failed broker publish of `total` messages.
    pub fn broker(e: BrokerError, total: usize) -> Self {
        match e {
            BrokerError::OutcomeUnknown { confirmed, .. } => {
                Self::OutcomeUnknown { confirmed, total, source: e }
            }
            e => Self::Unavailable(e),
        }
    }

    /// Missing or wrong credentials.
    pub fn unauthorized() -> Self {
        Refusal::unauthorized().into()
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Request(refusal) => refusal.code,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            Self::Limited { code, .. } => *code,
        }
    }

    /// Prefixes the message with where the problem is (`messages[3]`), so a batch error points
    /// at its entry ([`Refusal::at`]).
    pub fn at(self, path: &str) -> Self {
        match self {
            Self::Request(refusal) => Self::Request(refusal.at(path)),
            other => other,
        }
    }
}

impl ApiFailure for ApiError {
    fn code(&self) -> ErrorCode {
        ApiError::code(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Limited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        herald_api_common::error::http_response(&self)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        herald_api_common::error::grpc_status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_paths_prefix_field_messages() {
        let e = ApiError::new(ErrorCode::InvalidChannel, "channel: must not be empty").at("messages[3]");
        assert_eq!(e.to_string(), "messages[3].channel: must not be empty");
        assert_eq!(e.code(), ErrorCode::InvalidChannel);
    }

    #[test]
    fn grpc_status_uses_the_shared_code_table() {
        let status = tonic::Status::from(ApiError::unauthorized());
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = tonic::Status::from(ApiError::Unavailable(BrokerError::unavailable("publish", "down")));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("down"), "the cause is logged, not shown");
        let unknown = BrokerError::OutcomeUnknown { confirmed: 2, reason: "no answer".into() };
        let status = tonic::Status::from(ApiError::broker(unknown, 5));
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("2 of 5"), "{}", status.message());
    }
}
