//! Entry points for the fuzz targets in `fuzz/`. Not a stable API.
//!
//! Compiled only with the `fuzzing` feature. Everything here is a thin, allocation-free view of
//! internals the fuzz targets assert invariants on; nothing here changes behaviour.
//!
//! # Fuzzing and the CRC
//!
//! The fuzz crate builds with `--cfg fuzzing`, under which
//! [`FrameCrc::verify`](crate::wire::FrameCrc::verify) always succeeds so mutated frames reach
//! the decoders. Targets that want to check a CRC anyway compare
//! [`frame_crc`] against the header's field themselves.

use crate::backend::BufferId;
use crate::crc32::Crc32;
use crate::session::Session;
use crate::wire::{FrameCrc, RawHeader};

/// Whether this build skips CRC verification (`cfg(fuzzing)`).
pub const CRC_BYPASSED: bool = cfg!(fuzzing);

/// The session's buffer table as `(wire handle, backend id)` pairs, in table order.
///
/// [`Session::handles`] and [`Session::buffer_ids`] both walk the same table in the same order,
/// so zipping them pairs each handle with the buffer it resolves to. Fuzz targets use this to
/// check isolation: every handle resolves to an id the session owns, and no id is owned twice.
pub fn handle_table(session: &Session) -> impl Iterator<Item = (u32, BufferId)> + '_ {
    session.handles().zip(session.buffer_ids())
}

/// The CRC-32 a frame's header field must hold: over header bytes `0..12`, then `payload`.
///
/// Computed independently of [`FrameCrc::verify`], which passes unconditionally under
/// `cfg(fuzzing)`.
pub fn frame_crc<C: Crc32>(raw: &RawHeader, payload: &[u8]) -> u32 {
    let mut crc = FrameCrc::<C>::new(raw);
    crc.update(payload);
    crc.value()
}
