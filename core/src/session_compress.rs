//! Compressed frames in a session (capability LZ4, header flag COMPRESSED): what a host checks
//! before it reserves or decompresses anything. A child module of [`crate::session`].

use super::{Reject, Session, State};
use crate::wire::compress::{CompressError, Compressed};
use crate::wire::msg::{self, Caps, Message};
use crate::wire::{ErrorCode, Flags, HeaderRepr, Kind};

/// Why a compressed frame is refused: the ERROR the session answers it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// The reason sent to the client.
    pub reason: &'static str,
}

impl From<Reject> for Refusal {
    fn from(r: Reject) -> Self {
        Self { code: r.code, reason: r.reason }
    }
}

impl From<CompressError> for Reject {
    fn from(e: CompressError) -> Self {
        match e {
            CompressError::NotCompressible(_) => {
                Self::new(ErrorCode::UNSUPPORTED, "this kind carries no compressed payload")
            }
            CompressError::TooLarge { .. } => {
                Self::new(ErrorCode::INVALID_ARGUMENT, "decompressed payload above max payload")
            }
            CompressError::Truncated | CompressError::ZeroLength => {
                Self::new(ErrorCode::MALFORMED, "compressed payload does not decode")
            }
            CompressError::OutputTooSmall | CompressError::Corrupt => {
                Self::new(ErrorCode::MALFORMED, "compressed data does not decode to its declared length")
            }
        }
    }
}

impl Session {
    /// Whether this session uses LZ4: the node serves it ([`super::SessionConfig::lz4`]) and
    /// the client's HELLO asked for it.
    pub const fn lz4(&self) -> bool {
        self.config.lz4 && self.client_caps.contains(Caps::LZ4)
    }

    /// Checks a compressed WRITE or MODEL_CHUNK (COMPRESSED flag set) from its header and wire
    /// payload, before anything is reserved or decompressed: LZ4 negotiated, the session ready,
    /// the layout ([`Compressed::parse`]), the decompressed payload within the payload cap, and
    /// the target range: for a WRITE, inside one of this session's buffers; for a MODEL_CHUNK,
    /// inside the staged upload, at or after the bytes received so far. Returns the payload's
    /// length once decompressed.
    ///
    /// The host then decompresses ([`Compressed::inflate`]) and hands the session the plain
    /// frame (flags clear, `len` the decompressed length). A compressed frame handed to
    /// [`Session::handle_frame`] is one the host could not decompress: the session answers it
    /// with the `Err` of this check, or MALFORMED when the check passes.
    ///
    /// The range is checked against the session as it stands: requests still on their way to
    /// it (an ALLOC, a FREE, earlier chunks) may change the answer, so a host that pipelines
    /// checks again once they are done before it refuses, and the session checks the plain
    /// frame in full anyway.
    pub fn check_compressed(&self, header: &HeaderRepr, payload: &[u8]) -> Result<usize, Refusal> {
        self.compressed_target(header, payload).map_err(Refusal::from)
    }

    pub(super) fn compressed_target(&self, header: &HeaderRepr, payload: &[u8]) -> Result<usize, Reject> {
        if !self.lz4() {
            return Err(Reject::new(ErrorCode::UNSUPPORTED, "compressed payloads need the LZ4 capability"));
        }
        if self.state != State::Ready {
            return Err(Reject::new(ErrorCode::WRONG_STATE, "session not ready"));
        }
        if header.flags != Flags::COMPRESSED {
            return Err(Reject::new(ErrorCode::MALFORMED, "not a compressed request"));
        }
        let c = Compressed::parse(header.kind, false, payload, self.config.effective_max_payload())?;
        let raw = u64::from(c.raw_len);
        match header.kind {
            Kind::WRITE => {
                let w = msg::Write::parse(c.prefix)
                    .map_err(|_| Reject::new(ErrorCode::MALFORMED, "bad prefix"))?;
                let slot = self.slot(w.handle)?;
                Self::range(&slot, w.offset, raw)?;
            }
            Kind::MODEL_CHUNK => {
                if !self.config.models {
                    return Err(Reject::new(ErrorCode::UNSUPPORTED, "this node serves no models"));
                }
                let chunk = msg::ModelChunk::parse(c.prefix)
                    .map_err(|_| Reject::new(ErrorCode::MALFORMED, "bad prefix"))?;
                let up = self.upload.ok_or(Reject::new(ErrorCode::WRONG_STATE, "no upload in progress"))?;
                if chunk.offset < up.received {
                    return Err(Reject::new(
                        ErrorCode::INVALID_ARGUMENT,
                        "chunk offset is not the number of bytes received so far",
                    ));
                }
                if chunk.offset.checked_add(raw).is_none_or(|end| end > up.size) {
                    return Err(Reject::new(ErrorCode::OUT_OF_BOUNDS, "chunk runs past the upload's size"));
                }
            }
            // Compressed::parse accepts no other request kind.
            _ => return Err(Reject::new(ErrorCode::UNSUPPORTED, "this kind carries no compressed payload")),
        }
        Ok(c.plain_len())
    }
}
