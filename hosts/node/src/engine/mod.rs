//! The engine thread: owns the backend and every [`Session`], and runs each input through the
//! core state machine.
//!
//! Connection tasks never touch the backend. They send [`Command`]s over one channel; the engine
//! handles them in arrival order, so each connection's responses come back in request order,
//! and answers with [`Reply`]s on the connection's own channel.
//!
//! Light requests run here, on the engine thread. Requests that may run long become jobs on
//! threads of their own that borrow the backend a bounded turn at a time ([`jobs`]); the engine
//! runs the light requests waiting between any two steps of a job and picks the next turn fairly
//! ([`sched`]). Leases of a buffer's memory to connection tasks are in [`crate::leases`].

pub(crate) mod jobs;
mod output;
pub(crate) mod sched;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rela_client::FastCrc32;
use rela_core::backend::{BackendError, BufferId, DeviceInfo, GpuBackend, KernelCall, QueueId, Usage};
use rela_core::model::ModelHost;
use rela_core::session::{DirectWrite, Session, SessionConfig};
use rela_core::wire::msg::{Alloc, Message};
use rela_core::wire::{ErrorCode, Frame, HeaderRepr, Kind};
use rela_models::ModelRepository;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::Span;

use self::jobs::{BackendBox, JobDone, JobEnv, JobHandle, JobSpec, PartBudget, Raw};
use self::output::drain_from;
pub(crate) use self::output::{ConnInfo, drain, log_events};
use self::sched::Scheduler;
use crate::arena::{DirectMemory, Lease};
pub(crate) use crate::leases::Granted;
use crate::leases::{Done, Leased, ReadData, ReadDone};
use crate::llm::{GenerateLimits, SharedLlms};
pub(crate) use crate::messages::{
    Clock, Command, ConnId, ConnState, EngineTx, INLINE_OUT, INLINE_PAYLOAD, Job, OutBuf, Outcome, Payload,
    Reply, ReplyTx, Status, WriteOutcome,
};
use crate::models::{ProgressSink, SessionModels, StagingBudget};
use crate::shared_models::SharedModels;
use crate::throttle::AuthThrottle;
use rela_core::checked::Checked;

/// Default of [`crate::NodeConfig::max_dispatch_cost`]: multiply-adds one DISPATCH may cost
/// (2³⁴, about 17 G: seconds of work on a CPU, far less on a GPU).
pub const DEFAULT_MAX_DISPATCH_COST: u64 = 1 << 34;

/// Whether a request may run long enough to need a job (see [`jobs`]): a request of a long
/// kind, or an ALLOC of more than one step's bytes ([`jobs::CHUNK`]), since a session commits
/// the memory of every buffer it allocates ([`GpuBackend::commit`]: a host backend faults the
/// pages in, several milliseconds for tens of MiB).
fn is_long(header: &HeaderRepr, payload: &[u8]) -> bool {
    is_long_kind(header.kind)
        || (header.kind == Kind::ALLOC && Alloc::parse(payload).is_ok_and(|a| a.size > jobs::CHUNK))
}

/// Whether every request of `kind` may run long enough to need a job.
const fn is_long_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::DISPATCH
            | Kind::INFER
            | Kind::MODEL_LOAD
            | Kind::MODEL_UNLOAD
            | Kind::MODEL_COMMIT
            | Kind::COPY
            | Kind::FILL
            | Kind::GENERATE
    )
}

/// Whether a request goes to the session's model host.
const fn is_model_request(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::MODEL_LOAD
            | Kind::MODEL_UNLOAD
            | Kind::INFER
            | Kind::MODEL_UPLOAD
            | Kind::MODEL_CHUNK
            | Kind::MODEL_COMMIT
            | Kind::GENERATE
            | Kind::MODEL_LIST
    )
}

/// Stands in for the backend while a job holds it: every call fails. The engine never calls it
/// (commands wait while the backend is away); it exists so that a bug would fail a request
/// instead of touching memory a job is using.
struct Away(DeviceInfo);

impl GpuBackend for Away {
    fn info(&self) -> DeviceInfo {
        self.0.clone()
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
    fn alloc(&mut self, _: u64) -> Result<BufferId, BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn free(&mut self, _: BufferId) -> Result<(), BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn size(&self, _: BufferId) -> Result<u64, BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn write(&mut self, _: BufferId, _: u64, _: &[u8]) -> Result<(), BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn read(&mut self, _: BufferId, _: u64, _: &mut [u8]) -> Result<(), BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn copy(&mut self, _: BufferId, _: u64, _: BufferId, _: u64, _: u64) -> Result<(), BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn fill(&mut self, _: BufferId, _: u64, _: u64, _: u8) -> Result<(), BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn dispatch(&mut self, _: &KernelCall) -> Result<(), BackendError> {
        Err(BackendError::DeviceLost)
    }
    fn commit(&mut self, _: BufferId, _: u64, _: u64) -> Result<(), BackendError> {
        Err(BackendError::DeviceLost)
    }
}

struct Conn {
    state: Arc<ConnState>,
    replies: ReplyTx,
    peer: SocketAddr,
    span: Span,
}

/// The engine's state; lives on its own thread.
pub(crate) struct Engine {
    /// The raw backend behind [`Checked`], which also keeps the lease rule: a buffer lent to a
    /// connection task is never written, and its free waits for the lease to end.
    backend: BackendBox,
    config: SessionConfig,
    sessions: HashMap<ConnId, Conn>,
    /// The model repository, when the node serves models.
    repository: Option<Arc<ModelRepository>>,
    /// Model hosts of sessions that sent a model request. Released when their session ends.
    models: HashMap<ConnId, SessionModels>,
    /// Host memory staging client uploads, shared by every session.
    staging: Arc<StagingBudget>,
    /// Repository models held once for every session that loads them.
    shared: Arc<SharedModels>,
    status: Arc<Status>,
    throttle: Arc<Mutex<AuthThrottle>>,
    /// The backend's storage, when readers may place WRITE data in it themselves.
    direct: Option<DirectMemory>,
    /// Leases out, by connection.
    leases: HashMap<ConnId, Leased>,
    /// A shutdown waiting for the leases to come back and the jobs to end.
    shutdown: Option<Command>,
    /// The session whose job holds the backend now; [`Away`] stands in meanwhile.
    lent: Option<ConnId>,
    /// Commands that arrived while the backend was away, in order.
    pending: VecDeque<Command>,
    /// Running jobs, by connection.
    jobs: HashMap<ConnId, JobHandle>,
    /// Who gets the next turn.
    sched: Scheduler,
    /// What every job is started with.
    env: JobEnv,
    /// Most tokens one INFER may embed ([`crate::NodeConfig::max_infer_tokens`]).
    max_infer_tokens: u64,
    /// GGUF models held once for every session that loads them.
    llms: Arc<SharedLlms>,
    /// The limits on one GENERATE.
    generate: GenerateLimits,
    /// Sessions whose queue the backend was told of ([`GpuBackend::select_queue`]); each is
    /// ended once its session and job are gone.
    queues: HashSet<ConnId>,
}

impl Engine {
    #[allow(clippy::too_many_arguments, reason = "the node's parts, wired once in Node::start")]
    pub(crate) fn new(
        backend: Box<dyn GpuBackend + Send>,
        config: SessionConfig,
        status: Arc<Status>,
        throttle: Arc<Mutex<AuthThrottle>>,
        repository: Option<Arc<ModelRepository>>,
        direct: Option<DirectMemory>,
        engine: EngineTx,
        max_dispatch_cost: u64,
        shared: Arc<SharedModels>,
        max_infer_tokens: u64,
        generate: GenerateLimits,
        activations: rela_llm::Activations,
    ) -> Self {
        let env = JobEnv {
            engine,
            info: backend.info(),
            budget: Arc::new(PartBudget::default()),
            max_cost: max_dispatch_cost,
            wanted: Arc::default(),
        };
        Self {
            lent: None,
            pending: VecDeque::new(),
            jobs: HashMap::new(),
            sched: Scheduler::new(jobs::QUANTUM),
            env,
            direct,
            leases: HashMap::new(),
            shutdown: None,
            backend: Box::new(Checked::new(Raw(backend))),
            config,
            sessions: HashMap::new(),
            repository,
            models: HashMap::new(),
            staging: Arc::default(),
            shared,
            max_infer_tokens,
            llms: Arc::new(SharedLlms::new(activations)),
            generate,
            status,
            throttle,
            queues: HashSet::new(),
        }
    }

    /// Frees and zeroes the models of every session that has ended.
    fn release_models(&mut self) {
        let backend: &mut dyn GpuBackend = &mut *self.backend;
        let sessions = &self.sessions;
        self.models.retain(|conn, models| {
            let live = sessions.contains_key(conn);
            if !live {
                models.release_all(backend);
            }
            live
        });
    }

    /// Tells the backend that the queues of sessions that have ended (and whose job has ended)
    /// name no more work.
    fn end_queues(&mut self) {
        let (sessions, jobs, backend) = (&self.sessions, &self.jobs, &mut self.backend);
        self.queues.retain(|conn| {
            let live = sessions.contains_key(conn) || jobs.contains_key(conn);
            if !live {
                backend.end_queue(QueueId(*conn));
            }
            live
        });
    }

    /// Serves commands until [`Command::Shutdown`] or until every sender is gone. Sessions left
    /// then are aborted, so their buffers are freed and zeroed.
    ///
    /// Each round takes every command already queued; with the backend home it runs the ones
    /// waiting, in order, then lends the backend for the next job turn, if any job wants one.
    pub(crate) fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut open = true;
        let mut stop = false;
        while !stop {
            while open {
                match commands.try_recv() {
                    Ok(cmd) => self.absorb(cmd),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if self.lent.is_none() {
                while let Some(cmd) = self.pending.pop_front() {
                    if self.guarded(cmd) {
                        stop = true;
                        break;
                    }
                    if self.lent.is_some() {
                        break;
                    }
                }
                if stop {
                    break;
                }
                self.release_models();
                self.end_queues();
                self.status.used.store(self.backend.usage().used, Ordering::Relaxed);
                if let Some(conn) = self.sched.next() {
                    self.lend(conn);
                    continue;
                }
            }
            if !open && self.jobs.is_empty() {
                break;
            }
            match commands.blocking_recv() {
                Some(cmd) => self.absorb(cmd),
                None => open = false,
            }
        }
        self.stop_jobs(&mut commands);
        for (_, c) in self.sessions.drain() {
            c.state.lock().abort(&mut *self.backend);
        }
        self.release_models();
        self.shared.release_all(&mut *self.backend);
    }

    /// Takes a command in: turn traffic at once, everything else in order once the backend
    /// is home.
    fn absorb(&mut self, cmd: Command) {
        if self.lent.is_some() && self.waits_on(&cmd) {
            // A request waits: the job steps aside at its next step. (Another job waiting
            // gets its turn when this turn's quantum is over.)
            self.env.wanted.store(true, std::sync::atomic::Ordering::Release);
        }
        match cmd {
            Command::Want { conn } => {
                if self.jobs.contains_key(&conn) {
                    self.sched.want(conn);
                }
            }
            Command::Back { conn, backend, used, again } => {
                self.backend = backend.0;
                self.lent = None;
                self.sched.charge(conn, u64::try_from(used.as_nanos()).unwrap_or(u64::MAX));
                if again && self.jobs.contains_key(&conn) {
                    self.sched.want(conn);
                }
            }
            cmd => self.pending.push_back(cmd),
        }
    }

    /// Whether someone waits on `cmd`, so that a job holding the backend should step aside for
    /// it. Turn traffic does not (another job waits for the turn's end), and neither does a
    /// returned lease (`ReadDone`, `LeaseEnd`) unless its connection has requests held back
    /// behind it or a shutdown waits for it: it is bookkeeping that can wait for the backend's
    /// return, and a light session returns two leases per WRITE and READ.
    fn waits_on(&self, cmd: &Command) -> bool {
        match cmd {
            Command::Back { .. } | Command::Want { .. } => false,
            Command::ReadDone { conn, .. } | Command::LeaseEnd { conn, .. } => {
                self.shutdown.is_some() || self.leases.get(conn).is_some_and(|l| !l.deferred.is_empty())
            }
            _ => true,
        }
    }

    /// Sends the backend to the job of `conn` for one turn.
    fn lend(&mut self, conn: ConnId) {
        let Some(job) = self.jobs.get(&conn) else { return };
        let away: BackendBox = Box::new(Checked::new(Raw(Box::new(Away(self.env.info.clone())))));
        let backend = std::mem::replace(&mut self.backend, away);
        self.env.wanted.store(false, Ordering::Release);
        match job.grant.try_send(backend) {
            Ok(()) => self.lent = Some(conn),
            // The job asked once and waits; a full or closed channel means it is gone.
            Err(std::sync::mpsc::TrySendError::Full(b) | std::sync::mpsc::TrySendError::Disconnected(b)) => {
                self.backend = b;
            }
        }
    }

    /// At the end: cancels every job and waits for them to end, serving their turns.
    fn stop_jobs(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) {
        for job in self.jobs.values() {
            job.cancel.store(true, Ordering::Release);
        }
        while !self.jobs.is_empty() || self.lent.is_some() {
            let Some(cmd) = commands.blocking_recv() else { break };
            match cmd {
                Command::Want { conn } => {
                    self.sched.want(conn);
                    if self.lent.is_none()
                        && let Some(next) = self.sched.next()
                    {
                        self.lend(next);
                    }
                }
                Command::JobDone { conn, done } => {
                    self.jobs.remove(&conn);
                    self.sched.forget(conn);
                    if let Some(m) = done.models {
                        self.models.insert(conn, m);
                    }
                }
                cmd @ Command::Back { .. } => self.absorb(cmd),
                _ => {}
            }
        }
    }

    /// [`handle`](Self::handle), with a panic ending only the session it was about. A panic
    /// while ending that session stops the engine (`true`).
    fn guarded(&mut self, cmd: Command) -> bool {
        let conn = cmd.conn();
        match catch_unwind(AssertUnwindSafe(|| self.handle(cmd))) {
            Ok(stop) => stop,
            Err(p) => {
                let message = jobs::panic_message(&*p);
                tracing::error!(conn, panic = %message, "the engine panicked on a request; ending that session");
                let Some(conn) = conn else { return true };
                catch_unwind(AssertUnwindSafe(|| self.end_session(conn))).is_err()
            }
        }
    }

    /// Ends a session at once (after a panic): frees and zeroes its buffers and closes its
    /// connection.
    fn end_session(&mut self, conn: ConnId) {
        if let Some(job) = self.jobs.get(&conn) {
            job.cancel.store(true, Ordering::Release);
            return;
        }
        self.leases.remove(&conn);
        if let Some(c) = self.sessions.remove(&conn) {
            let mut session = c.state.lock();
            session.abort(&mut *self.backend);
            log_events(&mut session, &c, &self.config, &self.throttle);
            drop(session);
            c.state.set_deadline(None);
            c.state.inflight.fetch_add(1, Ordering::AcqRel);
            let outcome = Outcome { timeout: None, closed: true };
            let _ = c.replies.send(Reply { out: OutBuf::heap(), len: 0, outcome, data: None, _ticket: None });
        }
    }

    /// Starts a job for a long request of `conn`.
    fn start_job(
        &mut self,
        conn: ConnId,
        now: rela_core::time::Instant,
        job: Job,
        out: OutBuf,
        models: Option<SessionModels>,
    ) {
        let Some(c) = self.sessions.get(&conn) else { return };
        let Job { header, payload, ticket, .. } = job;
        if header.kind == Kind::GENERATE {
            // A CANCEL that came before this GENERATE does not stop it.
            c.state.cancel_generation.store(false, Ordering::Release);
        }
        let spec = JobSpec { conn, now, header, payload, out, ticket, state: c.state.clone(), models };
        match jobs::start(&self.env, spec) {
            Some(handle) => {
                self.jobs.insert(conn, handle);
            }
            None => self.end_session(conn),
        }
    }

    /// A job ended: sends its answer, then runs the session's commands that waited for it.
    fn job_done(&mut self, conn: ConnId, done: JobDone) -> bool {
        let job = self.jobs.remove(&conn);
        self.sched.forget(conn);
        let JobDone { out, len, ticket, models, panicked } = done;
        if let Some(m) = models {
            // Kept while the session lives; `release_models` frees it once it ends.
            self.models.insert(conn, m);
        }
        if let Some(message) = panicked {
            if let Some(c) = self.sessions.get(&conn) {
                tracing::error!(parent: &c.span, panic = %message, "a request panicked; ending the session");
            }
            self.end_session(conn);
        } else if let Some(c) = self.sessions.get(&conn) {
            let mut session = c.state.lock();
            log_events(&mut session, c, &self.config, &self.throttle);
            let outcome = Outcome { timeout: session.poll_timeout(), closed: session.is_closed() };
            drop(session);
            c.state.set_deadline(outcome.timeout);
            let replies = if outcome.closed {
                self.sessions.remove(&conn).map(|c| c.replies)
            } else {
                Some(c.replies.clone())
            };
            if let Some(replies) = replies {
                let _ = replies.send(Reply { out, len, outcome, data: None, _ticket: Some(ticket) });
            }
        }
        for cmd in job.map(|j| j.queue).unwrap_or_default() {
            if self.handle(cmd) {
                return true;
            }
        }
        self.try_shutdown()
    }

    /// Carries out a shutdown that waited, once no lease is out and no job runs. `true` to stop.
    fn try_shutdown(&mut self) -> bool {
        if self.leases.is_empty()
            && self.jobs.is_empty()
            && let Some(shutdown) = self.shutdown.take()
        {
            return self.handle(shutdown);
        }
        false
    }

    /// Handles one command; `true` to stop. A command for a connection whose reader holds a
    /// lease waits until the lease is back, and so does a shutdown.
    fn handle(&mut self, cmd: Command) -> bool {
        let cmd = match cmd {
            Command::JobDone { conn, done } => return self.job_done(conn, *done),
            cmd => cmd,
        };
        if let Some(conn) = cmd.conn()
            && !matches!(cmd, Command::WriteDone { .. } | Command::LeaseEnd { .. } | Command::ReadDone { .. })
            && let Some(leased) = self.leases.get_mut(&conn)
        {
            // Another READ may go ahead of READs still being sent (they only read), unless
            // something that waits came before it.
            let read = matches!(&cmd, Command::Frame { job, .. } if job.header.kind == Kind::READ);
            if !(read && leased.write.is_none() && leased.deferred.is_empty()) {
                if let Command::Timeout { now, .. } = &cmd {
                    let expired = self
                        .sessions
                        .get(&conn)
                        .and_then(|c| c.state.lock().poll_timeout())
                        .is_some_and(|at| *now >= at);
                    if !expired {
                        // Not yet: tell the writer the session's deadline so it fires again
                        // then. Only the timer is read; the session gets no input.
                        self.control(conn, |_, _| {});
                        return false;
                    }
                    // Data that does not arrive, or is not taken, in time: stop waiting.
                    leased.cancel(self.sessions.get(&conn).map(|c| &*c.state));
                }
                leased.deferred.push(cmd);
                return false;
            }
        }
        if let Some(conn) = cmd.conn()
            && let Some(job) = self.jobs.get_mut(&conn)
        {
            // The session's job runs: this waits for it (responses stay in order). A session
            // that is going away stops its job at the next step.
            if matches!(cmd, Command::Abort { .. }) {
                job.cancel.store(true, Ordering::Release);
            }
            // A CANCEL stops a generation at its next step; it is answered in its turn.
            if let Command::Frame { job: frame, .. } = &cmd
                && frame.header.kind == Kind::CANCEL
                && let Some(c) = self.sessions.get(&conn)
            {
                c.state.cancel_generation.store(true, Ordering::Release);
            }
            job.queue.push_back(cmd);
            return false;
        }
        if matches!(cmd, Command::Shutdown { .. }) && !(self.leases.is_empty() && self.jobs.is_empty()) {
            for (conn, leased) in &mut self.leases {
                leased.cancel(self.sessions.get(conn).map(|c| &*c.state));
            }
            for job in self.jobs.values() {
                job.cancel.store(true, Ordering::Release);
            }
            self.shutdown = Some(cmd);
            return false;
        }
        match cmd {
            Command::Lease { conn, header, prefix, done, reply } => {
                let Some((first, lease)) = self.grant(conn, &header, &prefix) else {
                    let _ = reply.send(None);
                    return false;
                };
                let Some(c) = self.sessions.get(&conn) else { return false };
                // Recorded first: a grant that never reaches the reader still ends through
                // its `Done`, which then finds the lease here.
                let leased = self.leases.entry(conn).or_insert_with(Leased::new);
                leased.write = Some(first.id);
                let cancel = leased.cancel.clone();
                let done = Done { conn, state: c.state.clone(), tx: Some(done) };
                let _ = reply.send(Some(Granted { lease, first, cancel, done }));
            }
            Command::WriteDone { conn, write, outcome, ticket } => {
                self.write_done(conn, write, outcome, ticket)
            }
            Command::LeaseEnd { conn, clean } => {
                if let Some(leased) = self.leases.get_mut(&conn) {
                    if let Some(id) = leased.write.take() {
                        // Frees the buffer now if its session freed it meanwhile.
                        let _ = self.backend.end_lease(id);
                    }
                    if !clean {
                        // Stopped inside a frame: the stream cannot go on.
                        leased.cancel_requested = true;
                    }
                }
                return self.settle(conn);
            }
            Command::ReadDone { conn, id } => {
                if let Some(leased) = self.leases.get_mut(&conn) {
                    leased.reads = leased.reads.saturating_sub(1);
                }
                let _ = self.backend.end_lease(id);
                return self.settle(conn);
            }
            Command::Open { conn, peer, span, state, replies } => {
                // Its queue is ended once the session and its job are gone (`end_queues`).
                self.queues.insert(conn);
                tracing::debug!(parent: &span, "session opened");
                self.sessions.insert(conn, Conn { state, replies, peer, span });
                self.control(conn, |_, _| {});
            }
            Command::Frame { conn, now, job } => {
                let Job { header, payload, out, done, ticket } = job;
                let mut out = out.map_or(OutBuf::Inline([0; INLINE_OUT]), OutBuf::Pooled);
                // DEVICE_INFO and STATS report the shared model memory, which the model host knows.
                let reports_shared = matches!(header.kind, Kind::DEVICE_INFO | Kind::STATS);
                let mut models = if is_model_request(header.kind) || reports_shared {
                    Some(self.models.remove(&conn).unwrap_or_else(|| {
                        let sink = self
                            .sessions
                            .get(&conn)
                            .map(|c| ProgressSink { replies: c.replies.clone(), state: c.state.clone() });
                        SessionModels::new(
                            self.repository.clone(),
                            self.staging.clone(),
                            self.shared.clone(),
                            self.max_infer_tokens,
                            sink,
                            self.llms.clone(),
                            self.generate,
                        )
                    }))
                } else {
                    None
                };
                let body = payload.as_slice().get(..header.len as usize).unwrap_or_default();
                if is_long(&header, body) && self.sessions.contains_key(&conn) {
                    let job = Job { header, payload, out: None, done, ticket };
                    self.start_job(conn, now, job, out, models);
                    return false;
                }
                // The reader counted this frame as in flight when it sent it.
                let stepped = self.step(conn, &mut out, false, done, |session, backend| {
                    match payload.as_slice().get(..header.len as usize) {
                        Some(p) => {
                            // Err only if the session is closing; it is then removed below.
                            let frame = Frame::from_verified(header, p);
                            let _ = match models.as_mut() {
                                Some(m) => session.handle_frame_with(now, frame, backend, m),
                                None => session.handle_frame(now, frame, backend),
                            };
                        }
                        // The connection always fills the payload; treat a short one as broken.
                        None => session.abort(backend),
                    }
                    // The payload's buffer goes back to the pool before the response is sent.
                    drop(payload);
                });
                if let Some(m) = models {
                    // Kept while the session lives; `release_models` frees it once it ends.
                    self.models.insert(conn, m);
                }
                if let Some(Stepped { len, outcome, replies, data }) = stepped {
                    let _ = replies.send(Reply { out, len, outcome, data, _ticket: Some(ticket) });
                }
            }
            Command::FrameError { conn, now, error } => {
                if let Some(c) = self.sessions.get(&conn) {
                    tracing::debug!(parent: &c.span, %error, "framing error");
                }
                self.control(conn, |session, backend| {
                    let _ = session.handle_frame_error(now, error, backend);
                });
            }
            Command::Timeout { conn, now } => {
                self.control(conn, |session, backend| session.handle_timeout(now, backend));
            }
            Command::Abort { conn } => {
                if let Some(c) = self.sessions.remove(&conn) {
                    let mut session = c.state.lock();
                    session.abort(&mut *self.backend);
                    log_events(&mut session, &c, &self.config, &self.throttle);
                }
            }
            Command::Usage { reply } => {
                let _ = reply.send(self.backend.usage());
            }
            // Taken in by `absorb` and the top of `handle`, never here.
            other @ (Command::Want { .. } | Command::Back { .. } | Command::JobDone { .. }) => {
                self.absorb(other)
            }
            Command::Shutdown { reply } => {
                let ids: Vec<ConnId> = self.sessions.keys().copied().collect();
                for conn in ids {
                    self.control(conn, |session, backend| {
                        session.close_with(ErrorCode::SHUTTING_DOWN, "node shutting down", backend);
                    });
                }
                // Every session is closed: their models go, then the shared (and preloaded) ones.
                self.release_models();
                self.shared.release_all(&mut *self.backend);
                let _ = reply.send(self.backend.usage());
                return true;
            }
        }
        false
    }

    /// Lends the range of a WRITE's data to the connection's reader, if the backend's storage
    /// is shared and the session accepts the WRITE as it stands.
    fn grant(&mut self, conn: ConnId, header: &HeaderRepr, prefix: &[u8]) -> Option<(DirectWrite, Lease)> {
        let direct = self.direct.as_ref()?;
        if self.shutdown.is_some() {
            return None;
        }
        let c = self.sessions.get(&conn)?;
        let write = c.state.lock().begin_write(header, prefix, &*self.backend)?;
        let size = self.backend.size(write.id).ok()?;
        let range = self.backend.storage_range(write.id, 0, size)?;
        self.backend.lease(write.id).ok()?;
        // SAFETY: `range` is where the backend keeps a live buffer of this session
        // (`storage_range` of the buffer `begin_write` found in its slots). Until the lease
        // comes back (`LeaseEnd`, which ends the backend's lease too), `Checked` refuses every
        // write of the buffer and defers its free, so its range stays this buffer's and nothing
        // else touches it; `handle` also runs no input of this session meanwhile (its commands
        // wait in `deferred`; the reader sends only WRITEs into this buffer); no other session
        // can name the buffer; and the backend only touches the ranges of the buffers a call
        // names (`rela_backend_host::Arena`).
        let lease = unsafe { direct.lease(range) };
        Some((write, lease))
    }

    /// A WRITE's data is in the leased buffer: acknowledges it (the session checks it again),
    /// or closes the session on a bad CRC.
    fn write_done(
        &mut self,
        conn: ConnId,
        write: DirectWrite,
        outcome: WriteOutcome,
        ticket: Option<OwnedSemaphorePermit>,
    ) {
        let leased = self.leases.get(&conn).and_then(|l| l.write);
        match outcome {
            WriteOutcome::Written(now) => self.reply_to(conn, ticket, |session, backend| {
                // A WRITE outside the lease, or one the session no longer takes, cannot
                // happen; if it did, nothing of it is acknowledged.
                if leased != Some(write.id) || session.finish_write(now, &write).is_err() {
                    session.abort(backend);
                }
            }),
            WriteOutcome::BadCrc(now, error) => self.reply_to(conn, ticket, |session, backend| {
                let _ = session.handle_frame_error(now, error, backend);
            }),
        }
    }

    /// Once a connection has no lease out: runs its commands that waited, closes its session if
    /// the leases were asked back (the stream stopped mid-frame, its timer expired, the node is
    /// stopping), and carries out a shutdown that waited for the last lease. `true` to stop.
    ///
    /// A session whose leases were asked back gets no new lease: a WRITE among the commands
    /// that waited is told to come the usual way, so the close cannot free a buffer that was
    /// just lent.
    fn settle(&mut self, conn: ConnId) -> bool {
        if self.leases.get(&conn).is_some_and(|l| l.write.is_none() && l.reads == 0)
            && let Some(leased) = self.leases.remove(&conn)
        {
            for cmd in leased.deferred {
                if leased.cancel_requested
                    && let Command::Lease { reply, .. } = cmd
                {
                    let _ = reply.send(None);
                    continue;
                }
                if self.handle(cmd) {
                    return true;
                }
            }
            if leased.cancel_requested {
                // Whatever the commands above did (a READ may have been lent again), the
                // session ends; a lease taken meanwhile holds the close until it is back.
                if let Some(again) = self.leases.get_mut(&conn) {
                    again.cancel_requested = true;
                    again.cancel(self.sessions.get(&conn).map(|c| &*c.state));
                } else if self.sessions.contains_key(&conn) {
                    let shutting_down = self.shutdown.is_some();
                    self.control(conn, |session, backend| {
                        if shutting_down {
                            session.close_with(ErrorCode::SHUTTING_DOWN, "node shutting down", backend);
                        } else {
                            session.abort(backend);
                        }
                    });
                }
            }
        }
        self.try_shutdown()
    }

    /// Runs `input` on a session and answers with its output, holding `ticket` (the reply the
    /// reader counted in flight).
    fn reply_to(
        &mut self,
        conn: ConnId,
        ticket: Option<OwnedSemaphorePermit>,
        input: impl FnOnce(&mut Session, &mut dyn GpuBackend),
    ) {
        let mut out = OutBuf::Inline([0; INLINE_OUT]);
        if let Some(Stepped { len, outcome, replies, data }) = self.step(conn, &mut out, false, None, input) {
            let _ = replies.send(Reply { out, len, outcome, data, _ticket: ticket });
        }
    }

    /// Runs `input` on a session and sends whatever it produced as a reply without a slot.
    fn control(&mut self, conn: ConnId, input: impl FnOnce(&mut Session, &mut dyn GpuBackend)) {
        let mut out = OutBuf::heap();
        if let Some(Stepped { len, outcome, replies, data }) = self.step(conn, &mut out, true, None, input) {
            let _ = replies.send(Reply { out, len, outcome, data, _ticket: None });
        }
    }

    /// Runs `input` on the session of `conn`, drains its output into `out`, handles its events
    /// and removes it once closed. Returns the output length, the outcome and the reply channel,
    /// or `None` if the connection has no session. With `count`, counts the reply as in flight
    /// (replies to frames were counted by the reader already).
    ///
    /// With `done` (the engine's queue, for a READ), READ data the session answers with is lent to the
    /// writer ([`ReadData`]) instead of copied into `out`, when the backend's storage is shared.
    fn step(
        &mut self,
        conn: ConnId,
        out: &mut OutBuf,
        count: bool,
        done: Option<EngineTx>,
        input: impl FnOnce(&mut Session, &mut dyn GpuBackend),
    ) -> Option<Stepped> {
        let c = self.sessions.get(&conn)?;
        let checked: &mut Checked<Raw> = &mut self.backend;
        // What the session allocates goes on its own queue (a CUDA stream per session).
        checked.select_queue(QueueId(conn));
        let mut session = c.state.lock();
        input(&mut session, checked);
        let mut start = 0;
        let mut data = None;
        if let (Some(direct), Some(tx), None) = (self.direct.as_ref(), done, self.shutdown.as_ref())
            && let Some(pending) = session.peek_read()
            && let Some(range) = checked.storage_range(pending.id, pending.offset, u64::from(pending.len))
            && checked.lease(pending.id).is_ok()
        {
            // SAFETY: `range` holds the data of a READ the session answers from a live buffer of
            // its own (`peek_read`, `storage_range`). Until this lease comes back (`ReadDone`,
            // which ends the backend's lease too), `Checked` refuses every write of the buffer
            // and defers its free, so the bytes stay where they are and unchanged; `handle` also
            // runs nothing of this session but further READs (which only read) meanwhile; no
            // other session can name it; and the backend only touches the ranges a call names.
            let lease = unsafe { direct.lease(range) };
            match session.transmit_read_header::<FastCrc32>(lease.as_slice(), out.as_mut_slice()) {
                Ok(t) => {
                    start = t.len;
                    let leased = self.leases.entry(conn).or_insert_with(Leased::new);
                    leased.reads += 1;
                    data = Some(ReadData { lease, _done: ReadDone { conn, id: pending.id, tx } });
                }
                Err(_) => {
                    drop(lease);
                    let _ = checked.end_lease(pending.id);
                }
            }
        }
        let backend: &mut dyn GpuBackend = checked;
        let len = match drain_from(&mut session, backend, out, start) {
            Ok(len) => len,
            Err(e) => {
                tracing::error!(parent: &c.span, %e, "response does not fit; aborting session");
                // Nothing is sent: READ data lent above goes back before the buffers are freed.
                // (Unreachable with a lease: `peek_read` lends only the one pending frame.)
                data = None;
                session.abort(backend);
                0
            }
        };
        log_events(&mut session, c, &self.config, &self.throttle);
        let outcome = Outcome { timeout: session.poll_timeout(), closed: session.is_closed() };
        c.state.set_deadline(outcome.timeout);
        if count {
            // Counted while the session is locked, so the fast path sees it.
            c.state.inflight.fetch_add(1, Ordering::AcqRel);
        }
        drop(session);
        let replies =
            if outcome.closed { self.sessions.remove(&conn).map(|c| c.replies)? } else { c.replies.clone() };
        Some(Stepped { len, outcome, replies, data })
    }
}

/// What [`Engine::step`] produced: `len` bytes of frames, what to do after, where to send
/// them, and READ data to send behind them.
struct Stepped {
    len: usize,
    outcome: Outcome,
    replies: ReplyTx,
    data: Option<ReadData>,
}

impl ConnInfo for Conn {
    fn span(&self) -> &Span {
        &self.span
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }
}
