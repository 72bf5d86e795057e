"""Turn a rubric (a list of RewardSpec) into TRL-ready reward callables and their weights.

TRL's GRPOTrainer takes `reward_funcs` and `GRPOConfig.reward_weights` and logs each function as
`rewards/<__name__>/mean`. Every callable built here has its params bound, carries the rubric
name as `__name__`, and checks its own output: one finite number (or None) per completion. A bad
reward therefore fails on the first batch with a RewardError naming the function and showing a
shortened example input, instead of a tensor error deep inside the trainer or a silent NaN.

Given the run's data template, `apply_template` fills the tag params (`think_tag`, `answer_tag`,
`tag`) the rubric leaves unset from that template, so a `<reasoning>` prompt gets rewards that
look for `<reasoning>`; a tag-checking reward under the tagless `boxed` template is an error.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from grpo_box.config import USER_PREFIX, RewardSpec, reward_spec
from grpo_box.prompts import get_template
from grpo_box.rewards.answers import to_text
from grpo_box.rewards.guard import DEFAULT_REWARD_TIMEOUT, RewardTimeout, UserExit, call_limited
from grpo_box.rewards.builtin import RewardError, reward_info
from grpo_box.rewards.registry import unique_names
from grpo_box.rewards.user import load_user_rewards


def with_reply_prefill(completions: list[Any], prefill: str) -> list[Any]:
    """Completions with the prompt's reply prefill put back in front (text or chat form).

    TRL's completions hold only what the model generated; a prefilled `<think>` is part of the
    prompt, and the format rewards must see the whole reply.

    >>> with_reply_prefill(["a", [{"role": "assistant", "content": "b"}]], "<think>\\n")
    ['<think>\\na', [{'role': 'assistant', 'content': '<think>\\nb'}]]
    """
    if not prefill:
        return completions
    out: list[Any] = []
    for c in completions:
        if isinstance(c, str):
            out.append(prefill + c)
        else:
            first, *rest = c
            out.append([{**first, "content": prefill + str(first.get("content") or "")}, *rest])
    return out


class RewardFunction:
    """A reward with bound params whose output is validated; called exactly like a TRL reward.

    A class rather than a closure so that it pickles (for registered rewards) and exposes
    `name`, `params` and the wrapped `func` to the UI and the dry run.
    """

    def __init__(self, name: str, func: Callable, params: dict[str, Any], source: str | None = None,
                 checks_answer: bool = False, timeout: float | None = DEFAULT_REWARD_TIMEOUT):
        self.__name__ = name
        self.name = name
        self.source = source  # the user reward file, named in error messages
        self.func = func
        self.params = dict(params)
        self.checks_answer = checks_answer  # correctness-like: pays only for right answers
        self.timeout = timeout  # seconds per call (RunConfig.reward_timeout); None: no limit
        self.reply_prefill = ""  # training sets the run's prefill: TRL's completions start after it
        self.__doc__ = func.__doc__

    def __call__(
        self, prompts: list[Any], completions: list[Any], completion_ids: Any = None, **columns: Any
    ) -> list[float | None]:
        kwargs = {**columns, **self.params}  # the rubric's params win over a same-named dataset column
        if self.reply_prefill:
            completions = with_reply_prefill(completions, self.reply_prefill)

        def call() -> Any:
            return self.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)

        try:
            out = call_limited(call, self.timeout)
        except RewardTimeout:
            raise RewardError(
                f"reward {self.label} did not return within reward_timeout={self.timeout:g} s and was stopped; "
                f"make it faster (or find the endless loop), or raise reward_timeout (--set reward_timeout=SECONDS)"
                f"\n{example_input(prompts, completions, 0)}"
            ) from None
        except UserExit as exc:
            raise RewardError(
                f"reward {self.label} {exc}; a reward function must return its scores (raise an exception "
                f"to report a problem)\n{example_input(prompts, completions, 0)}"
            ) from exc.original
        except Exception as exc:
            raise RewardError(
                f"reward {self.label} raised {type(exc).__name__}: {exc}\n{example_input(prompts, completions, 0)}"
            ) from exc
        return check_output(self.name, out, prompts, completions, self.source)

    @property
    def label(self) -> str:
        return reward_label(self.name, self.source)

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r}, params={self.params!r})"


def reward_label(name: str, source: str | None = None) -> str:
    """How messages name a reward: `'correctness'` or `'user:mine' (from my_rewards.py)`."""
    return f"{name!r} (from {source})" if source else repr(name)


def check_output(name: str, out: Any, prompts: list[Any], completions: list[Any],
                 source: str | None = None) -> list[float | None]:
    """Validate one reward call's output and return it as plain floats/None, or raise RewardError."""
    label = reward_label(name, source)
    n = len(completions)
    if hasattr(out, "tolist") and not isinstance(out, list):
        out = out.tolist()  # numpy arrays and torch tensors
    if isinstance(out, tuple):
        out = list(out)
    if not isinstance(out, list):
        raise RewardError(
            f"reward {label} returned {type(out).__name__}; it must return a list of {n} numbers "
            f"(one per completion, None to skip one)\n{example_input(prompts, completions, 0)}"
        )
    if len(out) != n:
        raise RewardError(
            f"reward {label} returned {len(out)} scores for {n} completions; return exactly one per completion\n"
            f"{example_input(prompts, completions, 0)}"
        )
    return [_checked_score(label, value, i, prompts, completions) for i, value in enumerate(out)]


def _checked_score(label: str, value: Any, i: int, prompts: list[Any], completions: list[Any]) -> float | None:
    if value is None:
        return None
    if not isinstance(value, numbers.Real):
        raise RewardError(
            f"reward {label} returned {value!r:.80} ({type(value).__name__}) for completion {i}; "
            f"each score must be a number or None\n{example_input(prompts, completions, i)}"
        )
    score = float(value)
    if not math.isfinite(score):
        raise RewardError(
            f"reward {label} returned {score} for completion {i}; scores must be finite "
            f"(return None to skip a completion)\n{example_input(prompts, completions, i)}"
        )
    return score


def shorten(text: str, limit: int = 160) -> str:
    """One-line preview keeping both ends (the answer is usually at the end)."""
    flat = text.replace("\n", "\\n")
    if len(flat) <= limit:
        return flat
    head = limit * 2 // 3
    return f"{flat[:head]} … {flat[-(limit - head):]}"


def example_input(prompts: Any, completions: Any, i: int) -> str:
    """A short rendering of the i-th prompt and completion, for error messages."""
    try:
        prompt = to_text(prompts[i], role="user") if prompts is not None else ""
        completion = to_text(completions[i])
    except (IndexError, TypeError, KeyError):
        return "  (no example input available)"
    return f"  example input (completion {i}):\n    prompt:     {shorten(prompt)}\n    completion: {shorten(completion)}"


def build_rubric(
    specs: list[RewardSpec | dict | str], user_file: str | None = None, template: str | None = None,
    timeout: float | None = DEFAULT_REWARD_TIMEOUT,
) -> tuple[list[RewardFunction], list[float]]:
    """Resolve rubric specs into (reward callables, weights) for GRPOTrainer / GRPOConfig.reward_weights.

    Names are registered rewards or `user:<function>` from `user_file`. Params are checked
    against each reward's defaults. A name used twice gets `_2`, `_3` … so TRL's metrics stay apart.
    With `template` (the run's `data.template`), unset tag params come from it (`apply_template`).
    A user function marks itself correctness-like with the attribute `checks_answer = True`.
    `timeout` (the run's `reward_timeout`) limits each call, and the user file's import (rewards.guard).
    """
    specs = apply_template(specs or [], template) if template else [as_spec(s, i) for i, s in enumerate(specs or [])]
    if not specs:
        raise RewardError("the rubric is empty: add at least one reward, e.g. {name: correctness, weight: 1.0}")
    user_funcs: dict[str, Callable] | None = None
    funcs, weights = [], []
    for spec, name in zip(specs, unique_names([spec.name for spec in specs])):
        if spec.name.startswith(USER_PREFIX):
            if user_funcs is None:
                user_funcs = _load_user(spec.name, user_file, timeout)
            func, params, source = _user_reward(spec, user_funcs, user_file), dict(spec.params), user_file
            checks_answer = getattr(func, "checks_answer", False) is True
        else:
            (func, params), source = _builtin_reward(spec), None
            checks_answer = reward_info(spec.name).checks_answer
        funcs.append(RewardFunction(name, func, params, source, checks_answer, timeout))
        weights.append(_weight(spec))
    return funcs, weights


def apply_template(specs: list[RewardSpec | dict | str], template: str) -> list[RewardSpec]:
    """The rubric with each built-in reward's unset tag params taken from the data template.

    `think_tag` and `answer_tag` get the template's tags and `tag` (where correctness reads the
    answer) its answer tag; params the rubric sets explicitly are kept. The `boxed` template has
    no tags: a reward that checks them is refused unless the rubric names its tags, and one that
    reads the answer tag must fall back to `\\boxed{}` (`fallback: true`).

    >>> [s.params for s in apply_template(["think_format", {"name": "correctness", "params": {"tag": "final"}}],
    ...                                   "reasoning")]
    [{'think_tag': 'reasoning', 'answer_tag': 'answer'}, {'tag': 'final'}]
    """
    chosen = get_template(template)
    tags = {"think_tag": chosen.think_tag, "answer_tag": chosen.answer_tag, "tag": chosen.answer_tag}
    out = []
    for i, raw in enumerate(specs):
        spec = as_spec(raw, i)
        if spec.name.startswith(USER_PREFIX) or not isinstance(spec.params, dict):
            out.append(spec)  # user params are the user's; a bad params value is reported by build_rubric
            continue
        defaults = reward_info(spec.name).params
        params = dict(spec.params)
        for key in (k for k in tags if k in defaults and k not in params):
            if tags[key] is not None:
                params[key] = tags[key]
            else:
                _check_tagless(spec, key, defaults, template)
        out.append(RewardSpec(spec.name, spec.weight, params))
    return out


def _check_tagless(spec: RewardSpec, key: str, defaults: dict[str, Any], template: str) -> None:
    """Refuse a reward that would look for tags a tagless template (boxed) never asks for."""
    if key == "tag":
        if spec.params.get("fallback", defaults.get("fallback", True)):
            return  # the answer is read from the last \\boxed{}
        raise RewardError(
            f"reward {spec.name!r} reads the answer from <answer> tags only (fallback: false), but "
            f"data.template={template!r} asks for \\boxed{{}} without tags: set its params to "
            "{fallback: true}, or set tag explicitly"
        )
    raise RewardError(
        f"reward {spec.name!r} checks <think>/<answer> tags, but data.template={template!r} asks for "
        "\\boxed{} without tags: use boxed_format for the format instead, choose the think or reasoning "
        "template, or set its think_tag and answer_tag params explicitly"
    )


def as_spec(raw: RewardSpec | dict | str, index: int = 0) -> RewardSpec:
    """A rubric entry as a RewardSpec (`config.reward_spec`, the one parser), errors as RewardError."""
    return reward_spec(raw, index, error=RewardError)


def _weight(spec: RewardSpec) -> float:
    w = spec.weight
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(float(w)):
        raise RewardError(f"reward {spec.name!r}: weight must be a finite number, got {w!r}")
    return float(w)


def _builtin_reward(spec: RewardSpec) -> tuple[Callable, dict[str, Any]]:
    info = reward_info(spec.name)
    params = {**info.params, **_checked_params(spec, info.params)}
    try:  # an empty call validates param values (units, ranges) before training starts
        info.func(prompts=[], completions=[], completion_ids=[], answer=[], **params)
    except ValueError as exc:
        raise RewardError(f"reward {spec.name!r}: bad params {spec.params}: {exc}") from exc
    return info.func, params


def check_builtin(spec: RewardSpec) -> None:
    """Raise RewardError when a registered reward's params are unknown, of the wrong kind or out of
    range: the rubric build's own check, for the app's rubric editor (only our own code runs)."""
    _builtin_reward(spec)


def _checked_params(spec: RewardSpec, defaults: dict[str, Any]) -> dict[str, Any]:
    params = spec.params or {}
    if not isinstance(params, dict):
        raise RewardError(f"reward {spec.name!r}: params must be a mapping, got {params!r}")
    for key, value in params.items():
        if key not in defaults:
            valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
            raise RewardError(f"reward {spec.name!r} has no param {key!r}; its params (with defaults): {valid}")
        if not _same_kind(value, defaults[key]):
            raise RewardError(
                f"reward {spec.name!r}: param {key}={value!r} should be a {type(defaults[key]).__name__} "
                f"like the default {defaults[key]!r}"
            )
    return params


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, numbers.Real):
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _load_user(name: str, user_file: str | None, timeout: float | None) -> dict[str, Callable]:
    if not user_file:
        raise RewardError(f"reward {name!r} refers to a user function, but no user reward file was given")
    return load_user_rewards(user_file, timeout=timeout)


def _user_reward(spec: RewardSpec, user_funcs: dict[str, Callable], user_file: str | None) -> Callable:
    func_name = spec.name[len(USER_PREFIX):]
    if func_name not in user_funcs:
        raise RewardError(
            f"reward {spec.name!r}: no public function {func_name!r} in {user_file}; "
            f"it defines: {', '.join(sorted(user_funcs))}"
        )
    return user_funcs[func_name]
