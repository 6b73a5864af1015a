//! The session state machine: scripts of requests, raw frames, framing errors, timeouts,
//! aborts and reopenings, played against two sessions sharing one host-memory backend.
//! The format and the invariants are documented in `rela_fuzz::script` and `rela_fuzz::harness`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rela_fuzz::harness::run(data));
