//! The CRC-32 seam.
//!
//! RELA frames carry a CRC-32/ISO-HDLC (the zlib / Ethernet CRC: polynomial `0x04C11DB7`,
//! reflected, init and xor-out `0xFFFFFFFF`) over header bytes `0..12` followed by the payload.
//! Every place the core computes it goes through the [`Crc32`] trait, so a std host can plug in
//! a SIMD implementation (PCLMULQDQ, ARMv8 CRC) while embedded builds keep the table-driven
//! default, [`SoftCrc32`].

use crc::{CRC_32_ISO_HDLC, Crc, Digest, Table};

/// An incremental CRC-32/ISO-HDLC computation.
///
/// Implementations must produce exactly the value of [`SoftCrc32`] for every input split in any
/// way across [`update`](Crc32::update) calls.
pub trait Crc32 {
    /// A fresh digest.
    fn new() -> Self
    where
        Self: Sized;
    /// Feeds more bytes.
    fn update(&mut self, bytes: &[u8]);
    /// The CRC of everything fed so far.
    fn finish(&self) -> u32;

    /// One-shot helper: the CRC of `bytes`.
    fn checksum(bytes: &[u8]) -> u32
    where
        Self: Sized,
    {
        let mut d = Self::new();
        d.update(bytes);
        d.finish()
    }
}

static SOFT: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISO_HDLC);

/// The default, portable CRC-32: the `crc` crate with 16 lookup tables (slice-by-16).
#[derive(Clone)]
pub struct SoftCrc32(Digest<'static, u32, Table<16>>);

impl Crc32 for SoftCrc32 {
    fn new() -> Self {
        Self(SOFT.digest())
    }

    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u32 {
        self.0.clone().finalize()
    }
}

impl core::fmt::Debug for SoftCrc32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SoftCrc32").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(SoftCrc32::checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn incremental_matches_one_shot() {
        let data: std::vec::Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = SoftCrc32::checksum(&data);
        for split in [0, 1, 15, 16, 17, 999, 1000] {
            let mut d = SoftCrc32::new();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.finish(), whole);
        }
    }
}
