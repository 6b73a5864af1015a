//! Leases: a buffer's memory lent to a connection task. A reader gets a buffer's range for
//! the WRITEs into it ([`Granted`]); a writer gets a READ's data to send from where it lies
//! ([`ReadData`]). While a lease is out, the engine runs nothing of that session that could
//! write or free the buffer ([`Leased`] holds its commands back).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rela_core::backend::BufferId;
use rela_core::session::DirectWrite;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::arena::Lease;
use crate::messages::{Command, ConnId, ConnState, EngineTx, WriteOutcome};

/// A READ's data lent to the connection's writer, which sends it from the backend's memory.
/// Dropping it (once sent, or when the connection gives up) hands the lease back.
#[derive(Debug)]
pub(crate) struct ReadData {
    pub(crate) lease: Lease,
    pub(crate) _done: ReadDone,
}

impl ReadData {
    /// The bytes to send.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.lease.as_slice()
    }
}

/// Sends [`Command::ReadDone`] when dropped, over the engine's unbounded queue (so it never
/// waits), whether the data was sent or the connection gave up.
#[derive(Debug)]
pub(crate) struct ReadDone {
    pub(crate) conn: ConnId,
    /// The buffer whose data is lent.
    pub(crate) id: BufferId,
    pub(crate) tx: EngineTx,
}

impl Drop for ReadDone {
    fn drop(&mut self) {
        // Fails only if the engine is gone, and then nothing waits for the lease.
        let _ = self.tx.send(Command::ReadDone { conn: self.conn, id: self.id });
    }
}

/// A buffer lent to a reader for the WRITEs into it: its range, the first WRITE, the engine's
/// call to give it back early, and the way to report WRITEs and end the lease.
#[derive(Debug)]
pub(crate) struct Granted {
    /// The whole buffer.
    pub(crate) lease: Lease,
    /// The WRITE the lease was asked for.
    pub(crate) first: DirectWrite,
    /// Notified when the engine needs the lease back (the session's timer expired, the node is
    /// shutting down): the reader gives it back at once, mid-frame if it must.
    pub(crate) cancel: Arc<Notify>,
    pub(crate) done: Done,
}

/// Reports WRITEs into a leased buffer and ends the lease, over the engine's unbounded queue
/// (so it never waits). Dropped without [`end`](Self::end) (the reader task was cancelled, or
/// the grant never reached it), it ends the lease as broken mid-frame.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) conn: ConnId,
    pub(crate) state: Arc<ConnState>,
    pub(crate) tx: Option<EngineTx>,
}

impl Done {
    /// One WRITE's data is in the buffer; the reply to it holds `ticket`.
    pub(crate) fn written(
        &self,
        write: DirectWrite,
        outcome: WriteOutcome,
        ticket: Option<OwnedSemaphorePermit>,
    ) {
        if let Some(tx) = &self.tx {
            // The engine answers with one reply, which the writer counts out again.
            self.state.inflight.fetch_add(1, Ordering::AcqRel);
            // Fails only if the engine is gone, and then nothing waits for the lease.
            let _ = tx.send(Command::WriteDone { conn: self.conn, write, outcome, ticket });
        }
    }

    /// Gives the lease back: `clean` between frames, otherwise mid-frame.
    pub(crate) fn end(mut self, clean: bool) {
        self.finish(clean);
    }

    fn finish(&mut self, clean: bool) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Command::LeaseEnd { conn: self.conn, clean });
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The leases a connection has out; its session waits for them.
pub(crate) struct Leased {
    /// The buffer lent to the reader for WRITEs.
    pub(crate) write: Option<BufferId>,
    /// READs whose data the writer is sending.
    pub(crate) reads: usize,
    /// Asks the reader to give its WRITE lease back early.
    pub(crate) cancel: Arc<Notify>,
    /// The engine asked for them back: the session closes once they are.
    pub(crate) cancel_requested: bool,
    /// This connection's commands that arrived meanwhile, run once the leases are back.
    pub(crate) deferred: Vec<Command>,
}

impl Leased {
    pub(crate) fn new() -> Self {
        Self {
            write: None,
            reads: 0,
            cancel: Arc::new(Notify::new()),
            cancel_requested: false,
            deferred: Vec::new(),
        }
    }

    /// Asks for the leases back: the reader's (it stops waiting for WRITE data) and the
    /// writer's (it stops sending READ data the peer does not take).
    pub(crate) fn cancel(&mut self, state: Option<&ConnState>) {
        self.cancel_requested = true;
        self.cancel.notify_one();
        if self.reads > 0
            && let Some(state) = state
        {
            state.stop_writer();
        }
    }
}
