"""Run a CLI command whose progress goes to stdout (merge, export), with every line as it comes.

`child.run_cli` streams stderr only, which suits commands that keep stdout for a `--json` result.
`python -m grpo_box merge` and `export` print their progress ("  42.0% quantizing to q4_k_m") on
stdout and write their results to files (`export/export.json`, `merged/grpo_box_merge.json`), so
the app runs them exactly as a user would type them and hands each line of either stream to a
callback. Exit code 0 is success, anything but 0 and 1 is an error whose message is the CLI's own
`error: …` line (`child.error_message`). Exit code 1 is ambiguous: the CLI returns it for "done,
but a check failed" (the report says which), and Python exits with it on an uncaught exception.
Only a command that finished says so: its last progress line reached 100% (or, with `--json`, it
printed its JSON result); an exit 1 without that is a crash, raised as a ChildError that shows the
crash's last stderr lines. A timeout kills the whole process group, and the child is listed while
it runs (`child.listed`: training waits for it, Cancel can interrupt it), as `child.run_cli` does.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .child import (ChildError, ChildResult, LineCallback, _kill, check_cancelled, error_message, kill_time, listed,
                    start_child, tail)

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(.*)$")
CHECK_FAILED = 1  # the CLI's exit code for "finished, but a check failed" (and Python's for a crash)
CRASH_LINES = 8  # stderr lines shown for a crash: the traceback's end, which names the exception


def parse_percent(line: str) -> tuple[float, str] | None:
    """(fraction, message) from a CLI progress line "  42.0% quantizing to q4_k_m"."""
    match = _PERCENT.match(line)
    return (float(match.group(1)) / 100, match.group(2)) if match else None


def stream_cli(args: Sequence[str], *, on_line: LineCallback | None = None, timeout: float = 3600.0,
               env: dict[str, str] | None = None, cwd: str | Path | None = None,
               ok_codes: tuple[int, ...] = (0, CHECK_FAILED)) -> ChildResult:
    """Run `python -m grpo_box ARGS`; `on_line` gets each stdout and stderr line in the calling thread.

    Raises ChildError (the CLI's own message) on an exit code outside `ok_codes` or a timeout.
    """
    shown = " ".join(["python", "-m", "grpo_box", *map(str, args)])
    proc = start_child(args, cwd, env)
    with listed(proc, args):
        return _follow(proc, shown, timeout, on_line, ok_codes)


def _follow(proc: subprocess.Popen, shown: str, timeout: float, on_line: LineCallback | None,
            ok_codes: tuple[int, ...]) -> ChildResult:
    lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
    readers = [threading.Thread(target=_pump, args=(proc.stdout, "out", lines), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "err", lines), daemon=True)]
    for reader in readers:
        reader.start()
    seen: dict[str, list[str]] = {"out": [], "err": []}
    open_streams, deadline = len(readers), kill_time(proc, time.monotonic() + timeout)
    while open_streams:
        try:
            item = lines.get(timeout=max(0.0, min(0.5, deadline() - time.monotonic())))
        except queue.Empty:
            if time.monotonic() >= deadline():
                _kill(proc)
                proc.wait()
                check_cancelled(proc, shown, "".join(seen["err"]))
                raise ChildError(f"`{shown}` took longer than {timeout:g} s and was stopped",
                                 stderr_tail=tail("".join(seen["err"])), command=shown) from None
            continue
        if item is None:
            open_streams -= 1
            continue
        stream, line = item
        seen[stream].append(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    proc.wait()
    stdout, stderr = "".join(seen["out"]), "".join(seen["err"])
    check_cancelled(proc, shown, stderr)
    if proc.returncode not in ok_codes:
        raise ChildError(error_message(stderr or stdout, proc.returncode), returncode=proc.returncode,
                         stderr_tail=tail(stderr), command=shown)
    if proc.returncode == CHECK_FAILED and not finished(stdout):
        raise ChildError(crash_message(shown, stderr or stdout), returncode=proc.returncode,
                         stderr_tail=tail(stderr), command=shown)
    return ChildResult(proc.returncode, stdout, stderr)


def finished(stdout: str) -> bool:
    """Whether a command's stdout shows that it ran to the end: its JSON result (`--json`), or a
    progress line at 100% (the engine reports 1.0 only once the work is done)."""
    try:
        json.loads(stdout)
        return True
    except ValueError:
        pass
    fractions = [parsed[0] for parsed in map(parse_percent, stdout.splitlines()) if parsed is not None]
    return any(f >= 1.0 for f in fractions)


def crash_message(shown: str, output: str) -> str:
    """What to say about a command that exited 1 without finishing: it crashed; its last lines say why."""
    end = tail(output, CRASH_LINES)
    return f"`{shown}` crashed before it finished (exit code {CHECK_FAILED})" + (
        f"; its last lines:\n{end}" if end else ", with no output")


def _pump(stream: Any, name: str, lines: "queue.Queue[tuple[str, str] | None]") -> None:
    for line in iter(stream.readline, ""):
        lines.put((name, line))
    lines.put(None)
