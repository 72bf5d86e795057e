"""Export a run (or a config) as a multi-GPU job for plain TRL: a self-contained bundle folder.

GRPO Box trains on one GPU with Unsloth. Past one card the field's path is plain TRL: `trl
vllm-serve` on GPUs of its own (server mode) and the trainer under `accelerate launch` with
DeepSpeed ZeRO-3 or FSDP. `build_bundle` hands a run over to that path without a rewrite:

- the GPU split (cluster_plan.plan_split): which GPUs serve vLLM, how many training processes on
  how many machines; an impossible split is refused with what would work;
- the batch (cluster_plan.plan_batch): TRL needs the global batch (per-device batch x processes x
  gradient accumulation) to be a multiple of `num_generations`; it is recomputed for the new
  process count, kept as close to the run's as that allows;
- the files: `grpo_config.yaml` (trl.GRPOConfig's arguments), `job.yaml`, `train.py`, the data as
  JSONL (train and held-out), TRL's accelerate config for the backend, `launch.sh` (and
  `slurm.sbatch` for several nodes), `requirements.txt`, `README.md` (cluster_readme.py);
- the reward code, vendored: the modules of `grpo_box` that the rubric imports, copied byte for
  byte (`vendor_closure` follows their imports), plus the run's own reward file. Vendored rather
  than "pip install grpo_box": this package is not on PyPI, and its dependencies (gradio,
  llama-cpp-python built from source, a CPU torch) have no place on a training node, whereas the
  reward modules need only math-verify and PyYAML. A copy also pins the exact code the appliance
  ran, so the reward curves of the two compare.

The bundle is written into a temporary folder beside its destination and swapped in once complete
(`staged`), so a failure leaves no half bundle and keeps an earlier one. Nothing here loads a model
or imports the user's reward file (it is copied, not run), so the app calls `build_bundle` in its
own process. `cluster_import.import_adapter` brings the job's adapter back as a run directory.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .atomic import replace_dir
from .cluster_plan import (BACKENDS, DEEPSPEED, DEFAULT_BACKEND, DEFAULT_NODES, REQUIREMENTS, SERVER_MEMORY_SHARE,
                           BatchPlan, Bundle, ClusterError, GpuSplit, node_commands, plan_batch, plan_split)
from .cluster_readme import readme_text, translations, warnings_for
from .config import USER_PREFIX, RunConfig
from .prompts import reply_prefill

FILES = Path(__file__).resolve().parent / "cluster_files"
PACKAGE = Path(__file__).resolve().parent
VENDOR_ROOTS = ("rewards/rubric.py", "rewards/builtin.py", "cpu_backend.py", "chat_format.py")
BUNDLE_MARKER = "bundle.json"
LOGS = "logs"  # slurm.sbatch's --output goes here, and SLURM does not create the folder


# -- the source -----------------------------------------------------------------------------------
def load_source(source: str | Path) -> tuple[RunConfig, str, Path | None]:
    """(config, name, run dir or None) for a run directory or a config YAML (applied over its preset).

    The data file and reward_file are made absolute as training makes them (runs.absolute_paths, when
    it creates the run): a run's config.yaml already holds them absolute, so exporting works from any
    folder (the app's too); a config YAML's relative paths start from the folder you run from, as
    `train` takes them, and `~` is expanded."""
    from .runs import absolute_paths, open_run
    from .validation import validate

    path = Path(source).expanduser()
    if path.is_dir():
        run = open_run(path)
        config, name, run_dir = validate(run.config()), run.path.name, run.path
    elif path.is_file():
        config, name, run_dir = _config_file(path), path.stem, None
    else:
        raise ClusterError(f"{path}: no such run directory or config file; give a run folder (see `python -m "
                           f"grpo_box runs`) or a config YAML")
    absolute_paths(config)
    return config, name, run_dir


def _config_file(path: Path) -> RunConfig:
    from .config import load_yaml
    from .presets import preset_names, resolve_config
    from .validation import validate

    preset = load_yaml(path).get("preset") or "cpu"
    if preset in preset_names():
        return resolve_config(preset, str(path))
    return validate(RunConfig.load(path))


def cluster_model(config: RunConfig) -> tuple[str, list[str]]:
    """The model the cluster loads (unquantized), and notes on what to do with it."""
    from .models import BUNDLED_NAME, bundled_model_dir, is_bundled, strip_4bit_suffix

    name = config.model.name
    if is_bundled(name):
        folder = bundled_model_dir()
        return str(folder), [f"model: the bundled {BUNDLED_NAME} is a local folder ({folder}, a float32 import of "
                             "HuggingFaceTB/SmolLM2-135M-Instruct's Q4_1 GGUF): copy it to the cluster and set MODEL"]
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        return str(folder), [f"model: {folder} is a local folder: copy it to the cluster and set MODEL to its path"]
    plain = strip_4bit_suffix(name)
    if plain != name:
        return plain, [f"model: {name} holds 4-bit weights; the cluster loads the 16-bit {plain}"]
    return name, []


def model_heads(model: str) -> tuple[int, int] | None:
    """(attention heads, key-value heads) from the model's config.json on disk, without a download."""
    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a Hub id, or no cache
            return None
        if not isinstance(found, str):
            return None
        path = Path(found)
    config = json.loads(path.read_text())
    config = config.get("text_config", config)
    heads = config.get("num_attention_heads")
    return (int(heads), int(config.get("num_key_value_heads") or heads)) if heads else None


def reward_names(config: RunConfig) -> list[str]:
    """The names TRL logs the rubric's functions under (rewards/<name>/mean), as build_rubric names
    them: a name used twice gets _2, _3 … (without importing the user's reward file)."""
    seen: Counter[str] = Counter()
    names = []
    for spec in config.rewards:
        seen[spec.name] += 1
        names.append(spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}")
    return names


# -- the files ------------------------------------------------------------------------------------
def grpo_settings(config: RunConfig, split: GpuSplit, batch: BatchPlan) -> dict[str, Any]:
    """trl.GRPOConfig's keyword arguments for the cluster (same objective as train.grpo_args)."""
    from .train import loss_settings

    g = config.grpo
    settings: dict[str, Any] = {
        "output_dir": "output/checkpoints", "max_steps": g.max_steps, "learning_rate": g.learning_rate,
        "per_device_train_batch_size": batch.per_device, "gradient_accumulation_steps": batch.grad_accum,
        "num_generations": g.num_generations, "max_completion_length": g.max_completion_length,
        "temperature": g.temperature, "beta": g.beta, "loss_type": g.loss_type, "epsilon": g.epsilon,
        **loss_settings(config),
        "optim": "adamw_torch" if "8bit" in g.optim else g.optim, "weight_decay": g.weight_decay,
        "warmup_steps": g.warmup_ratio, "lr_scheduler_type": g.lr_scheduler_type, "max_grad_norm": g.max_grad_norm,
        "seed": g.seed, "reward_weights": [float(r.weight) for r in config.rewards],
        "logging_steps": 1, "save_strategy": "steps", "save_steps": config.output.save_steps,
        "save_total_limit": config.output.keep_checkpoints, "report_to": "none", "remove_unused_columns": False,
        "bf16": True, "gradient_checkpointing": bool(config.lora.gradient_checkpointing),
        "model_init_kwargs": {"dtype": "bfloat16"}, "use_vllm": True, "vllm_mode": split.mode,
    }
    settings.update(_vllm_settings(config, split))
    return settings


def _vllm_settings(config: RunConfig, split: GpuSplit) -> dict[str, Any]:
    if split.mode == "server":
        return {"vllm_server_host": "127.0.0.1", "vllm_server_port": 8000, "vllm_server_timeout": 1800.0}
    return {"vllm_gpu_memory_utilization": config.model.gpu_memory_utilization,
            "vllm_enable_sleep_mode": config.model.vllm_standby, "vllm_max_model_length": config.model.max_seq_length}


def job_settings(config: RunConfig, name: str, model: str, split: GpuSplit, batch: BatchPlan,
                 user_file: str | None) -> dict[str, Any]:
    """job.yaml: what train.py needs besides GRPOConfig."""
    lora = config.lora
    return {
        "run_name": name, "model": model, "template": config.data.template,
        "reply_prefill": reply_prefill(config.data),  # train.py writes it into the chat template, as the app does
        "lora": {"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
                 "target_modules": list(lora.target_modules), "task_type": "CAUSAL_LM"},
        "rubric": [{"name": r.name, "weight": float(r.weight), "params": dict(r.params)} for r in config.rewards],
        "reward_names": reward_names(config), "reward_file": user_file, "reward_timeout": config.reward_timeout,
        "data": {"train": "data/train.jsonl", "held_out": "data/held_out.jsonl"},
        "split": {**asdict(split), "mode": split.mode},
        "batch": {**asdict(batch), "global_batch": batch.global_batch, "run_global": batch.run_global},
    }


def accelerate_settings(backend: str, split: GpuSplit) -> dict[str, Any]:
    """TRL's own accelerate config for the backend (trl/accelerate_configs), with the process counts."""
    import importlib.util

    spec = importlib.util.find_spec("trl")  # its folder, without importing trl (and torch) into the app
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None:
        raise ClusterError("trl is not installed here: the bundle takes its accelerate config from TRL's own")
    name = {"zero3": "zero3.yaml", "fsdp": "fsdp2.yaml"}[backend]
    settings = yaml.safe_load((folder / "accelerate_configs" / name).read_text())
    settings.update(num_processes=split.train_processes, num_machines=split.train_machines, machine_rank=0)
    return settings


def requirements_text(backend: str) -> str:
    pins = dict(REQUIREMENTS)
    if backend == "zero3":
        pins["deepspeed"] = DEEPSPEED
    lines = [f"{name}=={version}" for name, version in pins.items()]
    return ("# Python 3.11+, Linux, NVIDIA driver >= 580 (vLLM 0.31 and torch 2.13 are built for CUDA 13).\n"
            "# No unsloth, no bitsandbytes: the cluster trains plain TRL with bf16 LoRA.\n" + "\n".join(lines) + "\n")


def render(template: str, values: dict[str, Any]) -> str:
    """cluster_files/<template> with each @@KEY@@ replaced; a placeholder left over is a bug."""
    text = (FILES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    if "@@" in text:
        raise AssertionError(f"{template}: unfilled placeholder near {text[text.index('@@'):][:40]!r}")
    return text


def script_values(name: str, model: str, split: GpuSplit, config: RunConfig) -> dict[str, Any]:
    return {"NAME": name, "SPLIT": split.describe(), "MODEL": model, "VLLM_MODE": split.mode,
            "VLLM_DEVICES": split.vllm_devices() or "none", "TRAIN_DEVICES": split.train_devices(),
            "NODE_DEVICES": ",".join(str(i) for i in range(split.per_node)), "VLLM_TP": split.vllm_tp or 1,
            "VLLM_UTIL": SERVER_MEMORY_SHARE, "MAX_MODEL_LEN": config.model.max_seq_length,
            "NUM_MACHINES": split.train_machines, "NUM_PROCESSES": split.train_processes, "NODES": split.nodes,
            "GPUS_PER_NODE": split.per_node,
            "NODE_COMMANDS": "\n".join(f"  {where}: {command}" for where, command in node_commands(split))
            if split.nodes > 1 else ""}


# -- the vendored reward code ---------------------------------------------------------------------
def vendor_closure(roots: tuple[str, ...] = VENDOR_ROOTS) -> list[str]:
    """The grpo_box modules (paths relative to the package) that `roots` import, directly or not,
    with every package __init__ on the way; imports inside functions count too."""
    found: set[str] = {"__init__.py"}
    todo = list(roots)
    while todo:
        rel = todo.pop()
        if rel in found:
            continue
        found.add(rel)
        todo += _package_inits(rel) + _imported(rel)
    return sorted(found)


def _package_inits(rel: str) -> list[str]:
    parts = Path(rel).parts[:-1]
    return [str(Path(*parts[:i], "__init__.py")) for i in range(1, len(parts) + 1)]


def _imported(rel: str) -> list[str]:
    """Modules of grpo_box that the file `rel` imports (absolute `grpo_box.…` or relative)."""
    package = list(Path(rel).parts[:-1])
    out = []
    for node in ast.walk(ast.parse((PACKAGE / rel).read_text())):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            if base is not None:
                out += [m for m in [_module_file(base)] + [_module_file(base + [a.name]) for a in node.names] if m]
        elif isinstance(node, ast.Import):
            out += [m for a in node.names if a.name.startswith("grpo_box.")
                    for m in [_module_file(a.name.split(".")[1:])] if m]
    return out


def _resolve(module: str | None, level: int, package: list[str]) -> list[str] | None:
    if level:
        base = package[: len(package) - (level - 1)] if level > 1 else list(package)
        return base + (module.split(".") if module else [])
    if module and (module == "grpo_box" or module.startswith("grpo_box.")):
        return module.split(".")[1:]
    return None


def _module_file(parts: list[str]) -> str | None:
    if not parts:
        return None
    if (PACKAGE / Path(*parts) / "__init__.py").is_file():
        return str(Path(*parts, "__init__.py"))
    return str(Path(*parts).with_suffix(".py")) if (PACKAGE / Path(*parts).with_suffix(".py")).is_file() else None


def vendor(target: Path) -> dict[str, str]:
    """Copy the reward code into target/grpo_box; returns {path: sha256} (written as MANIFEST.json)."""
    manifest = {}
    for rel in vendor_closure():
        dest = target / "grpo_box" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE / rel, dest)
        manifest[f"grpo_box/{rel}"] = hashlib.sha256(dest.read_bytes()).hexdigest()
    (target / "MANIFEST.json").write_text(json.dumps({"grpo_box_version": __version__, "sha256": manifest}, indent=2))
    return manifest


# -- the bundle -----------------------------------------------------------------------------------
def default_out(name: str, run_dir: Path | None, split: GpuSplit, backend: str) -> Path:
    folder = f"{split.gpus}gpu" + (f"-{split.nodes}nodes" if split.nodes > 1 else "") + f"-{backend}"
    return run_dir / "cluster" / folder if run_dir else Path.cwd() / f"{name}-cluster-{folder}"


def check_out(out: Path) -> None:
    """`out` may be missing, an empty folder or an earlier bundle (replaced once the new one is
    complete); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise ClusterError(f"{out} is a file: give --out a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / BUNDLE_MARKER).is_file():
        raise ClusterError(f"{out} exists and is not a cluster bundle: choose another --out, or empty it")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to write the bundle into; swapped in for `out` when the block
    ends without an error, deleted either way, so a failure leaves no half bundle (and keeps an
    earlier one). The same shape as merge.py's `_save_atomic`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the bundle is an ordinary output folder
        yield tmp
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_bundle(source: str | Path, gpus: int, nodes: int = DEFAULT_NODES, backend: str = DEFAULT_BACKEND,
                 vllm_gpus: int | None = None, out: str | Path | None = None) -> Bundle:
    """Write the bundle for `source` (a run directory or a config YAML); see the module docstring."""
    if backend not in BACKENDS:
        raise ClusterError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    config, name, run_dir = load_source(source)
    model, model_notes = cluster_model(config)
    heads = model_heads(model)
    split = plan_split(gpus, nodes, vllm_gpus, heads)
    batch = plan_batch(config.grpo, split.train_processes)
    target = Path(out).expanduser().resolve() if out else default_out(name, run_dir, split, backend)
    check_out(target)
    with staged(target) as folder:
        bundle = Bundle(folder, split, batch, backend, reward_names(config))
        _write_files(bundle, config, name, model, run_dir)
        bundle.notes = model_notes + translations(config, split, batch)
        bundle.warnings = warnings_for(config, split, batch, heads)
        (folder / "README.md").write_text(readme_text(bundle, config, name, model, source))
    bundle.path = target
    return bundle


def _write_files(bundle: Bundle, config: RunConfig, name: str, model: str, run_dir: Path | None) -> None:
    target, split = bundle.path, bundle.split
    user_file = _copy_user_rewards(config, target)
    _write_data(config, target / "data")
    _dump(target / "grpo_config.yaml", grpo_settings(config, split, bundle.batch))
    _dump(target / "job.yaml", job_settings(config, name, model, split, bundle.batch, user_file))
    _dump(target / "accelerate_config.yaml", accelerate_settings(bundle.backend, split))
    config.save(target / "run_config.yaml")
    (target / "requirements.txt").write_text(requirements_text(bundle.backend))
    vendor(target / "vendor")
    (target / LOGS).mkdir()
    (target / LOGS / ".keep").write_text("")  # kept by copies that drop empty folders (git, some archivers)
    shutil.copyfile(FILES / "train.py", target / "train.py")
    values = script_values(name, model, split, config)
    _write_script(target / "launch.sh", render("launch.sh", values))
    if split.nodes > 1:
        _write_script(target / "slurm.sbatch", render("slurm.sbatch", values))
    marker = {"grpo_box_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "run_name": name,
              "source": str(run_dir) if run_dir else None, "backend": bundle.backend, "split": asdict(split),
              "batch": asdict(bundle.batch), "reward_names": bundle.reward_names}
    (target / BUNDLE_MARKER).write_text(json.dumps(marker, indent=2))


def _copy_user_rewards(config: RunConfig, target: Path) -> str | None:
    if not any(r.name.startswith(USER_PREFIX) for r in config.rewards):
        return None
    source = Path(config.reward_file or "")
    if not config.reward_file or not source.is_file():
        raise ClusterError(f"the rubric uses {USER_PREFIX} rewards but reward_file={config.reward_file!r} is not a "
                           "file: point reward_file at your reward functions")
    dest = target / "user_rewards" / source.name
    dest.parent.mkdir(parents=True)
    shutil.copyfile(source, dest)
    return f"user_rewards/{source.name}"


def _write_data(config: RunConfig, folder: Path) -> None:
    """The rows exactly as the appliance trains on them (template applied), and the held-out split."""
    from .data import load_rows

    train, held_out = load_rows(config)
    folder.mkdir(parents=True)
    for rows, name in ((train, "train.jsonl"), (held_out, "held_out.jsonl")):
        with (folder / name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
