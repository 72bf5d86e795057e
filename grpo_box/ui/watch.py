"""The app's handle on training jobs: one `job.Monitor` per run, shared by every page and timer tick.

Gradio runs handlers on worker threads and every open page has its own timer, so the monitors
live here, module-level, each behind its own lock: a tick polls the run's monitor (which reads
only the lines appended since the last poll, settles a dead worker and follows auto-fit retries)
and reads its cumulative metrics. A page remembers how many lines it has drawn (`Seen`), so a
tick with nothing new sends nothing to the browser. After an app restart `reattach()` finds the
running job through the machine lock (job.reattach) and monitors it again.

`follow_in_background()` polls the watched runs that are still training from a daemon thread, so
a worker that dies is settled and an auto-fit retry starts even while no page is open (the
monitor does both only when polled). It also drops a chat model idling on the GPU once any job
trains, so a job started from the CLI does not run out of memory beside a forgotten chat.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_box import job
from grpo_box.config import RunConfig
from grpo_box.errors import UserError
from grpo_box.runs import CONFIG, RunDir, open_run
from grpo_box.ui import chat_cache

_LOCK = threading.Lock()
_MONITORS: dict[str, "_Watched"] = {}
_FOLLOWER: threading.Thread | None = None
FOLLOW_SECONDS = 10.0


@dataclass
class _Watched:
    monitor: job.Monitor
    lock: threading.Lock
    generation: int = 0  # bumped when the files were rewritten (a resume dropped steps)
    last: job.Update | None = None


@dataclass
class Seen:
    """What one page has drawn of a run: which run, which rewrite, how many metric lines."""

    run: str | None = None
    generation: int = -1
    metrics: int = 0
    samples: int = 0


def register(run: RunDir, started: job.Job | None = None) -> None:
    """Watch `run` (a job this process just started, or any run to view)."""
    with _LOCK:
        watched = _MONITORS.get(str(run.path))
        if watched is None or started is not None:
            _MONITORS[str(run.path)] = _Watched(job.Monitor(run, started), threading.Lock())


def poll(path: str) -> tuple[job.Update, list[dict[str, Any]], list[dict[str, Any]], int]:
    """Poll the run at `path`: (this poll's update, all metrics, all samples, rewrite generation)."""
    with _LOCK:
        watched = _MONITORS.get(path)
        if watched is None:
            watched = _MONITORS[path] = _Watched(job.Monitor(open_run(path)), threading.Lock())
    with watched.lock:
        update = watched.monitor.poll()
        if update.reset:
            watched.generation += 1
        watched.last = update
        return update, list(watched.monitor.metrics), list(watched.monitor.samples), watched.generation


def run_config(path: str) -> RunConfig:
    """The run's config.yaml, parsed once per version of the file (a tick reads it every few seconds)."""
    return _parsed_config(path, (Path(path) / CONFIG).stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _parsed_config(path: str, mtime_ns: int) -> RunConfig:
    return open_run(path).config()


def reattach() -> str | None:
    """The path of the run training on this machine, now watched; None when nothing trains."""
    run = job.running_run()
    if run is None:
        return None
    register(run)
    return str(run.path)


def latest_run(runs_dir: str | None) -> str | None:
    """The most recently started run under `runs_dir`, for a page opened when nothing trains."""
    from grpo_box.runs import run_dirs

    found = run_dirs(runs_dir)
    return str(found[0].path) if found else None


def forget(path: str) -> None:
    with _LOCK:
        _MONITORS.pop(path, None)


def unsettled() -> list[str]:
    """Watched runs whose last poll found them training, starting, or waiting for an auto-fit retry."""
    with _LOCK:
        watched = list(_MONITORS.items())
    return [path for path, w in watched if w.last is None or not w.last.settled]


def follow_once() -> None:
    """Poll every unsettled watched run once (settles dead workers, starts auto-fit retries), and let
    go of an idle chat model on the GPU while any job trains (started here, in the CLI or elsewhere)."""
    if job.running_run() is not None:
        chat_cache.drop_idle_gpu_model()
    for path in unsettled():
        try:
            poll(path)
        except (OSError, UserError):  # deleted or unreadable meanwhile: pages that show it say why
            if not Path(path).exists():
                forget(path)


def follow_in_background(interval: float = FOLLOW_SECONDS) -> None:
    """Start the daemon thread that runs `follow_once` every `interval` s (once per process)."""
    global _FOLLOWER
    with _LOCK:
        if _FOLLOWER is not None and _FOLLOWER.is_alive():
            return
        _FOLLOWER = threading.Thread(target=_follow, args=(interval,), name="grpo-box-follow", daemon=True)
        _FOLLOWER.start()


def _follow(interval: float) -> None:
    while True:
        time.sleep(interval)
        try:
            follow_once()
        except Exception as exc:  # noqa: BLE001 - the follower must outlive one bad poll; pages show errors
            print(f"grpo-box: background poll failed: {exc}", flush=True)
