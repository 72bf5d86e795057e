"""The run directory: the only channel between a training child process and whoever watches it.

Layout of `<runs_dir>/<run_name>/`:
    config.yaml        the RunConfig the run was started with (local data and reward-file paths made
                       absolute, so eval and resume work from any directory)
    status.json        {"state": running|finished|failed|stopped|retrying, "step", "max_steps", "error",
                       "created_at" (when create_run made the run; the run list sorts by it), …}
    metrics.jsonl      one JSON line per optimizer step: every TRL metric, wall time, memory
    samples.jsonl      prompt, completions and per-function rewards every N steps
    train.log          the child's stdout/stderr
    STOP               created by `request_stop()`; the trainer saves a checkpoint and stops
    checkpoints/       Trainer checkpoints (checkpoint-<step>/), used by `resume`
    adapter/           the final LoRA adapter + tokenizer (PEFT format), and grpo_box.json: the step it
                       was saved at (a newer checkpoint after a cut-short `resume --steps N` wins)
    eval.json          evaluation results; export/ holds merged models and GGUF files

Files are written whole (status, through `write_text_atomic`) or appended line by line (metrics,
samples), so a reader never sees a half-written JSON document. A crash during an append can still
leave a torn last line: readers skip it (and `repair_tail` cuts it before the next append), while a
broken line anywhere else is an error naming the file and line. A status write that cannot complete
(a full disk) falls back to rewriting the file in place, so the final state is still recorded. A
checkpoint counts only once the Trainer has written its `trainer_state.json` (the last file it
saves) and it reads as JSON; a half-written one is skipped. Nothing secret (tokens) is ever written here.

Runs are listed newest first by creation (`run_dirs`), skipping one deleted while it is listed.
`open_run` and `create_run` give absolute paths, so the lock notes that name a run (locks.py)
reattach from any working directory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import locks
from .atomic import write_text_atomic  # re-exported: the engine's one atomic write
from .config import ConfigError, RunConfig, check_run_name
from .errors import UserError

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
UNSETTLED = ("created", "running")  # a worker that exits in these states died without saying why
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint: a readable one marks it complete
ADAPTER_RECORD = "grpo_box.json"  # in adapter/: {"step": N}, the training step the adapter was saved at


class NotARunError(UserError, FileNotFoundError):
    """A path that is not a run directory."""


class RunFileError(UserError, ValueError):
    """A run file that cannot be read; the message names the file and line."""


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

    # -- config -----------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        return RunConfig.load(self.file(CONFIG))

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        path = self.file(STATUS)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:  # not written yet (or the run was just deleted)
            return {"state": "created"}
        except (ValueError, UnicodeDecodeError):
            # only a write that failed half-way can leave this (see set_status); the next write repairs it
            return {"state": "failed", "error": f"{path} is unreadable (a write was cut off); resume to continue"}
        return data if isinstance(data, dict) else {"state": "failed", "error": f"{path} is not a JSON object"}

    def set_status(self, state: str, **fields: Any) -> None:
        assert state in STATES, state
        data = self.status()
        data.update(fields, state=state, updated=time.time())
        write_text_atomic(self.file(STATUS), json.dumps(data, indent=2), fallback_in_place=True)

    def worker_alive(self) -> bool:
        """Whether a worker lives for this run: it holds the run's lock, or (while it starts up) the
        machine lock names this run. Locks, not pids: a recycled pid cannot look alive."""
        if locks.run_is_training(self.path):
            return True
        note = locks.running_job()
        return bool(note and note.get("run")) and Path(note["run"]).resolve() == self.path.resolve()

    def settle_dead(self, how: str = "ended", where: str | None = None) -> str | None:
        """Mark the run failed when its status says it trains but no worker lives (it was killed, or
        the machine went down); the message, or None when there was nothing to settle."""
        if self.status().get("state") not in UNSETTLED or self.worker_alive():
            return None
        message = f"the training process {how} before finishing; see {where or self.file(LOG)}"
        with contextlib.suppress(OSError):  # a read-only or full run folder: the caller still reports it
            self.set_status("failed", error=message)
        return message

    def discard_untrained(self) -> None:
        """Delete this run folder when nothing was trained in it (a start refused after it was made)."""
        if not self.has_history():
            shutil.rmtree(self.path, ignore_errors=True)

    def has_history(self) -> bool:
        """Whether anything was trained in this run: a step, a metric line, a checkpoint or an adapter."""
        metrics = self.file(METRICS)
        return bool(self.status().get("step") or (metrics.is_file() and metrics.stat().st_size)
                    or self._checkpoint_dirs() or self.has_adapter())

    def created_at(self) -> float | None:
        """When the run was made: status.json's `created_at` (written once by create_run), else, for
        an older run, config.yaml's modification time; None when the run is gone."""
        created = self.status().get("created_at")
        if isinstance(created, (int, float)) and not isinstance(created, bool):
            return float(created)
        try:
            return self.file(CONFIG).stat().st_mtime
        except OSError:
            return None

    # -- metrics / samples ------------------------------------------------------------------------
    def append(self, name: str, record: dict[str, Any]) -> None:
        with self.file(name).open("a") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        path = self.file(name)
        if not path.is_file():
            return []
        return parse_jsonl(path.read_bytes(), path)[0]

    def truncate_after(self, last_step: int) -> None:
        """Drop metric and sample lines after `last_step`: a resume recomputes those steps, so the files
        agree with the checkpoint the run continues from (0: no checkpoint, start over)."""
        for name in (METRICS, SAMPLES):
            if self.file(name).is_file():
                kept = [r for r in self.read_jsonl(name) if r.get("step", 0) <= last_step]
                write_text_atomic(self.file(name), "".join(json.dumps(r, default=_jsonable) + "\n" for r in kept))

    def repair_tail(self) -> None:
        """Cut a torn last line (a crash during an append) so the next append starts on a fresh line."""
        for name in (METRICS, SAMPLES):
            path = self.file(name)
            if path.is_file():
                data = path.read_bytes()
                if data and not data.endswith(b"\n"):
                    with path.open("r+b") as fh:
                        fh.truncate(data.rfind(b"\n") + 1)

    def metrics(self) -> list[dict[str, Any]]:
        return self.read_jsonl(METRICS)

    def samples(self) -> list[dict[str, Any]]:
        return self.read_jsonl(SAMPLES)

    # -- stop / checkpoints / adapter -------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the worker to save a checkpoint and stop (a STOP file it checks after every step)."""
        try:
            self.file(STOP).write_text(str(time.time()))
        except OSError as exc:
            raise UserError(f"cannot ask {self.path} to stop: {exc.strerror} ({self.file(STOP)}); make the run "
                            "folder writable, or stop the worker process itself") from exc

    def stop_requested(self) -> bool:
        return self.file(STOP).exists()

    def clear_stop(self) -> None:
        self.file(STOP).unlink(missing_ok=True)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (see TRAINER_STATE)."""
        return [p for p in self._checkpoint_dirs() if _complete(p)]

    def incomplete_checkpoints(self) -> list[Path]:
        """Checkpoint folders a crash or a full disk cut off before the Trainer finished them."""
        return [p for p in self._checkpoint_dirs() if not _complete(p)]

    def _checkpoint_dirs(self) -> list[Path]:
        root = self.file(CHECKPOINTS)
        found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def last_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def resume_step(self) -> int:
        """The step a resume continues from: the last complete checkpoint's, 0 without one."""
        last = self.last_checkpoint()
        return int(last.name.split("-")[-1]) if last else 0

    def check_resumable(self, how: str | None = None) -> None:
        """Refuse to resume a finished run: going further must say how many more steps (`extend`).
        `how` says where to give them (default: the CLI's `resume --steps N`)."""
        status = self.status()
        if status.get("state") == "finished":
            how = how or f"say how many more steps: `python -m grpo_box resume {self.path} --steps N`"
            raise UserError(
                f"{self.path.name} already finished its {status.get('max_steps', '?')} steps; to train further, "
                f"{how} (the finished adapter is kept as adapter-step-{status.get('step', 0)})")

    def extend(self, steps: int) -> int:
        """Allow `steps` more steps on a stopped or finished run, counted from the step a resume
        continues from (the last complete checkpoint's; 0 without one), not from the status step,
        which runs ahead of it when the run was killed between checkpoints. The current adapter is
        kept as adapter-step-<step> (and the history stays); returns the new max_steps."""
        if steps < 1:
            raise UserError(f"--steps {steps}: give a number of additional steps of at least 1")
        status = self.status()
        config = self.config()
        config.grpo.max_steps = self.resume_step() + steps
        if self.has_adapter():
            keep = self.file(f"{ADAPTER}-step-{self.adapter_step() or int(status.get('step', 0))}")
            if not keep.exists():
                shutil.copytree(self.adapter_dir, keep)
        write_text_atomic(self.file(CONFIG), config.to_yaml())
        state = status.get("state")
        self.set_status("stopped" if state == "finished" else state, max_steps=config.grpo.max_steps)
        return config.grpo.max_steps

    @property
    def adapter_dir(self) -> Path:
        return self.file(ADAPTER)

    def has_adapter(self) -> bool:
        return is_adapter_dir(self.adapter_dir)

    def record_adapter_step(self, step: int) -> None:
        write_text_atomic(self.adapter_dir / ADAPTER_RECORD, json.dumps({"step": step}))

    def adapter_step(self) -> int | None:
        """The training step adapter/ was saved at; None when not recorded (an older or imported run)."""
        try:
            return int(json.loads((self.adapter_dir / ADAPTER_RECORD).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished `checkpoint`: its trainer_state.json is a JSON object (an empty
    or cut-off one means the disk filled up or the process died while writing it)."""
    try:
        return isinstance(json.loads((checkpoint / TRAINER_STATE).read_text()), dict)
    except (OSError, ValueError):
        return False


def create_run(config: RunConfig) -> RunDir:
    """Make a fresh run directory for a copy of `config` and write its config.yaml.

    A run name the user chose that is taken is refused (say which, and what to do); a generated
    name gets a -2, -3 … suffix. The caller's config object is not changed."""
    config = config.copy()
    problem = check_run_name(config.output.run_name)
    if problem:
        raise ConfigError(problem)
    root = runs_root(config)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output.runs_dir={str(root)!r} is a file, not a folder: give a folder for the runs")
    root = root.resolve()  # absolute: the lock notes name the run (see the module docstring)
    chosen = config.output.run_name
    name = chosen or time.strftime("%Y%m%d-%H%M%S") + f"-{config.preset}"
    path = root / name
    if chosen and path.exists():
        raise ConfigError(f"output.run_name={chosen!r}: a run with that name exists ({path}); resume it, delete it, "
                          "or choose another name")
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{name}-{suffix}"
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {path}: {exc.strerror}; set output.runs_dir to a "
                          "writable folder") from exc
    config.output.run_name = path.name
    absolute_paths(config)
    run = RunDir(path)
    write_text_atomic(run.file(CONFIG), config.to_yaml())
    run.set_status("created", step=0, max_steps=config.grpo.max_steps, created_at=time.time())
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
    """The run directory at `path`, as an absolute path; NotARunError when it holds no config.yaml."""
    run = RunDir(Path(path).expanduser().resolve())
    if not run.file(CONFIG).is_file():
        raise NotARunError(f"{run.path} is not a GRPO Box run directory (no {CONFIG}); `python -m grpo_box runs` "
                           "lists the runs")
    return run


def run_dirs(root: str | Path | None = None) -> list[RunDir]:
    """The runs under `root` (default: the default runs folder), newest first by creation (see
    `RunDir.created_at`), with absolute paths as `open_run` gives them. A run deleted while it is
    listed (from another page) is left out."""
    root = (Path(root).expanduser() if root else default_runs_dir()).resolve()
    found = []
    for path in root.glob("*/" + CONFIG):
        run = RunDir(path.parent)
        created = run.created_at()
        if created is not None:
            found.append((created, run))
    found.sort(key=lambda pair: pair[0], reverse=True)
    return [run for _, run in found]


def list_runs(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One summary per run under `root` (newest first): name, state, step, last reward, start time,
    held-out accuracy when evaluated. A run whose files cannot be read is listed with the reason;
    one deleted while it is listed is left out."""
    rows = []
    for run in run_dirs(root):
        try:
            rows.append(summarize(run))
        except OSError:
            if run.file(CONFIG).exists():
                raise
    return rows


def summarize(run: RunDir) -> dict[str, Any]:
    status = run.status()
    settled = run.settle_dead() if status.get("state") == "running" else None  # its worker died unwatched
    if settled:  # shown as settled even where the run folder cannot be written
        status = {**status, "state": "failed", "error": settled}
    row = {"name": run.path.name, "path": str(run.path), "state": status.get("state"),
           "step": status.get("step", 0), "max_steps": status.get("max_steps"), "reward": None,
           "accuracy": None, "started": run.created_at(), "error": status.get("error")}
    try:
        metrics = run.metrics()
        row["reward"] = metrics[-1].get("reward") if metrics else None
    except RunFileError as exc:
        row["error"] = str(exc)
    row["accuracy"] = _trained_accuracy(run)
    return row


def _trained_accuracy(run: RunDir) -> float | None:
    try:
        data = json.loads(run.file(EVAL).read_text())
        return data.get("trained", {}).get("accuracy")
    except (OSError, ValueError, AttributeError):
        return None


def parse_jsonl(data: bytes, path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of complete lines, and how many bytes they span. A torn last line (no newline, not
    JSON) is left out; a bad line before the end raises RunFileError naming the file and line."""
    records = []
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    if tail.strip():
        try:
            records_tail = [json.loads(tail)]  # a complete record that only lacks its newline
            end = len(data)
        except ValueError:
            records_tail = []
    else:
        records_tail = []
    for number, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise RunFileError(f"{path}, line {number}: not a JSON record ({exc}); remove or fix that line") from exc
    return records + records_tail, end


class JsonlTail:
    """Reads the records appended to a JSONL file since the last call (for a monitor's poll)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.inode: int | None = None

    def read_new(self) -> tuple[list[dict[str, Any]], bool]:
        """New records, and True when the file was rewritten (a resume truncated it: a new file, see
        `truncate_after`, or a shorter one): then the records are the whole file again and the caller
        must drop what it had. A new inode tells a rewrite even once it has grown past the old size."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            reset = self.offset > 0
            self.offset, self.inode = 0, None
            return [], reset
        reset = stat.st_size < self.offset or (self.inode is not None and stat.st_ino != self.inode)
        self.inode = stat.st_ino
        if reset:
            self.offset = 0
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        data = data[: data.rfind(b"\n") + 1]  # only whole lines: the writer may be mid-append
        records, used = parse_jsonl(data, self.path)
        self.offset += used
        return records, reset


ADAPTER_CONFIG = "adapter_config.json"  # PEFT writes it into every LoRA adapter folder it saves
# what identifies an adapter's weights (merge fingerprints them; chat reloads when they change)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", ADAPTER_CONFIG)


def is_adapter_dir(path: str | Path | None) -> bool:
    """Whether `path` is a LoRA adapter folder (a run's adapter/, a checkpoint-N/, one given by hand)."""
    return path is not None and (Path(path) / ADAPTER_CONFIG).is_file()


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The adapter folder's PEFT config (rank `r`, `base_model_name_or_path`, …)."""
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())


def free_bytes(path: Path) -> int:
    """Free disk space where `path` lives (or would live: its nearest existing parent). Export's
    room check and the checkpoint check both ask here; tests replace it to simulate a full disk."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
