"""The run lifecycle (issue 15 and the app's engine part): resume never rewrites history, one worker
per run and one job per machine, crash consistency under SIGKILL, a full disk, torn files, orphaned
workers, and runs too small to train. Real CPU runs on the bundled model with tiny settings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ENV, ROOT, run_cli

from grpo_box import job, locks
from grpo_box.config import ConfigError
from grpo_box.errors import UserError
from grpo_box.presets import resolve_config
from grpo_box.runs import METRICS, SAMPLES, RunDir, RunFileError, list_runs, open_run

TINY = [
    "grpo.num_generations=4", "grpo.per_device_train_batch_size=4", "grpo.max_completion_length=16",
    "output.save_steps=1", "output.sample_every=1", "data.size=40", "data.eval_size=4", "lora.r=4", "lora.alpha=8",
    "rewards=[{name: target_length, weight: 1.0, params: {target: 16}}, {name: correctness, weight: 1.0}]",
]


def _config(root: Path, *extra: str):
    return resolve_config("cpu", overrides=[*TINY, f"output.runs_dir={root}", *extra])


def _new_run(root: Path, *extra: str) -> RunDir:
    from grpo_box.train import start_run

    return start_run(_config(root, *extra))


def _steps(run: RunDir, name: str = METRICS) -> list[int]:
    return [r["step"] for r in run.read_jsonl(name)]


def _wait(predicate, timeout: float = 600, every: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def _log(run: RunDir) -> str:
    path = run.file("train.log")
    return path.read_text()[-3000:] if path.is_file() else "(no train.log)"


# -- resume never rewrites history ------------------------------------------------------------
@pytest.mark.slow
def test_a_finished_run_is_not_resumed_unless_told_how_many_more_steps(tmp_path):
    run = _new_run(tmp_path, "grpo.max_steps=2")
    assert job.wait(job.start(run)) == 0, _log(run)
    assert run.status()["state"] == "finished" and _steps(run) == [1, 2]
    adapter = (run.adapter_dir / "adapter_model.safetensors").read_bytes()
    saved_at = (run.adapter_dir / "adapter_model.safetensors").stat().st_mtime_ns

    refused = run_cli("resume", str(run.path))
    assert refused.returncode == 2
    assert "already finished its 2 steps" in refused.stderr and "--steps N" in refused.stderr
    with pytest.raises(Exception, match="already finished"):
        job.start(run, resume=True)
    assert run.status()["state"] == "finished" and _steps(run) == [1, 2]
    assert (run.adapter_dir / "adapter_model.safetensors").read_bytes() == adapter

    more = run_cli("resume", str(run.path), "--steps", "1")
    assert more.returncode == 0, more.stderr[-3000:]
    status = run.status()
    assert (status["state"], status["step"], status["max_steps"]) == ("finished", 3, 3)
    assert _steps(run) == [1, 2, 3] and _steps(run, SAMPLES) == [1, 2, 3]
    times = [m["wall_time"] for m in run.metrics()]
    assert times == sorted(times) and times[2] > times[1], times  # elapsed counts on across the resume
    kept = run.file("adapter-step-2") / "adapter_model.safetensors"
    assert kept.read_bytes() == adapter  # the finished model stays recoverable
    # the adapter is the one saved after step 3 (its weights may equal step 2's when step 3's groups
    # all scored alike and had no advantage to learn from)
    assert (run.adapter_dir / "adapter_model.safetensors").stat().st_mtime_ns > saved_at


# -- crash consistency ----------------------------------------------------------------------
# Stands in for the worker: SIGKILLs itself at an exact point of step `at`, as a crash or an OOM
# killer would: during the rollout, in the middle of a checkpoint save (model written, trainer
# state not yet), or in the middle of a status write (temporary file written, not yet renamed).
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from grpo_box.modeling import import_unsloth
    from grpo_box.runs import open_run
    run = open_run(sys.argv[1]); where, at = sys.argv[2], int(sys.argv[3])
    import_unsloth(run.config())
    import trl, transformers
    from grpo_box import runs, train

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "rollout":
        original = trl.GRPOTrainer._generate_and_score_completions
        def generate(self, *a, **k):
            if self.state.global_step + 1 == at:
                die()
            return original(self, *a, **k)
        trl.GRPOTrainer._generate_and_score_completions = generate
    elif where == "save":
        original = transformers.Trainer._save_rng_state
        def save_rng(self, output_dir):
            if self.state.global_step == at:
                die()  # model and optimizer are on disk, trainer_state.json is not
            return original(self, output_dir)
        transformers.Trainer._save_rng_state = save_rng
    elif where == "status":
        original = runs.write_text_atomic
        def write(path, text, fallback_in_place=False):
            if path.name == "status.json" and '"step": %d' % at in text:
                path.with_name(path.name + ".cut.tmp").write_text(text[: len(text) // 2])
                die()
            return original(path, text, fallback_in_place)
        runs.write_text_atomic = write
    train.run_training(run, resume=sys.argv[4] == "resume")
    """
)


@pytest.mark.slow
def test_sigkill_at_any_point_of_a_step_then_resume_keeps_each_step_once(tmp_path):
    run = _new_run(tmp_path / "runs", "grpo.max_steps=5")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    for where, at, mode in (("rollout", 2, "new"), ("save", 2, "resume"), ("status", 4, "resume")):
        child = job.Job(run, subprocess.Popen([sys.executable, str(script), str(run.path), where, str(at), mode],
                                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        assert job.wait(child) == -signal.SIGKILL, child.process.stderr.read()[-3000:]
        status = run.status()
        assert status["state"] == "failed" and "killed by signal 9" in status["error"], (where, status)
        steps = _steps(run)
        assert steps == sorted(set(steps)), (where, steps)  # never a step twice
        assert [r["name"] for r in list_runs(tmp_path / "runs")] == [run.path.name]
        if where == "save":
            assert run.incomplete_checkpoints(), "the save was really cut off"
            assert run.last_checkpoint().name == "checkpoint-1"
    final = run_cli("resume", str(run.path))
    assert final.returncode == 0, final.stderr[-3000:]
    assert run.status()["state"] == "finished"
    assert _steps(run) == [1, 2, 3, 4, 5] and _steps(run, SAMPLES) == [1, 2, 3, 4, 5]
    assert not run.incomplete_checkpoints()


def test_resume_without_a_checkpoint_starts_over_with_empty_history(tmp_path):
    """A run killed before its first checkpoint: its metric and sample lines must go, not stay as [1, 1, 2]."""
    from grpo_box.train import _resume_point

    run = _new_run(tmp_path)
    for name in (METRICS, SAMPLES):
        run.append(name, {"step": 1})
    (run.file("checkpoints") / "checkpoint-1").mkdir(parents=True)  # cut off: no trainer_state.json
    assert _resume_point(run) is None
    assert _steps(run) == [] and _steps(run, SAMPLES) == []
    assert not run.file("checkpoints/checkpoint-1").exists()


def test_a_checkpoint_whose_trainer_state_is_empty_or_cut_off_is_incomplete(tmp_path):
    """A full disk can leave trainer_state.json empty or half-written: resume removes that checkpoint
    and continues from the last one that reads."""
    from grpo_box.train import _resume_point

    run = _new_run(tmp_path)
    for step in (1, 2, 3, 4):
        run.append(METRICS, {"step": step})
    root = run.file("checkpoints")
    for step, state in ((1, '{"global_step": 1}'), (2, ""), (3, '{"global_st'), (4, "[]")):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert [c.name for c in run.checkpoints()] == ["checkpoint-1"]
    assert [c.name for c in run.incomplete_checkpoints()] == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert _resume_point(run) == str(root / "checkpoint-1")
    assert _steps(run) == [1] and [p.name for p in root.iterdir()] == ["checkpoint-1"]


# -- one worker per run, one job per machine, no orphans ---------------------------------------
@pytest.mark.slow
def test_a_second_start_or_worker_is_refused_and_does_not_touch_the_live_run(tmp_path):
    run = _new_run(tmp_path, "grpo.max_steps=200")
    other = _new_run(tmp_path)
    first = job.start(run)
    try:
        assert _wait(lambda: run.status().get("state") == "running" and locks.run_is_training(run.path)), _log(run)
        with pytest.raises(locks.JobBusy, match=rf"already running on this machine: {run.path.name} \(pid"):
            job.start(other)
        with pytest.raises(locks.JobBusy, match="already training"):
            job.start(run, resume=True)
        assert job.running_run().path == run.path
        status = run.status()
        assert status["pid"] == first.process.pid and status["pid_started"] > 0

        second = subprocess.run([sys.executable, "-m", "grpo_box", "worker", str(run.path), "--resume"], cwd=ROOT,
                                env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "already" in second.stderr, second.stderr[-2000:]
        assert run.status()["state"] == "running" and first.alive()
        resumed = run_cli("resume", str(run.path))
        assert resumed.returncode == 2 and "still training" in resumed.stderr
    finally:
        job.stop(first)
    assert run.status()["state"] == "stopped"
    assert other.status()["state"] == "created"
    assert locks.running_job() is None


def test_a_dead_lock_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from grpo_box import locks
        locks.acquire_machine(Path({str(tmp_path)!r}))
        print("held", flush=True)
        time.sleep(60)
    """)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert locks.running_job()["pid"] == holder.pid
    with pytest.raises(locks.JobBusy, match=f"pid {holder.pid}"):
        locks.acquire_machine(tmp_path, attempts=1)
    holder.kill()
    holder.wait()
    assert locks.running_job() is None  # the kernel released it: nothing to clean by hand
    os.close(locks.acquire_machine(tmp_path, attempts=1))


@pytest.mark.slow
def test_signals_to_the_cli_reach_the_worker_and_a_dead_cli_stops_it(tmp_path):
    for how in (signal.SIGTERM, signal.SIGKILL):
        root = tmp_path / how.name
        cli = subprocess.Popen([sys.executable, "-m", "grpo_box", "train", "--preset", "cpu",
                                *sum((["--set", o] for o in TINY), []), "--set", "grpo.max_steps=200",
                                "--set", f"output.runs_dir={root}"], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert _wait(lambda: any(r.get("step", 0) >= 1 for r in list_runs(root)) if root.exists() else False), how
        run = open_run(list_runs(root)[0]["path"])
        cli.send_signal(how)
        cli.wait(timeout=300)
        # the worker checkpoints and stops on its own (its parent asked, or its parent vanished)
        assert _wait(lambda: not locks.run_is_training(run.path), timeout=300), (how, _log(run))
        status = run.status()
        assert status["state"] == "stopped", (how, status)
        assert run.last_checkpoint() is not None and run.last_checkpoint().name == f"checkpoint-{status['step']}"
        if how == signal.SIGTERM:
            assert cli.returncode == 0


# -- bad or broken input ----------------------------------------------------------------------
def test_a_task_too_small_to_train_is_refused_before_a_run_exists(tmp_path):
    with pytest.raises(ConfigError, match=r"data.size=5 with data.eval_size=4 held out leaves 1 training prompts, "
                                          r"and one step needs 2: raise data.size to at least 6"):
        _config(tmp_path, "data.size=5", "grpo.per_device_train_batch_size=8")
    assert list(tmp_path.iterdir()) == []


def test_a_file_too_small_to_train_fails_with_the_fix_and_no_adapter(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(6)))
    run = _new_run(tmp_path / "runs", f"data.source={rows}", "data.eval_size=5", "grpo.per_device_train_batch_size=8")
    result = run_cli("worker", str(run.path), timeout=600)
    assert result.returncode != 0
    status = run.status()
    assert status["state"] == "failed"
    assert "only 1 training prompt remain after holding out data.eval_size=5, and one step needs 2" in status["error"]
    assert not run.has_adapter()


def test_torn_last_lines_are_skipped_and_a_broken_line_names_its_file(tmp_path):
    run = _new_run(tmp_path)
    run.append(METRICS, {"step": 1, "reward": 0.5})
    with run.file(METRICS).open("a") as fh:
        fh.write('{"step": 2, "rew')  # a crash during an append
    assert _steps(run) == [1]
    assert list_runs(tmp_path)[0]["reward"] == 0.5
    run.repair_tail()
    run.append(METRICS, {"step": 2, "reward": 0.7})
    assert _steps(run) == [1, 2]

    broken = _new_run(tmp_path)
    broken.file(METRICS).write_text('{"step": 1}\n{"step": 2, "re\n{"step": 3}\n')
    with pytest.raises(RunFileError, match=rf"{broken.file(METRICS)}, line 2: not a JSON record"):
        broken.metrics()
    rows = {r["name"]: r for r in list_runs(tmp_path)}  # one broken run never hides the others
    assert rows[run.path.name]["reward"] == 0.7 and "line 2" in rows[broken.path.name]["error"]


def test_a_monitor_reads_only_new_lines_and_notices_a_rewrite(tmp_path):
    run = _new_run(tmp_path)
    monitor = job.Monitor(run, follow_retries=False)
    run.append(METRICS, {"step": 1})
    with run.file(METRICS).open("a") as fh:
        fh.write('{"step": 2')  # mid-append: not read yet
    first = monitor.poll()
    assert [m["step"] for m in first.metrics] == [1] and not first.reset
    with run.file(METRICS).open("a") as fh:
        fh.write("}\n")
    assert [m["step"] for m in monitor.poll().metrics] == [2]
    run.truncate_after(1)  # what a resume from checkpoint-1 does
    third = monitor.poll()
    assert third.reset and [m["step"] for m in monitor.metrics] == [1]
    assert third.status["state"] == "failed"  # `created` with no worker alive: settled, not left running


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, why: str) -> Iterator[Path]:
    """A real small disk at `path` (a tmpfs of `size`), unmounted afterwards; skips where mounting
    is not allowed (it needs root), saying `why` the test wanted one."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root) {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_status_write_on_a_full_disk_still_records_the_state(tmp_path):
    with _tmpfs(tmp_path / "small", "4m", "to fill a disk for real") as mount:
        run = RunDir(mount / "run")
        run.path.mkdir()
        run.set_status("running", step=3, max_steps=10)
        _fill(mount / "filler")
        with pytest.raises(OSError):
            (mount / "probe").write_bytes(b"\0" * 8192)  # the disk really is full
        run.set_status("failed", error="disk full")
        assert run.status()["state"] == "failed" and run.status()["step"] == 3
        assert not list(run.path.glob("status.json.*.tmp"))


def _fill(path: Path, leave: int = 0) -> None:
    """Write zeros to `path` until the disk has only `leave` bytes free (or none)."""
    import shutil as sh

    with path.open("wb", buffering=0) as fh:  # unbuffered: the ENOSPC comes from write, not from close
        try:
            while sh.disk_usage(path.parent).free > leave + 65536:
                fh.write(b"\0" * 65536)
            if not leave:
                while True:
                    fh.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.mark.slow
def test_training_on_a_filling_disk_stops_cleanly_and_resumes_after_space_is_freed(tmp_path):
    from grpo_box.callbacks import checkpoint_bytes

    with _tmpfs(tmp_path / "disk", "200m", "to fill a disk for real") as mount:
        run = _new_run(mount, "grpo.max_steps=3")
        child = job.start(run)
        assert _wait(lambda: run.last_checkpoint() is not None or not child.alive()), _log(run)
        # the disk fills up: room for less than one more checkpoint
        _fill(mount / "ballast", leave=checkpoint_bytes(run) // 2)
        assert job.wait(child) == 0, _log(run)
        status = run.status()
        assert status["state"] == "stopped", status
        assert "the disk is nearly full" in status["error"] and "Free some space, then resume" in status["error"]
        assert not run.incomplete_checkpoints()
        assert _steps(run)[-1] == status["step"] < 3
        (mount / "ballast").unlink()
        assert job.wait(job.start(run, resume=True)) == 0, _log(run)
        assert run.status()["state"] == "finished" and _steps(run) == [1, 2, 3]


def test_a_missing_model_or_data_file_is_refused_before_a_run_exists(tmp_path):
    from grpo_box.errors import UserError
    from grpo_box.train import start_run

    with pytest.raises(UserError, match=r"model '\./nowhere-model': no such file or folder"):
        start_run(_config(tmp_path, "model.name=./nowhere-model"))
    with pytest.raises(UserError, match=r"data.source='missing.jsonl': no such file"):
        start_run(_config(tmp_path, "data.source=missing.jsonl"))
    assert list(tmp_path.iterdir()) == []
    result = run_cli("stop", str(tmp_path))
    assert result.returncode == 2 and "is not a GRPO Box run directory" in result.stderr
    assert "Traceback" not in result.stderr


# A worker's stop watchdog with its grace shrunk to seconds; `body` plays what the worker does.
WATCHED = textwrap.dedent(
    """
    import sys, time
    from grpo_box import train
    from grpo_box.runs import open_run
    run = open_run(sys.argv[1])
    train._Watchdog.MIN_GRACE, train._Watchdog.LOADING_GRACE = float(sys.argv[2]), 60.0
    with train._Watchdog(run, None):
    """
)


def _watched(tmp_path: Path, body: str, grace: float) -> tuple[subprocess.CompletedProcess, RunDir, float]:
    """Run `body` under the watchdog in a fresh process; its result, the run and how long it took."""
    run = _new_run(tmp_path / "runs")
    script = tmp_path / "watched.py"
    script.write_text(WATCHED + textwrap.indent(textwrap.dedent(body), "    "))
    began = time.time()
    done = subprocess.run([sys.executable, str(script), str(run.path), str(grace)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)
    return done, run, time.time() - began


def test_a_stop_that_user_code_ignores_is_forced_after_the_grace_period(tmp_path):
    done, run, seconds = _watched(tmp_path, """
        run.set_status("running", step=2, max_steps=10, phase="training")
        run.request_stop()
        time.sleep(120)  # a step that never ends: a reward stuck in user code
    """, grace=1.0)
    assert done.returncode == 3 and seconds < 30, done.stderr[-2000:]
    status = run.status()
    assert status["state"] == "stopped"
    assert "did not stop within 1 s of the stop request (step 3 never ended" in status["error"]
    assert "resume starts it again" in status["error"]


def test_a_stop_asked_for_while_loading_gets_its_grace_again_when_training_begins(tmp_path):
    done, run, _ = _watched(tmp_path, """
        run.set_status("running", step=0, max_steps=10, phase="loading")
        run.request_stop()
        time.sleep(5)  # the model loads for longer than the training grace
        run.set_status("running", phase="training")
        time.sleep(1.5)  # the first step, which ends with the stop: well within the grace
        print("first step ended", flush=True)
    """, grace=3.0)
    assert done.returncode == 0 and "first step ended" in done.stdout, done.stderr[-2000:]
    assert run.status()["state"] == "running" and "error" not in run.status()


def test_a_slow_adapter_save_after_a_stop_is_not_cut_off(tmp_path):
    done, run, seconds = _watched(tmp_path, """
        run.set_status("running", step=2, max_steps=10, phase="training")
        run.request_stop()
        run.set_status("running", phase="saving")
        time.sleep(6)  # a slow disk: twice the grace
        print("saved", flush=True)
        run.set_status("running", phase="done")
        time.sleep(120)  # stuck after the save: the grace counts again
    """, grace=3.0)
    assert "saved" in done.stdout and done.returncode == 3 and seconds > 8, done.stderr[-2000:]
    assert "did not stop within 3 s" in run.status()["error"]


def test_a_stop_during_the_final_evaluation_ends_it_and_the_run_stays_finished(tmp_path):
    done, run, seconds = _watched(tmp_path, """
        run.set_status("finished", step=10, max_steps=10, phase="done")
        run.request_stop()
        time.sleep(120)  # the trained model's evaluation, generating
    """, grace=1.0)
    assert done.returncode == 0 and seconds < 30, done.stderr[-2000:]
    status = run.status()
    assert (status["state"], status["step"]) == ("finished", 10) and not status.get("error")
    assert "evaluation was stopped" in status["evaluation_error"]
    assert f"python -m grpo_box eval {run.path}" in status["evaluation_error"]


def test_stop_on_a_run_that_is_not_training_or_is_read_only_says_so(tmp_path):
    run = _new_run(tmp_path)
    run.set_status("finished", step=3, max_steps=3)
    result = run_cli("stop", str(run.path))
    assert result.returncode == 0 and "is not training (state: finished); nothing to stop" in result.stdout
    assert not run.file("STOP").exists()

    with _tmpfs(tmp_path / "ro", "1m", "to make a read-only run folder") as mount:
        frozen = RunDir(mount / "run")
        frozen.path.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(UserError, match=r"cannot ask .* to stop: Read-only file system .*make the run folder writable"):
            frozen.request_stop()


def test_the_run_list_shows_a_dead_worker_settled_even_in_a_read_only_folder(tmp_path):
    with _tmpfs(tmp_path / "ro", "1m", "to make a read-only run folder") as mount:
        run = _new_run(mount)
        run.set_status("running", step=1, max_steps=2)  # its worker died while nobody watched
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        [row] = list_runs(mount)
        assert row["state"] == "failed" and "ended before finishing" in row["error"]
        assert run.status()["state"] == "running"  # computed, not written: the folder is read-only
        update = job.Monitor(run).poll()  # the app's follower and pages: settled, so it stops polling
        assert update.settled and update.status["state"] == "failed"
        assert "ended before finishing" in update.status["error"]


def test_a_recycled_pid_in_status_json_does_not_count_as_alive(tmp_path):
    """A restarted app finds `running` with a pid that now belongs to another process (here: this
    test's own): liveness comes from the worker's lock, so the run is settled as failed."""
    run = _new_run(tmp_path)
    run.set_status("running", step=2, max_steps=10, pid=os.getpid(), pid_started=time.time() - 5)
    assert not job.worker_alive(run)
    update = job.Monitor(run).poll()
    assert not update.alive and update.status["state"] == "failed"
    assert "ended before finishing" in update.status["error"]


def test_a_monitor_notices_a_rewrite_even_when_the_file_grew_past_its_old_size(tmp_path):
    run = _new_run(tmp_path)
    monitor = job.Monitor(run, follow_retries=False)
    for step in (1, 2):
        run.append(METRICS, {"step": step})
    monitor.poll()
    run.truncate_after(1)  # a resume from checkpoint-1 …
    for step in (2, 3, 4):  # … that has logged more than it dropped before the next poll
        run.append(METRICS, {"step": step, "resumed": True})
    update = monitor.poll()
    assert update.reset and [m["step"] for m in monitor.metrics] == [1, 2, 3, 4]
