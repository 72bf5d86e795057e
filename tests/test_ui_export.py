"""The Evaluate, Chat and Export tabs through the API (`gradio_client`), against the app on a free port.

One run trained for 3 steps from the page (Start, polled like the page's timer) goes the whole
way: evaluation (base and trained, read back from eval.json) → one chat reply
from the trained model → export q4_k_m (verified in llama.cpp) → the server started from the
page → a chat completion through the `openai` client → the server stopped. Then what goes wrong:
a run with no adapter, a full disk during export (the earlier export stays), a port already in
use, a file that is not a GGUF, a push with a bad token or no network (the token never shown),
and an export while a training job runs (refused). Without the live app: a crashed merge or
export told from one whose checks failed, the tokenizer check in the table, one `ollama create`
line per GGUF, download paths allowed once, and a missing 16-bit base explained in the app's terms.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from helpers import ENV, ROOT, make_random_lora
from ui_helpers import LiveApp, Session, child_runs, launch_app, value

from grpo_box.config import RunConfig
from grpo_box.runs import RunDir, create_run

pytestmark = pytest.mark.slow


def make_run(root: Path, name: str, model_dir: Path | None, model: str | None = None) -> RunDir:
    """A small run (of `model`, else the bundled one); with `model_dir`, a random LoRA as its adapter
    (as training would save it)."""
    config = RunConfig()
    if model:
        config.model.name = model
    config.output.runs_dir, config.output.run_name = str(root), name
    config.data.size, config.data.eval_size = 12, 4
    config.grpo.max_completion_length = 24
    config.data.one_shot = config.data.prefill = False  # the model's own chat template (test_export covers the format's)
    run = create_run(config)
    if model_dir is not None:
        make_random_lora(model_dir, run.adapter_dir)
    return run


# "demo" as make_run makes it, trained for 3 steps by the page's Start (the "train 3 steps → …")
DEMO = {"output.run_name": "demo", "data.size": 12, "data.eval_size": 4, "grpo.max_completion_length": 24,
        "data.one_shot": False, "data.prefill": False, "grpo.max_steps": 3, "grpo.num_generations": 4,
        "grpo.per_device_train_batch_size": 4, "lora.r": 4, "lora.alpha": 8, "output.save_steps": 3}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("ui-export")
    make_run(tmp / "runs", "untrained", None)
    for live in launch_app(tmp):
        try:
            train_from_the_page(live)
        except BaseException:
            stop_training(live)  # a failed start or poll must not leave a job holding the machine
            raise
        yield live


def stop_training(app: LiveApp) -> None:
    from grpo_box import job

    running = job.running_run()
    if running is not None and running.path.parent == app.runs_dir:
        running.request_stop()
        deadline = time.time() + 120
        while job.worker_alive(running) and time.time() < deadline:
            time.sleep(1)


def train_from_the_page(app: LiveApp) -> None:
    """Start "demo" from the Train tab and poll it the way the page's timer does, to the end."""
    import json

    page = app.client()
    page.call("/select_preset", "cpu")
    page.call("/set_options", json.dumps(DEMO))
    started = page.client.predict(False, api_name="/train_start")
    assert "Started demo" in started, started
    deadline = time.time() + 900
    while time.time() < deadline:
        status = page.client.predict(api_name="/train_poll")[0]
        if re.search(r'id="train-state"[^>]*>(finished|failed)<', status or ""):
            break
        time.sleep(2)
    run = RunDir(app.runs_dir / "demo")
    assert run.status()["state"] == "finished" and run.has_adapter(), run.file("train.log").read_text()[-2000:]


@pytest.fixture(scope="module")
def page(app: LiveApp) -> Session:
    return app.client()


def text_of(html: Any) -> str:
    return re.sub(r"<[^>]+>", " ", str(value(html) or ""))


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.parts and ".server.log" not in p.name}


# -- the whole way ------------------------------------------------------------------------------
def test_evaluate_chat_export_serve_from_the_page(app: LiveApp, page: Session) -> None:
    import openai

    first = page.call("/evaluate_show", "demo")
    assert "no evaluation yet" in first["evaluate.message"]

    done = page.call("/evaluate_run", "demo", 2, 1)
    assert "Evaluated demo" in done["evaluate.message"], done["evaluate.message"]
    summary = done["evaluate.summary"]
    assert "<th>base</th><th>trained</th>" in summary and "accuracy" in summary
    assert "trained: the adapter at step 3" in summary  # which training step was scored
    chart = value(done["evaluate.chart"])
    models = {row[2] for row in chart["data"]}
    assert models == {"base", "trained"} and any("correctness" in row[0] for row in chart["data"])
    assert done["evaluate.examples"].count("<tr data-verdict") == 2
    again = app.client().call("/evaluate_show", "demo")  # read back from eval.json by another page, no rerun
    assert again["evaluate.summary"] == summary and not again["evaluate.message"]

    opened = page.call("/chat_open", "demo")
    assert "<think>" in opened["chat.system"] and value(opened["chat.model"]) == "trained"
    chat = page.call("/chat_send", "demo", "trained", opened["chat.system"], 0.0, 1.0, 24, "wait", "What is 2 + 2?",
                     [], [])
    bot = chat["chat.bot"]
    assert bot[0]["role"] == "user" and bot[-1]["role"] == "assistant"
    assert "".join(part["text"] for part in bot[-1]["content"]).strip()

    exported = page.call("/export_run", "demo", ["q4_k_m"], False, False)
    assert "passed its checks" in exported["export.message"], exported["export.message"]
    table = exported["export.table"]
    assert "demo-q4_k_m.gguf" in table and 'data-ok="true"' in table and "check-fail" not in table
    assert "3/3" in text_of(exported["export.merge_report"])
    ollama = exported["export.ollama"]  # the GGUF's own Modelfile, as in the downloads and the README
    assert ollama.startswith("ollama create demo:q4_k_m -f ") and ollama.endswith("/export/demo-q4_k_m.Modelfile")
    assert "PARAMETER stop" in value(exported["export.modelfile"])
    names = {Path(p).name for p in exported["export.files"]}
    assert {"demo-q4_k_m.gguf", "demo-q4_k_m.Modelfile"} <= names and "Modelfile" not in names  # no twin copy

    reopened = page.call("/chat_open", "demo")  # the export is now a model choice: what Ollama will say
    assert "gguf:demo-q4_k_m.gguf" in [c[1] for c in reopened["chat.model"]["choices"]]
    gguf_chat = page.call("/chat_send", "demo", "gguf:demo-q4_k_m.gguf", reopened["chat.system"], 0.0, 1.0, 24,
                          "wait", "What is 2 + 2?", [], [])
    assert "".join(part["text"] for part in gguf_chat["chat.bot"][-1]["content"]).strip()
    from grpo_box.ui import chat_cache

    assert "demo-q4_k_m.gguf" in str(chat_cache.loaded_key())  # the reply came from the GGUF in llama.cpp
    first = chat_cache.loaded_key()
    gguf = app.runs_dir / "demo" / "export" / "demo-q4_k_m.gguf"
    shutil.copy2(gguf, gguf.with_suffix(".again"))
    os.replace(gguf.with_suffix(".again"), gguf)  # exported again under the same name, as an export does
    again = page.call("/chat_send", "demo", "gguf:demo-q4_k_m.gguf", reopened["chat.system"], 0.0, 1.0, 16,
                      "wait", "What is 2 + 2?", [], [])
    assert "finished in" in again["chat.note"], again["chat.note"]
    assert chat_cache.loaded_key() != first and chat_cache.loaded_key()[:3] == first[:3]  # the new file, loaded

    started = page.call("/serve_start", "demo", "demo-q4_k_m.gguf", "", "127.0.0.1", 0)
    url = re.search(r'id="serve-url">([^<]+)<', started["serve.status"]).group(1)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert "host.docker.internal" in started["serve.settings"] and "Model: demo-q4_k_m" in started["serve.settings"]
    try:
        other = page.call("/serve_start", "demo", "demo-q4_k_m.gguf", "", "127.0.0.1", 0)
        assert "one server at a time" in other["serve.status"]
        client = openai.OpenAI(base_url=url, api_key="none", timeout=120)
        reply = client.chat.completions.create(model="demo-q4_k_m", max_tokens=32, temperature=0,
                                               messages=[{"role": "user", "content": "Say hi."}])
        assert reply.choices[0].message.content.strip()
        tested = page.call("/serve_test")
        assert tested["serve.reply"].strip() and "The server answered" in tested["serve.status"]
    finally:
        stopped = page.call("/serve_stop")
    assert "Stopped the server" in stopped["serve.status"] and 'data-state="stopped"' in stopped["serve.status"]
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=url, api_key="none", timeout=5, max_retries=0).models.list()

    page.call("/runs_list")  # the Runs tab's list first: its dropdown accepts listed runs only
    made = page.call("/runs_made", "demo")["runs.made"]
    assert "accuracy" in made and "demo-q4_k_m.gguf: every check passed" in made


# -- what goes wrong ----------------------------------------------------------------------------
def test_chat_with_a_run_without_adapter_says_what_to_choose(page: Session) -> None:
    """Said in the page's words (its Model choice), not the engine's (the CLI's --base flag); the
    message typed stays in the box, to send again."""
    out = page.call("/chat_send", "untrained", "trained", None, 0.0, 1.0, 16, "wait", "What is 2 + 2?", [], [])
    assert "untrained has no trained adapter yet" in out["chat.note"]
    assert "Choose 'base model (untrained)' in Model" in out["chat.note"] and "--base" not in out["chat.note"]
    assert out["chat.input"] == {"__type__": "update"} and out["chat.bot"] == []  # the box is left as typed
    compared = page.call("/chat_compare", "untrained", None, "What is 2 + 2?", 0.0, 1.0, 16, "wait")
    assert "Compare needs one: train it first" in compared["chat.note"] and "--base" not in compared["chat.note"]


def test_export_of_a_run_without_adapter_says_train_first(page: Session) -> None:
    out = page.call("/export_run", "untrained", ["q4_k_m"], False, False)
    assert "Export failed" in out["export.message"] and "train first" in out["export.message"]
    assert "Traceback" not in out["export.message"]


def test_full_disk_during_export_keeps_the_earlier_export(app: LiveApp, page: Session, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The export child sees a disk with 50 MB free under the runs folder (as test_export patches
    free_bytes in-process): refused with the engine's message; the q4_k_m export stays as it was."""
    export = app.runs_dir / "demo" / "export"
    if not (export / "demo-q4_k_m.gguf").is_file():
        pytest.skip("needs the export of the first test")
    before = snapshot(export)
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import shutil
        _usage = shutil.disk_usage
        def disk_usage(path):
            real = _usage(path)
            if str(path).startswith({str(app.runs_dir)!r}):
                return type(real)(real.total, real.total - 50 * 2**20, 50 * 2**20)
            return real
        shutil.disk_usage = disk_usage
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = page.call("/export_run", "demo", ["f16", "q8_0"], False, False)
    message = out["export.message"]
    assert "not enough free disk space" in message and "only 50 MB is free" in message, message
    assert "Earlier exports of this run were left as they were" in message
    assert "demo-q4_k_m.gguf" in out["export.table"] and 'data-ok="true"' in out["export.table"]
    assert snapshot(export) == before


def test_a_port_in_use_is_refused(page: Session) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = page.call("/serve_start", "demo", "demo-q4_k_m.gguf", "", "127.0.0.1", port)
    assert "Server not started" in out["serve.status"] and f"port {port}" in out["serve.status"]
    assert "in use" in out["serve.status"] and 'data-state="stopped"' in out["serve.status"]


def test_a_file_that_is_not_a_gguf_is_refused(app: LiveApp, page: Session, tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"this is no model" * 64)
    out = page.call("/serve_start", "demo", None, str(fake), "127.0.0.1", 0)
    assert "not a GGUF file" in out["serve.status"] and 'data-state="stopped"' in out["serve.status"]
    planted = app.runs_dir / "demo" / "export" / "fake-q8_0.gguf"
    planted.write_bytes(b"this is no model" * 64)
    try:
        choices = [c[1] for c in page.call("/chat_open", "demo")["chat.model"]["choices"]]
        assert "gguf:fake-q8_0.gguf" in choices
        chat = page.call("/chat_send", "demo", "gguf:fake-q8_0.gguf", "", 0.0, 1.0, 16, "wait", "Hi", [], [])
        assert "not a GGUF file" in str(chat["chat.note"]) and chat["chat.bot"] == []
    finally:
        planted.unlink()


def test_push_with_a_bad_token_or_no_network_never_shows_the_token(app: LiveApp, page: Session) -> None:
    bad = page.call("/push_run", "demo", "gguf", "demo-q4_k_m.gguf", "me/model", "not-a-token", False)
    assert "does not look like a Hugging Face token" in bad["push.message"] and bad["push.token"] == ""
    token = "hf_FAKEfakeFAKEfake0123456789"
    offline = page.call("/push_run", "demo", "gguf", "demo-q4_k_m.gguf", "me/model", token, False)
    assert "No network" in offline["push.message"] and "Not pushed" in offline["push.message"]
    assert token not in str(offline) and offline["push.token"] == ""
    assert not [p for p in app.runs_dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]


def test_export_while_a_training_job_runs_is_refused(app: LiveApp, page: Session) -> None:
    """A stand-in worker holds the machine lock (as a training job does); export and merge refuse."""
    run = app.runs_dir / "untrained"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from grpo_box import locks; "
        f"locks.acquire_machine(Path({str(run)!r})); print('held', flush=True); time.sleep(300)")],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = page.call("/export_run", "demo", ["q8_0"], False, False)
        assert "A training job is running (untrained)" in out["export.message"] and "Not exported" in out["export.message"]
        merged = page.call("/export_merge", "demo", False)
        assert "A training job is running" in merged["export.message"]
        scored = page.call("/evaluate_run", "untrained", 2, 1)["evaluate.message"]  # the run that trains
        assert "untrained is still training" in scored and "Not started" in scored, scored
    finally:
        holder.kill()
        holder.wait()
    assert not (app.runs_dir / "demo" / "export" / "demo-q8_0.gguf").exists()


def test_a_second_merge_or_export_while_one_runs_is_a_toast_not_a_message_under_its_progress(app: LiveApp) -> None:
    """The running one's progress stays in the message box; the refusal comes as a Gradio warning toast; a
    page opened meanwhile says what runs and how far it got."""
    import warnings

    from grpo_box.ui import export_tab

    assert export_tab._claim("export", "demo")
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")  # outside a request, gr.Warning is a Python warning
            merged = export_tab._merge(app.reg)("demo", False)
            exported = export_tab._export(app.reg)("demo", ["q4_k_m"], False, False)
        export_tab._progress(lambda *a, **k: None, "converting to GGUF - 40.0%")
        reopened = export_tab._show(app.reg)("demo")[-1]  # a page reloaded meanwhile says what runs
    finally:
        export_tab._release()
    skip = gr.skip()
    assert merged == (skip, skip) and all(v == skip for v in exported)
    assert [str(w.message) for w in said] == [export_tab._BUSY_TEXT] * 2
    assert "Export of demo running since" in reopened and "converting to GGUF - 40.0%" in reopened
    assert export_tab._show(app.reg)("demo")[-1] == ""  # and nothing once it is done


def test_cancel_interrupts_an_evaluation_and_an_export_and_keeps_what_was_saved(app: LiveApp, page: Session) -> None:
    """Cancel from another page: the child (listed while it runs, so training waits for it) is interrupted,
    its temporary files go, and eval.json and the earlier export stay byte for byte."""
    import threading

    from grpo_box.ui import child, export_tab

    run = app.runs_dir / "demo"
    evaluation = (run / "eval.json").read_bytes()
    exported = snapshot(run / "export")
    results: dict[str, Any] = {}
    for verb, call, args, cancel in (("eval", "/evaluate_run", ("demo", 0, 1), "/evaluate_cancel"),
                                     ("export", "/export_run", ("demo", ["q8_0"], False, False), "/export_cancel")):
        worker = threading.Thread(target=lambda: results.update({verb: app.client().call(call, *args)}))
        worker.start()
        deadline = time.time() + 120
        while not any(f"grpo_box {verb}" in c for c in child.model_children()) and time.time() < deadline:
            time.sleep(0.2)
        busy = child.model_child_refusal("Training")
        assert busy and f"python -m grpo_box {verb}" in busy  # training would wait for it
        while verb == "export" and "convert" not in (export_tab._SLOT.holder(export_tab._ONE) or {}).get("line", ""):
            time.sleep(0.2)  # cancelled while llama.cpp converts: the step that leaves a .partial file
        time.sleep(2)
        said = page.call(cancel, "demo")
        assert "Cancelling the" in str(said), said
        worker.join(timeout=60)
        assert not worker.is_alive() and not child.model_children()
    assert "The evaluation of demo was cancelled. Its earlier results are kept." in results["eval"]["evaluate.message"]
    assert "The export of demo was cancelled" in results["export"]["export.message"]
    assert (run / "eval.json").read_bytes() == evaluation
    assert snapshot(run / "export") == exported  # no demo-q8_0.gguf, no .partial file left behind
    nothing = page.call("/export_cancel", "demo")
    assert "No merge or export of demo is running" in str(nothing)


# -- without the live app -----------------------------------------------------------------------
class FakeRegistry(dict):
    """Enough of the app's registry for a handler: the runs folder, no GPU, components by key."""

    def __init__(self, runs: Path) -> None:
        super().__init__()
        self.ctx = SimpleNamespace(runs_dir=str(runs), hardware=SimpleNamespace(gpu=None))

    def __missing__(self, key: str) -> str:
        return key


@pytest.fixture
def offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    """Run "demo" (no adapter) under a fake registry; no training job, the base found on disk."""
    from grpo_box.ui import export_tab

    make_run(tmp_path / "runs", "demo", None)
    monkeypatch.setattr(export_tab.job, "running_run", lambda: None)
    monkeypatch.setattr(export_tab, "base_problem", lambda run, allow_4bit, what: None, raising=False)
    return FakeRegistry(tmp_path / "runs")


CRASH = "print('  40.0% converting', flush=True)\nraise RuntimeError('llama.cpp converter blew up')"
CHECK_FAILED = "import sys; print('  100.0% done: some checks FAILED'); sys.exit(1)"


def test_a_crashed_merge_is_a_failure_not_a_failed_check(offline_run: FakeRegistry,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import export_tab

    child_runs(monkeypatch, CRASH)
    crashed, _ = export_tab._merge(offline_run)("demo", False)
    assert "Merge failed" in crashed and "crashed before it finished" in crashed, crashed
    assert "RuntimeError: llama.cpp converter blew up" in crashed and "check failed" not in crashed
    child_runs(monkeypatch, CHECK_FAILED)
    checked, _ = export_tab._merge(offline_run)("demo", False)
    assert "Merged, but the check failed" in checked


def test_a_crashed_export_is_a_failure_not_failed_checks(offline_run: FakeRegistry,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import export_tab

    child_runs(monkeypatch, CRASH)
    crashed = export_tab._export(offline_run)("demo", ["q4_k_m"], False, False)[0]
    assert "Export failed" in crashed and "RuntimeError: llama.cpp converter blew up" in crashed, crashed
    assert "checks failed" not in crashed
    child_runs(monkeypatch, CHECK_FAILED)
    checked = export_tab._export(offline_run)("demo", ["q4_k_m"], False, False)[0]
    assert "Exported, with failed checks" in checked


def _gguf(quant: str, folder: Path, **checks: Any) -> dict[str, Any]:
    path, modelfile = folder / f"demo-{quant}.gguf", folder / f"demo-{quant}.Modelfile"
    path.write_bytes(b"GGUF")
    modelfile.write_text(f"FROM ./demo-{quant}.gguf\nPARAMETER stop \"<|im_end|>\"\n")
    passed = {"verified": True, "prompts": 3, "identical": 3, "tokenizer_match": True, "chat_template_ok": True,
              "eos_ok": True, "eos_token": "<|im_end|>", "chat_stops": True, "modelfile_stops_ok": True, "ok": True}
    return {"quant": quant, "path": str(path), "size_bytes": 4, "modelfile": str(modelfile),
            "ollama_command": f"ollama create demo:{quant} -f {modelfile}", **passed, **checks}


def test_a_tokenizer_mismatch_shows_in_the_table(tmp_path: Path) -> None:
    from grpo_box.ui import export_view

    bad = _gguf("f16", tmp_path, tokenizer_match=False, ok=False)
    table = export_view.table_html({"files": [bad, _gguf("q4_k_m", tmp_path)], "ok": False})
    assert "<th>tokenizer</th>" in table and table.count("<th>") == len(export_view.COLUMNS)
    f16_row = table.split("<tr")[2]
    assert f16_row.count("check-fail") == 2 and ">differs<" in f16_row and ">NO<" in f16_row  # its cell, and ok
    assert "demo-f16.gguf: llama.cpp tokenizes the check prompts unlike the HF tokenizer" in table
    assert all(row.count("<td") == len(export_view.COLUMNS) for row in table.split("<tr")[2:])


def test_each_gguf_has_its_own_ollama_line_and_modelfile(tmp_path: Path) -> None:
    from grpo_box.ui import export_view

    shared = tmp_path / "Modelfile"
    shared.write_text("FROM ./demo-f16.gguf\n")
    data = {"files": [_gguf("f16", tmp_path), _gguf("q4_k_m", tmp_path)], "modelfile": str(shared),
            "ollama_command": f"ollama create demo:f16 -f {shared}"}
    lines = export_view.ollama_commands(data).splitlines()
    assert lines == [f"ollama create demo:f16 -f {tmp_path / 'demo-f16.Modelfile'}",
                     f"ollama create demo:q4_k_m -f {tmp_path / 'demo-q4_k_m.Modelfile'}"]
    assert export_view.modelfile_preview(data) == ("demo-q4_k_m.Modelfile", "FROM ./demo-q4_k_m.gguf\n"
                                                   "PARAMETER stop \"<|im_end|>\"\n")
    old = {"files": [], "modelfile": str(shared), "ollama_command": f"ollama create demo:f16 -f {shared}"}
    assert export_view.ollama_commands(old) == old["ollama_command"]  # an export from before per-GGUF Modelfiles
    assert export_view.modelfile_preview(old) == ("Modelfile", "FROM ./demo-f16.gguf\n")


def test_download_paths_are_allowed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import export_tab

    given: list[list[str]] = []
    monkeypatch.setattr(export_tab, "_STATIC", set())
    monkeypatch.setattr(export_tab.gr, "set_static_paths", lambda paths: given.append(list(paths)))
    a, b = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    for _ in range(3):  # every view of the page
        export_tab.allow_static([a, a])
    export_tab.allow_static([a, b])
    export_tab.allow_static([])
    assert given == [[a], [b]]


def test_a_missing_16bit_base_points_at_the_apps_checkbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import export_tab

    make_run(tmp_path / "runs", "hub", None, model="nobody-here/Tiny-Model-unsloth-bnb-4bit")
    monkeypatch.setattr(export_tab.job, "running_run", lambda: None)
    reg = FakeRegistry(tmp_path / "runs")
    message = export_tab._export(reg)("hub", ["q4_k_m"], False, False)[0]
    assert "Not exported" in message and "hf download nobody-here/Tiny-Model" in message
    assert export_tab.FOUR_BIT_LABEL in message and "--allow-4bit-merge" not in message and "(CLI)" not in message
    merged, _ = export_tab._merge(reg)("hub", True)
    assert "Not merged" in merged and "no 4-bit checkpoint of it is on disk either" in merged
    assert "--download-base" not in merged and "(CLI)" not in merged


def test_the_4bit_checkbox_is_visible_beside_merge_and_export(app: LiveApp) -> None:
    """Not inside the closed Merge accordion: it governs Export too."""
    box = app.reg["export.allow_4bit"]
    parent = box.parent
    while parent is not None and not isinstance(parent, gr.Tab):
        assert not isinstance(parent, gr.Accordion), f"the 4-bit checkbox sits in accordion {parent.label!r}"
        parent = parent.parent
    assert "Export" in box.label


def test_the_page_shows_each_ggufs_ollama_line_and_modelfile(tmp_path: Path) -> None:
    """What `view` sends for an export of two GGUFs (without exporting: the files are stand-ins)."""
    import json

    from grpo_box.ui import export_tab

    run = make_run(tmp_path / "runs", "demo", None).path
    folder = run / "export"
    folder.mkdir()
    files = [_gguf("f16", folder), _gguf("q4_k_m", folder)]
    (folder / "export.json").write_text(json.dumps({"files": files, "ok": True}))
    out = dict(zip(["quants", "merge", "table", "files", "ollama", "modelfile", "serve", "push"], export_tab.view(run)))
    assert out["ollama"].splitlines() == [f["ollama_command"] for f in files]
    modelfile = out["modelfile"]
    assert modelfile["label"] == "demo-q4_k_m.Modelfile" and "FROM ./demo-q4_k_m.gguf" in modelfile["value"]
    names = sorted(Path(p).name for p in out["files"])
    assert names == ["demo-f16.Modelfile", "demo-f16.gguf", "demo-q4_k_m.Modelfile", "demo-q4_k_m.gguf"]
    assert ">same<" in out["table"] and "check-fail" not in out["table"]
