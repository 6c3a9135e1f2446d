//! The one list of error codes, each mapped in one place to what every transport shows:
//! the `code` string of a WebSocket `error` frame and of HTTP error bodies, the HTTP status, the
//! gRPC status code, and (for errors that end a connection) the WebSocket close code.
//!
//! `docs/protocol.md` documents the same table for client authors; keep them together.

use serde::Serialize;

/// Why a request failed. The `snake_case` name is the stable, documented code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body is not the JSON shape the endpoint expects.
    MalformedFrame,
    /// A frame's `type` is not one the server knows.
    UnknownType,
    /// A channel name or user id breaks the naming rules.
    InvalidChannel,
    /// A pattern of a pattern subscription breaks the pattern rules (see the message).
    InvalidPattern,
    /// The channel's namespace is not configured on this server.
    UnknownChannel,
    /// The caller is authenticated but may not do this (another user's personal channel,
    /// publishing into a namespace that does not allow client publishing, ...).
    Forbidden,
    /// The connection is already subscribed to the channel.
    AlreadySubscribed,
    /// The connection is not subscribed to the channel.
    NotSubscribed,
    /// A frame or request body is larger than the configured limit.
    MessageTooLarge,
    /// A batch holds more messages than the configured limit, or none.
    BatchTooLarge,
    /// A per-connection limit was reached (for example the number of subscriptions).
    LimitExceeded,
    /// The connection sends frames faster than `gateway.frame_rate` allows: it is read no
    /// faster, and its frames are handled late. Sustained, it ends the connection with 4029.
    RateLimited,
    /// The credentials (token or API key) are missing or invalid.
    Unauthorized,
    /// The connection token has expired.
    TokenExpired,
    /// A `refresh` token names another user than the connection's: the connection stays on
    /// its old token.
    UserMismatch,
    /// A subscription token is missing where a private namespace needs one, or is invalid:
    /// malformed, wrongly signed, for another user or another channel.
    InvalidSubscriptionToken,
    /// A subscription token has expired.
    SubscriptionExpired,
    /// The user has `gateway.max_connections_per_user` connections open on this gateway.
    TooManyConnections,
    /// The broker (Redis) cannot be reached; nothing was published. Safe to retry.
    Unavailable,
    /// The publish went out to the broker and no answer came in time: it may or may not have
    /// taken effect. A retry may publish twice.
    OutcomeUnknown,
    /// The channel keeps no history (its namespace has no `history_size`), or clients may not
    /// read it (no `client_history`), or the inbox is off.
    NoHistory,
    /// A history read from a position cannot return every message after it (the history
    /// was lost or trimmed since); the message names the reason. Reload and read without
    /// `since`.
    Unrecoverable,
    /// The server is at a limit of work in flight (requests or bytes); nothing happened.
    /// Retry after the `Retry-After` delay.
    Overloaded,
    /// The client did not read its messages fast enough and its queue overflowed.
    SlowConsumer,
    /// The client stopped answering the server's pings.
    HeartbeatTimeout,
    /// The server is shutting down or restarting; reconnect (to another replica).
    ShuttingDown,
    /// A bug or an unexpected failure on the server.
    Internal,
}

/// WebSocket close codes Herald uses. 1xxx are the standard ones (RFC 6455), 4xxx are Herald's.
pub struct CloseCode;

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The client broke the WebSocket protocol (an unmasked frame, reserved bits, an unknown
    /// opcode).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame exceeded the configured maximum message size.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Unexpected server failure.
    pub const INTERNAL: u16 = 1011;
    /// The server is restarting or draining; reconnect after the delay given in the reason.
    pub const SERVICE_RESTART: u16 = 1012;
    /// A dependency (the broker) is unavailable; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection was refused at connect for a reason with no close code of its own (a bad
    /// channel, a bad `since`, ...): a browser's refusal ([`CloseCode`]s are its only way to see
    /// one). The reason starts with the error code.
    pub const REFUSED: u16 = 4000;
    /// The token is invalid or has expired. Reconnect with a fresh token.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Refused at connect: the token does not allow what the URL asked (`forbidden`).
    pub const FORBIDDEN: u16 = 4003;
    /// The client did not read fast enough; its outbound queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client stopped answering pings.
    pub const HEARTBEAT_TIMEOUT: u16 = 4009;
    /// The client kept sending frames faster than its rate limit.
    pub const RATE_LIMITED: u16 = 4029;
    /// Refused at connect: the user has `gateway.max_connections_per_user` connections open on
    /// the gateway already (`too_many_connections`). Apart from 4029, which ends a connection
    /// that sent too much: here closing another of the user's connections is what helps.
    pub const TOO_MANY_CONNECTIONS: u16 = 4030;
}

impl ErrorCode {
    /// Every code, for documentation tests.
    pub const ALL: [ErrorCode; 27] = [
        Self::MalformedFrame,
        Self::UnknownType,
        Self::InvalidChannel,
        Self::InvalidPattern,
        Self::UnknownChannel,
        Self::Forbidden,
        Self::AlreadySubscribed,
        Self::NotSubscribed,
        Self::MessageTooLarge,
        Self::BatchTooLarge,
        Self::LimitExceeded,
        Self::RateLimited,
        Self::Unauthorized,
        Self::TokenExpired,
        Self::UserMismatch,
        Self::InvalidSubscriptionToken,
        Self::SubscriptionExpired,
        Self::TooManyConnections,
        Self::Unavailable,
        Self::OutcomeUnknown,
        Self::NoHistory,
        Self::Unrecoverable,
        Self::Overloaded,
        Self::SlowConsumer,
        Self::HeartbeatTimeout,
        Self::ShuttingDown,
        Self::Internal,
    ];

    /// The stable name shown to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::UnknownType => "unknown_type",
            Self::InvalidChannel => "invalid_channel",
            Self::InvalidPattern => "invalid_pattern",
            Self::UnknownChannel => "unknown_channel",
            Self::Forbidden => "forbidden",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::MessageTooLarge => "message_too_large",
            Self::BatchTooLarge => "batch_too_large",
            Self::LimitExceeded => "limit_exceeded",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::UserMismatch => "user_mismatch",
            Self::InvalidSubscriptionToken => "invalid_subscription_token",
            Self::SubscriptionExpired => "subscription_expired",
            Self::TooManyConnections => "too_many_connections",
            Self::Unavailable => "unavailable",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::NoHistory => "no_history",
            Self::Unrecoverable => "unrecoverable",
            Self::Overloaded => "overloaded",
            Self::SlowConsumer => "slow_consumer",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(self) -> u16 {
        match self {
            Self::MalformedFrame | Self::UnknownType => 400,
            Self::InvalidChannel | Self::InvalidPattern | Self::UnknownChannel | Self::NoHistory => 422,
            Self::Unrecoverable => 410,
            Self::AlreadySubscribed | Self::NotSubscribed => 409,
            Self::Forbidden | Self::UserMismatch | Self::InvalidSubscriptionToken => 403,
            Self::SubscriptionExpired => 401,
            Self::TooManyConnections => 429,
            Self::MessageTooLarge | Self::BatchTooLarge => 413,
            Self::LimitExceeded | Self::RateLimited => 429,
            Self::Unauthorized | Self::TokenExpired => 401,
            Self::Unavailable | Self::ShuttingDown | Self::Overloaded => 503,
            Self::OutcomeUnknown => 504,
            Self::SlowConsumer | Self::HeartbeatTimeout => 408,
            Self::Internal => 500,
        }
    }

    /// The gRPC status code number (see `google.rpc.Code`).
    pub fn grpc_code(self) -> i32 {
        const INVALID_ARGUMENT: i32 = 3;
        const NOT_FOUND: i32 = 5;
        const ALREADY_EXISTS: i32 = 6;
        const PERMISSION_DENIED: i32 = 7;
        const RESOURCE_EXHAUSTED: i32 = 8;
        const FAILED_PRECONDITION: i32 = 9;
        const DEADLINE_EXCEEDED: i32 = 4;
        const OUT_OF_RANGE: i32 = 11;
        const INTERNAL: i32 = 13;
        const UNAVAILABLE: i32 = 14;
        const UNAUTHENTICATED: i32 = 16;
        match self {
            Self::MalformedFrame | Self::UnknownType | Self::InvalidChannel | Self::InvalidPattern => {
                INVALID_ARGUMENT
            }
            Self::UnknownChannel => NOT_FOUND,
            Self::Forbidden | Self::UserMismatch | Self::InvalidSubscriptionToken => PERMISSION_DENIED,
            Self::SubscriptionExpired => UNAUTHENTICATED,
            Self::TooManyConnections => RESOURCE_EXHAUSTED,
            Self::AlreadySubscribed => ALREADY_EXISTS,
            Self::NotSubscribed | Self::NoHistory => FAILED_PRECONDITION,
            Self::Unrecoverable => OUT_OF_RANGE,
            Self::MessageTooLarge | Self::BatchTooLarge | Self::LimitExceeded | Self::RateLimited => {
                RESOURCE_EXHAUSTED
            }
            Self::Unauthorized | Self::TokenExpired => UNAUTHENTICATED,
            Self::Unavailable | Self::ShuttingDown | Self::Overloaded => UNAVAILABLE,
            Self::SlowConsumer | Self::HeartbeatTimeout | Self::OutcomeUnknown => DEADLINE_EXCEEDED,
            Self::Internal => INTERNAL,
        }
    }

    /// The close code used when this error ends a WebSocket connection. Errors without one never
    /// end a connection: they are answered with an `error` frame and the connection stays open.
    /// `unavailable` ends a connection only while it is being set up; `rate_limited` is an
    /// `error` frame first and ends the connection only when the abuse goes on.
    pub fn close_code(self) -> Option<u16> {
        match self {
            Self::Unauthorized | Self::TokenExpired => Some(CloseCode::UNAUTHORIZED),
            Self::MessageTooLarge => Some(CloseCode::MESSAGE_TOO_BIG),
            Self::SlowConsumer => Some(CloseCode::SLOW_CONSUMER),
            Self::HeartbeatTimeout => Some(CloseCode::HEARTBEAT_TIMEOUT),
            Self::RateLimited => Some(CloseCode::RATE_LIMITED),
            Self::TooManyConnections => Some(CloseCode::TOO_MANY_CONNECTIONS),
            Self::ShuttingDown => Some(CloseCode::SERVICE_RESTART),
            Self::Unavailable => Some(CloseCode::TRY_AGAIN_LATER),
            Self::Internal => Some(CloseCode::INTERNAL),
            _ => None,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_match_the_documented_codes() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn every_code_is_documented_in_the_protocol_guide() {
        let doc = include_str!("../../../docs/protocol.md");
        for code in ErrorCode::ALL {
            assert!(doc.contains(&format!("`{}`", code.as_str())), "{code} missing from docs/protocol.md");
        }
        for close in [
            "1002", "1007", "1009", "1011", "1012", "1013", "4000", "4001", "4003", "4008", "4009", "4029",
            "4030",
        ] {
            assert!(doc.contains(close), "close code {close} missing from docs/protocol.md");
        }
    }
}
