"""Preset loading: the commented YAML files under `presets/` turned into validated RunConfigs.

A preset is a RunConfig in YAML plus two metadata keys, `description` and `vram_gb`, that say
which card it is for. Presets are data (like torchtune's recipe configs) so that trade-offs are
documented next to the numbers, and every preset is validated by a test. `propose_preset` picks
the preset for a detected card (`hardware.detect_gpu`): the largest one the card holds.

A preset file states only what differs from its base: the dataclass defaults (which are the cpu
run, so `cpu.yaml` holds just its metadata), or, with `extends: NAME`, the file `NAME.yaml` laid
over them. A file whose name starts with `_` is such a base, not a preset (`_gpu.yaml`, the recipe
the four GPU presets share). A test fails when a file restates a base value without a comment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, RunConfig, apply_overrides, load_yaml
from .hardware import GpuInfo, gpu_problem
from .validation import validate

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
_META_KEYS = ("description", "vram_gb", "extends")
BASE_PREFIX = "_"  # presets/_gpu.yaml: a base other files extend, not offered as a preset
PRESET_TOLERANCE = 0.05  # cards report a little less than their label (an 8 GB card shows ~7.8)


@dataclass
class PresetInfo:
    name: str
    description: str
    vram_gb: float
    path: Path


def preset_names() -> list[str]:
    """Names of the shipped presets, smallest card first (cpu, 8gb, 12gb, …)."""
    return [p.name for p in list_presets()]


def list_presets() -> list[PresetInfo]:
    infos = []
    for path in PRESETS_DIR.glob("*.yaml"):
        if path.name.startswith(BASE_PREFIX):
            continue
        raw = load_yaml(path)
        infos.append(PresetInfo(path.stem, str(raw.get("description", "")), float(raw.get("vram_gb", 0)), path))
    return sorted(infos, key=lambda info: info.vram_gb)


def propose_preset(gpu: GpuInfo | None) -> str:
    """The largest GPU preset the card holds (within PRESET_TOLERANCE of its label), else "cpu".

    A card smaller than the smallest preset (say a 6 GB laptop GPU) also gets "cpu": no GPU preset
    fits it as shipped; the memory estimate's suggestions can shrink one by hand. So does a card the
    GPU stack cannot use (`hardware.gpu_problem`: compute capability below 7.5, a driver older than 580).
    """
    if gpu is None or gpu_problem(gpu) is not None:
        return "cpu"
    best, best_vram = "cpu", 0.0
    for preset in list_presets():
        vram = preset.vram_gb
        if gpu.vram_gb >= vram * (1 - PRESET_TOLERANCE) and vram > best_vram:
            best, best_vram = preset.name, vram
    return best


def load_preset(name: str) -> RunConfig:
    """Load and validate one preset by name (e.g. "cpu", "8gb")."""
    if name.startswith(BASE_PREFIX) or not (PRESETS_DIR / f"{name}.yaml").is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    config = RunConfig.from_dict(deep_merge(preset_base(name), preset_settings(name)))
    config.preset = name
    return validate(config)


def preset_settings(name: str) -> dict:
    """The settings preset (or base) file `name` states itself: its YAML without the metadata keys."""
    raw = load_yaml(PRESETS_DIR / f"{name}.yaml")
    return {key: value for key, value in raw.items() if key not in _META_KEYS}


def preset_base(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """The whole config (as a dict) that file `name`'s own settings are laid over: the dataclass
    defaults, with the file it `extends` (and what that extends) merged on top."""
    if name in _seen:
        raise ConfigError(f"presets: {' -> '.join((*_seen, name))} extends itself")
    parent = load_yaml(PRESETS_DIR / f"{name}.yaml").get("extends")
    if parent is None:
        return RunConfig().to_dict()
    return deep_merge(preset_base(parent, (*_seen, name)), preset_settings(parent))


def resolve_config(preset: str, config_path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The CLI's config: a preset, then an optional YAML file on top, then `--set` overrides."""
    config = load_preset(preset)
    if config_path:
        overlay = load_yaml(config_path)
        try:
            merged = deep_merge(config.to_dict(), overlay)
        except ConfigError as exc:  # a section that is not one: say which file
            raise ConfigError(f"{config_path}: {exc}") from None
        config = RunConfig.from_dict(merged)
    if overrides:
        config = apply_overrides(config, overrides)
    return validate(config)


def deep_merge(base: dict, top: dict, _where: str = "") -> dict:
    """`base` with `top` laid over it, section by section (nested mappings merge, other values replace).

    A section left empty in `top` (every key commented out reads as null) sets nothing: the base's
    section stays. Anything else but a mapping over a section (`grpo: 0`) is refused, as `--set
    grpo=0` is, instead of replacing the whole section with the built-in defaults."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(out.get(key), dict):
            if value is None:
                continue  # `grpo:` with nothing under it: no overrides
            out[key] = deep_merge(out[key], _section(value, _where + str(key)), f"{_where}{key}.")
        else:
            out[key] = value
    return out


def _section(value: object, key: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: {value!r} is not a section; give {key}: its settings as indented "
                          f"`name: value` lines under it, or leave {key}: out")
    return value
