//! The per-connection limit on client frames: a token bucket refilled at `gateway.frame_rate`
//! per second, holding at most `gateway.frame_burst`. Every frame read takes a token. A frame
//! finding the bucket empty is not refused but held: it takes the next token before it comes
//! (the bucket goes into debt), and the connection reads nothing more until the debt is paid,
//! so a client sending faster is slowed down by TCP flow control rather than answered frame
//! by frame. A connection held back for `gateway.rate_limit_close_after` without its bucket
//! refilling to half is closed.

use std::time::Duration;

use tokio::time::Instant;

/// What to do with a client frame just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Handle the frame at `until`, and read nothing before. `first` when this frame begins a
    /// spell of holding, which the client is told of once.
    Hold {
        until: Instant,
        first: bool,
    },
    /// Held back too long: close the connection with 4029; the frame is not handled.
    Close,
}

/// One connection's bucket.
pub(crate) struct FrameRate {
    /// Below zero while a held frame waits for its token.
    tokens: f64,
    refilled: Instant,
    /// When the first frame was held since the bucket was last at least half full.
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
        Self { tokens: f64::from(limit.burst), refilled: Instant::now(), limited_since: None }
    }

    /// Takes a token for one frame read now.
    pub(crate) fn take(&mut self, limit: &Limit) -> Verdict {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let (rate, burst) = (f64::from(limit.per_second), f64::from(limit.burst));
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= burst / 2.0 {
            // The client slowed down for a while: earlier holds are forgiven.
            self.limited_since = None;
        }
        // A hair below one still counts as a token: the wait for it was rounded up, but the
        // refill may come out a rounding error short.
        if self.tokens > 1.0 - 1e-6 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Verdict::Allow;
        }
        let first = self.limited_since.is_none();
        let since = *self.limited_since.get_or_insert(now);
        if now.duration_since(since) >= limit.close_after {
            return Verdict::Close;
        }
        self.tokens -= 1.0;
        let wait = Duration::from_micros((-self.tokens * 1e6 / rate).ceil() as u64);
        Verdict::Hold { until: now + wait, first }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit { per_second: 10, burst: 20, close_after: Duration::from_secs(5) };

    fn hold_for(verdict: Verdict) -> Option<(Duration, bool)> {
        match verdict {
            Verdict::Hold { until, first } => Some((until - Instant::now(), first)),
            _ => None,
        }
    }

    /// The burst passes at once; past it each frame waits for its token, a tenth of a second
    /// apart, and the client is told once per spell.
    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_frames_wait_their_turn() {
        let mut bucket = FrameRate::new(&LIMIT);
        assert!((0..20).all(|_| bucket.take(&LIMIT) == Verdict::Allow), "the burst passes");
        let (wait, first) = hold_for(bucket.take(&LIMIT)).expect("held");
        assert_eq!((wait, first), (Duration::from_millis(100), true));
        // The connection reads again once the wait is over: the next frame waits as long.
        for _ in 0..30 {
            tokio::time::advance(wait).await;
            let (wait, first) = hold_for(bucket.take(&LIMIT)).expect("held");
            assert_eq!((wait, first), (Duration::from_millis(100), false));
        }
        // Half a second without frames refills five tokens, minus the one still owed.
        tokio::time::advance(Duration::from_millis(100 + 500)).await;
        let allowed = (0..20).take_while(|_| bucket.take(&LIMIT) == Verdict::Allow).count();
        assert_eq!(allowed, 5);
    }

    /// Held back for five seconds without a pause, a connection is closed; a pause long enough
    /// to refill half the bucket starts the count again.
    #[tokio::test(start_paused = true)]
    async fn sustained_holding_closes_and_a_pause_forgives() {
        let mut bucket = FrameRate::new(&LIMIT);
        (0..20).for_each(|_| assert_eq!(bucket.take(&LIMIT), Verdict::Allow));
        assert!(hold_for(bucket.take(&LIMIT)).is_some_and(|(_, first)| first));
        // A client that pauses for a second and a half (15 tokens, over half the bucket, after
        // the one owed) is forgiven: its next spell is a first one again.
        tokio::time::advance(Duration::from_millis(1600)).await;
        (0..15).for_each(|_| assert_eq!(bucket.take(&LIMIT), Verdict::Allow));
        // Then it sends as fast as it is read, for six seconds: held, then closed once five
        // seconds of holding passed.
        let mut verdicts = Vec::new();
        for _ in 0..80 {
            let verdict = bucket.take(&LIMIT);
            verdicts.push(verdict);
            match verdict {
                Verdict::Hold { until, .. } => tokio::time::advance(until - Instant::now()).await,
                Verdict::Allow => {}
                Verdict::Close => break,
            }
        }
        let firsts = verdicts.iter().filter(|v| matches!(v, Verdict::Hold { first: true, .. })).count();
        assert_eq!(firsts, 1, "told once");
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
        let held = verdicts.iter().filter(|v| matches!(v, Verdict::Hold { .. })).count();
        assert_eq!(held, 50, "five seconds of frames, each a tenth of a second after the last");
    }
}
