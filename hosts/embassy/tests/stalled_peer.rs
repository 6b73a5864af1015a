//! `serve_session` against a peer that stops reading: a stream that takes a few response bytes
//! and then none. Every write has a deadline; when it passes the session is aborted, its
//! backend buffers are freed and zeroed, and both frame buffers are zeroed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use core::cell::RefCell;
use core::future::pending;

use embedded_io_async::{ErrorType, Read, Write};
use rela_backend_host::HostBackend;
use rela_core::backend::GpuBackend;
use rela_core::config::HEADER_LEN;
use rela_core::crc32::SoftCrc32;
use rela_core::session::SessionConfig;
use rela_core::wire::msg::{Alloc, Caps, Hello, Message, Read as ReadMsg, Write as WriteMsg};
use rela_core::wire::{Flags, encode_frame};
use rela_embassy::{FrameBuffers, Secrets, SessionEnd, serve_session};

const FRAME: usize = HEADER_LEN + 1024;

/// Reads hand out `input`, then wait forever (the peer keeps the connection open); writes take
/// at most `room` bytes in all, then wait forever (the peer's window stays closed).
struct Stalling {
    input: Vec<u8>,
    pos: usize,
    room: usize,
    output: Vec<u8>,
}

impl ErrorType for Stalling {
    type Error = core::convert::Infallible;
}

impl Read for Stalling {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if self.pos == self.input.len() {
            return pending().await;
        }
        let n = buf.len().min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Stalling {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(self.room - self.output.len());
        if n == 0 {
            return pending().await;
        }
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        pending().await
    }
}

fn frame<'m, M: Message<'m>>(seq: u16, msg: &M) -> Vec<u8> {
    let mut payload = vec![0u8; msg.buffer_len()];
    let n = msg.emit(&mut payload).unwrap();
    let mut out = vec![0u8; HEADER_LEN + n];
    encode_frame::<SoftCrc32>(&mut out, M::KIND, Flags::NONE, seq, &payload[..n]).unwrap().to_vec()
}

/// Serves `input` to a peer that takes `room` response bytes; returns how the session ended,
/// the bytes the backend still holds, whether the arena and both frame buffers are all zero.
fn run(input: Vec<u8>, room: usize, handle_seed: u32) -> (SessionEnd, u64, bool, bool) {
    let mut arena = vec![0u8; 16 * 1024];
    let backend = RefCell::new(HostBackend::<16>::with_block_table(&mut arena[..]));
    let mut stream = Stalling { input, pos: 0, room, output: Vec::new() };
    let (mut rx, mut tx) = (vec![0u8; FRAME], vec![0u8; FRAME]);
    let config = SessionConfig::default();
    let end = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let serve = serve_session::<_, _, SoftCrc32>(
            &mut stream,
            &backend,
            &config,
            Secrets { nonce: [7; 32], handle_seed },
            FrameBuffers { rx: &mut rx, tx: &mut tx },
            embassy_time::Duration::from_millis(200),
        );
        // Far beyond the write timeout: the session must end on its own.
        tokio::time::timeout(std::time::Duration::from_secs(30), serve).await.expect("the session ended")
    });
    let used = backend.borrow().usage().used;
    drop(backend);
    let frames_zero = rx.iter().chain(&tx).all(|&b| b == 0);
    (end, used, arena.iter().all(|&b| b == 0), frames_zero)
}

#[test]
fn a_peer_that_stops_reading_is_dropped_and_its_buffers_are_freed() {
    // The first handle is seed + the sequence's step.
    let seed = 0x1000_0000;
    let handle = seed + 0x9E37_79B9;
    let mut input = frame(1, &Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH });
    input.extend(frame(2, &Alloc { size: 4096 }));
    input.extend(frame(3, &WriteMsg { handle, offset: 0, data: &[0xAB; 1000] }));
    for seq in 4..12 {
        input.extend(frame(seq, &ReadMsg { handle, offset: 0, len: 1000 }));
    }
    // Room for WELCOME, ALLOCATED, the WRITE ack and a little of the first READ answer.
    let room = (HEADER_LEN + 64) + (HEADER_LEN + 12) + HEADER_LEN + 100;
    let (end, used, arena_zero, frames_zero) = run(input, room, seed);
    assert_eq!(end, SessionEnd::Stalled);
    assert_eq!(used, 0, "the session's buffer was freed");
    assert!(arena_zero, "and zeroed");
    assert!(frames_zero, "the frame buffers held the written and read data; they are zeroed");
}

#[test]
fn a_session_that_closes_while_its_peer_does_not_read_ends_all_the_same() {
    // HELLO, then garbage: the BAD_FRAME ERROR cannot be written (room for the WELCOME only),
    // and the final flush never completes; both have deadlines.
    let mut input = frame(1, &Hello { min_version: 1, max_version: 1, caps: Caps::DISPATCH });
    input.extend_from_slice(b"RELA but not a frame at all");
    let (end, used, arena_zero, frames_zero) = run(input.clone(), HEADER_LEN + 64, 1);
    assert_eq!(end, SessionEnd::Stalled);
    assert!(used == 0 && arena_zero && frames_zero);
    // With room for every response, only the flush waits: the session still ends, closed.
    let (end, ..) = run(input, 4096, 1);
    assert!(matches!(end, SessionEnd::Closed(_)), "{end:?}");
}
