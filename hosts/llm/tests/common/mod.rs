//! The real GGUF file for the tests that need it.

use std::path::PathBuf;
use std::sync::OnceLock;

use rela_llm::GgufFile;

/// File name hosts/models/fetch-model.sh models SmolLM2-135M-Instruct.Q4_1 gives the model.
pub(crate) const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `RELA_GGUF`, or `<repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub(crate) fn path() -> PathBuf {
    std::env::var_os("RELA_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models").join(FILE))
}

/// The parsed file, read once per test binary; `None` (with the reason on stderr) when it is
/// absent, unless `RELA_REQUIRE_GGUF=1`, which makes its absence a failure.
pub(crate) fn model(test: &str) -> Option<&'static GgufFile> {
    static FILE_: OnceLock<Result<GgufFile, String>> = OnceLock::new();
    let loaded = FILE_.get_or_init(|| {
        let p = path();
        if !p.exists() {
            return Err(format!(
                "{} is absent (run hosts/models/fetch-model.sh models SmolLM2-135M-Instruct.Q4_1)",
                p.display()
            ));
        }
        GgufFile::open(&p).map_err(|e| format!("{} did not open: {e}", p.display()))
    });
    match loaded {
        Ok(f) => Some(f),
        Err(why) if why.contains("is absent") && std::env::var("RELA_REQUIRE_GGUF").as_deref() != Ok("1") => {
            eprintln!("SKIPPED {test}: {why}; set RELA_REQUIRE_GGUF=1 to make this a failure");
            None
        }
        Err(why) => panic!("{test}: {why}"),
    }
}

/// A fixture file's JSON.
pub(crate) fn fixture(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Whether 8-bit activations run as such on this CPU (they need AVX-512; elsewhere they run as
/// f32, which would make a test of them prove nothing): if not, `test` is reported skipped.
#[allow(dead_code, reason = "not every test binary checks 8-bit activations")]
pub(crate) fn q8_runs_here(test: &str) -> bool {
    let runs = rela_llm::Activations::Q8.runs_here();
    if !runs {
        eprintln!("*** SKIPPED {test}: no AVX-512 on this CPU, so 8-bit activations run as f32 ***");
    }
    runs
}
