"""VRAM estimate for a GRPO run: will this config fit this card, and what to lower if not.

Before training, Setup shows an estimate so the user learns that a choice does not fit before a
model download and a crash. `preflight(config)` is the one check `train`, `demo` and the app's
memory gauge use: the verdict on this machine's card and, when it does not fit, the setting to
lower and to what. The estimate is arithmetic on the model's shape (`grpo_box.catalog`) and the
RunConfig, calibrated against Unsloth's published GRPO figures (see "Calibration") and meant to
be right within about ±25%, not to the megabyte.

The package, one layer a module, each importing only those above it:
- `components`: the bytes of each part (the "Components" below), one function a part;
- `estimator`: both phases summed (`estimate`) and the verdict on a card (`verdict`);
- `ladders`: the values each setting steps down through (GENERATION_LADDER, COMPLETION_LADDER,
  RANK_LADDER) and one step down of each knob;
- `fit`: the search for a config that fits (`fit_to_card`, `suggest_fix`) and the back-off after
  an out-of-memory error (`smaller_setting`);
- `card`: which card a verdict is against (`choose_card`);
- `report`: the JSON-ready report and its text table (`estimate_report`, `format_estimate`);
- `pretrain`: the check before a run starts (`preflight`), the CPU's time per step, the hint
  after an out-of-memory error at startup.
Every public name is importable from `grpo_box.memory` itself.

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
sets the variable only for `model.vllm_standby_util_override: true`), so on a known card the
estimate uses the target, not the configured u.

Phases: generation (vLLM share or HF KV cache, weights, LoRA weights + optimizer states) and
training (weights, vLLM's resident part, LoRA with grads, activations, logits, workspace). The
estimate is the larger phase.

Calibration (tests/test_memory.py). Published totals, each within ±25%: GRPO on Qwen2.5-1.5B in
5-7 GB, Llama-3.1-8B / Qwen2.5-7B in ~15 GB (a Colab T4), Llama-3.1-8B at 20K context with 8
generations in 54.3 GB with Unsloth and 510.8 GB with TRL + FlashAttention-2. A vLLM share is a
fraction of the card whatever the model, so the T4 totals check the share arithmetic more than
the model; model-dependent checks pin the rest: the weights (Llama-3.1-8B: the 5.7 GB of its
bnb-4bit checkpoint, the blog's 16 GB in bf16), the 20K blog's components (training 42 vs 414 GB,
GRPO logits 9.8 vs 78.3 GB, 2.5 GB of KV for one 20K sequence), a smaller model landing far
outside the 8B cases, and the bundled model's real parameter bytes and LoRA size.

Verdict on a card: fits ≤ 90%, tight ≤ 100%, else "will not fit" (also when the vLLM share
cannot hold the weights plus one max_seq_length sequence). What a fix may lower, before training
and after an out-of-memory error, is in `fit`.
"""

from __future__ import annotations

from .card import Card, choose_card, detected_card
from .components import (
    CUDA_CONTEXT_GB,
    GIB,
    HIDDEN_BUFFERS,
    LOGIT_BUFFERS,
    NF4_BYTES_PER_PARAM,
    TRL_FA2,
    UNSLOTH,
    VLLM_CONTEXT_GB,
    VLLM_PROFILE_TOKENS,
    Stack,
    kv_bytes_per_token,
    lora_params,
    preset_card_gb,
    standby_sets_share,
    unsloth_standby_util,
    vllm_utilization,
    weight_bytes,
)
from .estimator import FIT_SHARE, MemoryEstimate, estimate, unsloth_context_tokens, verdict, vllm_base_gb
from .fit import fit_to_card, smaller_setting, suggest_fix
from .ladders import COMPLETION_LADDER, GENERATION_LADDER, RANK_LADDER, Change, Knob, describe_changes, set_flags
from .pretrain import (
    CPU_CORE_SECONDS_PER_PARAM_TOKEN,
    PreflightResult,
    cpu_cores,
    cpu_step_seconds,
    preflight,
    ram_verdict,
    startup_oom_hint,
)
from .report import estimate_report, format_estimate

__all__ = [
    "COMPLETION_LADDER", "CPU_CORE_SECONDS_PER_PARAM_TOKEN", "CUDA_CONTEXT_GB", "FIT_SHARE", "GENERATION_LADDER",
    "GIB", "HIDDEN_BUFFERS", "LOGIT_BUFFERS", "NF4_BYTES_PER_PARAM", "RANK_LADDER", "TRL_FA2", "UNSLOTH",
    "VLLM_CONTEXT_GB", "VLLM_PROFILE_TOKENS", "Card", "Change", "Knob", "MemoryEstimate", "PreflightResult", "Stack",
    "choose_card", "cpu_cores", "cpu_step_seconds", "describe_changes", "detected_card", "estimate", "estimate_report",
    "fit_to_card", "format_estimate", "kv_bytes_per_token", "lora_params", "preflight", "preset_card_gb", "ram_verdict", "set_flags",
    "smaller_setting", "standby_sets_share", "startup_oom_hint", "suggest_fix", "unsloth_context_tokens",
    "unsloth_standby_util", "verdict", "vllm_base_gb", "vllm_utilization", "weight_bytes",
]
