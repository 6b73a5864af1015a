//! The session state machine: scripts of requests (model loads, uploads and INFER included),
//! raw frames, framing errors, timeouts, aborts and reopenings, played against two sessions
//! sharing one host-memory backend, each with a scripted model host.
//! The format and the invariants are documented in `rela_fuzz::script` and `rela_fuzz::harness`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rela_fuzz::harness::run(data));
