#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS_PER_TARGET seconds (default 30).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# RELA_FUZZ_JOBS=N runs N targets at a time (default 1; each libFuzzer process uses one core, so
# up to the number of cores keeps every target's time its own).
#
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`). Each target starts from a
# scratch copy of its committed seeds (fuzz/corpus/<target>/seed-*), so the committed corpus
# stays small; crash inputs land in fuzz/artifacts/<target>/. Exits non-zero if any target
# crashes, leaks, times out or fails to build. Extra libFuzzer flags: FUZZ_ARGS="-max_len=8192".
set -euo pipefail

secs="${1:-30}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

targets=(header frame request response discovery session lz4 gguf kernels)
scratch="$(mktemp -d "${TMPDIR:-/tmp}/rela-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

echo "== building ${#targets[@]} targets (release, debug assertions, ASan)"
cargo +nightly fuzz build

triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="${CARGO_TARGET_DIR:-$here/target}/$triple/release"

jobs="${RELA_FUZZ_JOBS:-1}"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "RELA_FUZZ_JOBS must be a positive integer, not '$jobs'" >&2; exit 2; }

# Runs target $1 for $secs seconds; leaves its summary line in $scratch/$1.summary and its exit
# code in $scratch/$1.rc.
run_target() {
    local t="$1" corpus="$scratch/$1" log="$scratch/$1.log" start elapsed execs cov rc=0
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$bin_dir/$t" "$corpus" \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$here/artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    elapsed=$(( $(date +%s) - start ))
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 || true)"
    printf '%-10s %12s execs %5ss  %s  rc=%s\n' "$t" "${execs:-?}" "$elapsed" "${cov:-}" "$rc" >"$scratch/$t.summary"
    echo "$rc" >"$scratch/$t.rc"
}

running=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "$here/artifacts/$t"
    cp "$here"/corpus/"$t"/seed-* "$scratch/$t"/ 2>/dev/null || true
    if (( running >= jobs )); then
        wait -n || true
        running=$((running - 1))
    fi
    echo "== $t: ${secs}s"
    run_target "$t" &
    running=$((running + 1))
done
wait

failed=()
summary=()
for t in "${targets[@]}"; do
    rc="$(cat "$scratch/$t.rc" 2>/dev/null || echo '?')"
    summary+=("$(cat "$scratch/$t.summary" 2>/dev/null || echo "$t: no result")")
    if [[ "$rc" != 0 ]]; then
        failed+=("$t")
        echo "!! $t failed (rc=$rc); last lines of its log:"
        tail -n 40 "$scratch/$t.log" 2>/dev/null || true
    fi
done

echo
echo "== summary (target, executions, seconds, coverage, exit code)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -ne 0 ]]; then
    echo "FAILED: ${failed[*]} (inputs under fuzz/artifacts/)"
    exit 1
fi
echo "all targets passed"
