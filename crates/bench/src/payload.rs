//! The bench payload: `{"b":[<seq>,<sent µs>],"p":"xxxx"}`, padded to the requested size.
//!
//! Every message carries its sequence number in its stream and the wall-clock time it was
//! sent, in microseconds since the Unix epoch. Receivers find the `"b":[` marker anywhere in
//! the frame, so the same parser reads Herald's `message` frame (the payload is its `data`)
//! and nchan's bare payload. Client and servers share one machine and so one clock.

use std::time::{SystemTime, UNIX_EPOCH};

const MARKER: &[u8] = b"\"b\":[";

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The payload for message `seq` sent at `sent_us`, at least `size` bytes long (exactly
/// `size` unless the numbers alone are longer).
pub fn encode(seq: u64, sent_us: u64, size: usize) -> String {
    let mut out = format!("{{\"b\":[{seq},{sent_us}],\"p\":\"");
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// The sequence number and send time in a received frame, if it carries a bench payload.
pub fn decode(frame: &[u8]) -> Option<(u64, u64)> {
    let start = frame.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
    let rest = &frame[start..];
    let (seq, used) = number(rest)?;
    let rest = rest.get(used..)?.strip_prefix(b",")?;
    let (sent, used) = number(rest)?;
    rest.get(used..)?.strip_prefix(b"]")?;
    Some((seq, sent))
}

fn number(bytes: &[u8]) -> Option<(u64, usize)> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0u64;
    for b in &bytes[..digits] {
        n = n * 10 + u64::from(b - b'0');
    }
    Some((n, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_requested_size_and_decode_inside_a_herald_frame() {
        let p = encode(41, 1_732_900_000_123_456, 64);
        assert_eq!(p.len(), 64);
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        let frame = format!(r#"{{"type":"message","channel":"room:x","id":"0193","ts":1,"data":{p}}}"#);
        assert_eq!(decode(frame.as_bytes()), Some((41, 1_732_900_000_123_456)));
        assert_eq!(decode(p.as_bytes()), Some((41, 1_732_900_000_123_456)));
    }

    #[test]
    fn frames_without_a_payload_decode_to_nothing() {
        assert_eq!(decode(br#"{"type":"subscribed","channel":"room:x"}"#), None);
        assert_eq!(decode(br#"{"b":[1,]}"#), None);
        assert_eq!(encode(1, 2, 4), r#"{"b":[1,2],"p":""}"#);
    }
}
