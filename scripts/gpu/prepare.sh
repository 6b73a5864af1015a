#!/usr/bin/env bash
# Builds here, on a machine without a GPU, what scripts/gpu/run.sh runs on a GPU machine, into
# .gpu/ (git-ignored): the CLI, the test binaries of the CUDA, Vulkan and wgpu backends and
# rela-llm's device forward-pass test, release builds, stripped, packed into .gpu/bundle.tgz
# (it prints the sizes: the archive must stay under the 64 MiB a device call can carry). The
# device machine then needs no Rust toolchain: carry `.gpu` and run `bash scripts/gpu/run.sh`.
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
# The llama forward pass on the device backends (hosts/llm/tests/device.rs): its tiny random
# model needs no file; the SmolLM2 cases run where models/ holds the GGUF (too large to carry).
cargo test --release -p rela-llm --test device --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
' | while read -r exe; do
  cp "$exe" .gpu/tests/llm-device
  strip .gpu/tests/llm-device
done
ls .gpu/tests
du -sh .gpu
# A carried folder may hold 64 MiB in all, and the binaries are more: they travel as one gzip
# archive (about 30 MiB), which run.sh unpacks.
tar czf .gpu-bundle.tgz -C .gpu .
rm -rf .gpu
mkdir .gpu
mv .gpu-bundle.tgz .gpu/bundle.tgz
du -sh .gpu/bundle.tgz
