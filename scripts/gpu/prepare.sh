#!/usr/bin/env bash
# Builds here, on a machine without a GPU, what scripts/gpu/run.sh runs on a GPU machine, into
# .gpu/ (git-ignored): the CLI and the test binaries of the CUDA, Vulkan and wgpu backends,
# release builds, stripped (about 50 MiB in all). The device machine then needs no Rust
# toolchain: carry `.gpu` and run `bash scripts/gpu/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu
mkdir -p .gpu/tests
cargo build --release -p vram-relay
cp target/release/vram-relay .gpu/vram-relay
strip .gpu/vram-relay
for crate in rela-backend-cuda rela-backend-vulkan rela-backend-wgpu; do
  cargo test --release -p "$crate" --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + " " + m["executable"])
' | while read -r name exe; do
    dst=".gpu/tests/${crate#rela-backend-}-$name"
    cp "$exe" "$dst"
    strip "$dst"
  done
done
du -sh .gpu
ls .gpu/tests
