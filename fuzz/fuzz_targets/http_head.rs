//! The gateway's HTTP request-head parser, fed arbitrary bytes as if they came off a socket.
//!
//! Properties: it never panics and never says `Closed` (only the socket can); a complete head
//! ends with its blank line and is parsed the same without the bytes after it; every shorter
//! prefix of it is "incomplete", never an error, because the listener parses the buffer again
//! after each read and a head split across reads must not be refused; the path and query
//! come from the request target and the header values are trimmed single lines.
#![no_main]

use herald_gateway::head::{HeadError, parse_request_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = match parse_request_head(data) {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(HeadError::Malformed(_) | HeadError::TooLarge) => return,
        Err(HeadError::Closed) => panic!("the parser said `Closed`"),
    };
    let len = head.len;
    assert!(len > 0 && len <= data.len(), "head length {len} of {} bytes", data.len());
    let bytes = &data[..len];
    assert!(bytes.ends_with(b"\n\n") || bytes.ends_with(b"\n\r\n"), "head does not end with a blank line");
    match parse_request_head(bytes) {
        Ok(Some(alone)) => assert_eq!(alone, head, "the bytes after the head changed it"),
        other => panic!("the head alone parsed as {other:?}"),
    }
    let step = (len / 256).max(1);
    for cut in (0..len).step_by(step).chain(len.saturating_sub(4)..len) {
        match parse_request_head(&bytes[..cut]) {
            Ok(None) => {}
            other => panic!("prefix of {cut} of a {len}-byte head parsed as {other:?}"),
        }
    }

    assert!(!head.method.is_empty() && !head.method.contains([' ', '\r', '\n']));
    assert!(!head.path.contains('?'), "path {:?} holds the query", head.path);
    let target =
        if head.query.is_empty() { head.path.clone() } else { format!("{}?{}", head.path, head.query) };
    assert!(contains(bytes, target.as_bytes()), "target {target:?} is not in the head");
    for value in
        [&head.upgrade, &head.connection, &head.version, &head.key, &head.authorization].into_iter().flatten()
    {
        assert_eq!(value, value.trim(), "header value not trimmed");
        assert!(!value.contains(['\r', '\n']), "header value {value:?} spans lines");
    }
});

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
