"""Format rewards: does the completion lay out its reasoning and answer the way the prompt asked?

A small model rarely gets answers right at first, so correctness alone gives GRPO nothing to
compare (every completion scores 0). Format rewards are dense: they pay for the
`<think>…</think><answer>…</answer>` structure the system prompt requests, which the model can
learn first and which makes the answer extractable later. Tag names are params, so the same
rewards serve `<reasoning>` templates. Every function returns one float per completion.
"""

from __future__ import annotations

import re
from typing import Any

from grpo_box.rewards.answers import extract_boxed, to_text
from grpo_box.rewards.registry import register

_TAG_NAME = re.compile(r"[A-Za-z_][\w\-]*")
_TAG_PARAMS = {"think_tag": "think", "answer_tag": "answer"}


def _tag(name: str) -> str:
    if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
        raise ValueError(f"tag name {name!r} must be a plain word such as 'think', 'reasoning' or 'answer'")
    return re.escape(name)


def _texts(completions: list[Any]) -> list[str]:
    return [to_text(c) for c in completions]


@register("strict_format", "1 if the whole completion is exactly <think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>",
          _TAG_PARAMS)
def strict_format(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    think_tag: str = "think", answer_tag: str = "answer", **kwargs: Any,
) -> list[float]:
    """1.0 when the completion is exactly the two blocks, each tag on its own line, nothing around.

    >>> strict_format(None, ["<think>\\n6*7\\n</think>\\n<answer>\\n42\\n</answer>\\n", "<think>6*7</think> 42"])
    [1.0, 0.0]
    """
    t, a = _tag(think_tag), _tag(answer_tag)
    pattern = re.compile(rf"<{t}>\n.+?\n</{t}>\n<{a}>\n.+?\n</{a}>", re.DOTALL)
    tags = [f"<{think_tag}>", f"</{think_tag}>", f"<{answer_tag}>", f"</{answer_tag}>"]

    def score(text: str) -> float:
        once = all(text.count(tag) == 1 for tag in tags)
        return 1.0 if once and pattern.fullmatch(text.rstrip()) else 0.0

    return [score(text) for text in _texts(completions)]


@register("soft_format", "1 if a <think>…</think> block is followed by an <answer>…</answer> block, spacing free",
          _TAG_PARAMS)
def soft_format(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    think_tag: str = "think", answer_tag: str = "answer", **kwargs: Any,
) -> list[float]:
    """1.0 when the think block comes before the answer block anywhere in the text.

    >>> soft_format(None, ["Sure. <think>6*7</think> <answer>42</answer> done", "<answer>42</answer>"])
    [1.0, 0.0]
    """
    t, a = _tag(think_tag), _tag(answer_tag)
    pattern = re.compile(rf"<{t}>.*?</{t}>\s*<{a}>.*?</{a}>", re.DOTALL)
    return [1.0 if pattern.search(text) else 0.0 for text in _texts(completions)]


@register("xml_count", "0.125 per correctly placed tag (max 0.5), minus 0.001 per character after </answer>",
          _TAG_PARAMS)
def xml_count(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    think_tag: str = "think", answer_tag: str = "answer", **kwargs: Any,
) -> list[float]:
    """The well-known tag-counting recipe: a smooth signal even for half-formatted completions.

    Each of `<think>\\n`, `\\n</think>\\n`, `\\n<answer>\\n`, `\\n</answer>` found exactly once
    earns 0.125; text after `</answer>` (whitespace aside) costs 0.001 per character.

    >>> xml_count(None, ["<think>\\nr\\n</think>\\n<answer>\\n4\\n</answer>\\n", "<think>\\nr\\n</think>\\n"])
    [0.5, 0.25]
    """
    _tag(think_tag)
    _tag(answer_tag)
    pieces = [f"<{think_tag}>\n", f"\n</{think_tag}>\n", f"\n<{answer_tag}>\n", f"\n</{answer_tag}>"]

    def score(text: str) -> float:
        total = 0.125 * sum(text.count(piece) == 1 for piece in pieces)
        if text.count(pieces[-1]) == 1:
            trailing = text.split(pieces[-1], 1)[1].strip()
            total -= 0.001 * len(trailing)
        return round(total, 6)

    return [score(text) for text in _texts(completions)]


@register("think_format", "graded R1 structure: 0.25 each for think block, answer block, their order, nothing outside",
          _TAG_PARAMS)
def think_format(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
    think_tag: str = "think", answer_tag: str = "answer", **kwargs: Any,
) -> list[float]:
    """Partial credit for the DeepSeek-R1 layout, so a model can climb toward it step by step.

    +0.25 one non-empty think block; +0.25 one non-empty answer block; +0.25 think closes
    before answer opens; +0.25 the completion starts with the think tag and ends with the
    answer's closing tag.

    >>> think_format(None, ["<think>\\nr\\n</think>\\n<answer>\\n4\\n</answer>", "<think>r</think> so 4", "hi"])
    [1.0, 0.25, 0.0]
    """
    t, a = _tag(think_tag), _tag(answer_tag)
    think_re = re.compile(rf"<{t}>(.*?)</{t}>", re.DOTALL)
    answer_re = re.compile(rf"<{a}>(.*?)</{a}>", re.DOTALL)
    return [_graded_structure(text, think_re, answer_re, think_tag, answer_tag) for text in _texts(completions)]


def _graded_structure(text: str, think_re: re.Pattern, answer_re: re.Pattern, think_tag: str, answer_tag: str) -> float:
    think = _single_block(text, think_re, think_tag)
    answer = _single_block(text, answer_re, answer_tag)
    score = 0.25 * (think is not None) + 0.25 * (answer is not None)
    if think is not None and answer is not None and think.end() <= answer.start():
        score += 0.25
        stripped = text.strip()
        if stripped.startswith(f"<{think_tag}>") and stripped.endswith(f"</{answer_tag}>"):
            score += 0.25
    return score


def _single_block(text: str, pattern: re.Pattern, tag: str) -> re.Match | None:
    """The block when its tags occur exactly once and it holds non-whitespace text."""
    if text.count(f"<{tag}>") != 1 or text.count(f"</{tag}>") != 1:
        return None
    match = pattern.search(text)
    return match if match and match.group(1).strip() else None


@register("boxed_format", "1 if the completion puts exactly one non-empty \\boxed{…} answer")
def boxed_format(prompts: list[Any], completions: list[Any], completion_ids: Any = None, **kwargs: Any) -> list[float]:
    """For the `boxed` template: one final answer in `\\boxed{}`, not zero and not several.

    >>> boxed_format(None, [r"so \\boxed{42}", r"\\boxed{4} or \\boxed{2}", "42"])
    [1.0, 0.0, 0.0]
    """
    def score(text: str) -> float:
        once = len(re.findall(r"\\boxed\s*\{", text)) == 1
        return 1.0 if once and extract_boxed(text) else 0.0

    return [score(text) for text in _texts(completions)]
