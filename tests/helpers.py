"""Test helpers shared by the test modules: the CLI in a subprocess, a random LoRA adapter."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(*args: str, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """`python -m grpo_box ARGS` from the project root, output captured; `env` adds variables."""
    return subprocess.run([sys.executable, "-m", "grpo_box", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**ENV, **env}, timeout=timeout)


@contextlib.contextmanager
def machine_held(run_path: Path, lock: str = "machine") -> Iterator[int]:
    """Another process holds this machine's training lock for a job on `run_path` (or, with
    lock="run", that run directory's worker lock), as a real job would; yields its pid."""
    acquire = "acquire_machine" if lock == "machine" else "acquire_run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from grpo_box import locks
        locks.{acquire}(Path({str(run_path)!r}))
        print("held", flush=True)
        time.sleep(600)
    """)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def make_random_lora(model_dir: Path, out: Path, *, r: int = 4, alpha: int = 8,
                     targets: tuple[str, ...] | list[str] = ("q_proj", "v_proj"), std: float = 0.12,
                     seed: int = 0) -> Path:
    """A PEFT LoRA on the bundled model, saved with its tokenizer as training saves it.

    PEFT starts lora_B at zero (the adapter changes nothing); here it gets random values with
    standard deviation `std`, so the adapter really changes the model's outputs. `seed` fixes both
    lora_A (PEFT's own random init, from torch's global generator) and lora_B, so every test run
    gets the same adapter and the same replies.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(model, lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out
