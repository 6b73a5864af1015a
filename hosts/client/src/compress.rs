//! LZ4 for compressed payloads (`rela_core::wire::compress`): compressing only when it pays,
//! shared by the client (WRITE and MODEL_CHUNK data) and the node (READ answers).

use rela_core::wire::compress::RAW_LEN_FIELD;

/// Data shorter than this is always sent plain: the saving could not pay for the work.
pub const MIN_COMPRESS: usize = 1024;
/// Data longer than this is first tried on a sample of this size; when the sample does not
/// shrink to [`PROBE_RATIO`], the whole is sent plain without compressing the rest.
pub const PROBE: usize = 64 * 1024;
/// A sample must shrink to at most this fraction (numerator over 16) to try the whole.
pub const PROBE_RATIO: usize = 14;
/// The whole must shrink to at most this fraction (numerator over 16) to be sent compressed.
pub const KEEP_RATIO: usize = 14;

/// Compresses `data` into `out` as the data part of a compressed payload: `raw_len` (`u32`),
/// then one LZ4 block. Returns `false`, with `out` unspecified, when compression does not pay
/// (short data, a poor sample, a poor result) or `data` is longer than `u32::MAX`: send it plain.
/// The same as [`worth_trying`] then [`deflate_whole`].
pub fn deflate(data: &[u8], out: &mut Vec<u8>) -> bool {
    worth_trying(data, out) && deflate_whole(data, out)
}

/// Whether `data` is worth compressing whole: long enough, at most `u32::MAX` bytes, and, when
/// longer than twice [`PROBE`], a first sample of [`PROBE`] bytes shrinks to [`PROBE_RATIO`].
/// `scratch` holds the sample's output (unspecified afterwards). Cheap: it compresses at most
/// [`PROBE`] bytes, so a caller can run it before handing `data` to another thread.
pub fn worth_trying(data: &[u8], scratch: &mut Vec<u8>) -> bool {
    if u32::try_from(data.len()).is_err() || data.len() < MIN_COMPRESS {
        return false;
    }
    if data.len() > 2 * PROBE {
        let sample = &data[..PROBE];
        scratch.resize(lz4_flex::block::get_maximum_output_size(PROBE), 0);
        match lz4_flex::block::compress_into(sample, scratch) {
            Ok(n) if n * 16 <= PROBE * PROBE_RATIO => {}
            _ => return false,
        }
    }
    true
}

/// [`deflate`] without the sample: compresses all of `data` into `out` and returns whether the
/// result pays ([`KEEP_RATIO`]); `false`, with `out` unspecified, also for data longer than
/// `u32::MAX`.
pub fn deflate_whole(data: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(raw_len) = u32::try_from(data.len()) else { return false };
    out.resize(RAW_LEN_FIELD + lz4_flex::block::get_maximum_output_size(data.len()), 0);
    out[..RAW_LEN_FIELD].copy_from_slice(&raw_len.to_le_bytes());
    match lz4_flex::block::compress_into(data, &mut out[RAW_LEN_FIELD..]) {
        Ok(n) if (RAW_LEN_FIELD + n) * 16 <= data.len() * KEEP_RATIO => {
            out.truncate(RAW_LEN_FIELD + n);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use rela_core::wire::Kind;
    use rela_core::wire::compress::Compressed;

    use super::*;

    #[test]
    fn compresses_only_what_pays() {
        let mut out = Vec::new();
        let zeros = vec![0u8; 300_000];
        assert!(deflate(&zeros, &mut out));
        assert!(out.len() < 10_000, "{}", out.len());
        let c = Compressed::parse(Kind::READ, true, &out, u32::MAX).expect("layout");
        let mut back = vec![1u8; zeros.len()];
        assert_eq!(c.inflate(&mut back), Ok(zeros.len()));
        assert_eq!(back, zeros);
        // Random data: refused on the sample.
        let mut x = 0x9e37_79b9_u32;
        let random: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(!deflate(&random, &mut out));
        assert!(!deflate(&random[..5000], &mut out));
        assert!(!deflate(&[0u8; 100], &mut out), "short data stays plain");
        // The two halves: the sample refuses random data that the whole would not shrink
        // either; data whose sample compresses but whose rest does not is refused whole.
        assert!(!worth_trying(&random, &mut out) && !deflate_whole(&random, &mut out));
        let mut half = zeros[..PROBE].to_vec();
        // Random bytes repeat only farther apart than LZ4 looks back (64 KiB).
        for _ in 0..3 {
            half.extend_from_slice(&random);
        }
        assert!(worth_trying(&half, &mut out));
        assert!(!deflate_whole(&half, &mut out) && !deflate(&half, &mut out));
    }
}
