//! `serve_session` fed arbitrary bytes, in arbitrary pieces: it never panics, every byte it
//! sends is a well-formed RELA response frame, and whatever the input did (a valid handshake
//! and allocations first, then anything), the session leaves the backend empty and its memory
//! zeroed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::cell::RefCell;

use embedded_io_async::{ErrorType, Read, Write};
use proptest::prelude::*;
use rela_backend_host::HostBackend;
use rela_core::backend::GpuBackend;
use rela_core::config::HEADER_LEN;
use rela_core::crc32::SoftCrc32;
use rela_core::session::SessionConfig;
use rela_core::wire::msg::{Alloc, Caps, Hello, Message, Write as WriteMsg};
use rela_core::wire::{Flags, Frame, encode_frame};
use rela_embassy::{DEFAULT_WRITE_TIMEOUT, FrameBuffers, Secrets, SessionEnd, serve_session};

const FRAME: usize = HEADER_LEN + 1024;

/// An in-memory stream: reads hand out `input` in pieces of the given sizes (cycled), then end;
/// writes are collected.
struct Scripted {
    input: Vec<u8>,
    pos: usize,
    pieces: Vec<usize>,
    turn: usize,
    output: Vec<u8>,
}

impl ErrorType for Scripted {
    type Error = core::convert::Infallible;
}

impl Read for Scripted {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let piece = self.pieces[self.turn % self.pieces.len()].max(1);
        self.turn += 1;
        let n = piece.min(buf.len()).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Scripted {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn frame<'m, M: Message<'m>>(seq: u16, msg: &M) -> Vec<u8> {
    let mut payload = vec![0u8; msg.buffer_len()];
    let n = msg.emit(&mut payload).unwrap();
    let mut out = vec![0u8; HEADER_LEN + n];
    encode_frame::<SoftCrc32>(&mut out, M::KIND, Flags::NONE, seq, &payload[..n]).unwrap().to_vec()
}

/// A valid start: HELLO, two ALLOCs and a WRITE, so there is memory to leak if anything does.
fn prologue() -> Vec<u8> {
    let mut bytes = frame(1, &Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH });
    bytes.extend(frame(2, &Alloc { size: 3000 }));
    bytes.extend(frame(3, &Alloc { size: 100 }));
    bytes.extend(frame(4, &WriteMsg { handle: 1, offset: 0, data: &[0xAB; 500] }));
    bytes
}

fn run(input: Vec<u8>, pieces: Vec<usize>) -> (SessionEnd, Vec<u8>, u64, bool) {
    let mut arena = vec![0u8; 16 * 1024];
    let backend = RefCell::new(HostBackend::<16>::with_block_table(&mut arena[..]));
    let mut stream = Scripted { input, pos: 0, pieces, turn: 0, output: Vec::new() };
    let (mut rx, mut tx) = (vec![0u8; FRAME], vec![0u8; FRAME]);
    let bufs = FrameBuffers { rx: &mut rx, tx: &mut tx };
    let config = SessionConfig::default();
    let end = embassy_futures::block_on(serve_session::<_, _, SoftCrc32>(
        &mut stream,
        &backend,
        &config,
        Secrets { nonce: [3; 32], handle_seed: 3 },
        bufs,
        DEFAULT_WRITE_TIMEOUT,
    ));
    let used = backend.borrow().usage().used;
    drop(backend);
    (end, stream.output, used, arena.iter().all(|&b| b == 0))
}

/// Every byte of `output` belongs to a valid response frame.
fn assert_well_formed(mut output: &[u8]) {
    while !output.is_empty() {
        assert!(output.len() >= HEADER_LEN, "a torn header at the end of the output");
        let len = u32::from_le_bytes(output[8..12].try_into().unwrap()) as usize;
        let f = Frame::parse::<SoftCrc32>(&output[..HEADER_LEN + len], 1024).expect("a valid frame");
        assert!(f.header.flags.is_response(), "{:?}", f.header);
        output = &output[HEADER_LEN + len..];
    }
}

#[test]
fn the_prologue_alone_allocates_then_the_end_of_stream_frees() {
    let (end, output, used, zero) = run(prologue(), vec![7]);
    assert_eq!(end, SessionEnd::Disconnected);
    assert_well_formed(&output);
    // WELCOME, ALLOCATED, ALLOCATED, WRITE ack: 4 responses.
    let mut count = 0;
    let mut rest = &output[..];
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
        rest = &rest[HEADER_LEN + len..];
        count += 1;
    }
    assert_eq!(count, 4);
    assert_eq!(used, 0);
    assert!(zero);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_after_a_valid_start_never_panic_or_leak(
        tail in proptest::collection::vec(any::<u8>(), 0..4096),
        pieces in proptest::collection::vec(1usize..64, 1..8),
        with_prologue in any::<bool>(),
    ) {
        let mut input = if with_prologue { prologue() } else { Vec::new() };
        input.extend(tail);
        let (end, output, used, zero) = run(input, pieces);
        prop_assert_ne!(end, SessionEnd::BuffersTooSmall);
        assert_well_formed(&output);
        prop_assert_eq!(used, 0);
        prop_assert!(zero, "session bytes left in the arena");
    }

    #[test]
    fn arbitrary_valid_frames_never_panic_or_leak(
        frames in proptest::collection::vec((any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..40),
    ) {
        // Frames with valid headers and CRCs but arbitrary kinds, flags and payloads.
        let mut input = prologue();
        for (i, (kind, flags, payload)) in frames.iter().enumerate() {
            let mut out = vec![0u8; HEADER_LEN + payload.len()];
            let seq = 5 + i as u16;
            if let Ok(f) = encode_frame::<SoftCrc32>(&mut out, rela_core::wire::Kind(*kind), Flags(*flags & 0x07), seq, payload) {
                input.extend_from_slice(f);
            }
        }
        let (_, output, used, zero) = run(input, vec![4096]);
        assert_well_formed(&output);
        prop_assert_eq!(used, 0);
        prop_assert!(zero, "session bytes left in the arena");
    }
}
