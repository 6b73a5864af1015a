//! The embassy-net front-end on a real embassy-net network: two smoltcp stacks (node and
//! client) joined by an in-memory IP link (`embassy-net-driver-channel`), on the std time
//! driver. The node runs `run_listener` and `run_discovery` exactly as a device would; the
//! client speaks RELA through an embassy-net TCP socket with the core's codecs, and finds the
//! node with a DISCOVER datagram.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::cell::{Cell, RefCell};
use std::time::Duration;

use embassy_futures::join::{join, join_array, join3};
use embassy_futures::select::{Either, select};
use embassy_net::driver::HardwareAddress;
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Config, Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_net_driver_channel as channel;
use embassy_net_driver_channel::driver::LinkState;
use rela_backend_host::HostBackend;
use rela_client::FastCrc32;
use rela_core::auth::AuthKey;
use rela_core::backend::{BackendKind, GpuBackend};
use rela_core::config::{HEADER_LEN, MAX_DATAGRAM, PROTOCOL_VERSION};
use rela_core::discovery::{Announce, Discover};
use rela_core::io::{read_frame, write_frame};
use rela_core::session::{CloseReason, SessionConfig};
use rela_core::wire::msg::{Alloc, Caps, Hello, Message, Read, Response, Welcome, Write};
use rela_core::wire::{ErrorCode, Flags, Kind, encode_frame};
use rela_embassy::{
    Advert, DEFAULT_WRITE_TIMEOUT, DiscoveryBuffers, FrameBuffers, SessionEnd, SocketBuffers, run_discovery,
    run_listener,
};
use rela_test_support::pattern;

const MTU: usize = 1500;
const NODE_IP: Ipv4Address = Ipv4Address::new(10, 42, 0, 1);
const CLIENT_IP: Ipv4Address = Ipv4Address::new(10, 42, 0, 2);
const SESSION_PORT: u16 = 8765;
const DISCOVERY_PORT: u16 = 8766;
/// A device-sized node: 32 KiB of lendable memory, 2 KiB frames.
const ARENA: usize = 32 * 1024;
const FRAME: usize = HEADER_LEN + 2048;

type Link = channel::State<MTU, 8, 8>;

/// One end of the link: a stack on a channel device, and the device's packet runner.
fn stack(
    ip: Ipv4Address,
    seed: u64,
) -> (
    Stack<'static>,
    embassy_net::Runner<'static, channel::Device<'static, MTU>>,
    channel::Runner<'static, MTU>,
) {
    let state: &'static mut Link = Box::leak(Box::new(channel::State::new()));
    let (mut runner, device) = channel::new(state, HardwareAddress::Ip);
    runner.set_link_state(LinkState::Up);
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ip, 24),
        gateway: None,
        dns_servers: Default::default(),
    });
    let resources: &'static mut StackResources<8> = Box::leak(Box::new(StackResources::new()));
    let (stack, net) = embassy_net::new(device, config, resources, seed);
    (stack, net, runner)
}

/// Carries every packet `from` sends into `to`, forever.
async fn wire(mut from: channel::TxRunner<'_, MTU>, mut to: channel::RxRunner<'_, MTU>) {
    loop {
        let packet = from.tx_buf().await;
        let len = packet.len();
        let dst = to.rx_buf().await;
        dst[..len].copy_from_slice(packet);
        to.rx_done(len);
        from.tx_done();
    }
}

/// The client's side of a session: frames through an embassy-net socket.
struct Peer<'s, 'b> {
    socket: TcpSocket<'s>,
    buf: &'b mut [u8],
    seq: u16,
}

impl Peer<'_, '_> {
    async fn send(&mut self, kind: Kind, payload: &[u8]) -> u16 {
        self.seq = self.seq.wrapping_add(1);
        let mut out = vec![0u8; HEADER_LEN + payload.len()];
        let frame = encode_frame::<FastCrc32>(&mut out, kind, Flags::NONE, self.seq, payload).unwrap();
        write_frame(&mut self.socket, frame).await.unwrap();
        self.seq
    }

    async fn request<'m, M: Message<'m>>(&mut self, msg: &M) -> (Kind, Flags, Vec<u8>) {
        let mut payload = vec![0u8; msg.buffer_len()];
        let n = msg.emit(&mut payload).unwrap();
        let seq = self.send(M::KIND, &payload[..n]).await;
        self.response(seq).await
    }

    /// HELLO, and the WELCOME's fields.
    async fn hello(&mut self) -> Welcome {
        let hello =
            Hello { min_version: PROTOCOL_VERSION, max_version: PROTOCOL_VERSION, caps: Caps::DISPATCH };
        let (kind, flags, payload) = self.request(&hello).await;
        let Response::Welcome(welcome) = Response::parse(kind, flags, &payload).unwrap() else {
            panic!("no WELCOME")
        };
        welcome
    }

    async fn response(&mut self, seq: u16) -> (Kind, Flags, Vec<u8>) {
        let frame = read_frame::<_, FastCrc32>(&mut self.socket, self.buf, 1 << 20).await.unwrap();
        assert_eq!(frame.seq(), seq, "responses come in request order");
        (frame.kind(), frame.header.flags, frame.payload.to_vec())
    }
}

/// A socket of `client`'s connected to the node's session port.
async fn connect<'s>(client: Stack<'s>, rx: &'s mut [u8], tx: &'s mut [u8]) -> TcpSocket<'s> {
    let mut socket = TcpSocket::new(client, rx, tx);
    socket.connect((NODE_IP, SESSION_PORT)).await.expect("connect to the node");
    socket
}

/// One full session through embassy-net: HELLO, ALLOC, WRITE and READ of more than one frame,
/// refused requests, then BYE or a dropped connection.
async fn session(client: Stack<'_>, bye: bool) {
    let (mut rx, mut tx) = (vec![0u8; 8192], vec![0u8; 8192]);
    let socket = connect(client, &mut rx, &mut tx).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut peer = Peer { socket, buf: &mut buf, seq: 0 };
    let welcome = peer.hello().await;
    assert_eq!(welcome.max_payload, 2048, "the node advertises what its frame buffers carry");

    let (kind, flags, payload) = peer.request(&Alloc { size: 10_000 }).await;
    let Response::Allocated(a) = Response::parse(kind, flags, &payload).unwrap() else {
        panic!("no ALLOCATED")
    };
    // 10 000 bytes in frames of at most 2048 payload bytes (12 of them the WRITE prefix).
    let data = pattern(5, 10_000);
    for (i, piece) in data.chunks(2000).enumerate() {
        let w = Write { handle: a.handle, offset: (i * 2000) as u64, data: piece };
        let (kind, flags, payload) = peer.request(&w).await;
        assert_eq!(Response::parse(kind, flags, &payload).unwrap(), Response::Ack(Kind::WRITE));
    }
    let mut back = Vec::new();
    for offset in (0..10_000u64).step_by(2048) {
        let len = 2048.min(10_000 - offset as u32);
        let (kind, flags, payload) = peer.request(&Read { handle: a.handle, offset, len }).await;
        let Response::Data(bytes) = Response::parse(kind, flags, &payload).unwrap() else {
            panic!("no data")
        };
        back.extend_from_slice(bytes);
    }
    assert_eq!(back, data);
    // A READ larger than the node's frames ("read too long"): a typed ERROR, the session goes on.
    let (kind, flags, payload) = peer.request(&Read { handle: a.handle, offset: 0, len: 4096 }).await;
    let Response::Error(e) = Response::parse(kind, flags, &payload).unwrap() else { panic!("no ERROR") };
    assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT);
    // More memory than the device has: OUT_OF_MEMORY.
    let (kind, flags, payload) = peer.request(&Alloc { size: 1 << 20 }).await;
    let Response::Error(e) = Response::parse(kind, flags, &payload).unwrap() else { panic!("no ERROR") };
    assert_eq!(e.code, ErrorCode::OUT_OF_MEMORY);

    if bye {
        let seq = peer.send(Kind::BYE, &[]).await;
        let (kind, flags, payload) = peer.response(seq).await;
        assert_eq!(Response::parse(kind, flags, &payload).unwrap(), Response::Ack(Kind::BYE));
    }
    peer.socket.close();
    peer.socket.flush().await.ok();
    if !bye {
        peer.socket.abort();
        peer.socket.flush().await.ok();
    }
}

/// Sends DISCOVER from the client stack and returns the ANNOUNCE's fields.
async fn discover(client: Stack<'_>, key: &AuthKey) -> (u16, BackendKind, u64, u64, bool) {
    let (mut rx_meta, mut tx_meta) = ([PacketMetadata::EMPTY; 4], [PacketMetadata::EMPTY; 4]);
    let (mut rx, mut tx) = (vec![0u8; 1024], vec![0u8; 1024]);
    let mut socket = UdpSocket::new(client, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    socket.bind(40_000).unwrap();
    let probe = Discover { nonce: [0x5a; 16] };
    let mut out = [0u8; MAX_DATAGRAM];
    let n = probe.emit::<FastCrc32>(&mut out).unwrap();
    // Garbage first: ignored, not answered.
    socket.send_to(b"not a probe", (NODE_IP, DISCOVERY_PORT)).await.unwrap();
    socket.send_to(&out[..n], (NODE_IP, DISCOVERY_PORT)).await.unwrap();
    let mut datagram = [0u8; MAX_DATAGRAM];
    let (len, from) = socket.recv_from(&mut datagram).await.unwrap();
    assert_eq!(from.endpoint.port, DISCOVERY_PORT);
    let announce = Announce::parse::<FastCrc32>(&datagram[..len]).unwrap();
    assert_eq!(announce.nonce, probe.nonce);
    assert!(announce.verify(&probe.nonce, Some(key)).is_ok(), "the ANNOUNCE is signed with the node's key");
    (announce.port, announce.backend, announce.total, announce.free, announce.auth_required())
}

/// Waits until the listeners have reported `n` ended sessions.
async fn wait_for_ends(ends: &RefCell<Vec<SessionEnd>>, n: usize) {
    while ends.borrow().len() < n {
        embassy_time::Timer::after_millis(5).await;
    }
}

fn leak<T>(value: T) -> &'static mut T {
    Box::leak(Box::new(value))
}

/// A node on `NODE_IP` with `N` listeners on the session port (their own buffers, one shared
/// backend) and the discovery responder, a client stack on `CLIENT_IP`, and the link between
/// them; runs `test` on the client stack against it. Returns the ended sessions, in order, and
/// the bytes the backend still holds.
fn with_node<const N: usize>(
    key: &'static AuthKey,
    test: impl AsyncFnOnce(Stack<'static>, &'static RefCell<Vec<SessionEnd>>),
) -> (Vec<SessionEnd>, u64) {
    with_node_and_write_timeout::<N>(key, DEFAULT_WRITE_TIMEOUT, test)
}

/// [`with_node`] with the listeners' write timeout given.
fn with_node_and_write_timeout<const N: usize>(
    key: &'static AuthKey,
    write_timeout: embassy_time::Duration,
    test: impl AsyncFnOnce(Stack<'static>, &'static RefCell<Vec<SessionEnd>>),
) -> (Vec<SessionEnd>, u64) {
    let (node, mut node_net, node_link) = stack(NODE_IP, 1);
    let (client, mut client_net, client_link) = stack(CLIENT_IP, 2);
    let (_, node_rx, node_tx) = node_link.split();
    let (_, client_rx, client_tx) = client_link.split();

    let arena: &'static mut [u8] = leak(vec![0u8; ARENA]).as_mut_slice();
    let backend = &*leak(RefCell::new(HostBackend::<16>::with_block_table(arena)));
    let ends = &*leak(RefCell::new(Vec::new()));
    let config = &*leak(SessionConfig::default());
    let nonces = &*leak(Cell::new(0u8));
    let listeners: [_; N] = core::array::from_fn(|_| {
        let sockets = SocketBuffers { rx: leak([0u8; 8192]), tx: leak([0u8; 8192]) };
        let frames = FrameBuffers { rx: leak([0u8; FRAME]), tx: leak([0u8; FRAME]) };
        let nonce = || {
            nonces.set(nonces.get().wrapping_add(1));
            [nonces.get(); 32]
        };
        let on_end = |end| ends.borrow_mut().push(end);
        run_listener::<_, FastCrc32>(
            node,
            SESSION_PORT,
            backend,
            config,
            nonce,
            sockets,
            frames,
            write_timeout,
            on_end,
        )
    });
    let advert = Advert { node_id: [9; 16], port: SESSION_PORT, key: Some(key) };
    let bufs = DiscoveryBuffers {
        rx_meta: leak([PacketMetadata::EMPTY; 4]),
        rx: leak([0u8; 1024]),
        tx_meta: leak([PacketMetadata::EMPTY; 4]),
        tx: leak([0u8; 1024]),
    };
    let discovery = run_discovery::<_, FastCrc32>(node, DISCOVERY_PORT, backend, advert, bufs);
    let background = join3(
        join(node_net.run(), client_net.run()),
        join(wire(node_tx, client_rx), wire(client_tx, node_rx)),
        join(join_array(listeners), discovery),
    );

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let done = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), select(background, test(client, ends))).await
    });
    match done.expect("the test finished within 60 s") {
        Either::First(_) => unreachable!("the network tasks never return"),
        Either::Second(()) => {}
    }
    let used = backend.borrow().usage().used;
    (ends.borrow().clone(), used)
}

#[test]
fn sessions_one_after_another_and_discovery() {
    let key = &*leak(AuthKey::new(b"a token for the announce signature"));
    let (ends, used) = with_node::<1>(key, async |client, ends| {
        let (port, backend_kind, total, free, auth) = discover(client, key).await;
        assert_eq!(
            (port, backend_kind, total, free, auth),
            (SESSION_PORT, BackendKind::HOST, ARENA as u64, ARENA as u64, true)
        );
        session(client, true).await;
        // The listener takes the next connection on fresh socket state. It listens again in
        // the same poll that reports the end of the last session (a connection arriving
        // before that would be reset: smoltcp has no accept backlog).
        wait_for_ends(ends, 1).await;
        session(client, false).await;
        wait_for_ends(ends, 2).await;
        let (_, _, _, free, _) = discover(client, key).await;
        assert_eq!(free, ARENA as u64, "both sessions' memory came back");
    });
    assert_eq!(ends, [SessionEnd::Closed(CloseReason::Bye), SessionEnd::Disconnected]);
    assert_eq!(used, 0);
}

#[test]
fn concurrent_sessions_share_the_backend_and_a_hostile_one_hurts_no_other() {
    let key = &*leak(AuthKey::new(b"k"));
    let (ends, used) = with_node::<3>(key, async |client, ends| {
        // A client that sends garbage mid-way: BAD_FRAME for it alone.
        let hostile = async {
            let (mut rx, mut tx) = (vec![0u8; 4096], vec![0u8; 4096]);
            let socket = connect(client, &mut rx, &mut tx).await;
            let mut buf = vec![0u8; 4096];
            let mut peer = Peer { socket, buf: &mut buf, seq: 0 };
            peer.hello().await;
            let (kind, flags, payload) = peer.request(&Alloc { size: 4096 }).await;
            assert!(matches!(Response::parse(kind, flags, &payload).unwrap(), Response::Allocated(_)));
            write_frame(&mut peer.socket, b"RELA but not a frame at all").await.unwrap();
            // An ERROR about no request in particular: sequence number 0.
            let (kind, flags, payload) = peer.response(0).await;
            let Response::Error(e) = Response::parse(kind, flags, &payload).unwrap() else {
                panic!("no ERROR")
            };
            assert_eq!(e.code, ErrorCode::BAD_FRAME);
        };
        join3(session(client, true), session(client, true), hostile).await;
        wait_for_ends(ends, 3).await;
    });
    assert_eq!(ends.iter().filter(|e| **e == SessionEnd::Closed(CloseReason::Bye)).count(), 2, "{ends:?}");
    assert!(ends.contains(&SessionEnd::Closed(CloseReason::Error(ErrorCode::BAD_FRAME))), "{ends:?}");
    assert_eq!(used, 0);
}

#[test]
fn a_peer_that_never_reads_loses_its_session_and_the_listener_serves_the_next() {
    let key = &*leak(AuthKey::new(b"k"));
    let timeout = embassy_time::Duration::from_millis(300);
    let (ends, used) = with_node_and_write_timeout::<1>(key, timeout, async |client, ends| {
        // A small receive window, never read: the node's socket buffer (8 KiB) and this window
        // fill with READ answers, and the node's next write cannot finish.
        let (mut rx, mut tx) = (vec![0u8; 1024], vec![0u8; 4096]);
        let socket = connect(client, &mut rx, &mut tx).await;
        let mut buf = vec![0u8; 4096];
        let mut peer = Peer { socket, buf: &mut buf, seq: 0 };
        peer.hello().await;
        let (kind, flags, payload) = peer.request(&Alloc { size: 2048 }).await;
        let Response::Allocated(a) = Response::parse(kind, flags, &payload).unwrap() else {
            panic!("no ALLOCATED")
        };
        let (kind, flags, payload) =
            peer.request(&Write { handle: a.handle, offset: 0, data: &[0xA5; 2000] }).await;
        assert_eq!(Response::parse(kind, flags, &payload).unwrap(), Response::Ack(Kind::WRITE));
        // 16 READs of 2 KiB (32 KiB of answers), none of them read.
        for _ in 0..16 {
            peer.send(Kind::READ, &{
                let mut p = [0u8; 16];
                Read { handle: a.handle, offset: 0, len: 2048 }.emit(&mut p).unwrap();
                p
            })
            .await;
        }
        // The node gives up on the stalled session on its own, while this socket stays open.
        wait_for_ends(ends, 1).await;
        assert_eq!(ends.borrow()[0], SessionEnd::Stalled);
        drop(peer);
        // The same listener serves the next client in full.
        session(client, true).await;
        wait_for_ends(ends, 2).await;
    });
    assert_eq!(ends, [SessionEnd::Stalled, SessionEnd::Closed(CloseReason::Bye)]);
    assert_eq!(used, 0, "the stalled session's buffer was freed");
}
