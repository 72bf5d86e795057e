"""Length and repetition rewards: keep completions near a useful size and free of loops.

GRPO tends to drift in length: completions balloon until they hit `max_completion_length`
(clipped, no answer) or collapse to a bare answer. `target_length` pulls toward a chosen size and
`repetition_penalty` punishes the degenerate loops small models fall into under RL.
"""

from __future__ import annotations

import re
from typing import Any

from grpo_box.rewards.answers import to_text
from grpo_box.rewards.registry import register

_UNITS = ("tokens", "chars", "words")
_CHARS_PER_TOKEN = 4  # rough English average; used only when token ids are not available


def completion_length(text: str, ids: Any, unit: str) -> int:
    """Length of one completion in `unit`; tokens come from the ids TRL passes, else ~chars/4."""
    if unit == "chars":
        return len(text)
    if unit == "words":
        return len(text.split())
    if ids is not None:
        return len(ids)
    return round(len(text) / _CHARS_PER_TOKEN)


@register("target_length", "1 at `target` length, falling linearly to 0 at 0 and 2×target (tokens, chars or words)",
          {"target": 200, "unit": "tokens"})
def target_length(
    prompts: list[Any], completions: list[Any], completion_ids: list[Any] | None = None, *,
    target: int = 200, unit: str = "tokens", **kwargs: Any,
) -> list[float]:
    """Peaks at 1.0 when the completion is exactly `target` long: max(0, 1 - |len - target| / target).

    With `unit="tokens"` the lengths come from TRL's `completion_ids`; in a dry run without
    them, tokens are estimated as characters / 4.

    >>> target_length(None, ["a" * 10, "a" * 5, "a" * 30], target=10, unit="chars")
    [1.0, 0.5, 0.0]
    """
    if unit not in _UNITS:
        raise ValueError(f"target_length: unit={unit!r}; choose one of {', '.join(_UNITS)}")
    if not isinstance(target, (int, float)) or target <= 0:
        raise ValueError(f"target_length: target={target!r} must be a positive number")
    ids = completion_ids if completion_ids is not None else [None] * len(completions)
    lengths = [completion_length(to_text(c), i, unit) for c, i in zip(completions, ids)]
    return [max(0.0, 1.0 - abs(n - target) / target) for n in lengths]


@register("repetition_penalty", "negative share of repeated word n-grams: 0 for none, max_penalty when all repeat",
          {"ngram": 3, "max_penalty": -1.0})
def repetition_penalty(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    ngram: int = 3, max_penalty: float = -1.0, **kwargs: Any,
) -> list[float]:
    """(1 - unique n-grams / all n-grams) × max_penalty, over lower-cased words (open-r1's recipe).

    >>> repetition_penalty(None, ["the cat sat on the mat", "go go go go go go"], ngram=2)
    [0.0, -0.8]
    """
    if not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"repetition_penalty: ngram={ngram!r} must be a positive integer")
    if max_penalty > 0:
        raise ValueError(f"repetition_penalty: max_penalty={max_penalty} must be <= 0 (it is a penalty)")
    return [_repetition(to_text(c), ngram) * max_penalty + 0.0 for c in completions]


def _repetition(text: str, n: int) -> float:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n))))
    return round(1.0 - len(set(grams)) / len(grams), 6)
