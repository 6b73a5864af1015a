//! LZ4 on a connection (capability LZ4, header flag COMPRESSED): compressed WRITE and
//! MODEL_CHUNK requests are decompressed by the reader before the engine sees them, and READ
//! answers that were asked for compressed are compressed by the writer when that pays.
//!
//! The core decides what a compressed request may become ([`Session::check_compressed`]):
//! LZ4 negotiated, the layout, the decompressed size within the payload cap, and the target
//! range, all before anything is reserved or decompressed. A frame that fails, or whose block
//! does not decode to exactly its declared length, goes to the engine as it came, and the
//! session answers it with the ERROR it deserves; nothing was reserved for it. A frame that
//! passes becomes the plain frame (flags clear) it stands for, which the session checks in full
//! as any other.
//!
//! [`Session::check_compressed`]: rela_core::session::Session::check_compressed

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rela_client::FastCrc32;
use rela_core::config::HEADER_LEN;
use rela_core::wire::compress::Compressed;
use rela_core::wire::{Flags, FrameCrc, HeaderRepr, Kind, RawHeader};

use crate::engine::{ConnState, INLINE_PAYLOAD, OutBuf, Payload, Reply};
use crate::pool::Pool;

/// How often a compressed request that failed its check against the session as it stands
/// looks again whether the requests before it are done.
const RECHECK_POLL: Duration = Duration::from_millis(2);
/// Longest a compressed request waits for the requests before it before it goes to the
/// session as it came.
const RECHECK_WAIT: Duration = Duration::from_secs(60);

/// For each READ on its way through the engine, in order: whether its answer was asked for
/// compressed. Shared by a connection's reader (which pushes) and writer (which pops).
pub(crate) type ReadWishes = Arc<Mutex<VecDeque<bool>>>;

/// Whether a request frame with this header is a compressed WRITE or MODEL_CHUNK.
pub(crate) fn is_compressed_data(header: &HeaderRepr) -> bool {
    header.flags.contains(Flags::COMPRESSED) && matches!(header.kind, Kind::WRITE | Kind::MODEL_CHUNK)
}

/// Decompresses a compressed WRITE or MODEL_CHUNK whose wire payload (CRC checked) is `wire`,
/// once the session accepts it ([`Session::check_compressed`]). `None`: send the frame as it
/// came (the session answers it).
///
/// Checked against the session as it stands, a request may fail only because requests before
/// it are still on their way (an ALLOC of its buffer, earlier chunks); it is checked once more
/// when they are done. The wire payload is in `wire` (not in the pool) while the plain one is
/// reserved, so one connection never waits on the pool for two buffers at once.
///
/// [`Session::check_compressed`]: rela_core::session::Session::check_compressed
pub(crate) async fn inflate(
    state: &ConnState,
    pool: &Arc<Pool>,
    max_payload: u32,
    header: HeaderRepr,
    wire: &[u8],
) -> Option<(HeaderRepr, Payload)> {
    let check = || state.lock().check_compressed(&header, wire);
    let plain = match check() {
        Ok(n) => n,
        Err(_) => {
            let waited = tokio::time::timeout(RECHECK_WAIT, async {
                while state.inflight.load(Ordering::Acquire) != 0 {
                    tokio::time::sleep(RECHECK_POLL).await;
                }
            });
            waited.await.ok()?;
            check().ok()?
        }
    };
    let compressed = Compressed::parse(header.kind, false, wire, max_payload).ok()?;
    let len = u32::try_from(plain).ok()?;
    let payload = if plain <= INLINE_PAYLOAD {
        let mut buf = [0u8; INLINE_PAYLOAD];
        compressed.inflate(&mut buf).ok()?;
        Payload::Inline(buf)
    } else {
        let mut buf = pool.get(plain).await;
        compressed.inflate(buf.as_mut_slice()).ok()?;
        Payload::Pooled(buf)
    };
    Some((HeaderRepr { flags: Flags::NONE, len, crc: 0, ..header }, payload))
}

/// Compresses, in each reply, the READ answers that were asked for compressed, where that
/// pays ([`rela_client::compress::deflate`]); the rest goes as it is. Keeps `wishes` in step:
/// one entry leaves for each answer to a READ (data or ERROR).
pub(crate) fn compress_replies(batch: &mut [Reply], wishes: &ReadWishes) {
    let mut wishes = wishes.lock().unwrap_or_else(PoisonError::into_inner);
    if wishes.is_empty() {
        return;
    }
    for reply in batch {
        compress_reply(reply, &mut wishes);
    }
}

/// One reply: its frames in `out[..len]`, the last one's payload in `data` when that is set.
fn compress_reply(reply: &mut Reply, wishes: &mut VecDeque<bool>) {
    let mut rebuilt: Option<Vec<u8>> = None;
    let mut at = 0;
    let out_len = reply.len;
    while at + HEADER_LEN <= out_len {
        let out = reply.out.as_slice();
        let Some(header) =
            RawHeader::view(&out[at..]).ok().and_then(|raw| HeaderRepr::parse(raw, u32::MAX).ok())
        else {
            return;
        };
        let body_at = at + HEADER_LEN;
        let len = header.len as usize;
        let inline = body_at + len <= out_len;
        let payload = if inline {
            &out[body_at..body_at + len]
        } else {
            match reply.data.as_ref() {
                Some(d) if d.as_slice().len() == len => d.as_slice(),
                _ => return,
            }
        };
        let answers_read = match header.kind {
            Kind::READ => header.flags == Flags::RESPONSE,
            Kind::ERROR => header.seq != 0 && payload.get(2) == Some(&Kind::READ.0),
            _ => false,
        };
        let mut frame = None;
        if answers_read && wishes.pop_front() == Some(true) && header.kind == Kind::READ {
            let mut block = Vec::new();
            if rela_client::compress::deflate(payload, &mut block) {
                frame = Some(compressed_frame(&header, &block));
            }
        }
        match (frame, rebuilt.as_mut()) {
            (Some(f), Some(r)) => r.extend_from_slice(&f),
            (Some(f), None) => {
                let mut r = out[..at].to_vec();
                r.extend_from_slice(&f);
                rebuilt = Some(r);
            }
            (None, Some(r)) => {
                r.extend_from_slice(&out[at..body_at]);
                r.extend_from_slice(payload);
            }
            (None, None) => {}
        }
        if !inline {
            break;
        }
        at = body_at + len;
    }
    if let Some(r) = rebuilt {
        reply.len = r.len();
        reply.out = OutBuf::Heap(r);
        // The data (if lent from the backend) is in `r` now: hand the lease back.
        reply.data = None;
    }
}

/// A READ answer's frame with `block` (raw_len and LZ4 block) as its compressed payload.
fn compressed_frame(plain: &HeaderRepr, block: &[u8]) -> Vec<u8> {
    let mut header = HeaderRepr {
        flags: Flags::RESPONSE.union(Flags::COMPRESSED),
        len: block.len() as u32,
        crc: 0,
        ..*plain
    };
    let mut crc = FrameCrc::<FastCrc32>::new(&header.to_raw());
    crc.update(block);
    header.crc = crc.value();
    let mut frame = vec![0u8; HEADER_LEN + block.len()];
    // The buffer holds a header.
    let _ = header.emit(&mut frame);
    frame[HEADER_LEN..].copy_from_slice(block);
    frame
}
