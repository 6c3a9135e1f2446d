//! One task per gateway keeps time for every connection: it sends pings, warns clients whose
//! token is about to expire (`refresh_due`), closes connections whose client went silent or
//! whose token expired, and spreads the closes of a drain over `gateway.drain_window`.
//!
//! Connections hold no timers of their own. Three timers per connection (heartbeat, token
//! expiry, drain) cost a few hundred bytes each and a poll on every wake-up, which in a
//! fan-out is once per delivered message; walking every connection once per tick costs a
//! few atomic loads each.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;
use crate::config::GatewayConfig;
use crate::registry::Registry;
use crate::writer::Writer;

/// Advances the registry's clock and checks every connection once.
fn tick(registry: &Registry, config: &GatewayConfig) {
    let now = registry.clock.advance();
    let unix = herald_protocol::publication::now_millis() / 1000;
    let pong_timeout = config.pong_timeout.as_millis() as u64;
    let ping_interval = config.ping_interval.as_millis() as u64;
    registry.for_each(|entry| {
        if entry.expires_at.is_some_and(|exp| exp <= unix) {
            entry.writer.request_close(CloseReason::TokenExpired);
        } else if entry.warn_at.is_some_and(|warn| warn <= unix)
            && let Some(expires_at) = entry.expires_at
        {
            entry.warn_at = None;
            // Refused only when the connection is closing or its queue is full (then it is
            // closed as a slow consumer): either way nobody is left to warn.
            let _ = entry.writer.push_control(crate::refresh::due_frame(expires_at));
        } else if now.saturating_sub(entry.writer.last_seen()) > pong_timeout {
            entry.writer.request_close(CloseReason::HeartbeatTimeout);
        } else if now >= entry.next_ping {
            entry.next_ping = now + ping_interval;
            entry.writer.ping();
        }
    });
}

/// How often the sweeper looks at every connection: a quarter of the shortest heartbeat
/// setting, between 10 ms and 1 s.
fn tick_interval(config: &GatewayConfig) -> Duration {
    (config.ping_interval.min(config.pong_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Runs until the registry is dropped, or until the drain that `shutdown` starts is done.
pub(crate) async fn run(registry: Weak<Registry>, config: Arc<GatewayConfig>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(tick_interval(&config));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let Some(registry) = registry.upgrade() else { return };
                tick(&registry, &config);
            }
            _ = shutdown.cancelled() => break,
        }
    }
    let Some(registry) = registry.upgrade() else { return };
    drain(registry.start_drain(), config.drain_window).await;
}

/// Closes `queues` one after another, evenly spread over `window`, so their clients do not
/// all reconnect elsewhere at once.
async fn drain(queues: Vec<Arc<Writer>>, window: Duration) {
    let start = tokio::time::Instant::now();
    let n = queues.len().max(1) as f64;
    for (i, queue) in queues.into_iter().enumerate() {
        let due = start + window.mul_f64(i as f64 / n);
        // Closes due within a few milliseconds go out together rather than one sleep each.
        if due > tokio::time::Instant::now() + Duration::from_millis(5) {
            tokio::time::sleep_until(due).await;
        }
        queue.request_close(CloseReason::ShuttingDown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ConnId;

    fn config(ping: u64, pong: u64) -> GatewayConfig {
        GatewayConfig {
            ping_interval: Duration::from_millis(ping),
            pong_timeout: Duration::from_millis(pong),
            ..Default::default()
        }
    }

    fn queue() -> Arc<Writer> {
        Arc::new(Writer::new(10, 1000))
    }

    fn close_reason(queue: &Writer) -> Option<CloseReason> {
        queue.close_requested()
    }

    #[test]
    fn pings_silence_and_expiry() {
        // Wide margins between the settings and the sleeps, so a slow machine cannot turn a
        // due ping into a timeout.
        let config = config(20, 400);
        let registry = Registry::new();
        let (talker, quiet, expired) = (queue(), queue(), queue());
        registry.register(1, talker.clone(), None, config.ping_interval);
        registry.register(2, quiet.clone(), None, config.ping_interval);
        registry.register(3, expired.clone(), Some(1), config.ping_interval);
        std::thread::sleep(Duration::from_millis(30));
        tick(&registry, &config);
        let pinged = |q: &Writer| q.pop().is_some_and(|f| f == crate::wire::PING);
        assert!(pinged(&talker) && pinged(&quiet), "a ping is due after ping_interval");
        assert_eq!(close_reason(&expired), Some(CloseReason::TokenExpired));
        std::thread::sleep(Duration::from_millis(250));
        tick(&registry, &config);
        talker.seen(registry.now());
        std::thread::sleep(Duration::from_millis(200));
        tick(&registry, &config);
        assert_eq!(close_reason(&quiet), Some(CloseReason::HeartbeatTimeout));
        assert_eq!(close_reason(&talker), None, "the talker was seen within pong_timeout");
        registry.unregister(2);
        assert_eq!(registry.len(), 2);
    }

    /// A connection is warned once, when its warning is due, and still closed at `exp`.
    #[test]
    fn refresh_warnings_come_once_before_the_close() {
        let config = config(60_000, 120_000);
        let registry = Registry::new();
        let (due, later) = (queue(), queue());
        let unix = herald_protocol::publication::now_millis() / 1000;
        registry.register(1, due.clone(), None, config.ping_interval);
        registry.register(2, later.clone(), None, config.ping_interval);
        registry.set_expiry(1, Some(unix + 100), Some(unix));
        registry.set_expiry(2, Some(unix + 100), Some(unix + 50));
        tick(&registry, &config);
        tick(&registry, &config);
        let warning = crate::refresh::due_frame(unix + 100);
        assert_eq!(due.pop(), Some(warning));
        assert_eq!(due.pop(), None, "warned once");
        assert_eq!(later.pop(), None, "not due yet");
        registry.set_expiry(1, Some(unix), None);
        tick(&registry, &config);
        assert_eq!(close_reason(&due), Some(CloseReason::TokenExpired));
    }

    #[tokio::test]
    async fn a_drain_spreads_its_closes_and_closes_late_comers_at_once() {
        let registry = Registry::new();
        let queues: Vec<_> = (0..100).map(|_| queue()).collect();
        for (id, q) in queues.iter().enumerate() {
            registry.register(id as ConnId, q.clone(), None, Duration::from_secs(25));
        }
        let all = registry.start_drain();
        assert_eq!(all.len(), 100);
        let started = tokio::time::Instant::now();
        let window = Duration::from_millis(600);
        let draining = tokio::spawn(drain(all, window));
        tokio::time::sleep(window / 2).await;
        let closed = queues.iter().filter(|q| close_reason(q).is_some()).count();
        assert!((20..=80).contains(&closed), "{closed} of 100 closed half way through the window");
        let late = queue();
        registry.register(1000, late.clone(), None, Duration::from_secs(25));
        assert_eq!(close_reason(&late), Some(CloseReason::ShuttingDown));
        draining.await.unwrap();
        assert!(started.elapsed() < window * 2);
        assert!(queues.iter().all(|q| close_reason(q) == Some(CloseReason::ShuttingDown)));
    }
}
