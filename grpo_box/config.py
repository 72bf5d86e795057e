"""The one typed configuration of a GRPO Box run, its field metadata and its YAML round trip.

Everything a run needs (model, LoRA, GRPO, data, rewards, output) lives in `RunConfig`. Presets,
the CLI's `--set key=value` overrides and the app all produce a `RunConfig`. Every field carries
its help text, range, step and choices as dataclass field metadata (`setting(...)`): the app
builds its widgets from `field_specs()`, and `check_fields()` checks types, ranges and fixed
choices generically from the same metadata, so no range is written twice. Checks that need the
registries (templates, tasks, rewards) or span several fields live in `validation.py`, the one
`validate()`; this module imports nothing from the engine but `errors`, `atomic` (for `save`) and
the bundled model's name from `models`, so it loads without torch or datasets.

The defaults are the cpu preset: `RunConfig()` is the runnable offline run (the bundled 135M model
on the built-in arithmetic task, on the CPU), and `presets/cpu.yaml` adds only its name and card.
The comments beside the defaults say why each value suits that run. Every other preset states
what differs from these defaults (the GPU presets through their shared base, `presets/_gpu.yaml`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_text_atomic
from .errors import ConfigError
from .models import BUNDLED_NAME, BUNDLED_PREFIX

__all__ = ["ConfigError", "RunConfig", "FieldSpec", "field_specs", "check_fields", "apply_overrides", "load_yaml",
           "read_text", "read_yaml"]

BUNDLED_MODEL = BUNDLED_PREFIX + BUNDLED_NAME
MODEL_DTYPES = (None, "float16", "bfloat16")  # what Unsloth's from_pretrained accepts as a string
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")  # TRL 1.15 GRPOConfig.scale_rewards
# Optimizers and schedulers offered; a curated subset of transformers' OptimizerNames/SchedulerType
# (importing those enums pulls in torch, and this module must stay light).
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
              "inverse_sqrt")
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,99}$")


def setting(default: Any = dataclasses.MISSING, *, help: str, minimum: float | None = None,
            maximum: float | None = None, step: float | None = None, min_exclusive: bool = False,
            max_exclusive: bool = False, choices: tuple | None = None, choices_from: str | None = None,
            hint: str = "", factory: Any = None) -> Any:
    """A dataclass field with the metadata widgets and `check_fields` read (see FieldSpec)."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "step": step, "min_exclusive": min_exclusive,
            "max_exclusive": max_exclusive, "choices": choices, "choices_from": choices_from, "hint": hint}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = setting(BUNDLED_MODEL, help="The model to train: the bundled offline model, a Hugging Face Hub id "
                        "or a local folder with a Hugging Face model", choices_from="models")
    load_in_4bit: bool = setting(False, help="Load the base weights in 4-bit (QLoRA, bitsandbytes; GPU only): "
                                 "about a quarter of the memory")  # bitsandbytes 4-bit needs CUDA
    fast_inference: bool = setting(False, help="Generate rollouts with vLLM (GPU only): several times faster "
                                   "sampling")  # vLLM needs CUDA; on the CPU rollouts use model.generate
    vllm_standby: bool = setting(False, help="Unsloth's standby: vLLM's KV cache sleeps while the trainer steps, "
                                 "so both fit on one card (needs fast_inference)")
    vllm_standby_util_override: bool = setting(False, help="Under standby, keep gpu_memory_utilization instead of "
                                               "Unsloth's own target share")
    gpu_memory_utilization: float = setting(0.5, help="vLLM's share of the free GPU memory", minimum=0.05,
                                            maximum=0.95, step=0.05)  # unused on the CPU (no vLLM)
    # Short prompts and answers keep each CPU step cheap.
    max_seq_length: int = setting(256, help="Longest prompt + completion in tokens", minimum=64, maximum=131072,
                                  step=64)
    max_lora_rank: int = setting(16, help="vLLM's LoRA slot size; must be at least lora.r", minimum=1, maximum=512,
                                 step=1)
    dtype: str | None = setting(None, help="Compute dtype; empty lets Unsloth pick (bfloat16 where supported)",
                                choices=("float16", "bfloat16"), hint="Unsloth takes float16 or bfloat16; leave it "
                                "empty (null) to let it pick")


@dataclass
class LoraConfig:
    # A small model: rank 16 already adapts every projection.
    r: int = setting(16, help="LoRA rank: capacity of the adapter (8–64 is typical)", minimum=1, maximum=512, step=1)
    alpha: int = setting(32, help="LoRA scale, usually r or 2 × r", minimum=1, maximum=1024, step=1,
                         hint="usually lora.r or 2 × lora.r")
    dropout: float = setting(0.0, help="LoRA dropout", minimum=0.0, maximum=1.0, max_exclusive=True, step=0.01,
                             hint="e.g. 0 or 0.05")
    target_modules: list[str] = setting(
        help="The projections that get a LoRA adapter",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # Off: the cpu run's sequences are tiny, so recomputing activations would only cost time.
    gradient_checkpointing: str | bool = setting(False, help="Recompute activations to save memory: "
                                                 "'unsloth' (offloaded), true, or false",
                                                 choices=("unsloth", True, False))


@dataclass
class GRPOSettings:
    # A tiny model and few steps: a high LoRA rate is needed to see movement.
    learning_rate: float = setting(5e-5, help="Learning rate of the LoRA weights", minimum=0.0, maximum=1e-2,
                                   min_exclusive=True, max_exclusive=True, step=1e-6,
                                   hint="use a small positive rate (1e-6 … 5e-5 is typical for GRPO)")
    max_steps: int = setting(60, help="Optimizer steps to train", minimum=1, maximum=1_000_000, step=1)
    # 4 completions per prompt, the group that gives the advantage baseline; the batch of 8 is 2 prompts × 4.
    num_generations: int = setting(4, help="Completions sampled per prompt; GRPO compares them within the group",
                                   minimum=2, maximum=256, step=1,
                                   hint="GRPO compares completions within a group; use at least 2")
    per_device_train_batch_size: int = setting(8, help="Completions per step (a multiple of num_generations)",
                                               minimum=1, maximum=4096, step=1)
    gradient_accumulation_steps: int = setting(1, help="Steps whose gradients add up before one update",
                                               minimum=1, maximum=1024, step=1)
    # The system prompt and the one-shot turn take about 140 tokens.
    max_prompt_length: int = setting(192, help="Longest prompt in tokens", minimum=1, maximum=131072, step=16)
    # Enough for a short <think> and an <answer>.
    max_completion_length: int = setting(64, help="Longest completion in tokens", minimum=1, maximum=131072,
                                         step=16)
    temperature: float = setting(1.0, help="Sampling temperature of the rollouts", minimum=0.0, maximum=2.0,
                                 min_exclusive=True, step=0.05,
                                 hint="GRPO needs sampled, different completions; use 0.6–1.2")
    # No KL penalty: no reference model in memory (the DAPO/Dr. GRPO default).
    beta: float = setting(0.0, help="KL penalty to the base model (0 = none, and no reference model in memory)",
                          minimum=0.0, maximum=10.0, step=0.001)
    # Token-level loss normalisation, no length bias.
    loss_type: str = setting("dapo", help="GRPO loss normalisation", choices=LOSS_TYPES)
    epsilon: float = setting(0.2, help="PPO clipping range", minimum=0.0, maximum=1.0, min_exclusive=True, step=0.01)
    # The three below are what Unsloth would otherwise set behind loss_type's back on the GPU only
    # (train.loss_settings); a run's config.yaml records the values the trainer used.
    epsilon_high: float | None = setting(None, help="Upper clipping bound (DAPO's clip-higher, e.g. 0.28); empty = "
                                         "epsilon", minimum=0.0, maximum=1.0, min_exclusive=True, step=0.01)
    scale_rewards: str | None = setting(None, help="Divide advantages by the reward std of the group, of the batch, "
                                        "or not at all; empty = none for dr_grpo (its point), group otherwise",
                                        choices=SCALE_REWARDS)
    mask_truncated_completions: bool = setting(False, help="Leave completions cut off at max_completion_length out "
                                               "of the loss (DAPO); a step whose completions are all cut then "
                                               "updates nothing, and the log says so")
    optim: str = setting("adamw_torch", help="Optimizer (8-bit ones need a GPU)", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, help="Weight decay", minimum=0.0, maximum=1.0, step=0.01)
    warmup_ratio: float = setting(0.0, help="Share of the run spent warming the learning rate up", minimum=0.0,
                                  maximum=1.0, max_exclusive=True, step=0.01, hint="a fraction of the run, e.g. 0.1")
    lr_scheduler_type: str = setting("constant", help="Learning-rate schedule", choices=SCHEDULERS)
    max_grad_norm: float = setting(0.1, help="Gradient clipping norm", minimum=0.0, maximum=100.0,
                                   min_exclusive=True, step=0.01)
    seed: int = setting(3407, help="Random seed of the trainer", minimum=0, maximum=2**32 - 1, step=1)


@dataclass
class DataConfig:
    source: str = setting("task:arithmetic", help="task:<name> (built in, offline), a Hub dataset id, or a "
                          ".jsonl/.csv/.parquet file", choices_from="tasks")
    subset: str | None = setting(None, help="Hub dataset configuration, e.g. main for openai/gsm8k")
    split: str = setting("train", help="Dataset split to read")
    prompt_column: str = setting("question", help="Column holding the prompt")
    answer_column: str = setting("answer", help="Column holding the reference answer")
    template: str = setting("think", help="Output format asked for in the system prompt (and checked by the "
                            "format rewards)", choices_from="templates")
    system_prompt: str | None = setting(None, help="Replaces the template's system prompt (the tags stay)")
    # A 135M model never writes <think>/<answer> from the system prompt alone (0% of replies). One worked
    # example as an earlier turn plus a prefilled "<think>" gets about half of its greedy replies into the
    # format, and GRPO takes that to nearly all of them (bench/learning_demo.py).
    one_shot: bool = setting(True, help="Show one worked example of the format as an earlier chat turn before "
                             "every question (small models copy a shown turn more readily than a described format)")
    prefill: bool = setting(True, help="Start every reply with the template's opening reasoning tag (e.g. <think>), "
                            "as DeepSeek-R1's chat template does; kept in the exported chat template and Modelfile")
    size: int = setting(256, help="Rows generated for a task; most rows used from other sources", minimum=1,
                        maximum=10_000_000, step=1)
    eval_size: int = setting(32, help="Rows held out for evaluation", minimum=0, maximum=1_000_000, step=1)
    seed: int = setting(0, help="Seed of the task generator and of the held-out split", minimum=0,
                        maximum=2**32 - 1, step=1)


USER_PREFIX = "user:"  # a rubric entry named "user:<function>" is a function of the run's reward_file


@dataclass
class RewardSpec:
    name: str
    weight: float = setting(1.0, help="How much this reward counts in the weighted total (negative penalises)",
                            step=0.1)
    params: dict[str, Any] = setting(help="The reward's parameters; a parameter left out keeps its default",
                                     factory=dict)


@dataclass
class OutputConfig:
    runs_dir: str = setting("", help="Folder of the runs; empty = <data home>/runs")
    run_name: str | None = setting(None, help="Name of the run folder (letters, digits, - _ . only); empty = "
                                   "<timestamp>-<preset>")
    # A cpu checkpoint (~60 MB) takes well under a second: every step, so a crash or kill costs at most one.
    save_steps: int = setting(1, help="Save a checkpoint every N steps (a stop always saves one)", minimum=1,
                              maximum=1_000_000, step=1)
    sample_every: int = setting(5, help="Write sample completions every N steps", minimum=1, maximum=1_000_000,
                                step=1)
    keep_checkpoints: int = setting(2, help="How many checkpoints to keep", minimum=1, maximum=1000, step=1)


def _default_rewards() -> list[RewardSpec]:
    """The cpu rubric. xml_count pays per tag, so half-formatted replies still get a gradient toward
    the format; correctness counts only an answer inside <answer> (no fallback to the last number),
    so the format pays."""
    return [RewardSpec("xml_count", 0.5), RewardSpec("think_format", 0.5),
            RewardSpec("correctness", 2.0, {"fallback": False})]


@dataclass
class RunConfig:
    preset: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[RewardSpec] = field(default_factory=_default_rewards)
    output: OutputConfig = field(default_factory=OutputConfig)
    reward_file: str | None = setting(None, help="A Python file of your reward functions (rubric names "
                                      f"{USER_PREFIX}<function>)")
    evaluate: bool = setting(False, help="Score the held-out split with the base model first and the adapter "
                             "at the end")
    auto_fit: bool = setting(False, help="After a CUDA out-of-memory error, retry once with the next smaller setting")
    reward_timeout: float = setting(120.0, help="Seconds one reward call may take before the run fails naming "
                                    "the function", minimum=0.0, maximum=86400.0, min_exclusive=True, step=1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        return _build(cls, raw or {}, "")

    def copy(self) -> "RunConfig":
        return RunConfig.from_dict(self.to_dict())

    def to_yaml(self) -> str:
        """The whole config as YAML, in field order (what a run's config.yaml holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write `to_yaml()` to `path` atomically (a reader sees the old file or the new one)."""
        write_text_atomic(Path(path), self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """A whole saved config (a run's config.yaml). An empty file is refused: it would otherwise
        read as the default config and train, chat or export as something the run never was."""
        raw = load_yaml(path)
        if not raw:
            raise ConfigError(f"{path}: the file is empty; a saved config holds every section (model:, lora:, "
                              "grpo:, …): restore it from a copy, or start a new run")
        return cls.from_dict(raw)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error in one line: where (1-based line and column) and what, without PyYAML's
    multi-line excerpt of the parser's internals."""
    mark = getattr(exc, "problem_mark", None)
    what = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context, started = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and started is not None:
        context += f" that starts at line {started.line + 1}, column {started.column + 1}"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"not valid YAML: {where}{what}" + (f" ({context})" if context else "")


def read_text(path: str | Path, where: str = "", error: type[Exception] = ConfigError) -> str:
    """A UTF-8 text file's contents; a missing, unreadable or non-UTF-8 file raises `error` (a
    UserError) naming it, `where` in front of the path (e.g. "rubric file")."""
    path = Path(path)
    label = _named(path, where)
    if not path.is_file():
        raise error(f"{label}: {'not a file' if path.exists() else 'file not found'}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: not a UTF-8 text file (byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise error(f"{label}: cannot read it ({exc.strerror or exc})") from exc


def read_yaml(path: str | Path, where: str = "", error: type[Exception] = ConfigError) -> Any:
    """A YAML file's value (None when empty); any problem raises `error` naming the file (see read_text)."""
    text = read_text(path, where, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{_named(path, where)}: {yaml_problem(exc)}") from exc


def _named(path: str | Path, where: str) -> str:
    return f"{where} {path}" if where else str(path)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping ({} for an empty file), turning every problem into a ConfigError that names the file."""
    raw = read_yaml(path)
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
            kwargs[name] = _build(sub, {} if value is None else value, f"{name}.")  # 0 or "" is refused
        elif cls is RunConfig and name == "rewards":
            kwargs[name] = _build_rewards(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _build_rewards(value: Any) -> list[RewardSpec]:
    if not isinstance(value, list):
        raise ConfigError("rewards: expected a list of {name, weight, params}")
    return [reward_spec(item, i) for i, item in enumerate(value)]


REWARD_KEYS = ("name", "weight", "params")


def reward_spec(raw: Any, index: int = 0, error: type[Exception] = ConfigError) -> RewardSpec:
    """One rubric entry as a RewardSpec: a RewardSpec, a bare name, or a {name, weight, params} mapping.

    The one parser of rubric entries (run configs, rubric files, `build_rubric`); it raises `error`
    (ConfigError here, RewardError from the rewards package) naming the entry. Missing params
    become {}; the weight and the params' values are checked where the rubric is built.

    >>> reward_spec({"name": "correctness", "weight": 2, "params": None})
    RewardSpec(name='correctness', weight=2, params={})
    """
    if isinstance(raw, RewardSpec):
        return raw
    if isinstance(raw, str):
        return RewardSpec(raw)
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise error(f"rewards[{index}]: each entry needs a name, e.g. {{name: correctness, weight: 1.0}}; "
                    f"got {raw!r:.120}")
    unknown = sorted(set(raw) - set(REWARD_KEYS))
    if unknown:
        raise error(f"rewards[{index}] ({raw['name']}): unknown key {unknown[0]!r}; use {', '.join(REWARD_KEYS)}")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise error(f"rewards[{index}] ({raw['name']}): params must be a mapping of name: value, got {params!r}")
    return RewardSpec(raw["name"], raw.get("weight", 1.0), dict(params))


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "grpo": GRPOSettings,
    "data": DataConfig,
    "output": OutputConfig,
}


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply CLI-style `section.key=value` overrides (values parsed as YAML scalars); a new config."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. grpo.max_steps=10")
        set_key(raw, key.strip(), _parse_value(text))
    return RunConfig.from_dict(raw)


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `section.key` (or a top-level key) in a config dict; a whole section cannot be replaced."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"--set {key}: no section {part!r}; sections: {', '.join(_SECTIONS)}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"--set {key}: unknown setting; valid keys: {', '.join(sorted(node))}")
    if isinstance(node[parts[-1]], dict) and not isinstance(value, dict):
        raise ConfigError(f"--set {key}={value!r}: {key} is a section; set one of its keys, e.g. "
                          f"{key}.{next(iter(node[parts[-1]]), 'key')}=…")
    node[parts[-1]] = value


def _parse_value(text: str) -> Any:
    """A YAML scalar, plus numbers YAML 1.1 leaves as strings (`1e-5` has no dot)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# -- field metadata -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """What a widget and a generic check need to know about one setting."""

    key: str  # "grpo.learning_rate", or "auto_fit" for a top-level setting
    section: str  # "grpo", or "" at the top level
    name: str
    kind: str  # int | float | bool | str | list | choice
    default: Any
    help: str
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: tuple | None = None  # fixed choices
    choices_from: str | None = None  # a registry: choices.runtime_choices(name)
    hint: str = ""

    def range_text(self) -> str:
        low = high = ""
        if self.minimum is not None:
            low = f"{'more than' if self.min_exclusive else 'at least'} {_plain(self.minimum)}"
        if self.maximum is not None:
            high = f"{'less than' if self.max_exclusive else 'at most'} {_plain(self.maximum)}"
        return " and ".join(part for part in (low, high) if part)


def _plain(number: float) -> str:
    """A bound as people write it: 1,000,000 and 4,294,967,295, not 1e+06 and 4.29497e+09."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:g}"


def _kind(type_text: str) -> tuple[str, bool]:
    names = [n.strip() for n in str(type_text).split("|")]
    nullable = "None" in names
    names = [n for n in names if n != "None"]
    if len(names) > 1:
        return "choice", nullable
    name = names[0]
    return ("list" if name.startswith("list") else name), nullable


def _specs_of(cls: type, section: str, defaults: Any = None) -> list[FieldSpec]:
    specs = []
    defaults = defaults if defaults is not None else cls()
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, nullable = _kind(f.type)
        meta = {k: v for k, v in f.metadata.items() if k != "help"}
        key = f"{section}.{f.name}" if section else f.name
        specs.append(FieldSpec(key, section, f.name, kind, getattr(defaults, f.name), f.metadata["help"],
                               nullable, **meta))
    return specs


def field_specs() -> list[FieldSpec]:
    """Every documented setting, section by section (model, lora, grpo, data, output, then top level)."""
    specs = [spec for section, cls in _SECTIONS.items() for spec in _specs_of(cls, section)]
    return specs + _specs_of(RunConfig, "")


def rubric_field_specs() -> list[FieldSpec]:
    """The documented fields of one rubric entry ("rewards.weight", "rewards.params"), for the
    rubric editor; the name's choices come from the reward registry."""
    return _specs_of(RewardSpec, "rewards", RewardSpec(""))


def field_spec(key: str) -> FieldSpec:
    for spec in field_specs():
        if spec.key == key:
            return spec
    raise KeyError(key)


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def check_fields(config: RunConfig) -> list[str]:
    """Types, ranges and fixed choices of every setting, from the field metadata; one line per problem."""
    problems = []
    for spec in field_specs():
        obj = getattr(config, spec.section) if spec.section else config
        problems += _check_one(spec, getattr(obj, spec.name))
    return problems


def _check_one(spec: FieldSpec, value: Any) -> list[str]:
    if value is None:
        return [] if spec.nullable else [f"{spec.key} must be set ({spec.help.lower()})"]
    if spec.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return [f"{spec.key} must be a list of names, got {value!r}"]
        return []
    if spec.kind in _TYPES:
        if (isinstance(value, bool) and spec.kind != "bool") or not isinstance(value, _TYPES[spec.kind]):
            return [f"{spec.key} must be {_KIND_WORDS.get(spec.kind, spec.kind)}, got {value!r}"]
        if isinstance(value, float) and not math.isfinite(value):
            return [f"{spec.key}={value!r} must be a finite number"]
    if spec.choices is not None and value not in spec.choices:
        shown = ", ".join(str(c) for c in spec.choices)
        return [f"{spec.key}={value!r}: choose one of {shown}" + (f" ({spec.hint})" if spec.hint else "")]
    if spec.kind in ("int", "float") and not _in_range(spec, value):
        return [f"{spec.key}={value!r} is out of range: it must be {spec.range_text()}"
                + (f"; {spec.hint}" if spec.hint else "")]
    return []


def _in_range(spec: FieldSpec, value: float) -> bool:
    if spec.minimum is not None and (value <= spec.minimum if spec.min_exclusive else value < spec.minimum):
        return False
    if spec.maximum is not None and (value >= spec.maximum if spec.max_exclusive else value > spec.maximum):
        return False
    return True


def column_clash(prompt_column: str, answer_column: str, columns: list[str]) -> str | None:
    """Why a data file cannot use these columns when prompt and answer would be one column, or None.
    The one rule for the data reader and the Data tab (which names the file before it)."""
    if prompt_column != answer_column:
        return None
    others = [c for c in columns if c != prompt_column]
    return (f"data.prompt_column and data.answer_column are both {prompt_column!r}: the reference answers need "
            "a column of their own; " + (f"set data.answer_column to one of: {', '.join(others)}" if others else
                                         "this file has no other column, so add one with each question's answer"))


def check_run_name(name: str | None) -> str | None:
    """A run name is a plain folder name: no separators, no leading dot. The problem, or None.
    None or empty (a cleared form field) means a generated name."""
    if not name or RUN_NAME_PATTERN.match(name):
        return None
    return (f"output.run_name={name!r}: use a plain folder name of letters, digits and - _ . "
            "(no slashes, no leading dot), e.g. gsm8k-try1")
