"""The run directory: the only channel between a training child process and whoever watches it.

Layout of `<runs_dir>/<run_name>/`:
    config.yaml        the RunConfig the run was started with (local data and reward-file paths made
                       absolute, so eval and resume work from any directory)
    status.json        {"state": running|finished|failed|stopped|retrying, "step", "max_steps", "error", …}
    metrics.jsonl      one JSON line per optimizer step: every TRL metric, wall time, memory
    samples.jsonl      prompt, completions and per-function rewards every N steps
    train.log          the child's stdout/stderr
    STOP               created by `request_stop()`; the trainer saves a checkpoint and stops
    checkpoints/       Trainer checkpoints (checkpoint-<step>/), used by `resume`
    adapter/           the final LoRA adapter + tokenizer (PEFT format)
    eval.json          evaluation results; export/ holds merged models and GGUF files

Files are written whole (status) or appended line by line (metrics, samples), so a reader never
sees a half-written JSON document. Nothing secret (tokens) is ever written here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOG = "train.log"
STOP = "STOP"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
EVAL = "eval.json"
EXPORT = "export"

RETRYING = "retrying"  # out of memory with auto_fit: a smaller config is saved, to resume in a fresh process
STATES = ("created", "running", "finished", "failed", "stopped", RETRYING)


def default_runs_dir() -> Path:
    from .models import data_home

    return data_home() / "runs"


def runs_root(config: RunConfig) -> Path:
    return Path(config.output.runs_dir).expanduser() if config.output.runs_dir else default_runs_dir()


@dataclass
class RunDir:
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    # -- config -------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        return RunConfig.load(self.file(CONFIG))

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        path = self.file(STATUS)
        return json.loads(path.read_text()) if path.is_file() else {"state": "created"}

    def set_status(self, state: str, **fields: Any) -> None:
        assert state in STATES, state
        data = self.status()
        data.update(fields, state=state, updated=time.time())
        _write_atomic(self.file(STATUS), json.dumps(data, indent=2))

    # -- metrics / samples --------------------------------------------------------------------
    def append(self, name: str, record: dict[str, Any]) -> None:
        with self.file(name).open("a") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        path = self.file(name)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metric lines after `last_step` (a resume recomputes those steps)."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= last_step]
        _write_atomic(self.file(METRICS), "".join(json.dumps(r, default=_jsonable) + "\n" for r in kept))

    def metrics(self) -> list[dict[str, Any]]:
        return self.read_jsonl(METRICS)

    def samples(self) -> list[dict[str, Any]]:
        return self.read_jsonl(SAMPLES)

    # -- stop / checkpoints / adapter ---------------------------------------------------------
    def request_stop(self) -> None:
        self.file(STOP).write_text(str(time.time()))

    def stop_requested(self) -> bool:
        return self.file(STOP).exists()

    def clear_stop(self) -> None:
        self.file(STOP).unlink(missing_ok=True)

    def checkpoints(self) -> list[Path]:
        root = self.file(CHECKPOINTS)
        found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def last_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    @property
    def adapter_dir(self) -> Path:
        return self.file(ADAPTER)

    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()


def create_run(config: RunConfig) -> RunDir:
    """Make a fresh run directory for `config` and write its config.yaml."""
    name = config.output.run_name or time.strftime("%Y%m%d-%H%M%S") + f"-{config.preset}"
    path = runs_root(config) / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = runs_root(config) / f"{name}-{suffix}"
    path.mkdir(parents=True)
    config.output.run_name = path.name
    absolute_paths(config)
    run = RunDir(path)
    config.save(run.file(CONFIG))
    run.set_status("created", step=0, max_steps=config.grpo.max_steps)
    return run


def absolute_paths(config: RunConfig) -> None:
    """Make a local `data.source` file and `reward_file` absolute (relative to this process's cwd)."""
    from .data import local_source_path  # data imports `datasets`; listing runs should not

    source = local_source_path(config.data.source)
    if source is not None:
        config.data.source = str(source.resolve())
    if config.reward_file:
        config.reward_file = str(Path(config.reward_file).expanduser().resolve())


def open_run(path: str | Path) -> RunDir:
    run = RunDir(Path(path).expanduser())
    if not run.file(CONFIG).is_file():
        raise FileNotFoundError(f"{run.path} is not a GRPO Box run directory (no {CONFIG})")
    return run


def list_runs(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One summary per run under `root` (newest first): name, state, step, last reward."""
    root = Path(root).expanduser() if root else default_runs_dir()
    rows = []
    for path in sorted(root.glob("*/" + CONFIG), key=lambda p: p.stat().st_mtime, reverse=True):
        run = RunDir(path.parent)
        status = run.status()
        metrics = run.metrics()
        rows.append(
            {
                "name": run.path.name,
                "path": str(run.path),
                "state": status.get("state"),
                "step": status.get("step", 0),
                "max_steps": status.get("max_steps"),
                "reward": metrics[-1].get("reward") if metrics else None,
                "error": status.get("error"),
            }
        )
    return rows


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
