"""Call a rubric's reward functions the way TRL's GRPOTrainer does, and combine their scores.

The dry run (`rewards.dryrun`) and the evaluation (`evaluate`) both score completions outside
training; their numbers only mean something if the rewards see exactly what they see in
training. TRL 1.15 (`GRPOTrainer._calculate_rewards`) calls each reward as
`fn(prompts=..., completions=..., completion_ids=..., **columns, trainer_state=..., log_extra=...,
log_metric=...)`: every dataset column except the prompt, one value per completion; completions
in chat form (`[{"role": "assistant", "content": ...}]`) when the prompts are conversations.
A reward may return None to skip a completion; TRL then sums the weighted scores that are present
(`nansum`), and a completion that every function skipped is unscorable: its total is NaN, left
out of the reward mean and given advantage 0. `weighted_total` returns None for it.
"""

from __future__ import annotations

from typing import Any

from grpo_box.rewards.registry import RESERVED_COLUMNS
from grpo_box.rewards.rubric import RewardFunction


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


# What GRPOTrainer passes besides dataset columns; user rewards may read or call these. Outside
# training there is no trainer state, and what a reward logs goes nowhere.
TRAINER_KWARGS: dict[str, Any] = {"trainer_state": None, "log_extra": _noop, "log_metric": _noop}
assert set(TRAINER_KWARGS) <= set(RESERVED_COLUMNS)


def as_completions(prompts: list[Any], completions: list[Any]) -> list[Any]:
    """Completions as TRL hands them to rewards: chat messages when the prompts are conversations.

    >>> as_completions([[{"role": "user", "content": "1+1?"}]], ["2"])
    [[{'role': 'assistant', 'content': '2'}]]
    >>> as_completions(["1+1?"], ["2"])
    ['2']
    """
    if not prompts or not isinstance(prompts[0], list):
        return list(completions)
    return [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]


def call_rewards(
    funcs: list[RewardFunction], prompts: list[Any], completions: list[Any],
    completion_ids: list[list[int]] | None = None, columns: dict[str, list[Any]] | None = None,
) -> dict[str, list[float | None]]:
    """Each function's scores (None where it skipped a completion), called as TRL calls it.

    `prompts`, `completions` and every list in `columns` hold one entry per completion (repeat a
    row's values for each of its samples); text completions of conversational prompts are turned
    into chat messages. `completion_ids` is None when the token ids are not known.
    """
    kwargs = {**(columns or {}), **TRAINER_KWARGS}
    chat = as_completions(prompts, completions)
    return {f.name: f(prompts, chat, completion_ids, **kwargs) for f in funcs}


def weighted_total(values: list[float | None], weights: list[float]) -> float | None:
    """TRL's nansum of weighted scores; None when every function returned None (unscorable).

    >>> weighted_total([1.0, None], [2.0, 0.5]), weighted_total([None, None], [2.0, 0.5])
    (2.0, None)
    """
    present = [(v, w) for v, w in zip(values, weights) if v is not None]
    return sum(v * w for v, w in present) if present else None


def weighted_totals(funcs: list[RewardFunction], weights: list[float],
                    scores: dict[str, list[float | None]]) -> list[float | None]:
    """`weighted_total` of every completion from `call_rewards`' scores."""
    n = len(scores[funcs[0].name]) if funcs else 0
    return [weighted_total([scores[f.name][i] for f in funcs], weights) for i in range(n)]
