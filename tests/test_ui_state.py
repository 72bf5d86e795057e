"""The app's component registry and its state object (preset + typed overrides), without a server."""

from __future__ import annotations

import shlex

import pytest
import yaml

from grpo_box.__main__ import build_parser
from grpo_box.config import ConfigError
from grpo_box.presets import load_preset, resolve_config
from grpo_box.ui.registry import Registry
from grpo_box.ui.state import UIState, parses_back, yaml_value


class Widget:
    def __init__(self, name: str) -> None:
        self.name = name


def test_registry_keys_prefixes_and_reverse_lookup():
    reg = Registry()
    a, b, c = Widget("a"), Widget("b"), Widget("c")
    assert reg.add("setup.preset", a) is a
    reg.add("setup.grpo.max_steps", b)
    reg.add("data.source", c)
    assert reg["setup.preset"] is a and reg.get("data.source") is c and "setup.preset" in reg
    assert reg.keys("setup") == reg.keys("setup.") == ["setup.preset", "setup.grpo.max_steps"]
    assert reg.under("data") == {"data.source": c}
    assert reg.key_of(b) == "setup.grpo.max_steps"
    assert reg.components(["data.source", "setup.preset"]) == [c, a]
    assert reg.inputs("setup.", "data.source") == {a, b, c}
    with pytest.raises(ValueError, match="twice"):
        reg.add("setup.preset", Widget("again"))
    with pytest.raises(ValueError, match="tab.name"):
        reg.add("nodot", Widget("x"))
    with pytest.raises(KeyError, match="no component 'setup.missing'"):
        reg["setup.missing"]


def test_registry_turns_gradio_dicts_into_keyed_values_and_back():
    reg = Registry()
    a, b = reg.add("t.a", Widget("a")), reg.add("t.b", Widget("b"))
    stranger = Widget("not registered")
    assert reg.values({a: 1, b: "x", stranger: 3}) == {"t.a": 1, "t.b": "x"}
    assert reg.updates({"t.b": 5}) == {b: 5}

    def double(values):
        return {"t.b": values["t.a"] * 2}

    handler = reg.keyed(double)
    assert handler({a: 21}) == {b: 42} and handler.__name__ == "double"


def test_registry_sync_merges_every_tab():
    reg = Registry()
    reg.add("x.one", Widget("1"))
    reg.add("y.two", Widget("2"))
    reg.add_syncer(["x.one"], lambda state: {"x.one": state + 1})
    reg.add_syncer(["y.two"], lambda state: {"y.two": state * 10})
    assert reg.sync_keys() == ["x.one", "y.two"]
    assert reg.sync(2) == {"x.one": 3, "y.two": 20}


def test_state_config_applies_typed_overrides_to_the_preset():
    state = UIState("cpu").update({"grpo.max_steps": 3.0, "data.source": "task:sort", "grpo.learning_rate": "2e-5"})
    config = state.config()
    assert config.grpo.max_steps == 3 and isinstance(config.grpo.max_steps, int)  # a widget's 3.0 becomes 3
    assert config.grpo.learning_rate == 2e-5 and config.data.source == "task:sort"
    assert config.preset == "cpu" and config.model.name == load_preset("cpu").model.name
    # a value equal to the preset's is no override: the command lists only what changed
    state.set("grpo.max_steps", load_preset("cpu").grpo.max_steps)
    assert "grpo.max_steps" not in state.overrides


def test_state_reports_config_errors_with_the_engines_message():
    state = UIState("cpu").set("grpo.num_generations", 3)
    with pytest.raises(ConfigError, match="not divisible by grpo.num_generations=3"):
        state.config()
    with pytest.raises(ConfigError, match="unknown setting"):
        UIState("cpu").set("grpo.no_such_knob", 1)
    with pytest.raises(ConfigError, match="unknown preset"):
        UIState("cpu").with_preset("3gb")


def test_command_reproduces_the_same_config_through_the_cli_parser():
    state = UIState("cpu").update({
        "grpo.max_steps": 3, "grpo.learning_rate": 1e-5, "data.source": "task:arithmetic?difficulty=2",
        "data.system_prompt": "Think first.\nThen answer: yes or 'no' #1", "lora.target_modules": ["q_proj", "v_proj"],
        "output.run_name": "try-1", "output.runs_dir": "/tmp/my runs", "auto_fit": True,
    })
    state.set_rewards([{"name": "xml_count", "weight": 0.5}, {"name": "correctness", "weight": 2.0}])
    line = state.command()
    assert line.startswith("python -m grpo_box train --preset cpu --set ")
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "grpo_box"]
    args = build_parser().parse_args(argv[3:])
    assert resolve_config(args.preset, args.config, args.set).to_dict() == state.config().to_dict()


def test_yaml_values_parse_back_as_the_cli_reads_them():
    for value in ["yes", "null", "", " padded", "a: b", "#x", "line\nbreak", 3, 2.5, 1e-6, True, None, ["a", 1]]:
        assert parses_back(yaml_value(value), value), value
    # the CLI reads any float-looking string as a number: such a value cannot go through --set
    state = UIState("cpu").set("output.run_name", "1e5")
    assert "cannot be given with --set" in state.command()


def test_save_and_load_round_trip_and_bad_files():
    state = UIState("8gb").update({"grpo.max_steps": 7, "data.source": "task:countdown", "model.dtype": "bfloat16"})
    loaded = UIState.from_yaml(state.to_yaml())
    assert loaded.preset == "8gb" and loaded.overrides == state.overrides
    assert loaded.config().to_dict() == state.config().to_dict()
    assert yaml.safe_load(state.to_yaml())["grpo"]["max_steps"] == 7  # the whole config: usable with --config
    partial = UIState.from_yaml("grpo:\n  max_steps: 5\n", keep={"output.runs_dir": "/tmp/x"})
    assert partial.preset == "cpu" and partial.overrides == {"grpo.max_steps": 5, "output.runs_dir": "/tmp/x"}
    with pytest.raises(ConfigError, match="not valid YAML") as bad:
        UIState.from_yaml("grpo:\n  max_steps: 3\n  learning_rate: [oops\n")
    assert str(bad.value) == ("not valid YAML: line 4, column 1: expected ',' or ']', but got '<stream end>' (while "
                              "parsing a flow sequence that starts at line 3, column 18)")  # one line, no excerpt
    with pytest.raises(ConfigError, match="unknown setting grpo.max_stepz"):
        UIState.from_yaml("grpo: {max_stepz: 5}")
    with pytest.raises(ConfigError, match="expected a mapping"):
        UIState.from_yaml("- just a list")
    with pytest.raises(ConfigError, match="num_generations"):
        UIState.from_yaml("grpo: {num_generations: 3}")


def test_switching_preset_keeps_data_rubric_and_runs_dir():
    state = UIState("cpu").update({"grpo.max_steps": 3, "data.source": "task:sort", "output.runs_dir": "/tmp/r",
                                   "lora.r": 8})
    state.set_rewards([{"name": "correctness", "weight": 1.0}])
    moved = state.with_preset("8gb")
    assert moved.preset == "8gb"
    assert moved.overrides == {"data.source": "task:sort", "output.runs_dir": "/tmp/r",
                               "rewards": [{"name": "correctness", "weight": 1.0, "params": {}}]}
    assert moved.config().model.name == load_preset("8gb").model.name


def test_an_untouched_optional_number_stays_unset_and_a_typed_one_is_checked_by_the_engine():
    """grpo.epsilon_high ("empty = epsilon") is a text box: Gradio's Number sent its None as an
    out-of-range 0 with every edit of the form. Bounds are the engine's to check, not the page's."""
    import gradio as gr

    from grpo_box.ui import fields

    high, steps = fields.spec("grpo.epsilon_high"), fields.spec("grpo.max_steps")
    assert isinstance(fields.widget(high, None), gr.Textbox) and fields.to_widget(high, None) == ""
    assert fields.from_widget(high, "") is None and fields.from_widget(high, " 0.28 ") == 0.28
    assert fields.to_widget(high, 0.28) == "0.28"
    state = UIState("cpu").set("grpo.max_steps", fields.from_widget(steps, 3.0))
    state.set("grpo.epsilon_high", fields.from_widget(high, ""))
    assert state.config().grpo.max_steps == 3 and state.config().grpo.epsilon_high is None
    number = fields.widget(steps, 60)
    assert isinstance(number, gr.Number) and number.minimum is None and number.maximum is None
    for key, typed, said in [("grpo.epsilon_high", "lots", "grpo.epsilon_high must be a number, got 'lots'"),
                             ("grpo.max_steps", 2.5, "grpo.max_steps must be a whole number, got 2.5"),
                             ("grpo.learning_rate", 5.0, "grpo.learning_rate=5.0 is out of range: it must be more "
                                                         "than 0 and less than 0.01")]:
        with pytest.raises(ConfigError, match=said):
            UIState("cpu").set(key, fields.from_widget(fields.spec(key), typed)).config()


def test_rubric_add_goes_below_the_chosen_row_or_at_the_end():
    from grpo_box.ui.rewards_tab import edit_rubric

    names = lambda out: [r["name"] for r in out["app.state"].rewards]  # noqa: E731
    end = edit_rubric(UIState("cpu"), "add", 0, "target_length", 0.25, "{}")  # an empty Row box sends 0
    assert names(end) == ["xml_count", "think_format", "correctness", "target_length"] and end["rewards.row"] == 4
    below = edit_rubric(UIState("cpu"), "add", 1, "target_length", 0.25, "{}")
    assert names(below) == ["xml_count", "target_length", "think_format", "correctness"] and below["rewards.row"] == 2


def test_train_tab_cpu_note_names_the_model_it_trains():
    from grpo_box.ui.train_tab import _cpu_note

    state = UIState("cpu")
    assert "with the bundled model" in _cpu_note(state.config())
    other = state.set("model.name", "HuggingFaceTB/SmolLM2-360M-Instruct").config()
    assert "with HuggingFaceTB/SmolLM2-360M-Instruct" in _cpu_note(other) and "with the bundled" not in _cpu_note(other)


def test_a_cleared_run_name_means_a_generated_one_and_starts(tmp_path):
    """Typing a run name and emptying the box again must not leave `output.run_name=''` (which the
    engine once refused as a bad folder name) in the config or the command."""
    from grpo_box.train import start_run

    state = UIState("cpu").set("output.run_name", "mine").set("output.run_name", "  ")
    assert state.config().output.run_name is None and "run_name" not in state.command()
    assert state.set("data.system_prompt", "").config().data.system_prompt == ""  # an empty system prompt is a value
    config = resolve_config("cpu", overrides=["output.run_name=", f"output.runs_dir={tmp_path}"])  # from the CLI
    assert start_run(config).path.name.endswith("-cpu")  # a generated name, not a refusal
