//! The RESP reader of the broker's Redis Pub/Sub connection, fed arbitrary bytes as if Redis
//! had sent them.
//!
//! The input is read as the connection reads its buffer: measure a frame, interpret it, drop
//! it, go on. Properties: nothing panics; a measured frame lies within the buffer and measures
//! the same alone; every shorter prefix of it is "incomplete", never an error (the connection
//! measures again after each read, so a frame split across reads must not be refused); the
//! events read re-encode as Redis would send them and read back the same. Independently, the
//! input split in two is sent as a `message` (channel, payload) and must read back as such.
#![no_main]

use herald_broker::redis::resp::{Event, RespError, frame_len, parse_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (channel, payload) = data.split_at(data.len() / 2);
    let sent = encode(&[b"message", channel, payload]);
    assert_eq!(frame_len(&sent).unwrap(), Some(sent.len()));
    assert_eq!(parse_event(&sent).unwrap(), Event::Message { channel, payload });

    let mut rest = data;
    while let Ok(Some(used)) = frame_len(rest) {
        assert!(used > 0 && used <= rest.len(), "frame of {used} bytes in {}", rest.len());
        let frame = &rest[..used];
        assert_eq!(frame_len(frame).unwrap(), Some(used), "the bytes after the frame changed it");
        let step = (used / 256).max(1);
        for cut in (0..used).step_by(step).chain(used.saturating_sub(4)..used) {
            match frame_len(&frame[..cut]) {
                Ok(None) => {}
                other => panic!("prefix of {cut} of a {used}-byte frame measured {other:?}"),
            }
        }
        match parse_event(frame) {
            Ok(event) => check_round_trip(&event),
            Err(RespError::Server(_)) => assert_eq!(frame[0], b'-', "a server error from a non-error frame"),
            Err(RespError::Protocol(_)) => {
                assert_eq!(frame[0], b'*', "a protocol error from a non-array frame")
            }
            Err(e) => panic!("reading a buffered frame failed with {e}"),
        }
        rest = &rest[used..];
    }
});

/// An event, sent again the way Redis sends it, reads back as the same event.
fn check_round_trip(event: &Event<'_>) {
    let frame = match event {
        Event::Message { channel, payload } => encode(&[b"message", channel, payload]),
        Event::PMessage { pattern, channel, payload } => encode(&[b"pmessage", pattern, channel, payload]),
        Event::Subscribed(channel) => {
            [encode_head(3), bulk(b"subscribe"), bulk(channel), b":1\r\n".to_vec()].concat()
        }
        Event::Unsubscribed(channel) => {
            [encode_head(3), bulk(b"unsubscribe"), bulk(channel), b":0\r\n".to_vec()].concat()
        }
        Event::PSubscribed(pattern) => {
            [encode_head(3), bulk(b"psubscribe"), bulk(pattern), b":1\r\n".to_vec()].concat()
        }
        Event::PUnsubscribed(pattern) => {
            [encode_head(3), bulk(b"punsubscribe"), bulk(pattern), b":0\r\n".to_vec()].concat()
        }
        Event::Pong => b"+PONG\r\n".to_vec(),
        Event::Ok => b"+OK\r\n".to_vec(),
    };
    assert_eq!(frame_len(&frame).unwrap(), Some(frame.len()));
    assert_eq!(&parse_event(&frame).unwrap(), event);
}

/// An array of bulk strings, as Redis sends Pub/Sub messages.
fn encode(items: &[&[u8]]) -> Vec<u8> {
    let mut out = encode_head(items.len());
    for item in items {
        out.extend(bulk(item));
    }
    out
}

fn encode_head(n: usize) -> Vec<u8> {
    format!("*{n}\r\n").into_bytes()
}

fn bulk(item: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", item.len()).as_bytes(), item, b"\r\n"].concat()
}
