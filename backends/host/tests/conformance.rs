//! The conformance suite, run on the host backend (the reference checks itself against the
//! suite's own expectations), with a view of its arena so that `zero_after_free` can see what
//! `free` leaves behind.

use rela_backend_host::OwnedHostBackend;
use rela_conformance::{SUITE_CAPACITY, Tested};

rela_conformance::testgen!("host", || Ok(Tested::inspectable(OwnedHostBackend::with_capacity(
    SUITE_CAPACITY as usize
))));
