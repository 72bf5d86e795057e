"""Training in a child process: start, poll, stop, resume.

The app must survive whatever training does (a crash, a CUDA OOM, a killed process), and VRAM is
only reliably returned when the process that held it exits. So the UI never trains in its own
process: `start()` spawns `python -m grpo_box worker RUN_DIR`, which writes everything to the run
directory (runs.py); `poll()` reads it back; `stop()` asks for a checkpoint-and-stop through the
STOP file and escalates to SIGTERM/SIGKILL only if the child does not stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runs import LOG, RunDir


@dataclass
class Job:
    run: RunDir
    process: subprocess.Popen

    def alive(self) -> bool:
        return self.process.poll() is None


def start(run: RunDir, resume: bool = False) -> Job:
    """Spawn the training child for an existing run directory; its output goes to train.log."""
    cmd = [sys.executable, "-m", "grpo_box", "worker", str(run.path)]
    if resume:
        cmd.append("--resume")
    log = run.file(LOG).open("a")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    project_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Job(run, process)


def poll(run: RunDir) -> dict[str, Any]:
    """Status plus the metrics so far: what a progress view needs."""
    return {"status": run.status(), "metrics": run.metrics()}


def stop(job: Job, timeout: float = 600.0) -> int | None:
    """Ask the child to save a checkpoint and stop; kill it if it does not within `timeout` s."""
    job.run.request_stop()
    try:
        return job.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.process.terminate()
        try:
            return job.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            job.process.kill()
            return job.process.wait()


def wait(job: Job, poll_seconds: float = 2.0) -> int:
    while job.alive():
        time.sleep(poll_seconds)
    return job.process.returncode
