//! UDP discovery: DISCOVER out, ANNOUNCEs in, a list the caller frees.

use std::ffi::c_char;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use rela_client::NodeAnnouncement;
use rela_core::config::{DEFAULT_DISCOVERY_PORT, NODE_ID_LEN};

use crate::boundary::{Failure, bytes, non_null_mut, run, text};
use crate::status::RELA_ERR_INTERNAL;
use crate::text::copy_into;

/// Bytes of [`RelaNode::addr`] and [`RelaNode::device`].
pub const RELA_NODE_TEXT_LEN: usize = 72;
/// Bytes of [`RelaNode::node_id`].
pub const RELA_NODE_ID_LEN: usize = 16;

const _: () =
    assert!(RELA_NODE_ID_LEN == NODE_ID_LEN && RELA_NODE_TEXT_LEN > rela_core::config::MAX_DEVICE_NAME);

/// A node that answered DISCOVER.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaNode {
    /// The session address as text: `"192.168.1.20:8765"`, `"[::1]:8765"` (NUL-terminated).
    pub addr: [c_char; RELA_NODE_TEXT_LEN],
    /// The TCP port of the session address.
    pub port: u16,
    /// The node's stable id.
    pub node_id: [u8; RELA_NODE_ID_LEN],
    /// Backend kind: 1 host, 2 CUDA, 3 Vulkan, 4 wgpu.
    pub backend: u8,
    /// Whether the node requires a token.
    pub auth_required: bool,
    /// Whether the announcement was signed with the token given to [`rela_discover`] (false
    /// when none was given).
    pub verified: bool,
    /// Total bytes the node lends.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Device name (NUL-terminated UTF-8).
    pub device: [c_char; RELA_NODE_TEXT_LEN],
}

impl From<&NodeAnnouncement> for RelaNode {
    fn from(n: &NodeAnnouncement) -> Self {
        let mut r = Self {
            addr: [0; RELA_NODE_TEXT_LEN],
            port: n.addr.port(),
            node_id: n.node_id,
            backend: n.backend.0,
            auth_required: n.auth_required,
            verified: n.verified,
            total: n.total,
            free: n.free,
            device: [0; RELA_NODE_TEXT_LEN],
        };
        copy_into(&mut r.addr, &n.addr.to_string());
        copy_into(&mut r.device, &n.device);
        r
    }
}

/// The answers of one discovery round; free it with [`rela_node_list_free`].
#[derive(Debug)]
pub struct RelaNodeList {
    nodes: Vec<RelaNode>,
}

/// Runs one discovery round and writes a new list to `*out_list` (possibly empty; free it with
/// [`rela_node_list_free`]).
///
/// `target` is a discovery address, `"HOST:PORT"` (a node, or a broadcast address), or null for
/// the defaults: the LAN broadcast address and 127.0.0.1, port 8766. The round ends after
/// `timeout_ms` (0: 2000), or earlier once a unicast target has answered, or 500 ms after the
/// last new answer. With a `token`, announcements not signed with it are dropped.
///
/// # Safety
/// `target`, when not null, must be a NUL-terminated string; `token`, when not null, must
/// point to `token_len` bytes; `out_list` to a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_discover(
    target: *const c_char,
    timeout_ms: u32,
    token: *const u8,
    token_len: usize,
    out_list: *mut *mut RelaNodeList,
) -> i32 {
    run(|| {
        // SAFETY: the caller's contract, for each pointer.
        let (target, token, out) = unsafe {
            (
                if target.is_null() { None } else { Some(text(target, "target")?) },
                if token.is_null() && token_len == 0 {
                    None
                } else {
                    Some(bytes(token, token_len, "token")?)
                },
                non_null_mut(out_list, "out_list")?,
            )
        };
        let targets: Vec<SocketAddr> = match target {
            None => vec![
                (Ipv4Addr::BROADCAST, DEFAULT_DISCOVERY_PORT).into(),
                (Ipv4Addr::LOCALHOST, DEFAULT_DISCOVERY_PORT).into(),
            ],
            Some(t) => vec![
                t.to_socket_addrs()
                    .map_err(|e| Failure::new(crate::RELA_ERR_RESOLVE, format!("cannot resolve {t}: {e}")))?
                    .next()
                    .ok_or_else(|| Failure::new(crate::RELA_ERR_RESOLVE, format!("{t} has no address")))?,
            ],
        };
        let timeout = Duration::from_millis(if timeout_ms == 0 { 2000 } else { u64::from(timeout_ms) });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(RELA_ERR_INTERNAL, format!("cannot start a runtime: {e}")))?;
        let report = rt.block_on(rela_client::discover_targets(
            &targets,
            timeout,
            Some(Duration::from_millis(500)),
            token,
        ))?;
        let nodes = report.nodes.iter().map(RelaNode::from).collect();
        *out = Box::into_raw(Box::new(RelaNodeList { nodes }));
        Ok(())
    })
}

/// The number of nodes in `list` (0 for null).
///
/// # Safety
/// `list` must be null or a list from [`rela_discover`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_node_list_len(list: *const RelaNodeList) -> usize {
    // SAFETY: the caller's contract. Nothing here can panic.
    unsafe { list.as_ref() }.map_or(0, |l| l.nodes.len())
}

/// The node at `index` in `list`, or null when `index` is out of range or `list` is null.
/// The pointer is valid until the list is freed.
///
/// # Safety
/// `list` must be null or a list from [`rela_discover`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_node_list_get(list: *const RelaNodeList, index: usize) -> *const RelaNode {
    // SAFETY: the caller's contract. Nothing here can panic.
    unsafe { list.as_ref() }.and_then(|l| l.nodes.get(index)).map_or(std::ptr::null(), |n| n as *const _)
}

/// Frees a list from [`rela_discover`]; null is ignored.
///
/// # Safety
/// `list` must be null or a list from [`rela_discover`] not yet freed; it is invalid
/// afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_node_list_free(list: *mut RelaNodeList) {
    if !list.is_null() {
        // SAFETY: the caller's contract: the pointer came from Box::into_raw in rela_discover.
        drop(unsafe { Box::from_raw(list) });
    }
}
