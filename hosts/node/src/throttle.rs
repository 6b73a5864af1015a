//! Per-IP slow-down after failed AUTH attempts, with bounded memory.
//!
//! The schedule (also in docs/SECURITY.md): after the `n`-th failed AUTH from an address, the
//! node serves no connection from that address for `base · 2^(n-1)` (capped at `max`). A
//! connection that arrives in that time is not queued: it is told at once (ERROR `BUSY` with
//! the time left to wait) and closed, so it holds no session slot. Guesses made in parallel
//! once the wait is over are bounded by the per-address session cap, and each failed one
//! doubles the next wait. A successful AUTH, or ten minutes without a failure, forgets the
//! address.

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
    /// The earliest instant a connection from this IP is served again.
    next_slot: Instant,
}

/// Failure counts per IP: which connections to serve now and which to turn away, with how
/// long they should wait (the schedule is in the module documentation).
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

    /// Whether a new connection from `ip` may be served now; `Err` is how long the client
    /// should wait before trying again.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(e) = self.entries.get(&ip).copied() else { return Ok(()) };
        if now.duration_since(e.last_failure) > FORGET_AFTER {
            self.entries.remove(&ip);
            return Ok(());
        }
        if e.next_slot > now {
            return Err(e.next_slot.duration_since(now));
        }
        Ok(())
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
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let now = Instant::now();
        assert_eq!(t.admit(ip, now), Ok(()));
        t.failed(ip, now);
        // Turned away at once, told how long to wait; other addresses are not affected.
        assert_eq!(t.admit(ip, now), Err(Duration::from_millis(100)));
        assert_eq!(t.admit(ip, now + Duration::from_millis(40)), Err(Duration::from_millis(60)));
        assert_eq!(t.admit(other, now), Ok(()));
        // Once the wait is over, connections are served again until the next failure.
        let later = now + Duration::from_millis(100);
        assert_eq!(t.admit(ip, later), Ok(()));
        assert_eq!(t.admit(ip, later), Ok(()));
        // The second failure doubles the wait, the third doubles it again.
        t.failed(ip, later);
        assert_eq!(t.admit(ip, later), Err(Duration::from_millis(200)));
        t.failed(ip, later);
        assert_eq!(t.admit(ip, later), Err(Duration::from_millis(400)));
        for _ in 0..40 {
            t.failed(ip, later);
        }
        assert_eq!(backoff(t.base, t.max, u32::MAX), Duration::from_secs(1));
        assert_eq!(t.admit(ip, later), Err(Duration::from_secs(1)));
        t.succeeded(ip);
        assert_eq!(t.admit(ip, later), Ok(()));
    }

    #[test]
    fn failures_are_forgotten_after_a_while() {
        let mut t = AuthThrottle::new(Duration::from_secs(30), Duration::from_secs(30));
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let now = Instant::now();
        t.failed(ip, now);
        assert!(t.admit(ip, now).is_err());
        assert_eq!(t.admit(ip, now + FORGET_AFTER + Duration::from_secs(1)), Ok(()));
        assert_eq!(t.len(), 0);
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
