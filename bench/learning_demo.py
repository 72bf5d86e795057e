"""Does the offline demo learn? Train the cpu preset on the bundled model, report, and check it.

    .venv/bin/python bench/learning_demo.py [--steps 60] [--margin 0.2] [--run-dir DIR]

Runs `python -m grpo_box train --preset cpu` with held-out evaluation before and after (or reads
an existing run with --run-dir), prints the mean reward of the first and last 10 steps, the
per-function means, the held-out accuracy / reward of the base model and the trained adapter,
and the total wall time. It exits 1 unless all of these hold (the issue's acceptance bar):

- the last-10 mean reward beats the first-10 mean by at least `--margin`;
- held-out accuracy after training beats the base model's;
- the whole demo (training with both evaluations) took at most `--limit-min` minutes (30).

With --run-dir the time is the run's own: from its config.yaml to its eval.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 10


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def train(steps: int, root: Path) -> Path:
    cmd = [sys.executable, "-m", "grpo_box", "train", "--preset", "cpu", "--set", f"grpo.max_steps={steps}",
           "--set", "evaluate=true", "--set", f"output.runs_dir={root}"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return max(root.glob("*/config.yaml"), key=lambda p: p.stat().st_mtime).parent


def report(run: Path) -> dict[str, float]:
    """Print the tables; return the numbers the checks use."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first, last = metrics[:WINDOW], metrics[-WINDOW:]
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
    return {
        "reward_first": _mean([m["reward"] for m in first]),
        "reward_last": _mean([m["reward"] for m in last]),
        "acc_base": evaluation.get("base", {}).get("accuracy", float("nan")),
        "acc_trained": evaluation.get("trained", {}).get("accuracy", float("nan")),
    }


def failures(numbers: dict[str, float], minutes: float, margin: float, limit_min: float) -> list[str]:
    """What misses the bar; empty when the demo passes. NaN (a missing number) always fails."""
    gain = numbers["reward_last"] - numbers["reward_first"]
    problems = []
    if not gain >= margin:
        problems.append(f"mean reward rose by {gain:.3f} (first {WINDOW} {numbers['reward_first']:.3f} -> last "
                        f"{WINDOW} {numbers['reward_last']:.3f}); the bar is +{margin:g}")
    if not numbers["acc_trained"] > numbers["acc_base"]:
        problems.append(f"held-out accuracy after training {numbers['acc_trained']:.3f} does not beat the base "
                        f"model's {numbers['acc_base']:.3f}")
    if not minutes <= limit_min:
        problems.append(f"took {minutes:.1f} min, over the {limit_min:g}-minute limit")
    return problems


def run_minutes(run: Path) -> float:
    """An existing run's own duration: config.yaml written at start, eval.json after the last eval."""
    end = run / "eval.json" if (run / "eval.json").is_file() else run / "metrics.jsonl"
    return (end.stat().st_mtime - (run / "config.yaml").stat().st_mtime) / 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--margin", type=float, default=0.2, help="least rise of the mean reward, last vs first 10")
    parser.add_argument("--limit-min", type=float, default=30.0, help="most minutes the whole demo may take")
    parser.add_argument("--run-dir", type=Path, help="check an existing run instead of training")
    parser.add_argument("--root", type=Path, default=Path("/tmp/grpo-box-learning"))
    args = parser.parse_args()
    t0 = time.time()
    run = args.run_dir or train(args.steps, args.root)
    minutes = run_minutes(run) if args.run_dir else (time.time() - t0) / 60
    numbers = report(run)
    print(f"total wall time {minutes:.1f} min (limit {args.limit_min:g} min)")
    problems = failures(numbers, minutes, args.margin, args.limit_min)
    for problem in problems:
        print(f"FAIL: {problem}")
    print("FAIL" if problems else f"PASS: reward +{numbers['reward_last'] - numbers['reward_first']:.3f} "
          f"(bar +{args.margin:g}), accuracy {numbers['acc_base']:.1%} -> {numbers['acc_trained']:.1%}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
