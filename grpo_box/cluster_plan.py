"""The plan of a cluster job (cluster.py): the GPU split, the recomputed batch and the pinned versions.

`plan_split` decides which GPUs serve vLLM (`trl vllm-serve`, server mode) and how many training
processes run on how many machines, or refuses a split that cannot work with what would.
`plan_batch` recomputes the batch: TRL needs the global batch (per-device batch x processes x
gradient accumulation) to be a multiple of `num_generations`. Pure functions on numbers, so the
arithmetic is tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .config import GRPOSettings
from .errors import UserError

BACKENDS = ("zero3", "fsdp")
# The export's options as the CLI (`cluster`) and the app's panel (ui/cluster_panel.py) offer them:
# defaults and help in one place. The CLI requires --gpus; EXAMPLE_GPUS (one 8-GPU node) fills the
# panel's box. vllm_gpus None means the default split (plan_split).
DEFAULT_NODES = 1
DEFAULT_BACKEND = BACKENDS[0]
EXAMPLE_GPUS = 8
OPTION_HELP = {
    "gpus": "GPUs in all (vLLM server + training)",
    "nodes": "machines (more than 1: a SLURM job)",
    "backend": "DeepSpeed ZeRO-3 or FSDP2",
    "vllm_gpus": "GPUs for the vLLM server (default: 1 on one node, a whole node on several; 0: vLLM inside each "
                 "training process)",
    "out": "bundle folder (default: RUN_DIR/cluster/<N>gpu-<backend>, <N>gpu-<M>nodes-<backend> on several nodes)",
}
SERVER_MEMORY_SHARE = 0.9  # `trl vllm-serve`'s default: the server owns its GPUs
# What the bundle installs: the appliance's pins (pyproject.toml) for the libraries both run, vLLM at
# the newest release TRL 1.15 supports (0.21-0.31; it pins torch 2.13.0), DeepSpeed for ZeRO-3 only.
REQUIREMENTS = {
    "torch": "2.13.0", "trl": "1.15.0", "transformers": "5.17.0", "peft": "0.21.2", "accelerate": "1.15.0",
    "datasets": "4.8.5", "math-verify": "0.9.0", "pyyaml": "6.0.3", "vllm": "0.31.0",
}
DEEPSPEED = "0.19.8"


class ClusterError(UserError, ValueError):
    """A cluster export that cannot be made as asked; the message says what would work."""


@dataclass(frozen=True)
class GpuSplit:
    """Where the GPUs go. Server mode: vLLM on `vllm_gpus` GPUs of the first node (tensor parallel
    `vllm_tp`), training on the rest; colocate (`vllm_gpus` 0): vLLM inside each training process."""

    gpus: int
    nodes: int
    vllm_gpus: int
    vllm_tp: int
    train_machines: int
    train_processes: int
    idle_gpus: int

    @property
    def per_node(self) -> int:
        return self.gpus // self.nodes

    @property
    def mode(self) -> str:
        return "server" if self.vllm_gpus else "colocate"

    def vllm_devices(self) -> str:
        return ",".join(str(i) for i in range(self.vllm_tp))

    def train_devices(self) -> str:
        first = self.vllm_gpus if self.nodes == 1 else 0
        return ",".join(str(i) for i in range(first, self.per_node))

    def describe(self) -> str:
        where = f"{self.gpus} GPUs" + (f" on {self.nodes} nodes" if self.nodes > 1 else "")
        machines = f"{self.train_machines} machine{'s' if self.train_machines > 1 else ''}"
        if self.mode == "colocate":
            return f"{where}: {self.train_processes} training processes on {machines}, vLLM inside each (no server)"
        served = f"vLLM server on {'node 0, ' if self.nodes > 1 else ''}{_span('GPU', 0, self.vllm_tp)}"
        trained = (f"training on {_span('GPU', self.vllm_gpus, self.gpus)}" if self.nodes == 1
                   else f"training on {_span('node', 1, self.nodes)}")
        idle = f", {self.idle_gpus} GPUs idle" if self.idle_gpus else ""
        return (f"{where}: {served} (tensor parallel {self.vllm_tp}), {trained} "
                f"({self.train_processes} processes on {machines}){idle}")


def node_commands(split: GpuSplit) -> list[tuple[str, str]]:
    """(where, command) to start a several-node job by hand, one per role (what slurm.sbatch does)."""
    train = "MAIN_PROCESS_IP=<{}'s address> MACHINE_RANK={} ./launch.sh train [train.py flags]"
    if split.mode == "colocate":
        return [(f"on nodes 0-{split.nodes - 1}, node k", train.format("node 0", "k"))]
    served = ("on node 0 (the vLLM server)", "./launch.sh serve")
    trained = "VLLM_HOST=<node 0's address> " + train.format("node 1", "0" if split.train_machines == 1 else "k")
    if split.train_machines == 1:
        return [served, ("on node 1 (training)", trained)]
    return [served, (f"on nodes 1-{split.nodes - 1} (training), node 1+k", trained)]


def _span(what: str, first: int, end: int) -> str:
    """'GPU 0', 'GPUs 1-7'."""
    return f"{what} {first}" if end - first == 1 else f"{what}s {first}-{end - 1}"


@dataclass(frozen=True)
class BatchPlan:
    """The run's batch and the cluster's, in completions per optimizer step."""

    num_generations: int
    processes: int
    run_per_device: int
    run_grad_accum: int
    per_device: int
    grad_accum: int

    @property
    def run_global(self) -> int:
        return self.run_per_device * self.run_grad_accum

    @property
    def global_batch(self) -> int:
        return self.per_device * self.processes * self.grad_accum

    @property
    def prompts_per_step(self) -> int:
        return self.global_batch // self.num_generations


@dataclass
class Bundle:
    path: Path
    split: GpuSplit
    batch: BatchPlan
    backend: str
    reward_names: list[str]
    notes: list[str] = field(default_factory=list)  # translations of the appliance's settings
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Cluster bundle: {self.path}", self.split.describe(),
                 f"Batch: {self.batch.global_batch} completions per step ({self.batch.prompts_per_step} prompts x "
                 f"{self.batch.num_generations}), per device {self.batch.per_device}, gradient accumulation "
                 f"{self.batch.grad_accum} (the run: {self.batch.run_global})"]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines + [f"Next: see {self.path / 'README.md'}"])


# -- the plan -------------------------------------------------------------------------------------
def plan_split(gpus: int, nodes: int = DEFAULT_NODES, vllm_gpus: int | None = None,
               heads: tuple[int, int] | None = None) -> GpuSplit:
    """Split `gpus` over `nodes` between a vLLM server and training, or refuse (ClusterError).

    `vllm_gpus` defaults to 1 on one node and a whole node on several (accelerate starts the same
    number of processes on every machine, so the vLLM node trains nothing). `heads` (attention, key-
    value heads of the model), when known, bounds vLLM's tensor parallelism.
    """
    _check_counts(gpus, nodes)
    per_node = gpus // nodes
    vllm = (1 if nodes == 1 else per_node) if vllm_gpus is None else vllm_gpus
    _check_vllm_gpus(gpus, nodes, vllm)
    if vllm == 0:
        return GpuSplit(gpus, nodes, 0, 0, nodes, gpus, 0)
    tp = tensor_parallel(vllm, heads)
    machines = 1 if nodes == 1 else nodes - 1
    processes = gpus - vllm if nodes == 1 else machines * per_node
    idle = vllm - tp + (per_node - vllm if nodes > 1 else 0)
    return GpuSplit(gpus, nodes, vllm, tp, machines, processes, idle)


def _check_counts(gpus: int, nodes: int) -> None:
    if gpus < 1 or nodes < 1:
        raise ClusterError(f"--gpus {gpus} --nodes {nodes}: both must be at least 1")
    if gpus % nodes:
        raise ClusterError(f"--gpus {gpus} do not split evenly over --nodes {nodes}: give the total GPU count, a "
                           f"multiple of the nodes (e.g. --gpus {nodes * max(1, gpus // nodes)} --nodes {nodes})")


def _check_vllm_gpus(gpus: int, nodes: int, vllm: int) -> None:
    per_node = gpus // nodes
    if vllm < 0:
        raise ClusterError(f"--vllm-gpus {vllm}: give 0 (vLLM inside each training process) or more")
    if nodes == 1 and vllm >= gpus:
        raise ClusterError(
            f"--gpus {gpus} with --vllm-gpus {vllm} leaves no GPU to train on: the vLLM server needs GPUs of its own. "
            f"Use --vllm-gpus 0 (vLLM colocated in the trainer, with sleep mode), or more GPUs"
            + (" (or train on this one GPU with GRPO Box itself)" if gpus == 1 else f" (at most --vllm-gpus {gpus - 1})"))
    if nodes > 1 and vllm > per_node:
        raise ClusterError(f"--vllm-gpus {vllm}: the vLLM server runs on one node, which has {per_node} GPUs "
                           f"(--gpus {gpus} over --nodes {nodes}); give at most {per_node}, or 0 to colocate")


def tensor_parallel(vllm_gpus: int, heads: tuple[int, int] | None) -> int:
    """The largest tensor-parallel size up to `vllm_gpus` the model's heads allow (vLLM splits the
    attention heads over the GPUs; key-value heads are split or replicated). Unknown heads: all."""
    if heads is None:
        return vllm_gpus
    attention, kv = heads
    for tp in range(vllm_gpus, 0, -1):
        if vllm_gpus % tp == 0 and attention % tp == 0 and (kv % tp == 0 or tp % kv == 0):
            return tp
    return 1


def plan_batch(grpo: GRPOSettings, processes: int) -> BatchPlan:
    """The cluster's per-device batch and gradient accumulation at `processes` processes.

    The global batch becomes the smallest multiple of lcm(processes, num_generations) at least the
    run's (per_device x grad_accum on its one GPU): whole groups, an equal share per process, and as
    many prompts per step as the run had, or the fewest more that the arithmetic forces. Each process's
    share is split into micro-batches no larger than the run's per-device batch (which fitted one
    consumer card), the remainder going to gradient accumulation.
    """
    n = grpo.num_generations
    unit = math.lcm(processes, n)
    target = grpo.per_device_train_batch_size * grpo.gradient_accumulation_steps
    share = max(1, math.ceil(target / unit)) * unit // processes
    accum = next(d for d in range(1, share + 1) if share % d == 0 and share // d <= grpo.per_device_train_batch_size)
    return BatchPlan(n, processes, grpo.per_device_train_batch_size, grpo.gradient_accumulation_steps,
                     share // accum, accum)
