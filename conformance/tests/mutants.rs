//! The suite has teeth: backends with one planted bug each fail the cases meant to catch it,
//! and the same wrapper without a bug passes everything.

use std::ops::Range;

use rela_backend_host::{Arena, Around, HostMemory};
use rela_conformance::{CASES, Inspect, Outcome, SUITE_CAPACITY, Tested, case, run_case, run_suite};
use rela_core::backend::{
    BackendError, BinaryOp, BufferId, DeviceInfo, GpuBackend, KernelCall, QueueId, Usage, check_range,
};
use rela_test_support::{f32_bytes, f32_values};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Fresh buffers start with a stray byte.
    DirtyAlloc,
    /// Free forgets to zero: freed bytes stay where they were, and the next buffer there gets
    /// them.
    NoZeroOnFree,
    /// Free forgets to zero, but every allocation zeroes its buffer: nothing stale is ever read
    /// through the backend, yet freed data stays in memory until it is reused.
    ZeroOnAllocOnly,
    /// Free zeroes 256 bytes past the buffer's end too (a rounding bug), into its neighbour.
    ReleaseOverruns,
    /// Usage counts one byte too many once a buffer is live.
    UsageOffByOne,
    /// Out-of-bounds writes are silently clamped to the buffer's end.
    ClampedWrite,
    /// Offset + len is computed with wrapping arithmetic in `fill`.
    WrappingFill,
    /// Freeing an unknown id "succeeds".
    LenientFree,
    /// Overlapping self-copies are accepted (and done with memmove).
    OverlapAllowed,
    /// Copies of odd lengths drop their last byte.
    CopyDropsLastByte,
    /// Past capacity reports InvalidArgument instead of OutOfMemory.
    WrongOomError,
    /// ADD multiplies.
    AddMultiplies,
    /// Binary kernels skip the last element when n > 256.
    ShortGrid,
    /// SCALE ignores alpha's sign.
    ScaleAbs,
    /// MATMUL reads `b` transposed.
    MatmulTransposed,
    /// Aliasing kernel outputs are accepted.
    AliasAllowed,
    /// Reads at offsets ≡ 5 (mod 13) return one wrong byte (a rare bug only random ops hit).
    RareBadRead,
    /// Panics on any fill with the value 0x5A.
    Panics,
    /// Keeps a queue per [`GpuBackend::select_queue`] and runs queued kernels, fills and copies
    /// at the next transfer, queue by queue in the order of their ids rather than in the order
    /// of the calls: queues that lose the order across each other.
    QueuesRunInQueueOrder,
}

/// Work the [`Bug::QueuesRunInQueueOrder`] mutant holds back.
#[derive(Debug, Clone, Copy)]
enum Held {
    Dispatch(KernelCall),
    Fill(BufferId, u64, u64, u8),
    Copy(BufferId, u64, BufferId, u64, u64),
}

/// The host backend's storage, with the planted bugs of `free` ([`Arena::release`]).
struct MutantArena {
    bytes: Box<[u8]>,
    bug: Bug,
}

impl Arena for MutantArena {
    type Inputs<'a> = Around<'a>;

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn zero_all(&mut self) {
        self.bytes.fill(0);
    }

    fn bytes(&self, r: Range<usize>) -> &[u8] {
        &self.bytes[r]
    }

    fn bytes_mut(&mut self, r: Range<usize>) -> &mut [u8] {
        &mut self.bytes[r]
    }

    fn copy_within(&mut self, src: Range<usize>, dst: usize) {
        self.bytes.copy_within(src, dst);
    }

    fn release(&mut self, r: Range<usize>) {
        match self.bug {
            Bug::NoZeroOnFree | Bug::ZeroOnAllocOnly => {}
            Bug::ReleaseOverruns => {
                let end = (r.end + 256).min(self.bytes.len());
                self.bytes[r.start..end].fill(0);
            }
            _ => self.bytes[r].fill(0),
        }
    }

    fn split(&mut self, out: Range<usize>) -> (Around<'_>, &mut [u8]) {
        Arena::split(&mut self.bytes, out)
    }
}

struct Mutant {
    inner: HostMemory<MutantArena>,
    bug: Bug,
    /// The selected queue, and the work held back per queue ([`Bug::QueuesRunInQueueOrder`]).
    queue: u64,
    held: std::collections::BTreeMap<u64, Vec<Held>>,
}

impl Mutant {
    fn boxed(bug: Bug) -> Result<Tested, String> {
        let bytes = vec![0u8; SUITE_CAPACITY as usize].into_boxed_slice();
        let inner = HostMemory::new(MutantArena { bytes, bug });
        Ok(Tested::inspectable(Self { inner, bug, queue: 0, held: Default::default() }))
    }

    /// With [`Bug::QueuesRunInQueueOrder`], holds `work` back on the selected queue once it
    /// has been checked (so errors still come back at once); `false` runs it now.
    fn hold(&mut self, work: Held) -> Result<bool, BackendError> {
        if self.bug != Bug::QueuesRunInQueueOrder {
            return Ok(false);
        }
        let size = |id| self.inner.size(id);
        match work {
            Held::Dispatch(call) => call.validate(|id| size(id).ok())?,
            Held::Fill(id, offset, len, _) => {
                check_range(size(id)?, offset, len)?;
            }
            Held::Copy(src, so, dst, d, len) => {
                check_range(size(src)?, so, len)?;
                check_range(size(dst)?, d, len)?;
                if src == dst && so < d + len && d < so + len {
                    return Err(BackendError::InvalidArgument);
                }
            }
        }
        self.held.entry(self.queue).or_default().push(work);
        Ok(true)
    }

    /// Runs the held work, queue by queue in the order of their ids.
    fn flush(&mut self) -> Result<(), BackendError> {
        for (_, works) in std::mem::take(&mut self.held) {
            for work in works {
                match work {
                    Held::Dispatch(call) => self.inner.dispatch(&call)?,
                    Held::Fill(id, offset, len, value) => self.inner.fill(id, offset, len, value)?,
                    Held::Copy(src, so, dst, d, len) => self.inner.copy(src, so, dst, d, len)?,
                }
            }
        }
        Ok(())
    }

    fn f32s(&mut self, id: BufferId, n: usize) -> Result<Vec<f32>, BackendError> {
        let mut bytes = vec![0u8; n * 4];
        self.inner.read(id, 0, &mut bytes)?;
        Ok(f32_values(&bytes))
    }

    fn put_f32s(&mut self, id: BufferId, v: &[f32]) -> Result<(), BackendError> {
        self.inner.write(id, 0, &f32_bytes(v))
    }
}

impl GpuBackend for Mutant {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    fn usage(&self) -> Usage {
        let mut u = self.inner.usage();
        if self.bug == Bug::UsageOffByOne && u.buffers > 0 {
            u.used += 1;
        }
        u
    }

    fn alloc(&mut self, size: u64) -> Result<BufferId, BackendError> {
        self.flush()?;
        let id = self.inner.alloc(size).map_err(|e| match (self.bug, e) {
            (Bug::WrongOomError, BackendError::OutOfMemory) => BackendError::InvalidArgument,
            _ => e,
        })?;
        match self.bug {
            Bug::DirtyAlloc => self.inner.fill(id, size - 1, 1, 0x5A)?,
            Bug::ZeroOnAllocOnly => self.inner.fill(id, 0, size, 0)?,
            _ => {}
        }
        Ok(id)
    }

    fn free(&mut self, id: BufferId) -> Result<(), BackendError> {
        self.flush()?;
        match self.inner.free(id) {
            Err(BackendError::NoSuchBuffer) if self.bug == Bug::LenientFree => Ok(()),
            r => r,
        }
    }

    fn size(&self, id: BufferId) -> Result<u64, BackendError> {
        self.inner.size(id)
    }

    fn write(&mut self, id: BufferId, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.flush()?;
        match self.inner.write(id, offset, data) {
            Err(BackendError::OutOfBounds) if self.bug == Bug::ClampedWrite => {
                let size = self.inner.size(id)?;
                let offset = offset.min(size);
                let len = (size - offset).min(data.len() as u64) as usize;
                self.inner.write(id, offset, &data[..len])
            }
            r => r,
        }
    }

    fn read(&mut self, id: BufferId, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.flush()?;
        self.inner.read(id, offset, out)?;
        if self.bug == Bug::RareBadRead && offset % 13 == 5 && out.len() > 1 {
            out[1] ^= 0x01;
        }
        Ok(())
    }

    fn copy(&mut self, src: BufferId, so: u64, dst: BufferId, d: u64, len: u64) -> Result<(), BackendError> {
        if self.hold(Held::Copy(src, so, dst, d, len))? {
            return Ok(());
        }
        match self.bug {
            Bug::OverlapAllowed if src == dst => {
                let mut tmp = vec![0u8; len as usize];
                self.inner.read(src, so, &mut tmp)?;
                self.inner.write(dst, d, &tmp)
            }
            Bug::CopyDropsLastByte if len % 2 == 1 => self.inner.copy(src, so, dst, d, len - 1),
            _ => self.inner.copy(src, so, dst, d, len),
        }
    }

    fn fill(&mut self, id: BufferId, offset: u64, len: u64, value: u8) -> Result<(), BackendError> {
        if self.bug == Bug::Panics && value == 0x5A {
            panic!("planted panic");
        }
        if self.hold(Held::Fill(id, offset, len, value))? {
            return Ok(());
        }
        if self.bug == Bug::WrappingFill {
            let size = self.inner.size(id)?;
            if offset.wrapping_add(len) <= size {
                return Ok(()); // "in bounds" by the wrapped sum: does nothing, reports success
            }
        }
        self.inner.fill(id, offset, len, value)
    }

    fn dispatch(&mut self, call: &KernelCall) -> Result<(), BackendError> {
        if self.hold(Held::Dispatch(*call))? {
            return Ok(());
        }
        match (self.bug, *call) {
            (Bug::AliasAllowed, _) => match self.inner.dispatch(call) {
                Err(BackendError::InvalidArgument) => Ok(()),
                r => r,
            },
            (Bug::AddMultiplies, KernelCall::Binary { op: BinaryOp::Add, a, b, out, n }) => {
                self.inner.dispatch(&KernelCall::Binary { op: BinaryOp::Mul, a, b, out, n })
            }
            (Bug::ShortGrid, KernelCall::Binary { op, a, b, out, n }) if n > 256 => {
                call.validate(|id| self.inner.size(id).ok())?;
                self.inner.dispatch(&KernelCall::Binary { op, a, b, out, n: n - 1 })
            }
            (Bug::ScaleAbs, KernelCall::Scale { x, out, n, alpha }) => {
                self.inner.dispatch(&KernelCall::Scale { x, out, n, alpha: alpha.abs() })
            }
            (Bug::MatmulTransposed, KernelCall::Matmul { a, b, out, m, k, n }) if k == n && k > 1 => {
                call.validate(|id| self.inner.size(id).ok())?;
                let (av, bv) = (self.f32s(a, (m * k) as usize)?, self.f32s(b, (k * n) as usize)?);
                let (m, k, n) = (m as usize, k as usize, n as usize);
                let mut o = vec![0f32; m * n];
                for r in 0..m {
                    for c in 0..n {
                        o[r * n + c] = (0..k).map(|i| av[r * k + i] * bv[c * n + i]).sum();
                    }
                }
                self.put_f32s(out, &o)
            }
            _ => self.inner.dispatch(call),
        }
    }

    fn storage_range(&self, id: BufferId, offset: u64, len: u64) -> Option<Range<usize>> {
        self.inner.storage_range(id, offset, len)
    }

    fn select_queue(&mut self, queue: QueueId) {
        self.queue = queue.0;
    }
}

impl Inspect for Mutant {
    fn storage_bytes(&mut self, r: Range<usize>) -> Option<Vec<u8>> {
        self.inner.storage_bytes(r)
    }
}

fn outcome(bug: Bug, name: &str) -> Outcome {
    let c = case(name).unwrap_or_else(|| panic!("no case {name}"));
    run_case(c, &|| Mutant::boxed(bug)).0.outcome
}

#[test]
fn wrapper_without_a_bug_passes_everything() {
    let report = run_suite("mutant-none", &|| Mutant::boxed(Bug::None));
    let (passed, failed, skipped) = report.counts();
    assert_eq!(
        (passed, failed, skipped),
        (CASES.len(), 0, 0),
        "{}",
        rela_conformance::render_table(&[report])
    );
}

#[test]
fn every_planted_bug_is_caught() {
    let expectations: &[(Bug, &[&str])] = &[
        (Bug::DirtyAlloc, &["fresh_alloc_reads_zero", "realloc_after_free_reads_zero"]),
        (Bug::NoZeroOnFree, &["realloc_after_free_reads_zero", "zero_after_free"]),
        (Bug::ZeroOnAllocOnly, &["zero_after_free"]),
        (Bug::ReleaseOverruns, &["zero_after_free"]),
        (Bug::UsageOffByOne, &["accounting", "alloc_zero_rejected", "random_ops_match_reference"]),
        (
            Bug::ClampedWrite,
            &["out_of_bounds_rejected", "offset_overflow_rejected", "random_ops_match_reference"],
        ),
        (Bug::WrappingFill, &["offset_overflow_rejected"]),
        (Bug::LenientFree, &["stale_and_unknown_ids_rejected", "random_ops_match_reference"]),
        (Bug::OverlapAllowed, &["copy_overlap_rejected", "random_ops_match_reference"]),
        (
            Bug::CopyDropsLastByte,
            &["copy_between_buffers", "copy_within_buffer", "random_ops_match_reference"],
        ),
        (Bug::WrongOomError, &["past_capacity_is_out_of_memory"]),
        (Bug::AddMultiplies, &["kernel_add"]),
        (Bug::ShortGrid, &["kernel_add", "kernel_mul"]),
        (Bug::ScaleAbs, &["kernel_scale"]),
        (Bug::MatmulTransposed, &["kernel_matmul"]),
        (Bug::AliasAllowed, &["kernel_invalid_rejected"]),
        (Bug::RareBadRead, &["random_ops_match_reference"]),
        (Bug::Panics, &["fill_ranges"]),
        (Bug::QueuesRunInQueueOrder, &["queues_keep_call_order"]),
    ];
    let mut missed = Vec::new();
    for &(bug, names) in expectations {
        for &name in names {
            match outcome(bug, name) {
                Outcome::Failed(why) => eprintln!("{bug:?} caught by {name}: {why}"),
                other => missed.push(format!("{bug:?} not caught by {name}: {other:?}")),
            }
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

#[test]
fn zeroing_on_allocation_only_is_told_apart_only_by_the_storage() {
    // Through `GpuBackend` alone the mutant is indistinguishable from a correct backend...
    for name in ["fresh_alloc_reads_zero", "realloc_after_free_reads_zero"] {
        assert_eq!(outcome(Bug::ZeroOnAllocOnly, name), Outcome::Passed, "{name}");
    }
    // ...and its storage view shows the freed bytes still there.
    let Outcome::Failed(why) = outcome(Bug::ZeroOnAllocOnly, "zero_after_free") else {
        panic!("zeroing on allocation only must fail zero_after_free");
    };
    assert!(why.contains("free did not zero it"), "{why}");
}

#[test]
fn a_backend_without_a_storage_view_skips_zero_after_free_with_the_reason() {
    let make = || -> Result<Box<dyn GpuBackend>, String> {
        Ok(Box::new(rela_backend_host::OwnedHostBackend::with_capacity(SUITE_CAPACITY as usize)))
    };
    let report = run_suite("opaque-host", &make);
    let skipped: Vec<_> = report
        .results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Skipped(why) => Some((r.name.as_str(), why.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, [("zero_after_free", rela_conformance::NO_VIEW)]);
    assert_eq!(report.counts(), (CASES.len() - 1, 0, 1), "{}", rela_conformance::render_table(&[report]));
    // A declared limitation, not a hole in the run.
    assert!(rela_conformance::skip_is_not_applicable(rela_conformance::NO_VIEW));
}

#[test]
fn a_panic_is_reported_as_a_failure() {
    let Outcome::Failed(why) = outcome(Bug::Panics, "fill_ranges") else {
        panic!("a panicking case must fail");
    };
    assert!(why.contains("panicked: planted panic"), "{why}");
}
