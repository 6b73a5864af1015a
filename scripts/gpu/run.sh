#!/usr/bin/env bash
# The GPU checks of docs/CONFORMANCE.md and the GPU rows of docs/BENCHMARKS.md, in one command
# for the device machine (see prepare.sh): the CUDA, Vulkan and wgpu backend tests with those
# backends required, the conformance table of every backend, and `bench --spawn` against CUDA
# and Vulkan (relay vs raw TCP, and through the node vs the backend, i.e. the driver's own
# copies, called directly), `bench-contention` (a light session's latency beside heavy
# ones) on both, and `bench-embed` on every backend where models/ holds the embedding model. Everything is logged under $OUT (or gpu-out/). Exits non-zero if a
# test or the conformance run failed; the benches run either way.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
# Mesa's and NVIDIA's EGL probing want a private runtime directory (wgpu's GL backend).
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"
# prepare.sh packs the binaries into one archive; unpack it once.
if [ -f .gpu/bundle.tgz ]; then tar xzf .gpu/bundle.tgz -C .gpu && rm .gpu/bundle.tgz; fi
[ -x .gpu/vram-relay ] || { echo "no .gpu/: run scripts/gpu/prepare.sh first and carry .gpu" >&2; exit 2; }
# Vulkan loader and NVIDIA ICD on a bare device machine (see the device tool's notes).
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
{ date -u; uname -a; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1; } | tee "$out/device.txt"
# Require the GPU backends only where a GPU is present: elsewhere this is a dry run that skips.
if nvidia-smi -L >/dev/null 2>&1; then export RELA_REQUIRE_BACKENDS=cuda,vulkan; fi
status=0
for t in .gpu/tests/*; do
  name=$(basename "$t")
  echo "== $name"
  "$t" --test-threads 1 >"$out/test-$name.log" 2>&1
  rc=$?
  grep -E "^test result|FAILED|panicked|SKIPPED" "$out/test-$name.log" || true
  [ "$rc" -eq 0 ] || status=1
done
# Queues (issue #12: a CUDA stream per session, no device wait per call): the probes print how
# long a small WRITE+READ on one queue took while another queue's MATMULs ran, and 2000
# dependent ADDs with one READ at the end (the same probe as Vulkan's and wgpu's).
if [ -x .gpu/tests/cuda-device ]; then
  echo "== cuda queue probes"
  .gpu/tests/cuda-device --test-threads 1 --nocapture a_read_on_one_queue_while_another_computes \
    dispatch_chain 2>&1 | tee "$out/cuda-queues.txt" | grep -E "MATMUL|ADDs|SKIPPED|test result|panicked" || true
fi
echo "== conformance"
.gpu/vram-relay conformance --backend all 2>&1 | tee "$out/conformance.txt" || status=1
for backend in cuda vulkan; do
  echo "== bench $backend"
  timeout 240 .gpu/vram-relay bench --spawn --backend "$backend" --size 1GiB --buffer 256MiB \
    --sessions 1,8 --pings 1000 --repeat 3 2>&1 | tee "$out/bench-$backend.txt"
done
for backend in cuda vulkan; do
  echo "== bench-contention $backend"
  # A light session beside two heavy ones (MATMUL 2048³), each phase 5 s (docs/ARCHITECTURE.md).
  timeout 120 .gpu/vram-relay bench-contention --backend "$backend" --heavy 2 --matmul 2048 \
    --seconds 5 2>&1 | tee "$out/contention-$backend.txt"
done
# Embeddings on every GPU backend against the host backend, through the node and in-process
# (docs/BENCHMARKS.md, issue #13). The model is not in .gpu (it is ~90 MB, and the device
# machine reaches no network): this runs where hosts/models/fetch-model.sh has filled models/.
if [ -d models/all-MiniLM-L6-v2 ]; then
  echo "== bench-embed"
  timeout 300 .gpu/vram-relay bench-embed --models models --backend host,cuda,vulkan,wgpu-vulkan \
    --batches 1,8,32 --seconds 3 2>&1 | tee "$out/bench-embed.txt"
else
  echo "SKIPPED bench-embed: no models/all-MiniLM-L6-v2 here (run hosts/models/fetch-model.sh models)" |
    tee "$out/bench-embed.txt"
fi
exit "$status"
