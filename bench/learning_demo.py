"""Does the offline demo teach the bundled model to reason in the format? Run it, measure, check.

    .venv/bin/python bench/learning_demo.py [--run-dir DIR] [--plot docs/demo_rewards.png]

Runs `python -m grpo_box demo` (the cpu preset: training with held-out evaluation before and after,
then the GGUF export), or reads a finished demo run with --run-dir. On the held-out split it reports
for three models — the untouched base model (the template's system prompt only: no one-shot turn,
no prefill, as a user would first meet it), the base model prompted as the demo trains it, and the
trained adapter — and for the exported q4_k_m GGUF in llama.cpp:

- accuracy, counting only answers inside the `<answer>` block;
- the share of replies in the full `<think>…</think><answer>…</answer>` format (think_format = 1);
- the mean reasoning length (words inside `<think>`).

It also prints the per-reward means of the first and last 10 training steps and draws them as a
PNG (--plot). It exits 1 when any target is missed:

- full-format replies: at most 10% for the untouched base, at least 60% after training;
- accuracy at least +50 points over the untouched base, and above the same-prompt base (so the
  training, not only the prompt, earns part of it);
- the exported q4_k_m GGUF replies in the full format at least as often as the bar (60%);
- the whole demo (evaluations, training, export) in at most 25 minutes (a fresh run only).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WINDOW = 10
FORMAT_AFTER, FORMAT_BEFORE, ACCURACY_GAIN, LIMIT_MIN = 0.60, 0.10, 0.50, 25.0
_THINK = re.compile(r"<think>(.*?)</think>", re.S)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# -- running ------------------------------------------------------------------------------------
def run_demo(root: Path) -> Path:
    """`python -m grpo_box demo` into `root`; the run folder it made."""
    cmd = [sys.executable, "-m", "grpo_box", "demo", "--set", f"output.runs_dir={root}"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return max(root.glob("*/config.yaml"), key=lambda p: p.stat().st_mtime).parent


def untouched_base(run: Path, out: Path) -> dict[str, Any]:
    """The base model on the same held-out rows with only the template's system prompt."""
    cmd = [sys.executable, "-m", "grpo_box", "eval", "--config", str(run / "config.yaml"), "--preset", "cpu",
           "--set", "data.one_shot=false", "--set", "data.prefill=false", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["base"]


def gguf_replies(run: Path) -> tuple[Path, list[str], list[str]]:
    """Greedy replies of the run's q4_k_m GGUF in llama.cpp to the held-out questions, with the answers.

    Each prompt is the system prompt and the question, as a client such as Open WebUI sends them:
    the one-shot turn and the prefill come from the GGUF's own chat template."""
    from grpo_box.data import load_rows
    from grpo_box.inference import from_gguf
    from grpo_box.runs import RunDir

    path = next((run / "export").rglob("*q4_k_m.gguf"))
    _, held_out = load_rows(RunDir(run).config())
    gen = from_gguf(path)
    try:
        prompts = [[p[0], p[-1]] for p in held_out["prompt"]]
        replies = [r[0] for r in gen.generate(prompts, max_new_tokens=64)]
    finally:
        gen.close()
    return path, replies, list(held_out["answer"])


# -- measuring ----------------------------------------------------------------------------------
def shape(replies: list[str], correct: list[bool]) -> dict[str, float]:
    """Accuracy, full-format share and mean reasoning words of a list of replies."""
    from grpo_box.rewards.format import think_format

    full = [s == 1.0 for s in think_format(None, replies)]
    words = [len(m.group(1).split()) for r in replies if (m := _THINK.search(r))]
    return {"accuracy": _mean([float(c) for c in correct]), "format": _mean([float(f) for f in full]),
            "reasoning_words": _mean([float(w) for w in words]) if words else 0.0, "rows": len(replies)}


def from_eval(side: dict[str, Any]) -> dict[str, float]:
    examples = side["examples"]
    return shape([e["completion"] for e in examples], [bool(e["correct"]) for e in examples])


def from_gguf(replies: list[str], answers: list[str]) -> dict[str, float]:
    from grpo_box.rewards.answers import answers_match, extract_answer

    return shape(replies, [answers_match(extract_answer(r), a) for r, a in zip(replies, answers)])


def curves(run: Path) -> tuple[list[int], dict[str, list[float]]]:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = ["reward"] + sorted(k for k in metrics[0] if k.startswith("rewards/") and k.endswith("/mean"))
    return [m["step"] for m in metrics], {k.replace("rewards/", "").replace("/mean", ""): [m[k] for m in metrics]
                                           for k in keys}


# -- reporting ----------------------------------------------------------------------------------
def print_report(run: Path, rows: dict[str, dict[str, float]], series: dict[str, list[float]]) -> None:
    print(f"\nrun {run}")
    print(f"{'reward (mean per step)':24s} {'first ' + str(WINDOW):>9s} {'last ' + str(WINDOW):>9s}")
    for name, values in series.items():
        print(f"{name:24s} {_mean(values[:WINDOW]):9.3f} {_mean(values[-WINDOW:]):9.3f}")
    print(f"\n{'held-out':34s} {'accuracy':>9s} {'format':>8s} {'reasoning':>10s} {'rows':>5s}")
    for label, r in rows.items():
        print(f"{label:34s} {r['accuracy']:9.1%} {r['format']:8.1%} {r['reasoning_words']:7.1f} w {r['rows']:5d}")


def plot(path: Path, steps: list[int], series: dict[str, list[float]]) -> None:
    """The reward curves as a PNG (PIL only: the project ships no plotting library)."""
    from PIL import Image, ImageDraw

    w, h, pad = 900, 420, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    top = max(max(v) for v in series.values()) or 1.0
    x = lambda s: pad + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (w - 2 * pad - 120)  # noqa: E731
    y = lambda v: h - pad - v / top * (h - 2 * pad)  # noqa: E731
    d.line([(pad, pad), (pad, h - pad), (w - pad - 120, h - pad)], fill="black")
    for tick in (0.0, top / 2, top):
        d.text((8, y(tick) - 6), f"{tick:.2f}", fill="black")
    d.text((w / 2 - 80, h - pad + 20), f"step (1-{steps[-1]})", fill="black")
    d.text((pad, 20), "GRPO Box offline demo: mean reward per step (cpu preset, bundled 135M model)", fill="black")
    colors = ["black", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for i, (name, values) in enumerate(series.items()):
        color = colors[i % len(colors)]
        d.line([(x(s), y(v)) for s, v in zip(steps, values)], fill=color, width=2)
        d.text((w - pad - 100, pad + 18 * i), name, fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    print(f"reward curves: {path}")


def failures(rows: dict[str, dict[str, float]], minutes: float | None) -> list[str]:
    """What misses a target; empty when the demo passes. NaN (a missing number) always fails."""
    untouched, base, trained, gguf = (rows[k] for k in ("untouched", "base", "trained", "gguf"))
    problems = []
    if not untouched["format"] <= FORMAT_BEFORE:
        problems.append(f"the untouched base already writes the format {untouched['format']:.0%} of the time")
    if not trained["format"] >= FORMAT_AFTER:
        problems.append(f"after training {trained['format']:.0%} of replies are in the format; the bar is "
                        f"{FORMAT_AFTER:.0%}")
    if not trained["accuracy"] - untouched["accuracy"] >= ACCURACY_GAIN:
        problems.append(f"accuracy {untouched['accuracy']:.1%} -> {trained['accuracy']:.1%}; the bar is "
                        f"+{ACCURACY_GAIN:.0%}")
    if not trained["accuracy"] > base["accuracy"]:
        problems.append(f"training did not beat the same prompt on the base model ({base['accuracy']:.1%})")
    if not gguf["format"] >= FORMAT_AFTER:
        problems.append(f"the q4_k_m GGUF replies in the format {gguf['format']:.0%} of the time in llama.cpp")
    if minutes is not None and not minutes <= LIMIT_MIN:
        problems.append(f"the demo took {minutes:.1f} min, over {LIMIT_MIN:g}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="measure a finished demo run instead of running one")
    parser.add_argument("--root", type=Path, default=Path("/tmp/grpo-box-learning"))
    parser.add_argument("--plot", type=Path, default=Path("/tmp/grpo-box-learning/demo_rewards.png"))
    args = parser.parse_args()
    started = time.time()
    run = args.run_dir or run_demo(args.root)
    minutes = None if args.run_dir else (time.time() - started) / 60
    evaluation = json.loads((run / "eval.json").read_text())
    path, replies, answers = gguf_replies(run)
    rows = {
        "untouched": from_eval(untouched_base(run, run.parent / f"{run.name}-untouched-eval.json")),
        "base": from_eval(evaluation["base"]),
        "trained": from_eval(evaluation["trained"]),
        "gguf": from_gguf(replies, answers),
    }
    steps, series = curves(run)
    labelled = {"base, template prompt only": rows["untouched"], "base, demo prompt (one-shot+prefill)": rows["base"],
                "trained adapter": rows["trained"], f"q4_k_m GGUF in llama.cpp": rows["gguf"]}
    print_report(run, labelled, series)
    print(f"GGUF: {path}\nfirst GGUF reply: {replies[0]!r}")
    plot(args.plot, steps, series)
    if minutes is not None:
        print(f"whole demo: {minutes:.1f} min (limit {LIMIT_MIN:g})")
    problems = failures(rows, minutes)
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"PASS: format {rows['untouched']['format']:.0%} -> {rows['trained']['format']:.0%} "
              f"(GGUF {rows['gguf']['format']:.0%}), accuracy {rows['untouched']['accuracy']:.1%} -> "
              f"{rows['trained']['accuracy']:.1%}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
