//! WebSocket frames: JSON text frames with a `type` field and an optional client-chosen `id`
//! that the server echoes in its reply.
//!
//! Layout: [`client`] holds what a client sends ([`ClientFrame`]) and how it is parsed;
//! [`server`] what the gateway sends back ([`ServerFrame`]). This file holds what both share.

mod client;
mod server;

pub use client::ClientFrame;
use serde::{Deserialize, Serialize};
pub use server::{InboxState, ServerFrame, StreamState};

use crate::error::ErrorCode;

/// A client-chosen request id, echoed in the reply: a string (at most 64 bytes) or an integer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Num(u64),
    Str(String),
}

/// Longest string request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Why a client frame was refused. It carries the request id when one could be read, so the
/// error reply can still be matched to its request.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

/// How deeply arrays and objects nest in `json`, which must be valid JSON: `0` for a scalar,
/// `1` for `[1]` or `{"a":1}`, `2` for `[[1]]`. Brackets inside strings do not count. For
/// limiting the depth of client `data`, which is passed on untouched and parsed again by
/// every subscriber.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#""[[[""#), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"["\"[", [2]]"#), 2);
        assert_eq!(json_depth(&format!("{}{}", "[".repeat(100), "]".repeat(100))), 100);
    }
}
