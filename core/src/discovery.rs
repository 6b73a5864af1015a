//! Discovery datagrams: DISCOVER and ANNOUNCE.
//!
//! Both travel as ordinary RELA frames (same 16-byte header and CRC) in a single UDP datagram
//! of at most [`MAX_DATAGRAM`] bytes, with `seq` 0.
//!
//! - A client sends DISCOVER (kind `0x40`, flags 0) with a fresh 16-byte nonce, padded with
//!   zeros to a whole [`MAX_DATAGRAM`]-byte datagram, to the broadcast address or to one node.
//!   The padding makes every answer smaller than its probe (as QUIC pads its Initial), so a
//!   node cannot amplify traffic sent to a spoofed source; a node ignores unpadded probes.
//! - A node answers with ANNOUNCE (kind `0x41`, flags RESPONSE) echoing the nonce. When the node
//!   has a token, the ANNOUNCE ends with `HMAC-SHA256(token, "RELA-ANNOUNCE-v1" || body)` over
//!   the payload bytes before the tag, so a client holding the token rejects spoofed or
//!   replayed announcements (the nonce is inside the signed body).
//! - Between the device name and the tag, an ANNOUNCE carries extensions: `type u8, len u8,
//!   value` each, inside the signed body. A parser skips the types it does not know, so later
//!   versions can add fields that older clients pass over. Type
//!   [`ANNOUNCE_EXT_TLS_FINGERPRINT`] is the SHA-256 of the node's TLS certificate, so a client
//!   holding the token can pin the node it discovered.

use core::fmt;

use crate::auth::AuthKey;
use crate::backend::BackendKind;
use crate::config::{
    DISCOVERY_NONCE_LEN, HEADER_LEN, MAC_LEN, MAX_DATAGRAM, MAX_DEVICE_NAME, NODE_ID_LEN, TLS_FINGERPRINT_LEN,
};
use crate::crc32::Crc32;
use crate::wire::{DecodeError, EncodeError, Flags, Frame, FrameError, Kind, Reader, Writer, emit_frame};

/// ANNOUNCE flag: the node requires AUTH.
pub const ANNOUNCE_AUTH_REQUIRED: u8 = 1 << 0;
/// ANNOUNCE flag: the announcement carries an HMAC tag.
pub const ANNOUNCE_SIGNED: u8 = 1 << 1;
/// ANNOUNCE extension type: the node serves TLS; the value is the SHA-256 of its certificate's
/// DER encoding ([`TLS_FINGERPRINT_LEN`] bytes).
pub const ANNOUNCE_EXT_TLS_FINGERPRINT: u8 = 1;

/// A DISCOVER probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discover {
    /// A fresh random nonce; ANNOUNCE echoes it.
    pub nonce: [u8; DISCOVERY_NONCE_LEN],
}

/// An ANNOUNCE answer, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce<'a> {
    /// The DISCOVER nonce being answered.
    pub nonce: [u8; DISCOVERY_NONCE_LEN],
    /// The node's stable id.
    pub node_id: [u8; NODE_ID_LEN],
    /// TCP port of the session listener.
    pub port: u16,
    /// Backend kind.
    pub backend: BackendKind,
    /// Flag bits ([`ANNOUNCE_AUTH_REQUIRED`], [`ANNOUNCE_SIGNED`]).
    pub flags: u8,
    /// Total bytes the node lends.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Device name (at most 64 bytes).
    pub device: &'a str,
    /// The SHA-256 of the node's TLS certificate (DER), when the node serves TLS: extension
    /// [`ANNOUNCE_EXT_TLS_FINGERPRINT`]. Covered by the tag like the rest of the body.
    pub tls_fingerprint: Option<[u8; TLS_FINGERPRINT_LEN]>,
    /// The HMAC tag, present when [`ANNOUNCE_SIGNED`] is set.
    pub mac: Option<[u8; MAC_LEN]>,
    /// The signed body (payload bytes before the tag), for verification.
    body: &'a [u8],
}

/// Why a discovery datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The frame is invalid.
    Frame(FrameError),
    /// The payload does not decode.
    Decode(DecodeError),
    /// The frame is not of the expected kind or flags.
    WrongKind(Kind),
    /// The ANNOUNCE answers another nonce.
    NonceMismatch,
    /// A token is configured but the ANNOUNCE is unsigned.
    Unsigned,
    /// The HMAC tag does not verify.
    BadSignature,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "bad frame: {e}"),
            Self::Decode(e) => write!(f, "bad payload: {e}"),
            Self::WrongKind(k) => write!(f, "unexpected kind {k}"),
            Self::NonceMismatch => f.write_str("announce answers another nonce"),
            Self::Unsigned => f.write_str("announce is not signed but a token is configured"),
            Self::BadSignature => f.write_str("announce signature does not verify"),
        }
    }
}

impl core::error::Error for DiscoveryError {}

impl From<FrameError> for DiscoveryError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

impl From<DecodeError> for DiscoveryError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

fn frame_of<C: Crc32>(datagram: &[u8], kind: Kind, flags: Flags) -> Result<Frame<'_>, DiscoveryError> {
    let frame = Frame::parse::<C>(datagram, (MAX_DATAGRAM - HEADER_LEN) as u32)?;
    if frame.kind() != kind || frame.header.flags != flags {
        return Err(DiscoveryError::WrongKind(frame.kind()));
    }
    if frame.seq() != 0 {
        return Err(DecodeError::InvalidField("seq").into());
    }
    Ok(frame)
}

impl Discover {
    /// Length of the nonce at the start of the payload.
    pub const NONCE_LEN: usize = DISCOVERY_NONCE_LEN;
    /// Payload length: the nonce, then zero padding up to a whole [`MAX_DATAGRAM`].
    pub const PAYLOAD_LEN: usize = MAX_DATAGRAM - HEADER_LEN;

    /// Encodes the datagram (always [`MAX_DATAGRAM`] bytes) into `buf`, returning its length.
    pub fn emit<C: Crc32>(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(buf.get_mut(HEADER_LEN..).unwrap_or(&mut []));
        w.bytes(&self.nonce)?;
        w.bytes(&[0u8; Self::PAYLOAD_LEN - Self::NONCE_LEN])?;
        emit_frame::<C>(buf, Kind::DISCOVER, Flags::NONE, 0, Self::PAYLOAD_LEN)
    }

    /// Decodes a DISCOVER datagram: the nonce and exactly the zero padding that makes it
    /// [`MAX_DATAGRAM`] bytes (a shorter probe, or one with non-zero padding, is refused).
    pub fn parse<C: Crc32>(datagram: &[u8]) -> Result<Self, DiscoveryError> {
        let frame = frame_of::<C>(datagram, Kind::DISCOVER, Flags::NONE)?;
        if frame.payload.len() != Self::PAYLOAD_LEN {
            return Err(DecodeError::InvalidField("discover.padding").into());
        }
        let mut r = Reader::new(frame.payload);
        let nonce = r.array()?;
        let padding = r.bytes(Self::PAYLOAD_LEN - Self::NONCE_LEN)?;
        if padding.iter().any(|&b| b != 0) {
            return Err(DecodeError::InvalidField("discover.padding").into());
        }
        r.finish()?;
        Ok(Self { nonce })
    }
}

/// Walks an ANNOUNCE's extensions (`type u8, len u8, value`), skipping unknown types, and
/// returns the TLS fingerprint if there is one. A truncated extension, a fingerprint of another
/// length, or a second fingerprint is refused.
fn parse_extensions(mut ext: &[u8]) -> Result<Option<[u8; TLS_FINGERPRINT_LEN]>, DecodeError> {
    let mut fingerprint = None;
    while !ext.is_empty() {
        let mut r = Reader::new(ext);
        let kind = r.u8()?;
        let len = r.u8()? as usize;
        let value = r.bytes(len)?;
        if kind == ANNOUNCE_EXT_TLS_FINGERPRINT {
            let fp: [u8; TLS_FINGERPRINT_LEN] =
                value.try_into().map_err(|_| DecodeError::InvalidField("announce.tls_fingerprint"))?;
            if fingerprint.replace(fp).is_some() {
                return Err(DecodeError::InvalidField("announce.tls_fingerprint"));
            }
        }
        ext = r.rest();
    }
    Ok(fingerprint)
}

impl<'a> Announce<'a> {
    /// Builds an announcement to be signed (or not) by [`emit`](Self::emit).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        nonce: [u8; DISCOVERY_NONCE_LEN],
        node_id: [u8; NODE_ID_LEN],
        port: u16,
        backend: BackendKind,
        auth_required: bool,
        total: u64,
        free: u64,
        device: &'a str,
    ) -> Self {
        Self {
            nonce,
            node_id,
            port,
            backend,
            flags: if auth_required { ANNOUNCE_AUTH_REQUIRED } else { 0 },
            total,
            free,
            device,
            tls_fingerprint: None,
            mac: None,
            body: &[],
        }
    }

    /// This announcement with the node's TLS certificate fingerprint (SHA-256 of its DER).
    #[must_use]
    pub const fn with_tls_fingerprint(mut self, fingerprint: [u8; TLS_FINGERPRINT_LEN]) -> Self {
        self.tls_fingerprint = Some(fingerprint);
        self
    }

    /// Whether the node requires AUTH.
    pub const fn auth_required(&self) -> bool {
        self.flags & ANNOUNCE_AUTH_REQUIRED != 0
    }

    /// Encodes the datagram into `buf`, signed with `key` when given. Returns its length.
    pub fn emit<C: Crc32>(&self, key: Option<&AuthKey>, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let payload = buf.get_mut(HEADER_LEN..).unwrap_or(&mut []);
        let mut w = Writer::new(payload);
        let flags = (self.flags & ANNOUNCE_AUTH_REQUIRED) | if key.is_some() { ANNOUNCE_SIGNED } else { 0 };
        w.bytes(&self.nonce)?;
        w.bytes(&self.node_id)?;
        w.u16(self.port)?;
        w.u8(self.backend.0)?;
        w.u8(flags)?;
        w.u64(self.total)?;
        w.u64(self.free)?;
        w.str_u8(self.device, MAX_DEVICE_NAME)?;
        if let Some(fingerprint) = &self.tls_fingerprint {
            w.u8(ANNOUNCE_EXT_TLS_FINGERPRINT)?;
            w.u8(TLS_FINGERPRINT_LEN as u8)?;
            w.bytes(fingerprint)?;
        }
        let body_len = w.len();
        let mut len = body_len;
        if let Some(key) = key {
            let tag = key.announce_tag(&buf[HEADER_LEN..HEADER_LEN + body_len]);
            let mut w = Writer::new(&mut buf[HEADER_LEN + body_len..]);
            w.bytes(&tag)?;
            len += MAC_LEN;
        }
        if HEADER_LEN + len > MAX_DATAGRAM {
            return Err(EncodeError::TooLarge);
        }
        emit_frame::<C>(buf, Kind::ANNOUNCE, Flags::RESPONSE, 0, len)
    }

    /// Decodes an ANNOUNCE datagram. Does not check the nonce or the tag: see
    /// [`verify`](Self::verify).
    pub fn parse<C: Crc32>(datagram: &'a [u8]) -> Result<Self, DiscoveryError> {
        let frame = frame_of::<C>(datagram, Kind::ANNOUNCE, Flags::RESPONSE)?;
        let mut r = Reader::new(frame.payload);
        let nonce = r.array()?;
        let node_id = r.array()?;
        let port = r.u16()?;
        let backend = BackendKind(r.u8()?);
        let flags = r.u8()?;
        if flags & !(ANNOUNCE_AUTH_REQUIRED | ANNOUNCE_SIGNED) != 0 {
            return Err(DecodeError::InvalidField("announce.flags").into());
        }
        let total = r.u64()?;
        let free = r.u64()?;
        let device = r.str_u8(MAX_DEVICE_NAME, "announce.device")?;
        // Extensions run up to the tag, which is the last MAC_LEN bytes when signed.
        let tag_len = if flags & ANNOUNCE_SIGNED != 0 { MAC_LEN } else { 0 };
        let ext_len = r.remaining().checked_sub(tag_len).ok_or(DecodeError::Truncated)?;
        let tls_fingerprint = parse_extensions(r.bytes(ext_len)?)?;
        let body = &frame.payload[..frame.payload.len() - r.remaining()];
        let mac = if tag_len != 0 { Some(r.array()?) } else { None };
        r.finish()?;
        Ok(Self { nonce, node_id, port, backend, flags, total, free, device, tls_fingerprint, mac, body })
    }

    /// Checks that this announcement answers `nonce` and, when `key` is given, that it is
    /// signed with it.
    pub fn verify(
        &self,
        nonce: &[u8; DISCOVERY_NONCE_LEN],
        key: Option<&AuthKey>,
    ) -> Result<(), DiscoveryError> {
        if &self.nonce != nonce {
            return Err(DiscoveryError::NonceMismatch);
        }
        if let Some(key) = key {
            let tag = self.mac.ok_or(DiscoveryError::Unsigned)?;
            if !key.verify_announce(self.body, &tag) {
                return Err(DiscoveryError::BadSignature);
            }
        }
        Ok(())
    }
}
