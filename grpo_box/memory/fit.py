"""The fit search: a config that fits a card (`fit_to_card`), the suggestion shown with a verdict
(`suggest_fix`), and the next smaller setting after an out-of-memory error (`smaller_setting`).

Before training any knob of `ladders._KNOBS` may be lowered: num_generations,
max_completion_length, the vLLM share (under standby only by taking it back from Unsloth with the
override), lora.r and 4-bit; never below the suggestion floors, past which the advice is a smaller
model. After an out-of-memory error only `ladders._RETRY_KNOBS` may change (num_generations,
max_completion_length and a vLLM share that is the config's), since the run resumes from a
checkpoint whose LoRA shapes a different lora.r would not match.
"""

from __future__ import annotations

import math
from typing import Callable

from ..catalog import CATALOG, Arch, resolve_arch
from ..config import RunConfig
from ..validation import validate
from .components import UNSLOTH, Stack, standby_sets_share
from .estimator import estimate, verdict
from .ladders import (
    _KNOBS,
    _RETRY_KNOBS,
    Change,
    _changes,
    _get,
    describe_changes,
    set_flags,
)

# a suggestion below these would train badly; past them the advice is a smaller model
_SUGGEST_FLOORS = {"grpo.num_generations": 4, "grpo.max_completion_length": 128, "lora.r": 8}


def _fits(config: RunConfig, vram_gb: float, arch: Arch | None, stack: Stack) -> bool:
    try:
        validate(config)
    except ValueError:
        return False
    return verdict(estimate(config, arch, vram_gb, stack), vram_gb) == "fits"


def _retained(old: RunConfig, new: RunConfig, key: str) -> float:
    """How much of a setting survives a change (1.0 = untouched); 4-bit counts as half."""
    if key == "model.load_in_4bit":
        return 0.5
    return float(_get(new, key)) / float(_get(old, key))


def fit_to_card(config: RunConfig, vram_gb: float, arch: Arch | None = None,
                stack: Stack = UNSLOTH) -> tuple[RunConfig, list[Change]] | None:
    """A config that fits `vram_gb` by lowering as little as possible, with its changes; None if none found.

    First every knob alone (walking down its ladder until the estimate fits), keeping the knob
    that keeps most of its value; failing that, all knobs one step at a time in turn.
    """
    arch = arch or resolve_arch(config.model.name)
    base = _raise_util_if_needed(config, vram_gb, arch, stack)
    if _fits(base, vram_gb, arch, stack):
        return base, _changes(config, base)
    best: tuple[float, RunConfig] | None = None
    for key, lower in _KNOBS:
        found = _walk(base, key, lower, vram_gb, arch, stack)
        if found is not None and (best is None or _retained(base, found, key) > best[0]):
            best = (_retained(base, found, key), found)
    if best is not None:
        return best[1], _changes(config, best[1])
    combined = _round_robin(base, vram_gb, arch, stack)
    return (combined, _changes(config, combined)) if combined is not None else None


def _raise_util_if_needed(config: RunConfig, vram_gb: float, arch: Arch, stack: Stack) -> RunConfig:
    need = estimate(config, arch, vram_gb, stack).min_gpu_memory_utilization
    m = config.model
    if not m.fast_inference or standby_sets_share(config) or need is None or m.gpu_memory_utilization >= need:
        return config
    out = config.copy()
    out.model.gpu_memory_utilization = min(0.95, math.ceil((need + 0.02) * 20) / 20)
    return out


def _above_floor(config: RunConfig, key: str) -> bool:
    return _get(config, key) >= _SUGGEST_FLOORS.get(key, 0)


def _walk(config: RunConfig, key: str, lower: Callable[[RunConfig], RunConfig | None], vram_gb: float,
          arch: Arch, stack: Stack) -> RunConfig | None:
    current = lower(config)
    while current is not None and _above_floor(current, key):
        if _fits(current, vram_gb, arch, stack):
            return current
        current = lower(current)
    return None


def _round_robin(config: RunConfig, vram_gb: float, arch: Arch, stack: Stack) -> RunConfig | None:
    current, moved = config, True
    while moved:
        moved = False
        for key, lower in _KNOBS:
            step = lower(current)
            if step is None or not _above_floor(step, key) or estimate(step, arch, vram_gb, stack).problems:
                continue  # e.g. a vLLM share too small for the weights never helps
            current, moved = step, True
            if _fits(current, vram_gb, arch, stack):
                return current
    return None


def suggest_fix(config: RunConfig, vram_gb: float, arch: Arch | None = None, stack: Stack = UNSLOTH) -> str:
    """What to lower, and to what, so the estimate fits `vram_gb`; "" when it already fits."""
    arch = arch or resolve_arch(config.model.name)
    if _fits(config, vram_gb, arch, stack):
        return ""
    found = fit_to_card(config, vram_gb, arch, stack)
    if found is not None:
        fixed, changes = found
        total = estimate(fixed, arch, vram_gb, stack).total_gb
        return f"{describe_changes(changes)} (estimate {total:.1f} of {vram_gb:g} GB); to apply: {set_flags(changes)}"
    smaller = _smaller_model_that_fits(config, vram_gb, arch, stack)
    if smaller:
        return f"this model does not fit {vram_gb:g} GB even at the smallest settings tried; choose a smaller model, e.g. --model {smaller}"
    return f"no setting tried fits {vram_gb:g} GB: use a smaller model or a larger card"


def _smaller_model_that_fits(config: RunConfig, vram_gb: float, arch: Arch, stack: Stack) -> str | None:
    for model_id, other in sorted(CATALOG.items(), key=lambda item: -item[1].params):
        if other.params >= arch.params:
            continue
        candidate = config.copy()
        candidate.model.name = model_id
        if _fits(candidate, vram_gb, other, stack):
            return model_id
    return None


def smaller_setting(config: RunConfig, vram_gb: float | None = None, arch: Arch | None = None,
                    stack: Stack = UNSLOTH, phase: str | None = None) -> tuple[RunConfig, str] | None:
    """The next smaller config after an out-of-memory error, with what changed; None when nothing shrinks.

    Tries one step down of each knob in order (num_generations, max_completion_length, then
    gpu_memory_utilization unless Unsloth's standby target replaces it) and keeps the first that
    lowers the phase that ran out (`phase`, "training" or "generation", else the peak). When no
    knob lowers it, the first that lowers the other phase: with vLLM's share fixed the generation
    phase barely moves, while the trainer's side of a rollout (the completions' log-probs) shrinks
    with the group and the completions. lora.r and 4-bit stay: the retry resumes from a checkpoint
    with the same LoRA shapes.
    """
    arch = arch or resolve_arch(config.model.name)
    before = estimate(config, arch, vram_gb, stack)
    candidates = [(c, estimate(c, arch, vram_gb, stack)) for c in (lower(config) for _, lower in _RETRY_KNOBS)
                  if c is not None]
    first = phase or before.phase
    for target in (first, "training" if first == "generation" else "generation"):
        for candidate, est in candidates:
            if est.phases[target] >= before.phases[target] * 0.99:
                continue
            try:
                validate(candidate)
            except ValueError:
                continue
            return candidate, describe_changes(_changes(config, candidate))
    return None
