//! The node-wide payload buffer pool and its byte budget.
//!
//! Every buffer that holds frame bytes (request payloads read from a socket, response frames
//! waiting for a socket) comes from one [`Pool`] per node. The pool bounds the bytes of all
//! such buffers — in use *and* cached for reuse — by [`NodeConfig::buffer_budget`]
//! (`crate::NodeConfig`): a reader waits for room before it reads a payload, so a burst of
//! large frames on many connections backs up into TCP instead of growing the node's memory.
//!
//! Buffers come in size classes (sizes rounded up to 4 KiB); a returned
//! buffer is cached under its class and handed out again as is, so steady traffic allocates
//! nothing. When a new class is needed and the budget is full, cached buffers are dropped
//! first (largest first).
//!
//! Scrubbing: a buffer is zeroed whenever it comes back ([`PoolBuf`]'s drop), before it is
//! cached or freed, so one connection's payloads never linger for the next to be handed (or in
//! freed heap memory). That is a memset of the class size per returned buffer.
//!
//! Accounting: a semaphore holds `budget` permits, one per byte; a buffer in use holds permits
//! for its whole class size, returned when it comes back. Cached buffers hold no permits, but a
//! new allocation first evicts cached ones so that `in use + cached ≤ budget` always holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Class step: sizes are rounded up to a page.
const STEP: usize = 4 * 1024;

/// Zeroes `buf` in a way the optimizer keeps even when the memory is freed right after.
pub(crate) fn scrub(buf: &mut [u8]) {
    buf.fill(0);
    // Without a later read, the fill of memory about to be freed is a dead store the optimizer
    // may drop; `black_box` makes the bytes observable.
    std::hint::black_box(buf);
}

/// The size class (capacity) of a buffer able to hold `len` bytes.
pub(crate) const fn class_of(len: usize) -> usize {
    let len = if len == 0 { 1 } else { len };
    len.div_ceil(STEP) * STEP
}

/// The node-wide buffer pool. Shared behind an [`Arc`].
#[derive(Debug)]
pub(crate) struct Pool {
    budget: usize,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    /// Bytes of all pooled buffers now (in use + cached).
    current: AtomicUsize,
    /// Largest `current` seen.
    peak: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// Cached buffers by class. Emptied classes keep their (empty) vector, so steady traffic
    /// does not allocate map nodes either.
    free: BTreeMap<usize, Vec<Vec<u8>>>,
    /// Bytes cached in `free`.
    free_bytes: usize,
    /// Bytes of buffers handed out and not yet returned.
    in_use: usize,
}

/// A pooled buffer: `len()` is its class size; the pool takes it back on drop.
#[derive(Debug)]
pub(crate) struct PoolBuf {
    buf: Vec<u8>,
    pool: Arc<Pool>,
    /// Released after the buffer is back in the pool (fields drop after `Drop::drop`).
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of at most `budget` bytes. `budget` must hold the largest frame (checked by
    /// `NodeConfig::validate`); a larger request still succeeds, by waiting for the whole
    /// budget.
    pub(crate) fn new(budget: usize) -> Arc<Self> {
        let budget = budget.clamp(STEP, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            budget,
            permits: Arc::new(Semaphore::new(budget)),
            state: Mutex::new(State::default()),
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// A buffer of at least `len` bytes, waiting until the budget has room for it.
    pub(crate) async fn get(self: &Arc<Self>, len: usize) -> PoolBuf {
        let class = class_of(len);
        let n = u32::try_from(class.min(self.budget)).unwrap_or(u32::MAX);
        let permit =
            self.permits.clone().acquire_many_owned(n).await.expect("the pool's semaphore is never closed");
        self.take(class, permit)
    }

    /// Like [`get`](Self::get) but never waits: `None` if the budget has no room now.
    #[cfg(test)]
    pub(crate) fn try_get(self: &Arc<Self>, len: usize) -> Option<PoolBuf> {
        let class = class_of(len);
        let n = u32::try_from(class.min(self.budget)).ok()?;
        match self.permits.clone().try_acquire_many_owned(n) {
            Ok(permit) => Some(self.take(class, permit)),
            Err(_) => None,
        }
    }

    fn take(self: &Arc<Self>, class: usize, permit: OwnedSemaphorePermit) -> PoolBuf {
        let mut st = self.lock();
        st.in_use += class;
        let buf = match st.free.get_mut(&class).and_then(Vec::pop) {
            Some(buf) => {
                st.free_bytes -= buf.len();
                buf
            }
            None => {
                // Make room: in use (now including this one) + cached must stay within budget.
                while st.in_use + st.free_bytes > self.budget {
                    let Some(mut last) = st.free.last_entry() else { break };
                    match last.get_mut().pop() {
                        Some(evicted) => st.free_bytes -= evicted.len(),
                        None => {
                            last.remove();
                        }
                    }
                }
                st.free.entry(class).or_default();
                vec![0u8; class]
            }
        };
        let now = st.in_use + st.free_bytes;
        drop(st);
        self.current.store(now, Ordering::Relaxed);
        self.peak.fetch_max(now, Ordering::Relaxed);
        PoolBuf { buf, pool: self.clone(), _permit: permit }
    }

    fn put(&self, buf: Vec<u8>) {
        let mut st = self.lock();
        st.in_use = st.in_use.saturating_sub(buf.len());
        if st.in_use + st.free_bytes + buf.len() <= self.budget {
            st.free_bytes += buf.len();
            st.free.entry(buf.len()).or_default().push(buf);
        }
        let now = st.in_use + st.free_bytes;
        drop(st);
        self.current.store(now, Ordering::Relaxed);
    }

    /// Drops every cached buffer (for example when the node goes idle).
    pub(crate) fn trim(&self) {
        let mut st = self.lock();
        for list in st.free.values_mut() {
            list.clear();
            list.shrink_to_fit();
        }
        st.free_bytes = 0;
        let now = st.in_use;
        drop(st);
        self.current.store(now, Ordering::Relaxed);
    }

    /// The configured budget in bytes.
    pub(crate) const fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes of pooled buffers now (in use and cached).
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The largest [`current`](Self::current) since the node started.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PoolBuf {
    /// The whole buffer (its class size; at least the length asked for).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The whole buffer.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PoolBuf {
    /// Zeroes the buffer, then gives it back to the pool.
    fn drop(&mut self) {
        scrub(&mut self.buf);
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class_of(0), STEP);
        assert_eq!(class_of(16), STEP);
        assert_eq!(class_of(STEP + 1), 2 * STEP);
        assert_eq!(class_of((1 << 20) + 16), (1 << 20) + STEP);
    }

    #[tokio::test]
    async fn reuses_and_stays_within_budget() {
        let pool = Pool::new(4 << 20);
        let a = pool.get(1 << 20).await;
        let ptr = a.as_slice().as_ptr();
        drop(a);
        let b = pool.get(1 << 20).await;
        assert_eq!(b.as_slice().as_ptr(), ptr, "same class is reused");
        let c = pool.get(3 << 20).await;
        assert!(pool.try_get(1).is_none(), "budget exhausted");
        drop(b);
        drop(c);
        // A new class evicts cached ones to stay within budget.
        let d = pool.get(4 << 20).await;
        assert!(pool.current() <= pool.budget());
        drop(d);
        assert!(pool.peak() <= pool.budget());
        pool.trim();
        assert_eq!(pool.current(), 0);
    }

    #[tokio::test]
    async fn a_returned_buffer_comes_back_zeroed() {
        let pool = Pool::new(1 << 20);
        let mut a = pool.get(10_000).await;
        let ptr = a.as_slice().as_ptr();
        for (i, b) in a.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        drop(a);
        let b = pool.get(10_000).await;
        assert_eq!(b.as_slice().as_ptr(), ptr, "the same buffer is handed out again");
        assert!(b.as_slice().iter().all(|&x| x == 0), "with nothing of the last payload in it");
    }

    #[test]
    fn scrub_zeroes() {
        let mut v = vec![0xA5u8; 4097];
        scrub(&mut v);
        assert!(v.iter().all(|&x| x == 0));
    }
}
