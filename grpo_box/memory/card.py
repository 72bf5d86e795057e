"""Which card a verdict is against: the one given, else this machine's GPU, else the preset's card.

A detected card also brings the memory free on it now, which Unsloth sizes vLLM's share from.
A `Card` keeps how it was chosen, so that every verdict can say it next to the numbers
("detected NVIDIA GeForce RTX 3070 (7.6 GB)", "assumed: preset's 8 GB card, no GPU detected").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import RunConfig
from .components import preset_card_gb

if TYPE_CHECKING:
    from ..hardware import GpuInfo


@dataclass(frozen=True)
class Card:
    """The card a verdict is against, with how it was chosen (shown next to the verdict)."""

    vram_gb: float | None
    label: str  # "detected NVIDIA GeForce RTX 3070 (7.6 GB)", "assumed: preset's 8 GB card, no GPU detected"
    free_gb: float | None = None  # free now, on a detected card (what Unsloth sizes vLLM's share from)


def choose_card(config: RunConfig, vram_gb: float | None = None, *, detect: bool = True,
                preset_fallback: bool = True) -> Card:
    """`vram_gb` when given, else the detected GPU (`detect`), else the preset's card (`preset_fallback`)."""
    if vram_gb:
        return Card(vram_gb, f"given {vram_gb:g} GB card")
    if detect:
        from .. import hardware

        gpu = hardware.detect_gpu()
        if gpu is not None:
            return detected_card(gpu)
    undetected = ", no GPU detected" if detect else ""
    preset = preset_card_gb(config.preset) if preset_fallback else None
    if preset:
        return Card(preset, f"assumed: preset's {preset:g} GB card{undetected}")
    return Card(None, "no GPU detected" if detect else "no card given")


def detected_card(gpu: "GpuInfo") -> Card:
    """A detected GPU as a Card, with the memory free on it now (another process's share shown)."""
    from .. import hardware

    try:
        free = hardware.free_vram_gb(gpu)
    except Exception:  # a reading that fails must not stop the estimate
        free = None
    shown = f", {free:g} GB free" if free is not None and gpu.vram_gb - free > 0.25 else ""
    return Card(gpu.vram_gb, f"detected {gpu.name} ({gpu.vram_gb:g} GB{shown})", free)
