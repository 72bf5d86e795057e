"""The app's one state object: the current run configuration as a preset plus overrides.

`UIState` keeps the preset's name and a dict of "section.key" overrides (a top-level setting such
as "reward_file" or "rewards" has no section), holding typed values, not strings: the form sets
`grpo.max_steps` to the int 3. `config()` merges the overrides into the preset as a dict and
validates the result, so the app gets exactly the `RunConfig` the CLI would build, and
`command()` prints the CLI line that reproduces it (`python -m grpo_box train --preset cpu --set
grpo.max_steps=3 …`). An override equal to the preset's value is dropped, so the command lists
only what the user changed. `to_yaml()` / `from_yaml()` are Save and Load: the whole config is
written, and a loaded file becomes a preset plus the settings where it differs.

This module imports no gradio and no torch: the Train tab (and tests) call `state.config()`.
"""

from __future__ import annotations

import copy
import functools
import math
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from grpo_box.config import ConfigError, RunConfig, field_specs, set_key, yaml_problem
from grpo_box.presets import deep_merge, load_preset

DEFAULT_PRESET = "cpu"
# Overrides kept when the user switches preset: what the Data and Rewards tabs and the app's
# --runs-dir chose, which a preset's model and memory settings have nothing to do with.
KEEP_ON_PRESET_CHANGE = ("data.", "rewards", "reward_file", "output.runs_dir")


def _validate(config: RunConfig) -> RunConfig:
    try:
        from grpo_box.validation import validate
    except ImportError:  # older engine layout: validate() lived in config
        from grpo_box.config import validate  # type: ignore[attr-defined,no-redef]
    return validate(config)


@functools.lru_cache(maxsize=16)
def _preset_dict(name: str) -> dict[str, Any]:
    return load_preset(name).to_dict()


def preset_dict(name: str) -> dict[str, Any]:
    """The preset's full config as a dict (a fresh copy; preset files are read once)."""
    return copy.deepcopy(_preset_dict(name))


def flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """{"grpo": {"max_steps": 3}, "auto_fit": False} -> {"grpo.max_steps": 3, "auto_fit": False}."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": sub for name, sub in value.items()})
        else:
            flat[key] = value
    return flat


@functools.lru_cache(maxsize=1)
def _kinds() -> dict[str, str]:
    return {spec.key: spec.kind for spec in field_specs()}


# text settings where an emptied box means "not set" (a generated run name, no reward file); elsewhere
# (the system prompt) an empty text is a value of its own
BLANK_IS_UNSET = ("output.run_name", "reward_file")


def coerce(key: str, value: Any) -> Any:
    """A widget's value as the setting's type: 3.0 -> 3 for an int, "1e-5" -> 1e-05 for a float.

    Values that do not convert are returned unchanged, for validation to report.
    """
    kind = _kinds().get(key)
    if isinstance(value, bool) or value is None:
        return value
    if key in BLANK_IS_UNSET and isinstance(value, str) and not value.strip():
        return None
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int):
        return float(value)
    if kind in ("int", "float") and isinstance(value, str) and value.strip():
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if kind == "int" and number.is_integer() else number
    return value


def yaml_value(value: Any) -> str:
    """`value` as the one-line YAML text the CLI's `--set key=TEXT` parses back to the same value."""
    if isinstance(value, str) and ("\n" in value or value != value.strip()):
        text = yaml.safe_dump(value, default_style='"', width=2**31, allow_unicode=True)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True)
    text = text.strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text  # a plain scalar's document end


def parses_back(text: str, value: Any) -> bool:
    """Whether the CLI's `--set` parser turns `text` back into `value` (same value and type)."""
    from grpo_box.config import _parse_value

    try:
        parsed = _parse_value(text)
    except yaml.YAMLError:
        return False
    return _same(parsed, value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                       and not isinstance(a, bool) and not isinstance(b, bool)):
        return False
    return a == b


@dataclass
class UIState:
    """A preset name plus typed "section.key" overrides; see the module docstring."""

    preset: str = DEFAULT_PRESET
    overrides: dict[str, Any] = field(default_factory=dict)

    # -- reading ----------------------------------------------------------------------------------
    def raw(self) -> dict[str, Any]:
        """The preset's config dict with the overrides merged in (not validated)."""
        raw = preset_dict(self.preset)
        for key, value in self.overrides.items():
            set_key(raw, key, copy.deepcopy(value))
        raw["preset"] = self.preset
        return raw

    def config(self) -> RunConfig:
        """The validated RunConfig; raises ConfigError (a UserError) saying what to change."""
        return _validate(RunConfig.from_dict(self.raw()))

    def value(self, key: str) -> Any:
        """The current value of one setting ("grpo.max_steps", "reward_file", "rewards")."""
        if key in self.overrides:
            return copy.deepcopy(self.overrides[key])
        flat = flatten(preset_dict(self.preset))
        if key not in flat:
            raise ConfigError(f"unknown setting {key!r}")
        return flat[key]

    @property
    def rewards(self) -> list[dict[str, Any]]:
        """The rubric as [{name, weight, params}], the preset's unless the user edited it."""
        return self.value("rewards")

    @property
    def reward_file(self) -> str | None:
        return self.value("reward_file")

    # -- changing ---------------------------------------------------------------------------------
    def set(self, key: str, value: Any) -> "UIState":
        """Set one setting (typed; widget values are coerced); equal to the preset's = no override."""
        value = coerce(key, value)
        base = flatten(preset_dict(self.preset))
        if key not in base:
            set_key(preset_dict(self.preset), key, value)  # raises ConfigError naming the valid keys
        if _same(base.get(key), value):
            self.overrides.pop(key, None)
        else:
            self.overrides[key] = copy.deepcopy(value)
        return self

    def update(self, values: dict[str, Any]) -> "UIState":
        for key, value in values.items():
            self.set(key, value)
        return self

    def set_rewards(self, rewards: list[dict[str, Any]]) -> "UIState":
        return self.set("rewards", [{"name": r["name"], "weight": r.get("weight", 1.0),
                                     "params": dict(r.get("params") or {})} for r in rewards])

    def with_preset(self, preset: str, keep: tuple[str, ...] = KEEP_ON_PRESET_CHANGE) -> "UIState":
        """A new state on `preset`, keeping the overrides under `keep` (data, rewards, runs dir)."""
        preset_dict(preset)  # raises ConfigError for an unknown preset
        new = UIState(preset)
        for key, value in self.overrides.items():
            if any(key == k or (k.endswith(".") and key.startswith(k)) for k in keep):
                new.set(key, value)
        return new

    def copy(self) -> "UIState":
        return UIState(self.preset, copy.deepcopy(self.overrides))

    # -- the CLI line -----------------------------------------------------------------------------
    def set_args(self) -> list[str]:
        """["--set", "grpo.max_steps=3", …] for the overrides, in a stable order."""
        args: list[str] = []
        for key in sorted(self.overrides, key=_order):
            args += ["--set", f"{key}={yaml_value(self.overrides[key])}"]
        return args

    def command(self, action: str = "train") -> str:
        """The exact shell line that runs this config from the command line (shell-quoted)."""
        line = shlex.join(["python", "-m", "grpo_box", action, "--preset", self.preset, *self.set_args()])
        lost = [k for k, v in self.overrides.items() if not parses_back(yaml_value(v), v)]
        if lost:
            line += f"  # {', '.join(sorted(lost))} cannot be given with --set: save the config and pass --config FILE"
        return line

    # -- save and load ----------------------------------------------------------------------------
    def to_yaml(self) -> str:
        """The whole config as YAML (usable with `--config`); Load turns it back into this state."""
        return yaml.safe_dump(self.raw(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, *, keep: dict[str, Any] | None = None) -> "UIState":
        """A state from a saved (or hand-written, partial) config file; ConfigError if it is bad.

        The file's `preset` (default cpu) is the base; every setting that differs becomes an
        override. `keep` adds overrides the file does not set (e.g. the app's output.runs_dir).
        """
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(yaml_problem(exc)) from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError("expected a mapping of sections (model:, lora:, grpo:, data:, rewards:, output:)")
        preset = raw.get("preset") or DEFAULT_PRESET
        if not isinstance(preset, str):
            raise ConfigError(f"preset: expected a preset name, got {preset!r}")
        state = cls(preset)
        base = preset_dict(preset)
        merged = deep_merge(base, {k: v for k, v in raw.items() if k != "preset"})
        RunConfig.from_dict(merged)  # unknown sections and keys fail here, naming the valid ones
        flat_base = flatten(base)
        for key, value in flatten(merged).items():
            if key != "preset" and not _same(flat_base.get(key), coerce(key, value)):
                state.set(key, value)
        for key, value in (keep or {}).items():
            if key not in state.overrides:
                state.set(key, value)
        state.config()  # a file that does not validate is refused whole
        return state


def _order(key: str) -> tuple[float, str]:
    """Settings in the config's own order (model, lora, grpo, data, rewards, output, top level)."""
    positions = _positions()
    if key == "rewards":
        return (max((i for k, i in positions.items() if k.startswith("data.")), default=0) + 0.5, key)
    return (positions.get(key, len(positions)), key)


@functools.lru_cache(maxsize=1)
def _positions() -> dict[str, int]:
    return {spec.key: i for i, spec in enumerate(field_specs())}
