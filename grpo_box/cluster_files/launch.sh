#!/usr/bin/env bash
# GRPO Box cluster job "@@NAME@@", written by `python -m grpo_box cluster`.
# @@SPLIT@@
#
# Usage: ./launch.sh [all|serve|train] [train.py flags, e.g. --max-steps 2]
#   all    (default; one-node bundles only) start `trl vllm-serve` on the vLLM GPUs, wait for its health endpoint,
#          run `accelerate launch` on the training GPUs, stop the server when training ends
#   serve  only the vLLM server, in the foreground (slurm.sbatch runs it on the vLLM node)
#   train  wait for the server at VLLM_HOST, then `accelerate launch` (slurm.sbatch runs it on each
#          training node, with MACHINE_RANK and MAIN_PROCESS_IP set)
# Every setting below can be overridden from the environment, e.g. MODEL=/data/my-model ./launch.sh
# GRPO_BOX_NO_VLLM=1 trains without vLLM (generation with the trainer's own model; slow).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

MODEL="${MODEL:-@@MODEL@@}"
VLLM_MODE="@@VLLM_MODE@@"  # server: vLLM on its own GPUs; colocate: vLLM inside each training process
VLLM_DEVICES="${VLLM_DEVICES:-@@VLLM_DEVICES@@}"
TRAIN_DEVICES="${TRAIN_DEVICES:-@@TRAIN_DEVICES@@}"
VLLM_TP="${VLLM_TP:-@@VLLM_TP@@}"
VLLM_HOST="${VLLM_HOST:-127.0.0.1}"
VLLM_PORT="${VLLM_PORT:-8000}"
VLLM_GPU_MEMORY_UTILIZATION="${VLLM_GPU_MEMORY_UTILIZATION:-@@VLLM_UTIL@@}"
VLLM_MAX_MODEL_LEN="${VLLM_MAX_MODEL_LEN:-@@MAX_MODEL_LEN@@}"
VLLM_HEALTH_TIMEOUT="${VLLM_HEALTH_TIMEOUT:-1800}"  # seconds; a large model takes minutes to load
NUM_MACHINES="${NUM_MACHINES:-@@NUM_MACHINES@@}"
NUM_PROCESSES="${NUM_PROCESSES:-@@NUM_PROCESSES@@}"
MACHINE_RANK="${MACHINE_RANK:-0}"
MAIN_PROCESS_IP="${MAIN_PROCESS_IP:-127.0.0.1}"
MAIN_PROCESS_PORT="${MAIN_PROCESS_PORT:-29500}"
NODES=@@NODES@@  # machines this bundle was written for: more than 1 runs through slurm.sbatch or by hand
export MODEL
mkdir -p logs

uses_server() {
  [[ "$VLLM_MODE" == server && "${GRPO_BOX_NO_VLLM:-0}" != 1 ]]
}

serve() {
  CUDA_VISIBLE_DEVICES="$VLLM_DEVICES" VLLM_SERVER_DEV_MODE=1 exec trl vllm-serve --model "$MODEL" \
    --tensor_parallel_size "$VLLM_TP" --data_parallel_size 1 --host 0.0.0.0 --port "$VLLM_PORT" \
    --gpu_memory_utilization "$VLLM_GPU_MEMORY_UTILIZATION" --max_model_len "$VLLM_MAX_MODEL_LEN" --dtype bfloat16
}

wait_for_server() {  # $1: the pid of a server started here (checked for an early exit), or nothing
  local deadline=$((SECONDS + VLLM_HEALTH_TIMEOUT))
  echo "waiting for the vLLM server at http://$VLLM_HOST:$VLLM_PORT/health ..."
  until curl -sf "http://$VLLM_HOST:$VLLM_PORT/health" >/dev/null 2>&1; do
    if [[ -n "${1:-}" ]] && ! kill -0 "$1" 2>/dev/null; then
      echo "error: the vLLM server exited before it was ready; see logs/vllm.log" >&2
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "error: no healthy vLLM server after ${VLLM_HEALTH_TIMEOUT} s; see logs/vllm.log" >&2
      return 1
    fi
    sleep 5
  done
  echo "vLLM server is up"
}

train() {
  local vllm_args=()
  if uses_server; then
    wait_for_server ""
    vllm_args=(--vllm-host "$VLLM_HOST" --vllm-port "$VLLM_PORT")
  elif [[ "${GRPO_BOX_NO_VLLM:-0}" == 1 ]]; then
    vllm_args=(--no-vllm)
  fi
  CUDA_VISIBLE_DEVICES="$TRAIN_DEVICES" accelerate launch --config_file accelerate_config.yaml \
    --num_machines "$NUM_MACHINES" --num_processes "$NUM_PROCESSES" --machine_rank "$MACHINE_RANK" \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
    train.py ${vllm_args[@]+"${vllm_args[@]}"} "$@"
}

stop_server() {  # the whole process group: vLLM's engine and worker processes too
  local pid="$1"
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

refuse_multi_node() {  # `all` on one machine would put the trainer on the vLLM GPUs and wait for absent machines
  cat >&2 <<'EOF'
error: this bundle is for @@NODES@@ nodes (@@SPLIT@@).
`./launch.sh` / `./launch.sh all` starts a whole job on one machine, and this job spans @@NODES@@ machines.
Submit it to SLURM from this folder:
  sbatch slurm.sbatch [train.py flags]
or start each node by hand (the same folder on every node):
@@NODE_COMMANDS@@
EOF
  exit 2
}

run_all() {
  if ((NODES > 1)); then
    refuse_multi_node
  fi
  if ! uses_server; then
    train "$@"
    return
  fi
  setsid "$HERE/launch.sh" serve >logs/vllm.log 2>&1 &
  local server=$!
  trap 'stop_server '"$server" EXIT
  wait_for_server "$server"
  train "$@"
}

case "${1:-all}" in
  serve) shift; serve ;;
  train) shift; train "$@" ;;
  all) [[ $# -gt 0 ]] && shift; run_all "$@" ;;
  *) run_all "$@" ;;
esac
