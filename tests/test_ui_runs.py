"""The Runs tab and the Train tab's controls through the API, against the real app: list, open (its
curves, config and samples), overlay two runs, resume a stopped run (it really trains), delete
after confirming (and a run another page deleted first); auto-fit set from Train shows in Setup
and the command; the runs folder is the app's; without a GPU the memory verdict is the RAM's, and
a run that will not fit in RAM is refused unless the override is ticked."""

from __future__ import annotations

import json
import time

import pytest
from ui_helpers import launch_app, value

from grpo_box.presets import resolve_config
from grpo_box.runs import RunDir, open_run
from grpo_box.ui.context import Hardware

TINY = ["grpo.num_generations=4", "grpo.per_device_train_batch_size=4", "grpo.max_completion_length=16",
        "output.save_steps=1", "output.sample_every=1", "data.size=40", "data.eval_size=4", "lora.r=4",
        "lora.alpha=8", "grpo.max_steps=1"]
BIG_MODEL = "unsloth/Qwen2.5-7B-Instruct"  # ~40 GB in float32 on the CPU


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from launch_app(tmp_path_factory.mktemp("ui-runs"), hardware=Hardware(None, ram_gb=16.0))


def _run(app, name: str, rewards: list[float], state: str = "stopped") -> RunDir:
    """A run folder as training leaves it: config, status, one metrics line and sample per step."""
    from grpo_box.train import start_run

    run = start_run(resolve_config("cpu", overrides=[*TINY, f"output.runs_dir={app.runs_dir}",
                                                      f"output.run_name={name}"]))
    for step, reward in enumerate(rewards, 1):
        run.append("metrics.jsonl", {"step": step, "reward": reward, "reward_std": 0.1, "wall_time": step * 10.0})
        run.append("samples.jsonl", {"step": step, "prompt": f"What is {step} + 1?", "answer": str(step + 1),
                                     "completions": [f"<answer>{step + 1}</answer>", "no idea"],
                                     "rewards": {"correctness": [1.0, 0.0]}, "total": [1.0, 0.0],
                                     "advantages": [0.7, -0.7]})
    run.set_status(state, step=len(rewards), max_steps=max(len(rewards), 1))
    return run


def test_runs_are_listed_opened_and_overlaid(app):
    a = _run(app, "alpha", [0.1, 0.4, 0.8], "finished")
    _run(app, "beta", [0.2, 0.3])
    page = app.client()
    listing = page.call("/runs_list")
    rows = {r[0]: dict(zip(listing["runs.table"]["headers"], r)) for r in listing["runs.table"]["data"]}
    assert rows["alpha"]["state"] == "finished" and rows["alpha"]["step"] == 3 and rows["alpha"]["reward"] == "0.800"
    assert rows["beta"]["state"] == "stopped"

    opened = page.call("/runs_open", "alpha")
    assert "alpha" in opened["runs.status"] and 'id="train-step">3<' in opened["runs.status"]
    reward = opened["runs.plot_reward"]
    assert [row[:2] for row in reward["data"]] == [[1, 0.1], [2, 0.4], [3, 0.8]]  # the reward curve
    assert open_run(a.path).file("config.yaml").read_text().strip() == opened["runs.config"].strip()
    assert "What is 3 + 1?" in opened["runs.sample_view"] and "0.7" in opened["runs.sample_view"]

    overlay = page.call("/runs_overlay", ["alpha", "beta"])["runs.overlay"]
    series = {row[-1] for row in overlay["data"]}
    assert len(series) == 2 and any("alpha" in s for s in series) and any("beta" in s for s in series)


def test_delete_needs_confirming_and_a_run_deleted_elsewhere_is_named(app):
    run = _run(app, "doomed", [0.5])
    page, other = app.client(), app.client()
    page.call("/runs_list")
    other.call("/runs_list")
    unconfirmed = page.call("/runs_delete", "doomed", False)["runs.message"]
    assert "Tick 'Yes, delete" in unconfirmed and run.path.is_dir()
    deleted = page.call("/runs_delete", "doomed", True)["runs.message"]
    assert "Deleted doomed" in deleted and not run.path.exists()
    again = other.call("/runs_delete", "doomed", True)["runs.message"]  # the other page still listed it
    assert "no longer exists" in again and "Refresh" in again


@pytest.mark.slow
def test_resume_from_the_runs_tab_trains_the_stopped_run(app):
    run = _run(app, "halted", [], "stopped")
    page = app.client()
    page.call("/runs_list")
    out = page.call("/runs_resume", "halted")
    assert "Resumed halted" in out["runs.message"], out["runs.message"]
    deadline = time.time() + 600
    while time.time() < deadline and run.status().get("state") not in ("finished", "failed"):
        time.sleep(2)
    assert run.status()["state"] == "finished", run.file("train.log").read_text()[-2000:]
    assert run.has_adapter() and [m["step"] for m in run.metrics()] == [1]


def test_a_new_run_with_a_runs_settings_fills_setup_and_keeps_the_old_run(app):
    run = _run(app, "recipe", [0.5], "finished")
    config = run.config()
    config.grpo.learning_rate = 3.5e-5  # a setting the user tuned for that run
    config.save(run.file("config.yaml"))
    before = run.file("config.yaml").read_bytes()
    page = app.client()
    page.call("/select_preset", "cpu")
    page.call("/set_options", json.dumps({"grpo.learning_rate": 1e-4, "output.run_name": "other"}))
    page.call("/runs_list")
    out = page.call("/runs_reuse", "recipe")
    assert "Setup now holds recipe's settings" in out["runs.message"], out["runs.message"]
    assert value(out["setup.grpo.learning_rate"]) == pytest.approx(3.5e-5)
    command = page.call("/show_command")["setup.command"]
    assert "learning_rate=3.5e-05" in command and "run_name" not in command  # a new run gets its own name
    assert run.file("config.yaml").read_bytes() == before


def test_auto_fit_set_in_train_is_the_setup_setting_and_in_the_command(app):
    page = app.client()
    page.call("/select_preset", "cpu")
    shown = page.call("/train_autofit", True)
    assert value(shown["setup.auto_fit"]) is True
    assert "--set auto_fit=true" in page.call("/show_command")["setup.command"]
    page.call("/train_autofit", False)
    assert "auto_fit" not in page.call("/show_command")["setup.command"]


def test_the_runs_folder_is_the_apps_and_a_loaded_config_keeps_it(app, tmp_path):
    widget = app.reg["setup.output.runs_dir"]
    assert widget.interactive is False and str(app.runs_dir) in widget.info
    elsewhere = tmp_path / "config.yaml"
    elsewhere.write_text("preset: cpu\noutput:\n  runs_dir: /somewhere/else\n")
    from gradio_client import handle_file

    page = app.client()
    page.call("/load_config", handle_file(str(elsewhere)))
    command = page.call("/show_command")["setup.command"]
    assert "/somewhere/else" not in command and str(app.runs_dir) in command


def test_without_a_gpu_train_shows_the_ram_verdict_and_refuses_a_run_that_will_not_fit(app):
    page = app.client()
    page.call("/select_preset", "cpu")
    page.call("/set_options", json.dumps({"model.name": BIG_MODEL, "grpo.max_steps": 1}))
    refused = page.client.predict(False, api_name="/train_start")
    assert "Not started" in refused and "will not fit" in refused and "16 GB" in refused
    assert "Start even if" in refused
    assert not any(p for p in app.runs_dir.iterdir() if (p / "config.yaml").is_file()
                   and open_run(p).config().model.name == BIG_MODEL)
    from grpo_box.ui import train_tab

    state = train_tab.UIState("cpu").update({"model.name": BIG_MODEL})
    assert train_tab._refusal(app.reg, state.config(), force=True) is None  # the override lets it start
    verdict = train_tab._verdict(app.reg)(state)
    assert "will not fit" in verdict and "16 GB" in verdict
