//! Test data shared by the workspace's tests (a dev-dependency, and the conformance suite's):
//! deterministic byte patterns, the little-endian `f32` buffers the kernels read and write,
//! scratch directories, which generation kernels a backend lacks ([`kernels`]), and the
//! ordering checks for backends that queue device work ([`queued`]).
//!
//! One copy of each helper, so that every test means the same thing by "a pattern".

pub mod kernels;
pub mod queued;

/// `len` deterministic pseudo-random bytes (xorshift32) for round-trip checks: different seeds
/// give different sequences, and no byte value is favoured, so a misplaced, shifted or
/// zeroed range shows.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `len` deterministic small whole `f32` values in `-8.0..=8.0`: sums of a few of their
/// products are exact, so kernel results compare bit for bit.
pub fn small_floats(seed: u32, len: usize) -> Vec<f32> {
    pattern(seed, len).iter().map(|b| f32::from(b % 17) - 8.0).collect()
}

/// The little-endian bytes of `values`, as a buffer holds them.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The `f32` values in little-endian `bytes` (a trailing partial value is ignored).
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A fresh empty directory under the system's temporary directory, removed when dropped: for
/// tests that keep files (a node's state directory, a client's known-nodes store). `tag` names
/// it; the process id and a counter keep parallel tests apart.
#[derive(Debug)]
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    /// Makes the directory.
    ///
    /// # Panics
    /// When the directory cannot be made (a test cannot go on without it).
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rela-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot make {}: {e}", path.display()));
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_are_repeatable() {
        assert_eq!(pattern(1, 64), pattern(1, 64));
        assert_ne!(pattern(1, 64), pattern(2, 64));
        assert_eq!(pattern(7, 10), pattern(7, 100)[..10]);
        let p = pattern(3, 4096);
        let distinct = (0..=255u8).filter(|v| p.contains(v)).count();
        assert!(distinct > 200, "{distinct} distinct byte values");
    }

    #[test]
    fn f32_round_trip() {
        let v = [1.5f32, -0.0, f32::MAX, 3.25];
        assert_eq!(f32_bytes(&v).len(), 16);
        assert_eq!(f32_values(&f32_bytes(&v)), v);
        assert_eq!(f32_bytes(&[1.0]), [0, 0, 0x80, 0x3f]);
        assert_eq!(f32_values(&[0, 0, 0x80, 0x3f, 9]), [1.0]);
        assert!(small_floats(5, 100).iter().all(|x| x.fract() == 0.0 && x.abs() <= 8.0));
    }
}
