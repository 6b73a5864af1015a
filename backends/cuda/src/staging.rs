//! WRITE and READ through pinned (page-locked) host memory, two chunks in flight.
//!
//! A copy from pageable memory makes the driver stage it through its own pinned buffer and wait
//! for each piece; here the backend owns two pinned chunks of [`CHUNK`] bytes and alternates
//! them: while the device copies one chunk, the host fills (WRITE) or drains (READ) the other.
//! Each chunk carries cudarc's event: filling a chunk waits for its last device copy to finish,
//! and reading one waits for the copy into it, so no byte is overwritten or read early.
//!
//! Pieces shorter than a chunk (a transfer's tail, or a transfer shorter than [`CHUNK`]) go
//! straight from or to the caller's memory, as before. Without pinned memory (the allocation
//! failed: the system's locked-memory limit), every transfer does.
//!
//! The chunks are allocated with no flags (cached, not write-combined), because READ reads them
//! on the host.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, PinnedHostSlice};
use rela_core::backend::BackendError;

use crate::map_err;

/// Bytes of one pinned chunk.
pub(crate) const CHUNK: usize = 1 << 20;

/// Two pinned chunks, or none.
#[derive(Debug)]
pub(crate) struct Staging {
    chunks: Option<[PinnedHostSlice<u8>; 2]>,
}

impl Staging {
    /// Allocates the two chunks; on failure transfers go unstaged.
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Self {
        // SAFETY: the chunks' bytes are uninitialized until written; they are only read (by the
        // device in `upload`, by the host in `download`) after a copy filled them.
        let alloc = || unsafe { ctx.alloc_pinned_with_flags::<u8>(CHUNK, 0) };
        let chunks = match (alloc(), alloc()) {
            (Ok(a), Ok(b)) => Some([a, b]),
            _ => None,
        };
        Self { chunks }
    }

    /// Whether transfers are staged.
    pub(crate) fn pinned(&self) -> bool {
        self.chunks.is_some()
    }

    /// Copies `data` into `dst` (exactly `data.len()` bytes), on `stream`; the caller
    /// synchronizes.
    pub(crate) fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        data: &[u8],
        dst: &mut CudaSlice<u8>,
        offset: usize,
    ) -> Result<(), BackendError> {
        let whole = data.len() / CHUNK * CHUNK;
        if let Some(chunks) = self.chunks.as_mut() {
            for (i, piece) in data[..whole].chunks_exact(CHUNK).enumerate() {
                let chunk = &mut chunks[i % 2];
                // Waits for this chunk's previous copy to the device.
                chunk.as_mut_slice().map_err(map_err)?.copy_from_slice(piece);
                let at = offset + i * CHUNK;
                let mut view = dst.try_slice_mut(at..at + CHUNK).ok_or(BackendError::OutOfBounds)?;
                stream.memcpy_htod(&*chunk, &mut view).map_err(map_err)?;
            }
        }
        let done = if self.chunks.is_some() { whole } else { 0 };
        if done < data.len() {
            let mut view =
                dst.try_slice_mut(offset + done..offset + data.len()).ok_or(BackendError::OutOfBounds)?;
            stream.memcpy_htod(&data[done..], &mut view).map_err(map_err)?;
        }
        Ok(())
    }

    /// Copies `out.len()` bytes of `src` from `offset` into `out`, on `stream`; returns with
    /// every byte in `out` (the last copy waited for).
    pub(crate) fn download(
        &mut self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<u8>,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), BackendError> {
        let whole = out.len() / CHUNK * CHUNK;
        let done = match self.chunks.as_mut() {
            Some(chunks) => {
                let count = whole / CHUNK;
                for i in 0..count {
                    let at = offset + i * CHUNK;
                    let view = src.try_slice(at..at + CHUNK).ok_or(BackendError::OutOfBounds)?;
                    // The chunk's previous contents were drained in the last iteration.
                    stream.memcpy_dtoh(&view, &mut chunks[i % 2]).map_err(map_err)?;
                    if i > 0 {
                        drain(&chunks[(i - 1) % 2], &mut out[(i - 1) * CHUNK..i * CHUNK])?;
                    }
                }
                if count > 0 {
                    drain(&chunks[(count - 1) % 2], &mut out[(count - 1) * CHUNK..count * CHUNK])?;
                }
                whole
            }
            None => 0,
        };
        if done < out.len() {
            let view = src.try_slice(offset + done..offset + out.len()).ok_or(BackendError::OutOfBounds)?;
            stream.memcpy_dtoh(&view, &mut out[done..]).map_err(map_err)?;
        }
        Ok(())
    }
}

/// Copies a chunk's bytes out, after waiting for the device copy into it.
fn drain(chunk: &PinnedHostSlice<u8>, out: &mut [u8]) -> Result<(), BackendError> {
    out.copy_from_slice(chunk.as_slice().map_err(map_err)?);
    Ok(())
}
