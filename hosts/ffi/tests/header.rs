//! `include/rela.h` is what cbindgen makes of the crate today. A stale header fails here; to
//! regenerate it, run
//!
//! ```sh
//! RELA_BLESS_HEADER=1 cargo test -p rela-ffi --test header
//! ```

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses the crate");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include/rela.h");
    if std::env::var_os("RELA_BLESS_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/rela.h");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "hosts/ffi/include/rela.h is stale (it differs from what cbindgen makes of hosts/ffi/src).\n\
         Regenerate it with: RELA_BLESS_HEADER=1 cargo test -p rela-ffi --test header\n\
         --- fresh header ---\n{}",
        String::from_utf8_lossy(&fresh)
    );
}
