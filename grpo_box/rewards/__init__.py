"""GRPO Box rewards: a registry of reward functions by name, rubric building and the dry run.

A rubric is a list of `RewardSpec(name, weight, params)`. `build_rubric` turns it into the
reward callables and weights TRL's GRPOTrainer takes (with the data template filling unset tag
params, `apply_template`); `list_rewards` feeds `rewards list` and the UI; `score_file` /
`score_groups` run the dry run. All rewards follow TRL's convention
`fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]`, with the
reference answer in the `answer` column; `is_correct` is the one answer check that correctness
rewards and evaluation share. Importing this package registers every built-in family.
"""

from grpo_box.rewards import correctness, format, length  # noqa: F401  (registers the built-in rewards)
from grpo_box.rewards.answers import (
    answers_match,
    extract_answer,
    extract_boxed,
    final_answer,
    parse_number,
    reference_answer,
    to_text,
)
from grpo_box.rewards.correctness import is_correct
from grpo_box.rewards.dryrun import DryRunReport, format_report, score_file, score_groups
from grpo_box.rewards.registry import RewardError, RewardInfo, get_reward, list_rewards, register, reward_info
from grpo_box.rewards.rubric import RewardFunction, apply_template, build_rubric
from grpo_box.rewards.user import load_user_rewards

__all__ = [
    "DryRunReport",
    "RewardError",
    "RewardFunction",
    "RewardInfo",
    "answers_match",
    "apply_template",
    "build_rubric",
    "extract_answer",
    "extract_boxed",
    "final_answer",
    "format_report",
    "get_reward",
    "is_correct",
    "list_rewards",
    "load_user_rewards",
    "parse_number",
    "reference_answer",
    "register",
    "reward_info",
    "score_file",
    "score_groups",
    "to_text",
]
