#!/usr/bin/env bash
# rela-ffi as static libraries for Android (aarch64, armv7, x86_64): the C ABI an app links with
# the NDK (README, "Android"). Only the staticlib is built (a shared library would need the NDK's
# linker), in the debug profile, which builds faster than release here and proves the same thing:
# everything compiles and archives for the target with no C compiler (rela-ffi without its `tls`
# feature; ring would need the NDK's clang). Apps build release with cargo-ndk, TLS included.
set -euo pipefail
cd "$(dirname "$0")/../.."
targets=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android)
rustup target add "${targets[@]}" >/dev/null
start=$SECONDS
for t in "${targets[@]}"; do
  cargo rustc -q -p rela-ffi --no-default-features --lib --crate-type staticlib --target "$t"
  lib=target/$t/debug/librela_ffi.a
  [ -s "$lib" ] || { echo "no $lib" >&2; exit 1; }
  # The archive holds the C ABI.
  symbols=$(nm -g --defined-only "$lib" 2>/dev/null)
  grep -q ' T rela_connect$' <<< "$symbols" || { echo "$lib lacks rela_connect" >&2; exit 1; }
  echo "$t: $lib ($(du -h "$lib" | cut -f1))"
done
echo "Android static libraries built in $((SECONDS - start)) s"
