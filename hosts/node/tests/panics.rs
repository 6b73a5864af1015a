//! A panic in backend code ends the session it served, and nothing else: the node keeps
//! serving other sessions and new connections, and frees what the panicking session held.
//!
//! The backend below panics on purpose on one input: a WRITE whose first byte is `0xDE` (run on
//! the engine thread: the node sees this backend only through `GpuBackend`, so WRITE data goes
//! through the engine), and a SCALE by 13 (a DISPATCH, run on a job thread).

mod common;

use common::{config, wait_idle, within};
use rela_backend_host::OwnedHostBackend;
use rela_client::{Client, Kernel};
use rela_core::backend::{BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, Usage};
use rela_node::Node;

/// The host backend, panicking on the two inputs named in the module docs.
struct Panicky(OwnedHostBackend);

impl GpuBackend for Panicky {
    fn info(&self) -> DeviceInfo {
        self.0.info()
    }
    fn usage(&self) -> Usage {
        self.0.usage()
    }
    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.0.alloc(size)
    }
    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.0.free(id)
    }
    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.0.size(id)
    }
    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        assert!(data.first() != Some(&0xDE), "injected panic in write");
        self.0.write(id, offset, data)
    }
    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.0.read(id, offset, out)
    }
    fn copy(&mut self, src: BufferId, so: u64, dst: BufferId, d: u64, len: u64) -> Result<(), BackendError> {
        self.0.copy(src, so, dst, d, len)
    }
    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        self.0.fill(id, offset, len, value)
    }
    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        if let KernelCall::Scale { alpha, .. } = call {
            assert!(*alpha != 13.0, "injected panic in dispatch");
        }
        self.0.dispatch(call)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_only_its_session() {
    let backend = Panicky(OwnedHostBackend::with_capacity(8 << 20));
    let node =
        within(Node::start(config(), Box::new(backend) as Box<dyn GpuBackend + Send>)).await.expect("node");
    let addr = node.local_addr();

    // A bystander session with data of its own, before and after each panic.
    let mut bystander = within(Client::connect(addr, None)).await.expect("bystander");
    let kept = within(bystander.alloc(4096)).await.expect("alloc");
    within(bystander.write(kept, 0, &[7u8; 4096])).await.expect("write");

    for (what, poison) in [("engine thread (WRITE)", true), ("job thread (DISPATCH)", false)] {
        let mut victim = within(Client::connect(addr, None)).await.expect("victim");
        let x = within(victim.alloc(64)).await.expect("alloc x");
        let y = within(victim.alloc(64)).await.expect("alloc y");
        let result = if poison {
            within(victim.write(x, 0, &[0xDE; 64])).await
        } else {
            within(victim.dispatch(Kernel::Scale { x, out: y, n: 16, alpha: 13.0 })).await
        };
        assert!(result.is_err(), "{what}: the panicking request got an answer: {result:?}");
        // The victim's connection is closed; its buffers are freed.
        assert!(within(victim.ping()).await.is_err(), "{what}: the victim's session lives on");

        // Everyone else is unaffected, and the node takes new connections.
        within(bystander.ping()).await.unwrap_or_else(|e| panic!("{what}: bystander ping: {e}"));
        assert_eq!(within(bystander.read(kept, 0, 4096)).await.expect("read"), vec![7u8; 4096]);
        let mut fresh = within(Client::connect(addr, None)).await.expect("a new connection after the panic");
        let h = within(fresh.alloc(64)).await.expect("alloc");
        within(fresh.dispatch(Kernel::Scale { x: h, out: kept, n: 16, alpha: 2.0 }))
            .await
            .expect_err("other session's buffer");
        within(fresh.close()).await.expect("close");
    }
    assert_eq!(
        within(bystander.stats()).await.expect("stats").used,
        4096,
        "the bystander still holds its buffer"
    );
    within(bystander.close()).await.expect("close");
    assert_eq!(wait_idle(&node).await, Usage::default(), "the victims' buffers were freed");
    within(node.shutdown()).await.expect("shutdown");
}
