"""The app's child-process runner: the CLI's JSON result, its one-line errors, streaming and timeouts;
merge/export's exit code 1 told apart (a failed check after the work finished, or a crash); claims."""

from __future__ import annotations

import threading
import time

import pytest
from ui_helpers import child_runs

from grpo_box.errors import UserError
from grpo_box.ui import child


def test_run_json_returns_the_cli_result():
    rewards = child.run_json(["rewards", "list", "--json"], timeout=120)
    assert {"correctness", "xml_count"} <= {r["name"] for r in rewards}


def test_a_failing_command_raises_the_engines_message_and_streams_stderr():
    lines: list[str] = []
    with pytest.raises(child.ChildError) as caught:
        child.run_cli(["estimate", "--preset", "cpu", "--set", "grpo.num_generations=3"], timeout=120,
                      on_line=lines.append)
    err = caught.value
    assert isinstance(err, UserError) and err.returncode == 2
    assert str(err).startswith("invalid config:") and "not divisible by grpo.num_generations=3" in str(err)
    assert "error: " not in str(err) and any(line.startswith("error: ") for line in lines)


def test_a_command_past_its_timeout_is_killed():
    with pytest.raises(child.ChildError, match="took longer than 0.05 s and was stopped"):
        child.run_cli(["rewards", "list"], timeout=0.05)


def test_error_message_prefers_the_engines_line_and_hides_tracebacks():
    assert child.error_message("loading\nerror: data.csv, line 3: empty 'answer'\n  fix it\n") == \
        "data.csv, line 3: empty 'answer'\n  fix it"
    crash = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'prompt'\n"
    assert child.error_message(crash, 1) == "the command failed (exit code 1): KeyError: 'prompt'"
    assert child.parse_progress("  8 samples per prompt: 3/4 prompts") == (3, 4)
    assert child.parse_progress("loading the model") is None


# -- merge/export's exit code 1: a failed check or a crash --------------------------------------
def test_an_exit_1_after_the_work_finished_is_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import cli_stream

    child_runs(monkeypatch, "import sys; print('  50.0% merging'); print('  100.0% merged: 1/3'); sys.exit(1)")
    assert cli_stream.stream_cli(["merge", "r"], timeout=60).returncode == cli_stream.CHECK_FAILED
    child_runs(monkeypatch, "import sys, json; print(json.dumps({'ok': False})); sys.exit(1)")  # the --json form
    assert cli_stream.stream_cli(["export", "r", "--json"], timeout=60).returncode == cli_stream.CHECK_FAILED


def test_an_exit_1_from_a_crash_is_an_error_with_its_last_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import cli_stream

    child_runs(monkeypatch, "print('  40.0% quantizing', flush=True)\ndef step():\n    raise KeyError('tensor x')\n"
                             "step()")
    with pytest.raises(child.ChildError) as caught:
        cli_stream.stream_cli(["export", "r"], timeout=60)
    message = str(caught.value)
    assert caught.value.returncode == 1 and "crashed before it finished (exit code 1)" in message
    assert "KeyError: 'tensor x'" in message and "in step" in message  # the traceback's end, not only its last line


def test_finished_needs_the_json_result_or_a_100_percent_line() -> None:
    from grpo_box.ui.cli_stream import finished

    assert finished('{"ok": false}') and finished("  30.0% a\n  100.0% export finished: some checks FAILED\n")
    assert not finished("  30.0% a\n  99.9% b\n") and not finished("")


# -- claims -------------------------------------------------------------------------------------
def test_a_claim_is_held_once_until_released() -> None:
    claims = child.Claims()
    assert claims.claim("run-a", what="eval") and not claims.claim("run-a", what="eval")
    assert claims.claim("run-b")  # another key is free
    claims.note("run-a", line="3/8")
    held = claims.holder("run-a")
    assert held is not None and held["what"] == "eval" and held["line"] == "3/8" and held["since"]
    claims.release("run-a")
    assert claims.holder("run-a") is None and claims.claim("run-a")
    claims.note("nobody", line="x")  # a note for a free key is dropped
    assert claims.holder("nobody") is None


def test_training_is_refused_while_a_child_holds_a_model(tmp_path) -> None:
    """While an `eval` child runs (here: seen from its own stderr line, so it is surely running),
    starting or resuming training is refused with a message naming it, and the run is known to be in
    use (Delete waits); a child without a model is not counted."""
    from grpo_box.config import RunConfig
    from grpo_box.runs import create_run
    from grpo_box.ui.train_tab import resume_run

    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path / "runs"), "stopped"
    run = create_run(config)
    run.set_status("stopped", step=1, max_steps=3)
    seen: list[tuple[list[str], str]] = []
    using: list[list[str]] = []

    def during(line: str) -> None:
        using.append(child.children_using(run.path))  # what the Runs tab's Delete asks
        try:
            resume_run(str(run.path))
        except UserError as exc:
            seen.append((child.model_children(), str(exc)))

    with pytest.raises(child.ChildError):  # no adapter to evaluate: it fails, after saying so on stderr
        child.run_cli(["eval", str(run.path), "--json"], timeout=120, on_line=during)
    busy, message = seen[0]
    assert busy == [f"python -m grpo_box eval {run.path}"] and using[0] == busy
    assert child.children_using(tmp_path) == []
    assert message.startswith(f"`{busy[0]}` is running in this app and holds a model in memory. Training would")
    assert child.model_children() == []  # gone once it ended
    assert run.status()["state"] == "stopped"  # nothing started
    listed: list[list[str]] = []
    with pytest.raises(child.ChildError):  # an estimate loads no model (here it fails, on stderr)
        child.run_cli(["estimate", "--preset", "cpu", "--set", "grpo.num_generations=3"], timeout=120,
                      on_line=lambda line: listed.append(child.model_children()))
    assert listed and listed[0] == []


# -- Cancel --------------------------------------------------------------------------------------
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "print('working', file=sys.stderr, flush=True); time.sleep(120)")


def test_a_child_that_ignores_the_cancel_is_killed_after_the_grace(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Cancel names the verb and the run folder; only that child is interrupted, and one that ignores the
    interrupt is killed once the grace is over. The handler gets ChildCancelled, not a crash or a timeout."""
    child_runs(monkeypatch, STUBBORN)
    monkeypatch.setattr(child, "CANCEL_GRACE_SECONDS", 1.0)
    outcome: dict[str, BaseException] = {}
    started = threading.Event()

    def evaluate() -> None:
        try:
            child.run_cli(["eval", str(tmp_path), "--json"], timeout=120, on_line=lambda line: started.set())
        except BaseException as exc:  # noqa: BLE001 - the test looks at what was raised
            outcome["raised"] = exc

    worker = threading.Thread(target=evaluate)
    worker.start()
    assert started.wait(30)
    assert child.cancel_children(["export"], tmp_path) == []  # another verb: not this child
    assert child.cancel_children(["eval"], tmp_path / "other") == []  # another run: not this child
    began = time.monotonic()
    assert child.cancel_children(["eval"], tmp_path) == [f"python -m grpo_box eval {tmp_path}"]
    worker.join(30)
    assert not worker.is_alive() and time.monotonic() - began < 15
    assert isinstance(outcome.get("raised"), child.ChildCancelled), outcome
    assert "was cancelled" in str(outcome["raised"]) and child.model_children() == []
