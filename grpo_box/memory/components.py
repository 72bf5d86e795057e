"""Component arithmetic: the bytes of each part of one GRPO step, one function a part.

Weights (4-bit or not), LoRA (with or without its grads), activations under each gradient
checkpointing mode, the GRPO logits, the 4-bit dequantization workspace, one token's KV cache and
vLLM's runtime, plus the rules that size vLLM's share (Unsloth's standby target, the config's
utilisation) and the card a preset is written for. Each function is one formula of the package
docstring's "Components" list, on a model's shape (`catalog.Arch`) and a RunConfig; `estimator`
adds them up by phase. They live apart from the phase logic so that one formula can be read,
tested and recalibrated on its own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from ..catalog import Arch
from ..config import RunConfig
from ..hardware import GIB

CUDA_CONTEXT_GB = 0.5
VLLM_CONTEXT_GB = 0.5
NF4_BYTES_PER_PARAM = 4.127 / 8
LOGIT_BUFFERS = 2
HIDDEN_BUFFERS = 3
VLLM_PROFILE_TOKENS = 4096


@dataclass(frozen=True)
class Stack:
    """What the training library does that changes memory; UNSLOTH is what GRPO Box runs."""

    name: str
    logit_chunks: int | None = None  # None: one sequence at a time; 1: the whole batch at once
    vllm_shares_weights: bool = True  # False: the colocated vLLM holds its own 16-bit copy


UNSLOTH = Stack("unsloth")
TRL_FA2 = Stack("trl+fa2", logit_chunks=1, vllm_shares_weights=False)


def _gb(n_bytes: float) -> float:
    return n_bytes / GIB


def _dtype_bytes(config: RunConfig, device: str) -> int:
    dtype = (config.model.dtype or "").lower()
    if dtype in ("float32", "fp32"):
        return 4
    if dtype in ("float16", "fp16", "bfloat16", "bf16"):
        return 2
    return 4 if device == "cpu" else 2


def weight_bytes(arch: Arch, load_in_4bit: bool, dtype_bytes: int = 2) -> float:
    if not load_in_4bit:
        return arch.params * dtype_bytes
    linear = arch.linear_params()
    return linear * NF4_BYTES_PER_PARAM + (arch.params - linear) * 2


def lora_params(arch: Arch, config: RunConfig) -> int:
    shapes = arch.projection_shapes()
    targets = set(config.lora.target_modules)
    if "all-linear" in targets:
        targets = set(shapes)
    per_layer = sum(config.lora.r * (a + b) for name, (a, b) in shapes.items() if name in targets)
    return per_layer * arch.n_layers


def _lora_bytes(arch: Arch, config: RunConfig, with_grads: bool) -> float:
    states = 2 if "8bit" in config.grpo.optim.lower() else 8
    return lora_params(arch, config) * (4 + states + (4 if with_grads else 0))


def _checkpointing(value: Any, device: str) -> str:
    if isinstance(value, str):
        value = value.strip().lower()
        if value == "unsloth":
            return "standard" if device == "cpu" else "offload"
        value = value not in ("", "false", "none", "no", "off", "0")
    return "standard" if value else "off"


def _activation_bytes(arch: Arch, config: RunConfig, device: str, act: int) -> float:
    g = config.grpo
    tokens = g.per_device_train_batch_size * (g.max_prompt_length + g.max_completion_length)
    h = arch.hidden_size
    layer = (2 * h + 2 * arch.q_dim + 2 * arch.kv_dim + 2 * arch.intermediate_size) * tokens * act
    hidden = h * tokens * act
    mode = _checkpointing(config.lora.gradient_checkpointing, device)
    stored = {"offload": layer, "standard": arch.n_layers * hidden + layer, "off": arch.n_layers * layer}[mode]
    return stored + HIDDEN_BUFFERS * hidden


def _logit_bytes(arch: Arch, config: RunConfig, stack: Stack, act: int) -> float:
    g = config.grpo
    batch = g.per_device_train_batch_size
    chunks = min(stack.logit_chunks or batch, batch)
    reference = batch * g.max_completion_length * 4 if g.beta > 0 else 0  # kept fp32 reference log-probs
    return LOGIT_BUFFERS * act * math.ceil(batch / chunks) * g.max_completion_length * arch.vocab_size + reference


def _workspace_bytes(arch: Arch, config: RunConfig) -> float:
    if not config.model.load_in_4bit:
        return 0.0
    return 2 * max(a * b for a, b in arch.projection_shapes().values()) * 2


def kv_bytes_per_token(arch: Arch, act: int = 2) -> float:
    return 2 * arch.n_layers * arch.kv_dim * act


def _vllm_runtime_bytes(arch: Arch) -> float:
    graphs = min(max(172 * arch.hidden_size * arch.n_layers * 4, 0.15 * GIB), 1.0 * GIB)
    profile = VLLM_PROFILE_TOKENS * (2 * arch.hidden_size + 2 * arch.intermediate_size) * 2
    return graphs + profile


def unsloth_standby_util(vram_gb: float) -> float:
    """The gpu_memory_utilization unsloth_zoo 2026.10 forces under standby (vLLM >= 0.11).

    From `unsloth_zoo.vllm_utils.load_vllm`: a tier by a tenth of the card's GB, times 0.95.
    """
    tenth = vram_gb * 0.1
    for floor, util in ((4.0, 0.925), (2.5, 0.9), (2.0, 0.825), (1.4, 0.8), (1.0, 0.775)):
        if tenth >= floor:
            return round(util * 0.95, 4)
    return round(0.75 * 0.95, 4)


def standby_sets_share(config: RunConfig) -> bool:
    """True when Unsloth will replace model.gpu_memory_utilization by its standby target."""
    m = config.model
    return m.fast_inference and m.vllm_standby and not m.vllm_standby_util_override


def vllm_utilization(config: RunConfig, vram_gb: float | None) -> float:
    """The share of the card vLLM will take: Unsloth's standby target on a known card, else the config's."""
    if vram_gb and standby_sets_share(config):
        return unsloth_standby_util(vram_gb)
    return config.model.gpu_memory_utilization


@functools.lru_cache(maxsize=None)
def preset_card_gb(preset: str) -> float | None:
    """The card a preset is written for (its `vram_gb`), or None for cpu / unknown presets."""
    from ..presets import list_presets

    cards = {p.name: p.vram_gb for p in list_presets()}
    card = cards.get(preset)
    return card if card else None
