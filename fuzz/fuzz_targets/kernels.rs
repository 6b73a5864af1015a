//! The kernel layer: arbitrary kernel calls, whole and in parts, over buffers of arbitrary sizes
//! and bytes, against the host backend behind `Checked`. The format and the invariants are
//! documented in `rela_fuzz::kernels`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rela_fuzz::kernels::run(data));
