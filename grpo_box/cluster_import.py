"""Bring a cluster job's LoRA adapter back as a run directory (`python -m grpo_box import-adapter`).

A cluster bundle's train.py (cluster.py) writes `output/adapter/` (PEFT LoRA + tokenizer),
`output/metrics.jsonl`, `output/job.json` and `output/run_config.yaml` (the appliance's config).
`import_adapter` turns that folder into an ordinary run: config.yaml (the run's own, so chat uses
its system prompt and eval its held-out split), adapter/, metrics.jsonl (the Runs tab plots it) and
status "finished". The app and the CLI then chat with it, evaluate and export it as if they had
trained it. The adapter's `base_model_name_or_path` (a path on the cluster) is pointed at this
machine's base model; the original is kept in imported.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import UserError
from .runs import ADAPTER, ADAPTER_CONFIG, METRICS, RunDir, create_run, is_adapter_dir, read_adapter_config, write_text_atomic

IMPORT_RECORD = "imported.json"


class ImportAdapterError(UserError, ValueError):
    """A folder that holds no adapter or no run config; the message says what to give."""


def find_adapter(folder: Path) -> Path:
    """The adapter in `folder`: the folder itself, its adapter/, or its newest checkpoint-N/."""
    candidates = [folder, folder / ADAPTER]
    numbered = [c for c in folder.glob("checkpoints/checkpoint-*") if c.name.split("-")[-1].isdigit()]
    candidates += sorted(numbered, key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for candidate in candidates:
        if is_adapter_dir(candidate):
            return candidate
    raise ImportAdapterError(f"{folder}: no LoRA adapter ({ADAPTER_CONFIG}) in it, in adapter/ or in a "
                             "checkpoints/checkpoint-N/; give the job's output folder")


def find_run_config(folder: Path, adapter: Path) -> Path:
    for candidate in (folder, adapter, folder.parent, adapter.parent):
        if (candidate / "run_config.yaml").is_file():
            return candidate / "run_config.yaml"
    raise ImportAdapterError(f"{folder}: no run_config.yaml next to the adapter; it is in the cluster bundle "
                             "(and train.py copies it into output/): put it beside the adapter")


def import_adapter(source: str | Path, name: str | None = None) -> RunDir:
    """Make a run directory from a cluster job's output folder; returns it."""
    folder = Path(source).expanduser().resolve()
    if not folder.is_dir():
        raise ImportAdapterError(f"{folder}: no such folder; give the cluster job's output folder")
    adapter = find_adapter(folder)
    config = RunConfig.load(find_run_config(folder, adapter))
    job = _read_json(folder / "job.json")
    config.output.run_name = name or f"{config.output.run_name or job.get('run_name') or 'run'}-cluster"
    _match_lora(config, adapter)
    run = create_run(config)
    shutil.copytree(adapter, run.adapter_dir)
    original_base = _point_at_local_base(run, config)
    _copy_metrics(folder, run)
    steps = int(job.get("steps") or _last_step(run))
    run.set_status("finished", step=steps, max_steps=int(job.get("max_steps") or steps), phase="done",
                   imported=True)
    record = {"from": str(folder), "adapter": str(adapter), "job": job, "original_base_model": original_base}
    write_text_atomic(run.file(IMPORT_RECORD), json.dumps(record, indent=2))
    return run


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _match_lora(config: RunConfig, adapter: Path) -> None:
    """The run's LoRA settings as the adapter has them (they describe the adapter on disk)."""
    peft = read_adapter_config(adapter)
    config.lora.r = int(peft.get("r", config.lora.r))
    config.lora.alpha = int(peft.get("lora_alpha", config.lora.alpha))
    targets = peft.get("target_modules")
    if isinstance(targets, list) and targets:
        config.lora.target_modules = sorted(targets)
    config.model.max_lora_rank = max(config.model.max_lora_rank, config.lora.r)


def _point_at_local_base(run: RunDir, config: RunConfig) -> str | None:
    from .models import is_bundled, resolve_model

    path = run.adapter_dir / ADAPTER_CONFIG
    peft = read_adapter_config(run.adapter_dir)
    original = peft.get("base_model_name_or_path")
    name = config.model.name
    peft["base_model_name_or_path"] = resolve_model(name) if is_bundled(name) else name
    write_text_atomic(path, json.dumps(peft, indent=2))
    return original


def _copy_metrics(folder: Path, run: RunDir) -> None:
    if (folder / METRICS).is_file():
        shutil.copyfile(folder / METRICS, run.file(METRICS))


def _last_step(run: RunDir) -> int:
    metrics = run.metrics()
    return int(metrics[-1].get("step", 0)) if metrics else 0
