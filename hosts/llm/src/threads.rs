//! The thread pool the forward pass runs its matrix products and attention on.
//!
//! One [`rayon`] pool for the process, sized once: by [`set_threads`] if it is called before the
//! first forward step, else by [`THREADS_ENV`] (the same variable that sizes the node's other
//! host kernels, `--kernel-threads`), else one thread per available core.

use std::sync::OnceLock;

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Environment variable that sizes the pool when [`set_threads`] was not called first: a
/// positive thread count (anything else means one per available core). The node's
/// `--kernel-threads` option reads the same variable.
pub const THREADS_ENV: &str = "RELA_KERNEL_THREADS";

/// Sizes the forward pass's thread pool: `threads` workers (0 means one per available core).
///
/// Takes effect only before the first forward step (or the first call of this function or of
/// [`threads`]); returns whether it did.
pub fn set_threads(threads: usize) -> bool {
    let mut applied = false;
    POOL.get_or_init(|| {
        applied = true;
        build(threads)
    });
    applied
}

/// Worker threads the forward pass uses (1 if no pool could be made).
pub fn threads() -> usize {
    pool().map_or(1, rayon::ThreadPool::current_num_threads)
}

fn build(threads: usize) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("rela-llm-{i}")).build().ok()
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        let n = std::env::var(THREADS_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok());
        build(n.unwrap_or(0))
    })
    .as_ref()
}

/// Runs `f` inside the pool, so that the parallel iterators in it use the pool's threads (on
/// rayon's global pool if no pool could be made).
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(p) => p.install(f),
        None => f(),
    }
}
