"""Whole-file and whole-folder replacement, so a reader sees the old version or the new one, never half.

`write_text_atomic` is the engine's one atomic file write (run files, configs, eval.json, export
reports and Modelfiles); `runs` re-exports it. It writes a temporary file beside the target,
named `<name>.<random>.tmp` so two writers of the same file never share one, flushes it to disk
and renames it over the target. `replace_dir` swaps a finished folder in for an old one (the
cluster bundle, the merged model, the bundled model's import, llama.cpp's converter). This module
imports nothing from the engine, so `config` can use it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # a leftover of a writer killed mid-write is `<name>.<random>.tmp`


def write_text_atomic(path: Path, text: str, fallback_in_place: bool = False) -> None:
    """Write `text` to `path` through a temporary file beside it and a rename; the temporary file
    never outlives a failed write. With `fallback_in_place`, a write the disk has no room for is
    retried in place after the temporary file is gone (a small file such as status.json then
    still records the final state)."""
    path = Path(path)
    data = text.encode("utf-8")
    tmp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not (fallback_in_place and isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise
        with path.open("r+b" if path.exists() else "wb") as fh:
            fh.truncate(0)
            fh.write(data)


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, uniquely named temporary file beside `path` and its descriptor. Not mkstemp: its
    0600 mode would end up on the target, whereas this one gets the umask's, as a plain write does."""
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` (a sibling of `target`) in place of `target`, which may exist:
    the old one is renamed aside first and deleted only once the new one is in place."""
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
