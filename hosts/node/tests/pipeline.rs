//! Pipelined requests are answered in request order, including PINGs (which the node may serve
//! on its fast path only when nothing else of the connection is in flight), and the session's
//! counters see every PING.

mod common;

use common::{config, read_raw_frame, start, within};
use rela_client::FastCrc32;
use rela_core::config::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use rela_core::wire::msg::{self, Caps, Message, Response};
use rela_core::wire::{Flags, Kind, encode_frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

fn frame<'m, M: Message<'m>>(seq: u16, m: &M) -> Vec<u8> {
    let mut payload = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut payload).expect("encodes");
    let mut buf = vec![0u8; 16 + n];
    encode_frame::<FastCrc32>(&mut buf, M::KIND, M::flags(), seq, &payload[..n]).expect("fits").to_vec()
}

fn empty(seq: u16, kind: Kind) -> Vec<u8> {
    let mut buf = [0u8; 16];
    encode_frame::<FastCrc32>(&mut buf, kind, Flags::NONE, seq, &[]).expect("fits").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_never_overtake_earlier_requests() {
    let node = start(config(), 64 * MIB).await;
    let mut s = within(TcpStream::connect(node.local_addr())).await.expect("connect");
    let hello =
        msg::Hello { min_version: MIN_PROTOCOL_VERSION, max_version: PROTOCOL_VERSION, caps: Caps(0) };
    within(s.write_all(&frame(1, &hello))).await.expect("send");
    let (h, _) = read_raw_frame(&mut s).await.expect("WELCOME");
    assert_eq!(h.seq, 1);
    within(s.write_all(&frame(2, &msg::Alloc { size: 16 * MIB as u64 }))).await.expect("send");
    let (_, p) = read_raw_frame(&mut s).await.expect("ALLOCATED");
    let Ok(Response::Allocated(a)) = Response::parse(Kind::ALLOC, Flags::RESPONSE, &p) else {
        panic!("expected ALLOCATED")
    };

    let mut seq = 3u16;
    let mut expected = Vec::new();
    let mut pings = 0u64;
    for round in 0..20 {
        // A slow request (a large READ) with PINGs right behind it, in one write.
        let mut burst = frame(seq, &msg::Read { handle: a.handle, offset: 0, len: (4 * MIB) as u32 });
        expected.push((seq, Kind::READ));
        seq += 1;
        for i in 0..3u8 {
            burst.extend(frame(seq, &msg::Ping { data: &[round, i] }));
            expected.push((seq, Kind::PING));
            pings += 1;
            seq += 1;
        }
        within(s.write_all(&burst)).await.expect("send");
        // And lone PINGs, which the fast path may serve.
        for _ in 0..5 {
            within(s.write_all(&frame(seq, &msg::Ping { data: &[9; 8] }))).await.expect("send");
            let (h, p) = within(read_ordered(&mut s, &mut expected)).await;
            assert!(h <= seq && p.len() <= 4 * MIB);
            expected.push((seq, Kind::PING));
            pings += 1;
            seq += 1;
        }
    }
    while !expected.is_empty() {
        within(read_ordered(&mut s, &mut expected)).await;
    }
    // The session counted every frame, whichever path served it.
    within(s.write_all(&empty(seq, Kind::STATS))).await.expect("send");
    let (h, p) = read_raw_frame(&mut s).await.expect("STATS");
    assert_eq!(h.seq, seq);
    let Ok(Response::Stats(stats)) = Response::parse(Kind::STATS, Flags::RESPONSE, &p) else {
        panic!("expected STATS")
    };
    // HELLO, ALLOC, 20 READs, the PINGs and this STATS.
    assert_eq!(stats.frames_in, 2 + 20 + pings + 1);
    node.shutdown().await.expect("shutdown");
}

/// Reads responses until every expected answer sent before the last lone PING has arrived, in
/// order; returns the last seq and payload read.
async fn read_ordered(s: &mut TcpStream, expected: &mut Vec<(u16, Kind)>) -> (u16, Vec<u8>) {
    let (h, p) = read_raw_frame(s).await.expect("response");
    let (seq, kind) = expected.remove(0);
    assert_eq!((h.seq, h.kind), (seq, kind), "responses out of order");
    (h.seq, p)
}
