"""The estimate as a report: a JSON-ready dict (`estimate_report`: the CLI's `estimate --json`, the
app's memory gauge and `preflight` read it) and a plain-text table of it (`format_estimate`).

The report holds both phases' parts in GB, the vLLM share with the utilisation it was sized with
(saying when Unsloth's standby target replaced the configured one), the card it is judged against
with how that card was chosen, the verdict and, when the verdict is not "fits", the suggestion.
"""

from __future__ import annotations

from typing import Any

from ..catalog import Arch, resolve_arch
from ..config import RunConfig
from ..text_table import text_table
from .card import Card, choose_card
from .components import UNSLOTH, Stack
from .estimator import estimate, verdict
from .fit import suggest_fix


_LABELS = {
    "cuda_context": "CUDA context + kernels",
    "weights": "base weights",
    "vllm_weights_copy": "vLLM's own weight copy",
    "vllm_runtime": "vLLM CUDA graphs + profiling",
    "kv_cache": "KV cache",
    "lora": "LoRA weights, grads, optimizer",
    "activations": "activations",
    "logits": "GRPO logits / log-probs",
    "workspace": "4-bit dequant buffers",
}


def estimate_report(config: RunConfig, vram_gb: float | None = None, arch: Arch | None = None,
                    stack: Stack = UNSLOTH, card: Card | None = None) -> dict[str, Any]:
    """A JSON-ready estimate: total, both phases' parts, the vLLM share, the card it is judged
    against (`card`, else `vram_gb`, else the preset's), verdict and suggestion."""
    card = card or choose_card(config, vram_gb, detect=False)
    arch = arch or resolve_arch(config.model.name)
    est = estimate(config, arch, card.vram_gb, stack, free_gb=card.free_gb)
    judged = verdict(est, card.vram_gb) if card.vram_gb else None
    suggestion = suggest_fix(config, card.vram_gb, arch, stack) if card.vram_gb and judged != "fits" else None
    return {
        "model": est.model,
        "preset": config.preset,
        "device": est.device,
        "unit": "GiB",
        "total": round(est.total_gb, 2),
        "breakdown": _rounded(est.breakdown),
        "phase": est.phase,
        "phases": _rounded(est.phases),
        "phase_breakdown": {name: _rounded(parts) for name, parts in est.phase_parts.items()},
        "vllm_share": round(est.vllm_share_gb, 2) if est.vllm_share_gb is not None else None,
        "vllm_utilization": est.vllm_util,
        "configured_utilization": config.model.gpu_memory_utilization if config.model.fast_inference else None,
        "standby_target": est.standby_target,
        "standby_frees": round(est.standby_frees_gb, 2) if est.standby_frees_gb is not None else None,
        "vram_gb": card.vram_gb,
        "free_gb": est.free_gb,
        "card": card.label,
        "share_of_card": round(est.total_gb / card.vram_gb, 3) if card.vram_gb else None,
        "verdict": judged,
        "suggestion": suggestion or None,
        "notes": est.notes,
        "problems": est.problems,
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 2) for key, value in values.items()}


def format_estimate(report: dict[str, Any]) -> str:
    """A plain-text table of an `estimate_report`: both phases' parts in GB, the vLLM share, the verdict."""
    where = "RAM (no GPU)" if report["device"] == "cpu" else "GPU"
    lines = [f"Memory estimate for {report['model']} (preset {report['preset']}, {where})",
             f"card: {report['card']}", "", *_phase_table(report)]
    lines += _share_lines(report)
    if report["vram_gb"]:
        pct = round(100 * report["share_of_card"])
        lines.append(f"  peak {report['total']:.2f} GB of {report['vram_gb']:g} GB -> {report['verdict']} ({pct}%)")
    lines += [f"  problem: {text}" for text in report["problems"]]
    lines += [f"  note: {text}" for text in report["notes"]]
    if report["suggestion"]:
        lines.append(f"  suggestion: {report['suggestion']}")
    return "\n".join(lines)


def _phase_table(report: dict[str, Any]) -> list[str]:
    """Each part's GB in both phases ("-" where a phase holds none of it), a rule, then the totals."""
    parts, phases = report["phase_breakdown"], ("generation", "training")
    keys = [key for key in _LABELS if any(key in parts[phase] for phase in phases)]
    rows = [["", *phases], *([_LABELS[key], *(_gb(parts[phase].get(key)) for phase in phases)] for key in keys),
            ["total", *(_gb(report["phases"][phase]) for phase in phases)]]
    lines = text_table(rows, right={1, 2}, rule=True, indent="  ").splitlines()
    rule = lines.pop(1)  # drawn under the header; it belongs above the totals
    return [*lines[:-1], rule, f"{lines[-1]}   (peak: {report['phase']})"]


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} GB"


def _share_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    if report["vllm_share"] is not None:
        util = report["vllm_utilization"]
        text = f"  vLLM share {report['vllm_share']:.2f} GB"
        if util is not None:
            text += f" ({util:g} of the {'free memory' if report.get('free_gb') is not None else 'card'}"
            if report["standby_target"]:
                text += f"; Unsloth's standby target; configured {report['configured_utilization']:g} replaced"
            text += ")"
        lines.append(text)
    if report["standby_frees"] is not None:
        lines.append(f"  standby frees {report['standby_frees']:.2f} GB (the KV cache) while training")
    return lines
