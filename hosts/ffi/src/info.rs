//! DEVICE_INFO and STATS.

use std::ffi::c_char;

use rela_core::config::{MAX_DEVICE_NAME, MAX_VENDOR_NAME};

use crate::boundary::{non_null_mut, run};
use crate::clients::{self, RelaClient};
use crate::text::copy_into;

/// Bytes of [`RelaDeviceInfo::name`]: the protocol's longest device name and a NUL.
pub const RELA_DEVICE_NAME_LEN: usize = 65;
/// Bytes of [`RelaDeviceInfo::vendor`]: the protocol's longest vendor name and a NUL.
pub const RELA_VENDOR_NAME_LEN: usize = 33;

// Literals, so that the header holds numbers; they follow the protocol's limits.
const _: () =
    assert!(RELA_DEVICE_NAME_LEN == MAX_DEVICE_NAME + 1 && RELA_VENDOR_NAME_LEN == MAX_VENDOR_NAME + 1);

/// The node's device, as DEVICE_INFO reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaDeviceInfo {
    /// Backend kind: 1 host, 2 CUDA, 3 Vulkan, 4 wgpu (others may appear).
    pub backend: u8,
    /// Total memory the node lends, in bytes.
    pub total: u64,
    /// Free memory, in bytes.
    pub free: u64,
    /// Largest single allocation, in bytes.
    pub max_alloc: u64,
    /// Bytes of models the node holds once for every session that loads them.
    pub shared_models: u64,
    /// Device name, NUL-terminated UTF-8.
    pub name: [c_char; RELA_DEVICE_NAME_LEN],
    /// Vendor name, NUL-terminated UTF-8.
    pub vendor: [c_char; RELA_VENDOR_NAME_LEN],
}

/// The session's usage and counters, as STATS reports them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaStats {
    /// Buffers held.
    pub buffers: u32,
    /// Most buffers allowed.
    pub max_buffers: u32,
    /// Bytes held.
    pub used: u64,
    /// Quota in bytes.
    pub quota: u64,
    /// Request frames handled.
    pub frames_in: u64,
    /// Payload bytes received by the node.
    pub bytes_in: u64,
    /// Payload bytes sent by the node.
    pub bytes_out: u64,
}

/// Asks the node for its device (DEVICE_INFO) and writes it to `*out`.
///
/// # Safety
/// `out` must point to a writable `RelaDeviceInfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_device_info(client: RelaClient, out: *mut RelaDeviceInfo) -> i32 {
    run(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { non_null_mut(out, "out")? };
        let info = clients::with_client(client, |c| Ok(c.device_info()?))?;
        let mut r = RelaDeviceInfo {
            backend: info.backend.0,
            total: info.total,
            free: info.free,
            max_alloc: info.max_alloc,
            shared_models: info.shared_models,
            name: [0; RELA_DEVICE_NAME_LEN],
            vendor: [0; RELA_VENDOR_NAME_LEN],
        };
        copy_into(&mut r.name, &info.name);
        copy_into(&mut r.vendor, &info.vendor);
        *out = r;
        Ok(())
    })
}

/// Asks the node for this session's usage (STATS) and writes it to `*out`.
///
/// # Safety
/// `out` must point to a writable `RelaStats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rela_stats(client: RelaClient, out: *mut RelaStats) -> i32 {
    run(|| {
        // SAFETY: the caller's contract.
        let out = unsafe { non_null_mut(out, "out")? };
        let s = clients::with_client(client, |c| Ok(c.stats()?))?;
        *out = RelaStats {
            buffers: s.buffers,
            max_buffers: s.max_buffers,
            used: s.used,
            quota: s.quota,
            frames_in: s.frames_in,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        };
        Ok(())
    })
}
