//! The compression pipeline of bulk sends (WRITE and MODEL_CHUNK data while LZ4 is in use):
//! the frames after the one on the wire are compressed on blocking threads meanwhile, so
//! compressing and sending overlap instead of taking turns.
//!
//! The pipeline is bounded: at most [`DEPTH`] frames are being compressed ahead of the one the
//! caller sends, each with its own input copy and output buffer, and those buffers are reused
//! frame after frame (and call after call, while the [`Deflater`] lives). Every frame keeps the
//! rule of [`crate::compress::deflate`]: compressed when that pays, else sent plain from the
//! caller's data.

use std::collections::VecDeque;

use tokio::task::JoinHandle;

use crate::compress::{deflate_whole, worth_trying};

/// Frames compressed ahead of the one being sent, at most.
pub(crate) const DEPTH: usize = 2;

/// A frame's input copy and its compressed output, travelling to a compression thread and back.
#[derive(Debug, Default)]
struct Buffers {
    input: Vec<u8>,
    out: Vec<u8>,
}

/// One frame of the caller's data, in order.
#[derive(Debug)]
enum Job {
    /// Not worth compressing (short, or a sample that does not shrink): sent plain.
    Plain { pos: usize, len: usize },
    /// Being compressed; the task answers whether compressing paid.
    Running { pos: usize, len: usize, task: JoinHandle<(Buffers, bool)> },
}

/// A frame ready to send: `data[pos..pos + len]` of the caller's data, compressed or not.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Where the frame's data starts in the caller's data.
    pub(crate) pos: usize,
    /// Bytes of the caller's data the frame carries.
    pub(crate) len: usize,
    /// The buffers, when a compression thread had them; the output holds the compressed
    /// payload data (`raw_len`, then the LZ4 block) when `compressed`.
    buffers: Option<Buffers>,
    compressed: bool,
}

impl Frame {
    /// The compressed payload data, or [`None`]: send the caller's `data[pos..pos + len]`
    /// plain.
    pub(crate) fn compressed(&self) -> Option<&[u8]> {
        self.buffers.as_ref().filter(|_| self.compressed).map(|b| b.out.as_slice())
    }
}

/// Compresses the frames of one transfer ahead of sending them ([module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct Deflater {
    /// Payload data per frame.
    chunk: usize,
    /// Bytes of the caller's data handed to the pipeline so far.
    queued: usize,
    jobs: VecDeque<Job>,
    /// Buffers back from finished frames, for the next ones (at most `DEPTH + 1`).
    spare: Vec<Buffers>,
    /// Output of the sample each frame is first tried on, here.
    sample: Vec<u8>,
}

impl Deflater {
    /// Starts a transfer cut into frames of `chunk` bytes of data (at least 1), forgetting
    /// any frames of an earlier transfer that ended early (their threads finish on their own,
    /// each within one frame's compression).
    pub(crate) fn begin(&mut self, chunk: usize) {
        self.chunk = chunk.max(1);
        self.queued = 0;
        self.jobs.clear();
    }

    /// The next frame of `data` (the same slice on every call of a transfer), waiting for its
    /// compression if need be; [`None`] once every byte was handed out. Keeps [`DEPTH`] frames
    /// compressing behind it, so they progress while the caller sends this one.
    pub(crate) async fn next(&mut self, data: &[u8]) -> Option<Frame> {
        self.fill(data);
        let frame = match self.jobs.pop_front()? {
            Job::Plain { pos, len } => Frame { pos, len, buffers: None, compressed: false },
            Job::Running { pos, len, task } => match task.await {
                Ok((buffers, compressed)) => Frame { pos, len, buffers: Some(buffers), compressed },
                // The compression thread panicked or the runtime is going away: the data is
                // still the caller's, so the frame goes plain.
                Err(e) => {
                    tracing::warn!(error = %e, "compressing a frame failed; sending it plain");
                    Frame { pos, len, buffers: None, compressed: false }
                }
            },
        };
        self.fill(data);
        Some(frame)
    }

    /// Takes back a sent frame's buffers for the frames to come.
    pub(crate) fn recycle(&mut self, frame: Frame) {
        if let Some(b) = frame.buffers
            && self.spare.len() <= DEPTH
        {
            self.spare.push(b);
        }
    }

    /// Queues frames of `data` until [`DEPTH`] are queued ahead. Each is first tried here on a
    /// sample ([`worth_trying`]): one that is short or does not compress (random data) is
    /// queued to go plain without a copy or a thread; the others go to a compression thread.
    fn fill(&mut self, data: &[u8]) {
        while self.jobs.len() < DEPTH && self.queued < data.len() {
            let pos = self.queued;
            let len = self.chunk.min(data.len() - pos);
            self.queued += len;
            let piece = &data[pos..pos + len];
            if !worth_trying(piece, &mut self.sample) {
                self.jobs.push_back(Job::Plain { pos, len });
                continue;
            }
            let mut buffers = self.spare.pop().unwrap_or_default();
            buffers.input.clear();
            buffers.input.extend_from_slice(piece);
            let task = tokio::task::spawn_blocking(move || {
                let paid = deflate_whole(&buffers.input, &mut buffers.out);
                (buffers, paid)
            });
            self.jobs.push_back(Job::Running { pos, len, task });
        }
    }
}

#[cfg(test)]
mod tests {
    use rela_core::wire::Kind;
    use rela_core::wire::compress::Compressed;

    use super::*;

    /// Frames come out in order, covering the data exactly; compressible ones compressed (and
    /// inflating to their data), random ones and a short tail plain; never more than `DEPTH`
    /// frames queued ahead.
    #[tokio::test]
    async fn frames_in_order_compressed_where_it_pays() {
        let chunk = 64 * 1024 + 3;
        let mut x = 0x2545_f491_u32;
        let mut data = Vec::new();
        for i in 0..7 {
            if i % 2 == 0 {
                data.extend((0..chunk).map(|j| b"relay frames "[j % 13]));
            } else {
                data.extend((0..chunk).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                }));
            }
        }
        data.extend_from_slice(b"short tail");
        let mut d = Deflater::default();
        for _round in 0..2 {
            d.begin(chunk);
            let (mut at, mut seen) = (0, Vec::new());
            while let Some(frame) = d.next(&data).await {
                assert!(d.jobs.len() <= DEPTH);
                assert_eq!(frame.pos, at);
                let plain = &data[frame.pos..frame.pos + frame.len];
                match frame.compressed() {
                    Some(z) => {
                        let c = Compressed::parse(Kind::READ, true, z, u32::MAX)
                            .expect("layout (a READ answer has no prefix)");
                        let mut back = vec![0u8; plain.len()];
                        assert_eq!(c.inflate(&mut back), Ok(plain.len()));
                        assert!(back == plain, "frame at {at} inflates to other bytes");
                        seen.push(true);
                    }
                    None => seen.push(false),
                }
                at += frame.len;
                d.recycle(frame);
            }
            assert_eq!(at, data.len());
            assert_eq!(seen, [true, false, true, false, true, false, true, false]);
            assert!(d.spare.len() <= DEPTH + 1);
        }
    }

    /// A transfer abandoned halfway leaves nothing queued for the next one.
    #[tokio::test]
    async fn begin_forgets_an_abandoned_transfer() {
        let data = vec![0u8; 10 * 4096];
        let mut d = Deflater::default();
        d.begin(4096);
        let first = d.next(&data).await.expect("a frame");
        assert_eq!((first.pos, first.len), (0, 4096));
        d.begin(8192);
        let again = d.next(&data).await.expect("a frame");
        assert_eq!((again.pos, again.len), (0, 8192));
        assert!(again.compressed().is_some());
    }
}
