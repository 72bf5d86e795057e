"""The Setup tab through its API (gradio_client against the app on a free port): preset, memory
verdict, settings with the engine's errors, the command line, save and load."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from ui_helpers import launch_app, value

from grpo_box.__main__ import build_parser
from grpo_box.presets import resolve_config
from grpo_box.ui import messages


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    yield from launch_app(tmp_path_factory.mktemp("ui-setup"))


def test_page_starts_on_the_cpu_preset_and_bundled_model_without_a_gpu(app):
    reg = app.reg
    assert "CPU only" in reg["setup.hardware"].value and messages.CPU_PRESET_PACE in reg["setup.hardware"].value
    assert reg["setup.preset"].value == "cpu"
    assert reg["setup.model.name"].value == "bundled:smollm2-135m-instruct"
    assert "in RAM" in reg["setup.verdict"].value


def test_preset_choice_updates_memory_verdict_and_command(app):
    session = app.client()
    cpu = session.call("/select_preset", "cpu")
    assert "in RAM" in cpu["setup.verdict"] and "Traceback" not in cpu["setup.verdict"]
    assert value(cpu["setup.model.name"]) == "bundled:smollm2-135m-instruct"
    gpu = session.call("/select_preset", "8gb")
    assert gpu["setup.verdict"].startswith("**fits**") and "8 GB card" in gpu["setup.verdict"]
    assert "base weights" in gpu["setup.gauge"]
    assert value(gpu["setup.model.name"]) == "unsloth/Qwen2.5-1.5B-Instruct"
    assert value(gpu["setup.grpo.num_generations"]) == 6  # the 8gb preset's own value in the widget
    big = session.call("/set_options", json.dumps({"grpo.num_generations": 32, "grpo.per_device_train_batch_size": 32,
                                                   "grpo.max_completion_length": 4096, "model.max_seq_length": 4352}))
    assert big["setup.verdict"].startswith("**will not fit**") and "**to fit:**" in big["setup.verdict"]
    assert value(big["setup.grpo.num_generations"]) == 32 and big["setup.error"] == ""
    line = big["setup.command"]
    assert "--preset 8gb" in line and "--set grpo.num_generations=32" in line
    args = build_parser().parse_args(shlex.split(line)[3:])
    config = resolve_config(args.preset, args.config, args.set)
    assert config.grpo.max_completion_length == 4096 and config.output.runs_dir == str(app.runs_dir)


def test_editing_a_setting_updates_gauge_and_command(app):
    session = app.client()
    session.call("/select_preset", "cpu")
    edited = session.form("/apply_setup", {"setup.grpo.max_steps": 5, "setup.lora.r": 8, "setup.lora.alpha": 16})
    assert "--set lora.r=8 --set lora.alpha=16 --set grpo.max_steps=5" in edited["setup.command"]
    assert edited["setup.error"] == "" and "RAM estimate" in edited["setup.gauge"]
    bad = session.form("/apply_setup", {"setup.grpo.temperature": 0})
    assert "grpo.temperature=0.0 is out of range" in bad["setup.error"]


def test_a_bad_setting_shows_the_engines_message_not_a_traceback(app):
    session = app.client()
    session.call("/select_preset", "cpu")
    bad = session.call("/set_options", json.dumps({"grpo.num_generations": 3}))
    assert "not divisible by grpo.num_generations=3" in bad["setup.error"] and "Traceback" not in bad["setup.error"]
    assert "Fix the settings" in bad["setup.verdict"]
    unknown = session.call("/set_options", json.dumps({"grpo.warp_speed": 9}))
    assert "unknown setting" in unknown["setup.error"]


def test_save_and_load_config(app, tmp_path):
    from gradio_client import handle_file

    session = app.client()
    session.call("/select_preset", "cpu")
    session.call("/set_options", json.dumps({"grpo.max_steps": 4, "data.source": "task:sort"}))
    saved = value(session.call("/save_config")["setup.saved"])
    text = Path(saved).read_text()
    assert "max_steps: 4" in text and "task:sort" in text
    other = app.client()  # a fresh session loads it
    loaded = other.call("/load_config", handle_file(saved))
    assert value(loaded["setup.grpo.max_steps"]) == 4 and value(loaded["data.task"]) == "sort"
    assert "--set grpo.max_steps=4" in loaded["setup.command"]
    bad = tmp_path / "broken.yaml"
    bad.write_text("grpo:\n  max_steps: [unclosed\n")
    refused = other.call("/load_config", handle_file(str(bad)))
    assert "Could not load broken.yaml" in refused["setup.error"] and "not valid YAML" in refused["setup.error"]
    assert "Traceback" not in refused["setup.error"]
    assert "--set grpo.max_steps=4" in other.call("/show_command")["setup.command"]  # the state is unchanged


def test_the_gauge_judges_a_detected_card_by_its_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A desktop's display (or another program) holds part of the card: the gauge says so and sizes
    vLLM's share from what is free, as Unsloth will (the reading is NVML's, stood in for here)."""
    from grpo_box import hardware
    from grpo_box.hardware import GpuInfo
    from grpo_box.ui.context import Hardware
    from grpo_box.ui.gauge import card_for, memory_report

    monkeypatch.setattr(hardware, "free_vram_gb", lambda gpu=None: 6.6)
    machine = Hardware(gpu=GpuInfo("NVIDIA GeForce RTX 3070", 7.6, (8, 6)))
    config = resolve_config("8gb")
    card = card_for(config, machine)
    assert card.free_gb == 6.6 and card.label == "detected NVIDIA GeForce RTX 3070 (7.6 GB, 6.6 GB free)"
    assert memory_report(config, machine)["free_gb"] == 6.6
