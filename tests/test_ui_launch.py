"""`python app.py`'s flags, on the real launcher in a subprocess: a non-loopback --host without
--auth is warned about, --auth really requires the login, and a malformed --auth is refused with
the form to use before anything starts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ENV, ROOT
from ui_helpers import free_port


def _launch(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp_path / f"app-{port}.log"
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--no-browser",
                                "--runs-dir", str(tmp_path / "runs"), *flags], cwd=ROOT, env=ENV,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}/", log


def _wait_up(url: str, process: subprocess.Popen, log: Path) -> None:
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the app did not come up: " + log.read_text()[-3000:])


def test_a_non_loopback_host_without_auth_is_warned_about(tmp_path):
    process, url, log = _launch(tmp_path, "--host", "0.0.0.0")
    try:
        _wait_up(url, process, log)
        text = log.read_text()
        assert "WARNING: serving on 0.0.0.0" in text and "--auth USER:PASS" in text
    finally:
        process.kill()
        process.wait()
    quiet, url, log = _launch(tmp_path)  # the default, loopback: no warning
    try:
        _wait_up(url, quiet, log)
        assert "WARNING" not in log.read_text()
    finally:
        quiet.kill()
        quiet.wait()


def test_auth_requires_the_login(tmp_path):
    from gradio_client import Client

    process, url, log = _launch(tmp_path, "--auth", "alice:s3cret")
    try:
        _wait_up(url, process, log)
        with pytest.raises(Exception):
            Client(url, verbose=False)  # no login: the API is closed
        with pytest.raises(Exception):
            Client(url, auth=("alice", "wrong"), verbose=False)
        client = Client(url, auth=("alice", "s3cret"), verbose=False)
        assert "runs_list" in str(client.view_api(print_info=False, return_format="dict"))
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("bad", ["alice", "alice:", ":s3cret"])
def test_a_malformed_auth_is_refused_before_anything_starts(bad, tmp_path):
    result = subprocess.run([sys.executable, "app.py", "--auth", bad, "--no-browser", "--port", str(free_port())],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--auth expects USER:PASS" in result.stderr
