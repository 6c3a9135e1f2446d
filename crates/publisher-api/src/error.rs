//! The one error type of the API. What it shows the caller (an HTTP JSON body or a gRPC
//! status, both coded by the shared [`ErrorCode`] table) is written once, in
//! [`herald_api_common::error`]; this file says what can go wrong here.

use std::time::Duration;

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
    /// A history or inbox read failed for want of the broker; nothing changed, and the read
    /// may be retried. The cause is logged where it happened.
    #[error("the broker is unavailable; retry later")]
    ReadUnavailable(#[source] BrokerError),
    /// The broker got the message(s) and did not answer in time: they may or may not have
    /// been published. Saying `unavailable` here would invite a retry that publishes twice;
    /// a retry with the same idempotency keys cannot.
    #[error(
        "the broker did not answer in time: {confirmed} of {total} message(s) are confirmed published, \
         the rest may or may not have been; a retry may publish them twice, unless it carries the same \
         idempotency_key (channels with history)"
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
    /// The broker refused a request it should have taken (a history request it cannot serve,
    /// an engine that keeps no history): a bug or a misconfiguration, not the caller's fault.
    #[error("the broker cannot serve this request: {0}")]
    Internal(#[source] BrokerError),
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
            BrokerError::InvalidHistoryRequest(_) | BrokerError::HistoryUnsupported(_) => Self::Internal(e),
            e => Self::Unavailable(e),
        }
    }

    /// The error for a failed step of a batch after its first `done` messages were
    /// published. Whatever the step's error, the batch as a whole is then only partly
    /// published: `outcome_unknown`, with the messages known to be published counted.
    pub fn broker_after(e: BrokerError, done: usize, total: usize) -> Self {
        if done == 0 {
            return Self::broker(e, total);
        }
        let confirmed = match &e {
            BrokerError::OutcomeUnknown { confirmed, .. } => done + confirmed,
            _ => done,
        };
        Self::OutcomeUnknown { confirmed, total, source: e }
    }

    /// The error for a failed history or inbox read.
    pub fn broker_read(e: BrokerError) -> Self {
        match e {
            BrokerError::Unrecoverable { reason, current } => Self::new(
                ErrorCode::Unrecoverable,
                format!(
                    "since: the history after that position is no longer fully kept ({reason}); \
                     the channel is at offset {} of epoch {:?}: read without since and go on from there",
                    current.offset, current.epoch
                ),
            ),
            BrokerError::InvalidHistoryRequest(_) | BrokerError::HistoryUnsupported(_) => Self::Internal(e),
            e => Self::ReadUnavailable(e),
        }
    }

    /// Missing or wrong credentials.
    pub fn unauthorized() -> Self {
        Refusal::unauthorized().into()
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Request(refusal) => refusal.code,
            Self::Unavailable(_) | Self::ReadUnavailable(_) => ErrorCode::Unavailable,
            Self::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            Self::Limited { code, .. } => *code,
            Self::Internal(_) => ErrorCode::Internal,
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

herald_api_common::transport_conversions!(ApiError);

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
