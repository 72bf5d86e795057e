#!/usr/bin/env bash
# Packs what bench/gpu_smoke.sh needs on a GPU machine that has torch, transformers and accelerate but no
# registry access: run this where PyPI can be reached, then carry the result there.
#
#   bash bench/gpu_smoke_prep.sh [--python-version X.Y] [--out bench/gpu_smoke_bundle.tar.xz] [--dry-run]
#
# --python-version: the GPU machine's Python (default: 3.12, the borrowed GPU machine's 3.12.3, not
#   this machine's); only wheels are fetched (pip download --only-binary=:all: --python-version X.Y),
#   those with compiled code for that Python and manylinux x86_64.
# Output (git-ignored): bench/gpu_smoke_bundle.tar.xz, about 45 MB, holding bundle/site/ (the wheels
# below unpacked: unsloth, unsloth_zoo without studio/, trl, peft, bitsandbytes with only its CUDA 13
# library, datasets, requests and pillow (the GPU image lacks both) and the small packages these
# import), bundle/tokenizer/ (the bundled
# SmolLM2-135M-Instruct tokenizer, from ./install.sh's data dir) and bundle/python-version.
# Carry it with the command that runs the check, e.g. the device tool's
#   carry: ["bench/gpu_smoke_bundle.tar.xz"]   command: bash bench/gpu_smoke.sh
# (at most 64 MiB travels with a command), or copy it next to the repository on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PYVER=3.12  # the GPU machine's Python (3.12.3), whatever this one is
OUT=bench/gpu_smoke_bundle.tar.xz
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --dry-run) DRY_RUN=1; shift;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
ABI="cp${PYVER/./}"

# name[==version]: versions from constraints-cpu.txt (the tested CPU stack) where it pins them.
PACKAGES=(
  unsloth unsloth_zoo trl peft bitsandbytes==0.50.2 cut_cross_entropy torchao
  tyro docstring-parser typeguard shtab rich markdown-it-py mdurl pygments msgspec
  sentencepiece protobuf pydantic pydantic-core typing-inspection annotated-types typer click structlog nest-asyncio
  datasets pyarrow dill multiprocess xxhash pandas python-dateutil six tzdata httpx httpcore h11 anyio
  math-verify latex2sympy2_extended antlr4-python3-runtime
  requests urllib3 charset-normalizer idna certifi pillow
)
pin() {
  local name=$1
  case "$name" in *==*) echo "$name"; return;; esac
  local key version
  key=$(echo "$name" | tr '[:upper:]_' '[:lower:]-')
  version=$(tr '[:upper:]_' '[:lower:]-' < constraints-cpu.txt | sed -n "s/^${key}==//p" | head -1)
  if [ -n "$version" ]; then echo "${name}==${version}"; else echo "$name"; fi
}
SPECS=()
for name in "${PACKAGES[@]}"; do SPECS+=("$(pin "$name")"); done

echo "bundle for Python $PYVER ($ABI, manylinux x86_64): ${SPECS[*]}"
if [ "$DRY_RUN" = "1" ]; then
  echo "dry run: would download those wheels, unpack them, add the tokenizer and write $OUT"
  exit 0
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/grpo-box-smoke-bundle.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/wheels" "$STAGE/bundle/site" "$STAGE/bundle/tokenizer"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$STAGE/wheels" "${SPECS[@]}"

# A wheel is a zip whose root is what site-packages holds: unpacking it is installing it (no scripts).
"$PY" - "$STAGE/wheels" "$STAGE/bundle/site" <<'PYEOF'
import sys, zipfile
from pathlib import Path
wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    print("  unpacked", wheel.name)
PYEOF
# Trim what the check never loads, to stay well under 64 MiB: Unsloth Studio's app (the unsloth wheel
# carries it as a top-level studio/ package, ~80 MB), bitsandbytes' libraries for other CUDA versions
# and back ends, pyarrow's headers, tests, Flight, Substrait and S3 (imported only on demand, S3 inside
# a try), pandas' tests, byte-code caches.
SITE="$STAGE/bundle/site"
rm -rf "$SITE/studio" "$SITE/unsloth_zoo/studio" "$SITE/unsloth/studio" "$SITE/pyarrow/include" "$SITE/pyarrow/tests" \
       "$SITE/pyarrow/src" "$SITE/pandas/tests"
find "$SITE/bitsandbytes" -name 'libbitsandbytes_*' ! -name 'libbitsandbytes_cuda130*' -delete
find "$SITE/pyarrow" \( -name 'libarrow_flight*' -o -name '_flight*' -o -name 'libarrow_substrait*' -o -name '_substrait*' \
     -o -name 'libarrow_s3*' -o -name '_s3fs*' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -delete
find "$SITE" -name '__pycache__' -type d -prune -exec rm -rf {} +
ls "$STAGE/bundle/site/bitsandbytes"/libbitsandbytes_cuda130* >/dev/null \
  || { echo "bitsandbytes has no CUDA 13 library in this wheel" >&2; exit 1; }

TOKENIZER=$("$PY" -c "from grpo_box.models import ensure_bundled_model; print(ensure_bundled_model())" | tail -1)
for file in tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja generation_config.json; do
  [ -f "$TOKENIZER/$file" ] && cp "$TOKENIZER/$file" "$STAGE/bundle/tokenizer/"
done
echo "$PYVER" > "$STAGE/bundle/python-version"
printf '%s\n' "${SPECS[@]}" > "$STAGE/bundle/MANIFEST"
XZ_OPT="-6 -T0" tar -cJf "$OUT" -C "$STAGE" bundle
SIZE=$(du -m "$OUT" | cut -f1)
echo "wrote $OUT (${SIZE} MB)"
if [ "$SIZE" -gt 60 ]; then
  echo "warning: over 60 MB; at most 64 MiB travels with a device command" >&2
fi
