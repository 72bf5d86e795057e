"""Correctness rewards: is the completion's final answer right for its dataset row?

This is the reward the user actually cares about; the others only shape the path to it. The
answer is taken from the `<answer>` block (a `\\boxed{}` inside it wins), falling back to the last
`\\boxed{}` or number, and checked by `is_correct`: rows of a built-in task (a `task` column, which
task sources add) use the task's own checker, so a countdown answer must be an expression that
reaches the target with the given numbers and a sort answer must be the sorted list; every other
row is compared with its `answer` column by math-verify, so `72`, `72.0`, `\\boxed{72}`, `$72` and
`72 dollars` all match `72`. Evaluation uses the same check, so training and accuracy agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from grpo_box import tasks
from grpo_box.rewards.answers import answers_match, extract_answer, final_answer, is_integer_text, to_text
from grpo_box.rewards.registry import register


def is_correct(predicted: str | None, row: Mapping[str, Any]) -> bool:
    """Whether a final answer is right for a dataset row (its columns, one value each).

    A row whose `task` names a built-in task is checked by that task; others by math-verify
    against `answer`.

    >>> is_correct("20", {"answer": "20", "task": "countdown", "numbers": [3, 5, 7]})
    False
    >>> is_correct("(7 - 3) * 5", {"answer": "20", "task": "countdown", "numbers": [3, 5, 7]})
    True
    >>> is_correct("$72", {"answer": "72"})
    True
    """
    if predicted is None or not predicted.strip():
        return False
    task = row.get("task")
    if isinstance(task, str) and task in tasks.TASKS:
        return tasks.check_answer(task, predicted, row)
    return answers_match(predicted, row.get("answer"))


def row_columns(answer: Any, columns: Mapping[str, Any], n: int, reward: str) -> list[dict[str, Any]]:
    """One dict of column values per completion, from TRL's column lists (`answer` is required)."""
    if answer is None:
        raise ValueError(
            f"{reward} needs the reference answers in a dataset column named 'answer'; "
            "map your answer column to it in the data settings"
        )
    if isinstance(answer, (str, bytes)) or len(answer) != n:
        raise ValueError(f"{reward}: the 'answer' column must be a list with one entry per completion ({n})")
    per_row = {k: v for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
    return [{**{k: v[i] for k, v in per_row.items()}, "answer": ref} for i, ref in enumerate(answer)]


@register("correctness", "1 if the final answer is right: the task's check for task rows, else math-verify vs `answer`",
          {"tag": "answer", "fallback": True}, checks_answer=True)
def correctness(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    answer: list[Any] | None = None, tag: str = "answer", fallback: bool = True, **kwargs: Any,
) -> list[float]:
    """1.0 when the completion's final answer is right for its row (`is_correct`), else 0.0.

    `fallback` lets a `\\boxed{}` or the last number stand in when there is no `<answer>` block.
    Rows with a `task` column use that task's checker: a countdown answer repeating the target fails.

    >>> correctness(None, ["<answer>72 dollars</answer>", r"\\boxed{72.0}", "<answer>71</answer>"], answer=["72"] * 3)
    [1.0, 1.0, 0.0]
    >>> correctness(None, ["<answer>(7-3)*5</answer>", "<answer>20</answer>"], answer=["20"] * 2,
    ...             task=["countdown"] * 2, numbers=[[3, 5, 7]] * 2)
    [1.0, 0.0]
    """
    rows = row_columns(answer, kwargs, len(completions), "correctness")
    preds = [final_answer(to_text(c), tag, fallback) for c in completions]
    return [1.0 if is_correct(pred, row) else 0.0 for pred, row in zip(preds, rows)]


@register("integer_answer", "1 if the final answer is written as an integer (e.g. GSM8K), else 0",
          {"tag": "answer", "fallback": False})
def integer_answer(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    tag: str = "answer", fallback: bool = False, **kwargs: Any,
) -> list[float]:
    """1.0 when the answer block holds a plain integer; a cheap hint toward the expected form.

    `fallback` is off by default: almost any text ends in some number, which would make this free.

    >>> integer_answer(None, ["<answer>\\n72\\n</answer>", "<answer>72.5</answer>", "72"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if is_integer_text(final_answer(to_text(c), tag, fallback)) else 0.0 for c in completions]


@register("reasoning_then_answer", "correct answer after a real think block: words/cap_words (0 under min_words), max 1",
          {"think_tag": "think", "answer_tag": "answer", "min_words": 5, "cap_words": 100}, checks_answer=True)
def reasoning_then_answer(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    answer: list[Any] | None = None, think_tag: str = "think", answer_tag: str = "answer",
    min_words: int = 5, cap_words: int = 100, **kwargs: Any,
) -> list[float]:
    """Pays for reasoning that leads to a correct answer, growing with its length up to a cap.

    0 unless a think block of at least `min_words` words comes before a correct `<answer>`
    (correct as `correctness` judges it); then min(words, cap_words) / cap_words, so padding
    past the cap earns nothing more.

    >>> done = "<think>" + "step " * 50 + "</think><answer>4</answer>"
    >>> reasoning_then_answer(None, [done, "<think>ok</think><answer>4</answer>", "<answer>4</answer>"],
    ...                       answer=["4"] * 3)
    [0.5, 0.0, 0.0]
    """
    if min_words < 0 or cap_words < 1:
        raise ValueError("reasoning_then_answer: min_words must be >= 0 and cap_words >= 1")
    rows = row_columns(answer, kwargs, len(completions), "reasoning_then_answer")
    scores = []
    for completion, row in zip(completions, rows):
        text = to_text(completion)
        words = _reasoning_words(text, think_tag, answer_tag)
        correct = is_correct(final_answer(text, answer_tag, fallback=False), row)
        scores.append(min(words, cap_words) / cap_words if correct and words >= min_words else 0.0)
    return scores


def _reasoning_words(text: str, think_tag: str, answer_tag: str) -> int:
    """Words in the think block, or 0 when it is missing or does not close before the answer."""
    reasoning = extract_answer(text, think_tag)
    think_end, answer_start = text.rfind(f"</{think_tag}>"), text.rfind(f"<{answer_tag}>")
    if reasoning is None or answer_start < 0 or think_end > answer_start:
        return 0
    return len(re.findall(r"\S+", reasoning))
