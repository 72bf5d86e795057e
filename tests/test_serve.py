"""The OpenAI-compatible llama.cpp server: start on a free loopback port, chat with `openai`, stop.

Uses the GGUF that the bundled-model package ships (no conversion needed), so it runs in seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from grpo_box.serve import ServerError, free_port, start_server


@pytest.fixture(scope="module")
def bundled_gguf() -> Path:
    from grpo_box.models import bundled_gguf_path

    return bundled_gguf_path()


def test_chat_completion_through_the_openai_client(bundled_gguf: Path, tmp_path: Path) -> None:
    import openai

    events: list[tuple[str, float]] = []
    handle = start_server(bundled_gguf, port=0, n_ctx=1024, progress=lambda m, f: events.append((m, f)), log_dir=tmp_path)
    try:
        assert handle.url.startswith("http://127.0.0.1:") and handle.url.endswith("/v1")
        assert handle.is_running() and events[-1][1] == 1.0 and handle.url in events[-1][0]
        assert "Open WebUI" in handle.describe() and handle.url in handle.describe()
        port = handle.url.rsplit(":", 1)[1].split("/")[0]
        assert f"--host 0.0.0.0 and use http://host.docker.internal:{port}/v1" in handle.describe()
        client = openai.OpenAI(base_url=handle.url, api_key="not-needed", timeout=60)
        assert [m.id for m in client.models.list().data] == [handle.model]
        reply = client.chat.completions.create(
            model=handle.model, messages=[{"role": "user", "content": "Name three primary colors."}],
            max_tokens=64, temperature=0,
        )
        choice = reply.choices[0]
        assert choice.message.content.strip() and choice.finish_reason == "stop"
        assert "<|im_end|>" not in choice.message.content
    finally:
        handle.stop()
    assert not handle.is_running()


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="export a GGUF first"):
        start_server(tmp_path / "nope.gguf")


def test_a_broken_model_reports_the_server_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ServerError, match="exited with code"):
        start_server(bad, port=free_port(), timeout=60, log_dir=tmp_path)


@pytest.mark.parametrize("host", ["not a host!!", "203.0.113.7"])  # no such name; an address of another machine
def test_a_host_this_machine_cannot_listen_on_is_named(host: str) -> None:
    from grpo_box.serve import check_port

    for attempt in (lambda: free_port(host), lambda: check_port(host, 8080)):
        with pytest.raises(ServerError, match=f"host '{re.escape(host)}' is not an address of this machine: use "
                                              "127.0.0.1"):
            attempt()


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# ---------------------------------------------------------------- a port that is not ours, signals, logs


class _FakeOpenAI:
    """Another OpenAI-compatible server (not ours) answering /v1/models on a real port."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = json.dumps({"object": "list", "data": [{"id": "someone-elses-model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def other_server():
    fake = _FakeOpenAI()
    yield fake
    fake.close()


def test_a_port_held_by_another_openai_server_is_refused(bundled_gguf: Path, tmp_path: Path, other_server) -> None:
    from tests.helpers import run_cli

    with pytest.raises(ServerError, match=rf"port {other_server.port} on 127.0.0.1 is in use by another program "
                                          r"\(an OpenAI-compatible server already answers there\)"):
        start_server(bundled_gguf, port=other_server.port, log_dir=tmp_path)
    out = run_cli("serve", str(bundled_gguf), "--port", str(other_server.port), timeout=120, GRPO_BOX_HOME=str(tmp_path))
    assert out.returncode != 0 and "in use by another program" in out.stderr and "Traceback" not in out.stderr
    assert "OpenAI-compatible server for" not in out.stdout  # no success line with the other server's URL


def test_only_our_server_counts_as_ready(tmp_path: Path, other_server) -> None:
    """While our server still loads (here: a process that never binds), another server answering
    the port is not taken for ours."""
    import subprocess
    import sys

    from grpo_box.serve import ServerHandle, _wait_ready

    log = tmp_path / "x.server.log"
    log.write_text("INFO: loading model\n")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    handle = ServerHandle(f"http://127.0.0.1:{other_server.port}/v1", process, "ours", log)
    with pytest.raises(ServerError, match=rf"another server answers on port {other_server.port} "
                                          r"\(it serves someone-elses-model\), not ours"):
        _wait_ready(handle, 2.0, lambda m, f: None, other_server.port)
    assert process.poll() is not None  # stopped, not left behind


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_cli_server(gguf: Path, home: Path):
    import subprocess
    import sys
    import time

    from tests.helpers import ENV, ROOT

    port = free_port()
    cli = subprocess.Popen([sys.executable, "-m", "grpo_box", "serve", str(gguf), "--port", str(port)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**ENV, "GRPO_BOX_HOME": str(home)})
    first = cli.stdout.readline()  # printed once the server answers
    assert first.startswith("OpenAI-compatible server for"), first + cli.stdout.read()
    deadline = time.time() + 10
    while not (servers := _children(cli.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert len(servers) == 1
    return cli, servers[0], port


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_ending_the_serve_command_ends_the_llama_server(bundled_gguf: Path, tmp_path: Path, sig: str) -> None:
    """SIGTERM (a closed terminal, `timeout`) stops the server cleanly; even SIGKILL leaves no
    orphan holding the port (the server gets SIGTERM when its parent dies)."""
    import os
    import signal
    import socket
    import time

    cli, server, port = _start_cli_server(bundled_gguf, tmp_path)
    cli.send_signal(getattr(signal, sig))
    code = cli.wait(timeout=30)
    deadline = time.time() + 20
    while _alive(server) and time.time() < deadline:
        time.sleep(0.1)
    orphaned = _alive(server)
    if orphaned:  # do not leave it behind when the check fails
        os.kill(server, signal.SIGKILL)
    assert not orphaned
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    if sig == "SIGTERM":
        assert code == 0
    # the log sits under the data home (the bundled GGUF is inside the Python environment), not in /tmp
    logs = list((tmp_path / "server-logs").glob("*.server.log"))
    assert [p.name for p in logs] == [f"{bundled_gguf.stem}.server.log"] and "Uvicorn running" in logs[0].read_text()


def test_server_logs_sit_next_to_the_export_and_rotate(tmp_path: Path) -> None:
    from grpo_box.serve import _rotated_log, default_log_dir

    export = tmp_path / "run" / "export" / "gguf"
    export.mkdir(parents=True)
    gguf = export / "model-q4_k_m.gguf"
    gguf.write_bytes(b"")
    assert default_log_dir(gguf) == export
    for text in ("first", "second", "third"):
        log = _rotated_log(export, gguf)
        log.write_text(text)
    assert sorted(p.name for p in export.glob("*.log*")) == ["model-q4_k_m.server.log", "model-q4_k_m.server.log.1"]
    assert (export / "model-q4_k_m.server.log.1").read_text() == "second"
