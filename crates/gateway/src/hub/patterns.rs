//! The hub's pattern subscriptions: pattern -> local connections, beside the channel map.
//!
//! As for channels, the node, not each socket, subscribes: the first local subscriber of a
//! pattern subscribes the node to it (one `PSUBSCRIBE` on Redis), the last one leaving
//! unsubscribes it, so a gateway holds one broker subscription per distinct pattern however
//! many sockets share it; at most `gateway.max_node_patterns` of them. The engine names the
//! pattern a message came through; the hub splices `"pattern":"<pattern>",` into the frame
//! once per message and pattern, and every subscriber of the pattern gets the same bytes,
//! written by `crate::fanout` exactly as a channel's.
//!
//! A message reaches a connection once per subscription it matches: through the channel if
//! the connection holds it, and once through each matching pattern, that copy marked with
//! `pattern`. Telling them apart costs the fan-out nothing per connection.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use bytes::{BufMut, Bytes, BytesMut};
use herald_broker::Confirmation;
use herald_protocol::ChannelPattern;
use herald_protocol::support::shrink;

use super::{Hub, HubInner, Received, publish_time};
use crate::fanout;
use crate::registry::{ConnHandle, ConnId, ConnMap};
use crate::wire;

/// The node's patterns. Few (at most `gateway.max_node_patterns`), so one lock for all.
#[derive(Default)]
pub(super) struct Patterns {
    map: HashMap<ChannelPattern, PatternEntry>,
}

struct PatternEntry {
    conns: ConnMap<ConnHandle>,
    /// The broker confirmed the node's subscription (see the channel map's field).
    confirmed: bool,
}

/// The gateway holds `gateway.max_node_patterns` distinct patterns already.
#[derive(Debug)]
pub struct TooManyPatterns(pub usize);

impl Hub {
    /// Adds `conn` to `pattern`'s subscribers; the first one subscribes the node. The
    /// confirmation resolves once the pattern's messages are guaranteed to reach this node;
    /// on error the caller must [`Hub::leave_pattern`]. Refused, with nothing changed, when
    /// the pattern is new and the node holds its limit of patterns already.
    pub fn join_pattern(
        &self,
        pattern: &ChannelPattern,
        conn: ConnHandle,
    ) -> Result<Confirmation, TooManyPatterns> {
        let mut patterns = self.inner.patterns.write().expect("hub lock poisoned");
        let max = self.inner.max_patterns;
        let vacant = !patterns.map.contains_key(pattern);
        if vacant && patterns.map.len() >= max {
            return Err(TooManyPatterns(max));
        }
        let entry = patterns.map.entry(pattern.clone());
        let confirmation = match &entry {
            Entry::Vacant(_) => self.subscriber().subscribe_pattern(pattern),
            Entry::Occupied(known) if known.get().confirmed => Confirmation::confirmed(),
            Entry::Occupied(_) => self.subscriber().pattern_confirmation(pattern),
        };
        let entry = entry.or_insert_with(|| PatternEntry { conns: ConnMap::default(), confirmed: false });
        entry.conns.insert(conn.id, conn);
        entry.confirmed = confirmation.is_confirmed();
        Ok(confirmation)
    }

    /// Removes connection `id` from `pattern`; the last one out unsubscribes the node.
    pub fn leave_pattern(&self, pattern: &ChannelPattern, id: ConnId) {
        let mut patterns = self.inner.patterns.write().expect("hub lock poisoned");
        let Some(entry) = patterns.map.get_mut(pattern) else { return };
        if entry.conns.remove(&id).is_none() {
            return;
        }
        if !entry.conns.is_empty() {
            shrink(&mut entry.conns);
            return;
        }
        patterns.map.remove(pattern);
        shrink(&mut patterns.map);
        self.subscriber().unsubscribe_pattern(pattern);
    }

    /// Distinct patterns with at least one local subscriber.
    pub fn pattern_count(&self) -> usize {
        self.inner.patterns.read().expect("hub lock poisoned").map.len()
    }

    /// Local subscribers of `pattern`.
    pub fn pattern_subscriber_count(&self, pattern: &ChannelPattern) -> usize {
        let patterns = self.inner.patterns.read().expect("hub lock poisoned");
        patterns.map.get(pattern).map_or(0, |e| e.conns.len())
    }
}

impl HubInner {
    /// Takes in a message of `channel` that came through `pattern`: its frame, with the
    /// pattern spliced in, is made here, once.
    pub(super) fn receive_pattern(&self, pattern: &str, channel: &str, payload: Bytes) -> Option<Received> {
        self.metrics.messages_in.inc();
        if std::str::from_utf8(&payload).is_err() || payload.first() != Some(&b'{') {
            tracing::warn!(channel, pattern, "dropped a broker message that is not a UTF-8 JSON object");
            return None;
        }
        Some(Received {
            channel: channel.into(),
            pattern: Some(pattern.into()),
            ts: publish_time(&payload),
            frame: marked(pattern, &payload),
            at: None,
        })
    }

    /// Hands `frames`, of one channel through `pattern`, to the pattern's subscribers.
    pub(super) fn fan_out_pattern(&self, pattern: &str, frames: &[Bytes], oldest: u64) {
        let patterns = self.patterns.read().expect("hub lock poisoned");
        let Some(entry) = patterns.map.get(pattern) else { return };
        let delivered = fanout::frames(&entry.conns, frames, &self.metrics);
        drop(patterns);
        self.metrics.frames_delivered.inc_by(delivered as u64);
        if oldest > 0 {
            let now = herald_protocol::publication::now_millis();
            self.metrics.delivery_latency.observe(now.saturating_sub(oldest) as f64 / 1000.0);
        }
    }
}

/// The WebSocket frame of `payload` (a JSON object) with `"pattern":"<pattern>",` first in
/// it. A pattern holds no character JSON would escape (see [`ChannelPattern`]); one that
/// does is not Herald's, and is written escaped all the same.
fn marked(pattern: &str, payload: &[u8]) -> Bytes {
    let pattern = serde_json::to_string(pattern).expect("strings serialize");
    let len = payload.len() + pattern.len() + 12;
    let mut text = BytesMut::with_capacity(len);
    text.put_slice(b"{\"pattern\":");
    text.put_slice(pattern.as_bytes());
    text.put_u8(b',');
    text.put_slice(&payload[1..]);
    wire::text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The marked frame is the message with `pattern` added, every other field untouched.
    #[test]
    fn the_pattern_is_spliced_into_the_frame() {
        let payload = br#"{"type":"message","channel":"e:a","data":{"x":1}}"#;
        let frame = marked("e:*", payload);
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        assert_eq!(text, r#"{"pattern":"e:*","type":"message","channel":"e:a","data":{"x":1}}"#);
        assert_eq!(usize::from(frame[1]), text.len());
    }
}
