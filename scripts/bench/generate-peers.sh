#!/usr/bin/env bash
# Text generation on the host: rela-llm's forward pass against llama.cpp (llama-cpp-python) on
# the same CPU, the same GGUF (SmolLM2-135M-Instruct Q4_1) and the same thread count, alternating
# runs in one run: prompt processing and decode tokens/s for one stream. Also checks llama.cpp's
# tokenizer and its greedy generation against the transformers fixture. Then the servers:
# `vram-relay serve` against llama.cpp's server (`python -m llama_cpp.server`) with 1, 4, 8...
# concurrent streaming generations each (generate_servers.py): aggregate tokens/s and time to
# first token.
# Not part of CI (llama-cpp-python builds llama.cpp from source: many minutes on 2 cores).
#
# Usage: scripts/bench/generate-peers.sh [--threads N[,N...]] [--prompt N] [--decode N]
#                                        [--rounds R] [--json PREFIX] [--sessions N[,N...]]
#                                        [--tokens N] [--no-single] [--no-servers] [--llama-server]
#   --threads defaults to the CPU count; a list runs the comparisons once per count.
#   --sessions (default 1,4,8) and --tokens (greedy tokens per stream, default 48) are the
#   servers'; --rounds applies to both parts. --no-single / --no-servers skip a part.
#   --llama-server: the servers' peer is llama.cpp's C++ llama-server with a slot per stream and
#   continuous batching (built by build-llama-server.sh), instead of llama-cpp-python's server.
#
# Environment: RELA_ACTIVATIONS=q8 runs rela's side (generate_bench, and `vram-relay serve`, whose
# --activations reads it) with 8-bit activations; GENERATE_PEERS_VENV (default target/generate-peers-venv), PYTHON (default
# python3), LLAMA_CPP_PYTHON (default llama-cpp-python[server]==0.3.36: the server's dependencies
# too), LLAMA_CMAKE_ARGS (default
# -DGGML_NATIVE=ON: llama.cpp built for this CPU; on a CPU with AMX, every AVX-512 extension but
# AMX instead, since the native build crashed on its first evaluation on such a VM, see
# docs/BENCHMARKS.md), GENERATE_PEERS_NO_BUILD=1 (use the binaries already under target/release).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

threads="$(nproc)"
json=""
sessions="1,4,8"
tokens=48
rounds=()
single=1
servers=1
llama_server=()
args=()
while (($#)); do
    case "$1" in
        --threads) threads="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        --sessions) sessions="$2"; shift 2 ;;
        --tokens) tokens="$2"; shift 2 ;;
        --rounds) rounds=(--rounds "$2"); args+=("$1" "$2"); shift 2 ;;
        --no-single) single=""; shift ;;
        --no-servers) servers=""; shift ;;
        --llama-server) llama_server=(--llama-server "$("$here/build-llama-server.sh" | tail -n 1)"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done

venv="${GENERATE_PEERS_VENV:-$repo/target/generate-peers-venv}"
model="$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf"

hosts/models/fetch-model.sh "$repo/models" SmolLM2-135M-Instruct.Q4_1

# A venv from before the server comparison: add the server's dependencies, not a new build.
if "$venv/bin/python" -c "import llama_cpp" 2>/dev/null && ! "$venv/bin/python" -c "import llama_cpp.server.app" 2>/dev/null; then
    "$venv/bin/pip" install -q "llama-cpp-python[server]==$("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
fi
if ! "$venv/bin/python" -c "import llama_cpp, numpy, llama_cpp.server.app" 2>/dev/null; then
    echo "generate-peers: setting up $venv (building llama.cpp from source takes a while)" >&2
    "${PYTHON:-python3}" -m venv "$venv"
    cmake_args="-DGGML_NATIVE=ON"
    if grep -qw amx_tile /proc/cpuinfo; then
        cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
        cmake_args+=" -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
    fi
    CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$cmake_args}" "$venv/bin/pip" install -q --no-cache-dir \
        --no-binary llama-cpp-python "${LLAMA_CPP_PYTHON:-llama-cpp-python[server]==0.3.36}" numpy
fi

if [[ -z "${GENERATE_PEERS_NO_BUILD:-}" ]]; then
    cargo build --release -q -p rela-llm --example generate_bench
    if [[ -n "$servers" ]]; then
        cargo build --release -q -p vram-relay --bin vram-relay
        cargo build --release -q -p rela-node --example generate_sessions
    fi
fi

echo "generate-peers: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
echo "generate-peers: rela's activations ${RELA_ACTIVATIONS:-f32}"
echo "generate-peers: OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset} (passive keeps llama.cpp's idle threads from spinning on a shared machine)"
echo "generate-peers: llama.cpp $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode().strip())')"
for t in ${threads//,/ }; do
    if [[ -n "$single" ]]; then
        out=()
        [[ -n "$json" ]] && out=(--json "$json-$t.json")
        "$venv/bin/python" "$here/generate_peers.py" --model "$model" --bench target/release/examples/generate_bench \
            --fixtures hosts/llm/tests/fixtures --threads "$t" "${out[@]}" "${args[@]}"
    fi
    if [[ -n "$servers" ]]; then
        out=()
        [[ -n "$json" ]] && out=(--json "$json-servers-$t.json")
        "$venv/bin/python" "$here/generate_servers.py" --model "$model" --models-dir "$repo/models" \
            --relay target/release/vram-relay --sessions-bin target/release/examples/generate_sessions \
            --threads "$t" --sessions "$sessions" --tokens "$tokens" "${rounds[@]}" "${out[@]}" "${llama_server[@]}"
        echo "generate-peers: load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
done
echo "generate-peers: load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
