//! [`FastCrc32`]: the `crc32fast`-backed implementation of the core's CRC seam.

use rela_core::crc32::Crc32;

/// CRC-32/ISO-HDLC through `crc32fast`, which uses PCLMULQDQ (x86) or the ARMv8 CRC
/// instructions when the CPU has them and a slice-by-16 table otherwise.
///
/// Produces exactly the values of [`rela_core::crc32::SoftCrc32`] for every input split; the
/// node and the client both use it for every frame.
#[derive(Clone, Default)]
pub struct FastCrc32(crc32fast::Hasher);

impl Crc32 for FastCrc32 {
    fn new() -> Self {
        Self(crc32fast::Hasher::new())
    }

    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u32 {
        self.0.clone().finalize()
    }
}

impl core::fmt::Debug for FastCrc32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FastCrc32").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore};
    use rela_core::crc32::SoftCrc32;

    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(FastCrc32::checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn equals_soft_crc_on_random_splits() {
        let mut rng = rand::rng();
        for _ in 0..200 {
            let len = rng.random_range(0..20_000);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            let mut fast = FastCrc32::new();
            let mut soft = SoftCrc32::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = rng.random_range(0..=rest.len());
                let (piece, tail) = rest.split_at(n);
                fast.update(piece);
                soft.update(piece);
                assert_eq!(fast.finish(), soft.finish());
                rest = tail;
            }
            assert_eq!(fast.finish(), soft.finish());
            assert_eq!(fast.finish(), SoftCrc32::checksum(&data));
        }
    }
}
