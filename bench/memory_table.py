"""Print each preset's memory estimate next to Unsloth's published GRPO figure for its model.

A quick sanity table for whoever edits presets or the memory model: the estimate (GB, peak phase,
share of the preset's card, verdict, and vLLM's share of the card, "*" where it is Unsloth's
standby target) beside the figure Unsloth published for the same model where one exists. `--all`
adds every catalog model suggested for each preset, run with its settings.
Calibration against the published runs themselves lives in tests/test_memory.py.

    python bench/memory_table.py [--all]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpo_box.catalog import catalog_for_preset  # noqa: E402
from grpo_box.config import RunConfig  # noqa: E402
from grpo_box.memory import estimate, preset_card_gb, verdict  # noqa: E402
from grpo_box.presets import load_preset, preset_names  # noqa: E402

# Unsloth's published GRPO memory figures, by model (see tests/test_memory.py for the runs).
PUBLISHED: dict[str, str] = {
    "unsloth/Qwen2.5-1.5B-Instruct": "5-7 GB (Unsloth, Feb 2025)",
    "unsloth/Qwen2.5-7B-Instruct": "~15 GB (Unsloth, Colab T4)",
    "unsloth/Meta-Llama-3.1-8B-Instruct": "~15 GB (Unsloth, Colab T4); 54.3 GB at 20K context",
}
HEADER = (f"{'preset':<7} {'model':<36} {'estimate':>9} {'peak':<10} {'training':>9} {'card':>6} {'share':>6} "
          f"{'vLLM':>6}  {'verdict':<13} published")


def row(preset: str, config: RunConfig) -> str:
    card = preset_card_gb(preset)
    est = estimate(config, vram_gb=card)
    share = f"{est.total_gb / card:6.0%}" if card else f"{'-':>6}"
    judged = verdict(est, card) if card else "RAM"
    card_text = f"{card:5.0f}G" if card else f"{'-':>6}"
    published = PUBLISHED.get(config.model.name, "-")
    vllm = f"{est.vllm_util:.2f}{'*' if est.standby_target else ' '}" if est.vllm_util else "-"
    return (f"{preset:<7} {config.model.name:<36} {est.total_gb:7.2f}GB {est.phase:<10} "
            f"{est.phases['training']:7.2f}GB {card_text} {share} {vllm:>6}  "
            f"{judged:<13} {published}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also list each preset's other catalog models")
    args = parser.parse_args()
    print(HEADER)
    for preset in preset_names():
        base = load_preset(preset)
        print(row(preset, base))
        if args.all:
            for model_id, _ in catalog_for_preset(preset)[1:]:
                config = RunConfig.from_dict(base.to_dict())
                config.model.name = model_id
                print(row(preset, config))


if __name__ == "__main__":
    main()
