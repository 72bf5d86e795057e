"""Before training: may the run start (`preflight`), how long a step takes on the CPU, and what to
change after running out of memory while the model or vLLM loads (`startup_oom_hint`).

`preflight(config)` is the one check `train`, `demo` and the app use: the verdict on this
machine's card and, when the run does not fit, the setting to lower and to what. Without a GPU
the run is judged against the RAM instead (`ram_verdict`), the message says how long a step will
take on this machine's cores, and it warns when the config was made for a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..catalog import Arch, resolve_arch
from ..config import ConfigError, RunConfig
from ..hardware import ram_gb as machine_ram_gb
from .card import Card, choose_card
from .components import preset_card_gb, standby_sets_share
from .report import estimate_report


@dataclass
class PreflightResult:
    """What `preflight` decided: may the run start, the verdict, and the text to show."""

    proceed: bool
    verdict: str | None  # "fits" | "tight" | "will not fit" (VRAM, or RAM without a GPU); None: nothing judged
    message: str
    card: Card
    report: dict[str, Any] | None = None  # the `estimate_report` behind the verdict
    seconds_per_step: float | None = None  # on the CPU: the rough time of one step (cpu_step_seconds)
    warning: bool = False  # the message warns (e.g. a GPU config about to run on the CPU)
    ram_note: str = ""  # without a GPU: the RAM the run needs, of how much, the verdict and what to lower


def preflight(config: RunConfig, vram_gb: float | None = None, force: bool = False,
              arch: Arch | None = None, ram_gb: float | None = None) -> PreflightResult:
    """Check a run before it starts, against `vram_gb` or else this machine's GPU.

    A run estimated not to fit is refused (proceed False) unless `force`; the message names the
    setting to lower and to what. Without a GPU the run is judged against the RAM (`ram_gb`, else
    this machine's) the same way, and the message says how long a step will take. A model whose
    shape cannot be found is not refused: the estimate is skipped with a warning.
    """
    card = choose_card(config, vram_gb, preset_fallback=False)
    if card.vram_gb is None:
        return _cpu_preflight(config, card, arch, ram_gb, force)
    try:
        report = estimate_report(config, arch=arch, card=card)
    except ConfigError as exc:
        return PreflightResult(True, None, f"memory estimate skipped: {exc}", card)
    judged = report["verdict"]
    message = f"estimated peak {report['total']:.1f} GB ({report['phase']}) on the {card.label}: {judged}"
    if judged != "fits":
        message += f"; to fit: {report['suggestion'] or 'use a smaller model or a larger card'}"
    refused = judged == "will not fit" and not force
    if judged == "will not fit" and force:
        message += " (forced: starting anyway)"
    return PreflightResult(not refused, judged, message, card, report)


# Calibration of cpu_step_seconds: the cpu preset (SmolLM2-135M, 8 completions, prompts up to 160 and
# completions up to 64 tokens) takes about 20-25 s a step on 2 cores (transformers generate + PEFT LoRA
# in float32): 22.5 s x 2 cores / (135e6 params x 8 x 224 tokens). That is a step whose completions run to
# the limit: once the demo model answers in the format (~25 tokens) its steps take 11-13 s, so the
# estimate is an upper bound, and the message says "up to".
CPU_CORE_SECONDS_PER_PARAM_TOKEN = 22.5 * 2 / (134.5e6 * 8 * 224)
RAM_COMFORT_SHARE = 0.5  # a CPU run needing up to this share of the RAM fits; up to RAM_FIT_SHARE is tight
RAM_FIT_SHARE = 0.85


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def cpu_step_seconds(config: RunConfig, arch: Arch, cores: int | None = None) -> float:
    """Rough seconds one GRPO step takes on the CPU: generating and training B·GA completions of up to
    P + C tokens, all proportional to parameters × tokens, calibrated on the cpu preset (above).
    An order of magnitude, not a promise: real prompts and completions are often shorter."""
    g = config.grpo
    tokens = g.per_device_train_batch_size * g.gradient_accumulation_steps * (g.max_prompt_length +
                                                                             g.max_completion_length)
    return CPU_CORE_SECONDS_PER_PARAM_TOKEN * arch.params * tokens / (cores or cpu_cores())


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def ram_verdict(total_gb: float, ram_gb: float) -> str:
    """Fits / tight / will not fit for a CPU run needing `total_gb` of `ram_gb`: the OS, the app and
    the data loader need their share too, so half the RAM fits and more than RAM_FIT_SHARE does not."""
    share = total_gb / ram_gb
    return "fits" if share <= RAM_COMFORT_SHARE else "tight" if share <= RAM_FIT_SHARE else "will not fit"


def _cpu_preflight(config: RunConfig, card: Card, arch: Arch | None, ram_gb: float | None,
                   force: bool) -> PreflightResult:
    """No GPU: judge the run against the RAM, say how long a step will take, and warn loudly when
    the config was made for a GPU (4-bit, vLLM or a GPU preset), which the CPU path runs without."""
    try:
        arch = arch or resolve_arch(config.model.name)
    except (ConfigError, OSError):  # a shape unknown offline: no time or RAM estimate
        arch = None
    seconds = cpu_step_seconds(config, arch) if arch else None
    cores = cpu_cores()
    pace = (f"up to about {_duration(seconds)} per step on {cores} CPU core{'s' if cores != 1 else ''} "
            f"({config.grpo.max_steps} steps: about {_duration(seconds * config.grpo.max_steps)})"
            if seconds is not None else "the time per step could not be estimated (unknown model shape)")
    judged, ram_note = _ram_judgement(config, arch, ram_gb or machine_ram_gb())
    refused = judged == "will not fit" and not force
    if judged == "will not fit" and force:
        ram_note += " (forced: starting anyway)"
    ram_text = f"; RAM: {ram_note}" if ram_note else ""
    m = config.model
    gpu_only = [what for on, what in ((m.load_in_4bit, "4-bit QLoRA"), (m.fast_inference, "vLLM rollouts")) if on]
    preset_card = preset_card_gb(config.preset)
    if not gpu_only and not preset_card:
        return PreflightResult(not refused, judged, f"no GPU detected: training uses the CPU and RAM, {pace}{ram_text}",
                               card, seconds_per_step=seconds, warning=judged not in (None, "fits"), ram_note=ram_note)
    made_for = f"the {config.preset} preset is made for GPUs with {preset_card:g} GB" if preset_card else \
        "this config is made for a GPU"
    without = f" without {' or '.join(gpu_only)}," if gpu_only else ""
    message = (f"warning: no GPU detected, but {made_for}: it will run on the CPU{without} in float32, {pace}"
               f"{ram_text}. To try the flow on this machine use --preset cpu (the bundled 135M model); for real "
               f"training use a machine with an NVIDIA GPU")
    return PreflightResult(not refused, judged, message, card, seconds_per_step=seconds, warning=True,
                           ram_note=ram_note)


def _ram_judgement(config: RunConfig, arch: Arch | None, ram_gb: float | None) -> tuple[str | None, str]:
    """(verdict, note) for a CPU run against `ram_gb`; (None, "") when either is unknown."""
    if arch is None or not ram_gb:
        return None, ""
    total = estimate_report(config, arch=arch, card=Card(None, "no GPU detected"))["total"]
    judged = ram_verdict(total, ram_gb)
    text = f"about {total:.1f} GB of this machine's {ram_gb:g} GB, {judged}"
    if judged != "fits":
        text += (f"; to fit: lower grpo.num_generations (now {config.grpo.num_generations}) or "
                 f"grpo.max_completion_length (now {config.grpo.max_completion_length}), or choose a smaller model")
    return judged, text


def startup_oom_hint(config: RunConfig, vllm_cache: bool) -> str:
    """What to change after running out of memory while loading the model or starting vLLM.

    `vllm_cache`: vLLM found no room for its KV cache after the weights (its share is too small
    for this model and max_seq_length); otherwise an allocation failed outright (too much asked).
    """
    m = config.model
    if standby_sets_share(config):
        share = ("under standby Unsloth picks vLLM's share: set model.vllm_standby_util_override=true to choose "
                 "model.gpu_memory_utilization yourself")
    elif m.fast_inference:
        direction = "raise" if vllm_cache else "lower"
        share = f"{direction} model.gpu_memory_utilization (now {m.gpu_memory_utilization:g})"
    else:
        share = "use load_in_4bit" if not m.load_in_4bit else "free the GPU of other processes"
    return f"{share}, lower model.max_seq_length (now {m.max_seq_length}), or choose a smaller model"
