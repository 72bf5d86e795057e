"""The app's one llama.cpp server: started from the Export tab, stopped on request or when the app exits.

`grpo_box.serve.start_server` runs `python -m llama_cpp.server` in a child process and returns
once it answers; this module keeps its handle, module-level behind a lock, so every page sees the
same server and at most one runs at a time. An `atexit` hook stops it when the app process ends
normally (Ctrl-C included); the server is also started with `die_with_parent`, so it gets
SIGTERM when the app process dies any other way.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from grpo_box.errors import UserError
from grpo_box.serve import ServerHandle, start_server

_LOCK = threading.Lock()
_handle: dict[str, ServerHandle | None] = {"server": None}
START_TIMEOUT = 180.0


class ServerBusy(UserError):
    """A server is already running (or starting); the message names it."""


def current() -> ServerHandle | None:
    """The running server, or None (a server that died by itself is forgotten)."""
    handle = _handle["server"]
    if handle is not None and not handle.is_running():
        _handle["server"] = None
        return None
    return handle


def start(gguf: Path, host: str, port: int) -> ServerHandle:
    """Start the server on `gguf`; refuses while another one runs (stop it first)."""
    if not _LOCK.acquire(blocking=False):
        raise ServerBusy("a server is starting right now; wait for it, then stop it before starting another")
    try:
        running = current()
        if running is not None:
            raise ServerBusy(f"a server is already running for {running.model} at {running.url}; "
                             "stop it first (one server at a time)")
        # die_with_parent: the server gets SIGTERM when the app dies; PR_SET_PDEATHSIG follows the
        # thread that forked it, so the start runs in a thread that lives as long as the app.
        _handle["server"] = _start_in_keeper(gguf, host, port)
        return _handle["server"]
    finally:
        _LOCK.release()


def stop() -> str | None:
    """Stop the server; returns what was served, or None when nothing ran."""
    with _LOCK:
        handle = _handle["server"]
        _handle["server"] = None
    if handle is None:
        return None
    handle.stop()
    return handle.model


_KEEPER: dict[str, object] = {}


def _start_in_keeper(gguf: Path, host: str, port: int) -> ServerHandle:
    """Start the server from one long-lived daemon thread (see `start`), and wait for its answer."""
    import queue

    keeper = _KEEPER.get("thread")
    if keeper is None:
        jobs: queue.Queue = queue.Queue()

        def loop() -> None:
            while True:
                fn, box, done = jobs.get()
                try:
                    box.append(fn())
                except BaseException as exc:  # handed back to the caller's thread
                    box.append(exc)
                done.set()

        thread = threading.Thread(target=loop, name="grpo-box-server-keeper", daemon=True)
        thread.start()
        _KEEPER.update(thread=thread, jobs=jobs)
    box: list[object] = []
    done = threading.Event()
    _KEEPER["jobs"].put((lambda: start_server(gguf, host, port, timeout=START_TIMEOUT, die_with_parent=True),
                         box, done))  # type: ignore[union-attr]
    done.wait()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]  # type: ignore[return-value]


atexit.register(stop)
