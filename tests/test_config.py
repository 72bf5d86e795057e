"""Config and presets: every preset validates; bad configs name the field and the fix."""

from __future__ import annotations

import pytest

from grpo_box.config import ConfigError, RunConfig, apply_overrides
from grpo_box.validation import validate
from grpo_box.presets import list_presets, load_preset, preset_names, resolve_config


def test_all_five_presets_ship():
    assert preset_names() == ["cpu", "8gb", "12gb", "16gb", "24gb"]


@pytest.mark.parametrize("name", ["cpu", "8gb", "12gb", "16gb", "24gb"])
def test_preset_loads_and_validates(name):
    config = load_preset(name)
    assert config.preset == name
    assert validate(config) is config
    info = {p.name: p for p in list_presets()}[name]
    assert info.description
    if name == "cpu":
        assert not config.model.load_in_4bit and not config.model.fast_inference
        assert config.model.name.startswith("bundled:")
    else:
        assert config.model.load_in_4bit and config.model.fast_inference and config.model.vllm_standby
        assert config.lora.r <= config.model.max_lora_rank


def test_yaml_round_trip(tmp_path):
    config = load_preset("8gb")
    config.rewards[0].params = {"tag": "answer"}
    path = tmp_path / "run.yaml"
    config.save(path)
    assert RunConfig.load(path) == config


def test_save_replaces_the_file_whole_and_a_failed_save_leaves_no_temporary(tmp_path):
    """A reader holding the old file keeps reading the old config: save writes a new file and renames it."""
    path = tmp_path / "run.yaml"
    RunConfig().save(path)
    with path.open() as reader:
        load_preset("8gb").save(path)
        assert "bundled:" in reader.read() and RunConfig.load(path).preset == "8gb"
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        RunConfig().save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml", "taken"]


@pytest.mark.parametrize(
    "overrides, field, fix",
    [
        (["grpo.num_generations=3"], "num_generations=3", "multiple of 3"),
        (["grpo.max_completion_length=400"], "model.max_seq_length=256", "raise model.max_seq_length to at least 592"),
        (["model.fast_inference=true", "lora.r=64"], "lora.r=64 is over model.max_lora_rank=16", "set model.max_lora_rank to at least 64"),
        (["grpo.learning_rate=0.5"], "grpo.learning_rate=0.5", "1e-6"),
        (["grpo.loss_type=foo"], "grpo.loss_type='foo'", "choose one of"),
        (["grpo.max_steps=ten"], "grpo.max_steps must be a whole number", "got 'ten'"),
        (["rewards=[]"], "rewards is empty", "add at least one reward"),
        (["model.dtype=float32"], "model.dtype='float32'", "float16 or bfloat16"),
        (["grpo.per_device_train_batch_size=0"], "per_device_train_batch_size=0", "at least 1"),
        (["grpo.gradient_accumulation_steps=0"], "gradient_accumulation_steps=0", "at least 1"),
        (["grpo.temperature=0"], "grpo.temperature=0", "use 0.6–1.2"),
        (["grpo.warmup_ratio=5"], "grpo.warmup_ratio=5", "at least 0 and less than 1"),
        (["lora.alpha=0"], "lora.alpha=0", "usually lora.r or 2 × lora.r"),
        (["grpo.optim=adamw_bogus"], "grpo.optim='adamw_bogus'", "choose one of adamw_torch"),
        (["grpo.lr_scheduler_type=wavy"], "grpo.lr_scheduler_type='wavy'", "choose one of constant"),
        (["output.keep_checkpoints=-3"], "output.keep_checkpoints=-3", "at least 1"),
        (["grpo.max_steps=100000000000000000000"], "grpo.max_steps=100000000000000000000", "at most 1,000,000"),
        (["grpo.max_steps=1e20"], "grpo.max_steps must be a whole number", "got 1e+20"),
        (["lora.target_modules=[]"], "lora.target_modules is empty", "list the projections"),
        (["output.run_name=../../x"], "output.run_name='../../x'", "no slashes, no leading dot"),
        (["output.run_name=/abs/x"], "output.run_name='/abs/x'", "plain folder name"),
        (["output.run_name=.hidden"], "output.run_name='.hidden'", "no leading dot"),
        (["reward_timeout=0"], "reward_timeout=0", "more than 0"),
        (["data.template=bogus"], "data.template='bogus'", "choose one of think, reasoning, boxed"),
        (["data.template=boxed"], "data.template='boxed' asks for \\boxed{} without tags", "use boxed_format"),
        (["model.name=bundled:nope"], "model.name='bundled:nope'", "bundled:smollm2-135m-instruct"),
        (["rewards=[corectness]"], "unknown reward 'corectness'", "did you mean 'correctness'"),
        (["rewards=[user:mine]"], "rewards[0] (user:mine)", "set reward_file"),
        (["rewards=[user:mine]", "reward_file=nowhere.py"], "reward_file='nowhere.py' does not exist", "give the path"),
    ],
)
def test_invalid_config_names_field_and_fix(overrides, field, fix):
    with pytest.raises(ConfigError) as err:
        resolve_config("cpu", overrides=overrides)
    assert field in str(err.value)
    assert fix in str(err.value)


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting grpo\.num_gens; valid keys here: .*num_generations"):
        RunConfig.from_dict({"grpo": {"num_gens": 4}})
    with pytest.raises(ConfigError, match="unknown preset 'tiny'; choose one of: cpu, 8gb"):
        load_preset("tiny")
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(RunConfig(), ["grpo.max_steps"])


def test_config_file_on_top_of_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("grpo:\n  max_steps: 7\ndata:\n  source: task:sort\n")
    config = resolve_config("cpu", str(path), ["grpo.learning_rate=1e-5"])
    assert (config.grpo.max_steps, config.data.source, config.grpo.learning_rate) == (7, "task:sort", 1e-5)
    assert config.grpo.num_generations == load_preset("cpu").grpo.num_generations
    broken = tmp_path / "broken.yaml"
    broken.write_text("grpo: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        resolve_config("cpu", str(broken))


def test_every_setting_has_metadata_and_its_default_passes_its_own_check():
    from grpo_box.config import _check_one, field_specs

    specs = field_specs()
    keys = {spec.key for spec in specs}
    assert {"grpo.learning_rate", "model.name", "data.template", "output.save_steps", "auto_fit", "reward_timeout"} <= keys
    for spec in specs:
        assert spec.help, spec.key
        assert _check_one(spec, spec.default) == [], spec.key
        if spec.kind in ("int", "float"):
            assert spec.minimum is not None and spec.maximum is not None and spec.step, spec.key
    lr = next(s for s in specs if s.key == "grpo.learning_rate")
    assert (lr.kind, lr.min_exclusive, lr.maximum) == ("float", True, 1e-2)
    assert next(s for s in specs if s.key == "data.template").choices_from == "templates"
    assert next(s for s in specs if s.key == "model.dtype").nullable


def test_runtime_choices_come_from_the_registries():
    from grpo_box.choices import runtime_choices
    from grpo_box.config import field_specs

    assert runtime_choices("templates") == ["think", "reasoning", "boxed"]
    assert "task:arithmetic" in runtime_choices("tasks")
    assert "correctness" in runtime_choices("rewards")
    assert "q4_k_m" in runtime_choices("quantizations")
    assert runtime_choices("models", "cpu")[0] == "bundled:smollm2-135m-instruct"
    for spec in field_specs():  # every registry a field names exists
        if spec.choices_from:
            assert runtime_choices(spec.choices_from), spec.key


def test_setting_a_whole_section_to_a_scalar_is_refused():
    with pytest.raises(ConfigError, match=r"--set grpo=0: grpo is a section; set one of its keys"):
        resolve_config("cpu", overrides=["grpo=0"])


def test_a_section_with_every_key_commented_out_keeps_the_presets_section(tmp_path):
    """`grpo:` with nothing under it reads as null: no overrides, not the built-in defaults."""
    path = tmp_path / "mine.yaml"
    path.write_text("grpo:\n  # max_steps: 3\nlora:\n  r: 8\n")
    config, preset = resolve_config("8gb", str(path)), load_preset("8gb")
    assert config.grpo == preset.grpo and config.grpo != RunConfig().grpo
    assert config.lora.r == 8 and config.lora.alpha == preset.lora.alpha  # a section with keys still merges


@pytest.mark.parametrize("text, shown", [("grpo: 0\n", "grpo: 0"), ("lora: [8]\n", "lora: [8]"),
                                         ("model:\n  name: x\ndata: off\n", "data: False")])
def test_a_section_given_as_a_scalar_in_a_config_file_is_refused(tmp_path, text, shown):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        resolve_config("8gb", str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: {shown} is not a section; give ") and "\n" not in message
    with pytest.raises(ConfigError, match=r"expected a mapping, got 0"):
        RunConfig.from_dict({"grpo": 0})  # a saved config too: 0 no longer reads as "all defaults"


def test_an_empty_run_config_is_refused_not_read_as_the_defaults(tmp_path):
    from grpo_box.runs import create_run

    run = create_run(resolve_config("cpu", overrides=[f"output.runs_dir={tmp_path}"]))
    assert run.config().preset == "cpu"
    run.file("config.yaml").write_text("# all gone\n")
    with pytest.raises(ConfigError, match=r"config.yaml: the file is empty; a saved config holds every section"):
        run.config()
    empty = tmp_path / "overlay.yaml"
    empty.write_text("")
    assert resolve_config("8gb", str(empty)) == load_preset("8gb")  # an empty --config file overrides nothing


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("grpo:\n  max_steps: 3 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not a UTF-8 text file"):
        resolve_config("cpu", str(path))


def test_create_run_leaves_the_callers_config_alone_and_refuses_a_taken_name(tmp_path):
    from grpo_box.runs import create_run

    config = resolve_config("cpu", overrides=[f"output.runs_dir={tmp_path}", "output.run_name=mine",
                                              "data.source=rows.jsonl"])
    (tmp_path / "rows.jsonl").write_text("")
    before = config.to_dict()
    run = create_run(config)
    assert config.to_dict() == before  # no run name filled in, no path made absolute
    assert run.path == tmp_path / "mine" and run.config().output.run_name == "mine"
    with pytest.raises(ConfigError, match=r"output.run_name='mine': a run with that name exists .*resume it, delete it"):
        create_run(config)
    unnamed = resolve_config("cpu", overrides=[f"output.runs_dir={tmp_path}"])
    first, second = create_run(unnamed), create_run(unnamed)
    assert first.path != second.path  # generated names get a suffix instead


def test_runs_dir_that_is_a_file_is_a_config_error(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(ConfigError, match="output.runs_dir=.*afile' is a file, not a folder"):
        resolve_config("cpu", overrides=[f"output.runs_dir={target}"])


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "correctness", "wieght": 2}, "rewards[0] (correctness): unknown key 'wieght'; use name, weight, params"),
    ({"name": 3}, "rewards[0]: each entry needs a name"),
    ({"weight": 1.0}, "rewards[0]: each entry needs a name"),
    ({"name": "correctness", "params": 5}, "rewards[0] (correctness): params must be a mapping"),
])
def test_rubric_entries_have_one_parser_for_configs_and_rubrics(entry, message) -> None:
    """config._build_rewards and rewards.rubric once parsed entries apart (a numeric name passed the
    config and crashed later); both now go through config.reward_spec, each with its own error type."""
    from grpo_box.rewards import RewardError, build_rubric

    with pytest.raises(ConfigError) as from_config:
        RunConfig.from_dict({"rewards": [entry]})
    with pytest.raises(RewardError) as from_rubric:
        build_rubric([entry])
    assert message in str(from_config.value) and str(from_config.value) == str(from_rubric.value)


def test_rubric_entry_without_params_gets_an_empty_mapping() -> None:
    config = RunConfig.from_dict({"rewards": ["correctness", {"name": "think_format", "weight": 0.5, "params": None}]})
    assert [(s.name, s.weight, s.params) for s in config.rewards] == [("correctness", 1.0, {}), ("think_format", 0.5, {})]


# -- defaults with a single source ----------------------------------------------------------------
def test_run_config_defaults_are_the_cpu_preset():
    """The dataclass defaults are the runnable offline run: `RunConfig()` validates and is the cpu preset."""
    config = RunConfig()
    assert validate(config) is config
    assert config == load_preset("cpu") and config.to_dict() == load_preset("cpu").to_dict()


def test_the_gpu_base_is_extended_not_offered():
    from grpo_box.config import load_yaml
    from grpo_box.presets import PRESETS_DIR

    assert "_gpu" not in preset_names() and (PRESETS_DIR / "_gpu.yaml").is_file()
    with pytest.raises(ConfigError, match="unknown preset '_gpu'"):
        load_preset("_gpu")
    for name in preset_names():
        assert load_yaml(PRESETS_DIR / f"{name}.yaml").get("extends") == (None if name == "cpu" else "_gpu"), name


def _restated_without_comment(text: str, base: dict) -> list[str]:
    """The keys of preset YAML `text` whose value equals `base`'s (a whole config as a dict) with no
    comment on their line or directly above it; the rubric counts as one value."""
    import dataclasses
    import re

    import yaml

    from grpo_box.config import reward_spec

    lines = text.splitlines()

    def commented(line: int) -> bool:
        return bool(re.search(r"\s#", lines[line])) or (line > 0 and lines[line - 1].lstrip().startswith("#"))

    def walk(node: yaml.MappingNode, raw: dict, base: dict, prefix: str) -> list[str]:
        found = []
        for key_node, value_node in node.value:
            key = key_node.value
            if key not in base:  # description, vram_gb, extends
                continue
            if isinstance(raw[key], dict) and isinstance(base[key], dict):
                found += walk(value_node, raw[key], base[key], f"{prefix}{key}.")
                continue
            value, based = raw[key], base[key]
            if key == "rewards" and not prefix:
                value, based = ([dataclasses.asdict(reward_spec(entry)) for entry in v] for v in (value, based))
            if value == based and not commented(key_node.start_mark.line):
                found.append(f"{prefix}{key} (line {key_node.start_mark.line + 1})")
        return found

    return walk(yaml.compose(text), yaml.safe_load(text), base, "")


def test_a_restated_base_value_needs_a_comment_saying_why():
    text = """\
grpo:
  max_steps: 60
  beta: 0.0          # restated on purpose
  # the cpu run's own group, restated on purpose
  num_generations: 4
  learning_rate: 1.0e-5
rewards:
  - {name: xml_count, weight: 0.5}
  - {name: think_format, weight: 0.5}
  - {name: correctness, weight: 2, params: {fallback: false}}
"""
    assert _restated_without_comment(text, RunConfig().to_dict()) == ["grpo.max_steps (line 2)", "rewards (line 7)"]


@pytest.mark.parametrize("name", ["_gpu", *preset_names()])
def test_preset_files_state_only_what_differs_from_their_base(name):
    """Each preset file (and the GPU base) says only what differs from what it extends (the dataclass
    defaults, or the base file over them), unless a comment on the line says why it restates it."""
    from grpo_box.presets import PRESETS_DIR, preset_base

    restated = _restated_without_comment((PRESETS_DIR / f"{name}.yaml").read_text(), preset_base(name))
    assert restated == [], f"presets/{name}.yaml restates its base without saying why: {restated}"


def test_readme_presets_table_matches_the_presets():
    """README's table under "## Presets" against the preset files, row by row."""
    from helpers import ROOT

    section = (ROOT / "README.md").read_text().split("\n## Presets\n", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    assert rows[0] == ["preset", "card", "default model", "4-bit", "vLLM + standby", "LoRA r",
                       "generations × completion"]
    table = {row[0]: row for row in rows[2:]}
    assert list(table) == preset_names()
    cards = {info.name: info.vram_gb for info in list_presets()}
    for name, row in table.items():
        config = load_preset(name)
        m, g = config.model, config.grpo
        model = row[2].lower().replace(" ", ":") if row[2].startswith("bundled ") else row[2]
        if m.fast_inference:
            assert m.vllm_standby, f"{name}: the README's column reads vLLM + standby"
        vllm = f"yes ({m.gpu_memory_utilization:g})" if m.fast_inference else "no"
        expected = [name, f"{cards[name]:g} GB" if cards[name] else "none", m.name, "yes" if m.load_in_4bit else "no",
                    vllm, str(config.lora.r), f"{g.num_generations} × {g.max_completion_length}"]
        assert [name, row[1], model, *row[3:]] == expected, f"README presets table, row {name}"
