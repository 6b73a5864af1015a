//! Continuous batching of language-model decode steps.
//!
//! Every GGUF model the node holds has one [`Batcher`]: a thread that runs the next token of
//! every generation that is waiting for one, across sessions, in one forward pass
//! ([`rela_llm::Model::forward_batch`]), so each weight is read once per step for all of them.
//! A generation's job thread lends its KV cache to the batcher for the step (the cache moves
//! there and back by value; nothing is shared) and waits for its logits, then samples and
//! streams its token as before. Streams join and leave between steps. A generation that is
//! decoding holds a [`Seat`]; when a step arrives, the batcher gathers the steps of the other
//! seated streams (they sample and send their last token between passes) for at most
//! [`GATHER`], then runs whatever it has, at most [`MAX_BATCH`] at a time. Without that wait a
//! pass would start with the first stream back, and the rest would wait a whole pass for the
//! next one: passes of alternating sizes and less of the batching's gain. Prompts are not
//! batched: they run on the generation's own job thread.
//!
//! A pass that fails for one stream (its cache full, say) would fail for all, so the batcher
//! then runs each stream alone and answers each with its own result.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant};

use rela_llm::{ForwardError, KvCache, LoadedLlm};

/// Most streams one pass runs.
pub(crate) const MAX_BATCH: usize = 16;

/// Longest a pass waits, after its first step arrives, for the steps of the other seated
/// streams (a pass of 8 streams of SmolLM2-135M takes about 40 ms on one thread).
pub(crate) const GATHER: Duration = Duration::from_millis(3);

/// One stream's decode step, lent to the batcher.
struct StepJob {
    token: u32,
    cache: KvCache,
    /// The stream's logits buffer, filled by the step.
    logits: Vec<f32>,
    reply: SyncSender<StepDone>,
}

/// The step's outcome, with the cache and the logits buffer given back.
struct StepDone {
    cache: KvCache,
    logits: Vec<f32>,
    result: Result<(), ForwardError>,
}

/// Why a step could not be batched: the batcher's thread is gone (it panicked), or the cache
/// it held with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatcherGone;

/// The batching thread of one model; it ends when the `Batcher` is dropped and the steps in
/// flight are answered.
#[derive(Debug)]
pub(crate) struct Batcher {
    jobs: Sender<StepJob>,
    /// Streams holding a [`Seat`].
    seated: Arc<AtomicUsize>,
}

/// A decoding stream's place at its model's batcher: while it is held, a pass waits (up to
/// [`GATHER`]) for this stream's step. Dropped when the generation ends.
#[derive(Debug)]
pub(crate) struct Seat(Arc<AtomicUsize>);

impl Seat {
    /// Takes a seat among the `seated` streams.
    pub(crate) fn new(seated: Arc<AtomicUsize>) -> Self {
        seated.fetch_add(1, Ordering::AcqRel);
        Self(seated)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Batcher {
    /// Starts the batching thread for `llm`.
    pub(crate) fn start(llm: Arc<LoadedLlm>) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel();
        let seated = Arc::new(AtomicUsize::new(0));
        let count = seated.clone();
        // A compute thread: in the class the process chose (`serve --compute-priority`).
        rela_kernels::fast::priority::spawn("rela-llm-batch".into(), move || run(&llm, &rx, &count))?;
        Ok(Self { jobs, seated })
    }

    /// A seat for a stream that is about to decode: hold it until the generation ends.
    pub(crate) fn seat(&self) -> Seat {
        Seat::new(self.seated.clone())
    }

    /// Runs `token` at the next position of `cache`, its next-token logits into `logits`,
    /// batched with the other streams waiting for a step. On [`BatcherGone`] the cache is
    /// lost (left empty) and the generation cannot go on.
    pub(crate) fn step(
        &self,
        token: u32,
        cache: &mut KvCache,
        logits: &mut Vec<f32>,
    ) -> Result<Result<(), ForwardError>, BatcherGone> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = StepJob {
            token,
            cache: std::mem::replace(cache, KvCache::empty()),
            logits: std::mem::take(logits),
            reply,
        };
        self.jobs.send(job).map_err(|_| BatcherGone)?;
        let done = answer.recv().map_err(|_| BatcherGone)?;
        *cache = done.cache;
        *logits = done.logits;
        Ok(done.result)
    }
}

/// The batching loop: block for one step, gather the other seated streams' steps (for at most
/// [`GATHER`]) and any others already waiting, run them.
fn run(llm: &LoadedLlm, rx: &Receiver<StepJob>, seated: &AtomicUsize) {
    let Ok(model) = llm.model() else {
        tracing::error!("a GGUF model's tensors no longer parse; its generations stop");
        return;
    };
    let vocab = model.config.vocab_size;
    // The pass's logits, one row per stream; kept between passes.
    let mut logits = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + GATHER;
        while jobs.len() < MAX_BATCH && jobs.len() < seated.load(Ordering::Acquire) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let tokens: Vec<u32> = jobs.iter().map(|j| j.token).collect();
        logits.resize(jobs.len() * vocab, 0.0);
        let batched = {
            let mut caches: Vec<&mut KvCache> = jobs.iter_mut().map(|j| &mut j.cache).collect();
            model.forward_batch(&tokens, &mut caches, &mut logits)
        };
        let results: Vec<Result<(), ForwardError>> = match batched {
            Ok(()) => vec![Ok(()); jobs.len()],
            // Nothing ran: each stream alone, with its own outcome.
            Err(_) => jobs
                .iter_mut()
                .zip(logits.chunks_mut(vocab))
                .map(|(j, out)| model.forward(j.token, &mut j.cache, out))
                .collect(),
        };
        if jobs.len() > 1 {
            tracing::trace!(streams = jobs.len(), "batched decode step");
        }
        for ((mut job, row), result) in jobs.into_iter().zip(logits.chunks(vocab)).zip(results) {
            if result.is_ok() {
                job.logits.clear();
                job.logits.extend_from_slice(row);
            }
            // A generation that stopped waiting (its session ended) drops the answer.
            let _ = job.reply.send(StepDone { cache: job.cache, logits: job.logits, result });
        }
    }
}
