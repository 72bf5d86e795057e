"""The one typed configuration of a GRPO Box run, its YAML round trip and its validation.

Everything a run needs (model, LoRA, GRPO, data, rewards, output) lives in `RunConfig`. Presets,
the CLI's `--set key=value` overrides and (later) the UI all produce a `RunConfig`; `validate()` is
the single place that checks it, and every message names the field and the fix, like TRL's
`GRPOConfig.__post_init__`. The dataclasses are plain so that the engine, tests and the UI share
defaults and ranges without re-typing strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
MODEL_DTYPES = (None, "float16", "bfloat16")  # what Unsloth's from_pretrained accepts as a string


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the field and what to change."""


@dataclass
class ModelConfig:
    name: str = BUNDLED_MODEL  # bundled:…, a Hub id, or a local HF directory
    load_in_4bit: bool = False
    fast_inference: bool = False  # vLLM rollouts (GPU only)
    vllm_standby: bool = False  # UNSLOTH_VLLM_STANDBY=1 before `import unsloth`
    vllm_standby_util_override: bool = False  # keep gpu_memory_utilization under standby (else Unsloth's target)
    gpu_memory_utilization: float = 0.6  # vLLM's share of the card
    max_seq_length: int = 512
    max_lora_rank: int = 16  # vLLM's LoRA slot size; must be >= lora.r
    dtype: str | None = None  # None lets Unsloth pick (bf16 where supported)


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    gradient_checkpointing: str | bool = "unsloth"


@dataclass
class GRPOSettings:
    learning_rate: float = 5e-6
    max_steps: int = 100
    num_generations: int = 8
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_prompt_length: int = 256
    max_completion_length: int = 256
    temperature: float = 1.0
    beta: float = 0.0
    loss_type: str = "dapo"
    epsilon: float = 0.2
    optim: str = "adamw_torch"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "constant"
    max_grad_norm: float = 0.1
    seed: int = 3407


@dataclass
class DataConfig:
    source: str = "task:arithmetic"  # task:<name>, a Hub dataset id, or a .jsonl/.csv/.parquet path
    subset: str | None = None  # Hub dataset config, e.g. "main" for openai/gsm8k
    split: str = "train"
    prompt_column: str = "question"
    answer_column: str = "answer"
    template: str = "think"  # system prompt style: think | reasoning | boxed
    system_prompt: str | None = None  # overrides the template's system prompt
    size: int = 256  # rows generated for task: sources; max rows used otherwise
    eval_size: int = 32  # held-out rows
    seed: int = 0


@dataclass
class RewardSpec:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputConfig:
    runs_dir: str = ""  # "" = <data home>/runs (see models.data_home)
    run_name: str | None = None  # default: <timestamp>-<preset>
    save_steps: int = 25  # checkpoint every N steps
    sample_every: int = 5  # write samples.jsonl every N steps
    keep_checkpoints: int = 2


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec("think_format", 0.5), RewardSpec("correctness", 2.0)]


@dataclass
class RunConfig:
    preset: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[RewardSpec] = field(default_factory=_default_rewards)
    output: OutputConfig = field(default_factory=OutputConfig)
    reward_file: str | None = None  # a Python file of user reward functions (rubric names "user:<fn>")
    evaluate: bool = False  # score the held-out split with the base model first and the adapter at the end
    auto_fit: bool = False  # after a CUDA out-of-memory error, retry once with the next smaller setting

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        return _build(cls, raw or {}, "")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(load_yaml(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning parse errors into a ConfigError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, lora:, grpo:, …)")
    return raw


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys with the list of valid ones."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix}{unknown[0]}; valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        sub = _SECTIONS.get(name) if cls is RunConfig else None
        if sub is not None:
            kwargs[name] = _build(sub, value or {}, f"{name}.")
        elif cls is RunConfig and name == "rewards":
            kwargs[name] = _build_rewards(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _build_rewards(value: Any) -> list[RewardSpec]:
    if not isinstance(value, list):
        raise ConfigError("rewards: expected a list of {name, weight, params}")
    specs = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"rewards[{i}]: each entry needs a name, e.g. {{name: correctness, weight: 1.0}}")
        specs.append(_build(RewardSpec, item, f"rewards[{i}]."))
    return specs


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "grpo": GRPOSettings,
    "data": DataConfig,
    "output": OutputConfig,
}


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply CLI-style `section.key=value` overrides; values are parsed as YAML scalars."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. grpo.max_steps=10")
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {key}: no section {part!r}; sections: {', '.join(_SECTIONS)}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"--set {key}: unknown setting; valid keys: {', '.join(sorted(node))}")
        node[parts[-1]] = _parse_value(text)
    return RunConfig.from_dict(raw)


def _parse_value(text: str) -> Any:
    """A YAML scalar, plus numbers YAML 1.1 leaves as strings (`1e-5` has no dot)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(section: str, obj: Any) -> list[str]:
    problems = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        names = [n for n in str(f.type).split(" | ") if n != "None"]
        if value is None and "None" in str(f.type):
            continue
        if any(n not in _TYPES for n in names):
            continue  # lists and dicts are checked where they are used
        if isinstance(value, bool) and "bool" not in names:
            ok = False
        else:
            ok = any(isinstance(value, _TYPES[n]) for n in names)
        if not ok:
            problems.append(f"{section}.{f.name} must be {' or '.join(names)}, got {value!r}")
    return problems


def validate(config: RunConfig) -> RunConfig:
    """Check a config; raise ConfigError listing every problem with the fix. Returns the config."""
    problems: list[str] = []
    for name in _SECTIONS:
        problems += _check_types(name, getattr(config, name))
    if problems:
        raise ConfigError("invalid config:\n- " + "\n- ".join(problems))
    problems += _check_model(config)
    problems += _check_grpo(config)
    problems += _check_data_and_rewards(config)
    if problems:
        raise ConfigError("invalid config:\n- " + "\n- ".join(problems))
    return config


def _check_model(c: RunConfig) -> list[str]:
    p = []
    m, lora = c.model, c.lora
    if not 0.05 <= m.gpu_memory_utilization <= 0.95:
        p.append(f"model.gpu_memory_utilization={m.gpu_memory_utilization}: use a share between 0.05 and 0.95")
    if lora.r < 1:
        p.append(f"lora.r={lora.r}: the LoRA rank must be at least 1 (8–64 is typical)")
    if lora.alpha <= 0:
        p.append(f"lora.alpha={lora.alpha}: use a positive scale, usually lora.r or 2 × lora.r ({2 * max(lora.r, 1)})")
    if not 0 <= lora.dropout < 1:
        p.append(f"lora.dropout={lora.dropout}: use a probability in [0, 1), e.g. 0 or 0.05")
    if m.name.startswith("bundled:") and m.name != BUNDLED_MODEL:
        p.append(f"model.name={m.name!r}: the bundled model is {BUNDLED_MODEL}; or give a Hub id or a local directory")
    if m.fast_inference and lora.r > m.max_lora_rank:
        p.append(
            f"lora.r={lora.r} is over model.max_lora_rank={m.max_lora_rank}: "
            f"set model.max_lora_rank to at least {lora.r} or lower lora.r"
        )
    if m.vllm_standby and not m.fast_inference:
        p.append("model.vllm_standby needs model.fast_inference=true (standby is vLLM's KV cache); turn one on or the other off")
    if not lora.target_modules:
        p.append("lora.target_modules is empty: list the projections to adapt, e.g. [q_proj, v_proj]")
    if m.dtype not in MODEL_DTYPES:
        p.append(f"model.dtype={m.dtype!r}: Unsloth takes float16 or bfloat16; leave it empty (null) to let it pick")
    return p


def _check_grpo(c: RunConfig) -> list[str]:
    p = []
    g, m = c.grpo, c.model
    if g.num_generations < 2:
        p.append(f"grpo.num_generations={g.num_generations}: GRPO compares completions within a group; use at least 2")
    effective = g.per_device_train_batch_size * g.gradient_accumulation_steps
    if g.num_generations >= 2 and effective % g.num_generations:
        p.append(
            f"effective batch grpo.per_device_train_batch_size × grpo.gradient_accumulation_steps = {effective} "
            f"is not divisible by grpo.num_generations={g.num_generations}: set per_device_train_batch_size "
            f"to a multiple of {g.num_generations} (e.g. {g.num_generations}) or change num_generations"
        )
    if g.max_prompt_length + g.max_completion_length > m.max_seq_length:
        p.append(
            f"grpo.max_prompt_length + grpo.max_completion_length = {g.max_prompt_length + g.max_completion_length} "
            f"is over model.max_seq_length={m.max_seq_length}: raise model.max_seq_length to at least "
            f"{g.max_prompt_length + g.max_completion_length} or shorten the completion"
        )
    for name in ("max_steps", "max_completion_length", "max_prompt_length",
                 "per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(g, name) < 1:
            p.append(f"grpo.{name}={getattr(g, name)} must be at least 1")
    if g.temperature <= 0:
        p.append(f"grpo.temperature={g.temperature}: GRPO needs sampled, different completions; use 0.6–1.2")
    if not 0 <= g.warmup_ratio < 1:
        p.append(f"grpo.warmup_ratio={g.warmup_ratio}: a fraction of the run in [0, 1), e.g. 0.1")
    if g.epsilon <= 0 or g.max_grad_norm <= 0:
        p.append(f"grpo.epsilon={g.epsilon} and grpo.max_grad_norm={g.max_grad_norm} must be positive (0.2 and 0.1 are usual)")
    if not 0 < g.learning_rate < 1e-2:
        p.append(f"grpo.learning_rate={g.learning_rate}: use a small positive rate (1e-6 … 5e-5 is typical for GRPO)")
    if g.beta < 0:
        p.append("grpo.beta must be >= 0 (0 disables the KL penalty and the reference model)")
    if g.loss_type not in ("grpo", "dapo", "dr_grpo", "bnpo"):
        p.append(f"grpo.loss_type={g.loss_type!r}: choose one of grpo, dapo, dr_grpo, bnpo")
    return p


def _check_data_and_rewards(c: RunConfig) -> list[str]:
    p = []
    if c.data.size < 1:
        p.append("data.size must be at least 1")
    if c.data.eval_size < 0:
        p.append("data.eval_size must be >= 0")
    if not c.rewards:
        p.append("rewards is empty: add at least one reward, e.g. {name: correctness, weight: 1.0}")
    from .prompts import TEMPLATES  # imported here: prompts imports this module

    if c.data.template not in TEMPLATES:
        p.append(f"data.template={c.data.template!r}: choose one of {', '.join(TEMPLATES)}")
    for i, spec in enumerate(c.rewards):
        if not isinstance(spec.weight, (int, float)):
            p.append(f"rewards[{i}] ({spec.name}).weight must be a number")
        p += _check_reward_name(i, spec, c.reward_file)
    if not p and c.rewards:
        p += _check_rubric_fits_template(c)
    if c.output.save_steps < 1 or c.output.sample_every < 1:
        p.append("output.save_steps and output.sample_every must be at least 1")
    return p


def _check_rubric_fits_template(c: RunConfig) -> list[str]:
    """Tag-checking rewards need a template that asks for tags (`boxed` does not)."""
    from .rewards.registry import RewardError
    from .rewards.rubric import apply_template

    try:
        apply_template(c.rewards, c.data.template)
    except RewardError as exc:
        return [str(exc)]
    return []


def _check_reward_name(index: int, spec: RewardSpec, reward_file: str | None) -> list[str]:
    """A rubric name must be a registered reward, or `user:<fn>` with a reward_file that exists.

    Checked here so a typo fails before a run directory is made and a child process loads the model;
    the user file itself is only imported in the training/eval process (see rewards.user).
    """
    label = f"rewards[{index}] ({spec.name})"
    if spec.name.startswith("user:"):
        if not reward_file:
            return [f"{label} names a user reward: set reward_file to the Python file that defines it"]
        if not Path(reward_file).expanduser().is_file():
            return [f"reward_file={reward_file!r} does not exist: give the path of your reward file"]
        return []
    from .rewards.registry import RewardError, reward_info  # the registry needs the reward modules loaded
    from . import rewards  # noqa: F401  (registers the built-in rewards)

    try:
        reward_info(spec.name)
    except RewardError as exc:
        return [f"{label}: {exc}"]
    return []
