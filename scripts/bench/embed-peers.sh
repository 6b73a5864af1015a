#!/usr/bin/env bash
# all-MiniLM-L6-v2 on a vram-relay node (host backend) against sentence-transformers and
# onnxruntime on the same CPU, side by side in one run; and GEMM GFLOP/s against numpy.
# Not part of CI (it downloads torch from PyPI, a few GiB, and takes minutes).
#
# Usage: scripts/bench/embed-peers.sh [--threads N] [--seconds S] [--rounds R] [--batches 1,32]
#                                     [--texts N] [--no-onnx] [--json FILE]
#   --threads defaults to the CPU count: torch, onnxruntime and the node's kernel pool
#   (RELA_KERNEL_THREADS) all get it. Other options go to scripts/bench/embed_peers.py.
#
# Environment: EMBED_PEERS_VENV (default target/embed-peers-venv), EMBED_PEERS_PORT (default
# 18765), PYTHON (default python3), EMBED_PEERS_NO_BUILD=1 (use the binaries already in
# target/release).
#
# Steps: fetch the model (hosts/models/fetch-model.sh), make the virtual environment once
# (sentence-transformers pulls torch from PyPI; onnx and onnxruntime beside it), build the CLI,
# the persistent client (rela-client example embed_session) and the GEMM bench (rela-kernels
# example gemm_gflops) in release, start `vram-relay serve --backend host` on loopback, run
# embed_peers.py, stop the node.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

threads="$(nproc)"
args=()
while (($#)); do
    case "$1" in
        --threads) threads="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

venv="${EMBED_PEERS_VENV:-$repo/target/embed-peers-venv}"
port="${EMBED_PEERS_PORT:-18765}"
work="$repo/target/embed-peers"
mkdir -p "$work"

hosts/models/fetch-model.sh "$repo/models"

if ! "$venv/bin/python" -c "import sentence_transformers, numpy, onnx, onnxruntime" 2>/dev/null; then
    echo "embed-peers: setting up $venv (torch from PyPI is large)" >&2
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q sentence-transformers numpy
    "$venv/bin/pip" install -q onnx onnxruntime || echo "embed-peers: onnxruntime did not install; running without it" >&2
fi

if [[ -z "${EMBED_PEERS_NO_BUILD:-}" ]]; then
    cargo build --release -q -p vram-relay
    cargo build --release -q -p rela-client --example embed_session
    cargo build --release -q -p rela-kernels --features std --example gemm_gflops
fi

RELA_KERNEL_THREADS="$threads" target/release/vram-relay serve --backend host --models "$repo/models" \
    --listen "127.0.0.1:$port" --no-discovery --quota 1GiB --idle-timeout 0 \
    >"$work/node.log" 2>&1 &
node=$!
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$node" 2>/dev/null || { cat "$work/node.log" >&2; exit 1; }
    sleep 0.1
done

echo "embed-peers: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" "$venv/bin/python" "$here/embed_peers.py" \
    --model-dir "$repo/models/all-MiniLM-L6-v2" --node "127.0.0.1:$port" \
    --client target/release/examples/embed_session --gemm target/release/examples/gemm_gflops \
    --work "$work" --threads "$threads" "${args[@]}"
echo "embed-peers: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
