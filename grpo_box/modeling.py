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

On the CPU, Unsloth's torch.compile of those graphs buys nothing and costs each process 5-13 s
of Inductor compiling (and needs a C++ compiler); `prepare_environment` sets
`UNSLOTH_COMPILE_DISABLE=1` there (Unsloth's own switch; a value the user set wins). The rewards
are identical with and without it; README's Benchmarks section has the measured times.

`unsloth_load_kwargs` / `unsloth_peft_kwargs` are the exact arguments handed to Unsloth; they are
pure functions so a CPU test can check that boundary.

Standby and the allocator: unsloth_zoo sets `PYTORCH_ALLOC_CONF=expandable_segments:True` when
standby is off and strips it when standby is on, but torch reads that variable for itself, and a
training child inherits its parent's environment (a parent that imported unsloth without standby
carries the setting). Expandable segments conflict with standby's sleep mode (vLLM's cuMem pool),
so `prepare_environment` removes them for a standby run before anything imports torch, and
`worker_environment` gives a child process the same clean environment.

A GPU config on a card torch cannot use (a Pascal card, a driver older than CUDA 13's, a CPU build
of torch left from a CPU install) is refused by `check_gpu_usable` with the reason, instead of
training on the CPU in float32 without anyone noticing (`hardware.gpu_problem`, `torch_problem`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, ModelConfig, RunConfig
from .errors import UserError
from .hardware import has_cuda  # re-exported: chat and train ask modeling
from .models import check_model_source, load_error, resolve_model, use_data_home_for_caches

ALLOCATOR_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")


class GpuUnusableError(UserError, RuntimeError):
    """A GPU config on a machine whose NVIDIA card torch cannot use; the message says why and what to do."""


def uses_standby(config: RunConfig) -> bool:
    return config.model.fast_inference and config.model.vllm_standby


def without_expandable_segments(env: dict[str, str]) -> dict[str, str]:
    """`env` with `expandable_segments:…` taken out of the allocator variables (emptied ones dropped)."""
    out = dict(env)
    for key in ALLOCATOR_VARS:
        if "expandable_segments" not in out.get(key, ""):
            continue
        kept = [part.strip() for part in out[key].split(",")
                if part.strip() and not part.strip().startswith("expandable_segments")]
        if kept:
            out[key] = ",".join(kept)
        else:
            del out[key]
    return out


def worker_environment(config: RunConfig, env: dict[str, str]) -> dict[str, str]:
    """The environment for a training child of a run with `config`, from its parent's `env`: without
    expandable segments for a standby run (see the module docstring); otherwise unchanged."""
    return without_expandable_segments(env) if uses_standby(config) else dict(env)


def prepare_environment(config: RunConfig, cuda: bool | None = None) -> dict[str, str]:
    """Environment variables that must be set before `import unsloth`; returns what it set."""
    if uses_standby(config):  # before has_cuda() imports torch, which reads the allocator settings
        scrubbed = without_expandable_segments(dict(os.environ))
        for key in ALLOCATOR_VARS:
            if os.environ.get(key) != scrubbed.get(key):
                if "torch" in sys.modules:
                    print(f"warning: {key}={os.environ[key]} was set before torch was imported; standby needs "
                          "expandable_segments off: unset it before starting GRPO Box", file=sys.stderr)
                if key in scrubbed:
                    os.environ[key] = scrubbed[key]
                else:
                    os.environ.pop(key, None)
    cuda = has_cuda() if cuda is None else cuda
    use_data_home_for_caches()  # before `import unsloth`: its compiled cache, not ./unsloth_compiled_cache
    env: dict[str, str] = {"TOKENIZERS_PARALLELISM": "false"}
    if cuda:  # both always written: a value left in the shell must not make the run differ from its config
        standby = config.model.fast_inference and config.model.vllm_standby
        env["UNSLOTH_VLLM_STANDBY"] = "1" if standby else "0"
        env["UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"] = "1" if standby and config.model.vllm_standby_util_override else "0"
    else:
        env["UNSLOTH_ALLOW_CPU"] = "1"
        if "UNSLOTH_COMPILE_DISABLE" not in os.environ:  # one a user set wins
            env["UNSLOTH_COMPILE_DISABLE"] = "1"  # see the module docstring: the CPU path runs eagerly
    os.environ.update(env)
    return env


def tolerate_inductor_pool_aliasing() -> None:
    """Keep PyTorch's custom-op aliasing check a warning, even with `CI` set (see module docstring)."""
    os.environ.setdefault("TORCHINDUCTOR_ERROR_ON_CUSTOM_OP_ALIASING", "0")  # read where torch is not yet imported
    import torch._functorch.config as functorch_config

    # torch's config modules raise AttributeError for a key they do not have (torch/utils/_config_module.py);
    # the key is new in PyTorch 2.13 and older builds have no such check to relax
    if hasattr(functorch_config, "error_on_custom_op_aliasing"):
        functorch_config.error_on_custom_op_aliasing = False  # torch may already be imported


def import_unsloth(config: RunConfig) -> None:
    """`import unsloth` with the right environment, before trl/transformers/peft are used."""
    prepare_environment(config)
    tolerate_inductor_pool_aliasing()
    import unsloth  # noqa: F401  (patches TRL and transformers on import)

    if not has_cuda():
        from .cpu_backend import patch_trl_for_cpu

        patch_trl_for_cpu()


def unsloth_load_kwargs(config: RunConfig | ModelConfig, model_path: str, *, fast_inference: bool | None = None,
                        adapter_rank: int = 0) -> dict[str, Any]:
    """`FastLanguageModel.from_pretrained` arguments for a run (training) or a model section
    (inference): `fast_inference` overrides the config's, and vLLM's `max_lora_rank` grows to
    `adapter_rank` so that the adapter to be served fits."""
    m = config.model if isinstance(config, RunConfig) else config
    fast = m.fast_inference if fast_inference is None else fast_inference
    kwargs: dict[str, Any] = {
        "model_name": model_path,
        "max_seq_length": m.max_seq_length,
        "load_in_4bit": m.load_in_4bit,
        "fast_inference": fast,
        "dtype": m.dtype,
    }
    if fast:
        kwargs["max_lora_rank"] = max(m.max_lora_rank, adapter_rank)
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
    check_gpu_usable(config)
    try:
        if has_cuda():
            return _load_unsloth(config, path)
        return _load_cpu(config, path)
    except OSError as exc:  # transformers / huggingface_hub: not found, no network, gated
        if Path(path).exists():
            raise
        raise load_error(config.model.name, exc) from exc


def needs_gpu(config: RunConfig) -> bool:
    """A config made for a GPU: 4-bit weights, vLLM rollouts, or a GPU preset."""
    from .memory import preset_card_gb

    return config.model.load_in_4bit or config.model.fast_inference or bool(preset_card_gb(config.preset))


def check_gpu_usable(config: RunConfig | None) -> None:
    """Refuse to run a GPU config on an NVIDIA card the GPU stack cannot use (GpuUnusableError, with
    the reason); a machine with no NVIDIA card at all is left to the CPU path and its warning.
    `config` None: a model loaded for generation (chat, evaluation, merge), which has no preset."""
    from . import hardware

    if has_cuda():  # torch would take the GPU path whatever the preset
        reason = hardware.gpu_problem(hardware.detect_gpu())
        cpu = "hide the card (CUDA_VISIBLE_DEVICES= )" + (" and use --preset cpu" if config is not None else "")
    elif config is not None and needs_gpu(config):
        reason = hardware.torch_problem()
        cpu = "use --preset cpu (or model.load_in_4bit=false and model.fast_inference=false)"
    else:
        reason = None
    if reason:
        what = "this run" if config is not None else "this model"
        raise GpuUnusableError(f"{what} cannot use the GPU: {reason}. To run on the CPU instead (slowly, in "
                               f"float32, without 4-bit or vLLM), {cpu}")


def _load_unsloth(config: RunConfig, path: str) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(**unsloth_load_kwargs(config, path))
    check_target_modules(model, config)
    model = FastLanguageModel.get_peft_model(model, **unsloth_peft_kwargs(config))
    return model, tokenizer


def check_target_modules(model: Any, config: RunConfig) -> None:
    """Refuse lora.target_modules naming no module of the model. PEFT only fails when none of them
    matches, so one typo among several (q_projj, v_proj) would train without it, silently."""
    import torch

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in config.lora.target_modules if t not in present]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)} - {"lm_head"})
        raise ConfigError(f"lora.target_modules: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not a "
                          f"module of {config.model.name}; its linear layers are {', '.join(linear)}")


def load_cpu_model(path: str, tokenizer_path: str | None = None) -> tuple[Any, Any]:
    """transformers on the CPU: the model in float32 (bf16 matmuls are slow on most CPUs) and its
    tokenizer (from `tokenizer_path` when given, e.g. an adapter folder that saved one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    return AutoModelForCausalLM.from_pretrained(path, dtype="float32"), tokenizer


def _load_cpu(config: RunConfig, path: str) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_cpu_model(path)
    check_target_modules(model, config)
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
