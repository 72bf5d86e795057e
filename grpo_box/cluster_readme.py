"""The README of a cluster bundle (cluster.py): the GPU split, the batch, the exact commands, the
pinned versions, the metrics to watch, how the adapter comes back, and every appliance setting
that had to change on the way (`translations`) with the reason.
"""

from __future__ import annotations

from typing import Any

from .cluster_plan import DEEPSPEED, REQUIREMENTS, SERVER_MEMORY_SHARE, BatchPlan, Bundle, GpuSplit, node_commands
from .config import RunConfig


def translations(config: RunConfig, split: GpuSplit, batch: BatchPlan) -> list[str]:
    """One line per appliance setting that the cluster runs differently, and why."""
    m, g = config.model, config.grpo
    notes = [_weights_note(m.load_in_4bit, m.dtype), _vllm_note(config, split), _memory_note(m.gpu_memory_utilization, split),
             f"model.max_seq_length {m.max_seq_length} -> vLLM's max model length {m.max_seq_length}",
             f"grpo.max_prompt_length {g.max_prompt_length} -> not a TRL 1.15 setting (TRL does not cut prompts); the "
             "appliance checks prompt lengths when it trains",
             _batch_note(batch)]
    if config.lora.gradient_checkpointing == "unsloth":
        notes.append("lora.gradient_checkpointing 'unsloth' (offloaded) -> gradient_checkpointing: true (Hugging "
                     "Face's; Unsloth's offloading does not exist in plain TRL)")
    if "8bit" in g.optim:
        notes.append(f"grpo.optim {g.optim} -> adamw_torch (8-bit optimizers need bitsandbytes, which the bundle "
                     "does not install; ZeRO-3/FSDP shard the optimizer state instead)")
    from .train import loss_settings

    loss = loss_settings(config)
    notes.append(f"vllm_importance_sampling_correction: false, epsilon_high {loss['epsilon_high']:g}, "
                 f"scale_rewards {loss['scale_rewards']}, mask_truncated_completions "
                 f"{str(loss['mask_truncated_completions']).lower()}: the appliance's objective, passed explicitly "
                 "(TRL's default corrects for vLLM's sampling; set it to true in grpo_config.yaml if you want that)")
    return notes


def _weights_note(load_in_4bit: bool, dtype: str | None) -> str:
    if load_in_4bit:
        return ("model.load_in_4bit true -> bf16 base with bf16 LoRA of the same rank, alpha and targets (QLoRA "
                "with a vLLM server is broken upstream)")
    return f"model.dtype {dtype or 'auto'} -> bfloat16 base and LoRA (data-center GPUs; Ampere or newer)"


def _vllm_note(config: RunConfig, split: GpuSplit) -> str:
    m = config.model
    if split.mode == "colocate":
        sleep = "vllm_enable_sleep_mode: true" if m.vllm_standby else "no sleep mode (the run had no standby)"
        return f"model.fast_inference/vllm_standby -> vLLM colocated in each training process, {sleep}"
    standby = " vllm_standby has no counterpart: vLLM's sleep mode exists in colocate mode only, and a server " \
              "on its own GPUs need not sleep." if m.vllm_standby else ""
    return f"model.fast_inference -> `trl vllm-serve` on {split.vllm_tp} GPU(s), vllm_mode: server.{standby}"


def _memory_note(share: float, split: GpuSplit) -> str:
    if split.mode == "colocate":
        return (f"model.gpu_memory_utilization {share:g} -> vllm_gpu_memory_utilization {share:g} (TRL takes it of "
                "the whole card, Unsloth of the free memory)")
    return (f"model.gpu_memory_utilization {share:g} (vLLM's share of a card shared with the trainer) -> the "
            f"server's --gpu_memory_utilization {SERVER_MEMORY_SHARE:g} (its GPUs are its own; "
            "VLLM_GPU_MEMORY_UTILIZATION in launch.sh)")


def _batch_note(batch: BatchPlan) -> str:
    return (f"grpo.per_device_train_batch_size {batch.run_per_device} x gradient_accumulation_steps "
            f"{batch.run_grad_accum} on 1 GPU -> {batch.per_device} x {batch.grad_accum} on each of {batch.processes} "
            f"processes: {batch.run_global} -> {batch.global_batch} completions per step (see Batch)")


def warnings_for(config: RunConfig, split: GpuSplit, batch: BatchPlan, heads: tuple[int, int] | None) -> list[str]:
    out = []
    if batch.global_batch != batch.run_global:
        out.append(f"the global batch grows from {batch.run_global} to {batch.global_batch} completions per step "
                   f"({batch.prompts_per_step} prompts instead of {batch.run_global // batch.num_generations or 1}): "
                   f"the smallest multiple of {batch.processes} processes and num_generations "
                   f"{batch.num_generations} that holds the run's batch")
    if split.mode == "server" and heads and split.vllm_tp < split.vllm_gpus:
        out.append(f"the model has {heads[0]} attention heads ({heads[1]} key-value): vLLM's tensor parallelism is "
                   f"{split.vllm_tp}, so {split.vllm_gpus - split.vllm_tp} of the {split.vllm_gpus} vLLM GPUs stay "
                   "idle; give --vllm-gpus a size the heads divide by")
    elif split.mode == "server" and heads is None:
        out.append(f"the model's config is not on this machine: vLLM's tensor parallel size is {split.vllm_tp}; the "
                   "model's attention heads must divide by it (else set VLLM_TP)")
    if split.nodes > 1 and split.mode == "server" and split.vllm_gpus < split.per_node:
        out.append(f"the vLLM node uses {split.vllm_gpus} of its {split.per_node} GPUs; the rest stay idle")
    return out


# -- the README -----------------------------------------------------------------------------------
def readme_text(bundle: Bundle, config: RunConfig, name: str, model: str, source: Any) -> str:
    parts = [_intro(bundle, name, model, source), _split_section(bundle), _batch_section(bundle),
             _install_section(bundle), _run_section(bundle), _watch_section(bundle, config),
             _back_section(bundle, name), _translation_section(bundle), _files_section(bundle)]
    return "\n\n".join(parts) + "\n"


def _intro(bundle: Bundle, name: str, model: str, source: Any) -> str:
    warn = "".join(f"\n> **Note:** {w}" for w in bundle.warnings)
    return (f"# GRPO Box cluster job: {name}\n\n"
            f"Written by `python -m grpo_box cluster` from `{source}`. The same GRPO run as on the desktop (same "
            f"data, same prompts, same rubric, same objective), on plain TRL with `accelerate launch` "
            f"({'DeepSpeed ZeRO-3' if bundle.backend == 'zero3' else 'FSDP2'}) and a vLLM server. "
            f"Model: `{model}`.{warn}")


def _split_section(bundle: Bundle) -> str:
    s = bundle.split
    rows = [("GPUs", f"{s.gpus} ({s.per_node} per node, {s.nodes} node{'s' if s.nodes > 1 else ''})"),
            ("vLLM", f"{s.mode} mode" + (f", GPUs {s.vllm_devices()} of {'node 0' if s.nodes > 1 else 'the node'}, "
                                         f"tensor parallel {s.vllm_tp}" if s.mode == 'server' else "")),
            ("training", f"{s.train_processes} processes on {s.train_machines} machine(s)"
                         + (f", GPUs {s.train_devices()}" if s.nodes == 1 else "")),
            ("idle", str(s.idle_gpus))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## GPU split\n\n{s.describe()}.\n\n| | |\n|---|---|\n{table}"


def _batch_section(bundle: Bundle) -> str:
    b = bundle.batch
    return (
        "## Batch\n\n"
        "TRL generates `per_device_train_batch_size x processes x gradient_accumulation_steps` completions per "
        "optimizer step, and that global batch must hold whole groups: a multiple of `num_generations`.\n\n"
        f"- the run: {b.run_per_device} x 1 GPU x {b.run_grad_accum} = **{b.run_global}** completions per step\n"
        f"- here: {b.per_device} x {b.processes} processes x {b.grad_accum} = **{b.global_batch}** completions, "
        f"{b.prompts_per_step} prompts x {b.num_generations} generations\n\n"
        f"Recomputed as the smallest multiple of lcm({b.processes} processes, {b.num_generations} generations) that "
        f"is at least the run's batch (so every process gets an equal share of whole groups and a step sees as many "
        f"prompts as on the desktop, or the fewest more the arithmetic forces); each process's share is cut into "
        f"micro-batches of at most the run's per-device batch, the rest going to gradient accumulation. Learning "
        f"rate and steps are the run's. To use the GPUs for a larger batch, raise `per_device_train_batch_size` in "
        f"`grpo_config.yaml`, keeping the product a multiple of {b.num_generations}; `train.py` refuses one that "
        f"is not.")


def _install_section(bundle: Bundle) -> str:
    pins = ", ".join(f"{k} {v}" for k, v in REQUIREMENTS.items())
    ds = f", deepspeed {DEEPSPEED}" if bundle.backend == "zero3" else ""
    return ("## Install (on every node)\n\n"
            "```bash\npython3 -m venv .venv && . .venv/bin/activate\npip install -r requirements.txt\n```\n\n"
            f"Pinned: {pins}{ds}. TRL 1.15 supports vLLM 0.21-0.31. No unsloth, no bitsandbytes. The reward "
            "code needs nothing more: it is vendored (see Files).")


def _run_section(bundle: Bundle) -> str:
    s = bundle.split
    if s.nodes > 1:
        how = ("```bash\nsbatch slurm.sbatch                 # the whole job\nsbatch slurm.sbatch --max-steps 2   "
               "# a short trial first\n```\n\n`slurm.sbatch` runs "
               + ("`./launch.sh serve` on node 0 and `./launch.sh train` on the other nodes" if s.mode == "server"
                  else "`./launch.sh train` on every node")
               + "; edit its `#SBATCH` lines for your partition and account. Its log is `logs/slurm-<job id>.out`."
               "\n\nWithout SLURM, start each node by hand (`./launch.sh` alone refuses: it is for one machine):\n\n"
               + "\n".join(f"- {where}: `{command}`" for where, command in node_commands(s)))
    else:
        how = ("```bash\n./launch.sh                 # start the vLLM server, wait for it, train, stop it\n"
               "./launch.sh --max-steps 2   # a short trial first\n```")
    return (f"## Run\n\nCopy this folder to the cluster (and the model, if it is a local folder: then set "
            f"`MODEL=/path/to/it`).\n\n{how}\n\n"
            "`launch.sh` starts `trl vllm-serve` on the vLLM GPUs (log: `logs/vllm.log`), polls "
            "`http://$VLLM_HOST:$VLLM_PORT/health` until it answers, runs `accelerate launch --config_file "
            "accelerate_config.yaml train.py` on the training GPUs and stops the server when training ends. Every "
            "setting at its top (MODEL, VLLM_DEVICES, TRAIN_DEVICES, VLLM_TP, VLLM_PORT, VLLM_GPU_MEMORY_UTILIZATION, "
            "…) can be set from the environment.\n\n"
            "**Without vLLM:** `GRPO_BOX_NO_VLLM=1 ./launch.sh`, or `train.py --no-vllm`: generation with the "
            "trainer's own model (much slower; for checking the setup).\n\n"
            "**Smoke test without GPUs** (2 CPU processes over gloo, float32, as GRPO Box's test does):\n\n"
            "```bash\nACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py --no-vllm "
            "--max-steps 2\n```\n\n(`accelerate launch --cpu --num_processes 2` starts only one process in "
            "accelerate 1.15; several CPU processes need `--multi_gpu` with `ACCELERATE_USE_CPU=1`.)")


def _watch_section(bundle: Bundle, config: RunConfig) -> str:
    names = "\n".join(f"- `rewards/{n}/mean`, `rewards/{n}/std`" for n in bundle.reward_names)
    kl = "\n- `kl`: distance from the base model" if config.grpo.beta > 0 else ""
    return ("## What to watch\n\n`output/metrics.jsonl` (one line per step; TRL's names, as in the appliance):\n\n"
            "- `reward`, `reward_std`: the weighted total; watch it rise (GRPO's loss stays near 0 and says "
            "little)\n" + names + "\n- `frac_reward_zero_std`: share of groups whose completions all scored alike "
            "(1 = no learning signal)\n- `completions/mean_length`, `completions/clipped_ratio`: length, and the "
            f"share cut off at max_completion_length{kl}")


def _back_section(bundle: Bundle, name: str) -> str:
    return ("## Bring the adapter back\n\nCopy `output/` to the desktop, then:\n\n"
            f"```bash\npython -m grpo_box import-adapter output --name {name}-cluster\n"
            f"python -m grpo_box chat RUNS_DIR/{name}-cluster\npython -m grpo_box eval RUNS_DIR/{name}-cluster\n"
            f"python -m grpo_box export RUNS_DIR/{name}-cluster --quant q4_k_m\n```\n\n"
            "`import-adapter` makes a run directory (config, adapter, metrics) that the app lists in its Runs tab: "
            "chat, evaluate (the held-out split is `data/held_out.jsonl`) and export it as if it had trained it.")


def _translation_section(bundle: Bundle) -> str:
    return "## Translations from the appliance\n\n" + "\n".join(f"- {n}" for n in bundle.notes)


def _files_section(bundle: Bundle) -> str:
    files = [("train.py", "the training script: data -> rubric -> GRPOConfig -> GRPOTrainer -> train -> save"),
             ("grpo_config.yaml", "trl.GRPOConfig's arguments"),
             ("job.yaml", "model, LoRA, rubric, data files, the split and the batch"),
             ("accelerate_config.yaml", f"TRL's {bundle.backend} accelerate config with the process counts"),
             ("launch.sh", "server + training on one node; `serve` / `train` roles for SLURM"),
             ("data/train.jsonl, data/held_out.jsonl", "the prompts (chat messages) and answers, as the appliance "
              "formats them"),
             ("vendor/grpo_box/", "GRPO Box's reward code, copied byte for byte (sha256 in vendor/MANIFEST.json): "
              "vendored because the package is not on PyPI and its app dependencies (gradio, llama-cpp-python) have "
              "no place on a training node, while the rewards need only math-verify and PyYAML"),
             ("run_config.yaml", "the appliance's config, for import-adapter"),
             ("logs/", "the vLLM server's log and SLURM's job logs (SLURM does not create the folder itself)")]
    if bundle.split.nodes > 1:
        files.insert(5, ("slurm.sbatch", "the SLURM job for several nodes"))
    if (bundle.path / "user_rewards").is_dir():
        files.append(("user_rewards/", "your reward file (only the file: copy helper modules it imports next to it)"))
    return "## Files\n\n" + "\n".join(f"- `{f}`: {what}" for f, what in files)
