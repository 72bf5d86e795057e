"""Pull text and final answers out of model completions, and decide whether two answers agree.

Rewards, evaluation and data preparation all need the same few steps: turn a TRL completion
(a plain string or a list of chat messages) into text, find the final answer in it (an
`<answer>` tag, else a `\\boxed{}`, else the last number), clean a reference answer (GSM8K's
`... #### 72`; `reference_answer` is the one cleaner, also used when data is loaded), and
compare the two with math-verify so that `72`, `72.0`, `\\boxed{72}`, `$72` and `72 dollars`
all count as the reference `72`. Keeping them in one public module means the score a user sees
in the dry run, during training and in the before/after evaluation is the same.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from typing import Any

from math_verify import parse, verify

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INTEGER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)$")
_MAX_ANSWER_CHARS = 2000  # math-verify is slow on huge inputs; a final answer is never this long


def to_text(item: Any, role: str | None = None) -> str:
    """Text of a prompt or completion in any TRL form.

    Strings pass through; a message dict gives its content; a list of messages gives the
    content of the last message with `role` (when given) or all contents joined by newlines.
    Multimodal content parts (`[{"type": "text", "text": ...}]`) are flattened to their text.

    >>> to_text([{"role": "assistant", "content": "<answer>4</answer>"}])
    '<answer>4</answer>'
    >>> to_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], role="user")
    '2+2?'
    """
    if item is None:
        return ""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return _content_text(item.get("content"))
    if isinstance(item, (list, tuple)):
        messages = [m for m in item if not (role and isinstance(m, dict) and m.get("role") != role)]
        if role and messages:
            return to_text(messages[-1])
        return "\n".join(to_text(m) for m in item)
    return str(item)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def extract_answer(text: str, tag: str = "answer") -> str | None:
    """Content of the last complete `<tag>…</tag>` pair, stripped; None when there is none.

    >>> extract_answer("<think>\\n6*7\\n</think>\\n<answer>\\n42\\n</answer>")
    '42'
    >>> extract_answer("no tags here") is None
    True
    """
    close = f"</{tag}>"
    end = text.rfind(close)
    if end < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, end)
    if start < 0:
        return None
    return text[start + len(tag) + 2 : end].strip()


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{…}` (or `\\fbox{…}`), with nested braces; None when absent.

    >>> extract_boxed(r"so the answer is \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def parse_number(text: str | None) -> float | None:
    """The last number in `text` as a float: handles `1,234`, `-3.5`, `$72`, `72 dollars`, `3/4`.

    >>> parse_number("She pays $1,234.50 in total.")
    1234.5
    >>> parse_number("3/4 of them") , parse_number("none") is None
    (0.75, True)
    """
    if not text:
        return None
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    token = matches[-1].replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(num) / float(den) if float(den) else None
        return float(token)
    except ValueError:
        return None


def is_integer_text(text: str | None) -> bool:
    """True when `text` is written as a plain integer (`72`, `-3`, `1,000`, `$72`), not `72.5` or `x`.

    >>> is_integer_text(" $1,000. "), is_integer_text("72.5")
    (True, False)
    """
    if text is None:
        return False
    cleaned = text.strip().strip("$").rstrip(".").strip()
    return bool(_INTEGER.match(cleaned))


def reference_answer(raw: Any) -> str:
    """The checkable part of a dataset's reference answer; data loading and rewards both use it.

    GSM8K's `reasoning #### 1,234` gives `1234`; a MATH-style solution gives the content of its
    last `\\boxed{}`; a number with thousands separators loses the commas, and a whole float from
    a numeric column (`72.0`) becomes `72`. Lists and mappings become JSON; anything else is
    returned stripped.

    >>> reference_answer("Natalia sold 48/2 = 24 clips... #### 72"), reference_answer(72.0)
    ('72', '72')
    >>> reference_answer(r"so \\boxed{1,234}"), reference_answer("2, 4, 7, 9")
    ('1234', '2, 4, 7, 9')
    """
    text = _raw_text(raw).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    else:
        boxed = extract_boxed(text)
        text = text if boxed is None else boxed
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return text


def _raw_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 72.0 from a numeric CSV/Parquet column is the answer 72
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, dict)) and not _is_messages(value):
        return json.dumps(value, ensure_ascii=False)
    return to_text(value)


def _is_messages(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(m, dict) and "content" in m for m in items)


def final_answer(text: str, tag: str = "answer", fallback: bool = True) -> str | None:
    """The final answer a completion commits to, or None.

    Order: the last `<tag>` block (a `\\boxed{}` inside it wins); then, when `fallback` is on,
    the last `\\boxed{}` anywhere; then the last number anywhere.

    >>> final_answer("<answer>\\nThe total is \\\\boxed{72}.\\n</answer>")
    '72'
    >>> final_answer("8 times 9 makes 72"), final_answer("8 times 9 makes 72", fallback=False)
    ('72', None)
    """
    tagged = extract_answer(text, tag)
    if tagged is not None:
        return extract_boxed(tagged) or tagged
    if not fallback:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def answers_match(predicted: str | None, reference: Any) -> bool:
    """Whether a predicted final answer equals the reference, checked with math-verify.

    math-verify handles LaTeX, units, `$`, percentages and fractions; when it cannot parse one
    side (e.g. `\\$72.00`) the last numbers are compared instead.

    >>> [answers_match(p, "72") for p in ["72", "72.0", r"\\boxed{72}", "$72", "72 dollars", "73"]]
    [True, True, True, True, True, False]
    """
    if predicted is None or not predicted.strip():
        return False
    gold_text = reference_answer(reference)
    if not gold_text:
        return False
    gold, pred = _parse(gold_text), _parse(predicted.strip()[-_MAX_ANSWER_CHARS:])
    if gold and pred:
        timeout = _timeout()
        return bool(verify(list(gold), list(pred), timeout_seconds=timeout))
    return _numbers_equal(parse_number(predicted), parse_number(gold_text))


def _numbers_equal(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    """math-verify's parse, cached: every completion in a group shares one reference."""
    return tuple(parse(text, parsing_timeout=_timeout()))


def _timeout() -> int | None:
    # math-verify enforces timeouts with SIGALRM, which Python allows only in the main thread;
    # the UI (and some trainers) call rewards from worker threads, where we run without one.
    return 5 if threading.current_thread() is threading.main_thread() else None
