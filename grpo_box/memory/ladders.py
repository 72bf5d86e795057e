"""The fit ladders: the values each setting steps down through, one step down of each knob, and
how a change is said.

GENERATION_LADDER, COMPLETION_LADDER and RANK_LADDER are public: the fit search walks them, and
the UI offers them as choices. A knob is the key it lowers with its one step down; a step returns
a new RunConfig (or None at the bottom) and keeps the config valid around it: fewer generations
keep the completions of a step a whole number of groups, a lower lora.r keeps alpha/r (the LoRA scale). A step never
lowers a vLLM share that Unsloth's standby target would replace anyway; the only way to a smaller
share under standby is `_own_share`, which takes it back from Unsloth with the override.
`describe_changes` and `set_flags` say a change in words and as CLI overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..config import RunConfig
from .components import preset_card_gb, standby_sets_share


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any


_TRACKED = ("model.load_in_4bit", "model.vllm_standby_util_override", "model.gpu_memory_utilization",
            "grpo.num_generations", "grpo.per_device_train_batch_size", "grpo.max_completion_length", "lora.r",
            "lora.alpha")
# The values each setting steps down through (public: the UI offers them as choices).
GENERATION_LADDER = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2)
COMPLETION_LADDER = (32768, 24576, 16384, 12288, 8192, 6144, 4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256,
                     192, 128, 96, 64)
RANK_LADDER = (256, 128, 64, 32, 16, 8, 4)
_MIN_UTIL = 0.2


def _get(config: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _next_lower(ladder: tuple[int, ...], value: int) -> int | None:
    lower = [v for v in ladder if v < value]
    return max(lower) if lower else None


def _lower_generations(config: RunConfig) -> RunConfig | None:
    g = config.grpo
    new = _next_lower(GENERATION_LADDER, g.num_generations)
    if new is None:
        return None
    out = config.copy()
    batch = g.per_device_train_batch_size
    if batch >= g.num_generations and batch % g.num_generations == 0:
        out.grpo.per_device_train_batch_size = new * (batch // g.num_generations)
    elif (batch * g.gradient_accumulation_steps) % new:
        out.grpo.per_device_train_batch_size = new
    out.grpo.num_generations = new
    return out


def _lower_completion(config: RunConfig) -> RunConfig | None:
    new = _next_lower(COMPLETION_LADDER, config.grpo.max_completion_length)
    if new is None:
        return None
    out = config.copy()
    out.grpo.max_completion_length = new
    return out


def _lower_util(config: RunConfig) -> RunConfig | None:
    m = config.model
    new = round(m.gpu_memory_utilization - 0.05, 2)
    if not m.fast_inference or new < _MIN_UTIL or standby_sets_share(config):
        return None
    out = config.copy()
    out.model.gpu_memory_utilization = new
    return out


def _own_share(config: RunConfig) -> RunConfig | None:
    """Under standby, take vLLM's share back from Unsloth's target (the override), then lower it."""
    if standby_sets_share(config):
        out = config.copy()
        out.model.vllm_standby_util_override = True
        return out
    return _lower_util(config) if config.model.vllm_standby_util_override else None


def _lower_rank(config: RunConfig) -> RunConfig | None:
    lora = config.lora
    new = _next_lower(RANK_LADDER, lora.r)
    if new is None:
        return None
    out = config.copy()
    out.lora.alpha = max(1, round(lora.alpha * new / lora.r))  # keep alpha/r, the LoRA scale
    out.lora.r = new
    return out


def _to_4bit(config: RunConfig) -> RunConfig | None:
    if config.model.load_in_4bit or not (config.model.fast_inference or preset_card_gb(config.preset)):
        return None
    out = config.copy()
    out.model.load_in_4bit = True
    return out


Knob = tuple[str, Callable[[RunConfig], RunConfig | None]]  # (primary key, one step down)
# What an out-of-memory retry may change, in order: it resumes from a checkpoint, so the LoRA
# shapes (lora.r) and the base weights (4-bit) must stay as they were.
_RETRY_KNOBS: tuple[Knob, ...] = (
    ("grpo.num_generations", _lower_generations),
    ("grpo.max_completion_length", _lower_completion),
    ("model.gpu_memory_utilization", _lower_util),
)
_KNOBS: tuple[Knob, ...] = (*_RETRY_KNOBS, ("lora.r", _lower_rank), ("model.load_in_4bit", _to_4bit),
                            ("model.gpu_memory_utilization", _own_share))


def _changes(old: RunConfig, new: RunConfig) -> list[Change]:
    return [Change(k, _get(old, k), _get(new, k)) for k in _TRACKED if _get(old, k) != _get(new, k)]


def describe_changes(changes: list[Change]) -> str:
    """"lower grpo.num_generations from 8 to 6, grpo.per_device_train_batch_size from 8 to 6"."""
    parts = []
    for c in changes:
        if isinstance(c.new, bool):
            parts.append(f"set {c.key} to {str(c.new).lower()}")
        else:
            verb = "lower" if c.new < c.old else "raise"
            parts.append(f"{verb} {c.key} from {c.old:g} to {c.new:g}")
    return ", ".join(parts)


def set_flags(changes: list[Change]) -> str:
    """The same changes as CLI overrides: "--set grpo.num_generations=6 …"."""
    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else f"{value:g}"

    return " ".join(f"--set {c.key}={text(c.new)}" for c in changes)
