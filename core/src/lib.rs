//! # rela-core
//!
//! The RELA protocol core: everything a VRAM relay node or client needs that does not touch a
//! socket, a clock or the heap.
//!
//! - [`wire`]: the 16-byte frame header (a zero-copy [`zerocopy`] view plus a checked
//!   [`wire::HeaderRepr`]), frame validation with CRC-32 behind the [`crc32::Crc32`] seam, and the
//!   payload codecs of every message ([`wire::msg`]).
//! - [`discovery`]: the DISCOVER / ANNOUNCE datagrams, with optional HMAC signatures.
//! - [`auth`]: the HMAC-SHA256 challenge-response used by AUTH.
//! - [`session`]: the sans-I/O server session state machine. Frames come in through
//!   `handle_*`, response frames go out through `poll_*` into caller-provided buffers, and time
//!   comes in as an [`time::Instant`] value.
//! - [`backend`]: the [`backend::GpuBackend`] trait that every GPU (or host-memory) backend
//!   implements, and the kernel-call descriptions with their shape validation.
//! - [`io`]: async `read_frame` / `write_frame` over [`embedded_io_async`] traits.
//! - [`config`]: every fixed capacity and protocol limit, in one place.
//!
//! The crate is `#![no_std]`, never allocates and contains no `unsafe` code. Every decoder
//! returns a typed error for any input; no input can make it panic (this is fuzzed, see
//! `fuzz/`).
//!
//! The byte-exact specification lives in `docs/PROTOCOL.md`; its worked examples are checked
//! against this crate by `tests/spec_examples.rs`.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(test)]
extern crate std;

pub mod auth;
pub mod backend;
pub mod checked;
pub mod config;
pub mod crc32;
pub mod discovery;
pub mod io;
pub mod kernel;
pub mod model;
pub mod session;
pub mod time;
pub mod wire;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
