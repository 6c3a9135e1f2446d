//! The WebSocket frames the gateway writes itself (RFC 6455, section 5.2). A server's frames
//! are not masked, so a message is encoded once, header and payload in one buffer, and the
//! same bytes go to every subscriber.

use bytes::{BufMut, Bytes, BytesMut};

/// A ping with no payload.
pub const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

/// A final text frame carrying `payload`, which must be UTF-8.
pub fn text(payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    put_text(payload, &mut frame);
    frame.freeze()
}

/// Appends a final text frame carrying `payload`, which must be UTF-8.
pub fn put_text(payload: &[u8], out: &mut impl BufMut) {
    out.put_u8(0x81);
    match payload.len() {
        len @ 0..=125 => out.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    #[test]
    fn frames_match_the_library_at_every_length_encoding() {
        for len in [0, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload = "x".repeat(len);
            let mut theirs = Vec::new();
            Frame::message(payload.clone().into_bytes(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(text(payload.as_bytes()), theirs, "payload of {len} bytes");
        }
        let mut ping = Vec::new();
        Frame::ping(Vec::new()).format(&mut ping).unwrap();
        assert_eq!(PING, ping);
    }
}
