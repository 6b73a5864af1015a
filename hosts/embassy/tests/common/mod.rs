//! A node of `serve_session`s on a loopback TCP port, for the tests that drive it with the
//! std client or raw frames: one session per connection, all on one thread sharing one
//! host-memory backend through a `RefCell`, as embassy tasks would.

#![allow(dead_code, unreachable_pub)]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use embedded_io_adapters::tokio_1::FromTokio;
use rela_backend_host::OwnedHostBackend;
use rela_client::FastCrc32;
use rela_core::backend::GpuBackend;
use rela_core::session::SessionConfig;
use rela_embassy::{DEFAULT_WRITE_TIMEOUT, FrameBuffers, Secrets, SessionEnd, serve_session};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What the node reports once its sessions have ended.
#[derive(Debug)]
pub struct Report {
    /// How each session ended, in the order they ended.
    pub ends: Vec<SessionEnd>,
    /// Bytes the backend still holds.
    pub used: u64,
    /// Whether every byte of the arena is zero again.
    pub arena_zero: bool,
}

/// The node's thread and how to stop it.
pub struct Node {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<usize>,
    thread: std::thread::JoinHandle<Report>,
}

impl Node {
    /// Serves `config` sessions, each with `frame`-byte frame buffers, over an `arena`-byte
    /// arena, on its own thread (the session futures are not `Send`: they share the backend
    /// through a `RefCell`). Every session gets a fresh nonce.
    pub fn spawn(config: SessionConfig, frame: usize, arena: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel::<usize>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let memory = vec![0u8; arena].into_boxed_slice();
                let backend = Rc::new(RefCell::new(OwnedHostBackend::<64>::with_block_table(memory)));
                let ends = Rc::new(RefCell::new(Vec::new()));
                let mut sessions = Vec::new();
                let mut wanted = None;
                // Accept until told to stop and at least the sessions the caller expects came.
                while wanted.is_none_or(|n| sessions.len() < n) {
                    let stream = tokio::select! {
                        n = &mut stopped, if wanted.is_none() => {
                            wanted = Some(n.unwrap());
                            continue;
                        }
                        accepted = listener.accept() => accepted.unwrap().0,
                    };
                    let n = sessions.len() as u8 + 1;
                    let secrets = Secrets { nonce: [n; 32], handle_seed: u32::from(n) << 24 };
                    let (backend, ends, config) = (backend.clone(), ends.clone(), config.clone());
                    sessions.push(tokio::task::spawn_local(async move {
                        let mut stream = FromTokio::new(stream);
                        let (mut rx, mut tx) = (vec![0u8; frame], vec![0u8; frame]);
                        let bufs = FrameBuffers { rx: &mut rx, tx: &mut tx };
                        let end = serve_session::<_, _, FastCrc32>(
                            &mut stream,
                            &*backend,
                            &config,
                            secrets,
                            bufs,
                            DEFAULT_WRITE_TIMEOUT,
                        )
                        .await;
                        ends.borrow_mut().push(end);
                    }));
                }
                for s in sessions {
                    s.await.unwrap();
                }
                let used = backend.borrow().usage().used;
                // Every session task is done, so this is the last handle on the backend.
                let memory = Rc::into_inner(backend).unwrap().into_inner().into_storage();
                let ends = ends.borrow().clone();
                Report { ends, used, arena_zero: memory.iter().all(|&b| b == 0) }
            })
        });
        Self { addr, stop, thread }
    }

    /// Stops accepting once `sessions` connections have come in all told, waits for every
    /// session to end, and reports.
    pub async fn finish(self, sessions: usize) -> Report {
        self.stop.send(sessions).unwrap();
        tokio::task::spawn_blocking(move || self.thread.join().unwrap()).await.unwrap()
    }
}
