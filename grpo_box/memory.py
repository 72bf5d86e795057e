"""VRAM estimate for a GRPO run: will this config fit this card, and what to lower if not.

Before training, Setup shows an estimate so the user learns that a choice does not fit before a
model download and a crash. `preflight(config)` is the one check `train`, `demo` and the app's
memory gauge use: the verdict on this machine's card and, when it does not fit, the setting to
lower and to what. The estimate is arithmetic on the model's shape (`grpo_box.catalog`) and the
RunConfig, calibrated against Unsloth's published GRPO figures (see "Calibration") and meant to
be right within about ±25%, not to the megabyte.

Units: "GB" means GiB (2**30 bytes), as torch and nvidia-smi report; an "8 GB" card is ~8 GiB.
Notation: h hidden size, q = heads·head_dim, kv = kv_heads·head_dim, i MLP width, V vocabulary,
n layers, B = grpo.per_device_train_batch_size (completions per step), GA its accumulation steps,
P/C = max prompt/completion length, L = P + C, r = lora.r, a = activation bytes (2 for bf16 on a
GPU; 4 on CPU, where the dtype is left to the library and the bundled model runs in float32).

Components (bytes):
- cuda_context: 0.5 GB for the CUDA context and torch kernels, +0.5 GB when vLLM's kernels load
  into the same process (fast_inference). 0 on CPU.
- weights: 4-bit: linear projections in NF4 with double-quantized absmax (4.127 bits, 0.516 B per
  parameter); embeddings, LM head and norms stay 16-bit. Otherwise every parameter at a bytes.
- lora: Σ over target modules of r·(in + out)·n parameters, kept in fp32: 4 B weights + 4 B grads
  + optimizer states (2 B with an "8bit" optim, else 8 B for Adam's two fp32 moments). Between
  steps the grads are freed, so the generation phase counts 4 B + states only.
- activations, T = B·L tokens per step; one layer keeps (2h + 2q + 2kv + 2i)·T·a: the inputs the
  LoRA matrices need (norm outputs, attention output), FlashAttention's q/k/v (and its output),
  SwiGLU's gate/up (the down-projection input is recomputed). No L² term: FlashAttention/SDPA.
  Plus 3 hidden-state buffers h·T·a (current layer in/out, the final hidden states for the loss).
    gradient_checkpointing "unsloth" (offloaded): one layer on the GPU, layer inputs sit in RAM;
    True (standard): n·h·T·a checkpoints + one layer;  False: all n layers.
  On CPU everything is in RAM, so "unsloth" counts like True.
- logits: the GRPO loss needs the completion logits and their log-softmax, 2 buffers × a ×
  (B / chunks)·C·V. Unsloth computes them one sequence at a time (chunks = B); TRL without
  chunking materialises the whole batch (chunks = 1, `Stack.logit_chunks`). With grpo.beta > 0
  the reference model is the base with the LoRA switched off (no second copy); its log-probs are
  computed chunked in the same way before the loss, so only the kept per-token log-probs of the
  batch, B·C·4 B, are added.
- workspace (4-bit only): Unsloth dequantizes one projection at a time into a 16-bit buffer;
  2 × the largest projection.
- vLLM (fast_inference): its share is S = u × card, u the vLLM utilisation (see "Standby"), on a
  card given or assumed. On a detected card Unsloth's own rule applies: u × the memory free when
  vLLM loads (`unsloth_zoo.vllm_utils.approximate_vllm_memory_usage`: `gpu_memory_utilization *
  free_memory`), i.e. the free memory read now less the training process's CUDA context; a desktop
  whose display holds 0.5-1 GB gets a smaller KV cache than u × card, and when it cannot hold one
  model.max_seq_length sequence Unsloth cuts vLLM's context (`_fit_max_seq_length_to_kv_cache`).
  The estimate then also must fit the free memory, not only the card.
  Inside it sit the weights (Unsloth: the same tensors the trainer uses; TRL's colocated vLLM
  loads its own 16-bit copy, `Stack.vllm_shares_weights`), a runtime part (CUDA graphs:
  172·h·n·4 B clamped to 0.15-1 GB, unsloth_zoo's own rule, plus a 4096-token profiling pass,
  4096·(2h + 2i)·2 B) and the KV cache, which takes the rest; one token's KV is 2·n·kv·2 B. With
  no card known, S is sized to hold one generation batch (B·GA sequences of model.max_seq_length).
  Without fast_inference, HF generate's KV cache for B·GA sequences of L tokens is counted.

Standby (`model.vllm_standby`): vLLM's KV cache is released while the trainer steps; without it
the whole share stays allocated. Under standby unsloth_zoo 2026.10 (vLLM >= 0.11) replaces
gpu_memory_utilization by its own target for the card, 0.95 × 0.75 … 0.925 by card size
(`unsloth_standby_util`: 0.71 under 10 GB, 0.74 under 14, 0.76 under 20, 0.78 under 25, 0.86
under 40, else 0.88), unless UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE=1. GRPO Box keeps that rule (it
sets the variable only for `model.vllm_standby_util_override: true`), so the estimate uses the
target on a known card, reports "configured u replaced", and neither suggestions nor auto-fit
lower a share that Unsloth would replace anyway.

Phases: generation (vLLM share or HF KV cache, weights, LoRA weights + optimizer states) and
training (weights, vLLM's resident part, LoRA with grads, activations, logits, workspace). The
estimate is the larger phase; `phase_parts` lists both, `breakdown` the peak phase's parts.

Calibration (tests/test_memory.py). Published totals, each within ±25%: GRPO on Qwen2.5-1.5B in
5-7 GB, Llama-3.1-8B / Qwen2.5-7B in ~15 GB (a Colab T4), Llama-3.1-8B at 20K context with 8
generations in 54.3 GB with Unsloth and 510.8 GB with TRL + FlashAttention-2. A vLLM share is a
fraction of the card whatever the model, so the T4 totals check the share arithmetic more than
the model; model-dependent checks pin the rest: the weights (Llama-3.1-8B: the 5.7 GB of its
bnb-4bit checkpoint, the blog's 16 GB in bf16), the 20K blog's components (training 42 vs 414 GB,
GRPO logits 9.8 vs 78.3 GB, 2.5 GB of KV for one 20K sequence), a smaller model landing far
outside the 8B cases, and the bundled model's real parameter bytes and LoRA size.

Verdict on a card: fits ≤ 90%, tight ≤ 100%, else "will not fit" (also when the vLLM share
cannot hold the weights plus one max_seq_length sequence). Fixes: before training
(`fit_to_card`, `suggest_fix`) any of num_generations, max_completion_length, the vLLM share
(under standby only by taking it back from Unsloth with the override), lora.r and 4-bit may be
lowered; after an out-of-memory error (`smaller_setting`, auto-fit) only num_generations,
max_completion_length and a vLLM share that is the config's, since the run resumes from a
checkpoint whose LoRA shapes a different lora.r would not match.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .catalog import CATALOG, Arch, resolve_arch
from .config import ConfigError, RunConfig
from .validation import validate

GIB = 1024**3
CUDA_CONTEXT_GB = 0.5
VLLM_CONTEXT_GB = 0.5
NF4_BYTES_PER_PARAM = 4.127 / 8
LOGIT_BUFFERS = 2
HIDDEN_BUFFERS = 3
VLLM_PROFILE_TOKENS = 4096
FIT_SHARE = 0.90


@dataclass(frozen=True)
class Stack:
    """What the training library does that changes memory; UNSLOTH is what GRPO Box runs."""

    name: str
    logit_chunks: int | None = None  # None: one sequence at a time; 1: the whole batch at once
    vllm_shares_weights: bool = True  # False: the colocated vLLM holds its own 16-bit copy


UNSLOTH = Stack("unsloth")
TRL_FA2 = Stack("trl+fa2", logit_chunks=1, vllm_shares_weights=False)


@dataclass
class MemoryEstimate:
    model: str
    device: str  # "gpu" | "cpu" (then the total is RAM)
    total_gb: float
    breakdown: dict[str, float]  # parts of the peak phase, GB; they sum to total_gb
    phase: str  # "training" | "generation": which phase is the peak
    phases: dict[str, float]
    card_gb: float | None = None  # card the vLLM share was sized on
    free_gb: float | None = None  # memory free on that card now (detected cards): the share's base
    vllm_share_gb: float | None = None
    vllm_util: float | None = None  # the utilisation vLLM will run with (Unsloth's standby target or the config's)
    standby_target: bool = False  # True: Unsloth's standby target replaces model.gpu_memory_utilization
    standby_frees_gb: float | None = None  # KV cache standby releases while training
    min_gpu_memory_utilization: float | None = None  # least share holding weights + one sequence
    phase_parts: dict[str, dict[str, float]] = field(default_factory=dict)  # both phases' parts, GB
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each one makes the verdict "will not fit"


# ---------------------------------------------------------------------------------------------
# components


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
    from .presets import list_presets

    cards = {p.name: p.vram_gb for p in list_presets()}
    card = cards.get(preset)
    return card if card else None


# ---------------------------------------------------------------------------------------------
# estimate


@dataclass
class _Parts:
    """Byte sizes shared by both phases."""

    ctx: float
    weights: float
    lora_train: float
    lora_idle: float


def estimate(config: RunConfig, arch: Arch | None = None, vram_gb: float | None = None,
             stack: Stack = UNSLOTH, free_gb: float | None = None) -> MemoryEstimate:
    """Peak memory of one GRPO step for `config`; `vram_gb` sizes the vLLM share (default: the preset's card);
    `free_gb`, the memory free on that card now, makes the share Unsloth's u × free (see the module docstring)."""
    arch = arch or resolve_arch(config.model.name)
    card = vram_gb if vram_gb else preset_card_gb(config.preset)
    device = "gpu" if (card or config.model.load_in_4bit or config.model.fast_inference) else "cpu"
    act = _dtype_bytes(config, device)
    ctx = 0.0 if device == "cpu" else (CUDA_CONTEXT_GB + (VLLM_CONTEXT_GB if config.model.fast_inference else 0.0)) * GIB
    parts = _Parts(
        ctx=ctx,
        weights=weight_bytes(arch, config.model.load_in_4bit, act),
        lora_train=_lora_bytes(arch, config, with_grads=True),
        lora_idle=_lora_bytes(arch, config, with_grads=False),
    )
    training = {
        "cuda_context": parts.ctx,
        "weights": parts.weights,
        "lora": parts.lora_train,
        "activations": _activation_bytes(arch, config, device, act),
        "logits": _logit_bytes(arch, config, stack, act),
        "workspace": _workspace_bytes(arch, config) if device == "gpu" else 0.0,
    }
    est = MemoryEstimate(config.model.name, device, 0.0, {}, "training", {}, card_gb=card,
                         free_gb=free_gb if card and free_gb is not None and device == "gpu" else None)
    if config.model.fast_inference and device == "gpu":
        generation = _add_vllm(arch, config, stack, parts, training, est)
    else:
        generation = _hf_generation(arch, config, parts, act)
    if device == "cpu":
        est.notes.append("no GPU: this is RAM (float32 weights and activations unless model.dtype says otherwise)")
    _finish(est, training, generation)
    _check_free(est)
    return est


def vllm_base_gb(card_gb: float, free_gb: float | None) -> float:
    """What Unsloth multiplies gpu_memory_utilization by: the card's free memory when vLLM loads (the
    free memory now, less the training process's own CUDA context), else the whole card."""
    if free_gb is None:
        return card_gb
    return max(min(free_gb, card_gb) - CUDA_CONTEXT_GB, 0.0)


def _check_free(est: MemoryEstimate) -> None:
    """On a card others already use, the run must fit what is free, not the card."""
    if est.free_gb is None or est.card_gb is None:
        return
    others = est.card_gb - est.free_gb
    if est.total_gb > est.free_gb:
        est.problems.append(
            f"the estimate ({est.total_gb:.1f} GB) is more than the {est.free_gb:.1f} GB free on this card now "
            f"(other programs hold {others:.1f} GB): close them, or lower the settings")


def _hf_generation(arch: Arch, config: RunConfig, parts: _Parts, act: int) -> dict[str, float]:
    g = config.grpo
    seqs = g.per_device_train_batch_size * g.gradient_accumulation_steps
    kv = kv_bytes_per_token(arch, act) * seqs * (g.max_prompt_length + g.max_completion_length)
    return {"cuda_context": parts.ctx, "weights": parts.weights, "lora": parts.lora_idle, "kv_cache": kv}


def _add_vllm(arch: Arch, config: RunConfig, stack: Stack, parts: _Parts, training: dict[str, float],
              est: MemoryEstimate) -> dict[str, float]:
    """Fill in vLLM's share: returns the generation phase and adds vLLM's resident part to training."""
    m, g = config.model, config.grpo
    vllm_weights = parts.weights if stack.vllm_shares_weights else arch.params * 2
    runtime = _vllm_runtime_bytes(arch)
    per_seq = kv_bytes_per_token(arch) * m.max_seq_length
    seqs = g.per_device_train_batch_size * g.gradient_accumulation_steps
    if est.card_gb:
        est.vllm_util = vllm_utilization(config, est.card_gb)
        est.standby_target = standby_sets_share(config)
        share = est.vllm_util * vllm_base_gb(est.card_gb, est.free_gb) * GIB
        if est.free_gb is not None and est.card_gb - est.free_gb > 0.25:
            est.notes.append(
                f"other programs hold {est.card_gb - est.free_gb:.1f} GB of this card: Unsloth gives vLLM "
                f"{est.vllm_util:g} of the free memory ({_gb(share):.2f} GB), not of the card")
        base = max(vllm_base_gb(est.card_gb, est.free_gb), 0.01)
        est.min_gpu_memory_utilization = round((vllm_weights + runtime + per_seq) / (base * GIB), 3)
    else:
        share = vllm_weights + runtime + per_seq * seqs
        est.notes.append("no card given: vLLM's share is sized to hold one generation batch")
    kv = max(share - vllm_weights - runtime, 0.0)
    est.vllm_share_gb = _gb(share)
    _check_kv(est, config, kv, per_seq, seqs)
    copy = {} if stack.vllm_shares_weights else {"vllm_weights_copy": vllm_weights}
    training.update(copy)
    training["vllm_runtime"] = runtime
    if m.vllm_standby:
        est.standby_frees_gb = _gb(kv)
    else:
        training["kv_cache"] = kv
    generation = {"cuda_context": parts.ctx, "weights": parts.weights, **copy, "vllm_runtime": runtime,
                  "kv_cache": kv, "lora": parts.lora_idle}
    return generation


def unsloth_context_tokens(kv_bytes: float, per_token: float) -> int:
    """The context Unsloth leaves vLLM for a KV cache of `kv_bytes` (unsloth_zoo: 95% of the tokens it
    holds, rounded down to 256; `_fit_max_seq_length_to_kv_cache` cuts max_seq_length to it)."""
    return int(0.95 * kv_bytes / per_token) // 256 * 256 if per_token > 0 else 0


def _check_kv(est: MemoryEstimate, config: RunConfig, kv: float, per_seq: float, seqs: int) -> None:
    m = config.model
    base = f"the free {est.free_gb:g} GB" if est.free_gb is not None else f"{est.card_gb or 0:g} GB"
    tokens = unsloth_context_tokens(kv, per_seq / m.max_seq_length)
    if kv < per_seq:
        est.problems.append(
            f"vLLM's share ({est.vllm_util:g} × {base}) leaves {_gb(kv):.2f} GB of KV cache, "
            f"less than one {m.max_seq_length}-token sequence needs ({_gb(per_seq):.2f} GB; Unsloth would cut "
            f"vLLM's context to {max(tokens, 256)} tokens): {_kv_fix(est, config)}"
        )
    elif est.card_gb and tokens < m.max_seq_length:
        est.notes.append(
            f"Unsloth will cut vLLM's context to {tokens} tokens (model.max_seq_length is {m.max_seq_length}): "
            f"longer prompt + completion pairs fail; {_kv_fix(est, config)}")
    elif kv < per_seq * seqs:
        est.notes.append(
            f"the KV cache holds {int(kv // per_seq)} of the {seqs} sequences of a generation batch at once: "
            "rollouts run in waves (slower, not an error)"
        )
    if est.standby_target and abs(est.vllm_util - m.gpu_memory_utilization) > 0.005:
        est.notes.append(
            f"under standby Unsloth gives vLLM {est.vllm_util:g} of this card, leaving the trainer room; to run "
            f"with model.gpu_memory_utilization={m.gpu_memory_utilization:g} instead, set "
            "model.vllm_standby_util_override=true"
        )


def _kv_fix(est: MemoryEstimate, config: RunConfig) -> str:
    need = f"{est.min_gpu_memory_utilization:.2f}"
    if est.standby_target:
        return (f"lower model.max_seq_length, or set model.vllm_standby_util_override=true with "
                f"model.gpu_memory_utilization of at least {need}")
    return f"raise model.gpu_memory_utilization to at least {need} or lower model.max_seq_length"


def _finish(est: MemoryEstimate, training: dict[str, float], generation: dict[str, float]) -> None:
    totals = {"training": sum(training.values()), "generation": sum(generation.values())}
    est.phase = "training" if totals["training"] >= totals["generation"] else "generation"
    peak = training if est.phase == "training" else generation
    est.breakdown = {key: _gb(value) for key, value in peak.items() if value > 0}
    est.phase_parts = {name: {key: _gb(value) for key, value in parts.items() if value > 0}
                       for name, parts in (("generation", generation), ("training", training))}
    est.phases = {key: _gb(value) for key, value in totals.items()}
    est.total_gb = _gb(totals[est.phase])


# ---------------------------------------------------------------------------------------------
# verdict and fixes


def verdict(est: MemoryEstimate, vram_gb: float) -> str:
    """"fits" (≤ 90% of the card), "tight" (≤ 100%) or "will not fit"."""
    if not vram_gb or vram_gb <= 0:
        raise ValueError("verdict needs the card's VRAM in GB (vram_gb > 0)")
    if est.problems:
        return "will not fit"
    share = est.total_gb / vram_gb
    return "fits" if share <= FIT_SHARE else "tight" if share <= 1.0 else "will not fit"


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any


_TRACKED = ("model.load_in_4bit", "model.vllm_standby_util_override", "model.gpu_memory_utilization",
            "grpo.num_generations", "grpo.per_device_train_batch_size", "grpo.max_completion_length", "lora.r",
            "lora.alpha")
_GENERATIONS = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2)
_COMPLETIONS = (32768, 24576, 16384, 12288, 8192, 6144, 4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64)
_RANKS = (256, 128, 64, 32, 16, 8, 4)
_MIN_UTIL = 0.2
# a suggestion below these would train badly; past them the advice is a smaller model
_SUGGEST_FLOORS = {"grpo.num_generations": 4, "grpo.max_completion_length": 128, "lora.r": 8}


def _get(config: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _copy(config: RunConfig) -> RunConfig:
    return RunConfig.from_dict(config.to_dict())


def _next_lower(ladder: tuple[int, ...], value: int) -> int | None:
    lower = [v for v in ladder if v < value]
    return max(lower) if lower else None


def _lower_generations(config: RunConfig) -> RunConfig | None:
    g = config.grpo
    new = _next_lower(_GENERATIONS, g.num_generations)
    if new is None:
        return None
    out = _copy(config)
    batch = g.per_device_train_batch_size
    if batch >= g.num_generations and batch % g.num_generations == 0:
        out.grpo.per_device_train_batch_size = new * (batch // g.num_generations)
    elif (batch * g.gradient_accumulation_steps) % new:
        out.grpo.per_device_train_batch_size = new
    out.grpo.num_generations = new
    return out


def _lower_completion(config: RunConfig) -> RunConfig | None:
    new = _next_lower(_COMPLETIONS, config.grpo.max_completion_length)
    if new is None:
        return None
    out = _copy(config)
    out.grpo.max_completion_length = new
    return out


def _lower_util(config: RunConfig) -> RunConfig | None:
    m = config.model
    new = round(m.gpu_memory_utilization - 0.05, 2)
    if not m.fast_inference or new < _MIN_UTIL or standby_sets_share(config):
        return None
    out = _copy(config)
    out.model.gpu_memory_utilization = new
    return out


def _own_share(config: RunConfig) -> RunConfig | None:
    """Under standby, take vLLM's share back from Unsloth's target (the override), then lower it."""
    if standby_sets_share(config):
        out = _copy(config)
        out.model.vllm_standby_util_override = True
        return out
    return _lower_util(config) if config.model.vllm_standby_util_override else None


def _lower_rank(config: RunConfig) -> RunConfig | None:
    lora = config.lora
    new = _next_lower(_RANKS, lora.r)
    if new is None:
        return None
    out = _copy(config)
    out.lora.alpha = max(1, round(lora.alpha * new / lora.r))  # keep alpha/r, the LoRA scale
    out.lora.r = new
    return out


def _to_4bit(config: RunConfig) -> RunConfig | None:
    if config.model.load_in_4bit or not (config.model.fast_inference or preset_card_gb(config.preset)):
        return None
    out = _copy(config)
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
    out = _copy(config)
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
        candidate = _copy(config)
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


# ---------------------------------------------------------------------------------------------
# report


_LABELS = {
    "cuda_context": "CUDA context + kernels",
    "weights": "base weights",
    "vllm_weights_copy": "vLLM's own weight copy",
    "vllm_runtime": "vLLM CUDA graphs + profiling",
    "kv_cache": "KV cache",
    "lora": "LoRA weights, grads, optimizer",
    "activations": "activations",
    "logits": "GRPO logits / log-probs",
    "workspace": "4-bit dequant buffers",
}


def estimate_report(config: RunConfig, vram_gb: float | None = None, arch: Arch | None = None,
                    stack: Stack = UNSLOTH, card: Card | None = None) -> dict[str, Any]:
    """A JSON-ready estimate: total, both phases' parts, the vLLM share, the card it is judged
    against (`card`, else `vram_gb`, else the preset's), verdict and suggestion."""
    card = card or choose_card(config, vram_gb, detect=False)
    arch = arch or resolve_arch(config.model.name)
    est = estimate(config, arch, card.vram_gb, stack, free_gb=card.free_gb)
    judged = verdict(est, card.vram_gb) if card.vram_gb else None
    suggestion = suggest_fix(config, card.vram_gb, arch, stack) if card.vram_gb and judged != "fits" else None
    return {
        "model": est.model,
        "preset": config.preset,
        "device": est.device,
        "unit": "GiB",
        "total": round(est.total_gb, 2),
        "breakdown": _rounded(est.breakdown),
        "phase": est.phase,
        "phases": _rounded(est.phases),
        "phase_breakdown": {name: _rounded(parts) for name, parts in est.phase_parts.items()},
        "vllm_share": round(est.vllm_share_gb, 2) if est.vllm_share_gb is not None else None,
        "vllm_utilization": est.vllm_util,
        "configured_utilization": config.model.gpu_memory_utilization if config.model.fast_inference else None,
        "standby_target": est.standby_target,
        "standby_frees": round(est.standby_frees_gb, 2) if est.standby_frees_gb is not None else None,
        "vram_gb": card.vram_gb,
        "free_gb": est.free_gb,
        "card": card.label,
        "share_of_card": round(est.total_gb / card.vram_gb, 3) if card.vram_gb else None,
        "verdict": judged,
        "suggestion": suggestion or None,
        "notes": est.notes,
        "problems": est.problems,
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 2) for key, value in values.items()}


def format_estimate(report: dict[str, Any]) -> str:
    """A plain-text table of an `estimate_report`: both phases' parts in GB, the vLLM share, the verdict."""
    where = "RAM (no GPU)" if report["device"] == "cpu" else "GPU"
    lines = [f"Memory estimate for {report['model']} (preset {report['preset']}, {where})",
             f"card: {report['card']}", ""]
    width = max(len(label) for label in _LABELS.values())
    parts = report["phase_breakdown"]
    keys = [key for key in _LABELS if key in parts["generation"] or key in parts["training"]]
    lines.append(f"  {'':<{width}}  {'generation':>10}  {'training':>10}")
    for key in keys:
        cells = [f"{parts[phase][key]:7.2f} GB" if key in parts[phase] else f"{'-':>10}"
                 for phase in ("generation", "training")]
        lines.append(f"  {_LABELS[key]:<{width}}  {cells[0]}  {cells[1]}")
    lines.append(f"  {'-' * width}  ----------  ----------")
    totals = [f"{report['phases'][phase]:7.2f} GB" for phase in ("generation", "training")]
    lines.append(f"  {'total':<{width}}  {totals[0]}  {totals[1]}   (peak: {report['phase']})")
    lines += _share_lines(report)
    if report["vram_gb"]:
        pct = round(100 * report["share_of_card"])
        lines.append(f"  peak {report['total']:.2f} GB of {report['vram_gb']:g} GB -> {report['verdict']} ({pct}%)")
    lines += [f"  problem: {text}" for text in report["problems"]]
    lines += [f"  note: {text}" for text in report["notes"]]
    if report["suggestion"]:
        lines.append(f"  suggestion: {report['suggestion']}")
    return "\n".join(lines)


def _share_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    if report["vllm_share"] is not None:
        util = report["vllm_utilization"]
        text = f"  vLLM share {report['vllm_share']:.2f} GB"
        if util is not None:
            text += f" ({util:g} of the {'free memory' if report.get('free_gb') is not None else 'card'}"
            if report["standby_target"]:
                text += f"; Unsloth's standby target; configured {report['configured_utilization']:g} replaced"
            text += ")"
        lines.append(text)
    if report["standby_frees"] is not None:
        lines.append(f"  standby frees {report['standby_frees']:.2f} GB (the KV cache) while training")
    return lines


# ---------------------------------------------------------------------------------------------
# before training: which card, and may the run start


@dataclass(frozen=True)
class Card:
    """The card a verdict is against, with how it was chosen (shown next to the verdict)."""

    vram_gb: float | None
    label: str  # "detected NVIDIA GeForce RTX 3070 (7.6 GB)", "assumed: preset's 8 GB card, no GPU detected"
    free_gb: float | None = None  # free now, on a detected card (what Unsloth sizes vLLM's share from)


def choose_card(config: RunConfig, vram_gb: float | None = None, *, detect: bool = True,
                preset_fallback: bool = True) -> Card:
    """`vram_gb` when given, else the detected GPU (`detect`), else the preset's card (`preset_fallback`)."""
    if vram_gb:
        return Card(vram_gb, f"given {vram_gb:g} GB card")
    if detect:
        from . import hardware

        gpu = hardware.detect_gpu()
        if gpu is not None:
            try:
                free = hardware.free_vram_gb(gpu)
            except Exception:  # a reading that fails must not stop the estimate
                free = None
            shown = f", {free:g} GB free" if free is not None and gpu.vram_gb - free > 0.25 else ""
            return Card(gpu.vram_gb, f"detected {gpu.name} ({gpu.vram_gb:g} GB{shown})", free)
    undetected = ", no GPU detected" if detect else ""
    preset = preset_card_gb(config.preset) if preset_fallback else None
    if preset:
        return Card(preset, f"assumed: preset's {preset:g} GB card{undetected}")
    return Card(None, "no GPU detected" if detect else "no card given")


@dataclass
class PreflightResult:
    """What `preflight` decided: may the run start, the verdict, and the text to show."""

    proceed: bool
    verdict: str | None  # "fits" | "tight" | "will not fit"; None: nothing judged (no GPU, unknown model)
    message: str
    card: Card
    report: dict[str, Any] | None = None  # the `estimate_report` behind the verdict
    seconds_per_step: float | None = None  # on the CPU: the rough time of one step (cpu_step_seconds)
    warning: bool = False  # the message warns (e.g. a GPU config about to run on the CPU)


def preflight(config: RunConfig, vram_gb: float | None = None, force: bool = False,
              arch: Arch | None = None) -> PreflightResult:
    """Check a run before it starts, against `vram_gb` or else this machine's GPU.

    A run estimated not to fit is refused (proceed False) unless `force`; the message names the
    setting to lower and to what. Without a GPU there is nothing to check (the run uses RAM). A
    model whose shape cannot be found is not refused: the estimate is skipped with a warning.
    """
    card = choose_card(config, vram_gb, preset_fallback=False)
    if card.vram_gb is None:
        return _cpu_preflight(config, card, arch)
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
# in float32): 22.5 s x 2 cores / (135e6 params x 8 x 224 tokens).
CPU_CORE_SECONDS_PER_PARAM_TOKEN = 22.5 * 2 / (134.5e6 * 8 * 224)


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


def _cpu_preflight(config: RunConfig, card: Card, arch: Arch | None) -> PreflightResult:
    """No GPU: nothing to check against VRAM, but say how long a step will take, and warn loudly
    when the config was made for a GPU (4-bit, vLLM or a GPU preset), which the CPU path runs without."""
    try:
        seconds = cpu_step_seconds(config, arch or resolve_arch(config.model.name))
    except (ConfigError, OSError):  # a shape unknown offline: no time estimate
        seconds = None
    cores = cpu_cores()
    pace = (f"roughly {_duration(seconds)} per step on {cores} CPU core{'s' if cores != 1 else ''} "
            f"({config.grpo.max_steps} steps: about {_duration(seconds * config.grpo.max_steps)})"
            if seconds is not None else "the time per step could not be estimated (unknown model shape)")
    m = config.model
    gpu_only = [what for on, what in ((m.load_in_4bit, "4-bit QLoRA"), (m.fast_inference, "vLLM rollouts")) if on]
    preset_card = preset_card_gb(config.preset)
    if not gpu_only and not preset_card:
        return PreflightResult(True, None, f"no GPU detected: training uses the CPU and RAM, {pace}", card,
                               seconds_per_step=seconds)
    made_for = f"the {config.preset} preset is made for GPUs with {preset_card:g} GB" if preset_card else \
        "this config is made for a GPU"
    without = f" without {' or '.join(gpu_only)}," if gpu_only else ""
    message = (f"warning: no GPU detected, but {made_for}: it will run on the CPU{without} in float32, {pace}. "
               f"To try the flow on this machine use --preset cpu (the bundled 135M model); for real training "
               f"use a machine with an NVIDIA GPU")
    return PreflightResult(True, None, message, card, seconds_per_step=seconds, warning=True)


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
