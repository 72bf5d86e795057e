"""Run a CLI command whose progress goes to stdout (merge, export), with every line as it comes.

`child.run_cli` streams stderr only, which suits commands that keep stdout for a `--json` result.
`python -m grpo_box merge` and `export` print their progress ("  42.0% quantizing to q4_k_m") on
stdout and write their results to files (`export/export.json`, `merged/grpo_box_merge.json`), so
the app runs them exactly as a user would type them and hands each line of either stream to a
callback. Exit code 0 is success, 1 means "done, but a check failed" (the report says which) and
anything else is an error whose message is the CLI's own `error: …` line (`child.error_message`).
A timeout kills the whole process group, as `child.run_cli` does.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .child import ChildError, ChildResult, LineCallback, _kill, child_env, cli_command, error_message, tail

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(.*)$")
CHECK_FAILED = 1  # the CLI's exit code for "finished, but a check failed"


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
    proc = subprocess.Popen(cli_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                            cwd=cwd, env=child_env(env), start_new_session=True)
    lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
    readers = [threading.Thread(target=_pump, args=(proc.stdout, "out", lines), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "err", lines), daemon=True)]
    for reader in readers:
        reader.start()
    seen: dict[str, list[str]] = {"out": [], "err": []}
    open_streams, deadline = len(readers), time.monotonic() + timeout
    while open_streams:
        try:
            item = lines.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        except queue.Empty:
            if time.monotonic() >= deadline:
                _kill(proc)
                proc.wait()
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
    if proc.returncode not in ok_codes:
        raise ChildError(error_message(stderr or stdout, proc.returncode), returncode=proc.returncode,
                         stderr_tail=tail(stderr), command=shown)
    return ChildResult(proc.returncode, stdout, stderr)


def _pump(stream: Any, name: str, lines: "queue.Queue[tuple[str, str] | None]") -> None:
    for line in iter(stream.readline, ""):
        lines.put((name, line))
    lines.put(None)
