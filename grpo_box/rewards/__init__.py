"""GRPO Box rewards: a registry of reward functions by name, rubric building and the dry run.

A rubric is a list of `RewardSpec(name, weight, params)`. `build_rubric` turns it into the
reward callables and weights TRL's GRPOTrainer takes (with the data template filling unset tag
params, `apply_template`); `list_rewards` feeds `rewards list` and the UI; `score_file` /
`score_groups` run the dry run; `call_rewards` and `weighted_total` score completions exactly as
TRL does, for the dry run and the evaluation alike. All rewards follow TRL's convention
`fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]`, with the
reference answer in the `answer` column; `is_correct` is the one answer check that correctness
rewards and evaluation share. Names are resolved lazily
(PEP 562): importing the package imports no submodule, so `tasks` can use `rewards.answers`
without a cycle; the registry lookups come from `builtin`, which registers every family.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that defines it
_WHERE = {
    "answers_match": "answers", "extract_answer": "answers", "extract_boxed": "answers", "final_answer": "answers",
    "parse_number": "answers", "reference_answer": "answers", "to_text": "answers",
    "is_correct": "correctness",
    "DryRunReport": "dryrun", "format_report": "dryrun", "score_file": "dryrun", "score_groups": "dryrun",
    "RewardError": "builtin", "RewardInfo": "builtin", "get_reward": "builtin", "list_rewards": "builtin",
    "register": "builtin", "reward_info": "builtin",
    "RewardFunction": "rubric", "apply_template": "rubric", "build_rubric": "rubric",
    "call_rewards": "scoring", "weighted_total": "scoring",
    "load_user_rewards": "user",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
