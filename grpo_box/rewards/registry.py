"""The module-level registry of built-in reward functions, keyed by the name a rubric uses.

Each reward family module decorates its functions with `@register(name, description, params)`;
the rubric builder, the CLI's `rewards list` and the UI's rubric editor all read this one table,
so a name, its one-line description and its parameter defaults are written exactly once. The
registry lives apart from `grpo_box.rewards.__init__` so that family modules can import
`register` without a circular import.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from grpo_box.errors import UserError

RewardFn = Callable[..., list]

# Names a reward call receives from the trainer or the dry run itself (TRL's prompts/completions/
# completion_ids plus trainer_state, log_extra, log_metric), so dataset columns may not use them.
RESERVED_COLUMNS = ("prompt", "prompts", "completion", "completions", "completion_ids",
                    "trainer_state", "log_extra", "log_metric")


class RewardError(UserError, ValueError):
    """A reward problem (unknown name, bad params, broken user file, bad output) with its fix."""


@dataclass(frozen=True)
class RewardInfo:
    name: str
    description: str
    func: RewardFn
    params: dict[str, Any] = field(default_factory=dict)
    checks_answer: bool = False  # a correctness-like reward: the dry run warns when it never pays

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "params": dict(self.params),
                "checks_answer": self.checks_answer}


_REGISTRY: dict[str, RewardInfo] = {}


def register(name: str, description: str, params: dict[str, Any] | None = None,
             checks_answer: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Register a reward under `name`; `params` are its tunable keyword arguments with defaults.

    The defaults must equal the function's own keyword defaults, so the function can also be
    called directly (as in its docstring example) and behave exactly as in a rubric.
    `checks_answer` marks a reward that pays only for right answers (correctness-like).
    """
    params = dict(params or {})

    def decorator(func: RewardFn) -> RewardFn:
        if name in _REGISTRY and not _same_definition(_REGISTRY[name].func, func):
            raise RewardError(f"reward {name!r} is registered twice ({func.__module__})")
        _check_defaults(name, func, params)
        _REGISTRY[name] = RewardInfo(name, description, func, params, checks_answer)
        return func

    return decorator


def _same_definition(old: RewardFn, new: RewardFn) -> bool:
    """True when `new` is `old` re-imported (module reload, or one file imported under two names)."""
    return old.__qualname__ == new.__qualname__ and old.__code__.co_filename == new.__code__.co_filename


def _check_defaults(name: str, func: RewardFn, params: dict[str, Any]) -> None:
    signature = inspect.signature(func)
    for key, default in params.items():
        param = signature.parameters.get(key)
        if param is None or param.default != default:
            raise RewardError(f"reward {name!r}: param {key!r} default {default!r} does not match the function signature")


def unique_names(names: list[str]) -> list[str]:
    """The names a rubric's functions carry in TRL's metrics and samples: a name used again gets
    `_2`, `_3` … so the curves stay apart.

    >>> unique_names(["correctness", "xml_count", "correctness"])
    ['correctness', 'xml_count', 'correctness_2']
    """
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def get_reward(name: str) -> RewardFn:
    """The registered reward function `name` (unbound, defaults as registered).

    An unknown name raises RewardError listing the valid ones.
    """
    return reward_info(name).func


def reward_info(name: str) -> RewardInfo:
    """Name, description, function and param defaults of the registered reward `name`."""
    info = _REGISTRY.get(name)
    if info is None:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RewardError(
            f"unknown reward {name!r}{hint}; valid names: {', '.join(sorted(_REGISTRY))}, "
            f"or user:<function> for a function in your reward file"
        )
    return info


def list_rewards() -> list[dict[str, Any]]:
    """Every registered reward as {name, description, params, checks_answer}, sorted by name."""
    return [_REGISTRY[name].to_dict() for name in sorted(_REGISTRY)]
