"""Does the offline demo learn? Train the cpu preset on the bundled model and report the numbers.

    .venv/bin/python bench/learning_demo.py [--steps 60] [--run-dir DIR]

Runs `python -m grpo_box train --preset cpu` with held-out evaluation before and after (or reads
an existing run with --run-dir), then prints the mean reward of the first and last 10 steps, the
per-function means, and the held-out accuracy / reward of the base model and the trained adapter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def train(steps: int, root: Path) -> Path:
    cmd = [sys.executable, "-m", "grpo_box", "train", "--preset", "cpu", "--set", f"grpo.max_steps={steps}",
           "--set", "evaluate=true", "--set", f"output.runs_dir={root}"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return max(root.glob("*/config.yaml"), key=lambda p: p.stat().st_mtime).parent


def report(run: Path, window: int = 10) -> None:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = metrics[:window], metrics[-window:]
    print(f"run {run} — {len(metrics)} steps, {metrics[-1]['wall_time'] / 60:.1f} min of training")
    print(f"{'':28s} {'first ' + str(len(first)):>10s} {'last ' + str(len(last)):>10s}")
    keys = ["reward"] + sorted(k for k in metrics[0] if k.startswith("rewards/") and k.endswith("/mean"))
    keys += ["frac_reward_zero_std", "completions/mean_length"]
    for key in keys:
        print(f"{key:28s} {_mean([m[key] for m in first]):10.3f} {_mean([m[key] for m in last]):10.3f}")
    evaluation = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
    for side in ("base", "trained"):
        if side in evaluation:
            e = evaluation[side]
            print(f"held-out {side:8s} accuracy {e['accuracy']:.3f}  reward {e['reward']:.3f}  "
                  f"per function {json.dumps({k: round(v, 3) for k, v in e['rewards'].items()})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--run-dir", type=Path, help="report on an existing run instead of training")
    parser.add_argument("--root", type=Path, default=Path("/tmp/grpo-box-learning"))
    args = parser.parse_args()
    t0 = time.time()
    run = args.run_dir or train(args.steps, args.root)
    report(run)
    print(f"total {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
