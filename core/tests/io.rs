//! `read_frame` / `write_frame` over `embedded-io-async` streams: whole frames, frames split in
//! arbitrary pieces, clean and unclean end of stream, and rejection before the payload is read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use rela_core::crc32::SoftCrc32;
use rela_core::io::{ReadFrameError, read_frame, write_frame};
use rela_core::wire::{Flags, FrameError, HeaderError, Kind, encode_frame};

/// Polls a future that never waits (the streams below are always ready).
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory streams never block"),
    }
}

/// Serves `data` at most `piece` bytes per read, counting what was read.
struct Trickle<'a> {
    data: &'a [u8],
    piece: usize,
    consumed: usize,
}

impl ErrorType for Trickle<'_> {
    type Error = ErrorKind;
}

impl Read for Trickle<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        let n = buf.len().min(self.piece).min(self.data.len() - self.consumed);
        buf[..n].copy_from_slice(&self.data[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}

struct Sink(Vec<u8>, usize);

impl ErrorType for Sink {
    type Error = ErrorKind;
}

impl Write for Sink {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        // Accept at most 5 bytes per call, so write_all must loop.
        let n = buf.len().min(5);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    async fn flush(&mut self) -> Result<(), ErrorKind> {
        self.1 += 1;
        Ok(())
    }
}

fn frames() -> Vec<u8> {
    let mut out = Vec::new();
    for (i, payload) in [&b""[..], b"hello", &[7u8; 1000]].iter().enumerate() {
        let mut buf = vec![0u8; payload.len() + 16];
        out.extend_from_slice(
            encode_frame::<SoftCrc32>(&mut buf, Kind::PING, Flags::NONE, i as u16, payload).unwrap(),
        );
    }
    out
}

#[test]
fn reads_frames_in_any_pieces_then_clean_eof() {
    let stream = frames();
    for piece in [1, 3, 16, 17, 4096] {
        let mut r = Trickle { data: &stream, piece, consumed: 0 };
        let mut buf = vec![0u8; 2048];
        for (seq, len) in [(0u16, 0usize), (1, 5), (2, 1000)] {
            let f = run(read_frame::<_, SoftCrc32>(&mut r, &mut buf, 1 << 24)).expect("frame");
            assert_eq!((f.seq(), f.payload.len()), (seq, len));
        }
        assert_eq!(run(read_frame::<_, SoftCrc32>(&mut r, &mut buf, 1 << 24)), Err(ReadFrameError::Eof));
    }
}

#[test]
fn eof_inside_a_frame_is_unexpected() {
    let stream = frames();
    // Frame boundaries: 0, 16, 37 (16 + 16 + 5), 1053.
    for cut in [1, 15, 16, 20, 36, 37, 500, 1052] {
        let mut r = Trickle { data: &stream[..cut], piece: 7, consumed: 0 };
        let mut buf = vec![0u8; 2048];
        let mut whole = 0;
        let end = loop {
            match run(read_frame::<_, SoftCrc32>(&mut r, &mut buf, 1 << 24)) {
                Ok(_) => whole += 1,
                Err(e) => break e,
            }
        };
        let at_boundary = [16, 37].contains(&cut);
        let want = if at_boundary { ReadFrameError::Eof } else { ReadFrameError::UnexpectedEof };
        assert_eq!(end, want, "cut at {cut} after {whole} whole frames");
    }
}

#[test]
fn oversized_length_is_rejected_before_any_payload_byte() {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(b"RELA");
    header[4] = Kind::WRITE.0;
    header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut stream = header.to_vec();
    stream.extend_from_slice(&[0xAA; 64]);
    let mut r = Trickle { data: &stream, piece: 4096, consumed: 0 };
    let mut buf = vec![0u8; 64];
    let got = run(read_frame::<_, SoftCrc32>(&mut r, &mut buf, 1 << 20));
    assert_eq!(
        got,
        Err(ReadFrameError::Frame(FrameError::Header(HeaderError::PayloadTooLarge {
            len: u32::MAX,
            max: 1 << 20
        })))
    );
    assert_eq!(r.consumed, 16, "not one payload byte was read");

    // A bad CRC is caught after the payload.
    let mut stream = frames();
    stream[20] ^= 1;
    let mut r = Trickle { data: &stream, piece: 4096, consumed: 0 };
    let mut buf = vec![0u8; 2048];
    let _ = run(read_frame::<_, SoftCrc32>(&mut r, &mut buf, 1 << 24)).unwrap();
    assert!(matches!(
        run(read_frame::<_, SoftCrc32>(&mut r, &mut buf, 1 << 24)),
        Err(ReadFrameError::Frame(FrameError::BadCrc { .. }))
    ));
    // A buffer too small for an allowed payload is a typed error.
    let stream = frames();
    let mut r2 = Trickle { data: &stream, piece: 4096, consumed: 0 };
    let mut small = vec![0u8; 16];
    let _ = run(read_frame::<_, SoftCrc32>(&mut r2, &mut small, 1 << 24)).unwrap();
    assert_eq!(
        run(read_frame::<_, SoftCrc32>(&mut r2, &mut small, 1 << 24)).map(|f| f.payload.len()),
        Err(ReadFrameError::BufferTooSmall { needed: 21 })
    );
}

#[test]
fn write_frame_writes_everything_and_flushes() {
    let stream = frames();
    let mut sink = Sink(Vec::new(), 0);
    run(write_frame(&mut sink, &stream)).unwrap();
    assert_eq!(sink.0, stream);
    assert_eq!(sink.1, 1);
}
