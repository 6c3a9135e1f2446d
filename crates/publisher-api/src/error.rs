//! The one error type of the API, shown to HTTP clients as a JSON body and to gRPC clients as a
//! status. Both take their code from [`ErrorCode`], so a failure means the same on both.

use axum::response::{IntoResponse, Response};
use herald_broker::BrokerError;
use herald_protocol::ErrorCode;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong; the message tells the caller what to fix. Messages start
    /// with the path of the offending field (`messages[3].channel: ...`) when there is one.
    #[error("{message}")]
    Request { code: ErrorCode, message: String },
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
    Limited { code: ErrorCode, message: String, retry_after: std::time::Duration },
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Request { code, message: message.into() }
    }

    /// A request whose body could not be read as the JSON the endpoint expects.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::MalformedFrame, message)
    }

    /// Missing or wrong credentials.
    /// The error for a failed broker publish of `total` messages.
    pub fn broker(e: BrokerError, total: usize) -> Self {
        match e {
            BrokerError::OutcomeUnknown { confirmed, .. } => {
                Self::OutcomeUnknown { confirmed, total, source: e }
            }
            e => Self::Unavailable(e),
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "a valid API key is required: `Authorization: Bearer <key>`")
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Request { code, .. } => *code,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            Self::Limited { code, .. } => *code,
        }
    }

    /// Prefixes the message with where the problem is (`messages[3]`), so a batch error points
    /// at its entry. Field messages already start with their field name, giving
    /// `messages[3].channel: ...`.
    pub fn at(self, path: &str) -> Self {
        match self {
            Self::Request { code, message } => Self::Request { code, message: format!("{path}.{message}") },
            other => other,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut response = herald_api_common::error_response(code, &self.to_string());
        if let Self::Limited { retry_after, .. } = &self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after.as_secs().max(1).into());
        }
        // Read by the metrics middleware, which labels requests by error code.
        response.extensions_mut().insert(code);
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let mut status = tonic::Status::new(tonic::Code::from_i32(e.code().grpc_code()), e.to_string());
        if let ApiError::Limited { retry_after, .. } = &e {
            status.metadata_mut().insert("retry-after", retry_after.as_secs().max(1).into());
        }
        status
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
