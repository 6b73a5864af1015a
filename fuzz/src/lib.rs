//! Shared code of the RELA fuzz targets.
//!
//! - [`script`]: the compact byte format of a session script (what the `session` target
//!   decodes) and its encoder, which `examples/gen_seeds.rs` uses to write seed scripts.
//! - [`harness`]: drives two [`rela_core::session::Session`]s over one host-memory backend,
//!   each with a scripted model host ([`harness::host`]), through a script and asserts the
//!   session invariants after every step.
//! - [`kernels`]: arbitrary kernel calls, whole and in parts, against the host backend behind
//!   `Checked` (the `kernels` target).
//!
//! Everything panics on a broken invariant: that is how libFuzzer learns about it. Nothing
//! here catches panics.

pub mod harness;
pub mod kernels;
pub mod script;

/// The token of sessions a script configures with AUTH.
pub const AUTH_TOKEN: &[u8] = b"rela-fuzz-auth-token";

/// The token the `discovery` target verifies signed ANNOUNCEs with. Seeds signed with it reach
/// the signature-accepted path.
pub const DISCOVERY_TOKEN: &[u8] = b"rela-fuzz-discovery-token";
