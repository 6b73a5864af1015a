//! The conformance suite, run on the host backend (the reference checks itself against the
//! suite's own expectations), with a view of its arena so that `zero_after_free` can see what
//! `free` leaves behind.

use rela_backend_host::OwnedHostBackend;
use rela_conformance::{SUITE_CAPACITY, Tested};

rela_conformance::testgen!("host", || Ok(Tested::inspectable(OwnedHostBackend::with_capacity(
    SUITE_CAPACITY as usize
))));

/// The same suite on the host backend behind `rela_core::checked::Checked`, the layer a node
/// puts above its raw backend: the checks it adds must keep every case passing (through
/// `GpuBackend` alone: `zero_after_free` skips with its reason there, the host's own run above
/// covers it).
mod checked {
    use rela_backend_host::OwnedHostBackend;
    use rela_conformance::SUITE_CAPACITY;
    use rela_core::backend::GpuBackend;
    use rela_core::checked::Checked;

    rela_conformance::testgen!("host", || {
        let raw = OwnedHostBackend::with_capacity(SUITE_CAPACITY as usize);
        Ok(Box::new(Checked::new(raw)) as Box<dyn GpuBackend>)
    });
}
