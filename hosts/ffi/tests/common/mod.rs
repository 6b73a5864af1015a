//! Test helpers: an in-process node on an ephemeral loopback port, and the C calls wrapped
//! for Rust.
#![allow(dead_code, unreachable_pub)]

use std::ffi::{CStr, CString};
use std::time::Duration;

use rela_ffi::{RELA_OK, RelaClient, RelaConnectOptions};
use rela_node::{Node, NodeBackend, NodeConfig, NodeHandle};

/// A node over the host backend on its own runtime; shut down on drop.
pub struct TestNode {
    pub rt: tokio::runtime::Runtime,
    pub node: Option<NodeHandle>,
    pub port: u16,
}

impl TestNode {
    /// A node with a 16 MiB arena, no token unless `token` is given, discovery on an ephemeral
    /// loopback port.
    pub fn start(token: Option<&[u8]>) -> Self {
        Self::start_with(token, |c| c)
    }

    /// [`TestNode::start`] with a changed config.
    pub fn start_with(token: Option<&[u8]>, change: impl FnOnce(NodeConfig) -> NodeConfig) -> Self {
        Self::start_sized(16 << 20, token, change)
    }

    /// [`TestNode::start_with`] with an arena of `arena` bytes.
    pub fn start_sized(
        arena: usize,
        token: Option<&[u8]>,
        change: impl FnOnce(NodeConfig) -> NodeConfig,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut config = NodeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            discovery: Some("127.0.0.1:0".parse().unwrap()),
            auth_backoff: Duration::from_millis(20),
            ..NodeConfig::default()
        };
        if let Some(t) = token {
            config = config.with_token(t);
        }
        let config = change(config);
        let backend = NodeBackend::host::<{ rela_backend_host::MAX_BLOCKS }>(arena).unwrap();
        let node = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), Node::start(config, backend))
                .await
                .unwrap()
                .unwrap()
        });
        let port = node.local_addr().port();
        Self { rt, node: Some(node), port }
    }

    /// The node's handle.
    pub fn handle(&self) -> &NodeHandle {
        self.node.as_ref().unwrap()
    }

    /// The node's UDP discovery port.
    pub fn discovery_port(&self) -> u16 {
        self.handle().discovery_addr().unwrap().port()
    }

    /// Stops the node (sessions get SHUTTING_DOWN).
    pub fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            self.rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), node.shutdown()).await })
                .ok();
        }
    }

    /// Polls until the node holds no buffers and no sessions (bounded).
    pub fn wait_idle(&self) {
        for _ in 0..400 {
            let usage = self.rt.block_on(self.handle().usage()).unwrap();
            if usage.used == 0 && usage.buffers == 0 && self.handle().sessions() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("node did not become idle");
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The calling thread's last error message.
pub fn last_message() -> String {
    // SAFETY: the pointer is valid until the next rela_* call on this thread, and is copied now.
    unsafe { CStr::from_ptr(rela_ffi::rela_last_error_message()) }.to_string_lossy().into_owned()
}

/// `rela_connect` to 127.0.0.1:`port`: the status and the handle.
pub fn connect(port: u16, token: Option<&[u8]>, options: Option<RelaConnectOptions>) -> (i32, RelaClient) {
    connect_host("127.0.0.1", port, token, options)
}

/// `rela_connect` to `host`:`port`.
pub fn connect_host(
    host: &str,
    port: u16,
    token: Option<&[u8]>,
    options: Option<RelaConnectOptions>,
) -> (i32, RelaClient) {
    let host = CString::new(host).unwrap();
    let mut client = 0;
    let (tp, tl) = token.map_or((std::ptr::null(), 0), |t| (t.as_ptr(), t.len()));
    let opts = options.as_ref().map_or(std::ptr::null(), |o| o as *const _);
    // SAFETY: every pointer is valid for the call.
    let status = unsafe { rela_ffi::rela_connect(host.as_ptr(), port, tp, tl, opts, &mut client) };
    (status, client)
}

/// Connects and expects success.
pub fn connected(port: u16, token: Option<&[u8]>) -> RelaClient {
    let (status, client) = connect(port, token, None);
    assert_eq!(status, RELA_OK, "connect: {}", last_message());
    client
}
