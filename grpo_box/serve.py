"""A local OpenAI-compatible server for an exported GGUF (for Open WebUI, the openai client, curl).

We run llama-cpp-python's own server (`python -m llama_cpp.server`, FastAPI + uvicorn; it needs
the extras `fastapi uvicorn sse-starlette starlette-context pydantic-settings`) in a child
process, so the model's memory and a crash stay out of the caller (the UI), and stopping it frees
everything. This module only adds what the server lacks: picking a free port, waiting until the
server answers, a clear error with its log tail when it does not, and a handle to stop it.

Open WebUI: Settings → Connections → OpenAI API, URL `http://127.0.0.1:PORT/v1`, any API key.
Open WebUI in Docker cannot reach the host's 127.0.0.1: serve with `--host 0.0.0.0` and give it
`http://host.docker.internal:PORT/v1` (on Linux, start the container with
`--add-host=host.docker.internal:host-gateway`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UserError

Progress = Callable[[str, float], None]

SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")


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
                 model_alias: str | None = None, log_dir: str | Path | None = None) -> ServerHandle:
    """Start `python -m llama_cpp.server` on `gguf`; `port=0` picks a free port. Returns when it answers.

    The server's output goes to a log file in `log_dir` (default: the system temp dir).
    """
    say = progress or (lambda msg, frac: None)
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise ServerError(f"{gguf} does not exist: export a GGUF first (python -m grpo_box export …)")
    check_server_extras()
    port = port or free_port(host)
    alias = model_alias or gguf.stem
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", host, "--port", str(port),
           "--n_ctx", str(n_ctx), "--model_alias", alias]
    if chat_format:
        cmd += ["--chat_format", chat_format]
    fd, name = tempfile.mkstemp(prefix=f"grpo-box-server-{port}-", suffix=".log", dir=log_dir)
    os.close(fd)
    log_path = Path(name)
    say(f"starting llama.cpp server on {host}:{port}", 0.1)
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    handle = ServerHandle(f"http://{_url_host(host)}:{port}/v1", process, alias, log_path)
    _wait_ready(handle, timeout, say)
    say(f"server ready: {handle.url} (Open WebUI: add it as an OpenAI API connection)", 1.0)
    return handle


def serve_forever(gguf: str | Path, host: str = "127.0.0.1", port: int = 0, chat_format: str | None = None) -> None:
    """For the CLI: start, print the URLs, block until Ctrl-C, stop."""
    handle = start_server(gguf, host, port, chat_format)
    print(handle.describe(), flush=True)
    try:
        handle.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop()


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
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _wait_ready(handle: ServerHandle, timeout: float, say: Progress) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if handle.process.poll() is not None:
            raise ServerError(f"the server exited with code {handle.process.returncode} (log {handle.log_path}):\n"
                              f"{_tail(handle.log_path)}")
        if _answers(handle.url + "/models"):
            return
        say("waiting for the server to load the model", 0.5)
        time.sleep(0.3)
    handle.stop()
    raise ServerError(f"the server did not answer within {timeout:.0f}s:\n{_tail(handle.log_path)}")


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: never via a proxy


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as resp:
            return resp.status == 200 and "data" in json.loads(resp.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, OSError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])
