//! What TLS must cost per GiB on this CPU, whatever the code around it: AES-128-GCM sealing
//! and opening 16 KiB records (`aws-lc-rs`, the code the TLS sessions use), in place and, for
//! sealing, out of a 64 MiB buffer into a record (what the sending side does); and, for
//! comparison, copying 16 KiB pieces out of that buffer (what a sender that can only seal in
//! place, as with `ring`, adds).
//! One thread, records that stay in cache, best of five passes over 1 GiB, in the thread's CPU
//! time. `docs/BENCHMARKS.md` (TLS section) compares these with the CPU time a plaintext
//! transfer takes.
//!
//! ```sh
//! cargo run --release -p rela-client --example tls_cost
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::error::Unspecified;

const RECORD: usize = 16 * 1024;
const GIB: usize = 1 << 30;
const PASSES: usize = 5;
/// The buffer the copies come from.
const SOURCE: usize = 64 << 20;

/// The CPU time this thread has run (Linux: `/proc/thread-self/schedstat`), else `None`.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// The fastest of [`PASSES`] runs of `pass`, in ms per GiB: the thread's CPU time where the OS
/// tells it (other processes sharing the cores then do not count), else the wall-clock time.
fn best(mut pass: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..PASSES {
        let (cpu, wall) = (thread_cpu(), Instant::now());
        pass();
        let took = match (cpu, thread_cpu()) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => wall.elapsed(),
        };
        best = best.min(took);
    }
    best.as_secs_f64() * 1000.0
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn main() -> Result<(), Unspecified> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16])?);
    let records = GIB / RECORD;
    let header = [23u8, 3, 3, 0x40, 0x11];
    // The sender copies from a buffer far larger than the caches (the bench's is 64 MiB).
    let src = vec![0x5au8; SOURCE];
    let mut record = vec![0u8; RECORD + 1];

    // What a sender that can only seal in place (as with `ring`) does: copy each record out
    // of the source, then seal it there.
    let mut seq = 0u64;
    let mut failed = false;
    let copy_and_seal = best(|| {
        for piece in src.chunks_exact(RECORD + 1).cycle().take(records) {
            seq += 1;
            record.copy_from_slice(black_box(piece));
            failed |= key.seal_in_place_separate_tag(nonce(seq), Aad::from(header), &mut record).is_err();
            black_box(&mut record);
        }
    });

    // Sealing alone, the record already in cache.
    let seal = best(|| {
        for _ in 0..records {
            seq += 1;
            failed |= key.seal_in_place_separate_tag(nonce(seq), Aad::from(header), &mut record).is_err();
            black_box(&mut record);
        }
    });

    // What the sessions' sender does: each record sealed from where it lies in the source
    // straight into the send buffer (the plaintext, then the inner content type and the tag).
    let mut out = vec![0u8; RECORD + 1 + 16];
    let seal_from = best(|| {
        for piece in src.chunks_exact(RECORD).cycle().take(records) {
            seq += 1;
            let (ciphertext, extra_and_tag) = out.split_at_mut(RECORD);
            failed |= key
                .seal_out_of_place_scatter(
                    nonce(seq),
                    Aad::from(header),
                    black_box(piece),
                    ciphertext,
                    &[23],
                    extra_and_tag,
                )
                .is_err();
            black_box(&mut out);
        }
    });

    // Opening needs records that were sealed: one sealed record, opened again and again from
    // a fresh copy would add a copy, so each pass opens the same ciphertext in place and seals
    // it back (the seal's cost, measured above, is taken off).
    let tag = key.seal_in_place_separate_tag(nonce(0), Aad::from(header), &mut record)?;
    let mut sealed = record.clone();
    sealed.extend_from_slice(tag.as_ref());
    let open_and_seal = best(|| {
        for _ in 0..records {
            let opened = key.open_in_place(nonce(0), Aad::from(header), &mut sealed);
            failed |= opened.is_err();
            let body = sealed.len() - 16;
            match key.seal_in_place_separate_tag(nonce(0), Aad::from(header), &mut sealed[..body]) {
                Ok(tag) => sealed[body..].copy_from_slice(tag.as_ref()),
                Err(_) => failed = true,
            }
        }
    });
    if failed {
        return Err(Unspecified);
    }
    let open = open_and_seal - seal;

    println!("per GiB, one thread, 16 KiB records (best of {PASSES}):");
    println!("  AES-128-GCM seal, record in cache             {seal:7.1} ms");
    println!("  AES-128-GCM open, record in cache             {open:7.1} ms");
    println!("  sender: copy out of 64 MiB, then seal in place {copy_and_seal:7.1} ms");
    println!("  sender: seal out of 64 MiB into the record     {seal_from:7.1} ms");
    println!(
        "  TLS floor, both ends                          {:7.1} ms (the cheaper sender + open)",
        seal_from.min(copy_and_seal) + open
    );
    Ok(())
}
