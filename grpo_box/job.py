"""Training in a child process: start, monitor, stop, resume, reattach.

The app must survive whatever training does (a crash, a CUDA OOM, a killed process), and VRAM is
only reliably returned when the process that held it exits. So the UI never trains in its own
process: `start()` spawns `python -m grpo_box worker RUN_DIR`, which writes everything to the run
directory (runs.py). `Monitor.poll()` reads it back incrementally (new metric and sample lines
from remembered offsets, the log tail, the status and whether the worker lives), settles a worker
that died without saying why as failed, and starts the fresh resume child after an auto-fit
`retrying` exit. The CLI's `wait` and the app's timer both go through it.

One job per machine and one worker per run directory are enforced by locks the worker holds for
its life (locks.py); `start()` takes the machine lock before spawning and hands it to the child,
so a second start from anywhere is refused with the running run's name. A restarted app finds the
running job with `reattach()`. The worker also records its pid and start time in status.json.

Stopping: `request_stop(run)` (the UI; returns at once) writes the STOP file the trainer checks
after each step; `stop(job)` (the CLI and tests) also waits, escalating to SIGTERM/SIGKILL. In
the CLI (`run_attached`) Ctrl-C, SIGTERM and SIGHUP ask for a checkpoint-and-stop, a second one
kills the child and settles its status, and the child stops by itself if its parent dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import locks
from .errors import UserError
from .locks import JobBusy
from .runs import LOG, METRICS, RETRYING, SAMPLES, UNSETTLED, JsonlTail, RunDir, open_run

LOG_TAIL_BYTES = 6000
# The machine lock is tried for up to a second: a watcher asking "who holds it?" holds it shared for
# an instant, and a start landing in that instant must not be refused.
START_LOCK_ATTEMPTS = 10

__all__ = ["Job", "JobBusy", "Monitor", "Update", "check_machine_free", "start", "stop", "request_stop", "wait",
           "reattach", "running_run"]


@dataclass
class Job:
    run: RunDir
    process: subprocess.Popen
    attached: bool = False  # output to this terminal instead of train.log

    def alive(self) -> bool:
        return self.process.poll() is None


def start(run: RunDir, resume: bool = False, attached: bool = False) -> Job:
    """Spawn the training child for an existing run directory; its output goes to train.log, or
    with `attached` to this process's terminal (and the child stops if this process dies). Either
    way it has its own session, so a Ctrl-C in the terminal reaches only the parent, which turns it
    into a stop request. Raises JobBusy when a job runs on this machine or in this run."""
    if locks.run_is_training(run.path):
        raise JobBusy(f"{run.path.name} is already training; stop it before resuming it")
    if resume:
        run.check_resumable()
    fd = locks.acquire_machine(run.path, attempts=START_LOCK_ATTEMPTS)
    try:
        cmd = [sys.executable, "-m", "grpo_box", "worker", str(run.path)]
        if resume:
            cmd.append("--resume")
        if attached:
            cmd += ["--parent-pid", str(os.getpid())]
        from .modeling import worker_environment  # light: no torch

        env = {**worker_environment(run.config(), dict(os.environ)), "PYTHONUNBUFFERED": "1",
               locks.INHERITED_FD_ENV: str(fd)}
        project_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH")) if p)
        if attached:
            process = subprocess.Popen(cmd, env=env, start_new_session=True, pass_fds=(fd,))
        else:
            with run.file(LOG).open("a") as log:  # the child keeps its own copy of the descriptor
                process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True, pass_fds=(fd,))
        locks.note_holder(fd, run.path, process.pid)
    finally:
        os.close(fd)  # the child holds the lock now (or nobody, if it could not start)
    return Job(run, process, attached)


def check_machine_free() -> None:
    """Raise JobBusy (naming the running run and how to stop it) when a job trains on this machine:
    asked before anything is changed for a start that could not happen (a new run folder, --steps)."""
    busy = locks.running_job()
    if busy is not None:
        raise JobBusy(locks.busy_message(busy), busy)


def prepare_resume(run: RunDir, more_steps: int | None = None, how: str | None = None,
                   before_change: Callable[[], None] | None = None) -> list[str]:
    """Check that `run` can resume now and add `more_steps` (None: none) to it; the notes to show.

    The one resume rule for the CLI and the app. Refused (UserError): a run still training, a
    machine busy with another job, a finished run without more steps (`how` says where to give
    them; default: the CLI's --steps). The checks come before the run is changed, and
    `before_change` (the app's own check of its children) runs just before that too."""
    if worker_alive(run):
        raise UserError(f"{run.path.name} is still training; stop it first (the Train tab's Stop, or "
                        f"python -m grpo_box stop {run.path})")
    check_machine_free()  # before --steps changes the run for a resume that cannot start
    if before_change is not None:
        before_change()
    notes = []
    if more_steps is not None:  # `extend` refuses fewer than one step
        notes.append(f"{run.path.name}: training {more_steps} more steps (to step {run.extend(more_steps)})")
    else:
        run.check_resumable(how)
    if run.last_checkpoint() is None:
        notes.append(f"{run.path} has no checkpoint yet; starting it from step 0")
    return notes


def request_stop(run: RunDir) -> None:
    """Ask the worker to checkpoint and stop after its current step; returns at once (for the UI)."""
    run.request_stop()


def running_run() -> RunDir | None:
    """The run the machine's training job is working on, or None."""
    note = locks.running_job()
    if not note or not note.get("run"):
        return None
    try:
        return open_run(note["run"])
    except FileNotFoundError:
        return None


def reattach() -> "Monitor | None":
    """A monitor on the job running on this machine (after an app restart), or None."""
    run = running_run()
    return Monitor(run) if run else None


def worker_alive(run: RunDir) -> bool:
    """Whether a worker lives for this run (RunDir.worker_alive: by its locks, not by pid)."""
    return run.worker_alive()


@dataclass
class Update:
    """What one `Monitor.poll()` found."""

    status: dict[str, Any]
    alive: bool
    metrics: list[dict[str, Any]]  # lines appended since the last poll
    samples: list[dict[str, Any]]
    reset: bool  # the files were rewritten (a resume dropped steps): replace, do not append
    log_tail: str
    events: list[str] = field(default_factory=list)  # things worth telling: a retry, a dead worker
    starting: bool = False  # our child lives but has not written its pid into status.json yet

    @property
    def settled(self) -> bool:
        return not self.alive and self.status.get("state") not in (*UNSETTLED, RETRYING)


class Monitor:
    """Follows one run: incremental metrics/samples, status, liveness, auto-fit retries."""

    def __init__(self, run: RunDir, job: Job | None = None, follow_retries: bool = True):
        self.run = run
        self.job = job
        self.follow_retries = follow_retries
        self.metrics: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self._tails = {METRICS: JsonlTail(run.file(METRICS)), SAMPLES: JsonlTail(run.file(SAMPLES))}
        self._unrecorded: str | None = None  # a dead worker's settled message the run folder refused

    def alive(self) -> bool:
        return self.job.alive() if self.job is not None else worker_alive(self.run)

    def poll(self) -> Update:
        alive = self.alive()
        events: list[str] = []
        if not alive:
            state = self._settle(events)
            if state == RETRYING and self.follow_retries:
                alive = self._retry(events)
        metrics, reset_m = self._tails[METRICS].read_new()  # after a rewrite: the whole file again
        samples, reset_s = self._tails[SAMPLES].read_new()
        self.metrics = metrics if reset_m else self.metrics + metrics
        self.samples = samples if reset_s else self.samples + samples
        reset = reset_m or reset_s
        if reset:  # the update then carries everything, to replace what the caller had
            metrics, samples = list(self.metrics), list(self.samples)
        status = self._status()
        starting = alive and self.job is not None and status.get("pid") != self.job.process.pid
        return Update(status, alive, metrics, samples, reset, log_tail(self.run), events, starting)

    def _settle(self, events: list[str]) -> str:
        # (a child of ours that died while another worker lives, e.g. one refused by the run lock,
        # says nothing about the live run: settle_dead checks the locks)
        message = self.run.settle_dead(_how_it_ended(self.job), self._where())
        if message:
            events.append(message)
            self._unrecorded = message  # kept in case the run folder could not record it (read-only, full)
        return self._status().get("state", "created")

    def _status(self) -> dict[str, Any]:
        """The run's status; a dead worker's settled state even where the folder could not record it."""
        status = self.run.status()
        if self._unrecorded and status.get("state") in UNSETTLED:
            return {**status, "state": "failed", "error": self._unrecorded}
        return status

    def _where(self) -> str:
        return "the output above" if self.job is not None and self.job.attached else str(self.run.file(LOG))

    def _retry(self, events: list[str]) -> bool:
        """Start the auto-fit retry's fresh process. When another watcher (the app, a CLI `wait`)
        started it first, follow that one; when another job took the machine, stop the run with a
        message (it resumes later, from the same checkpoint). Returns whether a worker now lives."""
        fit = self.run.status().get("auto_fit", {})
        attached = self.job.attached if self.job is not None else False
        try:
            self.job = start(self.run, resume=True, attached=attached)
        except JobBusy as exc:
            if self.run.worker_alive():
                self.job = None  # someone else's child: followed through the run's locks
                return True
            message = (f"out of memory {_when(fit)}; auto-fit saved a smaller setting, but its fresh process "
                       f"could not start ({exc}). Resume the run when the machine is free")
            self.run.set_status("stopped", error=message)
            events.append(message)
            return False
        where = "starts again" if fit.get("phase") == "start-up" else "resumes from the last checkpoint"
        events.append(f"out of memory {_when(fit)}: auto-fit {where} in a fresh process with: "
                      f"{fit.get('change', 'a smaller setting')}")
        return True


def _when(fit: dict[str, Any]) -> str:
    """When the out-of-memory error an auto-fit retry answers happened ("at start-up", "at step 3")."""
    return "at start-up" if fit.get("phase") == "start-up" else f"at step {fit.get('after_step', '?')}"


def _how_it_ended(job: Job | None) -> str:
    if job is None:
        return "ended"
    code = job.process.returncode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    if code == -9:
        how += " (SIGKILL: often the system ran out of RAM; lower grpo.num_generations or the lengths)"
    return how


def log_tail(run: RunDir, limit: int = LOG_TAIL_BYTES) -> str:
    """The end of train.log as a terminal would show it (a progress bar's \\r updates collapsed)."""
    path = run.file(LOG)
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines())


def settle(job: Job) -> str:
    """After the child exited: its final state, marking it failed if it died without saying."""
    events: list[str] = []
    return Monitor(job.run, job, follow_retries=False)._settle(events)


def stop(job: Job, timeout: float = 600.0) -> int | None:
    """Ask the child to save a checkpoint and stop; kill it if it does not within `timeout` s."""
    job.run.request_stop()
    try:
        code = job.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.process.terminate()
        try:
            code = job.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.process.kill()
            code = job.process.wait()
    settle(job)
    return code


def run_attached(run: RunDir, resume: bool = False) -> int:
    """Train in a child whose output goes to this terminal, through any auto-fit retry. Returns the
    exit code: 0 only when the run finished or was stopped. Ctrl-C, SIGTERM and SIGHUP request a
    checkpoint-and-stop; a second one kills the child (its status is then settled)."""
    job = start(run, resume=resume, attached=True)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, _raise_interrupt)
    try:
        code = wait(job, poll_seconds=0.5, stop_on_interrupt=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    state = run.status().get("state")
    return code if code and code > 0 else (0 if state in ("finished", "stopped") else 1)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def wait(job: Job, poll_seconds: float = 1.0, *, stop_on_interrupt: bool = False) -> int:
    """Wait for the run to settle, following auto-fit retries (via Monitor); the last child's exit
    code. With `stop_on_interrupt`, the first Ctrl-C asks for a stop and a second kills the child."""
    monitor = Monitor(job.run, job)
    interrupts = 0
    while True:
        try:
            update = monitor.poll()
            for event in update.events:
                print(event, file=sys.stderr, flush=True)
            if not update.alive:
                return _exit_code(monitor)
            time.sleep(poll_seconds)
        except KeyboardInterrupt:
            interrupts += 1
            if not stop_on_interrupt:
                raise
            if interrupts > 1 and monitor.job is not None:
                monitor.job.process.kill()
                monitor.job.process.wait()
                _mark_aborted(monitor.job)
                return monitor.job.process.returncode
            print("\nstopping after the current step (saves a checkpoint); Ctrl-C again to abort", file=sys.stderr)
            job.run.request_stop()


def _exit_code(monitor: Monitor) -> int:
    """The last child's exit code; for a retry another watcher started, 0 when the run ended well."""
    if monitor.job is not None:
        return monitor.job.process.returncode
    return 0 if monitor.run.status().get("state") in ("finished", "stopped") else 1


def _mark_aborted(job: Job) -> None:
    if job.run.status().get("state") in UNSETTLED:
        last = job.run.last_checkpoint()
        where = f"resume continues from {last.name}" if last else "resume starts it again"
        job.run.set_status("stopped", error=f"aborted mid-step by a second interrupt; {where}")
