//! The embassy-net side: a TCP listener that serves sessions and a UDP discovery responder.

use core::cell::RefCell;

use embassy_net::Stack;
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_time::{Duration, Instant, Timer};
use rela_core::auth::AuthKey;
use rela_core::backend::GpuBackend;
use rela_core::config::{MAX_DATAGRAM, NODE_ID_LEN, NONCE_LEN};
use rela_core::crc32::Crc32;
use rela_core::discovery::{Announce, Discover};
use rela_core::session::SessionConfig;

use crate::{FrameBuffers, Secrets, SessionEnd, serve_session};

/// How long a closing socket may take to deliver its last bytes (the final ERROR, say) before
/// it is reset.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Most ANNOUNCEs [`run_discovery`] sends per second, whatever their sources.
pub const DISCOVERY_REPLIES_PER_SECOND: u32 = 16;
/// Pause after a failed accept, so a broken stack cannot spin the executor.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The TCP socket's own buffers (embassy-net keeps in-flight bytes there).
#[derive(Debug)]
pub struct SocketBuffers<'a> {
    /// Receive window.
    pub rx: &'a mut [u8],
    /// Send buffer.
    pub tx: &'a mut [u8],
}

/// Accepts sessions on `port`, one at a time, and serves each with [`serve_session`]; never
/// returns.
///
/// `random` gives 32 fresh, unpredictable bytes at each call (a hardware RNG); each session
/// takes two draws, one for its AUTH challenge (the nonce WELCOME sends) and one for the seed
/// of its buffer handles, which is never sent. Every response frame must leave within
/// `write_timeout` ([`DEFAULT_WRITE_TIMEOUT`](crate::DEFAULT_WRITE_TIMEOUT)), so a peer that
/// stops reading loses its session ([`SessionEnd::Stalled`]) instead of holding the listener.
/// `on_end` hears how each session ended (for a log or a counter). After a session the socket
/// is closed gracefully (its last frame, often an ERROR, is delivered within 2 s) and then
/// reset; the socket buffers are zeroed, and the next accept starts on a fresh socket over
/// them. smoltcp has no accept backlog: a connection
/// that arrives while no listener waits on the port is reset (clients retry), so run one
/// listener more than the sessions you expect at once.
#[allow(clippy::too_many_arguments)] // every argument is a separate resource of the caller's
pub async fn run_listener<B, C>(
    stack: Stack<'_>,
    port: u16,
    backend: &RefCell<B>,
    config: &SessionConfig,
    mut random: impl FnMut() -> [u8; NONCE_LEN],
    sockets: SocketBuffers<'_>,
    frames: FrameBuffers<'_>,
    write_timeout: Duration,
    mut on_end: impl FnMut(SessionEnd),
) -> !
where
    B: GpuBackend + ?Sized,
    C: Crc32,
{
    loop {
        let mut socket = TcpSocket::new(stack, &mut *sockets.rx, &mut *sockets.tx);
        if socket.accept(port).await.is_err() {
            Timer::after(ACCEPT_RETRY).await;
            continue;
        }
        let bufs = FrameBuffers { rx: &mut *frames.rx, tx: &mut *frames.tx };
        let nonce = random();
        let [a, b, c, d, ..] = random();
        let secrets = Secrets { nonce, handle_seed: u32::from_le_bytes([a, b, c, d]) };
        let end = serve_session::<_, B, C>(&mut socket, backend, config, secrets, bufs, write_timeout).await;
        socket.close();
        let _ = embassy_time::with_timeout(CLOSE_GRACE, socket.flush()).await;
        socket.abort();
        let _ = embassy_time::with_timeout(CLOSE_GRACE, socket.flush()).await;
        // The socket leaves the stack; what it buffered (the session's last bytes either way)
        // does not stay in memory.
        drop(socket);
        sockets.rx.fill(0);
        sockets.tx.fill(0);
        on_end(end);
    }
}

/// What [`run_discovery`] announces besides the backend's own figures.
#[derive(Debug, Clone, Copy)]
pub struct Advert<'a> {
    /// The node's stable id (for example derived from the chip's unique id).
    pub node_id: [u8; NODE_ID_LEN],
    /// The TCP port [`run_listener`] serves.
    pub port: u16,
    /// The token's key when the node requires AUTH: ANNOUNCE then says so and is signed with it.
    pub key: Option<&'a AuthKey>,
}

/// The UDP socket's buffers for [`run_discovery`]. Datagrams are at most 256 bytes.
#[derive(Debug)]
pub struct DiscoveryBuffers<'a> {
    /// Metadata of queued received datagrams.
    pub rx_meta: &'a mut [PacketMetadata],
    /// Received datagrams.
    pub rx: &'a mut [u8],
    /// Metadata of queued datagrams to send.
    pub tx_meta: &'a mut [PacketMetadata],
    /// Datagrams to send.
    pub tx: &'a mut [u8],
}

/// Answers DISCOVER datagrams on UDP `port` with an ANNOUNCE to the sender; never returns.
///
/// The announcement carries the backend's kind, name, total and free bytes at the moment of
/// the probe. Datagrams that are not a valid (padded, 256-byte) DISCOVER are ignored, and an
/// answer is never larger than its probe, so the responder cannot be used to reflect traffic
/// at a third party with more bytes than it sent. At most [`DISCOVERY_REPLIES_PER_SECOND`]
/// answers go out per second, whatever their sources.
pub async fn run_discovery<B, C>(
    stack: Stack<'_>,
    port: u16,
    backend: &RefCell<B>,
    advert: Advert<'_>,
    bufs: DiscoveryBuffers<'_>,
) -> !
where
    B: GpuBackend + ?Sized,
    C: Crc32,
{
    let mut socket = UdpSocket::new(stack, bufs.rx_meta, bufs.rx, bufs.tx_meta, bufs.tx);
    while socket.bind(port).is_err() {
        Timer::after(ACCEPT_RETRY).await;
    }
    let (mut rx, mut tx) = ([0u8; MAX_DATAGRAM], [0u8; MAX_DATAGRAM]);
    let (mut window, mut answered) = (Instant::now(), 0u32);
    loop {
        let Ok((len, meta)) = socket.recv_from(&mut rx).await else { continue };
        let Ok(probe) = Discover::parse::<C>(&rx[..len]) else { continue };
        let now = Instant::now();
        if now.duration_since(window) >= Duration::from_secs(1) {
            (window, answered) = (now, 0);
        }
        if answered >= DISCOVERY_REPLIES_PER_SECOND {
            continue;
        }
        answered += 1;
        let (info, usage) = {
            let backend = backend.borrow();
            (backend.info(), backend.usage())
        };
        let announce = Announce::new(
            probe.nonce,
            advert.node_id,
            advert.port,
            info.backend,
            advert.key.is_some(),
            info.total,
            info.total.saturating_sub(usage.used),
            &info.name,
        );
        // A device name is at most 64 bytes, so the datagram always fits and is smaller than
        // the padded probe; skip it if not.
        if let Ok(n) = announce.emit::<C>(advert.key, &mut tx)
            && n <= len
        {
            let _ = socket.send_to(&tx[..n], meta.endpoint).await;
        }
    }
}
