#!/usr/bin/env bash
# Builds llama.cpp's C++ server (`llama-server`) from the llama.cpp sources that llama-cpp-python's
# source archive carries (vendor/llama.cpp), for this CPU, as the peer of
# `generate_servers.py --llama-server BIN` (continuous batching over --parallel slots). Not part
# of CI: about 15 minutes on 2 cores. Prints the binary's path on its last line.
#
# Usage: scripts/bench/build-llama-server.sh [WORK_DIR]   (default target/llama-server)
# Needs python3 with pip (cmake and ninja come from PyPI into WORK_DIR/venv), a C++ compiler.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${1:-$repo/target/llama-server}"
version=0.3.36
bin="$work/src/build/bin/llama-server"
mkdir -p "$work"
[[ -x "$work/venv/bin/cmake" ]] || { python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q cmake ninja; }
if [[ ! -f "$work/src/CMakeLists.txt" ]]; then
    python3 "$repo/hosts/models/pypi_sdist.py" llama-cpp-python "$version" "$work/sdist.tar.gz"
    mkdir -p "$work/src"
    tar xzf "$work/sdist.tar.gz" -C "$work/src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
    rm -f "$work/sdist.tar.gz"
fi
# For this CPU; on a CPU with AMX, every AVX-512 extension but AMX instead: the native build
# dies with SIGILL or SIGSEGV at its first evaluation on such a VM (as generate-peers.sh does for
# llama-cpp-python).
cpu=(-DGGML_NATIVE=ON)
if grep -qw amx_tile /proc/cpuinfo; then
    cpu=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
         -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
fi
PATH="$work/venv/bin:$PATH" cmake -S "$work/src" -B "$work/src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    "${cpu[@]}" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
PATH="$work/venv/bin:$PATH" ninja -C "$work/src/build" llama-server >&2
echo "$bin"
