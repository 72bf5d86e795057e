"""The estimate: both phases of one GRPO step, summed from `components`, and the verdict on a card.

`estimate` builds the training phase (weights, vLLM's resident part, LoRA with grads, activations,
logits, workspace) and the generation phase (vLLM's share, or HF generate's KV cache without
fast_inference, with the weights and the LoRA's weights and optimizer states). The estimate is the
larger phase: `phase_parts` lists both phases' parts, `breakdown` the peak phase's. On a known
card under standby the share is Unsloth's target, and a note says when that replaces the
configured model.gpu_memory_utilization. Besides the total it records `problems`, each of which
makes the verdict "will not fit" whatever the total (a vLLM share whose KV cache cannot hold one
model.max_seq_length sequence, an estimate above the memory free on a detected card), and the
notes shown next to it. `verdict` turns a total into "fits" / "tight" / "will not fit".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog import Arch, resolve_arch
from ..config import RunConfig
from .components import (
    CUDA_CONTEXT_GB,
    GIB,
    UNSLOTH,
    VLLM_CONTEXT_GB,
    Stack,
    _activation_bytes,
    _dtype_bytes,
    _gb,
    _logit_bytes,
    _lora_bytes,
    _vllm_runtime_bytes,
    _workspace_bytes,
    kv_bytes_per_token,
    preset_card_gb,
    standby_sets_share,
    vllm_utilization,
    weight_bytes,
)

FIT_SHARE = 0.90


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


def verdict(est: MemoryEstimate, vram_gb: float) -> str:
    """"fits" (≤ 90% of the card), "tight" (≤ 100%) or "will not fit"."""
    if not vram_gb or vram_gb <= 0:
        raise ValueError("verdict needs the card's VRAM in GB (vram_gb > 0)")
    if est.problems:
        return "will not fit"
    share = est.total_gb / vram_gb
    return "fits" if share <= FIT_SHARE else "tight" if share <= 1.0 else "will not fit"
