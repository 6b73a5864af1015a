//! The scheduling class of compute threads.
//!
//! A node's threads are of two kinds: those that answer requests (the async runtime's
//! workers, the engine thread), whose work is short and waits on the network, and those
//! that compute (the kernel pool's workers, job threads, the generation batchers), whose work
//! fills every core for as long as it lasts. When a request's thread wakes beside compute
//! threads of the same class, the OS makes it wait for a core among them, at each of the
//! several threads a request passes through. With [`ComputePriority::Idle`] compute threads
//! run in Linux's `SCHED_IDLE` class: a waking request thread takes a core from them at once,
//! and compute keeps every cycle the request threads leave (alone on a machine, it runs as fast
//! as before). A lower nice value is not enough for this: a nice +10 thread still finishes its
//! slice before a waking thread runs, and a light request's latency beside eight generating
//! sessions stayed at about 20 ms with it (docs/BENCHMARKS.md).
//!
//! The setting is the process's: [`set_compute_priority`] chooses it, and each compute thread
//! applies it to itself when it starts ([`spawn`], [`apply_to_this_thread`]). The default is
//! [`ComputePriority::Normal`], which changes nothing: a program that calls the kernels from
//! its own threads at normal priority would otherwise wait on pool workers that any busy
//! thread of the machine can hold off. The node, whose compute all runs on its own compute
//! threads, chooses `Idle` (`vram-relay serve --compute-priority`).
//!
//! Moving a thread to `SCHED_IDLE` needs no privilege. On systems other than Linux and Android
//! `Idle` leaves threads as they are.

use core::sync::atomic::{AtomicU8, Ordering};

/// The scheduling class of the process's compute threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputePriority {
    /// As the thread that made them (the default).
    #[default]
    Normal,
    /// Below every normal thread (Linux `SCHED_IDLE`): they run on the cycles that threads of
    /// the normal class leave, the node's request threads and any other program's alike.
    Idle,
}

static COMPUTE: AtomicU8 = AtomicU8::new(0);

/// Chooses the class compute threads take from now on: threads that start later apply it
/// (the kernel pool's workers start with the first kernel call of the process).
pub fn set_compute_priority(priority: ComputePriority) {
    COMPUTE.store(priority as u8, Ordering::Relaxed);
}

/// The class compute threads take ([`set_compute_priority`]).
pub fn compute_priority() -> ComputePriority {
    match COMPUTE.load(Ordering::Relaxed) {
        0 => ComputePriority::Normal,
        _ => ComputePriority::Idle,
    }
}

/// Gives the calling thread, a compute thread, the class [`compute_priority`] chooses. Returns
/// whether it is in that class now: `false` where the system refused or cannot do it, in which
/// case the thread runs on in its class.
pub fn apply_to_this_thread() -> bool {
    apply(compute_priority())
}

fn apply(priority: ComputePriority) -> bool {
    match priority {
        ComputePriority::Normal => true,
        ComputePriority::Idle => imp::idle_this_thread(),
    }
}

/// Starts a compute thread named `name` that runs `f`: the way the process's compute threads
/// (the kernel pool's workers, the node's jobs and generation batchers) start, so that each is
/// in the class [`compute_priority`] chooses before it does any work (where the system cannot
/// move it, it runs on in its class).
pub fn spawn<F, T>(name: std::string::String, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        apply_to_this_thread();
        f()
    })
}

/// Whether the calling thread runs in the idle class; `None` where the system has none.
pub fn this_thread_is_idle() -> Option<bool> {
    imp::this_thread_is_idle()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id, thread_schedule_policy,
    };

    const IDLE: ThreadSchedulePolicy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);

    pub(super) fn idle_this_thread() -> bool {
        if this_thread_is_idle() == Some(true) {
            return true;
        }
        // Sets the policy (per thread on Linux), then the nice value 0, which the idle class
        // ignores; the second part fails without privilege in a process started with a higher
        // nice value, after the policy took effect. What counts is the policy.
        let _ = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, IDLE);
        this_thread_is_idle() == Some(true)
    }

    pub(super) fn this_thread_is_idle() -> Option<bool> {
        thread_schedule_policy().ok().map(|p| p == IDLE)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    pub(super) fn idle_this_thread() -> bool {
        false
    }

    pub(super) fn this_thread_is_idle() -> Option<bool> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn idle_moves_the_calling_thread_alone() {
        // The process-wide setting is left alone: the pool's workers may start while this
        // test runs.
        assert_eq!(compute_priority(), ComputePriority::Normal);
        assert_eq!(this_thread_is_idle(), Some(false), "the test thread starts in the normal class");
        let moved = std::thread::spawn(|| {
            let normal = apply(ComputePriority::Normal);
            let still = this_thread_is_idle();
            let idle = apply(ComputePriority::Idle);
            let now = this_thread_is_idle();
            // Twice is the same as once; Normal does not move it back.
            (
                normal,
                still,
                idle,
                now,
                apply(ComputePriority::Idle),
                apply(ComputePriority::Normal),
                this_thread_is_idle(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(moved, (true, Some(false), true, Some(true), true, true, Some(true)));
        // The spawning thread keeps its own class.
        assert_eq!(this_thread_is_idle(), Some(false));
    }
}
