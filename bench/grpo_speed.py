"""GRPO step speed: GRPO Box (Unsloth's CPU backend) vs a plain TRL baseline, same batch.

    .venv/bin/python bench/grpo_speed.py [--steps 4] [--trl 1.16.0 | --trl installed] [--skip-baseline]

Both sides train the bundled SmolLM2-135M-Instruct on the cpu preset's task, rubric, LoRA and
batch. GRPO Box runs `python -m grpo_box train`; the baseline is stock TRL + transformers + PEFT
with no `import unsloth` in the process. By default the baseline uses TRL 1.16.0, installed once
with `pip --target` into bench/.trl-1.16.0 (a throwaway directory put first on the baseline's
PYTHONPATH, beside the same torch/transformers/PEFT); `--trl installed` uses the venv's TRL 1.15.
Stock TRL cannot run GRPO on a CPU (its fused LM-head kernel is Triton-only), so the baseline gets
the same torch replacement for that kernel (`grpo_box.cpu_backend`) and nothing else.
Both sides are timed by TRL's own `step_time` metric; the first step (warm-up) is dropped.
Prints seconds per step, completion tokens per second and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = r"""
import json, sys
import trl
from grpo_box.cpu_backend import patch_trl_for_cpu
from grpo_box.config import RunConfig
from grpo_box.data import load_rows
from grpo_box.models import resolve_model
from grpo_box.rewards import build_rubric
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

assert "unsloth" not in sys.modules
patch_trl_for_cpu()
config = RunConfig.load(sys.argv[1])
out = sys.argv[2]
path = resolve_model(config.model.name)
tok = AutoTokenizer.from_pretrained(path)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype="float32"),
                       LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, target_modules=config.lora.target_modules,
                                  task_type="CAUSAL_LM"))
train, _ = load_rows(config)
funcs, weights = build_rubric(config.rewards)
g = config.grpo

class Log(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "reward" in logs:
            with open(out, "a") as fh:
                fh.write(json.dumps({"step": state.global_step, "trl": trl.__version__, **logs}) + "\n")

args = GRPOConfig(output_dir=out + ".ckpt", max_steps=g.max_steps, learning_rate=g.learning_rate,
                  per_device_train_batch_size=g.per_device_train_batch_size, num_generations=g.num_generations,
                  max_completion_length=g.max_completion_length, temperature=g.temperature, beta=g.beta,
                  loss_type=g.loss_type, reward_weights=weights, logging_steps=1, save_strategy="no",
                  report_to="none", use_cpu=True, seed=g.seed, disable_tqdm=True)
GRPOTrainer(model=model, processing_class=tok, reward_funcs=funcs, args=args, train_dataset=train,
            callbacks=[Log()]).train()
"""


def _summary(records: list[dict]) -> dict[str, float]:
    steady = records[1:] or records
    seconds = sum(r["step_time"] for r in steady) / len(steady)
    tokens = sum(r["completions/mean_length"] for r in steady) / len(steady)
    return {"steps": len(steady), "s_per_step": seconds, "completion_tokens_per_step": tokens,
            "trl": records[0].get("trl", "")}


def run_grpo_box(steps: int, workdir: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "grpo_box", "train", "--preset", "cpu", "--set", f"grpo.max_steps={steps}",
           "--set", f"output.runs_dir={workdir}", "--set", f"output.save_steps={steps + 1}"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    metrics = next(workdir.glob("*/metrics.jsonl"))
    return _summary([json.loads(line) for line in metrics.read_text().splitlines()])


def trl_path(version: str) -> list[str]:
    """PYTHONPATH entries that make the baseline import TRL `version` ("installed": the venv's own)."""
    if version == "installed":
        return []
    target = ROOT / "bench" / f".trl-{version}"
    if not (target / "trl").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        f"trl=={version}"], check=True)
    return [str(target)]


def run_baseline(steps: int, workdir: Path, trl_version: str) -> dict[str, float]:
    from grpo_box.presets import resolve_config

    config = resolve_config("cpu", overrides=[f"grpo.max_steps={steps}"])
    config_path, out = workdir / "baseline.yaml", workdir / "baseline.jsonl"
    config.save(config_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*trl_path(trl_version), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", BASELINE, str(config_path), str(out)], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"the baseline failed:\n{result.stderr[-3000:]}")
    return _summary([json.loads(line) for line in out.read_text().splitlines()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--trl", default="1.16.0", help="the baseline's TRL version, or 'installed'")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    from grpo_box.presets import load_preset

    g = load_preset("cpu").grpo
    completions = g.per_device_train_batch_size * g.gradient_accumulation_steps  # completions per step
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        rows["grpo_box (unsloth cpu backend)"] = run_grpo_box(args.steps, Path(tmp) / "box")
        if not args.skip_baseline:
            baseline = run_baseline(args.steps, Path(tmp), args.trl)
            rows[f"plain TRL {baseline['trl']} + PEFT"] = baseline
    print(f"cpu preset, bundled SmolLM2-135M, {args.steps} steps (first dropped), total {time.time() - t0:.0f}s")
    print(f"{'':34s} {'s/step':>8s} {'tokens/s':>9s}")
    for name, r in rows.items():
        r["tokens_per_s"] = r["completion_tokens_per_step"] * completions / r["s_per_step"]
        print(f"{name:34s} {r['s_per_step']:8.1f} {r['tokens_per_s']:9.1f}")
    if len(rows) == 2:
        box, base = rows.values()
        print(f"speed-up (baseline s/step ÷ grpo_box s/step): {base['s_per_step'] / box['s_per_step']:.2f}x")


if __name__ == "__main__":
    main()
