"""The GPU path at its boundaries, checked on the CPU (issue 13).

No GPU is needed: these tests pin the arguments GRPO Box hands Unsloth / TRL / vLLM / llama.cpp and
the errors it classifies. Where the decision is the library's, the library's own code is run: the
mixed-precision and GRPO-loss blocks Unsloth generates for its trainer are read from the installed
unsloth/models/rl.py and executed with the flags we pass. CUDA, vLLM and NVML are faked only at the
boundary (the tools' answers), never our own code. `bench/gpu_smoke.sh` is what a GPU proves.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from grpo_box.presets import load_preset
from grpo_box.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(__import__("trl").__file__).resolve().parent.parent  # the venv's site-packages


# ------------------------------------------------------------------------------------------------
# Unsloth's generated trainer code, run as it runs inside UnslothGRPOTrainer / UnslothGRPOConfig


def unsloth_block(name: str) -> str:
    """The source of a code block unsloth/models/rl.py assembles as a string literal (`name = (...)`)."""
    tree = ast.parse((SITE / "unsloth/models/rl.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Constant)):
            return node.value.value
    raise AssertionError(f"unsloth/models/rl.py no longer builds `{name}`: re-read it against grpo_box.train")


def unsloth_defaults(trainer: str = "grpo_trainer") -> dict[str, object]:
    """The GRPOConfig defaults Unsloth rewrites (its `replacements` dicts), as literals."""
    tree = ast.parse((SITE / "unsloth/models/rl.py").read_text())
    defaults: dict[str, object] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "replacements" and isinstance(node.value, ast.Dict)):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    defaults[key.value] = value.value
    return defaults


def run_unsloth_precision_check(monkeypatch, model_dtype, flags: dict, bf16_supported: bool):
    """Unsloth's trainer-side mixed-precision block with `flags` on a model in `model_dtype`.

    unsloth_zoo is faked only for what the block imports (the device's bf16 answer and _get_dtype)."""
    import torch

    zoo = types.ModuleType("unsloth_zoo")
    device_type = types.ModuleType("unsloth_zoo.device_type")
    device_type.device_is_bf16_supported = lambda: bf16_supported
    utils = types.ModuleType("unsloth_zoo.utils")
    utils._get_dtype = lambda dtype: dtype
    for name, module in (("unsloth_zoo", zoo), ("unsloth_zoo.device_type", device_type), ("unsloth_zoo.utils", utils)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("UNSLOTH_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    defaults = unsloth_defaults()
    args = types.SimpleNamespace(bf16=flags.get("bf16", defaults["bf16"]), fp16=flags.get("fp16", defaults["fp16"]))
    model = types.SimpleNamespace(config=types.SimpleNamespace(dtype=model_dtype))
    exec(unsloth_block("mixed_precision"), {"torch": torch, "os": os, "args": args, "model": model})
    return args


@pytest.mark.parametrize("card,model_dtype,bf16_supported", [
    ("Turing (T4, RTX 20xx): Unsloth loads float16, torch says bf16 by emulation", "float16", True),
    ("Ampere+ with model.dtype: float16", "float16", True),
    ("Ampere+ default", "bfloat16", True),
])
def test_precision_flags_never_contradict_the_models_dtype(tmp_path, monkeypatch, card, model_dtype, bf16_supported):
    """Item 1: the flags grpo_args passes pass Unsloth's own check on every card, where the old
    `bf16 = torch.cuda.is_bf16_supported()` raised on Turing and on float16 models."""
    import torch

    from grpo_box.train import grpo_args

    dtype = getattr(torch, model_dtype)
    run = RunDir(tmp_path)
    passed = grpo_args(load_preset("8gb"), run, [1.0], cuda=True)
    assert "bf16" not in passed and "fp16" not in passed  # Unsloth's GRPOConfig: both False, it picks
    args = run_unsloth_precision_check(monkeypatch, dtype, passed, bf16_supported)
    assert (args.bf16, args.fp16) == (dtype == torch.bfloat16, dtype == torch.float16), card
    from_model = grpo_args(load_preset("8gb"), run, [1.0], cuda=True, model_dtype=dtype)
    args = run_unsloth_precision_check(monkeypatch, dtype, from_model, bf16_supported)
    assert (args.bf16, args.fp16) == (dtype == torch.bfloat16, dtype == torch.float16), card
    # what the old rule passed on these cards: Unsloth refuses it, after the model and vLLM loaded
    if model_dtype == "float16":
        with pytest.raises(TypeError, match="float16 precision but you want to use bfloat16"):
            run_unsloth_precision_check(monkeypatch, dtype, {"bf16": True, "fp16": False}, bf16_supported)


def test_precision_flags_on_the_cpu_and_by_name(tmp_path):
    from grpo_box.train import grpo_args, precision_flags

    cpu = grpo_args(load_preset("cpu"), RunDir(tmp_path), [1.0], cuda=False)
    assert cpu["bf16"] is False and cpu["fp16"] is False and cpu["use_cpu"] is True
    assert precision_flags("torch.bfloat16") == {"bf16": True, "fp16": False}
    assert precision_flags("float16") == {"bf16": False, "fp16": True}
    assert precision_flags("torch.float32") == {"bf16": False, "fp16": False}


def run_unsloth_loss_check(args: dict, explicit_loss_type: bool = True) -> dict:
    """Unsloth's GRPOConfig-side loss block (dr_grpo / dapo rewrites) on the arguments we pass."""
    defaults = unsloth_defaults()
    names = ("loss_type", "scale_rewards", "mask_truncated_completions", "epsilon_high", "beta")
    scope = {name: args.get(name, defaults.get(name)) for name in names}
    scope["scale_rewards"] = args.get("scale_rewards", "group")  # TRL's default; Unsloth keeps it
    scope["_unsloth_default_loss_type"] = not explicit_loss_type
    exec(unsloth_block("check_dr_grpo"), scope)
    return {name: scope[name] for name in names}


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "grpo", "bnpo"])
def test_the_gpu_and_the_cpu_train_the_same_objective(tmp_path, loss_type, capsys):
    """Item 5: Unsloth's rewrites leave what we pass untouched, and stock TRL (the CPU path) reads
    the same values, so loss_type means one objective on both paths."""
    from trl import GRPOConfig

    from grpo_box.train import grpo_args

    config = load_preset("8gb")
    config.grpo.loss_type = loss_type
    passed = grpo_args(config, RunDir(tmp_path), [1.0], cuda=True)
    gpu = run_unsloth_loss_check(passed)
    assert "Unsloth:" not in capsys.readouterr().out  # nothing "we will set it"
    assert gpu["mask_truncated_completions"] is False and gpu["epsilon_high"] == config.grpo.epsilon
    assert gpu["scale_rewards"] == ("none" if loss_type == "dr_grpo" else "group")
    assert passed["vllm_importance_sampling_correction"] is False
    # the CPU path: stock TRL's config from the same settings
    cpu_args = grpo_args(config, RunDir(tmp_path), [1.0], cuda=False)
    trl = GRPOConfig(**{**cpu_args, "output_dir": str(tmp_path / "out")})
    assert (trl.mask_truncated_completions, trl.epsilon_high, trl.scale_rewards) == (
        gpu["mask_truncated_completions"], gpu["epsilon_high"], gpu["scale_rewards"])


def test_unsloth_would_change_an_implicit_dapo_objective():
    """Why the settings are explicit: left unset, Unsloth masks truncated completions and clips
    higher for dapo, and drops the reward scaling for dr_grpo (unsloth/models/rl.py)."""
    dapo = run_unsloth_loss_check({"loss_type": "dapo", "beta": 0.0})
    assert dapo["mask_truncated_completions"] is True and dapo["epsilon_high"] == 0.28
    dr = run_unsloth_loss_check({"loss_type": "dr_grpo", "beta": 0.0, "scale_rewards": "group"})
    assert dr["scale_rewards"] is False
    assert unsloth_defaults()["vllm_importance_sampling_correction"] is False


# ------------------------------------------------------------------------------------------------
# out-of-memory errors of the GPU path (item 6)


def gpu_oom_errors() -> dict[str, BaseException]:
    import torch

    wrapped = RuntimeError("Free memory on device cuda:0 (5.1/7.6 GiB) on startup is less than desired GPU memory "
                           "utilization (0.7, 5.3 GiB). Decrease GPU memory utilization or reduce GPU memory used by "
                           "other processes.")
    try:  # unsloth_zoo re-raises vLLM's ValueError as RuntimeError(str) inside its except block
        try:
            raise ValueError(str(wrapped))
        except ValueError:
            raise RuntimeError(str(wrapped))
    except RuntimeError as exc:
        unsloth_reraised = exc
    return {
        "torch allocator": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "torch.AcceleratorError": torch.AcceleratorError("CUDA error: out of memory\nCompile with "
                                                         "`TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"),
        "standby wake-up (vLLM cumem allocator)": RuntimeError(
            "CUDA Error: out of memory at /workspace/csrc/cumem_allocator.cpp:62"),
        "cuBLAS workspace": RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        "vLLM start-up free memory": ValueError(str(wrapped)),
        "vLLM start-up free memory, re-raised by unsloth_zoo": unsloth_reraised,
        "Unsloth's standby MemoryError": MemoryError(
            "Unsloth: Your GPU ran out of memory loading vLLM with standby mode enabled.\nYour GPU has 7.6 GB VRAM "
            "with gpu_memory_utilization=0.670.\nTry one of these fixes: ..."),
        "vLLM no KV cache": ValueError("No available memory for the cache blocks. Try increasing "
                                       "`gpu_memory_utilization` when initializing the engine."),
    }


@pytest.mark.parametrize("what", list(gpu_oom_errors()))
def test_gpu_out_of_memory_errors_are_classified(what):
    from grpo_box.train import TrainingOOM, _oom_cause, _on_oom

    exc = gpu_oom_errors()[what]
    assert _oom_cause(exc) is exc or _oom_cause(exc) is exc.__context__
    try:  # as a library wraps it (a reward's RewardError, TRL's own re-raise)
        try:
            raise exc
        except BaseException as inner:
            raise KeyError("wrapped") from inner
    except KeyError as outer:
        assert _oom_cause(outer) is not None
    with pytest.raises(TrainingOOM):
        with _on_oom(lambda oom: TrainingOOM(1, "rollout", str(oom))):
            raise exc


@pytest.mark.parametrize("exc", [
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("Error in memory profiling. Initial free memory 70.1 GiB, current free memory 71.3 GiB. This "
                 "happens when other processes sharing the same container release GPU memory while vLLM is "
                 "profiling during initialization."),
    MemoryError(),  # host RAM: a smaller GPU setting would not help
    ValueError("max_model_len is greater than the model's context length"),
    RuntimeError("Expected a single True/False argument for expandable_segments"),
], ids=["illegal address", "profiling race", "host RAM", "config", "allocator config"])
def test_other_errors_are_not_out_of_memory(exc):
    from grpo_box.train import _oom_cause

    assert _oom_cause(exc) is None


def test_the_markers_are_the_libraries_own_texts():
    """The texts matched are the ones the pinned sources raise (vLLM's and torch's C++ are not
    installed here; their texts are quoted in grpo_box.train with their source files)."""
    zoo = (SITE / "unsloth_zoo/vllm_utils.py").read_text()
    assert "Your GPU ran out of memory loading vLLM with standby mode enabled" in zoo
    assert "raise MemoryError(" in zoo and "raise RuntimeError(error)" in zoo
    assert '"error in memory profiling"' in zoo  # unsloth_zoo treats the race as not an OOM too


def test_startup_hint_says_which_way_to_move_the_share():
    """vLLM asking for more than is free: lower the share; a share without room for a KV cache: raise it."""
    from grpo_box.train import StartupOOM, _startup_oom

    config = load_preset("8gb")
    config.model.vllm_standby = False
    errors = gpu_oom_errors()
    for what, direction in (("vLLM start-up free memory", "lower"), ("vLLM no KV cache", "raise"),
                            ("torch.AcceleratorError", "lower")):
        with pytest.raises(StartupOOM) as caught:
            with _startup_oom(config, "loading model / vLLM cache"):
                raise errors[what]
        assert f"{direction} model.gpu_memory_utilization" in str(caught.value), what
