"""Issue 15, items 7 and 8: a reward that hangs, exits or interrupts ends with a message naming it.

A reward call gets `reward_timeout` seconds (in the main thread by a SIGALRM timer that interrupts
the call, elsewhere by a worker thread the caller stops waiting for); sys.exit() and a raised
KeyboardInterrupt become a RewardError naming the file and the function; a real Ctrl-C stays a
KeyboardInterrupt; and os._exit(), which no process can catch, still makes `rewards score` exit
nonzero, because that command runs user code in a guarded child. The training cases run the real
trainer on the bundled model for one tiny step.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import pytest

from grpo_box.rewards import RewardError, build_rubric, load_user_rewards
from tests.helpers import run_cli

REWARDS = '''
import os
import sys
import time

def hangs(prompts, completions, **kwargs):
    while True:
        pass

def swallows_then_hangs(prompts, completions, **kwargs):
    try:
        time.sleep(30)
    except Exception:
        pass
    return [1.0] * len(completions)

def sleeps(prompts, completions, **kwargs):
    time.sleep(3)
    return [1.0] * len(completions)

def exits(prompts, completions, **kwargs):
    sys.exit(0)

def exits_with_a_message(prompts, completions, **kwargs):
    sys.exit("bad data")

def interrupts(prompts, completions, **kwargs):
    raise KeyboardInterrupt

def hard_exits(prompts, completions, **kwargs):
    os._exit(0)

def real_ctrl_c(prompts, completions, **kwargs):
    import signal
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    return [0.0] * len(completions)

def fine(prompts, completions, **kwargs):
    return [1.0] * len(completions)
'''

PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}]] * 2
COMPLETIONS = [[{"role": "assistant", "content": "<answer>4</answer>"}], [{"role": "assistant", "content": "five"}]]


@pytest.fixture
def reward_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(REWARDS))
    return path


def reward(reward_file: Path, name: str, timeout: float | None = 0.5):
    (func,), _ = build_rubric([f"user:{name}"], user_file=str(reward_file), timeout=timeout)
    return func


def call(func):
    return func(PROMPTS, COMPLETIONS, answer=["4", "4"])


# ---------------------------------------------------------------- item 7: a time limit per call


@pytest.mark.parametrize("name", ["hangs", "swallows_then_hangs"])
def test_a_hung_reward_times_out_naming_the_function_and_the_input(reward_file: Path, name: str) -> None:
    started = time.monotonic()
    with pytest.raises(RewardError) as err:
        call(reward(reward_file, name))
    message = str(err.value)
    assert f"reward 'user:{name}' (from {reward_file}) did not return within reward_timeout=0.5 s" in message
    assert "--set reward_timeout=SECONDS" in message
    assert "prompt:     What is 2 + 2?" in message and "completion: <answer>4</answer>" in message
    assert time.monotonic() - started < 5  # interrupted, also through `except Exception`


def test_the_time_limit_holds_off_the_main_thread_too(reward_file: Path) -> None:
    """The app or a test may score from a worker thread, where no signal can interrupt the call."""
    func = reward(reward_file, "sleeps")
    outcome: list[BaseException | list] = []

    def score() -> None:
        try:
            outcome.append(call(func))
        except BaseException as exc:  # handed back to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=score)
    started = time.monotonic()
    worker.start()
    worker.join(10)
    assert isinstance(outcome[0], RewardError) and "did not return within reward_timeout=0.5 s" in str(outcome[0])
    assert time.monotonic() - started < 2.5


def test_a_reward_within_its_time_returns_its_scores(reward_file: Path) -> None:
    assert call(reward(reward_file, "fine")) == [1.0, 1.0]
    assert call(reward(reward_file, "fine", timeout=None)) == [1.0, 1.0]
    import signal

    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left behind


def test_an_import_that_hangs_times_out_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "slow_import.py"
    path.write_text("while True:\n    pass\n")
    with pytest.raises(RewardError, match=rf"user reward file {path}: importing it took longer than "
                                          r"reward_timeout=0.5 s"):
        load_user_rewards(path, timeout=0.5)


# ---------------------------------------------------------------- item 8: exits and interrupts


@pytest.mark.parametrize("timeout", [0.5, None])  # with a timer, and without any limit
@pytest.mark.parametrize("name,what", [("exits", "called sys.exit(0)"),
                                       ("exits_with_a_message", "called sys.exit('bad data')"),
                                       ("interrupts", "raised KeyboardInterrupt")])
def test_exit_and_interrupt_become_a_reward_error(reward_file: Path, name: str, what: str, timeout) -> None:
    with pytest.raises(RewardError) as err:
        call(reward(reward_file, name, timeout=timeout))
    assert str(err.value).startswith(f"reward 'user:{name}' (from {reward_file}) {what}; a reward function must "
                                     "return its scores")


def test_exit_off_the_main_thread_becomes_a_reward_error(reward_file: Path) -> None:
    func = reward(reward_file, "exits")
    outcome: list[BaseException] = []

    def score() -> None:
        try:
            call(func)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=score)
    worker.start()
    worker.join(10)
    assert isinstance(outcome[0], RewardError) and "'user:exits'" in str(outcome[0]) and "sys.exit(0)" in str(outcome[0])


def test_a_real_ctrl_c_during_a_reward_stays_an_interrupt(reward_file: Path) -> None:
    import signal

    # Python's own Ctrl-C handler, as in a terminal: a shell starts background jobs with SIGINT
    # ignored, and Python keeps it ignored, so a suite run with `&` would test nothing here
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            call(reward(reward_file, "real_ctrl_c", timeout=10))
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sys_exit_while_importing_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "exits_on_import.py"
    path.write_text("import sys\n\nsys.exit(0)\n")
    with pytest.raises(RewardError, match=rf"user reward file {path}, line 3: importing it called sys.exit\(0\)"):
        load_user_rewards(path)


# ---------------------------------------------------------------- the CLI's dry run


@pytest.fixture
def dry_run_files(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "completions.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2 + 2?", "completions": ["<answer>4</answer>", "5"],
                                "answer": "4"}) + "\n")
    rubric = tmp_path / "rubric.yaml"
    return data, rubric


def _score(reward_file: Path, files: tuple[Path, Path], name: str, *extra: str):
    data, rubric = files
    rubric.write_text(f"- {{name: 'user:{name}', weight: 1.0}}\n")
    return run_cli("rewards", "score", "--rubric", str(rubric), "--data", str(data), "--user-file", str(reward_file),
                   *extra, timeout=120)


def test_os_exit_in_a_reward_never_ends_the_dry_run_with_status_0(reward_file: Path, dry_run_files) -> None:
    out = _score(reward_file, dry_run_files, "hard_exits")
    assert out.returncode == 1, out
    assert "exited with code 0 before it finished" in out.stderr and "os._exit()" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("name,what", [("exits", "called sys.exit(0)"), ("interrupts", "raised KeyboardInterrupt")])
def test_the_dry_run_names_a_reward_that_exits_or_interrupts(reward_file: Path, dry_run_files, name: str,
                                                            what: str) -> None:
    out = _score(reward_file, dry_run_files, name)
    assert out.returncode == 2, out
    assert out.stderr.startswith(f"error: {dry_run_files[0]}, line 1: reward 'user:{name}' (from {reward_file}) {what}")
    assert "Traceback" not in out.stderr


def test_the_dry_run_takes_reward_timeout_from_the_config(reward_file: Path, dry_run_files) -> None:
    out = _score(reward_file, dry_run_files, "hangs", "--set", "reward_timeout=1")
    assert out.returncode == 2, out
    assert "reward 'user:hangs'" in out.stderr and "did not return within reward_timeout=1 s" in out.stderr


# ---------------------------------------------------------------- training: the run fails, naming the reward

TINY = ["--preset", "cpu", "--set", "grpo.max_steps=1", "--set", "grpo.num_generations=2",
        "--set", "grpo.per_device_train_batch_size=2", "--set", "grpo.max_completion_length=4",
        "--set", "data.size=8", "--set", "data.eval_size=2"]


@pytest.mark.slow
@pytest.mark.parametrize("name,what,extra", [
    ("exits", "called sys.exit(0)", []),
    ("hangs", "did not return within reward_timeout=2 s", ["--set", "reward_timeout=2"]),
])
def test_a_training_reward_that_exits_or_hangs_fails_the_run_naming_it(reward_file: Path, tmp_path: Path, name: str,
                                                                       what: str, extra: list[str]) -> None:
    out = run_cli("train", *TINY, "--set", f"output.runs_dir={tmp_path / 'runs'}", "--set",
                  f"reward_file={reward_file}", "--set", f"rewards=[{{name: 'user:{name}', weight: 1.0}}]", *extra,
                  timeout=600)
    assert out.returncode != 0, out.stdout + out.stderr
    status = json.loads(next((tmp_path / "runs").glob("*/status.json")).read_text())
    assert status["state"] == "failed"
    assert f"reward 'user:{name}' (from {reward_file}) {what}" in status["error"]
    assert "example input" in status["error"]


@pytest.mark.slow
def test_a_training_reward_that_calls_os_exit_never_ends_train_with_status_0(reward_file: Path, tmp_path: Path) -> None:
    """os._exit(0) kills the worker before it can say anything; the parent still fails the run."""
    out = run_cli("train", *TINY, "--set", f"output.runs_dir={tmp_path / 'runs'}", "--set",
                  f"reward_file={reward_file}", "--set", "rewards=[{name: 'user:hard_exits', weight: 1.0}]", timeout=600)
    assert out.returncode != 0, out.stdout + out.stderr
    status = json.loads(next((tmp_path / "runs").glob("*/status.json")).read_text())
    assert status["state"] == "failed" and status.get("error")
