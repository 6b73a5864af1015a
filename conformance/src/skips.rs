//! Kernels a backend does not run yet, declared as data: which backend, which kernels, and why.
//!
//! A kernel case (`kernel_<name>`, the kernel's spec name in lower case) declared here for the
//! backend under test still runs. It is [`Outcome::Skipped`](crate::Outcome::Skipped) with the
//! reason only if it failed because the backend answered `Unsupported`; any other failure is a
//! failure, and a declared case that passes fails too, so an entry cannot outlive the gap it
//! describes. `partial_dispatch_matches_whole` leaves a declared kernel out when the backend
//! answers `Unsupported` for it. The reasons start with "the backend does not", so
//! [`verdict`](crate::verdict) does not count these skips as unchecked requirements: the
//! backend claims nothing for these kernels, and that it refuses them with `Unsupported` is
//! checked.

use rela_core::backend::BackendKind;

/// A backend's kernels that it answers `Unsupported` for.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// The backend ([`DeviceInfo::backend`](rela_core::backend::DeviceInfo)).
    pub backend: BackendKind,
    /// Spec names of the kernels (`RMS_NORM`, …).
    pub kernels: &'static [&'static str],
    /// Why, as printed with the skip.
    pub reason: &'static str,
}

/// Every declared gap. Empty: every backend runs every kernel (CUDA's generation kernels are
/// written but have not yet run on a device; a GPU run checks them).
pub const GAPS: &[Gap] = &[];

/// Why `backend` does not run `kernel` (a spec name), if declared.
pub fn gap(backend: BackendKind, kernel: &str) -> Option<&'static str> {
    GAPS.iter().find(|g| g.backend == backend && g.kernels.contains(&kernel)).map(|g| g.reason)
}

/// The kernel a case named `kernel_<name>` checks: `<name>` in upper case.
pub fn case_kernel(case: &str) -> Option<String> {
    case.strip_prefix("kernel_").map(str::to_ascii_uppercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_kernel_has_its_case() {
        for g in GAPS {
            assert!(g.reason.starts_with("the backend does not "), "{}", g.reason);
            for k in g.kernels {
                let case = format!("kernel_{}", k.to_ascii_lowercase());
                assert!(crate::case(&case).is_some(), "no case {case} for declared kernel {k}");
                assert_eq!(case_kernel(&case).as_deref(), Some(*k));
            }
        }
        assert_eq!(gap(BackendKind::HOST, "ROPE"), None);
        assert_eq!(case_kernel("kernel_causal_attention").as_deref(), Some("CAUSAL_ATTENTION"));
        assert_eq!(case_kernel("partial_dispatch_matches_whole"), None);
    }
}
