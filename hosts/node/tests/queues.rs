//! The node files each session's device work under a queue of its own
//! (`GpuBackend::select_queue`), so that a backend with a stream per queue (CUDA) serves a
//! session's READ without waiting for another session's kernels; and it ends each queue once
//! its session is gone. The backend below is the host backend with a log of which queue each
//! allocation was made for, and of the queues ended.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use common::{config, wait_idle, within};
use rela_backend_host::OwnedHostBackend;
use rela_client::{Client, Kernel};
use rela_core::backend::{BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, QueueId, Usage};
use rela_node::Node;

#[derive(Default)]
struct Log {
    /// The queue selected at each ALLOC, with its size.
    allocs: Vec<(QueueId, u64)>,
    ended: Vec<QueueId>,
}

/// The host backend, logging queues.
struct Logged {
    inner: OwnedHostBackend,
    queue: QueueId,
    log: Arc<Mutex<Log>>,
}

impl Logged {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl GpuBackend for Logged {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn usage(&self) -> Usage {
        self.inner.usage()
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.log().allocs.push((self.queue, size));
        self.inner.alloc(size)
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.inner.free(id)
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.inner.size(id)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.inner.write(id, offset, data)
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.inner.read(id, offset, out)
    }
    fn copy(&mut self, src: BufferId, so: u64, dst: BufferId, d: u64, len: u64) -> Result<(), BackendError> {
        self.inner.copy(src, so, dst, d, len)
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.inner.fill(id, offset, len, value)
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        self.inner.dispatch(call)
    }
    fn select_queue(&mut self, queue: QueueId) {
        self.queue = queue;
    }
    fn end_queue(&mut self, queue: QueueId) {
        self.log().ended.push(queue);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_allocates_on_its_own_queue_until_it_ends() {
    let log = Arc::new(Mutex::new(Log::default()));
    let backend = Logged {
        inner: OwnedHostBackend::with_capacity(64 << 20),
        queue: QueueId::DEFAULT,
        log: log.clone(),
    };
    let node =
        within(Node::start(config(), Box::new(backend) as Box<dyn GpuBackend + Send>)).await.expect("node");
    let addr = node.local_addr();

    // Sizes that tell the sessions apart: small ALLOCs run on the engine thread, an ALLOC of
    // 24 MiB (more than one step's bytes) as a job on a thread of its own, and a DISPATCH too.
    let (mut one, mut two) = (
        within(Client::connect(addr, None)).await.expect("one"),
        within(Client::connect(addr, None)).await.expect("two"),
    );
    let a = within(one.alloc(4096 + 1)).await.expect("alloc");
    let b = within(two.alloc(4096 + 2)).await.expect("alloc");
    let big = within(two.alloc((24 << 20) + 2)).await.expect("a large alloc, a job");
    let out = within(one.alloc(4096 + 3)).await.expect("alloc");
    within(one.dispatch(Kernel::Scale { x: a, out, n: 1024, alpha: 2.0 })).await.expect("dispatch");
    within(two.free(big)).await.expect("free");
    within(two.free(b)).await.expect("free");

    let queue_of = |size: u64| {
        let log = log.lock().unwrap_or_else(PoisonError::into_inner);
        let found: Vec<QueueId> = log.allocs.iter().filter(|&&(_, s)| s == size).map(|&(q, _)| q).collect();
        assert_eq!(found.len(), 1, "one ALLOC of {size} bytes: {found:?}");
        found[0]
    };
    let (q1, q2) = (queue_of(4096 + 1), queue_of(4096 + 2));
    assert_ne!(q1, QueueId::DEFAULT, "a session's ALLOC is filed under its own queue");
    assert_ne!(q2, QueueId::DEFAULT);
    assert_ne!(q1, q2, "two sessions, two queues");
    assert_eq!(queue_of(4096 + 3), q1, "the same session, the same queue");
    assert_eq!(queue_of((24 << 20) + 2), q2, "a job files its work under its session's queue");
    assert!(log.lock().unwrap_or_else(PoisonError::into_inner).ended.is_empty(), "no session has ended");

    within(one.close()).await.expect("close");
    within(two.close()).await.expect("close");
    assert_eq!(wait_idle(&node).await, Usage::default());
    // The queues end once their sessions are gone (the engine's next round after the close).
    let ended = |log: &Mutex<Log>| -> BTreeSet<QueueId> {
        log.lock().unwrap_or_else(PoisonError::into_inner).ended.iter().copied().collect()
    };
    let mut fresh = within(Client::connect(addr, None)).await.expect("a third session");
    within(fresh.ping()).await.expect("ping");
    within(fresh.stats()).await.expect("stats");
    assert_eq!(ended(&log), BTreeSet::from([q1, q2]), "both ended sessions' queues, and only theirs");
    within(fresh.close()).await.expect("close");
    within(node.shutdown()).await.expect("shutdown");
}
