//! Per-IP slow-down after failed AUTH attempts, with bounded memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most IPs remembered; past it the stalest entry is forgotten.
const MAX_ENTRIES: usize = 4096;
/// A failure record is forgotten this long after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// The earliest instant the next connection from this IP is served.
    next_slot: Instant,
}

/// Failure counts per IP. Connections from an IP with failures are served one after another,
/// each `base · 2^(failures-1)` (capped at `max`) after the previous one, so parallel guessing
/// gains nothing.
#[derive(Debug)]
pub(crate) struct AuthThrottle {
    base: Duration,
    max: Duration,
    entries: HashMap<IpAddr, Entry>,
}

impl AuthThrottle {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self { base, max, entries: HashMap::new() }
    }

    fn delay(&self, failures: u32) -> Duration {
        backoff(self.base, self.max, failures)
    }

    /// How long to wait before serving a new connection from `ip`, reserving its slot.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let Some(e) = self.entries.get(&ip).copied() else { return Duration::ZERO };
        if now.duration_since(e.last_failure) > FORGET_AFTER {
            self.entries.remove(&ip);
            return Duration::ZERO;
        }
        let start = e.next_slot.max(now);
        let delay = self.delay(e.failures);
        if let Some(entry) = self.entries.get_mut(&ip) {
            entry.next_slot = start + delay;
        }
        start.duration_since(now)
    }

    /// Records a failed AUTH from `ip`.
    pub(crate) fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, e| now.duration_since(e.last_failure) <= FORGET_AFTER);
            if self.entries.len() >= MAX_ENTRIES
                && let Some(stalest) =
                    self.entries.iter().min_by_key(|(_, e)| e.last_failure).map(|(ip, _)| *ip)
            {
                self.entries.remove(&stalest);
            }
        }
        let (base, max) = (self.base, self.max);
        let e = self.entries.entry(ip).or_insert(Entry { failures: 0, last_failure: now, next_slot: now });
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        e.next_slot = e.next_slot.max(now + backoff(base, max, e.failures));
    }

    /// Forgets `ip`'s failures after a successful AUTH.
    pub(crate) fn succeeded(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// `base · 2^(failures-1)`, capped at `max`.
fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    base.saturating_mul(1 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn backoff_grows_and_resets() {
        let mut t = AuthThrottle::new(Duration::from_millis(100), Duration::from_secs(1));
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let now = Instant::now();
        assert_eq!(t.admit(ip, now), Duration::ZERO);
        t.failed(ip, now);
        assert_eq!(t.admit(ip, now), Duration::from_millis(100));
        // A second connection at the same instant queues behind the first.
        assert_eq!(t.admit(ip, now), Duration::from_millis(200));
        t.failed(ip, now);
        t.failed(ip, now);
        assert!(t.admit(ip, now) >= Duration::from_millis(400));
        for _ in 0..40 {
            t.failed(ip, now);
        }
        assert_eq!(t.delay(u32::MAX), Duration::from_secs(1));
        t.succeeded(ip);
        assert_eq!(t.admit(ip, now), Duration::ZERO);
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = AuthThrottle::new(Duration::from_millis(1), Duration::from_millis(10));
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 100) {
            t.failed(IpAddr::V4(Ipv4Addr::from(i)), now);
        }
        assert!(t.len() <= MAX_ENTRIES);
    }
}
