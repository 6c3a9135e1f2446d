//! What receivers count: latency histograms that travel between processes as buckets, and
//! the per-connection record of which sequence numbers arrived.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest sequence number tracked exactly per connection (8 KiB of bits at most); beyond
/// it messages are counted but duplicates are not detected.
const MAX_TRACKED_SEQ: u64 = 1 << 16;

/// A latency histogram in microseconds, from 1 µs to one hour, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as `(value, count)` pairs, to send over a pipe as JSON.
pub fn to_buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn add_buckets(h: &mut Histogram<u64>, buckets: &[(u64, u64)]) {
    for &(value, count) in buckets {
        h.saturating_record_n(value, count);
    }
}

/// Summary of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Which sequence numbers one connection has received.
#[derive(Debug, Default)]
pub struct Seen {
    bits: Vec<u64>,
    max: Option<u64>,
    /// Distinct messages received.
    pub unique: u64,
    pub duplicates: u64,
    /// Messages that arrived after one with a higher sequence number.
    pub reordered: u64,
}

impl Seen {
    pub fn record(&mut self, seq: u64) {
        if seq < MAX_TRACKED_SEQ {
            let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if word >= self.bits.len() {
                self.bits.resize(word + 1, 0);
            }
            if self.bits[word] & bit != 0 {
                self.duplicates += 1;
                return;
            }
            self.bits[word] |= bit;
        }
        self.unique += 1;
        match self.max {
            Some(max) if seq < max => self.reordered += 1,
            _ => self.max = Some(seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_tells_duplicates_from_reordering() {
        let mut s = Seen::default();
        for seq in [0, 1, 3, 2, 3, 4] {
            s.record(seq);
        }
        assert_eq!((s.unique, s.duplicates, s.reordered), (5, 1, 1));
    }

    #[test]
    fn histograms_survive_the_trip_through_buckets() {
        let mut a = histogram();
        for v in [100, 200, 300, 40_000] {
            a.record(v).unwrap();
        }
        let mut b = histogram();
        add_buckets(&mut b, &to_buckets(&a));
        assert_eq!(b.len(), 4);
        assert_eq!(b.max(), a.max());
        assert_eq!(Percentiles::of(&b).p50_ms, Percentiles::of(&a).p50_ms);
    }
}
