//! Records the build for `vram-relay --version`: the git commit (when built from a checkout),
//! the profile and the target.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let build = match commit {
        Some(c) => format!("commit {c}, {profile} profile, {target}"),
        None => format!("{profile} profile, {target}"),
    };
    println!("cargo:rustc-env=VRAM_RELAY_BUILD={build}");
    // A new commit changes HEAD or the branch it points to.
    for path in ["../../.git/HEAD", "../../.git/refs/heads", "../../.git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
