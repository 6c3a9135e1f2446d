//! The per-connection limit on client frames: a token bucket refilled at `gateway.frame_rate`
//! per second, holding at most `gateway.frame_burst`. A frame finding the bucket empty is
//! refused; a connection whose bucket stays drained for `gateway.rate_limit_close_after` is
//! closed.

use std::time::Duration;

use tokio::time::Instant;

/// What to do with a client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Not handled; the client is told `rate_limited`.
    Refuse,
    /// The abuse went on too long: close the connection with 4029.
    Close,
}

/// One connection's bucket.
pub(crate) struct FrameRate {
    tokens: f32,
    refilled: Instant,
    /// When the first frame was refused since the bucket was last at least half full.
    limited_since: Option<Instant>,
}

/// The limit's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub(crate) per_second: u32,
    pub(crate) burst: u32,
    pub(crate) close_after: Duration,
}

impl FrameRate {
    /// A full bucket.
    pub(crate) fn new(limit: &Limit) -> Self {
        Self { tokens: limit.burst as f32, refilled: Instant::now(), limited_since: None }
    }

    /// Takes a token for one frame arriving now.
    pub(crate) fn take(&mut self, limit: &Limit) -> Verdict {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f32();
        self.refilled = now;
        let burst = limit.burst as f32;
        self.tokens = (self.tokens + elapsed * limit.per_second as f32).min(burst);
        if self.tokens >= burst / 2.0 {
            // The client slowed down for a while: earlier refusals are forgiven.
            self.limited_since = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let since = *self.limited_since.get_or_insert(now);
        if now.duration_since(since) >= limit.close_after { Verdict::Close } else { Verdict::Refuse }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit { per_second: 10, burst: 20, close_after: Duration::from_secs(5) };

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_holds() {
        let mut bucket = FrameRate::new(&LIMIT);
        assert!((0..20).all(|_| bucket.take(&LIMIT) == Verdict::Allow), "the burst passes");
        assert_eq!(bucket.take(&LIMIT), Verdict::Refuse);
        tokio::time::advance(Duration::from_millis(500)).await;
        let allowed = (0..20).filter(|_| bucket.take(&LIMIT) == Verdict::Allow).count();
        assert_eq!(allowed, 5, "half a second refills five tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_abuse_closes_and_a_pause_forgives() {
        let mut bucket = FrameRate::new(&LIMIT);
        (0..20).for_each(|_| assert_eq!(bucket.take(&LIMIT), Verdict::Allow));
        assert_eq!(bucket.take(&LIMIT), Verdict::Refuse);
        // A client that slows down for a second and a half (15 tokens, over half the bucket).
        tokio::time::advance(Duration::from_millis(1500)).await;
        (0..15).for_each(|_| assert_eq!(bucket.take(&LIMIT), Verdict::Allow));
        // Twice the rate for six seconds: refused, then closed once five seconds passed.
        let mut verdicts = Vec::new();
        for _ in 0..120 {
            tokio::time::advance(Duration::from_millis(50)).await;
            verdicts.push(bucket.take(&LIMIT));
        }
        assert!(verdicts.contains(&Verdict::Refuse));
        let first_close = verdicts.iter().position(|v| *v == Verdict::Close).expect("closed");
        assert!((95..=110).contains(&first_close), "closed after about five seconds: {first_close}");
    }
}
