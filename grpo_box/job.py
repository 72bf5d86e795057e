"""Training in a child process: start, poll, stop, resume.

The app must survive whatever training does (a crash, a CUDA OOM, a killed process), and VRAM is
only reliably returned when the process that held it exits. So the UI never trains in its own
process: `start()` spawns `python -m grpo_box worker RUN_DIR`, which writes everything to the run
directory (runs.py); `poll()` reads it back; `stop()` asks for a checkpoint-and-stop through the
STOP file and escalates to SIGTERM/SIGKILL only if the child does not stop.

Out of memory with auto-fit on, a child saves a smaller config, marks the run `retrying` and
exits; `supervise()` then starts the resume child, so the retry gets a GPU the first child has
really let go of. The CLI trains the same way (`run_attached`): the child's output goes to the
terminal, and Ctrl-C asks for a checkpoint-and-stop instead of killing the step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runs import LOG, RETRYING, RunDir

UNSETTLED = ("created", "running")  # a child that exits in these states died without saying why


@dataclass
class Job:
    run: RunDir
    process: subprocess.Popen
    attached: bool = False  # output to this terminal instead of train.log

    def alive(self) -> bool:
        return self.process.poll() is None


def start(run: RunDir, resume: bool = False, attached: bool = False) -> Job:
    """Spawn the training child for an existing run directory; its output goes to train.log, or
    with `attached` to this process's terminal. Either way it has its own session, so a Ctrl-C
    in the terminal reaches only the parent, which turns it into a stop request."""
    cmd = [sys.executable, "-m", "grpo_box", "worker", str(run.path)]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH")) if p)
    if attached:
        process = subprocess.Popen(cmd, env=env, start_new_session=True)
    else:
        with run.file(LOG).open("a") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Job(run, process, attached)


def supervise(job: Job) -> Job:
    """The job to follow next: a fresh resume child once this one has exited `retrying` (auto-fit).

    A child that died without settling its status (SIGKILL, the kernel's OOM killer, a segfault)
    is marked failed here, so a watcher never shows "running" for a dead process."""
    if job.alive():
        return job
    if settle(job) != RETRYING:
        return job
    status = job.run.status()
    fit = status.get("auto_fit", {})
    print(f"out of memory at step {fit.get('after_step', '?')}: auto-fit resumes from the last checkpoint in a fresh "
          f"process with: {fit.get('change', 'a smaller setting')}", file=sys.stderr, flush=True)
    return start(job.run, resume=True, attached=job.attached)


def settle(job: Job) -> str:
    """After the child exited: its final state, marking it failed if it died without saying."""
    state = job.run.status().get("state", "created")
    if state in UNSETTLED:
        _mark_died(job)
        state = "failed"
    return state


def _mark_died(job: Job) -> None:
    code = job.process.returncode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    if code == -9:
        how += " (SIGKILL: often the system ran out of RAM; lower grpo.num_generations or the lengths)"
    where = "the output above" if job.attached else str(job.run.file(LOG))
    job.run.set_status("failed", error=f"the training process {how} before finishing; see {where}")


def run_attached(run: RunDir, resume: bool = False) -> int:
    """Train in a child whose output goes to this terminal, through any auto-fit retry; returns the
    last child's exit code. Ctrl-C requests a checkpoint-and-stop; a second Ctrl-C kills the child."""
    return wait(start(run, resume=resume, attached=True), poll_seconds=0.5, stop_on_interrupt=True)


def poll(run: RunDir) -> dict[str, Any]:
    """Status plus the metrics so far: what a progress view needs."""
    return {"status": run.status(), "metrics": run.metrics()}


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


def wait(job: Job, poll_seconds: float = 1.0, *, stop_on_interrupt: bool = False) -> int:
    """Wait for the run to settle, following auto-fit retries; the last child's exit code."""
    interrupts = 0
    while True:
        try:
            while job.alive():
                time.sleep(poll_seconds)
        except KeyboardInterrupt:
            interrupts += 1
            if not stop_on_interrupt:
                raise
            if interrupts > 1:
                job.process.kill()
                return job.process.wait()
            print("\nstopping after the current step (saves a checkpoint); Ctrl-C again to abort", file=sys.stderr)
            job.run.request_stop()
            continue
        following = supervise(job)
        if following is job:
            return job.process.returncode
        job = following
