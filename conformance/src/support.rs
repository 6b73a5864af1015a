//! Helpers shared by the cases: a deterministic PRNG, error context, snapshots; and the backend
//! under test as a factory makes it ([`Tested`]), with the optional view of its raw storage
//! ([`Inspect`]).

use std::fmt::Debug;
use std::ops::Range;

use rela_backend_host::{Arena, HostMemory};
use rela_core::backend::{BackendError, BufferId, GpuBackend, Usage};

use crate::Failure;

/// A view of a backend's raw storage, freed regions included: what lets the suite see what
/// `free` leaves behind. Through [`GpuBackend`] alone a backend that zeroes memory only when it
/// hands it out again looks the same as one that zeroes it when it is freed; only the storage
/// itself tells them apart (case `zero_after_free`).
///
/// Ranges are in the coordinates [`GpuBackend::storage_range`] reports, so a backend with this
/// view answers `storage_range` for its live buffers. The host backend has it
/// ([`HostMemory`], over any arena); a backend without it is tested through [`Tested::opaque`],
/// and the cases that need the view skip there with its reason.
pub trait Inspect: GpuBackend {
    /// Bytes `r` of the storage as they are now, whether or not a live buffer holds them;
    /// `None` if `r` does not lie inside the storage.
    fn storage_bytes(&mut self, r: Range<usize>) -> Option<Vec<u8>>;
}

impl<S: Arena, const N: usize> Inspect for HostMemory<S, N> {
    fn storage_bytes(&mut self, r: Range<usize>) -> Option<Vec<u8>> {
        let storage = self.storage();
        (r.start <= r.end && r.end <= storage.len()).then(|| storage.bytes(r).to_vec())
    }
}

/// Why a backend tested through [`GpuBackend`] alone skips the cases that need [`Inspect`],
/// unless its factory gives a reason of its own ([`Tested::opaque`]).
pub const NO_VIEW: &str = "the backend does not expose its raw storage (rela_conformance::Inspect), so what \
                           free leaves behind cannot be read; realloc_after_free_reads_zero checks what the \
                           next allocation sees";

/// A backend under test, as a factory makes it: used through [`GpuBackend`] only, or also with
/// a view of its raw storage ([`Inspect`]).
///
/// Any boxed [`GpuBackend`] converts into an opaque one (with the reason [`NO_VIEW`]), so a
/// factory returning `Result<Box<dyn GpuBackend>, String>` works as it is.
pub struct Tested(Made);

enum Made {
    Opaque { backend: Box<dyn GpuBackend>, why: String },
    Viewed(Box<dyn Inspect>),
}

impl Tested {
    /// A backend whose raw storage the suite may read.
    pub fn inspectable(backend: impl Inspect + 'static) -> Self {
        Self(Made::Viewed(Box::new(backend)))
    }

    /// A backend used through [`GpuBackend`] only; `why` says why it offers no [`Inspect`]
    /// view (the skip reason of the cases that need one).
    pub fn opaque(backend: Box<dyn GpuBackend>, why: impl Into<String>) -> Self {
        Self(Made::Opaque { backend, why: why.into() })
    }

    /// The backend.
    pub fn backend(&mut self) -> &mut dyn GpuBackend {
        match &mut self.0 {
            Made::Opaque { backend, .. } => &mut **backend,
            Made::Viewed(backend) => &mut **backend,
        }
    }

    /// The backend with its storage view, or why it has none.
    pub fn inspect(&mut self) -> Result<&mut dyn Inspect, &str> {
        match &mut self.0 {
            Made::Opaque { why, .. } => Err(why),
            Made::Viewed(backend) => Ok(&mut **backend),
        }
    }
}

impl Debug for Tested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = matches!(self.0, Made::Viewed(_));
        f.debug_struct("Tested").field("storage_view", &view).finish_non_exhaustive()
    }
}

impl From<Box<dyn GpuBackend>> for Tested {
    fn from(backend: Box<dyn GpuBackend>) -> Self {
        Self::opaque(backend, NO_VIEW)
    }
}

impl From<Box<dyn GpuBackend + Send>> for Tested {
    fn from(backend: Box<dyn GpuBackend + Send>) -> Self {
        Self::opaque(backend, NO_VIEW)
    }
}

impl<B: GpuBackend + 'static> From<Box<B>> for Tested {
    fn from(backend: Box<B>) -> Self {
        Self::opaque(backend, NO_VIEW)
    }
}

/// Returns early with a [`Failure`] built from a format string unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err($crate::Failure(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

/// SplitMix64: tiny, fast, deterministic, and good enough to drive test sequences.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) const fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`; modulo bias is irrelevant here).
    pub(crate) const fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform-ish in `lo..=hi`.
    pub(crate) const fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent / 100`.
    pub(crate) const fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A normal f32 with a random mantissa and a magnitude in `2^-lo_exp..2^hi_exp`, either
    /// sign: never a denormal, infinity or NaN, so every backend must agree bit for bit.
    pub(crate) fn normal_f32(&mut self, lo_exp: i32, hi_exp: i32) -> f32 {
        let bits = self.next_u64();
        let span = (hi_exp + lo_exp) as u64;
        let exp = (127 - lo_exp) as u32 + (bits % span) as u32;
        let mantissa = (bits >> 20) as u32 & 0x7F_FFFF;
        let sign = ((bits >> 63) as u32) << 31;
        f32::from_bits(sign | exp << 23 | mantissa)
    }
}

/// Attaches context to a backend result.
pub(crate) trait Ctx<T> {
    /// `Ok` stays; an error becomes a [`Failure`] naming the operation.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T> Ctx<T> for Result<T, BackendError> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{}: unexpected error {e:?}", what())))
    }
}

/// Checks that `got` is exactly the error `want`.
pub(crate) fn expect_err<T: Debug>(
    what: &str,
    got: Result<T, BackendError>,
    want: BackendError,
) -> Result<(), Failure> {
    match got {
        Err(e) if e == want => Ok(()),
        other => Err(Failure(format!("{what}: expected Err({want:?}), got {other:?}"))),
    }
}

/// Reads a whole buffer.
pub(crate) fn read_all(b: &mut dyn GpuBackend, id: BufferId) -> Result<Vec<u8>, Failure> {
    let size = b.size(id).ctx(|| format!("size of {id:?}"))?;
    let len = usize::try_from(size).map_err(|_| Failure(format!("{id:?} reports size {size}")))?;
    let mut out = vec![0u8; len];
    b.read(id, 0, &mut out).ctx(|| format!("read all of {id:?}"))?;
    Ok(out)
}

/// Usage and the full contents of some buffers, to check that a rejected call changed nothing.
#[derive(Debug, PartialEq)]
pub(crate) struct Snapshot {
    usage: Usage,
    contents: Vec<Vec<u8>>,
}

impl Snapshot {
    pub(crate) fn take(b: &mut dyn GpuBackend, ids: &[BufferId]) -> Result<Self, Failure> {
        let contents = ids.iter().map(|&id| read_all(b, id)).collect::<Result<_, _>>()?;
        Ok(Self { usage: b.usage(), contents })
    }

    /// Fails if anything differs from `self` now.
    pub(crate) fn unchanged(
        &self,
        b: &mut dyn GpuBackend,
        ids: &[BufferId],
        after: &str,
    ) -> Result<(), Failure> {
        let now = Self::take(b, ids)?;
        ensure!(now.usage == self.usage, "{after}: usage changed from {:?} to {:?}", self.usage, now.usage);
        for (i, (was, is)) in self.contents.iter().zip(&now.contents).enumerate() {
            if let Some(at) = first_difference(was, is) {
                return Err(Failure(format!("{after}: buffer {:?} changed at byte {at}", ids[i])));
            }
        }
        Ok(())
    }
}

/// The index of the first differing byte, or of the shorter length if one is a prefix.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

/// Fails with the first differing byte unless `got == want`.
pub(crate) fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), Failure> {
    match first_difference(got, want) {
        None => Ok(()),
        Some(i) => Err(Failure(format!(
            "{what}: byte {i} (of {} read, {} expected) is {:?}, expected {:?}",
            got.len(),
            want.len(),
            got.get(i),
            want.get(i)
        ))),
    }
}

pub(crate) use rela_test_support::{f32_bytes, f32_values};
