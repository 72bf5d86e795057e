"""Example GRPO Box user reward file: copy it, edit the functions, point your run at it.

Use a function from this file in a rubric as `user:<function name>`, for example

    rewards:
      - {name: think_format, weight: 0.5}
      - {name: "user:close_enough", weight: 1.0}
      - {name: "user:short_answer", weight: 0.2, params: {max_chars: 12}}

The contract (checked when the file is loaded, before training starts):
- Every public function (name not starting with `_`) is a reward; name helpers `_like_this`.
- Signature: `def name(prompts, completions, **kwargs)`. The trainer passes everything by
  keyword: `prompts`, `completions`, `completion_ids`, every dataset column as a list (the
  reference answer is always `answer`), `trainer_state`, plus the rubric entry's `params`.
- A completion is a string, or a list of chat messages `[{"role": "assistant", "content": ...}]`.
- Return a list with one score per completion: a finite int/float, or None to skip that
  completion for this function. Exceptions, NaN, wrong lengths stop the run with a message
  naming the function and showing the input that broke it.
- Try it first with the dry run (`python -m grpo_box rewards score ...`), which scores example
  completions with exactly the functions training will use.

The helpers in `grpo_box.rewards.answers` (to_text, final_answer, parse_number, answers_match)
are importable here too; this file stays self-contained so it reads on its own.
"""

import re


def _text(completion):
    """The completion's text, whether it is a plain string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)


def _last_number(text):
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def close_enough(prompts, completions, answer, **kwargs):
    """Partial credit for numeric answers: 1 when exact, falling to 0 at 100% relative error.

    Returns None (skip) for rows whose reference is not a number, so this function can sit in a
    rubric for mixed datasets. Example: reference "72" -> "72" scores 1.0, "36" scores 0.5.
    """
    scores = []
    for completion, reference in zip(completions, answer):
        target, guess = _last_number(str(reference)), _last_number(_text(completion))
        if target is None:
            scores.append(None)
        elif guess is None:
            scores.append(0.0)
        else:
            error = abs(guess - target) / max(abs(target), 1e-9)
            scores.append(max(0.0, 1.0 - error))
    return scores


def short_answer(prompts, completions, max_chars=20, **kwargs):
    """1.0 when the <answer> block holds at most `max_chars` characters, 0.0 when longer or missing.

    `max_chars` comes from the rubric entry's params. Example: "<answer>72</answer>" scores 1.0.
    """
    scores = []
    for completion in completions:
        match = re.search(r"<answer>(.*?)</answer>", _text(completion), re.DOTALL)
        scores.append(1.0 if match and len(match.group(1).strip()) <= max_chars else 0.0)
    return scores
