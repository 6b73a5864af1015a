//! One conformance suite for every [`GpuBackend`].
//!
//! The [`GpuBackend`] contract (see `rela_core::backend`) is short: exact accounting, zero on
//! free, typed errors for every out-of-bounds, overflowing, stale or aliasing argument, and
//! kernels that match the plain-Rust reference. This crate checks all of it, once, for every
//! backend: host memory, Vulkan, wgpu and CUDA run the same [`CASES`].
//!
//! # Shape
//!
//! - A [`Case`] is a name and a `fn(&mut dyn GpuBackend) -> Result<(), Failure>`, or, for a
//!   case that must look at the backend's raw storage (what `free` left behind), a
//!   `fn(&mut dyn Inspect)`: see [`Run`]. Such a case skips, with the reason, on a backend that
//!   offers no [`Inspect`] view (a factory returning a plain boxed backend). Each case
//!   gets a fresh backend built with a capacity of [`SUITE_CAPACITY`] (64 MiB), so the
//!   out-of-memory cases stay cheap. Cases compute what they expect themselves (shadow copies,
//!   plain f32/f64 arithmetic), so every case can fail, the host backend included; the random
//!   sequence also runs each of its 10,000 steps on the host reference
//!   ([`rela_backend_host::OwnedHostBackend`]).
//! - In a backend's tests, [`testgen!`] expands to one `#[test]` per case:
//!
//!   ```ignore
//!   // backends/foo/tests/conformance.rs
//!   rela_conformance::testgen!("foo", || {
//!       rela_backend_foo::FooBackend::new(rela_conformance::SUITE_CAPACITY)
//!           .map(|b| Box::new(b) as Box<dyn rela_core::backend::GpuBackend>)
//!           .map_err(|e| e.to_string())
//!   });
//!   ```
//!
//!   A factory error (no such device on this machine) prints `SKIPPED foo/<case>: <reason>` to
//!   stderr and passes, unless `RELA_REQUIRE_BACKENDS` names the backend (see [`required`]),
//!   in which case it fails. CI sets it for the backends its runners have. With
//!   `RELA_CONFORMANCE_RECORDS=DIR` each of these tests also records its result in `DIR`, and
//!   [`records`] builds the same [`BackendReport`]s from them, so a report needs no second run
//!   of the suite.
//! - [`run_suite`] runs every case and returns a [`BackendReport`]: skips and failures are
//!   data, panics are caught and count as failures. [`render_table`] turns reports into a plain
//!   text table (and the reports serialize with serde), for a vendor to attach to a bug report.
//!
//! # Timing
//!
//! The suite must stay quick on software Vulkan (lavapipe): the largest transfer is 16 MiB,
//! the largest kernels are 100,003 elements (GELU), 70,000 rows (layer norm, L2), a 64×64×64
//! matmul, a 7×384×1536 linear layer and attention over 512 tokens, and the random sequence
//! uses buffers of at most 64 KiB.

use std::fmt::{self, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

pub use rela_core::backend::GpuBackend;
use serde::{Deserialize, Serialize};

mod cases;
pub mod faults;
mod gen_cases;
mod partial;
mod queues;
pub mod records;
pub mod skips;
mod support;
pub mod wire;

pub use support::{Inspect, NO_VIEW, Tested};

/// The capacity, in bytes, a backend under test is built with (64 MiB).
pub const SUITE_CAPACITY: u64 = 64 << 20;

/// The environment variable listing backends that must be available (comma-separated, e.g.
/// `host,vulkan,wgpu-vulkan,wgpu-gl`). See [`required`].
pub const REQUIRE_ENV: &str = "RELA_REQUIRE_BACKENDS";

/// Why a case failed: a message naming the operation and what differed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// One conformance case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The case's name, a Rust identifier (the name of its generated `#[test]`).
    pub name: &'static str,
    /// Runs the case against a fresh backend.
    pub run: Run,
}

/// What a case needs of the backend under test.
#[derive(Debug, Clone, Copy)]
pub enum Run {
    /// The backend through [`GpuBackend`] alone: runs on every backend.
    Backend(fn(&mut dyn GpuBackend) -> Result<(), Failure>),
    /// The backend with a view of its raw storage ([`Inspect`]): on a backend built without
    /// one ([`Tested::opaque`]) the case is [`Outcome::Skipped`] with the factory's reason.
    Inspect(fn(&mut dyn Inspect) -> Result<(), Failure>),
}

impl Run {
    /// Runs against `backend`: `Ok(None)` passed, `Ok(Some(reason))` skipped.
    fn on(self, backend: &mut Tested) -> Result<Option<String>, Failure> {
        match self {
            Self::Backend(run) => run(backend.backend()).map(|()| None),
            Self::Inspect(run) => match backend.inspect() {
                Ok(viewed) => run(viewed).map(|()| None),
                Err(why) => Ok(Some(why.to_owned())),
            },
        }
    }
}

impl Case {
    /// Runs against `backend`: `Ok(None)` passed, `Ok(Some(reason))` skipped. A kernel the
    /// backend declares it does not run ([`skips`]) skips if, and only if, the case failed on
    /// `Unsupported`; it fails if the case passes (the declaration is stale).
    fn on(&self, backend: &mut Tested) -> Result<Option<String>, Failure> {
        let kind = backend.backend().info().backend;
        let declared = skips::case_kernel(self.name).and_then(|k| skips::gap(kind, &k));
        let result = self.run.on(backend);
        let Some(why) = declared else { return result };
        match result {
            Err(failure) if failure.0.contains("Unsupported") => Ok(Some(why.to_owned())),
            Ok(None) => Err(Failure(format!(
                "declared in rela_conformance::skips as not run on this backend ({why}), but the case \
                 passes: remove the declaration"
            ))),
            other => other,
        }
    }
}

/// Every case, in the order [`run_suite`] runs them.
pub const CASES: &[Case] = cases::ALL;

/// The case named `name`.
pub fn case(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.name == name)
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// A check failed or the case panicked; the message says which.
    Failed(String),
    /// The backend could not be built here, or offers no view the case needs ([`Run::Inspect`]);
    /// the reason says why.
    Skipped(String),
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseResult {
    /// The case name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time, backend construction included, in milliseconds.
    pub millis: u64,
}

/// Every case's result for one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendReport {
    /// The backend's name as given to [`run_suite`].
    pub backend: String,
    /// Device and vendor names, if the backend could be built at least once.
    pub device: Option<String>,
    /// Results in [`CASES`] order.
    pub results: Vec<CaseResult>,
}

impl BackendReport {
    /// Counts of passed, failed and skipped cases.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |f: fn(&Outcome) -> bool| self.results.iter().filter(|r| f(&r.outcome)).count();
        (
            count(|o| matches!(o, Outcome::Passed)),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Skipped(_))),
        )
    }

    /// Whether no case failed (skips allowed).
    pub fn ok(&self) -> bool {
        self.counts().1 == 0
    }
}

/// The exit status a runner (such as `vram-relay conformance`) gives a run in which no case
/// failed but which did not check what it was asked to: see [`Verdict::Incomplete`]. (A failed
/// case is status 1, bad usage 2.)
pub const EXIT_INCOMPLETE: u8 = 3;

/// What a run amounts to, over all its reports: see [`verdict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Cases ran, all passed, and no skip hides a requirement.
    Passed,
    /// At least one case failed.
    Failed,
    /// No case failed, but nothing was checked, or skipped cases leave requirements unchecked.
    /// One line per reason.
    Incomplete(Vec<String>),
}

impl Verdict {
    /// The exit status for this verdict: 0, 1, or [`EXIT_INCOMPLETE`].
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Passed => 0,
            Self::Failed => 1,
            Self::Incomplete(_) => EXIT_INCOMPLETE,
        }
    }
}

/// Whether a skip reason only says that a node does not offer an optional feature (it does not
/// require AUTH, advertise DISPATCH or MODELS), or that a backend does not expose what a case
/// would inspect (its raw storage, [`NO_VIEW`]; the same requirement is then checked as far as
/// [`GpuBackend`] shows it): nothing the implementation claims goes unchecked. Every other skip
/// (no token given, a backend that cannot be built, limits too small to reach) leaves a
/// requirement unchecked.
pub fn skip_is_not_applicable(reason: &str) -> bool {
    reason.starts_with("the node does not ") || reason.starts_with("the backend does not ")
}

/// Judges a run: [`Verdict::Failed`] if any case failed; else [`Verdict::Incomplete`] if no case
/// passed at all, or if a report has skips that leave requirements unchecked (see
/// [`skip_is_not_applicable`]); else [`Verdict::Passed`].
///
/// `may_be_absent(backend)` says whether a backend may be missing from this machine altogether
/// (say, CUDA under `--backend all` on a machine without it): a report whose every case skipped
/// is then not held against the run, unless [`required`] names it or a case has no record at
/// all ([`records::NO_RECORD`]). A backend that was built for some cases and skipped others is
/// always incomplete.
pub fn verdict(reports: &[BackendReport], may_be_absent: &dyn Fn(&str) -> bool) -> Verdict {
    if reports.iter().any(|r| !r.ok()) {
        return Verdict::Failed;
    }
    let mut reasons = Vec::new();
    for r in reports {
        let (passed, _, skipped) = r.counts();
        let unrecorded = r
            .results
            .iter()
            .any(|c| matches!(&c.outcome, Outcome::Skipped(why) if why == records::NO_RECORD));
        if skipped == r.results.len() && may_be_absent(&r.backend) && !required(&r.backend) && !unrecorded {
            continue;
        }
        let mut hidden: Vec<(&str, usize)> = Vec::new();
        for c in &r.results {
            if let Outcome::Skipped(why) = &c.outcome {
                if skip_is_not_applicable(why) {
                    continue;
                }
                match hidden.iter_mut().find(|(reason, _)| reason == why) {
                    Some((_, n)) => *n += 1,
                    None => hidden.push((why, 1)),
                }
            }
        }
        for (why, n) in hidden {
            let which = if passed == 0 && n == r.results.len() {
                format!("all {n} cases")
            } else {
                format!("{n} case(s)")
            };
            reasons.push(format!("{}: {which} skipped, so not checked: {why}", r.backend));
        }
    }
    if reports.iter().all(|r| r.counts().0 == 0) {
        reasons.insert(0, "nothing was checked: no case ran".to_owned());
    }
    if reasons.is_empty() { Verdict::Passed } else { Verdict::Incomplete(reasons) }
}

/// A factory for the backend under test: a fresh backend, or why none can be built here.
/// `T` is a boxed [`GpuBackend`] (tested through it alone) or a [`Tested`].
pub type Factory<'a, T = Box<dyn GpuBackend>> = &'a dyn Fn() -> Result<T, String>;

/// Runs one case on a fresh backend from `make`, catching panics (a panic is a failure).
/// Returns the result and the device's name if the backend was built.
pub fn run_case<T: Into<Tested>>(case: &Case, make: Factory<'_, T>) -> (CaseResult, Option<String>) {
    let start = Instant::now();
    let mut device = None;
    let outcome = match panic::catch_unwind(AssertUnwindSafe(|| match make() {
        Err(reason) => Outcome::Skipped(reason),
        Ok(made) => {
            let mut tested = made.into();
            let info = tested.backend().info();
            device = Some(format!("{} ({})", info.name, info.vendor));
            match case.on(&mut tested) {
                Ok(None) => Outcome::Passed,
                Ok(Some(why)) => Outcome::Skipped(why),
                Err(failure) => Outcome::Failed(failure.0),
            }
        }
    })) {
        Ok(outcome) => outcome,
        Err(payload) => Outcome::Failed(format!("panicked: {}", panic_message(&*payload))),
    };
    let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    (CaseResult { name: case.name.to_owned(), outcome, millis }, device)
}

/// Runs every case in [`CASES`], each on a fresh backend from `make`.
///
/// A factory error makes that case [`Outcome::Skipped`] with the error as its reason, and so
/// does a backend without a storage view for the cases that need one ([`Run::Inspect`]); a
/// panic in the factory or the case makes it [`Outcome::Failed`].
pub fn run_suite<T: Into<Tested>>(backend_name: &str, make: Factory<'_, T>) -> BackendReport {
    let mut device = None;
    let mut results = Vec::with_capacity(CASES.len());
    for case in CASES {
        let (result, dev) = run_case(case, make);
        device = device.or(dev);
        results.push(result);
    }
    BackendReport { backend: backend_name.to_owned(), device, results }
}

/// Whether `RELA_REQUIRE_BACKENDS` names `backend` (case-insensitive, comma-separated), so
/// that a backend which cannot be built fails its tests instead of skipping them.
pub fn required(backend: &str) -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|list| list_names(&list, backend))
}

/// Whether the comma-separated `list` names `backend`.
fn list_names(list: &str, backend: &str) -> bool {
    list.split(',').map(str::trim).any(|name| name.eq_ignore_ascii_case(backend))
}

/// A plain-text table of reports: one row per backend with its device and counts, then one
/// line per failed case and per distinct skip reason.
pub fn render_table(reports: &[BackendReport]) -> String {
    let header = ["backend", "device", "passed", "failed", "skipped"];
    let rows: Vec<[String; 5]> = reports
        .iter()
        .map(|r| {
            let (p, f, s) = r.counts();
            let device = r.device.clone().unwrap_or_else(|| "-".to_owned());
            [r.backend.clone(), device, p.to_string(), f.to_string(), s.to_string()]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 5]| {
        let [b, d, p, f, s] = cells;
        let [wb, wd, wp, wf, ws] = widths;
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{b:<wb$}  {d:<wd$}  {p:>wp$}  {f:>wf$}  {s:>ws$}");
    };
    line(&mut out, header);
    let rule = widths.map(|w| "-".repeat(w));
    line(&mut out, [&rule[0], &rule[1], &rule[2], &rule[3], &rule[4]]);
    for row in &rows {
        line(&mut out, [&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    for r in reports {
        let mut skips: Vec<(&str, Vec<&str>)> = Vec::new();
        for c in &r.results {
            match &c.outcome {
                Outcome::Passed => {}
                Outcome::Failed(why) => {
                    let _ = writeln!(out, "FAILED  {}/{}: {why}", r.backend, c.name);
                }
                Outcome::Skipped(why) => match skips.iter_mut().find(|(reason, _)| reason == why) {
                    Some((_, names)) => names.push(&c.name),
                    None => skips.push((why, vec![&c.name])),
                },
            }
        }
        for (why, names) in skips {
            let which =
                if names.len() == r.results.len() { "all cases".to_owned() } else { names.join(", ") };
            let _ = writeln!(out, "SKIPPED {} ({which}): {why}", r.backend);
        }
    }
    out
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The body of each `#[test]` that [`testgen!`] generates. Not for direct use.
///
/// Builds the backend; if that fails, skips loudly (stderr) unless [`required`], then panics.
/// Runs the case and panics with its failure message; a case the backend offers no view for
/// skips loudly with the reason. A panic in the factory, the case or the backend's drop is the
/// test's panic. With [`records::RECORDS_ENV`] set, records the outcome first (see
/// [`records`]); a record that cannot be written fails the test.
#[doc(hidden)]
pub fn __run_case_test<F, T>(backend: &str, name: &str, make: F)
where
    F: Fn() -> Result<T, String>,
    T: Into<Tested>,
{
    run_case_test(records::dir_from_env().as_deref(), backend, name, make);
}

/// [`__run_case_test`], recording in `records` if given.
fn run_case_test<F, T>(records: Option<&std::path::Path>, backend: &str, name: &str, make: F)
where
    F: Fn() -> Result<T, String>,
    T: Into<Tested>,
{
    let Some(case) = case(name) else {
        panic!("testgen! lists `{name}`, which is not in rela_conformance::CASES");
    };
    let start = Instant::now();
    let mut device = None;
    // `Err(reason)`: the backend could not be built.
    let ran = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut instance: Tested = make()?.into();
        let info = instance.backend().info();
        device = Some(format!("{} ({})", info.name, info.vendor));
        let result = case.on(&mut instance);
        // Dropped here, inside the unwind guard: a backend may check itself on drop.
        drop(instance);
        Ok(result)
    }));
    // The outcome, and what the test panics with (a message, or the caught panic itself).
    let (outcome, message, panicked) = match ran {
        Ok(Err(reason)) if required(backend) => {
            let why = format!("backend `{backend}` is required by {REQUIRE_ENV} but unavailable: {reason}");
            (Outcome::Failed(why.clone()), Some(why), None)
        }
        Ok(Err(reason)) => (Outcome::Skipped(reason), None, None),
        Ok(Ok(Ok(None))) => (Outcome::Passed, None, None),
        Ok(Ok(Ok(Some(why)))) => (Outcome::Skipped(why), None, None),
        Ok(Ok(Err(failure))) => {
            let message = format!("{backend}/{name} failed: {failure}");
            (Outcome::Failed(failure.0), Some(message), None)
        }
        Err(payload) => {
            (Outcome::Failed(format!("panicked: {}", panic_message(&*payload))), None, Some(payload))
        }
    };
    if let Some(dir) = records {
        let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let test = std::thread::current().name().unwrap_or("main").to_owned();
        let record = records::CaseRecord {
            backend: backend.to_owned(),
            device,
            test,
            case: name.to_owned(),
            outcome: outcome.clone(),
            millis,
        };
        if let Err(e) = records::write(dir, &record) {
            panic!("{backend}/{name}: cannot record the outcome ({outcome:?}): {e}");
        }
    }
    if let Some(payload) = panicked {
        panic::resume_unwind(payload);
    }
    if let Some(message) = message {
        panic!("{message}");
    }
    if let Outcome::Skipped(why) = outcome {
        eprintln!("SKIPPED {backend}/{name}: {why}");
    }
}

/// Expands, in a backend's test file, to one `#[test]` per conformance case, plus
/// `testgen_lists_every_case`, which fails if [`CASES`] has a case the macro does not list.
///
/// `$backend` is the backend's name (as [`required`] matches it); `$make` is a closure
/// building a fresh backend with a capacity of [`SUITE_CAPACITY`], or saying why it cannot:
/// `Fn() -> Result<Box<dyn GpuBackend>, String>`, or `Fn() -> Result<Tested, String>` for a
/// backend with a view of its raw storage ([`Tested::inspectable`]).
///
/// ```ignore
/// rela_conformance::testgen!("host", || {
///     Ok(Tested::inspectable(OwnedHostBackend::with_capacity(SUITE_CAPACITY as usize)))
/// });
/// ```
#[macro_export]
macro_rules! testgen {
    ($backend:literal, $make:expr $(,)?) => {
        $crate::testgen!(@cases $backend, $make;
            info_and_empty_usage,
            alloc_zero_rejected,
            accounting,
            round_trip_sizes,
            round_trip_unaligned_offsets,
            zero_length_ops,
            fresh_alloc_reads_zero,
            out_of_bounds_rejected,
            offset_overflow_rejected,
            stale_and_unknown_ids_rejected,
            copy_between_buffers,
            copy_within_buffer,
            copy_overlap_rejected,
            fill_ranges,
            commit_changes_nothing,
            realloc_after_free_reads_zero,
            zero_after_free,
            storage_ranges_are_consistent,
            past_capacity_is_out_of_memory,
            random_ops_match_reference,
            kernel_add,
            kernel_mul,
            kernel_scale,
            kernel_matmul,
            kernel_invalid_rejected,
            kernel_gather,
            kernel_layer_norm,
            kernel_linear,
            kernel_gelu,
            kernel_attention,
            kernel_mean_pool,
            kernel_l2_normalize,
            kernel_model_invalid_rejected,
            kernel_rms_norm,
            kernel_rope,
            kernel_swiglu,
            kernel_q_linear,
            kernel_q_gather,
            kernel_causal_attention,
            kernel_softmax,
            kernel_argmax,
            kernel_generation_invalid_rejected,
            partial_dispatch_matches_whole,
            queues_keep_call_order,
        );
    };
    (@cases $backend:literal, $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::__run_case_test($backend, stringify!($case), $make);
            }
        )*

        #[test]
        fn testgen_lists_every_case() {
            let listed: &[&str] = &[$(stringify!($case)),*];
            let all: Vec<&str> = $crate::CASES.iter().map(|c| c.name).collect();
            assert_eq!(listed, all.as_slice(), "testgen! and rela_conformance::CASES disagree");
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(backend: &str, outcomes: &[Outcome]) -> BackendReport {
        BackendReport {
            backend: backend.into(),
            device: Some("dev (vendor)".into()),
            results: outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| CaseResult { name: format!("case{i}"), outcome: o.clone(), millis: 1 })
                .collect(),
        }
    }

    #[test]
    fn names_are_unique_identifiers() {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        for n in &names {
            assert!(
                n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{n} is not a snake_case identifier"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len(), "duplicate case names");
    }

    #[test]
    fn require_list_parsing() {
        assert!(list_names("host,vulkan, wgpu-gl", "wgpu-gl"));
        assert!(list_names("HOST", "host"));
        assert!(!list_names("host,vulkan", "wgpu-vulkan"));
        assert!(!list_names("", "host"));
        assert!(!list_names("wgpu", "wgpu-gl"));
    }

    #[test]
    fn factory_errors_skip_every_case() {
        let r = run_suite::<Tested>("nothing", &|| Err("no device here".into()));
        assert_eq!(r.results.len(), CASES.len());
        assert!(r.results.iter().all(|c| c.outcome == Outcome::Skipped("no device here".into())));
        assert_eq!(r.device, None);
        assert_eq!(r.counts(), (0, 0, CASES.len()));
        assert!(r.ok());
        let table = render_table(&[r]);
        assert!(table.contains("SKIPPED nothing (all cases): no device here"), "{table}");
    }

    #[test]
    fn panicking_factory_is_a_failure() {
        let first = &CASES[0];
        let (r, dev) = run_case::<Tested>(first, &|| panic!("factory exploded"));
        assert_eq!(r.outcome, Outcome::Failed("panicked: factory exploded".into()));
        assert_eq!(dev, None);
    }

    #[test]
    fn table_lists_counts_failures_and_skip_reasons() {
        let a = report("alpha", &[Outcome::Passed, Outcome::Failed("boom".into()), Outcome::Passed]);
        let b = report(
            "beta-long-name",
            &[Outcome::Skipped("x".into()), Outcome::Passed, Outcome::Skipped("y".into())],
        );
        let t = render_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("backend"), "{t}");
        assert!(lines[2].starts_with("alpha           dev (vendor)       2       1        0"), "{t}");
        assert!(lines[3].starts_with("beta-long-name  dev (vendor)       1       0        2"), "{t}");
        assert!(t.contains("FAILED  alpha/case1: boom"), "{t}");
        assert!(t.contains("SKIPPED beta-long-name (case0): x"), "{t}");
        assert!(t.contains("SKIPPED beta-long-name (case2): y"), "{t}");
    }

    #[test]
    fn verdicts() {
        let never = |_: &str| false;
        let passed = report("alpha", &[Outcome::Passed, Outcome::Passed]);
        assert_eq!(verdict(std::slice::from_ref(&passed), &never), Verdict::Passed);
        let failed = report("beta", &[Outcome::Passed, Outcome::Failed("x".into())]);
        assert_eq!(verdict(&[passed.clone(), failed], &never), Verdict::Failed);
        assert_eq!(Verdict::Failed.exit_code(), 1);

        // A backend that could not be built: nothing checked, unless it may be absent and
        // something else ran.
        let absent =
            report("gamma", &[Outcome::Skipped("no device".into()), Outcome::Skipped("no device".into())]);
        let v = verdict(std::slice::from_ref(&absent), &never);
        assert_eq!(v.exit_code(), EXIT_INCOMPLETE);
        let Verdict::Incomplete(why) = v else { unreachable!() };
        assert_eq!(why[0], "nothing was checked: no case ran");
        assert_eq!(why[1], "gamma: all 2 cases skipped, so not checked: no device");
        assert_eq!(verdict(&[passed.clone(), absent.clone()], &|b| b == "gamma"), Verdict::Passed);
        assert!(matches!(verdict(&[passed.clone(), absent], &never), Verdict::Incomplete(_)));
        assert!(matches!(verdict(&[], &never), Verdict::Incomplete(_)));

        // Skips that hide a requirement make a partial run incomplete; a feature the node does
        // not offer does not.
        let partial = report("node", &[Outcome::Passed, Outcome::Skipped("no token was given".into())]);
        assert!(matches!(verdict(std::slice::from_ref(&partial), &|_| true), Verdict::Incomplete(_)));
        let optional =
            report("node", &[Outcome::Passed, Outcome::Skipped("the node does not advertise MODELS".into())]);
        assert_eq!(verdict(&[optional], &never), Verdict::Passed);
    }

    /// Runs `name` as a generated test would, recording in a fresh directory; returns the
    /// records and whether the test panicked.
    fn recorded<T: Into<Tested>>(
        label: &str,
        name: &str,
        make: impl Fn() -> Result<T, String>,
    ) -> (Vec<records::CaseRecord>, bool) {
        let dir = std::env::temp_dir().join(format!("rela-run-records-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let panicked =
            panic::catch_unwind(AssertUnwindSafe(|| run_case_test(Some(&dir), label, name, make))).is_err();
        let back = records::read_dir(&dir).expect("records");
        std::fs::remove_dir_all(&dir).expect("removed");
        (back, panicked)
    }

    #[test]
    fn generated_tests_record_passes_skips_and_failures() {
        let host = || {
            let b = rela_backend_host::OwnedHostBackend::with_capacity(SUITE_CAPACITY as usize);
            Ok(Tested::inspectable(b))
        };
        let (passed, panicked) = recorded("rec-pass", "accounting", host);
        assert!(!panicked);
        assert_eq!(passed.len(), 1);
        let r = &passed[0];
        assert_eq!(
            (r.backend.as_str(), r.case.as_str(), &r.outcome),
            ("rec-pass", "accounting", &Outcome::Passed)
        );
        assert!(r.device.as_deref().is_some_and(|d| d.contains("host")), "{r:?}");

        // A backend that cannot be built: skipped with the factory's reason, no device.
        let (skipped, panicked) =
            recorded("rec-skip", "accounting", || Err::<Tested, _>("no device here".into()));
        assert!(!panicked);
        assert_eq!(skipped[0].outcome, Outcome::Skipped("no device here".into()));
        assert_eq!(skipped[0].device, None);

        // A case the backend offers no view for: skipped with the reason.
        let opaque = || {
            let b = rela_backend_host::OwnedHostBackend::with_capacity(SUITE_CAPACITY as usize);
            Ok(Box::new(b) as Box<dyn GpuBackend>)
        };
        let (no_view, panicked) = recorded("rec-view", "zero_after_free", opaque);
        assert!(!panicked);
        assert!(
            matches!(&no_view[0].outcome, Outcome::Skipped(why) if skip_is_not_applicable(why)),
            "{no_view:?}"
        );

        // A backend whose every allocation fails: the case fails, the test panics, the record
        // says failed.
        let (failed, panicked) = recorded("rec-fail", "accounting", || {
            let b = rela_backend_host::OwnedHostBackend::with_capacity(0);
            Ok(Box::new(b) as Box<dyn GpuBackend>)
        });
        assert!(panicked);
        assert!(matches!(&failed[0].outcome, Outcome::Failed(_)), "{failed:?}");

        // A factory that panics: a failed record, and the test panics.
        let (exploded, panicked) =
            recorded("rec-panic", "accounting", || -> Result<Tested, String> { panic!("factory exploded") });
        assert!(panicked);
        assert_eq!(exploded[0].outcome, Outcome::Failed("panicked: factory exploded".into()));
    }

    #[test]
    fn reports_serialize() {
        let r = report("alpha", &[Outcome::Passed, Outcome::Skipped("why".into())]);
        let json = serde_json::to_value(&r).expect("serializable");
        assert_eq!(json["backend"], "alpha");
        assert_eq!(json["results"][0]["outcome"], "Passed");
        assert_eq!(json["results"][1]["outcome"]["Skipped"], "why");
    }
}
