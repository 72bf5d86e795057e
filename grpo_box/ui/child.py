"""Run the engine's CLI in a child process: `python -m grpo_box … --json`, result on stdout.

The app never loads a model, tokenizer or user reward file itself. Anything that does (the data
preview, the reward-file check, the dry run, later evaluation and export) runs as the same CLI
command a user could type, in a child process: progress lines come on stderr and the result as
JSON on stdout. A crash, a hang (the timeout kills the whole process group) or an import error
in user code therefore never takes the app down. A failure becomes a `ChildError` whose message
is the engine's own one-line `error: …` when there is one (a UserError the CLI printed), else
the last lines of stderr. `Claims` keeps two handlers from starting the same child job at once
(the Export tab's one merge/export slot, the Evaluate tab's one evaluation per run).

Every child is listed while it runs, so `check_no_model_child` can refuse to start training (or,
on a GPU, a second model load) while an evaluation, merge, export or dry run holds a model, and
`cancel_children` can interrupt the one a page's Cancel button names.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_box.errors import UserError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding grpo_box/
TAIL_LINES = 12

LineCallback = Callable[[str], None]
# the CLI verbs whose child loads a model (what `check_no_model_child` waits for)
MODEL_VERBS = (("eval",), ("merge",), ("export",), ("rewards", "score"))
_LIVE: dict[int, tuple[str, ...]] = {}  # pid: the arguments of each child running now
_CANCELLED: dict[int, float] = {}  # pid: when (time.monotonic) a cancelled child is killed if still running
_LIVE_LOCK = threading.Lock()
CANCEL_GRACE_SECONDS = 20.0  # a cancelled child's time to remove its temporary files


class ChildError(UserError, RuntimeError):
    """A child command failed or timed out; `str()` is the message to show the user."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = "",
                 command: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.command = command


class ChildCancelled(ChildError):
    """The user cancelled the child (`cancel_children`) before it finished."""


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str


class Claims:
    """Named slots, each held by one job at a time, with a note of what holds it (shown to other pages)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Any]] = {}

    def claim(self, key: str, **info: Any) -> bool:
        """Take slot `key` for a job described by `info` (since: the time now); False when it is taken."""
        with self._lock:
            if key in self._held:
                return False
            self._held[key] = {"since": time.strftime("%H:%M:%S"), **info}
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def note(self, key: str, **info: Any) -> None:
        """Update what the job holding `key` reports (its last progress line); nothing when none holds it."""
        with self._lock:
            if key in self._held:
                self._held[key].update(info)

    def holder(self, key: str) -> dict[str, Any] | None:
        """A copy of what holds `key`, or None when it is free."""
        with self._lock:
            held = self._held.get(key)
            return dict(held) if held is not None else None


def cli_command(args: Sequence[str]) -> list[str]:
    """The argv that runs `python -m grpo_box ARGS` with this interpreter."""
    return [sys.executable, "-m", "grpo_box", *[str(a) for a in args]]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The app's environment, unbuffered, with this checkout importable."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], *, timeout: float = 600.0, on_line: LineCallback | None = None,
            cwd: str | Path | None = None, env: dict[str, str] | None = None) -> ChildResult:
    """Run `python -m grpo_box ARGS`; call `on_line` with each stderr line as it arrives.

    `on_line` runs in the calling thread (so it may update a Gradio progress bar). Raises
    ChildError when the command exits non-zero or runs past `timeout` seconds (then it and its
    own children are killed).
    """
    shown = " ".join(["python", "-m", "grpo_box", *[str(a) for a in args]])
    proc = start_child(args, cwd, env)
    with listed(proc, args):
        return _follow(proc, shown, timeout, on_line)


def start_child(args: Sequence[str], cwd: str | Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m grpo_box ARGS` in its own process group (a timeout or a cancel reaches its children
    too), both output streams piped as text."""
    return subprocess.Popen(cli_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", cwd=cwd,
                            env=child_env(env), start_new_session=True)


@contextlib.contextmanager
def listed(proc: subprocess.Popen, args: Sequence[str]) -> Iterator[None]:
    """List `proc` as running `args` while the block runs (`model_children`, `children_using` and
    `cancel_children` see it)."""
    with _LIVE_LOCK:
        _LIVE[proc.pid] = tuple(str(a) for a in args)
    try:
        yield
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(proc.pid, None)
            _CANCELLED.pop(proc.pid, None)


def kill_time(proc: subprocess.Popen, timeout_at: float) -> Callable[[], float]:
    """When (time.monotonic) `proc` is to be killed: its timeout, or sooner once it was cancelled."""
    return lambda: min(timeout_at, _CANCELLED.get(proc.pid, timeout_at))


def check_cancelled(proc: subprocess.Popen, shown: str, stderr: str) -> None:
    """Raise ChildCancelled when `proc` (exited) was cancelled and did not finish anyway."""
    with _LIVE_LOCK:
        cancelled = proc.pid in _CANCELLED
    if cancelled and proc.returncode != 0:  # one that finished just as the cancel came counts as done
        raise ChildCancelled(f"`{shown}` was cancelled", returncode=proc.returncode, stderr_tail=tail(stderr),
                             command=shown)


def cancel_children(verbs: Sequence[str], folder: Path) -> list[str]:
    """Cancel this app's children running one of `verbs` (e.g. "eval") on `folder`: an interrupt to
    each one's process group, as Ctrl+C in a terminal, so the engine's cleanup removes its temporary
    files; `run_cli` kills it if it still runs CANCEL_GRACE_SECONDS later and raises ChildCancelled.
    Returns the commands cancelled (none: nothing of the kind was running)."""
    target = folder.resolve()
    with _LIVE_LOCK:
        chosen = {pid: args for pid, args in _LIVE.items()
                  if args[:1] and args[0] in verbs and any(_names(arg, target) for arg in args)}
        _CANCELLED.update({pid: time.monotonic() + CANCEL_GRACE_SECONDS for pid in chosen})
    for pid in chosen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGINT)
    return [_shown(args) for args in chosen.values()]


def _follow(proc: subprocess.Popen, shown: str, timeout: float, on_line: LineCallback | None) -> ChildResult:
    """Pass the child's stderr lines on until it exits (killing it after `timeout` s, or after the
    grace of a cancel); its result."""
    lines: queue.Queue[str | None] = queue.Queue()
    stdout_parts: list[str] = []
    readers = [threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True),
               threading.Thread(target=lambda: stdout_parts.append(proc.stdout.read()), daemon=True)]
    for reader in readers:
        reader.start()
    stderr_lines: list[str] = []
    timed_out = _drain(lines, stderr_lines, on_line, kill_time(proc, time.monotonic() + timeout))
    if timed_out:
        _kill(proc)
    proc.wait()
    for reader in readers:
        reader.join(timeout=5)
    _drain(lines, stderr_lines, on_line, None)
    stderr = "".join(stderr_lines)
    check_cancelled(proc, shown, stderr)
    if timed_out:
        raise ChildError(f"`{shown}` took longer than {timeout:g} s and was stopped", returncode=None,
                         stderr_tail=tail(stderr), command=shown)
    if proc.returncode != 0:
        raise ChildError(error_message(stderr, proc.returncode), returncode=proc.returncode,
                         stderr_tail=tail(stderr), command=shown)
    return ChildResult(proc.returncode, "".join(stdout_parts), stderr)


def model_children() -> list[str]:
    """The commands (`python -m grpo_box …`) of this app's children that hold a model now."""
    return [_shown(args) for args in _running() if any(args[:len(verb)] == verb for verb in MODEL_VERBS)]


def children_using(folder: Path) -> list[str]:
    """The commands of this app's children working on `folder` now (a run an evaluation or export reads)."""
    target = folder.resolve()
    return [_shown(args) for args in _running() if any(_names(arg, target) for arg in args)]


def _running() -> list[tuple[str, ...]]:
    with _LIVE_LOCK:
        return list(_LIVE.values())


def _shown(args: tuple[str, ...]) -> str:
    return " ".join(["python -m grpo_box", *args[:2]])


def _names(arg: str, target: Path) -> bool:
    return arg.startswith(("/", ".", "~")) and Path(arg).expanduser().resolve() == target


def model_child_refusal(what: str) -> str | None:
    """Why `what` (e.g. "Training") cannot start now, or None: a child of this app holds a model, and
    both would compete for the memory (on a GPU, one runs out of it; on the CPU, both crawl)."""
    busy = model_children()
    if not busy:
        return None
    return (f"`{busy[0]}` is running in this app and holds a model in memory. {what} would compete with "
            "it for that memory: start it when that is done (its tab shows how far it got).")


def check_no_model_child(what: str) -> None:
    """`model_child_refusal` as a UserError, for handlers that already turn those into messages."""
    refusal = model_child_refusal(what)
    if refusal:
        raise UserError(refusal)


def run_json(args: Sequence[str], *, timeout: float = 600.0, on_line: LineCallback | None = None,
             cwd: str | Path | None = None, env: dict[str, str] | None = None) -> Any:
    """`run_cli` for a `--json` command: the parsed JSON it printed on stdout."""
    result = run_cli(args, timeout=timeout, on_line=on_line, cwd=cwd, env=env)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise ChildError(f"`python -m grpo_box {' '.join(map(str, args))}` printed no JSON result:\n"
                         f"{tail(result.stdout or result.stderr)}", returncode=0,
                         stderr_tail=tail(result.stderr)) from None


@contextlib.contextmanager
def temp_config(yaml_text: str) -> Iterator[str]:
    """A temporary YAML config file holding `yaml_text`, for `--config`; removed afterwards."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="grpo-box-ui-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml_text, encoding="utf-8")
        yield str(path)


_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")


def parse_progress(line: str) -> tuple[int, int] | None:
    """(done, total) from a progress line such as "  8 samples per prompt: 3/4 prompts"."""
    match = _COUNT.search(line)
    if not match or int(match.group(2)) == 0:
        return None
    return int(match.group(1)), int(match.group(2))


def _pump(stream: Any, lines: "queue.Queue[str | None]") -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _drain(lines: "queue.Queue[str | None]", seen: list[str], on_line: LineCallback | None,
           deadline: Callable[[], float] | None) -> bool:
    """Hand stderr lines to `on_line` until the stream ends; True when `deadline()` (a monotonic time,
    asked again each half second: a cancel brings it forward) passed first."""
    while True:
        wait = 0.0 if deadline is None else max(0.0, min(0.5, deadline() - time.monotonic()))
        try:
            line = lines.get(timeout=wait) if deadline is not None else lines.get_nowait()
        except queue.Empty:
            if deadline is None:
                return False
            if time.monotonic() >= deadline():
                return True
            continue
        if line is None:
            return False
        seen.append(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` non-empty lines of `text`."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def error_message(stderr: str, returncode: int | None = None) -> str:
    """The engine's `error: …` message (with its continuation lines) when the CLI printed one,
    else the end of stderr: a crash keeps its last lines, which name the exception."""
    lines = stderr.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            return "\n".join([lines[i][len("error: "):], *lines[i + 1:]]).strip()
    code = f" (exit code {returncode})" if returncode is not None else ""
    end = deque((line for line in lines if line.strip()), maxlen=TAIL_LINES)
    if not end:
        return f"the command failed{code} with no output"
    if "Traceback (most recent call last)" in stderr:  # a bug, not a user error: its last line names it
        return f"the command failed{code}: {end[-1].strip()}"
    return f"the command failed{code}:\n" + "\n".join(end)
