"""The Train and Runs tabs through the API, against the real app in its own process: start a run
from the browser's session, a second start refused, the worker SIGKILLed (the page says failed and
why; files and checkpoints stay; Resume continues), the app itself killed and restarted mid-run
(it reattaches and the curves continue), and the Runs tab listing the result."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ENV, ROOT
from ui_helpers import free_port

from grpo_box.runs import RunDir

TINY = {"grpo.num_generations": 4, "grpo.per_device_train_batch_size": 4, "grpo.max_completion_length": 16,
        "output.save_steps": 1, "output.sample_every": 1, "data.size": 40, "data.eval_size": 4, "lora.r": 4,
        "lora.alpha": 8, "grpo.max_steps": 5}


class App:
    """`python app.py` in a subprocess, and gradio_client sessions on it."""

    def __init__(self, runs: Path, log: Path):
        self.port = free_port()
        self.log = log.open("a")
        self.process = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port), "--runs-dir", str(runs),
                                         "--no-browser"], cwd=ROOT, env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                from gradio_client import Client

                self.first = Client(self.url, verbose=False)
                return
            except Exception:
                assert self.process.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
        raise AssertionError("the app did not come up: " + log.read_text()[-3000:])

    def session(self) -> Any:
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _poll(session: Any) -> dict[str, Any]:
    out = session.predict(api_name="/train_poll")
    status, hints, log, pick, sample, *plots = out
    state = re.search(r'id="train-state"[^>]*>([^<]+)<', status or "")
    step = re.search(r'id="train-step">(\d+)<', status or "")
    return {"html": status or "", "state": state.group(1) if state else None,
            "step": int(step.group(1)) if step else None, "hints": hints, "plots": plots, "sample": sample}


def _poll_until(session: Any, ok, timeout: float = 600) -> dict[str, Any]:
    deadline = time.time() + timeout
    last: dict[str, Any] = {}
    while time.time() < deadline:
        last = _poll(session)
        if ok(last):
            return last
        time.sleep(1)
    raise AssertionError(f"timed out; last poll: {last.get('html', '')[:2000]}")


@pytest.mark.slow
def test_train_from_the_page_survives_a_killed_worker_and_an_app_restart(tmp_path):
    runs = tmp_path / "runs"
    app = App(runs, tmp_path / "app.log")
    try:
        page = app.session()
        page.predict("cpu", api_name="/select_preset")
        page.predict(json.dumps(TINY), api_name="/set_options")
        started = page.predict(False, api_name="/train_start")
        assert "Started" in started, started
        run = RunDir(next(runs.iterdir()))
        assert run.config().grpo.max_steps == 5

        other = app.session()
        refused = other.predict(False, api_name="/train_start")
        assert "already running" in refused and run.path.name in refused
        assert len(list(runs.iterdir())) == 1  # the refused start left no run folder behind

        first = _poll_until(page, lambda p: (p["step"] or 0) >= 2 and p["plots"][0] is not None)
        assert "total" in json.dumps(first["plots"][0])  # the reward plot has the total-reward series
        assert "correctness" in json.dumps(first["plots"][0])  # … and one per reward function
        assert "train-sample-table" in first["sample"] and "advantage" in first["sample"]
        assert "loss starts near 0" in first["hints"]

        os.kill(run.status()["pid"], signal.SIGKILL)
        failed = _poll_until(page, lambda p: p["state"] == "failed")
        assert "killed by signal 9" in failed["html"] and "Resume continues from the last checkpoint" in failed["html"]
        assert run.last_checkpoint() is not None and run.file("metrics.jsonl").is_file()
        at_kill = run.last_checkpoint().name

        resumed, _ = page.predict(0, api_name="/train_resume")
        assert "Resumed" in resumed, resumed
        _poll_until(page, lambda p: p["state"] == "running" and (p["step"] or 0) >= int(at_kill.split("-")[1]) + 1)
    finally:
        app.kill()  # the app dies mid-run; the training child lives on

    app = App(runs, tmp_path / "app2.log")
    try:
        page = app.session()
        page.predict(api_name="/train_reattach")
        during = _poll_until(page, lambda p: p["state"] in ("running", "finished") and p["plots"][0] is not None)
        done = _poll_until(page, lambda p: p["state"] == "finished")
        assert done["step"] == 5 and (during["step"] or 0) <= 5
        steps = [json.loads(line)["step"] for line in run.file("metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4, 5]  # every step exactly once across the kill, resume and restart
        table = page.predict(api_name="/runs_list")[0]
        row = dict(zip(table["headers"], table["data"][0]))
        assert (row["name"], row["state"], row["step"]) == (run.path.name, "finished", 5)
        refused, _ = page.predict(0, api_name="/train_resume")  # Resume on a finished run, no more steps typed
        assert "already finished its 5 steps" in refused and '"More steps"' in refused, refused
        assert "python -m" not in refused and run.status()["state"] == "finished"
        negative, _ = page.predict(-3, api_name="/train_resume")  # the page's own message, not a Gradio error toast
        assert "More steps is -3: type a whole number" in negative and run.status()["state"] == "finished"
        extended, used = page.predict(1, api_name="/train_resume")
        # used once: the box goes back to 0, so a later Resume of this run does not add the step again
        assert "Resumed" in extended and "now to step 6" in extended and used == 0, extended
        assert _poll_until(page, lambda p: p["state"] == "finished")["step"] == 6
    finally:
        app.kill()
