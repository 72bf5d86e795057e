"""Who may train: one training worker per machine, and one per run directory.

Both are `flock` locks held by the worker process for its whole life, so the kernel releases them
when it exits however it exits (SIGKILL, a segfault, the OOM killer): a lock can never be left
stale, and "is anyone training?" is answered by trying the lock, not by trusting a pid that may
have been recycled. Each lock file also holds a JSON note of the holder (run, pid, start time),
for messages and for `job.reattach`; the run is named by its absolute path, so a process started
in another folder finds it.

The machine lock is taken by the parent before it spawns the child (`job.start`) and handed to
the child as an inherited descriptor, so two clicks (or the CLI and a browser tab) cannot both
pass the check before either child has started. A worker started any other way takes the locks
itself (`held_for_worker`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError

MACHINE_LOCK = "job.lock"
RUN_LOCK = "worker.lock"
INHERITED_FD_ENV = "GRPO_BOX_JOB_LOCK_FD"


class JobBusy(UserError, RuntimeError):
    """Another training job holds the machine, or another worker holds this run."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None):
        super().__init__(message)
        self.holder = holder or {}


def machine_lock_path() -> Path:
    """`$GRPO_BOX_LOCK_DIR/job.lock`, else in the data home. (The test suite sets its own directory, so
    tests never wait for, or refuse because of, a user's real training job on the same machine.)"""
    from .models import data_home

    override = os.environ.get("GRPO_BOX_LOCK_DIR")
    return (Path(override) if override else data_home()) / MACHINE_LOCK


def run_lock_path(run_path: Path) -> Path:
    return Path(run_path) / RUN_LOCK


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _try_lock(fd: int, attempts: int = 1) -> bool:
    for i in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i + 1 < attempts:
                time.sleep(0.1)
    return False


def _note(fd: int, run_path: Path, pid: int) -> None:
    data = {"run": str(Path(run_path).resolve()), "pid": pid, "since": time.time()}
    text = json.dumps(data).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)


def read_note(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def holder(path: Path) -> dict[str, Any] | None:
    """The note of whoever holds the lock at `path`, or None when nobody does.

    Testing takes a shared lock for an instant; a worker that asks at that very moment retries
    (`attempts` in `acquire`), so the test never makes a start fail."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_note(path) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_message(note: dict[str, Any]) -> str:
    run = note.get("run") or "another run"
    name = Path(run).name if note.get("run") else run
    return (f"a training job is already running on this machine: {name} (pid {note.get('pid', '?')}). "
            f"Wait for it, or stop it with the Stop button or `python -m grpo_box stop {run}`")


def acquire_machine(run_path: Path, attempts: int = 20) -> int:
    """Take the machine lock for a job on `run_path`; its descriptor. Raises JobBusy when taken."""
    path = machine_lock_path()
    fd = _open(path)
    if not _try_lock(fd, attempts):
        note = read_note(path)
        os.close(fd)
        raise JobBusy(busy_message(note), note)
    _note(fd, run_path, os.getpid())
    return fd


def acquire_run(run_path: Path, attempts: int = 20) -> int:
    """Take the run directory's worker lock; its descriptor. Raises JobBusy when another worker has it."""
    path = run_lock_path(run_path)
    fd = _open(path)
    if not _try_lock(fd, attempts):
        note = read_note(path)
        os.close(fd)
        raise JobBusy(f"{run_path} is already being trained by another worker (pid {note.get('pid', '?')}); "
                      f"stop it first (`python -m grpo_box stop {run_path}`) or wait for it", note)
    _note(fd, run_path, os.getpid())
    return fd


def note_holder(fd: int, run_path: Path, pid: int) -> None:
    """Record the child that now holds a lock the parent took for it."""
    _note(fd, run_path, pid)


@contextlib.contextmanager
def held_for_worker(run_path: Path) -> Iterator[None]:
    """Hold both locks while a worker trains `run_path`: the machine lock inherited from the parent
    (`INHERITED_FD_ENV`) or taken here, and the run's own lock."""
    inherited = os.environ.pop(INHERITED_FD_ENV, None)
    machine = int(inherited) if inherited else acquire_machine(run_path)
    try:
        os.set_inheritable(machine, False)  # grandchildren (compilers, servers) must not keep it alive
        run = acquire_run(run_path)
    except BaseException:
        os.close(machine)
        raise
    try:
        note_holder(machine, run_path, os.getpid())
        yield
    finally:
        os.close(run)
        os.close(machine)


def running_job() -> dict[str, Any] | None:
    """{run, pid, since} of the training job running on this machine, or None."""
    return holder(machine_lock_path())


def run_is_training(run_path: Path) -> bool:
    """True while a worker holds this run directory's lock."""
    return holder(run_lock_path(run_path)) is not None
