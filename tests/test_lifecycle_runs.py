"""The run directory without training: the run list (newest first by creation, a run deleted while
it is listed left out), absolute run paths in the lock notes whatever the working directory, the
atomic writer's per-writer temporary files, a worker refused on a run that already trained, and
`resume --steps N` counted from the checkpoint the run continues from."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from helpers import run_cli

from grpo_box import job, locks
from grpo_box.atomic import write_text_atomic
from grpo_box.config import RunConfig
from grpo_box.errors import UserError
from grpo_box.runs import CONFIG, METRICS, STATUS, RunDir, create_run, list_runs, open_run, run_dirs


def _run(root: Path | str, name: str, **settings) -> RunDir:
    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(root), name
    for key, value in settings.items():
        setattr(config.grpo, key, value)
    return create_run(config)


def _checkpoint(run: RunDir, step: int) -> None:
    folder = run.file("checkpoints") / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


# -- the run list -----------------------------------------------------------------------------
def test_runs_are_listed_by_creation_not_by_the_last_config_rewrite(tmp_path):
    first, second = _run(tmp_path, "first"), _run(tmp_path, "second")
    first.file(CONFIG).write_text(first.file(CONFIG).read_text())  # as `extend` and auto-fit rewrite it
    os.utime(first.file(CONFIG), (time.time() + 60, time.time() + 60))
    assert [r.path.name for r in run_dirs(tmp_path)] == ["second", "first"]
    rows = list_runs(tmp_path)
    assert [r["name"] for r in rows] == ["second", "first"]
    assert rows[1]["started"] == first.status()["created_at"] < rows[0]["started"]


def test_a_run_made_before_created_at_was_recorded_falls_back_to_its_config_time(tmp_path):
    old = RunDir(tmp_path / "old")
    old.path.mkdir()
    RunConfig().save(old.file(CONFIG))
    old.set_status("finished", step=2, max_steps=2)
    os.utime(old.file(CONFIG), (1_000_000, 1_000_000))
    new = _run(tmp_path, "new")
    assert [r["name"] for r in list_runs(tmp_path)] == ["new", "old"]
    assert old.created_at() == 1_000_000 and new.created_at() > 1_000_000


def test_a_run_deleted_while_the_list_is_read_is_left_out(tmp_path):
    """Another page deletes runs while this one lists them: the listing never fails."""
    RunDir(tmp_path / "gone").path.mkdir()
    assert RunDir(tmp_path / "gone").created_at() is None
    template = _run(tmp_path, "kept")
    stop, errors = threading.Event(), []

    def churn() -> None:
        while not stop.is_set():
            copy = tmp_path / "churn"
            shutil.copytree(template.path, copy)
            shutil.rmtree(copy)

    deleter = threading.Thread(target=churn)
    deleter.start()
    try:
        deadline = time.time() + 1.5
        while time.time() < deadline:
            try:
                names = {r["name"] for r in list_runs(tmp_path)}
                assert names <= {"kept", "churn"} and "kept" in names
                run_dirs(tmp_path)
            except OSError as exc:
                errors.append(exc)
    finally:
        stop.set()
        deleter.join()
    assert not errors, errors[:3]


# -- absolute run paths -----------------------------------------------------------------------
def test_a_run_made_from_a_relative_runs_dir_is_found_again_from_another_folder(tmp_path, monkeypatch):
    made = tmp_path / "made-here"
    made.mkdir()
    monkeypatch.chdir(made)
    run = _run("runs", "relative")
    assert run.path == made / "runs" / "relative" and run.path.is_absolute()
    assert open_run("runs/relative").path == run.path == run_dirs("runs")[0].path
    fd = locks.acquire_machine(Path("runs/relative"))  # even a caller that names it relatively
    try:
        assert locks.running_job()["run"] == str(run.path)
        assert RunDir(Path("runs/relative")).worker_alive()
        monkeypatch.chdir(tmp_path)
        assert job.running_run().path == run.path
        assert job.reattach().run.path == run.path
    finally:
        os.close(fd)


# -- atomic writes ----------------------------------------------------------------------------
def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    path = tmp_path / STATUS
    texts = ["a" * 200_000, "b" * 200_000]
    errors = []

    def write(text: str) -> None:
        try:
            for _ in range(100):
                write_text_atomic(path, text)
        except OSError as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(text,)) for text in texts]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors, errors[:3]
    assert path.read_text() in texts and [p.name for p in tmp_path.iterdir()] == [STATUS]


def test_an_atomic_write_keeps_the_mode_a_plain_write_gives(tmp_path):
    (tmp_path / "plain").write_text("x")
    write_text_atomic(tmp_path / "atomic", "x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_a_temporary_file_left_by_a_killed_writer_does_not_stop_the_next_write(tmp_path):
    run = _run(tmp_path, "run")
    (run.path / "status.json.0badf00d.tmp").write_text('{"state": "runn')  # a writer SIGKILLed mid-write
    run.set_status("stopped", step=1)
    assert run.status()["state"] == "stopped" and "created_at" in run.status()


# -- a worker on a run that already trained ---------------------------------------------------
def test_a_worker_without_resume_refuses_a_run_that_already_trained(tmp_path):
    run = _run(tmp_path, "trained")
    assert not run.has_history()
    run.append(METRICS, {"step": 1, "reward": 0.5})
    run.set_status("stopped", step=1)
    assert run.has_history()
    out = run_cli("worker", str(run.path), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"python -m grpo_box resume {run.path}" in out.stderr and "Traceback" not in out.stderr
    assert run.status()["state"] == "stopped" and len(run.metrics()) == 1  # untouched


def test_a_checkpoint_or_an_adapter_alone_counts_as_history(tmp_path):
    with_checkpoint, with_adapter = _run(tmp_path, "checkpoint"), _run(tmp_path, "adapter")
    _checkpoint(with_checkpoint, 2)
    with_adapter.adapter_dir.mkdir()
    (with_adapter.adapter_dir / "adapter_config.json").write_text("{}")
    assert with_checkpoint.has_history() and with_adapter.has_history()


# -- resume --steps N -------------------------------------------------------------------------
def test_more_steps_count_from_the_checkpoint_a_killed_run_continues_from(tmp_path):
    """Killed at step 7 with its last checkpoint at step 5: `--steps 3` means steps 6, 7 and 8."""
    run = _run(tmp_path, "killed", max_steps=10)
    _checkpoint(run, 5)
    run.set_status("failed", step=7, max_steps=10, error="killed")
    assert run.resume_step() == 5
    assert run.extend(3) == 8
    assert run.config().grpo.max_steps == 8 and run.status()["max_steps"] == 8


def test_more_steps_without_a_checkpoint_count_from_zero(tmp_path):
    run = _run(tmp_path, "early", max_steps=10)
    run.set_status("stopped", step=2, max_steps=10)
    assert run.extend(3) == 3


def test_a_finished_run_keeps_its_adapter_under_the_step_it_was_saved_at(tmp_path):
    run = _run(tmp_path, "finished", max_steps=4)
    _checkpoint(run, 4)
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    run.record_adapter_step(4)
    run.set_status("finished", step=4, max_steps=4)
    assert run.extend(2) == 6 and run.status()["state"] == "stopped"
    assert (run.file("adapter-step-4") / "adapter_config.json").is_file()


@pytest.mark.parametrize("steps", [0, -1])
def test_more_steps_must_be_at_least_one(tmp_path, steps):
    run = _run(tmp_path, "run")
    with pytest.raises(UserError, match="at least 1"):
        run.extend(steps)


def test_an_auto_fit_retry_says_when_its_out_of_memory_happened():
    from grpo_box.job import _when

    assert _when({"phase": "start-up", "after_step": 0}) == "at start-up"
    assert _when({"phase": "rollout", "after_step": 3}) == "at step 3"


def test_resume_has_one_rule_for_the_cli_and_the_app(tmp_path):
    """`job.prepare_resume` (the CLI's resume and the app's Resume): a run whose worker lives is
    refused before anything changes, with both ways to stop it; a finished run needs more steps,
    asked for in the caller's words; the app's own check runs before the run is changed."""
    from helpers import machine_held

    run = _run(tmp_path, "r", max_steps=2)
    run.set_status("finished", step=2, max_steps=2)
    with machine_held(run.path, lock="run"):
        with pytest.raises(UserError, match=r"r is still training; stop it first \(the Train tab's Stop, or "
                                             r"python -m grpo_box stop "):
            job.prepare_resume(run, 3)
    assert run.config().grpo.max_steps == 2
    with pytest.raises(UserError, match="type more steps here"):
        job.prepare_resume(run, None, how="type more steps here")
    checked: list[int] = []

    def app_check() -> None:
        checked.append(run.config().grpo.max_steps)
        raise UserError("an evaluation holds the model")

    with pytest.raises(UserError, match="an evaluation holds the model"):
        job.prepare_resume(run, 3, before_change=app_check)
    assert checked == [2] and run.config().grpo.max_steps == 2
    assert job.prepare_resume(run, 3) == ["r: training 3 more steps (to step 3)",
                                          f"{run.path} has no checkpoint yet; starting it from step 0"]
