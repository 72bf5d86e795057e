"""What the Evaluate tab (and the Runs tab) draw from a run's `eval.json`: no gradio, no model.

`eval.json` holds {"base": …, "trained": …, "delta": …} as `grpo_box.evaluate.evaluate_run`
writes it; each side has accuracy, the weighted reward, each reward's mean, lengths and, per
scored held-out row, an example (question, reference, completion, correct). This module turns
that into a summary table, the long-format frame of the bar chart (one bar per metric and model,
labelled "accuracy · base" so bars stand side by side instead of stacking) and the table of
examples, filtered to the rows training fixed or broke, each reply split into its reasoning and
its answer by the run's template.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from grpo_box.chat import split_think_answer
from grpo_box.runs import EVAL

from . import messages

FILTERS = ("all", "fixed by training", "broken by training")
MODELS = ("base", "trained")
_PERCENT = ("accuracy", "pass_at_1", "pass_at_k", "clipped_ratio")


def read(run: Path) -> dict[str, Any]:
    """The run's eval.json, or {} when there is none (or it cannot be read)."""
    try:
        data = json.loads((run / EVAL).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def metric_rows(results: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """(label, key path) of every metric either side has, in display order."""
    sides = [results.get(m) or {} for m in MODELS]
    names = list(dict.fromkeys(n for side in sides for n in (side.get("rewards") or {})))
    rows = [("rows", ("rows",)), ("accuracy", ("accuracy",))]
    if any("pass_at_k" in side for side in sides):
        k = next((side.get("k") for side in sides if side.get("k")), "k")
        rows += [("pass@1 (sampled)", ("pass_at_1",)), (f"pass@{k}", ("pass_at_k",))]
    rows += [("reward (weighted total)", ("reward",))] + [(f"reward: {n}", ("rewards", n)) for n in names]
    return rows + [("completion tokens", ("completion_length",)), ("clipped ratio", ("clipped_ratio",))]


def lookup(data: Any, key: tuple[str, ...]) -> Any:
    for part in key:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def cell(value: Any, key: tuple[str, ...], signed: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    sign = "+" if signed and value >= 0 else ""
    if key[0] in _PERCENT:
        return f"{sign}{100 * value:.1f}%"
    if key[0] == "rows":
        return f"{sign}{value}"
    return f"{sign}{value:.1f}" if key[0] == "completion_length" else f"{sign}{value:.3f}"


def summary_html(results: dict[str, Any]) -> str:
    """A table: metric, base, trained, trained − base (green when better, red when worse)."""
    if not (results.get("base") or results.get("trained")):
        return ""
    delta = results.get("delta") or {}
    head = "".join(f"<th>{h}</th>" for h in ("metric", "base", "trained", "change"))
    body = []
    for label, key in metric_rows(results):
        change = lookup(delta, key)
        better = None if not isinstance(change, (int, float)) or change == 0 else \
            (change > 0) != (key[0] in ("clipped_ratio",))
        colour = "" if better is None or key[0] in ("rows", "completion_length") else \
            f' style="color:{"#2e7d32" if better else "#c62828"}"'
        cells = [html.escape(label), *(cell(lookup(results.get(m), key), key) for m in MODELS)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) +
                    f"<td{colour}>{cell(change, key, signed=True)}</td></tr>")
    table = (f'<table id="evaluate-summary-table" class="grpo-box-table"><thead><tr>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table>')
    step = results.get("trained_step")
    caption = f'<p id="evaluate-trained-step">trained: the adapter at step {step}</p>' if step is not None else ""
    return _mismatch(results) + table + caption


def _mismatch(results: dict[str, Any]) -> str:
    """The engine's warning that base and trained were scored on different rows (after a resume)."""
    warning = results.get("warning")
    if not warning:
        return ""
    return messages.box("warning", f"{warning} (the 'Evaluate base and trained' button here does the same).",
                        "Not a like-for-like comparison")


def bar_frame(results: dict[str, Any]) -> pd.DataFrame | None:
    """Long-format bars: accuracy, the weighted total and each reward's mean, base against trained."""
    rows = []
    for label, key in metric_rows(results):
        if key[0] not in ("accuracy", "reward", "rewards"):
            continue
        name = label.replace("reward: ", "")
        for model in MODELS:
            value = lookup(results.get(model), key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"bar": f"{name} · {model}", "metric": name, "model": model, "value": float(value)})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return frame.astype({"bar": str, "metric": str, "model": str, "value": "float64"})


def bar_limits(frame: pd.DataFrame | None) -> list[float]:
    """y limits that start the bars at zero (the plot does not by itself) and fit negative rewards."""
    if frame is None or frame.empty:
        return [0.0, 1.0]
    return [min(0.0, float(frame["value"].min())), max(1.0, float(frame["value"].max()))]


def pairs(results: dict[str, Any]) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """(base example, trained example) per held-out row, matched by position and question."""
    base = (results.get("base") or {}).get("examples") or []
    trained = (results.get("trained") or {}).get("examples") or []
    out = []
    for i in range(max(len(base), len(trained))):
        b = base[i] if i < len(base) else None
        t = trained[i] if i < len(trained) else None
        if b and t and b.get("question") != t.get("question"):
            t = next((e for e in trained if e.get("question") == b.get("question")), None)
        out.append((b, t))
    return out


def verdict(base: dict[str, Any] | None, trained: dict[str, Any] | None) -> str:
    if not base or not trained:
        return ""
    if trained.get("correct") and not base.get("correct"):
        return "fixed by training"
    if base.get("correct") and not trained.get("correct"):
        return "broken by training"
    return "right both times" if base.get("correct") else "wrong both times"


def counts(results: dict[str, Any]) -> dict[str, int]:
    found = [verdict(b, t) for b, t in pairs(results)]
    return {name: found.count(name) for name in FILTERS[1:]}


def examples_html(results: dict[str, Any], which: str = "all", template: str | None = None) -> str:
    """The examples table (prompt, reference, both replies with reasoning and answer), filtered."""
    rows = [(i, b, t) for i, (b, t) in enumerate(pairs(results))
            if which == "all" or verdict(b, t) == which]
    if not pairs(results):
        return ""
    if not rows:
        return f'<p id="evaluate-no-examples">No held-out example was {html.escape(which)}.</p>'
    head = "".join(f"<th>{h}</th>" for h in ("#", "prompt", "reference", "base reply", "trained reply", ""))
    body = "".join(_example_row(i, b, t, template) for i, b, t in rows)
    return (f'<table id="evaluate-examples-table" class="grpo-box-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _example_row(i: int, base: dict[str, Any] | None, trained: dict[str, Any] | None, template: str | None) -> str:
    first = base or trained or {}
    cells = [str(i + 1), _text(first.get("question")), _text(first.get("answer")),
             _reply(base, template), _reply(trained, template), html.escape(verdict(base, trained))]
    row = "".join(f"<td>{c}</td>" for c in cells)
    return f'<tr data-verdict="{html.escape(verdict(base, trained))}">{row}</tr>'


def _reply(example: dict[str, Any] | None, template: str | None) -> str:
    if not example:
        return "–"
    think, answer = split_think_answer(str(example.get("completion", "")), template)
    mark = '<span style="color:#2e7d32">✔ right</span>' if example.get("correct") else \
        '<span style="color:#c62828">✘ wrong</span>'
    reasoning = (f"<details><summary>reasoning</summary><div style='white-space:pre-wrap'>{html.escape(think)}</div>"
                 "</details>") if think else ""
    return f"{mark}{reasoning}<div style='white-space:pre-wrap'>{html.escape(answer) or '<em>(no answer)</em>'}</div>"


def _text(value: Any) -> str:
    return f"<div style='white-space:pre-wrap'>{html.escape(str(value if value is not None else ''))}</div>"


def short_text(results: dict[str, Any]) -> str:
    """One line for the Runs tab: accuracy base → trained, and the examples fixed / broken."""
    if not (results.get("base") or results.get("trained")):
        return "not evaluated yet (Evaluate tab)"
    acc = [cell(lookup(results.get(m), ("accuracy",)), ("accuracy",)) for m in MODELS]
    found = counts(results)
    return (f"accuracy {acc[0]} (base) → {acc[1]} (trained); {found['fixed by training']} fixed, "
            f"{found['broken by training']} broken by training")
