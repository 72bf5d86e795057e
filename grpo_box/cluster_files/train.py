#!/usr/bin/env python
"""GRPO training for a GRPO Box cluster bundle: plain TRL + PEFT under `accelerate launch`.

Written by `python -m grpo_box cluster`. It reads the files beside it:
  job.yaml          the model, the LoRA, the rubric, the data files and the GPU split
  grpo_config.yaml  the keyword arguments of trl.GRPOConfig (batch sizes already recomputed)
  data/train.jsonl  the prompts (chat messages) and answers the appliance trained on
  vendor/grpo_box/  GRPO Box's own reward code, byte for byte (vendor/MANIFEST.json)
  user_rewards/     the run's own reward file, when it had one
and writes to --output-dir (default: output/): checkpoints/, adapter/ (the LoRA and tokenizer),
metrics.jsonl (one line per step, TRL's metric names), ranks/rank-<i>.json (what each process
did), job.json and run_config.yaml (for `python -m grpo_box import-adapter`).

Steps: data -> rubric -> config -> trainer -> train -> save.

Flags:
  --no-vllm          (or GRPO_BOX_NO_VLLM=1) generate with the trainer's own model instead of vLLM
  --max-steps N      a short trial run
  --output-dir DIR   where the outputs go
  --vllm-host H / --vllm-port P   the `trl vllm-serve` server (launch.sh passes them)

Without CUDA (a smoke test, e.g. `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes
2 train.py --no-vllm`) it trains in float32 on the CPU, the ranks talk over gloo, and TRL's Triton
log-prob kernel, which has no CPU path, is replaced by GRPO Box's torch version (cpu_backend).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "vendor"))  # GRPO Box's reward code, as the appliance ran it

import torch  # noqa: E402
import yaml  # noqa: E402

SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos",
                "epoch"}
COUNTS: Counter[str] = Counter()  # completions each reward function scored in this process


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-vllm", action="store_true", default=os.environ.get("GRPO_BOX_NO_VLLM") == "1",
                   help="generate with the trainer's model (transformers) instead of vLLM")
    p.add_argument("--max-steps", type=int, help="override max_steps (a short trial)")
    p.add_argument("--output-dir", default=str(HERE / "output"))
    p.add_argument("--vllm-host", help="host of the `trl vllm-serve` server")
    p.add_argument("--vllm-port", type=int, help="port of the `trl vllm-serve` server")
    return p.parse_args(argv)


def read_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((HERE / name).read_text(encoding="utf-8"))


def load_rows(path: Path) -> Any:
    import datasets

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.Dataset.from_list(rows)


def counted(func: Callable) -> Callable:
    """The reward itself, counting the completions it scores here (ranks/rank-<i>.json)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        out = func(*args, **kwargs)
        COUNTS[func.__name__] += len(out)
        return out

    call.__name__ = func.__name__
    return call


def build_rewards(job: dict[str, Any], weights: list[float]) -> list[Callable]:
    from grpo_box.config import RewardSpec
    from grpo_box.rewards.rubric import build_rubric

    specs = [RewardSpec(r["name"], r["weight"], r.get("params") or {}) for r in job["rubric"]]
    user_file = str(HERE / job["reward_file"]) if job.get("reward_file") else None
    funcs, built_weights = build_rubric(specs, user_file, template=job["template"], timeout=job["reward_timeout"])
    names = [f.__name__ for f in funcs]
    if names != job["reward_names"] or built_weights != weights:
        raise SystemExit(f"the rubric built {names} {built_weights}, but job.yaml/grpo_config.yaml say "
                         f"{job['reward_names']} {weights}: the bundle was edited inconsistently")
    for func in funcs:  # TRL's completions start after a prefilled tag; the rewards see the whole reply
        func.reply_prefill = job.get("reply_prefill") or ""
    return [counted(f) for f in funcs]


def load_tokenizer(job: dict[str, Any], model: str) -> Any:
    """The model's tokenizer, its chat template ending with the run's reply prefill (if any)."""
    from transformers import AutoTokenizer

    from grpo_box.chat_format import with_prefill

    tokenizer = AutoTokenizer.from_pretrained(model)
    if job.get("reply_prefill") and tokenizer.chat_template:
        tokenizer.chat_template = with_prefill(tokenizer.chat_template, job["reply_prefill"])
    return tokenizer


def grpo_settings(args: argparse.Namespace, out: Path, cuda: bool) -> dict[str, Any]:
    settings = read_yaml("grpo_config.yaml")
    settings["output_dir"] = str(out / "checkpoints")
    if args.max_steps:
        settings["max_steps"] = args.max_steps
    if args.no_vllm:
        settings["use_vllm"] = False
    if args.vllm_host:
        settings["vllm_server_host"] = args.vllm_host
    if args.vllm_port:
        settings["vllm_server_port"] = args.vllm_port
    if not cuda:  # CPU smoke test: float32, no vLLM
        settings.update(bf16=False, fp16=False, use_cpu=True, use_vllm=False)
        settings["model_init_kwargs"] = {**settings.get("model_init_kwargs", {}), "dtype": "float32"}
    return settings


def check_world(job: dict[str, Any], settings: dict[str, Any]) -> None:
    """The global batch must hold whole groups at this many processes (TRL checks it too, less clearly)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    planned = job["split"]["train_processes"]
    per_step = settings["per_device_train_batch_size"] * world * settings["gradient_accumulation_steps"]
    if per_step % settings["num_generations"]:
        raise SystemExit(f"{world} processes x per_device_train_batch_size x gradient_accumulation_steps = {per_step} "
                         f"completions per step is not a multiple of num_generations={settings['num_generations']}; "
                         f"the bundle was planned for {planned} processes (README.md, 'Batch')")
    if world != planned:
        print(f"note: {world} processes, the bundle was planned for {planned}: {per_step} completions per step "
              f"instead of {job['batch']['global_batch']}", file=sys.stderr)


def make_callback(path: Path) -> Any:
    """A TrainerCallback appending each logged step (main process) to metrics.jsonl."""
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs or set(logs) <= SUMMARY_KEYS:
                return
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return Metrics()


def save(trainer: Any, job: dict[str, Any], out: Path) -> None:
    trainer.save_model(str(out / "adapter"))  # every rank: ZeRO-3 / FSDP gather the weights
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    import grpo_box

    (out / "ranks").mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "world_size": world, "device": str(trainer.accelerator.device),
              "steps": trainer.state.global_step, "completions_scored": dict(COUNTS),
              "reward_code": str(Path(grpo_box.__file__).parent)}
    (out / "ranks" / f"rank-{rank}.json").write_text(json.dumps(record, indent=2))
    if trainer.accelerator.is_main_process:
        summary = {"run_name": job["run_name"], "steps": trainer.state.global_step,
                   "max_steps": trainer.args.max_steps, "world_size": world, "reward_names": job["reward_names"],
                   "model": job["model"]}
        (out / "job.json").write_text(json.dumps(summary, indent=2))
        shutil.copy(HERE / "run_config.yaml", out / "run_config.yaml")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    if not cuda:
        from grpo_box.cpu_backend import patch_trl_for_cpu

        patch_trl_for_cpu()
    job, out = read_yaml("job.yaml"), Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0":  # the main process writes metrics.jsonl afresh
        (out / "metrics.jsonl").unlink(missing_ok=True)
    train_rows = load_rows(HERE / job["data"]["train"])
    settings = grpo_settings(args, out, cuda)
    check_world(job, settings)
    model = os.environ.get("MODEL") or job["model"]
    trainer = GRPOTrainer(
        model=model,
        processing_class=load_tokenizer(job, model),
        reward_funcs=build_rewards(job, settings["reward_weights"]),
        args=GRPOConfig(**settings),
        train_dataset=train_rows,
        peft_config=LoraConfig(**job["lora"]),
        callbacks=[make_callback(out / "metrics.jsonl")],
    )
    trainer.train()
    save(trainer, job, out)


if __name__ == "__main__":
    main()
