//! How a failed request looks to its caller, on both transports: an HTTP status with a JSON
//! body, or a gRPC status, both taken from the [`ErrorCode`] table so a failure means the same
//! everywhere.
//!
//! Each API keeps its own error enum, because what can fail differs (the broker for the
//! publisher API, the store for presence); each implements [`ApiFailure`] and hands itself to
//! [`http_response`] and [`grpc_status`], which are the only places the mapping is written.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;
use serde::Serialize;

/// What a failed request shows its caller: the code, the message (the error's `Display`), and
/// how long to wait before retrying when a limit refused it.
pub trait ApiFailure: std::error::Error {
    /// The documented code: the HTTP status, gRPC code and `code` string follow from it.
    fn code(&self) -> ErrorCode;

    /// Sent as `Retry-After` (HTTP header or gRPC metadata), in whole seconds, at least one.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A request refused for what it is: the code names the rule it broke and the message says
/// what to fix. Messages start with the path of the offending field (`messages[3].channel:
/// ...`) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Missing or wrong credentials.
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "a valid API key is required: `Authorization: Bearer <key>`")
    }

    /// Prefixes the message with where the problem is (`messages[3]`), so an error in a batch
    /// points at its entry: `messages[3].channel: ...`.
    pub fn at(self, path: &str) -> Self {
        Self { code: self.code, message: format!("{path}.{}", self.message) }
    }
}

impl ApiFailure for Refusal {
    fn code(&self) -> ErrorCode {
        self.code
    }
}

/// The JSON body of every HTTP error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: &'a str,
}

/// The HTTP response for `failure`: the code's status, the JSON body, `WWW-Authenticate:
/// Bearer` when the caller must authenticate, `Retry-After` when it must wait. The code is
/// also left in the response's extensions, where metrics middleware reads it.
pub fn http_response(failure: &(impl ApiFailure + ?Sized)) -> Response {
    let code = failure.code();
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = failure.to_string();
    let body = Body { error: Detail { code: code.as_str(), message: &message } };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if code == ErrorCode::Unauthorized {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(wait) = failure.retry_after() {
        headers.insert(header::RETRY_AFTER, wait.as_secs().max(1).into());
    }
    response.extensions_mut().insert(code);
    response
}

/// The gRPC status for `failure`: the code's gRPC code, the message, and `retry-after`
/// metadata when the caller must wait.
pub fn grpc_status(failure: &(impl ApiFailure + ?Sized)) -> tonic::Status {
    let code = failure.code();
    let mut status = tonic::Status::new(tonic::Code::from_i32(code.grpc_code()), failure.to_string());
    if let Some(wait) = failure.retry_after() {
        status.metadata_mut().insert("retry-after", wait.as_secs().max(1).into());
    }
    status
}

/// Implements `IntoResponse` and `From<$error> for tonic::Status` for an API's error type
/// through [`http_response`] and [`grpc_status`]. A macro because the impls must live in the
/// crate that defines the type.
#[macro_export]
macro_rules! transport_conversions {
    ($error:ty) => {
        impl ::axum::response::IntoResponse for $error {
            fn into_response(self) -> ::axum::response::Response {
                $crate::error::http_response(&self)
            }
        }

        impl ::core::convert::From<$error> for ::tonic::Status {
            fn from(e: $error) -> Self {
                $crate::error::grpc_status(&e)
            }
        }
    };
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        http_response(&self)
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        grpc_status(&refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("slow down")]
    struct Limited;

    impl ApiFailure for Limited {
        fn code(&self) -> ErrorCode {
            ErrorCode::Overloaded
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_millis(200))
        }
    }

    #[tokio::test]
    async fn errors_have_their_status_json_body_and_auth_challenge() {
        let response = Refusal::new(ErrorCode::Unauthorized, "who are you").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.extensions().get::<ErrorCode>(), Some(&ErrorCode::Unauthorized));
        let bytes = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body, serde_json::json!({"error": {"code": "unauthorized", "message": "who are you"}}));

        let response = Refusal::new(ErrorCode::UnknownChannel, "no such namespace").into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn both_transports_take_the_code_and_the_wait_from_the_one_table() {
        let response = http_response(&Limited);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1", "rounded up to a whole second");
        let status = grpc_status(&Limited);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
        assert_eq!(status.message(), "slow down");
        let status = tonic::Status::from(Refusal::unauthorized());
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn batch_paths_prefix_field_messages() {
        let e = Refusal::new(ErrorCode::InvalidChannel, "channel: must not be empty").at("messages[3]");
        assert_eq!(e.to_string(), "messages[3].channel: must not be empty");
        assert_eq!(e.code, ErrorCode::InvalidChannel);
    }
}
