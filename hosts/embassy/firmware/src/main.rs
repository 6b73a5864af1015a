//! A RELA node as firmware: embassy's executor, an embassy-net stack, two session listeners and
//! the discovery responder over a host-memory backend in a static 96 KiB arena, 4 KiB frames.
//!
//! What a board adds is marked BOARD: its network driver (here a placeholder channel device
//! whose packets go nowhere), its time driver (here SysTick at 1 kHz) and its RNG. CI links this
//! image for thumbv7em-none-eabihf and prints its flash and RAM use, which is the point: the
//! no_std, no-alloc stack fits a microcontroller.

#![no_std]
#![no_main]

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_executor::Spawner;
use embassy_net::driver::HardwareAddress;
use embassy_net::udp::PacketMetadata;
use embassy_net::{Config, Ipv4Address, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};
use embassy_net_driver_channel as channel;
use embassy_time_queue_utils::Queue;
use rela_backend_host::HostBackend;
use rela_core::config::{DEFAULT_DISCOVERY_PORT, DEFAULT_SESSION_PORT, HEADER_LEN, NONCE_LEN};
use rela_core::crc32::SoftCrc32;
use rela_core::session::SessionConfig;
use rela_embassy::{
    Advert, DEFAULT_WRITE_TIMEOUT, DiscoveryBuffers, FrameBuffers, SocketBuffers, run_discovery, run_listener,
};
use static_cell::StaticCell;

const MTU: usize = 1500;
const ARENA: usize = 96 * 1024;
const FRAME: usize = HEADER_LEN + 4096;
const SOCKET: usize = 4096;
/// Sessions served at once (one listener each).
const LISTENERS: usize = 2;
/// Core clock of the board, for SysTick.
const CORE_HZ: u32 = 16_000_000;

type Backend = RefCell<HostBackend<'static, 16>>;
type Device = channel::Device<'static, MTU>;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No allocator, no formatting: stop where a debugger can see it.
    cortex_m::asm::udf()
}

// ---- BOARD: time driver (SysTick, 1 kHz) ---------------------------------------------------

struct SysTickDriver {
    ticks: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<Queue>>,
}

impl embassy_time_driver::Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let now = self.ticks.borrow(cs).get();
            let mut queue = self.queue.borrow_ref_mut(cs);
            if queue.schedule_wake(at, waker) {
                // Already due: fire now rather than on the next tick.
                queue.next_expiration(now);
            }
        });
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    ticks: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let ticks = DRIVER.ticks.borrow(cs);
        ticks.set(ticks.get() + 1);
        DRIVER.queue.borrow_ref_mut(cs).next_expiration(ticks.get());
    });
}

// ---- BOARD: randomness ------------------------------------------------------------------------

/// 32 random bytes: a session's nonce, and (a second draw) the seed of its buffer handles.
/// BOARD: read the chip's true RNG here; AUTH is only as strong as this. This placeholder (a
/// counter and the tick count) is predictable, so this image runs without AUTH.
fn nonce() -> [u8; NONCE_LEN] {
    static COUNT: Mutex<Cell<u32>> = Mutex::new(Cell::new(0));
    let n = critical_section::with(|cs| {
        let c = COUNT.borrow(cs);
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    let t = embassy_time::Instant::now().as_ticks();
    let mut out = [0u8; NONCE_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (n.rotate_left(i as u32) ^ (t >> (i % 8)) as u32) as u8;
    }
    out
}

// ---- tasks -------------------------------------------------------------------------------------

#[embassy_executor::task]
async fn net(mut runner: Runner<'static, Device>) -> ! {
    runner.run().await
}

/// BOARD: the MAC driver. The placeholder takes every outgoing packet and drops it.
#[embassy_executor::task]
async fn mac(runner: channel::Runner<'static, MTU>) -> ! {
    let (_, _rx, mut tx) = runner.split();
    loop {
        let _packet = tx.tx_buf().await;
        tx.tx_done();
    }
}

#[embassy_executor::task(pool_size = LISTENERS)]
async fn listener(
    stack: Stack<'static>,
    backend: &'static Backend,
    config: &'static SessionConfig,
    sockets: &'static mut [[u8; SOCKET]; 2],
    frames: &'static mut [[u8; FRAME]; 2],
) -> ! {
    let [sock_rx, sock_tx] = sockets;
    let [frame_rx, frame_tx] = frames;
    run_listener::<_, SoftCrc32>(
        stack,
        DEFAULT_SESSION_PORT,
        backend,
        config,
        nonce,
        SocketBuffers { rx: sock_rx, tx: sock_tx },
        FrameBuffers { rx: frame_rx, tx: frame_tx },
        DEFAULT_WRITE_TIMEOUT,
        |_end| {},
    )
    .await
}

#[embassy_executor::task]
async fn discovery(stack: Stack<'static>, backend: &'static Backend) -> ! {
    static META: StaticCell<[PacketMetadata; 8]> = StaticCell::new();
    static BUFS: StaticCell<[[u8; 1024]; 2]> = StaticCell::new();
    let meta = META.init([PacketMetadata::EMPTY; 8]);
    let (rx_meta, tx_meta) = meta.split_at_mut(4);
    let [rx, tx] = BUFS.init([[0; 1024]; 2]);
    // BOARD: a stable id, for example from the chip's unique-id registers.
    let advert = Advert { node_id: [0x42; 16], port: DEFAULT_SESSION_PORT, key: None };
    let bufs = DiscoveryBuffers { rx_meta, rx, tx_meta, tx };
    run_discovery::<_, SoftCrc32>(stack, DEFAULT_DISCOVERY_PORT, backend, advert, bufs).await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    // `take` is `None` only on a second call; this is the first.
    let Some(mut core) = cortex_m::Peripherals::take() else { cortex_m::asm::udf() };
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(CORE_HZ / 1000 - 1);
    core.SYST.clear_current();
    core.SYST.enable_interrupt();
    core.SYST.enable_counter();

    static LINK: StaticCell<channel::State<MTU, 4, 4>> = StaticCell::new();
    let (mac_runner, device) = channel::new(LINK.init(channel::State::new()), HardwareAddress::Ip);
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(Ipv4Address::new(192, 168, 1, 50), 24),
        gateway: None,
        dns_servers: Default::default(),
    });
    static RESOURCES: StaticCell<StackResources<{ LISTENERS + 1 }>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(device, config, RESOURCES.init(StackResources::new()), 0x5eed);

    static ARENA_MEM: StaticCell<[u8; ARENA]> = StaticCell::new();
    static BACKEND: StaticCell<Backend> = StaticCell::new();
    let backend =
        &*BACKEND.init(RefCell::new(HostBackend::with_block_table(&mut ARENA_MEM.init([0; ARENA])[..])));
    static SESSION: StaticCell<SessionConfig> = StaticCell::new();
    let config =
        &*SESSION.init(SessionConfig { max_buffers: 16, quota: ARENA as u64, ..SessionConfig::default() });

    spawner.must_spawn(mac(mac_runner));
    spawner.must_spawn(net(runner));
    // Each listener has its own socket and frame buffers; all share the backend.
    static SOCKETS: StaticCell<[[[u8; SOCKET]; 2]; LISTENERS]> = StaticCell::new();
    static FRAMES: StaticCell<[[[u8; FRAME]; 2]; LISTENERS]> = StaticCell::new();
    let sockets = SOCKETS.init([[[0; SOCKET]; 2]; LISTENERS]);
    let frames = FRAMES.init([[[0; FRAME]; 2]; LISTENERS]);
    for (sockets, frames) in sockets.iter_mut().zip(frames.iter_mut()) {
        spawner.must_spawn(listener(stack, backend, config, sockets, frames));
    }
    spawner.must_spawn(discovery(stack, backend));
}
