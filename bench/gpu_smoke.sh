#!/usr/bin/env bash
# GPU smoke check for GRPO Box (issue 13): a few minutes on a borrowed NVIDIA GPU (an H100/H200 takes
# about 5-8 minutes), no network. Record its summary in README.md's "GPU notes".
#
#   bash bench/gpu_smoke.sh            on the GPU machine, from the repository root
#   bash bench/gpu_smoke.sh --dry-run  the same plumbing on the CPU with this repo's .venv (a test runs it)
#
# What it needs on the GPU machine:
#   - Python with torch (a CUDA build), transformers 5.17, accelerate (and nvidia-ml-py, optional);
#   - bench/gpu_smoke_bundle.tar.xz, made by bench/gpu_smoke_prep.sh on a machine with registry access:
#     unsloth, unsloth_zoo (without studio/), trl, peft, bitsandbytes (CUDA 13 library only) and the
#     small pure-Python packages they import, for the device's Python version, plus the bundled
#     model's tokenizer (tokenizer/ inside the bundle). It is git-ignored; carry it with the command
#     (the device tool's `carry: ["bench/gpu_smoke_bundle.tar.xz"]`, or scp);
#   - no model files: the model is built with random weights in the shape of the 8gb preset's model
#     (Qwen2.5-1.5B: 28 layers, hidden 1536), with the bundle's tokenizer. To use real weights instead,
#     nothing changes here: the check is about the path, not the answers.
# What it checks (bench/gpu_smoke.py): environment facts (bf16 with and without emulation, the torch
# aliasing key, free memory), the estimate, 3 GRPO steps on the real GPU path without vLLM (4-bit
# Unsloth, PEFT, 8-bit Adam, Unsloth's GRPOTrainer) with evaluation before and after, that the LoRA
# weights moved, the measured peak VRAM against the estimate (±25%), and one step with
# model.dtype=float16. Every part prints PASS or FAIL; the exit status is 1 when any failed, 2 when
# the bundle or Python is missing, 124 on the overall timeout.
# Ending it (Ctrl-C, SIGTERM, the overall timeout) also ends any training worker it started: the
# engine's workers run in their own session, so they would keep the GPU and the run lock otherwise.
# With $OUT set (the device machine's output folder), facts.json, the summary and the runs' status,
# metrics, logs and evals are copied there, also on failure.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
BUNDLE=${GPU_SMOKE_BUNDLE:-bench/gpu_smoke_bundle.tar.xz}
WORK=${GPU_SMOKE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/grpo-box-gpu-smoke.XXXXXX")}
TIMEOUT=${GPU_SMOKE_TIMEOUT:-540}  # the whole check; leaves a 10-minute device slot some room
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GRPO_BOX_HOME="$WORK/home"  # runs, caches and Unsloth's compiled cache stay in the scratch folder
export PYTHONUNBUFFERED=1

if [ "$DRY_RUN" = "1" ]; then
  PY=${PYTHON:-.venv/bin/python}
  [ -x "$PY" ] || PY=python3
  TOKENIZER=$("$PY" -c "from grpo_box.models import ensure_bundled_model; print(ensure_bundled_model())" 2>/dev/null | tail -1)
  if [ -z "$TOKENIZER" ] || [ ! -f "$TOKENIZER/tokenizer.json" ]; then
    echo "FAIL: the bundled model's tokenizer is not available (run ./install.sh)" >&2
    exit 2
  fi
  ARGS=(--dry-run --steps 1)
else
  PY=${PYTHON:-python3}
  if ! command -v "$PY" >/dev/null 2>&1; then echo "FAIL: no $PY on PATH (set PYTHON=...)" >&2; exit 2; fi
  if [ ! -f "$BUNDLE" ]; then
    echo "FAIL: $BUNDLE is missing. Make it on a machine with registry access:" >&2
    echo "  bash bench/gpu_smoke_prep.sh   (for Python 3.12; --python-version X.Y for another)" >&2
    echo "then bring it here (it is git-ignored, so carry it explicitly)." >&2
    exit 2
  fi
  echo "unpacking $BUNDLE into $WORK"
  # tar -J runs the xz program, which some images lack; Python's tarfile reads xz itself (lzma)
  if ! { command -v xz >/dev/null 2>&1 && tar -xJf "$BUNDLE" -C "$WORK"; }; then
    echo "tar -xJf failed or no xz program: unpacking with Python's tarfile"
    "$PY" - "$BUNDLE" "$WORK" <<'PYEOF' || { echo "FAIL: could not unpack $BUNDLE" >&2; exit 2; }
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as archive:
    archive.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
PYEOF
  fi
  WANT=$(cat "$WORK/bundle/python-version" 2>/dev/null || echo "?")
  HAVE=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ "$WANT" != "$HAVE" ]; then
    echo "FAIL: the bundle was made for Python $WANT but $PY is $HAVE: run gpu_smoke_prep.sh --python-version $HAVE" >&2
    exit 2
  fi
  export PYTHONPATH="$PWD:$WORK/bundle/site${PYTHONPATH:+:$PYTHONPATH}"
  TOKENIZER="$WORK/bundle/tokenizer"
  ARGS=()
fi

echo "GRPO Box GPU smoke check: $(git log -1 --format='%h %cs' 2>/dev/null || echo 'no git'), work folder $WORK"
# On any exit: stop the check if it still runs (timeout passes the TERM on), then end any training
# worker left under $WORK (gpu_smoke.py --cleanup: SIGTERM, SIGKILL after a grace; copies to $OUT).
SMOKE_PID=""
cleanup() {
  trap - EXIT INT TERM HUP
  if [ -n "$SMOKE_PID" ] && kill -0 "$SMOKE_PID" 2>/dev/null; then
    kill -TERM "$SMOKE_PID" 2>/dev/null
    for _ in $(seq 40); do kill -0 "$SMOKE_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  "$PY" bench/gpu_smoke.py --work "$WORK" --cleanup 2>&1 | sed 's/^/cleanup: /'
}
trap cleanup EXIT
trap 'echo "interrupted: stopping the check and its training worker" >&2; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# In the background and waited for, so a signal runs the traps at once (bash defers them while a
# foreground command runs).
timeout --kill-after=15 "$TIMEOUT" "$PY" bench/gpu_smoke.py --work "$WORK" --tokenizer "$TOKENIZER" "${ARGS[@]}" &
SMOKE_PID=$!
wait "$SMOKE_PID"
RC=$?
if [ "$RC" = "124" ] || [ "$RC" = "137" ]; then
  echo "FAIL: the smoke check ran past ${TIMEOUT}s (GPU_SMOKE_TIMEOUT) and was stopped" >&2
fi
echo "facts: $WORK/facts.json; runs: $WORK/runs; exit $RC"
exit "$RC"
