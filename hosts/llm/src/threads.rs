//! The threads the forward pass runs its matrix products and attention on.
//!
//! They are the host kernels' pool, [`rela_kernels::fast::pool`]: one pool for the process,
//! shared with the node's other host kernels (embeddings), so a node has one set of kernel
//! threads, not one per kind of model. Its workers spin briefly between calls and the calling
//! thread takes its share of each call, so the short products of a decode step pay no thread
//! wake-ups. The pool is sized once: by [`set_threads`] (or [`rela_kernels::fast::set_threads`])
//! if it is called before the first kernel or forward step, else by [`THREADS_ENV`] (what the
//! node's `--kernel-threads` sets), else one thread per available core.
//!
//! A call made while another thread's call is running (two passes at once) runs its tasks on
//! its own thread. How the work of a call is split never changes its results: every task
//! computes whole output values, each the same way whichever thread runs it.

use rela_kernels::fast::pool;

/// Environment variable that sizes the pool when [`set_threads`] was not called first: a
/// positive thread count (anything else means one per available core). The node's
/// `--kernel-threads` option reads the same variable.
pub const THREADS_ENV: &str = pool::THREADS_ENV;

/// Sizes the kernels' pool, which the forward pass runs on: `threads` threads in all, the
/// calling thread included (0 means one per available core).
///
/// Takes effect only before the pool is first used (by a forward step, another host kernel, or
/// a call of this function or of [`threads`]); returns whether it did.
pub fn set_threads(threads: usize) -> bool {
    pool::set_threads(threads)
}

/// Threads the forward pass uses (the calling thread and the pool's workers).
pub fn threads() -> usize {
    pool::threads()
}

/// Runs `f(i, &mut items[i])` for every item, spread over the pool's threads.
pub(crate) fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    pool::for_each_mut(items, f);
}

/// `f(i)` for `i < tasks`, spread over the pool's threads, collected in order of `i`.
pub(crate) fn map<T: Send>(tasks: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    pool::map(tasks, f)
}
