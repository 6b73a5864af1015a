//! The conformance suite, run on the host backend (the reference checks itself against the
//! suite's own expectations).

use rela_backend_host::OwnedHostBackend;
use rela_conformance::SUITE_CAPACITY;

rela_conformance::testgen!("host", || Ok(Box::new(OwnedHostBackend::with_capacity(SUITE_CAPACITY as usize))));
