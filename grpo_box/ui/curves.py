"""Metric lines as the long-format frames the Train and Runs tabs plot, and the words around them.

A plot is a list of (metric key, series label); per-function reward curves are found from the
`rewards/<fn>/mean` keys TRL logs. Frames are long format (`step`, `value`, `series`) with explicit
numeric dtypes, and `None` while there is nothing to draw: Gradio 6's LinePlot never draws lines
if its first value is empty or untyped (see ../shared/UI-TESTING.md). Progress (step, elapsed,
ETA) and the hint box ("watch reward, not loss"; no-signal steps; a rubric that pays nothing) are
computed here from the same metric dicts, so the Runs tab shows a finished run the same way.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

Series = list[tuple[str, str]]  # (metric key, label)
MAX_POINTS = 600  # steps drawn per series; a longer run is thinned evenly (the last step always kept)
# Axis labels as plain numbers: Vega formats "~g" with the tick step's precision, so step 100 read
# "1e+2" and a gradient norm of 1500 "1.5e+3"; "~f" keeps 0.00005 and 1,500 as written.
AXIS_FORMAT = ",~f"


def step_axis(max_steps: int, metrics: list[dict[str, Any]]) -> list[float] | None:
    """The Train tab's step axis: the whole run from the start, so the curves fill the plot as the
    run goes (a resumed run that went further widens it); None (fit to the data) for one step."""
    last = max((int(r.get("step", 0) or 0) for r in metrics), default=0)
    end = max(max_steps, last)
    return [1.0, float(end)] if end > 1 else None

PLOTS: dict[str, tuple[str, str, Series]] = {
    # id: (title, y axis, series); "reward" gains one series per reward function at run time
    "reward": ("Reward: total and per function (watch this, not the loss)", "reward", [("reward", "total")]),
    "signal": ("Learning signal", "share / std", [("reward_std", "reward std"),
                                                   ("frac_reward_zero_std", "groups with no signal"),
                                                   ("completions/clipped_ratio", "completions cut off")]),
    "length": ("Completion length", "tokens", [("completions/mean_length", "mean"),
                                               ("completions/min_length", "min"),
                                               ("completions/max_length", "max")]),
    "kl": ("KL to the base model (beta > 0)", "KL", [("kl", "kl")]),
    "optim": ("Loss and gradient norm", "value", [("loss", "loss"), ("grad_norm", "grad norm")]),
    "lr": ("Learning rate", "learning rate", [("learning_rate", "learning rate")]),
    "memory": ("Memory", "GB", [("vram/used_gb", "VRAM used (card)"), ("vram/peak_reserved_gb", "VRAM peak (torch)"),
                                ("ram_peak_gb", "RAM peak")]),
}


def reward_functions(metrics: list[dict[str, Any]]) -> list[str]:
    """Reward function names in the order they first appear (`rewards/<fn>/mean`)."""
    keys: dict[str, Any] = {}
    for record in metrics:  # dict.update keeps first appearances in order, at C speed (a tick reads every step)
        keys.update(record)
    return [key[len("rewards/"):-len("/mean")] for key in keys if key.startswith("rewards/") and key.endswith("/mean")]


def series_for(plot: str, metrics: list[dict[str, Any]]) -> Series:
    series = list(PLOTS[plot][2])
    if plot == "reward":
        series += [(f"rewards/{fn}/mean", fn) for fn in reward_functions(metrics)]
    return series


def frame(metrics: list[dict[str, Any]], series: Series) -> pd.DataFrame | None:
    """Long-format `step, value, series` rows for the series present; None when there are none."""
    steps, values, labels = [], [], []
    for record in thin(metrics):
        step = record.get("step")
        if step is None:
            continue
        for key, label in series:
            value = _number(record.get(key))
            if value is not None:
                steps.append(int(step))
                values.append(value)
                labels.append(label)
    if not steps:
        return None
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "value": pd.Series(values, dtype="float64"),
                         "series": pd.Series(labels, dtype="str")})


def thin(metrics: list[dict[str, Any]], limit: int = MAX_POINTS) -> list[dict[str, Any]]:
    """At most about `limit` records, evenly spaced, keeping the last: a plot 600 px wide shows no
    more, and every tick of a 5,000-step run would otherwise redraw all of them."""
    if len(metrics) <= limit:
        return metrics
    stride = -(-len(metrics) // limit)
    kept = metrics[::stride]
    return kept if kept[-1] is metrics[-1] else [*kept, metrics[-1]]


def plot_frame(plot: str, metrics: list[dict[str, Any]]) -> pd.DataFrame | None:
    return frame(metrics, series_for(plot, metrics))


def overlay_frame(runs: dict[str, list[dict[str, Any]]], key: str = "reward") -> pd.DataFrame | None:
    """One series per run for `key` (the Runs tab's comparison)."""
    parts = [f for f in (frame(metrics, [(key, name)]) for name, metrics in runs.items()) if f is not None]
    return pd.concat(parts, ignore_index=True) if parts else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# -- progress and hints ---------------------------------------------------------------------------
def progress(status: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """step, max_steps, fraction, elapsed s, seconds a step (recent mean), ETA s (None if unknown)."""
    step = int(status.get("step") or (metrics[-1].get("step", 0) if metrics else 0))
    total = int(status.get("max_steps") or 0)
    elapsed = float(metrics[-1].get("wall_time", 0.0)) if metrics else 0.0
    recent = [float(m["step_seconds"]) for m in metrics[-10:] if _number(m.get("step_seconds")) is not None]
    per_step = sum(recent) / len(recent) if recent else None
    eta = per_step * (total - step) if per_step is not None and total > step else None
    return {"step": step, "max_steps": total, "fraction": step / total if total else 0.0, "elapsed": elapsed,
            "per_step": per_step, "eta": eta}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _steps_paying_nothing(metrics: list[dict[str, Any]], key: str) -> int:
    """How many steps logged `key` when none was ever above 0 and at least one was 0 (else 0); stops
    at the first step that paid, so a reward that works costs a tick almost nothing."""
    values = 0
    best: float | None = None
    for record in metrics:
        value = _number(record.get(key))
        if value is None:
            continue
        if value > 0.0:
            return 0
        values, best = values + 1, value if best is None else max(best, value)
    return values if best == 0.0 else 0


def hints(metrics: list[dict[str, Any]], beta: float = 0.0, window: int = 5) -> list[tuple[str, str]]:
    """(kind, text) notes for the hint box: kind is "info" or "warning"."""
    notes = [("info", "GRPO's loss starts near 0 and stays small: that is normal. Watch the reward curves; they "
                      "should rise. 'Groups with no signal' is the share of prompts whose completions all scored "
                      "alike: they teach nothing.")]
    if not metrics:
        return notes
    recent = metrics[-window:]
    no_signal = [m.get("frac_reward_zero_std") for m in recent if _number(m.get("frac_reward_zero_std")) is not None]
    if no_signal and min(no_signal) >= 1.0:
        steps = f"{len(no_signal)} steps" if len(no_signal) > 1 else "step"
        notes.append(("warning", f"No learning signal in the last {steps}: every completion in "
                                 "every group scored the same. Make the rubric more graded (add a format or "
                                 "length reward), raise grpo.temperature or grpo.num_generations, or use easier data."))
    for fn in reward_functions(metrics):
        steps = _steps_paying_nothing(metrics, f"rewards/{fn}/mean")
        if steps >= window:
            notes.append(("warning", f"'{fn}' has paid nothing in {steps} steps: the model never meets it. "
                                     "Check its tags match the template, try it in the Rewards tab's dry run, or "
                                     "give partial credit first (xml_count, soft_format)."))
    flagged = [m for m in recent if m.get("warning")]
    if flagged:  # the worker's own per-step warning (a step whose completions were all masked out)
        steps = ", ".join(str(m.get("step")) for m in flagged)
        notes.append(("warning", f"Step {steps}: {flagged[-1]['warning']}"))
    clipped = [_number(m.get("completions/clipped_ratio")) for m in recent]
    clipped = [c for c in clipped if c is not None]
    if clipped and sum(clipped) / len(clipped) > 0.5:
        notes.append(("warning", "Most completions hit grpo.max_completion_length and are cut off: raise it if "
                                 "memory allows, or reward shorter answers."))
    if beta > 0 and any(_number(m.get("kl")) and m["kl"] > 1.0 for m in recent):
        notes.append(("warning", "KL above 1: the model is drifting far from the base; lower the learning rate "
                                 "or raise beta."))
    return notes
