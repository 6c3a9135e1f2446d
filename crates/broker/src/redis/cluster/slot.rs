//! Which of Redis Cluster's 16384 slots a key or sharded channel belongs to: CRC16 (XMODEM)
//! of the key, or of its hash tag (the part between the first `{` and the next `}`, when
//! not empty), modulo 16384, as the cluster specification defines it.

/// Number of slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// The slot of `key`. Also a hash that every Herald process computes alike, which presence
/// uses to place users in its parts.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// The part of `key` that is hashed: its hash tag, or all of it.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|b| *b == b'{') else { return key };
    match key[open + 1..].iter().position(|b| *b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers of `CLUSTER KEYSLOT` on Redis 7 for the same keys.
    #[test]
    fn slots_match_what_redis_computes() {
        assert_eq!(crc16(b"123456789"), 0x31C3, "the XMODEM check value");
        for (key, slot) in [
            ("foo", 12182),
            ("bar", 5061),
            ("herald:room", 11841),
            ("herald:{room}", 15960),
            ("herald:{room}.stream", 15960),
            ("room", 15960),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
            ("", 0),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
    }
}
