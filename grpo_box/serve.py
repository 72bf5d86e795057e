"""A local OpenAI-compatible server for an exported GGUF (for Open WebUI, the openai client, curl).

We run llama-cpp-python's own server (`python -m llama_cpp.server`, FastAPI + uvicorn; it needs
the extras `fastapi uvicorn sse-starlette starlette-context pydantic-settings`) in a child
process, so the model's memory and a crash stay out of the caller (the UI), and stopping it frees
everything. This module only adds what the server lacks: picking a free port, waiting until the
server answers, a clear error with its log tail when it does not, and a handle to stop it.

It also makes sure the server that answers is ours. A port that another program holds is refused
before anything starts (`check_port`). The llama.cpp server loads the model before it binds the
port, so while it loads, another server that took the port meanwhile would answer `/v1/models`
too; the server counts as ready only when our process is alive, its own log says uvicorn is
running on our port, and `/v1/models` names our model. The CLI's `serve` stops the server on
Ctrl-C, SIGTERM and SIGHUP, and on Linux the server also gets SIGTERM when the CLI process dies
(`PR_SET_PDEATHSIG`), so no orphan keeps the port. The server's log is kept next to the GGUF it
serves (`<name>.server.log`, the previous run's as `.1`); a GGUF inside the Python environment
(the bundled model) or in a read-only folder logs under the data home's `server-logs/` instead.

Open WebUI: Settings → Connections → OpenAI API, URL `http://127.0.0.1:PORT/v1`, any API key.
Open WebUI in Docker cannot reach the host's 127.0.0.1: serve with `--host 0.0.0.0` and give it
`http://host.docker.internal:PORT/v1` (on Linux, start the container with
`--add-host=host.docker.internal:host-gateway`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UserError
from .llama_tools import gpu_layers
from .progress import Progress

SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080  # `serve`'s and the app's Serve panel's defaults


class ServerError(UserError, RuntimeError):
    """The server could not start; the message carries the reason and its log tail."""


@dataclass
class ServerHandle:
    url: str  # OpenAI base URL, e.g. http://127.0.0.1:8123/v1
    process: subprocess.Popen
    model: str  # the model name clients send ("model": …)
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout`)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def describe(self) -> str:
        port = urlsplit(self.url).port
        return (f"OpenAI-compatible server for {self.model} at {self.url}\n"
                f"Open WebUI: Settings > Connections > OpenAI API > URL {self.url} (any API key)\n"
                f"Open WebUI in Docker: serve with --host 0.0.0.0 and use http://host.docker.internal:{port}/v1 "
                f"(Linux: docker run --add-host=host.docker.internal:host-gateway ...)\n"
                f"log: {self.log_path}")

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(gguf: str | Path, host: str = "127.0.0.1", port: int = 0, chat_format: str | None = None,
                 n_ctx: int = 4096, timeout: float = 120.0, progress: Progress | None = None,
                 model_alias: str | None = None, log_dir: str | Path | None = None,
                 die_with_parent: bool = False) -> ServerHandle:
    """Start `python -m llama_cpp.server` on `gguf`; `port=0` picks a free port. Returns when it answers.

    A port another program holds is refused up front (ServerError). The server's output goes to
    `<gguf name>.server.log` in `log_dir` (default: `default_log_dir(gguf)`). `die_with_parent`
    (Linux; for a caller in the main thread such as the CLI) makes the server get SIGTERM when
    this process dies, even by SIGKILL.
    """
    say = progress or (lambda msg, frac: None)
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ServerError(f"{gguf} does not exist: export a GGUF first (python -m grpo_box export …)")
    check_server_extras()
    if port:
        check_port(host, port)
    port = port or free_port(host)
    alias = model_alias or gguf.stem
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", host, "--port", str(port),
           "--n_ctx", str(n_ctx), "--model_alias", alias, "--n_gpu_layers", str(gpu_layers())]
    if chat_format:
        cmd += ["--chat_format", chat_format]
    log_path = _rotated_log(Path(log_dir) if log_dir else default_log_dir(gguf), gguf)
    # llama_cpp.server lets $HOST and $PORT override --host/--port: drop them, or it may listen elsewhere
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    say(f"starting llama.cpp server on {host}:{port}", 0.1)
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   preexec_fn=_die_with_parent if die_with_parent else None)
    handle = ServerHandle(f"http://{_url_host(host)}:{port}/v1", process, alias, log_path)
    try:
        _wait_ready(handle, timeout, say, port)
    except BaseException:  # not ready, or interrupted while loading: nothing may keep running
        handle.stop()
        raise
    say(f"server ready: {handle.url} (Open WebUI: add it as an OpenAI API connection)", 1.0)
    return handle


class _Stop(Exception):
    """Raised in the main thread by the CLI's SIGTERM/SIGHUP handler."""


def serve_forever(gguf: str | Path, host: str = "127.0.0.1", port: int = 0, chat_format: str | None = None) -> None:
    """For the CLI: start, print the URLs, block until Ctrl-C, SIGTERM or SIGHUP, then stop the server.

    A server that dies by itself raises ServerError with its log tail (the CLI then exits nonzero)."""

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signum)

    main = threading.current_thread() is threading.main_thread()  # only there may handlers be set
    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS} if main else {}
    handle = None
    try:
        handle = start_server(gguf, host, port, chat_format, die_with_parent=main)
        print(handle.describe(), flush=True)
        code = handle.process.wait()
        raise ServerError(f"the server stopped by itself with code {code} (log {handle.log_path}):\n"
                          f"{_tail(handle.log_path)}")
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if handle is not None:
            handle.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def _die_with_parent() -> None:
    """In the server child before exec (Linux): SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the CLI's signal handlers still stop it
        pass


def check_port(host: str, port: int) -> None:
    """Raise ServerError when `port` on `host` cannot be listened on (another program holds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            _bind(sock, host, port)
        except OSError as exc:
            who = " (an OpenAI-compatible server already answers there)" if _answers(
                f"http://{_url_host(host)}:{port}/v1/models") else ""
            raise ServerError(f"port {port} on {host} is in use by another program{who}: {exc.strerror or exc}; "
                              f"pick another port (or 0 for any free one), or stop that program") from None


def _bind(sock: socket.socket, host: str, port: int) -> None:
    """Bind, or raise ServerError when `host` is no address of this machine (a typo, a name that
    does not resolve); other OSErrors (the port is taken) are the caller's to word."""
    try:
        sock.bind((host, port))
    except socket.gaierror:
        raise ServerError(_bad_host(host)) from None
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServerError(_bad_host(host)) from None
        raise


def _bad_host(host: str) -> str:
    return (f"host {host!r} is not an address of this machine: use 127.0.0.1 (this machine only) or 0.0.0.0 "
            f"(every network, e.g. for Open WebUI in Docker)")


def default_log_dir(gguf: Path) -> Path:
    """Where a GGUF's server log goes: next to the GGUF, unless it sits inside this Python
    environment (the bundled model's package) or its folder is not writable; then the data home's
    `server-logs/`."""
    folder = gguf.resolve().parent
    inside_python = any(folder.is_relative_to(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix})
    if not inside_python and os.access(folder, os.W_OK):
        return folder
    from .models import data_home

    return data_home() / "server-logs"


def _rotated_log(folder: Path, gguf: Path) -> Path:
    """`<folder>/<gguf stem>.server.log`, the previous one kept as `.1` (older ones dropped)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{gguf.stem}.server.log"
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))
    return log


def check_server_extras() -> None:
    import importlib.util

    missing = [m for m in SERVER_EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        raise ServerError(
            f"llama-cpp-python's server needs {', '.join(missing)}: "
            f"pip install 'llama-cpp-python[server]' (or fastapi uvicorn sse-starlette starlette-context pydantic-settings)"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        _bind(sock, host, 0)
        return int(sock.getsockname()[1])


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _wait_ready(handle: ServerHandle, timeout: float, say: Progress, port: int) -> None:
    """Return once our server answers: our process alive, its log saying it listens on `port`,
    and `/v1/models` naming our model (see the module docstring)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if handle.process.poll() is not None:
            log = _tail(handle.log_path)
            taken = (f"port {port} was taken by another program while the model loaded; pick another port. "
                     if "address already in use" in log.lower() else "")
            raise ServerError(f"the server exited with code {handle.process.returncode}: {taken}"
                              f"(log {handle.log_path}):\n{log}")
        if _listening(handle.log_path, port) and handle.model in _model_ids(handle.url + "/models"):
            return
        say("waiting for the server to load the model", 0.5)
        time.sleep(0.3)
    other = _model_ids(handle.url + "/models")
    handle.stop()
    if other and not _listening(handle.log_path, port):
        raise ServerError(f"another server answers on port {port} (it serves {', '.join(other)}), not ours; "
                          f"pick another port:\n{_tail(handle.log_path)}")
    raise ServerError(f"the server did not answer within {timeout:.0f}s:\n{_tail(handle.log_path)}")


def _listening(log_path: Path, port: int) -> bool:
    """Whether our server's log says uvicorn listens on `port` (printed once it has bound it)."""
    return re.search(rf"Uvicorn running on \S+:{port}\b", _tail(log_path, 200)) is not None


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: never via a proxy


def _answers(url: str) -> bool:
    """Whether an OpenAI-compatible server answers `url` (a /v1/models URL)."""
    return _model_ids(url) is not None


def _model_ids(url: str) -> list[str] | None:
    """The model ids a /v1/models URL lists, or None when nothing OpenAI-like answers there."""
    try:
        with _DIRECT.open(url, timeout=2) as resp:
            body = json.loads(resp.read() or b"{}") if resp.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, OSError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return None
    return [str(m.get("id")) for m in body["data"] if isinstance(m, dict)]


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])
