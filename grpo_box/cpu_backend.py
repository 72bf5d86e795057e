"""CPU backend: what the training child needs on a machine without an NVIDIA GPU.

Unsloth 2026.10 imports on a CPU-only torch when `UNSLOTH_ALLOW_CPU=1` is set, but its
`FastLanguageModel` still asks CUDA for device properties, so on CPU the engine loads the model
with stock transformers + PEFT (same LoRA settings) and trains with TRL's GRPOTrainer.

TRL 1.15's GRPOTrainer scores completions through a "fused LM head" whose log-prob kernel
(`trl.kernels.ChunkedLogProbFunction`) is written in Triton and has no CPU path: on CPU it dies
with "0 active drivers". `TorchChunkedLogProb` below computes the same per-token outputs
(log-probs, entropy, log Σp², mean logit, is-top-1) with plain torch ops in token chunks, and
`patch_trl_for_cpu()` installs it where TRL looks the kernel up. On a GPU none of this is used.
"""

from __future__ import annotations

import os

import torch

_TOKEN_CHUNK = 256


def enable_unsloth_cpu() -> None:
    """Set before `import unsloth`: let it import against a CPU-only torch."""
    os.environ.setdefault("UNSLOTH_ALLOW_CPU", "1")


def _transform(logits: torch.Tensor, logit_scale: float, softcap: float | None, temperature: float) -> torch.Tensor:
    logits = logits.float() * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits / temperature


def _chunk_outputs(z: torch.Tensor, targets: torch.Tensor, outputs: tuple[str, ...]) -> list[torch.Tensor | None]:
    log_p = torch.log_softmax(z, dim=-1)
    log_probs = log_p.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():
        sq = torch.logsumexp(2 * log_p, dim=-1) if "log_sum_sq_probs" in outputs else None
        mean = z.mean(-1) if "mean_logits" in outputs else None
        top1 = (z.argmax(-1) == targets) if "is_top1" in outputs else None
    return [log_probs, entropy, sq, mean, top1]


class TorchChunkedLogProb:
    """Drop-in for TRL's Triton `ChunkedLogProbFunction`; same arguments, same 5-tuple result."""

    @staticmethod
    def apply(
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        chunk_size: int,
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1"),
    ) -> tuple[torch.Tensor | None, ...]:
        parts: list[list[torch.Tensor | None]] = []
        for start in range(0, max(hidden.shape[0], 1), _TOKEN_CHUNK):
            h = hidden[start : start + _TOKEN_CHUNK]
            logits = torch.nn.functional.linear(h, weight, bias)
            z = _transform(logits, logit_scale, final_logit_softcapping, temperature)
            parts.append(_chunk_outputs(z, targets[start : start + _TOKEN_CHUNK], outputs))
        return tuple(
            None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in range(5)
        )


def patch_trl_for_cpu() -> None:
    """Point TRL's fused LM head at the torch implementation (call after importing trl)."""
    import trl.trainer.utils as trl_utils

    trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
