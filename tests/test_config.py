"""Config and presets: every preset validates; bad configs name the field and the fix."""

from __future__ import annotations

import pytest

from grpo_box.config import ConfigError, RunConfig, apply_overrides, validate
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


@pytest.mark.parametrize(
    "overrides, field, fix",
    [
        (["grpo.num_generations=3"], "num_generations=3", "multiple of 3"),
        (["grpo.max_completion_length=400"], "model.max_seq_length=256", "raise model.max_seq_length to at least 560"),
        (["model.fast_inference=true", "lora.r=64"], "lora.r=64 is over model.max_lora_rank=16", "set model.max_lora_rank to at least 64"),
        (["grpo.learning_rate=0.5"], "grpo.learning_rate=0.5", "1e-6"),
        (["grpo.loss_type=foo"], "grpo.loss_type='foo'", "choose one of"),
        (["grpo.max_steps=ten"], "grpo.max_steps must be int", "got 'ten'"),
        (["rewards=[]"], "rewards is empty", "add at least one reward"),
        (["model.dtype=float32"], "model.dtype='float32'", "float16 or bfloat16"),
        (["grpo.per_device_train_batch_size=0"], "per_device_train_batch_size=0", "at least 1"),
        (["grpo.gradient_accumulation_steps=0"], "gradient_accumulation_steps=0", "at least 1"),
        (["grpo.temperature=0"], "grpo.temperature=0", "use 0.6–1.2"),
        (["grpo.warmup_ratio=5"], "grpo.warmup_ratio=5", "[0, 1)"),
        (["lora.alpha=0"], "lora.alpha=0", "2 × lora.r (32)"),
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
