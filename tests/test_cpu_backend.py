"""The torch stand-in for TRL's Triton log-prob kernel gives the same numbers as full logits."""

from __future__ import annotations

import pytest
import torch

from grpo_box.cpu_backend import TorchChunkedLogProb

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.mark.parametrize("temperature, softcap, scale, n", [(1.0, None, 1.0, 5), (0.7, None, 1.0, 300), (1.0, 30.0, 0.5, 17)])
def test_matches_full_logits(temperature, softcap, scale, n):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (n,), generator=gen)
    targets[0] = int((hidden[0] @ weight.t()).argmax())  # at least one top-1 hit

    out = TorchChunkedLogProb.apply(hidden, weight, None, targets, temperature, 16, softcap, scale, OUTPUTS[1:])
    z = (hidden @ weight.t()) * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    log_p = torch.log_softmax(z, -1)
    expected = [
        log_p.gather(-1, targets[:, None]).squeeze(-1),
        -(log_p.exp() * log_p).sum(-1),
        torch.logsumexp(2 * log_p, -1),
        z.mean(-1),
    ]
    for got, want in zip(out[:4], expected):
        torch.testing.assert_close(got, want)
    assert out[4].tolist() == (z.argmax(-1) == targets).tolist() and bool(out[4][0])

    # gradients flow to the LM head and the hidden states, like the Triton kernel's backward
    out[0].sum().backward()
    assert hidden.grad is not None and weight.grad is not None and weight.grad.abs().sum() > 0


def test_unrequested_outputs_are_none():
    hidden, weight = torch.randn(3, 4), torch.randn(7, 4)
    out = TorchChunkedLogProb.apply(hidden, weight, None, torch.tensor([1, 2, 3]), 1.0, 4, None, 1.0, ())
    assert out[0].shape == (3,) and out[1:] == (None, None, None, None)


@pytest.mark.slow
def test_unsloths_fast_language_model_still_needs_cuda_which_is_why_the_cpu_path_uses_peft():
    """modeling._load_cpu applies the same LoRA settings with transformers + PEFT because Unsloth
    2026.10's FastLanguageModel asks CUDA for device properties even with its CPU backend on. If a
    later Unsloth loads on the CPU, this fails: switch `_load_cpu` to FastLanguageModel then."""
    import subprocess
    import sys

    from helpers import ENV, ROOT

    from grpo_box.models import ensure_bundled_model

    code = (
        "import os; os.environ['UNSLOTH_ALLOW_CPU'] = '1'\n"
        "import unsloth\n"
        "from unsloth import FastLanguageModel\n"
        f"FastLanguageModel.from_pretrained({str(ensure_bundled_model())!r}, max_seq_length=256, load_in_4bit=False)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0, "FastLanguageModel loaded on the CPU: the PEFT fallback may no longer be needed"
    assert "CUDA" in result.stderr or "cuda" in result.stderr, result.stderr[-2000:]
