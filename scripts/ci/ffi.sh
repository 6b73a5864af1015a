#!/usr/bin/env bash
# The C ABI (hosts/ffi) from C: the example program and the README's C example, compiled with the
# system C compiler against the static and the shared library, run against a live node with a
# token. Assumes `cargo test --workspace` ran (target/debug/vram-relay); builds rela-ffi.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/ci/lib/node.sh

cargo build -q -p rela-ffi
out=$(mktemp -d)
cflags=(-std=c11 -Wall -Wextra -Werror -pedantic -Ihosts/ffi/include)
# What the static library needs from the system (`cargo rustc -- --print native-static-libs`).
static_libs=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)

cc "${cflags[@]}" hosts/ffi/examples/c/example.c target/debug/librela_ffi.a "${static_libs[@]}" -o "$out/example-static"
cc "${cflags[@]}" hosts/ffi/examples/c/example.c -Ltarget/debug -lrela_ffi -o "$out/example-shared"
# The header also compiles as C++ (where a C++ compiler is installed).
if command -v c++ >/dev/null 2>&1; then
  c++ -std=c++17 -Wall -Werror -fsyntax-only -x c++ -Ihosts/ffi/include - <<< '#include "rela.h"'
else
  echo "no c++ compiler: the header's C++ check is skipped"
fi

# The README's C example, as printed there.
awk '/<!-- c-example: compiled by scripts\/ci\/ffi.sh -->/ { on = 1; next }
     on && /^```c/ { next }
     on && /^```/ { exit }
     on { print }' README.md > "$out/readme.c"
[ -s "$out/readme.c" ] || { echo "README.md has no C example marked for CI" >&2; exit 1; }
cc "${cflags[@]}" "$out/readme.c" target/debug/librela_ffi.a "${static_libs[@]}" -o "$out/readme"

start_node
"$out/example-static" 127.0.0.1 "$NODE_PORT" "$NODE_TOKEN_FILE" "$NODE_DISCOVERY_PORT"
LD_LIBRARY_PATH=target/debug "$out/example-shared" 127.0.0.1 "$NODE_PORT" "$NODE_TOKEN_FILE"
"$out/readme" 127.0.0.1 "$NODE_PORT" "$(cat "$NODE_TOKEN_FILE")"
# Without the token the example must fail, saying why.
if "$out/example-static" 127.0.0.1 "$NODE_PORT" 2> "$out/err"; then
  echo "the example connected without the token" >&2
  exit 1
fi
grep -q "RELA_ERR_TOKEN_REQUIRED" "$out/err" || { cat "$out/err" >&2; exit 1; }
rm -rf "$out"
echo "C ABI: example and README example ok against a live node (static and shared library)"
