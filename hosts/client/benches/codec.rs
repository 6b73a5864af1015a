//! Codec and CRC benchmarks (criterion). Run: `cargo bench -p rela-client --bench codec`.
//!
//! The `frame_validation_16MiB` group measures, in one run, a plain memcpy of a 16 MiB payload
//! (the baseline) next to validating a 16 MiB frame (header parse plus CRC-32 over header and
//! payload) with the core's portable `SoftCrc32` and with `FastCrc32` (crc32fast, PCLMULQDQ).
//! docs/BENCHMARKS.md reports their throughput as ratios to the memcpy.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rela_client::FastCrc32;
use rela_core::crc32::{Crc32, SoftCrc32};
use rela_core::wire::msg::{Message, Request, Welcome, Write};
use rela_core::wire::{Flags, FrameCrc, HeaderRepr, Kind, RawHeader, encode_frame};

const PAYLOAD: usize = 16 << 20;

fn validate<C: Crc32>(frame: &[u8]) -> bool {
    let raw = RawHeader::view(frame).expect("16 bytes");
    let header = HeaderRepr::parse(raw, 1 << 24).expect("valid header");
    let mut crc = FrameCrc::<C>::new(raw);
    crc.update(&frame[16..]);
    crc.verify(&header).is_ok()
}

fn frame_validation(c: &mut Criterion) {
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut buf = vec![0u8; PAYLOAD + 16];
    let frame =
        encode_frame::<FastCrc32>(&mut buf, Kind::WRITE, Flags::NONE, 1, &payload).expect("fits").to_vec();
    assert!(validate::<SoftCrc32>(&frame) && validate::<FastCrc32>(&frame), "both CRCs accept the frame");
    let mut dst = vec![0u8; PAYLOAD];

    let mut g = c.benchmark_group("frame_validation_16MiB");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    g.sample_size(20);
    g.bench_function("memcpy (baseline)", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&payload));
            black_box(&dst);
        })
    });
    g.bench_function("SoftCrc32 (crc crate, slice-by-16)", |b| {
        b.iter(|| validate::<SoftCrc32>(black_box(&frame)))
    });
    g.bench_function("FastCrc32 (crc32fast)", |b| b.iter(|| validate::<FastCrc32>(black_box(&frame))));
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let mut buf = vec![0u8; 4096];
    let ping = encode_frame::<FastCrc32>(&mut buf, Kind::PING, Flags::NONE, 9, &[]).expect("fits").to_vec();
    g.bench_function("header parse", |b| b.iter(|| HeaderRepr::parse_bytes(black_box(&ping), 1 << 24)));

    let data = [7u8; 1024];
    let w = Write { handle: 0x9E37_79B9, offset: 4096, data: &data };
    let mut wbuf = vec![0u8; w.buffer_len()];
    w.emit(&mut wbuf).expect("fits");
    g.throughput(Throughput::Elements(1));
    g.bench_function("WRITE request parse (1 KiB, zero copy)", |b| {
        b.iter(|| Request::parse(Kind::WRITE, black_box(&wbuf)))
    });
    let welcome = Welcome {
        version: 1,
        flags: 1,
        caps: rela_core::wire::msg::Caps::DISPATCH,
        max_payload: 1 << 24,
        max_buffers: 64,
        quota: 1 << 28,
        handshake_timeout_ms: 10_000,
        idle_timeout_ms: 300_000,
        nonce: [3; 32],
    };
    let mut out = [0u8; 64];
    g.bench_function("WELCOME emit", |b| b.iter(|| black_box(&welcome).emit(&mut out)));
    g.finish();
}

criterion_group!(benches, frame_validation, codec);
criterion_main!(benches);
