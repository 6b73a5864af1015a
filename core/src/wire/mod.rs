//! Wire formats: the frame header, frame validation and message payload codecs.
//!
//! # Panic guarantees
//!
//! Following smoltcp's `wire` module: every decoder in this module takes untrusted bytes and
//! returns a typed error for malformed input; none of them panics on any input, including
//! lengths and offsets chosen to overflow. The header is read through a [`zerocopy`] view
//! ([`RawHeader`]); once [`HeaderRepr::parse`] has accepted it, the payload length is known to be
//! within the configured cap, so no payload memory is ever reserved for a rejected header.
//!
//! Payload views borrow the frame: [`msg::Write::data`] and [`msg::Ping::data`] point into the
//! caller's buffer, nothing is copied.

mod codec;
pub mod compress;
mod error_code;
mod frame;
pub mod generate;
mod header;
mod kind;
pub mod model_list;
pub mod msg;

pub use codec::{DecodeError, EncodeError, Reader, Writer};
pub use error_code::ErrorCode;
pub use frame::{Frame, FrameCrc, FrameError, emit_frame, emit_header, encode_frame};
pub use header::{Flags, HeaderError, HeaderRepr, MAGIC, RawHeader};
pub use kind::Kind;
