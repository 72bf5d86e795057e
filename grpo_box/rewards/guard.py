"""Guards around user reward code: a time limit on each call, exits turned into errors, and a
child process for the CLI commands that run such code.

A reward function is the user's own Python, called once per batch. Three ways it can take the
whole program down are handled here:

- It hangs or loops forever. `call_limited` gives every call `seconds` (`RunConfig.reward_timeout`)
  and raises `RewardTimeout` past them. Two mechanisms, because the caller is not always the
  main thread: TRL calls rewards from the training loop in the worker's main thread, and the dry
  run and `eval` run in the CLI's main thread, but the app or a test may call them from any
  thread. In the main thread (on POSIX) a `SIGALRM` timer interrupts the call itself: the
  exception is raised inside the user's code, which then unwinds like any other exception, so
  nothing of it keeps running. Elsewhere signals cannot be used (Python runs handlers in the main
  thread only), so the call runs in a daemon worker thread and the caller stops waiting after
  `seconds`; the stuck thread is abandoned (a thread cannot be killed) and ends with the process,
  which fails the run anyway. `RewardTimeout` derives from `BaseException` so that a reward's
  `except Exception:` cannot swallow it, and the timer repeats every second so that even a bare
  `except:` in a loop is interrupted again. Neither mechanism can interrupt one long C call that
  holds the interpreter lock (a catastrophic regular expression, say); a stop request's
  escalation to SIGTERM/SIGKILL (job.py) ends those.
- It calls `sys.exit()` or raises `KeyboardInterrupt`. Both are `BaseException`s that would end
  the process with the user's exit status (often 0) and no word about which function did it.
  `call_limited` raises `UserExit` wrapping them instead, so the caller can name the function.
  A real Ctrl-C arriving during the call (the main thread's SIGINT) is told apart by a flag
  its handler sets, and stays a `KeyboardInterrupt`.
- It calls `os._exit()` (or crashes the interpreter). Nothing in the process can catch that. The
  CLI commands that run user rewards in their own process (`rewards score`, `eval`) therefore
  run in a child (`run_guarded`): the child writes a "done" file as its last act (`mark_done`),
  and a child that exits without it is reported as an error with a nonzero exit status, never 0.
  Training already runs in a worker process (job.py), whose parent settles the run the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

DEFAULT_REWARD_TIMEOUT = 120.0  # seconds; RunConfig.reward_timeout
_REPEAT_SECONDS = 1.0  # after the first alarm, again every second until the call gives up
CHILD_ENV = "GRPO_BOX_GUARD_DONE"  # set in a guarded child: the file it writes when it finishes


class RewardTimeout(BaseException):
    """A guarded call ran past its time limit (BaseException: `except Exception` must not catch it)."""


class UserExit(Exception):
    """User code raised SystemExit or KeyboardInterrupt; `.original` is that exception."""

    def __init__(self, original: BaseException):
        super().__init__(describe_exit(original))
        self.original = original


def describe_exit(exc: BaseException) -> str:
    """'called sys.exit(3)' / 'raised KeyboardInterrupt' for a message."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({'' if exc.code is None else repr(exc.code)})"
    return f"raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")


def timeout_of(config: Any) -> float:
    """`config.reward_timeout`, or the default for a config without the field."""
    value = getattr(config, "reward_timeout", None)
    return DEFAULT_REWARD_TIMEOUT if value is None else float(value)


def call_limited(fn: Callable[[], T], seconds: float | None) -> T:
    """`fn()` with at most `seconds` (None or <= 0: no limit); see the module docstring.

    Raises RewardTimeout past the limit and UserExit for SystemExit/KeyboardInterrupt raised by
    `fn`; any other exception of `fn` passes through unchanged.
    """
    if not seconds or seconds <= 0:
        return _catch_exits(fn)
    if _can_use_alarm():
        return _with_alarm(fn, float(seconds))
    return _in_thread(fn, float(seconds))


def _catch_exits(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (SystemExit, KeyboardInterrupt) as exc:
        raise UserExit(exc) from exc


def _can_use_alarm() -> bool:
    return (threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
            and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))  # a timer someone else set stays theirs


def _with_alarm(fn: Callable[[], T], seconds: float) -> T:
    state = {"armed": True, "sigint": False}
    previous_int = signal.getsignal(signal.SIGINT)

    def on_alarm(signum: int, frame: Any) -> None:
        if state["armed"]:
            raise RewardTimeout(seconds)

    def on_int(signum: int, frame: Any) -> None:
        state["sigint"] = True  # a real Ctrl-C: it stays a KeyboardInterrupt
        if callable(previous_int):
            previous_int(signum, frame)
        elif previous_int != signal.SIG_IGN:
            raise KeyboardInterrupt

    previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, on_int)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds, _REPEAT_SECONDS)
        try:
            return fn()
        except (SystemExit, KeyboardInterrupt) as exc:
            if state["sigint"] and isinstance(exc, KeyboardInterrupt):
                raise
            raise UserExit(exc) from exc
        finally:
            state["armed"] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)


def _in_thread(fn: Callable[[], T], seconds: float) -> T:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="grpo-box-reward", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RewardTimeout(seconds)  # the thread is abandoned; it ends with the process
    error = outcome.get("error")
    if isinstance(error, (SystemExit, KeyboardInterrupt)):
        raise UserExit(error) from error
    if error is not None:
        raise error
    return outcome["value"]


# -- the CLI's child process ------------------------------------------------------------------


def in_guarded_child() -> bool:
    return bool(os.environ.get(CHILD_ENV))


def mark_done(code: int) -> None:
    """In a guarded child: record that the command ran to its end (with exit status `code`)."""
    path = os.environ.get(CHILD_ENV)
    if path:
        Path(path).write_text(str(code))


def run_guarded(argv: list[str], what: str) -> int:
    """Run `python -m grpo_box ARGV` in a child with this terminal; its exit status, or 1 (with a
    message) when it ended without finishing, e.g. because user code called os._exit(0).

    Ctrl-C reaches the child directly (same process group); SIGTERM and SIGHUP to this process
    are passed on to it, so closing the terminal or `timeout` leaves nothing running.
    """
    with tempfile.TemporaryDirectory(prefix="grpo-box-guard-") as tmp:
        done = Path(tmp) / "done"
        project_root = str(Path(__file__).resolve().parent.parent.parent)
        env = {**os.environ, CHILD_ENV: str(done),
               "PYTHONPATH": os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH")) if p)}
        child = subprocess.Popen([sys.executable, "-m", "grpo_box", *argv], env=env)
        code = _wait_forwarding(child)
        if done.is_file():
            return code
    if code == 0:  # nothing but os._exit() ends Python with 0 before main() returns
        print(f"error: {what} exited with code 0 before it finished: a reward function (or code it ran) called "
              "os._exit(). Reward functions must return their scores; raise an exception to report a problem",
              file=sys.stderr, flush=True)
        return 1
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    print(f"error: {what} {how} before it finished (see the output above)", file=sys.stderr, flush=True)
    return code if code > 0 else 1


def _wait_forwarding(child: subprocess.Popen) -> int:
    def forward(signum: int, frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the child got the same Ctrl-C and ends its own way
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
