"""How often does the untrained bundled model write the think/answer format, under each prompt option?

    .venv/bin/python bench/format_probe.py [--rows 24] [--max-tokens 64]

The options a run has for a model that ignores a described format (`data.one_shot`,
`data.prefill`, and a worked example pasted into the system prompt instead of shown as a turn),
tried on the base model before any training, greedy and sampled at temperature 1 (what GRPO's
rollouts see: a group needs some replies in the format for the format rewards to have a signal).
Prints, per option: the share of replies in the full format, the mean think_format score, and the
accuracy counting only answers inside <answer>. The numbers chose the cpu preset's settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpo_box.config import DataConfig  # noqa: E402
from grpo_box.data import load_rows  # noqa: E402
from grpo_box.inference import load_for_generation  # noqa: E402
from grpo_box.prompts import get_template  # noqa: E402
from grpo_box.rewards.answers import answers_match, extract_answer  # noqa: E402
from grpo_box.rewards.format import think_format  # noqa: E402

_EXAMPLE = "\nExample:\nUser: {q}\nAssistant: {a}"


def options() -> dict[str, DataConfig]:
    question, reply = get_template("think").example
    in_system = get_template("think").system + _EXAMPLE.format(q=question, a=reply)
    def option(one_shot: bool = False, prefill: bool = False, system: str | None = None) -> DataConfig:
        return DataConfig(one_shot=one_shot, prefill=prefill, system_prompt=system)

    return {
        "template prompt only": option(),
        "+ prefill": option(prefill=True),
        "example in system prompt": option(system=in_system),
        "example in system + prefill": option(system=in_system, prefill=True),
        "one-shot turn": option(one_shot=True),
        "one-shot turn + prefill": option(one_shot=True, prefill=True),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    gen = load_for_generation("bundled:smollm2-135m-instruct")
    print(f"{'option':30s} {'T':>3s} {'format':>7s} {'score':>6s} {'accuracy':>9s}")
    for name, cfg in options().items():
        cfg.eval_size = args.rows
        _, held_out = load_rows(cfg)
        gen.use_run_format(cfg)
        for temperature in (0.0, 1.0):
            replies = [r[0] for r in gen.generate(list(held_out["prompt"]), args.max_tokens, temperature, seed=0)]
            scores = think_format(None, replies)
            right = [answers_match(extract_answer(r), a) for r, a in zip(replies, held_out["answer"])]
            print(f"{name:30s} {temperature:3g} {sum(s == 1.0 for s in scores) / len(scores):7.0%} "
                  f"{sum(scores) / len(scores):6.2f} {sum(right) / len(right):9.0%}", flush=True)
    gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
