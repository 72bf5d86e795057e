"""Loading the policy model for training: Unsloth on a GPU, its CPU backend otherwise.

GPU path: `FastLanguageModel.from_pretrained(load_in_4bit, fast_inference=True, max_lora_rank,
gpu_memory_utilization)` gives a 4-bit base with a colocated vLLM engine, then
`FastLanguageModel.get_peft_model` adds the LoRA. `UNSLOTH_VLLM_STANDBY=1` must be in the
environment before `import unsloth` (it decides at import time). Under standby Unsloth replaces
the vLLM share with its own target for the card (memory.unsloth_standby_util), which leaves the
trainer room on small cards; that rule stays on, and the memory estimate uses and shows that
target. Only `model.vllm_standby_util_override: true` sets `UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE=1`
to keep the configured `gpu_memory_utilization`.

CPU path: Unsloth 2026.10 imports with `UNSLOTH_ALLOW_CPU=1` but `FastLanguageModel` still asks
CUDA for device properties, so the same LoRA settings are applied with transformers + PEFT.

Unsloth compiles small graphs (e.g. the causal mask) with Inductor's `memory_planning`, whose
`inductor::_alloc_from_pool` returns a view of its pool. PyTorch 2.13 flags that as custom-op
aliasing: a warning normally, but a hard error whenever `CI` is set in the environment
(`error_on_custom_op_aliasing` defaults to `bool(os.getenv("CI"))`). The op is Inductor's own, so
`tolerate_inductor_pool_aliasing` keeps it a warning everywhere.

`unsloth_load_kwargs` / `unsloth_peft_kwargs` are the exact arguments handed to Unsloth; they are
pure functions so a CPU test can check that boundary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import RunConfig
from .models import check_model_source, load_error, resolve_model, use_data_home_for_caches


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def prepare_environment(config: RunConfig, cuda: bool | None = None) -> dict[str, str]:
    """Environment variables that must be set before `import unsloth`; returns what it set."""
    cuda = has_cuda() if cuda is None else cuda
    use_data_home_for_caches()  # before `import unsloth`: its compiled cache, not ./unsloth_compiled_cache
    env: dict[str, str] = {"TOKENIZERS_PARALLELISM": "false"}
    if cuda:  # both always written: a value left in the shell must not make the run differ from its config
        standby = config.model.fast_inference and config.model.vllm_standby
        env["UNSLOTH_VLLM_STANDBY"] = "1" if standby else "0"
        env["UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"] = "1" if standby and config.model.vllm_standby_util_override else "0"
    else:
        env["UNSLOTH_ALLOW_CPU"] = "1"
    os.environ.update(env)
    return env


def tolerate_inductor_pool_aliasing() -> None:
    """Keep PyTorch's custom-op aliasing check a warning, even with `CI` set (see module docstring)."""
    os.environ.setdefault("TORCHINDUCTOR_ERROR_ON_CUSTOM_OP_ALIASING", "0")  # read where torch is not yet imported
    import torch._functorch.config as functorch_config

    functorch_config.error_on_custom_op_aliasing = False  # torch may already be imported


def import_unsloth(config: RunConfig) -> None:
    """`import unsloth` with the right environment, before trl/transformers/peft are used."""
    prepare_environment(config)
    tolerate_inductor_pool_aliasing()
    import unsloth  # noqa: F401  (patches TRL and transformers on import)

    if not has_cuda():
        from .cpu_backend import patch_trl_for_cpu

        patch_trl_for_cpu()


def unsloth_load_kwargs(config: RunConfig, model_path: str) -> dict[str, Any]:
    m = config.model
    kwargs: dict[str, Any] = {
        "model_name": model_path,
        "max_seq_length": m.max_seq_length,
        "load_in_4bit": m.load_in_4bit,
        "fast_inference": m.fast_inference,
        "dtype": m.dtype,
    }
    if m.fast_inference:
        kwargs["max_lora_rank"] = m.max_lora_rank
        kwargs["gpu_memory_utilization"] = m.gpu_memory_utilization
    return kwargs


def unsloth_peft_kwargs(config: RunConfig) -> dict[str, Any]:
    lora = config.lora
    return {
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": list(lora.target_modules),
        "use_gradient_checkpointing": lora.gradient_checkpointing,
        "random_state": config.grpo.seed,
    }


def load_policy(config: RunConfig) -> tuple[Any, Any]:
    """The trainable (LoRA-wrapped) model and its tokenizer, on the GPU or the CPU.

    A model that cannot be found (a missing folder, a Hub id offline or with a typo) raises
    ModelError with one line to fix it, instead of the libraries' long download tracebacks."""
    check_model_source(config.model.name)
    path = resolve_model(config.model.name)
    try:
        if has_cuda():
            return _load_unsloth(config, path)
        return _load_cpu(config, path)
    except OSError as exc:  # transformers / huggingface_hub: not found, no network, gated
        if Path(path).exists():
            raise
        raise load_error(config.model.name, exc) from exc


def _load_unsloth(config: RunConfig, path: str) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(**unsloth_load_kwargs(config, path))
    model = FastLanguageModel.get_peft_model(model, **unsloth_peft_kwargs(config))
    return model, tokenizer


def _load_cpu(config: RunConfig, path: str) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    if config.lora.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    peft_kwargs = unsloth_peft_kwargs(config)
    lora = LoraConfig(
        r=peft_kwargs["r"],
        lora_alpha=peft_kwargs["lora_alpha"],
        lora_dropout=peft_kwargs["lora_dropout"],
        target_modules=peft_kwargs["target_modules"],
        task_type="CAUSAL_LM",
    )
    import torch

    torch.manual_seed(config.grpo.seed)
    return get_peft_model(model, lora), tokenizer
