"""Starting, refusing and following jobs without side effects: a start that lands while someone
reads the lock, a refused `train` or `resume --steps` that changes nothing, a run whose worker
died while nobody watched, an auto-fit retry that cannot start, the app's background follower,
and the memory verdict without a GPU (RAM), which refuses a run that will not fit unless forced."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import machine_held, run_cli

from grpo_box import job, locks
from grpo_box.memory import preflight
from grpo_box.presets import resolve_config
from grpo_box.runs import RETRYING, RunDir, list_runs

BIG = "model.name=unsloth/Qwen2.5-7B-Instruct"  # a catalog shape: ~40 GB in float32 on the CPU


def _new_run(root: Path, *extra: str) -> RunDir:
    from grpo_box.train import start_run

    return start_run(resolve_config("cpu", overrides=[f"output.runs_dir={root}", "grpo.max_steps=2", *extra]))


def test_a_start_landing_while_a_watcher_reads_the_lock_is_not_refused(tmp_path):
    """Every tick asks `locks.holder()`, which holds the lock shared for an instant; a start in that
    instant used to be refused with a stale holder's name."""
    path = locks.machine_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    reader = os.open(path, os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)
    timer = threading.Timer(0.3, lambda: (fcntl.flock(reader, fcntl.LOCK_UN), os.close(reader)))
    timer.start()
    with pytest.raises(locks.JobBusy):  # one attempt: the watcher's instant is enough to refuse
        locks.acquire_machine(tmp_path, attempts=1)
    os.close(locks.acquire_machine(tmp_path, attempts=job.START_LOCK_ATTEMPTS))
    timer.join()


def test_a_refused_train_or_resume_changes_nothing(tmp_path):
    runs = tmp_path / "runs"
    finished = _new_run(runs)
    finished.set_status("finished", step=2, max_steps=2)
    before = finished.file("config.yaml").read_text()
    with machine_held(tmp_path / "other-run"):
        trained = run_cli("train", "--preset", "cpu", "--set", f"output.runs_dir={runs}", timeout=300)
        assert trained.returncode != 0 and "already running on this machine: other-run" in trained.stderr
        assert [p.name for p in runs.iterdir()] == [finished.path.name]  # no empty run folder left

        more = run_cli("resume", str(finished.path), "--steps", "3", timeout=300)
        assert more.returncode != 0 and "other-run" in more.stderr
        from grpo_box.ui.train_tab import resume_run

        with pytest.raises(locks.JobBusy, match="other-run"):
            resume_run(str(finished.path), 3)  # the app's Resume with "More steps"
    assert finished.file("config.yaml").read_text() == before  # max_steps not raised
    assert finished.status()["state"] == "finished" and finished.status()["max_steps"] == 2


def test_the_run_list_settles_a_running_run_whose_worker_died(tmp_path):
    """A worker SIGKILLed while no app or CLI watched leaves `running` in status.json; the list says
    failed (and why) instead of showing it running forever. A run just made and not started yet is
    left alone."""
    dead = _new_run(tmp_path)
    dead.set_status("running", step=1, max_steps=2, pid=999_999, pid_started=time.time() - 60)
    fresh = _new_run(tmp_path)
    rows = {row["name"]: row for row in list_runs(tmp_path)}
    assert rows[dead.path.name]["state"] == "failed"
    assert "ended before finishing" in rows[dead.path.name]["error"]
    assert dead.status()["step"] == 1  # the step count stays for resume
    assert rows[fresh.path.name]["state"] == "created"


def _retrying(root: Path) -> RunDir:
    run = _new_run(root)
    run.set_status(RETRYING, step=1, max_steps=2, auto_fit={"after_step": 1, "change": "grpo.num_generations 8 -> 4"})
    return run


def test_an_auto_fit_retry_that_cannot_start_stops_the_run_with_a_message(tmp_path):
    run = _retrying(tmp_path)
    with machine_held(tmp_path / "other-run"):
        update = job.Monitor(run).poll()
    assert not update.alive and update.settled
    status = run.status()
    assert status["state"] == "stopped" and "could not start" in status["error"] and "Resume" in status["error"]
    assert any("other-run" in event for event in update.events)


def test_an_auto_fit_retry_started_by_another_watcher_is_followed(tmp_path):
    """The app and a CLI `wait` both watch a run that ran out of memory: the one that loses the race
    to start the retry follows the winner's worker instead of failing."""
    run = _retrying(tmp_path)
    with machine_held(run.path, lock="run"):
        monitor = job.Monitor(run)
        assert monitor._retry([]) is True and monitor.job is None
        assert monitor.alive()
    assert not monitor.alive()


def test_the_apps_background_follower_settles_a_dead_worker_with_no_page_open(tmp_path):
    from grpo_box.ui import watch

    run = _new_run(tmp_path)
    run.set_status("running", step=1, max_steps=2, pid=999_999, pid_started=time.time() - 60)
    watch.register(run)
    assert str(run.path) in watch.unsettled()
    watch.follow_once()
    assert run.status()["state"] == "failed"
    assert str(run.path) not in watch.unsettled()
    watch.forget(str(run.path))


def test_without_a_gpu_a_run_that_will_not_fit_in_ram_is_refused_unless_forced():
    config = resolve_config("cpu", overrides=[BIG])
    refused = preflight(config, ram_gb=16.0)
    assert not refused.proceed and refused.verdict == "will not fit"
    assert "RAM: about" in refused.message and "of this machine's 16 GB" in refused.message
    assert "grpo.num_generations" in refused.ram_note  # what to lower
    forced = preflight(config, ram_gb=16.0, force=True)
    assert forced.proceed and "forced" in forced.message
    fits = preflight(resolve_config("cpu"), ram_gb=16.0)
    assert fits.proceed and fits.verdict == "fits"


def test_the_cli_refuses_a_cpu_run_that_will_not_fit_in_ram(tmp_path):
    """The ~40 GB float32 7B model against this machine's RAM (the check reads the real RAM; on a
    machine with 48 GB or more it is only 'tight', which is not refused)."""
    from grpo_box.hardware import ram_gb

    if (ram_gb() or 0) * 0.85 >= 41:
        pytest.skip(f"{ram_gb()} GB of RAM holds the 7B model")
    result = run_cli("train", "--preset", "cpu", "--set", BIG, "--set", f"output.runs_dir={tmp_path}", timeout=300)
    assert result.returncode == 2 and "will not fit" in result.stderr and "--force" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_misspelled_lora_target_fails_the_run_naming_the_models_layers(tmp_path):
    """PEFT alone trains without a misspelled target as long as another one matches."""
    result = run_cli("train", "--preset", "cpu", "--set", "grpo.max_steps=1", "--set", "lora.target_modules=[q_projj, v_proj]",
                     "--set", f"output.runs_dir={tmp_path}", timeout=600)
    assert result.returncode != 0 and "q_projj is not a module" in result.stderr
    run = RunDir(next(tmp_path.iterdir()))
    status = run.status()
    assert status["state"] == "failed" and "lora.target_modules: q_projj is not a module" in status["error"]
    assert "q_proj" in status["error"] and "down_proj" in status["error"] and not run.metrics()
