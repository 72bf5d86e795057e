"""The memory gauge: the engine's VRAM estimate for the current form, as a bar and a verdict.

`memory_report` asks `grpo_box.memory.estimate_report` about the card this machine has (or,
with no GPU, the card a GPU preset is meant for; the cpu preset is judged against the RAM).
`gauge_html` draws the peak phase's parts as one stacked bar against the card, and
`verdict_markdown` says fits / tight / will not fit and what to lower, by how much, in the
engine's own words. Nothing here imports torch; the arithmetic is the engine's.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from grpo_box.catalog import Arch, resolve_arch
from grpo_box.config import ConfigError, RunConfig
from grpo_box.memory import Card, detected_card, estimate_report, preset_card_gb, ram_verdict

from .context import Hardware

COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
VERDICT_COLORS = {"fits": "#2e7d32", "tight": "#ef6c00", "will not fit": "#c62828", None: "#546e7a"}
LABELS = {
    "cuda_context": "CUDA context", "weights": "base weights", "vllm_weights_copy": "vLLM weight copy",
    "vllm_runtime": "vLLM graphs", "kv_cache": "KV cache", "lora": "LoRA + optimizer",
    "activations": "activations", "logits": "GRPO logits", "workspace": "4-bit buffers",
}


def card_for(config: RunConfig, hardware: Hardware) -> Card:
    """The detected GPU with its free memory now; without one, the preset's card (a GPU preset) or
    none (the cpu preset)."""
    if hardware.gpu is not None:  # what is free now: another process (or this app's chat) may hold some
        return detected_card(hardware.gpu)
    preset_gb = preset_card_gb(config.preset)
    if preset_gb:
        return Card(preset_gb, f"assumed: preset's {preset_gb:g} GB card, no GPU detected")
    return Card(None, "no GPU detected")


FAILURE_TTL_S = 300.0  # a Hub id that could not be sized is asked again after this long
_failures: dict[str, tuple[float, str]] = {}


def model_arch(name: str) -> Arch:
    """The model's shape (the engine's `resolve_arch`). Asking the Hub for a config.json can take
    half a minute of retries offline, so a failure is remembered for FAILURE_TTL_S: editing other
    settings does not ask again on every change."""
    failed = _failures.get(name)
    if failed and time.monotonic() - failed[0] < FAILURE_TTL_S and not Path(name).expanduser().is_dir():
        raise ConfigError(failed[1])
    try:
        return resolve_arch(name)
    except ConfigError as exc:
        _failures[name] = (time.monotonic(), str(exc))
        raise


def memory_report(config: RunConfig, hardware: Hardware) -> dict[str, Any]:
    """The engine's estimate report; on a CPU-only estimate, a RAM verdict is added."""
    report = estimate_report(config, arch=model_arch(config.model.name), card=card_for(config, hardware))
    if report["verdict"] is None and hardware.ram_gb:
        report["ram_gb"] = hardware.ram_gb
        report["ram_verdict"] = ram_verdict(report["total"], hardware.ram_gb)
    return report


def gauge_html(report: dict[str, Any]) -> str:
    """One stacked bar of the peak phase's parts, scaled to the card (or the RAM)."""
    capacity = report.get("vram_gb") or report.get("ram_gb") or report["total"]
    scale = max(capacity, report["total"]) or 1.0
    verdict = report.get("verdict") or report.get("ram_verdict")
    segments, legend = [], []
    parts = [(k, v) for k, v in report["breakdown"].items() if v > 0]
    for i, (key, gb) in enumerate(parts):
        color = COLORS[i % len(COLORS)]
        label = html.escape(LABELS.get(key, key))
        segments.append(f'<div title="{label}: {gb:.2f} GB" style="width:{100 * gb / scale:.2f}%;'
                        f'background:{color};height:100%"></div>')
        legend.append(f'<span style="white-space:nowrap;margin-right:10px"><span style="display:inline-block;'
                      f'width:10px;height:10px;background:{color};margin-right:4px"></span>{label} {gb:.2f} GB</span>')
    marker = (f'<div style="position:absolute;left:{100 * capacity / scale:.2f}%;top:-3px;bottom:-3px;'
              f'border-left:2px dashed #333" title="capacity {capacity:g} GB"></div>') if capacity else ""
    where = "VRAM" if report["device"] == "gpu" else "RAM"
    color = VERDICT_COLORS.get(verdict, VERDICT_COLORS[None])
    head = (f'<div style="font-weight:600;color:{color}">{where} estimate: {report["total"]:.2f} GB '
            f'(peak in {html.escape(report["phase"])})</div>')
    bar = (f'<div style="position:relative;display:flex;height:18px;border:1px solid #999;border-radius:3px;'
           f'margin:6px 0">{"".join(segments)}{marker}</div>')
    return (f'<div id="memory-gauge-bar">{head}{bar}<div style="font-size:0.85em">{"".join(legend)}</div>'
            f'<div style="font-size:0.85em;color:#555">card: {html.escape(report["card"])}</div></div>')


def verdict_markdown(report: dict[str, Any]) -> str:
    """Fits / tight / will not fit, against what, and the engine's suggestion and notes."""
    lines = []
    if report.get("verdict"):
        pct = round(100 * report["share_of_card"])
        lines.append(f"**{report['verdict']}**: peak {report['total']:.2f} GB of {report['vram_gb']:g} GB ({pct}%), "
                     f"{report['card']}")
    elif report.get("ram_verdict"):
        lines.append(f"**{report['ram_verdict']} in RAM**: training on the CPU needs about {report['total']:.2f} GB "
                     f"of this machine's {report['ram_gb']:g} GB RAM (no GPU detected)")
    else:
        lines.append(f"about {report['total']:.2f} GB ({report['card']})")
    lines += [f"- problem: {text}" for text in report.get("problems") or []]
    if report.get("suggestion"):
        lines.append(f"- **to fit:** {report['suggestion']}")
    lines += [f"- note: {text}" for text in report.get("notes") or []]
    return "\n".join(lines)
