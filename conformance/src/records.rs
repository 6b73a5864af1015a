//! Conformance results recorded by the tests themselves, so a report needs no second run.
//!
//! When [`RECORDS_ENV`] (`RELA_CONFORMANCE_RECORDS`) names a directory (an absolute path: each
//! test binary runs in its own package's directory), every `#[test]` that [`testgen!`](crate::testgen)
//! generates writes one [`CaseRecord`] there: the backend, its device, the test, the case, how it
//! ended and how long it took. A backend that cannot be built is recorded as skipped with the
//! factory's reason (or as failed when [`required`](crate::required)). Each record is a small
//! JSON file of its own, created exclusively, so parallel test threads and test processes never
//! interleave their writes.
//!
//! [`read_dir`] and [`reports`] turn a directory of records back into the
//! [`BackendReport`]s that [`run_suite`](crate::run_suite) would have produced: one result per
//! case of [`CASES`] per backend. A backend may run a case in several tests (the Vulkan backend
//! mapped and through its staging buffer, the host backend raw and behind `Checked`); the case
//! failed if any of them failed, passed if none failed and one passed, and skipped otherwise. A
//! case with no record for a backend is [`Outcome::Skipped`] with [`NO_RECORD`] as its reason,
//! which [`verdict`](crate::verdict) never lets pass.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{BackendReport, CASES, CaseResult, Outcome};

/// The environment variable naming the directory the conformance tests write records to.
pub const RECORDS_ENV: &str = "RELA_CONFORMANCE_RECORDS";

/// The skip reason of a case that has no record for a backend which has records: its test did
/// not run (filtered out, or its test binary stopped early). [`verdict`](crate::verdict) counts
/// it as unchecked, always.
pub const NO_RECORD: &str = "no record of this case (its test did not run, or stopped before writing one)";

/// What one test recorded of one conformance case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// The backend's name, as [`testgen!`](crate::testgen) was given it.
    pub backend: String,
    /// Device and vendor names, if the backend was built.
    pub device: Option<String>,
    /// The test that ran the case (its libtest name, such as `staging::kernel_add`).
    pub test: String,
    /// The case name (one of [`CASES`]).
    pub case: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time, backend construction included, in milliseconds.
    pub millis: u64,
}

/// Why records could not be written or read.
#[derive(Debug)]
pub enum RecordError {
    /// The records directory is a relative path, which each test binary would resolve against
    /// its own package directory.
    RelativeDir(PathBuf),
    /// The directory could not be created or listed.
    Dir(PathBuf, io::Error),
    /// A record file could not be created, written or read.
    File(PathBuf, io::Error),
    /// A record file is not a [`CaseRecord`] in JSON.
    Parse(PathBuf, serde_json::Error),
    /// A record could not be turned into JSON.
    Encode(serde_json::Error),
    /// A record names a case that is not in [`CASES`] (left over from another build: empty the
    /// directory before the tests run).
    UnknownCase(PathBuf, String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RelativeDir(dir) => {
                write!(f, "{RECORDS_ENV}={} is a relative path; give an absolute one", dir.display())
            }
            Self::Dir(dir, e) => write!(f, "records directory {}: {e}", dir.display()),
            Self::File(path, e) => write!(f, "record {}: {e}", path.display()),
            Self::Encode(e) => write!(f, "cannot encode a record: {e}"),
            Self::Parse(path, e) => write!(f, "record {}: not a conformance record: {e}", path.display()),
            Self::UnknownCase(path, case) => write!(
                f,
                "record {}: case `{case}` is not in rela_conformance::CASES (a record from another build?)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for RecordError {}

/// The records directory [`RECORDS_ENV`] names, if it is set and not empty.
pub fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os(RECORDS_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Keeps `[A-Za-z0-9_-]` and turns every other character into `_`, for a file name.
fn file_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Writes `record` to a new file in `dir` (created if missing), never replacing another record:
/// `<backend>.<case>.<test>.json`, or with `.2`, `.3`, … before `.json` if that exists. Returns
/// the file's path.
pub fn write(dir: &Path, record: &CaseRecord) -> Result<PathBuf, RecordError> {
    if dir.is_relative() {
        return Err(RecordError::RelativeDir(dir.to_owned()));
    }
    fs::create_dir_all(dir).map_err(|e| RecordError::Dir(dir.to_owned(), e))?;
    let stem =
        format!("{}.{}.{}", file_part(&record.backend), file_part(&record.case), file_part(&record.test));
    let json = serde_json::to_vec_pretty(record).map_err(RecordError::Encode)?;
    let mut n = 1u32;
    loop {
        let name = if n == 1 { format!("{stem}.json") } else { format!("{stem}.{n}.json") };
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                file.write_all(&json).map_err(|e| RecordError::File(path.clone(), e))?;
                return Ok(path);
            }
            // One test records a case once or a few times; this many copies means a directory
            // that was never emptied.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < MAX_COPIES => n += 1,
            Err(e) => return Err(RecordError::File(path, e)),
        }
    }
}

/// How many records of one backend, case and test [`write`] keeps apart before it gives up.
const MAX_COPIES: u32 = 1000;

/// Reads every `*.json` record in `dir`, in file-name order. A file that is not a record, or a
/// record of a case not in [`CASES`], is an error.
pub fn read_dir(dir: &Path) -> Result<Vec<CaseRecord>, RecordError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| RecordError::Dir(dir.to_owned(), e))? {
        let path = entry.map_err(|e| RecordError::Dir(dir.to_owned(), e))?.path();
        if path.extension().is_some_and(|x| x == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut records = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = fs::read(&path).map_err(|e| RecordError::File(path.clone(), e))?;
        let record: CaseRecord =
            serde_json::from_slice(&bytes).map_err(|e| RecordError::Parse(path.clone(), e))?;
        if crate::case(&record.case).is_none() {
            return Err(RecordError::UnknownCase(path, record.case));
        }
        records.push(record);
    }
    Ok(records)
}

/// Builds one [`BackendReport`] per backend from `records`: first the backends of `expected`,
/// in that order, whether or not they have records (one without any has every case skipped
/// with [`NO_RECORD`]), then any other backend that has records, by name.
///
/// Each report has one result per case of [`CASES`], in that order, merged over the tests
/// that ran it: failed if any failed (every failure's message, with its test), else passed if
/// any passed, else skipped (every distinct reason); the time is their sum. A case with no
/// record is skipped with [`NO_RECORD`].
pub fn reports(records: &[CaseRecord], expected: &[&str]) -> Vec<BackendReport> {
    let mut by_backend: BTreeMap<&str, Vec<&CaseRecord>> = BTreeMap::new();
    for r in records {
        by_backend.entry(r.backend.as_str()).or_default().push(r);
    }
    let mut names: Vec<&str> = expected.to_vec();
    names.extend(by_backend.keys().filter(|b| !expected.contains(b)));
    names
        .into_iter()
        .map(|backend| {
            let mine = by_backend.get(backend).map_or(&[][..], Vec::as_slice);
            let device = mine.iter().find_map(|r| r.device.clone());
            let results = CASES
                .iter()
                .map(|case| merge(case.name, mine.iter().copied().filter(|r| r.case == case.name)))
                .collect();
            BackendReport { backend: backend.to_owned(), device, results }
        })
        .collect()
}

/// One case's result from the records of the tests that ran it.
fn merge<'a>(name: &str, records: impl Iterator<Item = &'a CaseRecord>) -> CaseResult {
    let (mut failures, mut skips, mut passed, mut any, mut millis) =
        (Vec::new(), Vec::new(), false, false, 0u64);
    for r in records {
        any = true;
        millis = millis.saturating_add(r.millis);
        match &r.outcome {
            Outcome::Passed => passed = true,
            Outcome::Failed(why) => failures.push(format!("{why} (test {})", r.test)),
            Outcome::Skipped(why) => {
                if !skips.contains(why) {
                    skips.push(why.clone());
                }
            }
        }
    }
    let outcome = if !failures.is_empty() {
        Outcome::Failed(failures.join("; "))
    } else if passed {
        Outcome::Passed
    } else if any {
        Outcome::Skipped(skips.join("; "))
    } else {
        Outcome::Skipped(NO_RECORD.to_owned())
    };
    CaseResult { name: name.to_owned(), outcome, millis }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Verdict, verdict};

    fn record(backend: &str, test: &str, case: &str, outcome: Outcome) -> CaseRecord {
        CaseRecord {
            backend: backend.into(),
            device: Some("dev (vendor)".into()),
            test: test.into(),
            case: case.into(),
            outcome,
            millis: 3,
        }
    }

    /// Every case of `backend` passed, in tests named after the cases.
    fn all_passed(backend: &str) -> Vec<CaseRecord> {
        CASES.iter().map(|c| record(backend, c.name, c.name, Outcome::Passed)).collect()
    }

    /// A fresh, empty directory under the system's temporary directory.
    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rela-records-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_round_trip_through_a_directory() {
        let dir = scratch("round-trip");
        let mut written = all_passed("host");
        written[1].outcome = Outcome::Skipped("the backend does not expose its raw storage".into());
        written.push(record("cuda", "kernel_add", "kernel_add", Outcome::Skipped("no driver".into())));
        written[0].device = None;
        for r in &written {
            write(&dir, r).expect("written");
        }
        let mut back = read_dir(&dir).expect("read");
        assert_eq!(back.len(), written.len());
        let key = |r: &CaseRecord| (r.backend.clone(), r.case.clone(), r.test.clone());
        back.sort_by_key(key);
        written.sort_by_key(key);
        assert_eq!(back, written);
        fs::remove_dir_all(&dir).expect("removed");
    }

    #[test]
    fn a_second_record_of_one_test_gets_its_own_file() {
        let dir = scratch("same-test");
        let first = record("vulkan", "kernel_add", "kernel_add", Outcome::Passed);
        let second = record("vulkan", "kernel_add", "kernel_add", Outcome::Failed("differs".into()));
        let a = write(&dir, &first).expect("first");
        let b = write(&dir, &second).expect("second");
        assert_ne!(a, b);
        let back = read_dir(&dir).expect("read");
        assert_eq!(back.len(), 2);
        assert!(back.contains(&first) && back.contains(&second));
        fs::remove_dir_all(&dir).expect("removed");
    }

    #[test]
    fn unreadable_records_are_errors() {
        assert!(matches!(
            write(Path::new("relative/records"), &all_passed("host")[0]),
            Err(RecordError::RelativeDir(_))
        ));
        let dir = scratch("bad");
        fs::create_dir_all(&dir).expect("made");
        assert!(matches!(read_dir(&dir.join("missing")), Err(RecordError::Dir(..))));
        fs::write(dir.join("x.json"), b"{\"backend\": 1}").expect("written");
        assert!(matches!(read_dir(&dir), Err(RecordError::Parse(..))));
        fs::remove_file(dir.join("x.json")).expect("removed");
        write(&dir, &record("host", "t", "no_such_case", Outcome::Passed)).expect("written");
        let Err(RecordError::UnknownCase(_, case)) = read_dir(&dir) else { panic!("unknown case accepted") };
        assert_eq!(case, "no_such_case");
        fs::remove_dir_all(&dir).expect("removed");
    }

    #[test]
    fn complete_records_make_the_suites_reports() {
        let mut records = all_passed("host");
        records.extend(all_passed("vulkan"));
        let reports = reports(&records, &["host", "vulkan"]);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].backend, "host");
        assert_eq!(reports[0].device.as_deref(), Some("dev (vendor)"));
        let names: Vec<&str> = reports[1].results.iter().map(|r| r.name.as_str()).collect();
        let all: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        assert_eq!(names, all, "one result per case, in CASES order");
        assert_eq!(reports[1].counts(), (CASES.len(), 0, 0));
        assert_eq!(verdict(&reports, &|_| false), Verdict::Passed);
    }

    #[test]
    fn a_missing_case_is_incomplete_not_passed() {
        let mut records = all_passed("vulkan");
        let gone = records.remove(5);
        let reports = reports(&records, &["vulkan"]);
        let missing = &reports[0].results[5];
        assert_eq!(missing.name, gone.case);
        assert_eq!(missing.outcome, Outcome::Skipped(NO_RECORD.into()));
        // Even where the backend may be absent from the machine: it has records, so it ran.
        for may_be_absent in [false, true] {
            let v = verdict(&reports, &|_| may_be_absent);
            let Verdict::Incomplete(why) = v else { panic!("a missing case passed: {v:?}") };
            assert!(why.iter().any(|w| w.contains(NO_RECORD)), "{why:?}");
        }
    }

    #[test]
    fn an_expected_backend_without_records_is_incomplete() {
        let records = all_passed("host");
        let reports = reports(&records, &["host", "vulkan"]);
        assert_eq!(reports[1].backend, "vulkan");
        assert_eq!(reports[1].device, None);
        assert_eq!(reports[1].counts(), (0, 0, CASES.len()));
        for may_be_absent in [false, true] {
            assert!(matches!(verdict(&reports, &|_| may_be_absent), Verdict::Incomplete(_)));
        }
        // Records of a backend that was not expected are reported too.
        let reports = super::reports(&all_passed("wgpu-gl"), &["host"]);
        let names: Vec<&str> = reports.iter().map(|r| r.backend.as_str()).collect();
        assert_eq!(names, ["host", "wgpu-gl"]);
    }

    #[test]
    fn a_failed_record_fails_the_case_whatever_else_passed() {
        let mut records = all_passed("vulkan");
        let case = records[3].case.clone();
        records.push(record("vulkan", "staging::x", &case, Outcome::Failed("byte 7 differs".into())));
        let reports = reports(&records, &["vulkan"]);
        assert_eq!(reports[0].results[3].outcome, Outcome::Failed("byte 7 differs (test staging::x)".into()));
        assert_eq!(reports[0].results[3].millis, 6);
        assert_eq!(verdict(&reports, &|_| true), Verdict::Failed);
    }

    #[test]
    fn skips_merge_with_passes_and_keep_their_reasons() {
        let mut records = all_passed("host");
        let case = records[0].case.clone();
        // One test skipped the case, another passed it: it passed.
        records.push(record("host", "checked::a", &case, Outcome::Skipped("the backend does not x".into())));
        // A case every test skipped keeps each distinct reason once.
        let other = records[1].case.clone();
        records[1].outcome = Outcome::Skipped("the backend does not y".into());
        records.push(record("host", "staging::b", &other, Outcome::Skipped("the backend does not y".into())));
        records.push(record("host", "tiles::b", &other, Outcome::Skipped("the backend does not z".into())));
        let reports = reports(&records, &["host"]);
        assert_eq!(reports[0].results[0].outcome, Outcome::Passed);
        assert_eq!(
            reports[0].results[1].outcome,
            Outcome::Skipped("the backend does not y; the backend does not z".into())
        );
    }

    #[test]
    fn an_unavailable_backend_shows_as_skipped_with_its_reason() {
        let records: Vec<CaseRecord> = CASES
            .iter()
            .map(|c| CaseRecord {
                device: None,
                ..record("cuda", c.name, c.name, Outcome::Skipped("no driver".into()))
            })
            .collect();
        let mut all = all_passed("host");
        all.extend(records);
        let reports = reports(&all, &["host", "cuda"]);
        assert_eq!(reports[1].device, None);
        let table = crate::render_table(&reports);
        assert!(table.contains("SKIPPED cuda (all cases): no driver"), "{table}");
        // Absent from the machine (and not required): only reported.
        assert_eq!(verdict(&reports, &|b| b == "cuda"), Verdict::Passed);
        assert!(matches!(verdict(&reports, &|_| false), Verdict::Incomplete(_)));
    }
}
