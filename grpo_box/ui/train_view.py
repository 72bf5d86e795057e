"""HTML for the Train and Runs tabs: the run's state line with a progress bar, the hint box, and
one sampled group (prompt, every completion split into reasoning and answer, each function's
score, the total and the advantage). Pure functions of the run files' records, so both tabs and
the tests render the same thing without a browser.
"""

from __future__ import annotations

import html
from typing import Any

from grpo_box.chat import split_think_answer
from grpo_box.config import RunConfig
from grpo_box.rewards.registry import unique_names
from grpo_box.runs import open_run

from . import messages
from .curves import duration, hints, progress

_STATE_COLOURS = {"running": "#1565c0", "finished": "#2e7d32", "stopped": "#6d4c41", "failed": "#c62828",
                  "retrying": "#ef6c00", "created": "#616161"}


def status_html(name: str, status: dict[str, Any], metrics: list[dict[str, Any]], alive: bool,
                starting: bool = False) -> str:
    """The run's name, state, a progress bar with step, elapsed time and ETA, and its error if any.
    `starting`: a worker was just started and has not written its status yet (the old state, e.g. a
    resumed run's "stopped" and its message, would be stale)."""
    p = progress(status, metrics)
    state = "running" if starting else status.get("state", "created")
    if starting:
        state_text, status = "starting", {k: v for k, v in status.items() if k != "error"}
    elif state == "running" and status.get("phase") == "loading":
        state_text = "loading the model"
    else:
        state_text = state
    colour = _STATE_COLOURS.get(state, "#616161")
    # not while (re)loading: the ETA would stand still for the half minute a resume takes to load
    eta = f" · ETA {duration(p['eta'])}" if alive and state_text == "running" and p["eta"] is not None else ""
    per = f" · {p['per_step']:.1f} s/step" if p["per_step"] else ""
    bar = (f'<div style="background:#e0e0e0;border-radius:4px;height:14px;margin:6px 0">'
           f'<div id="train-progress-fill" style="width:{100 * p["fraction"]:.1f}%;background:{colour};height:14px;'
           f'border-radius:4px"></div></div>')
    head = (f'<div><strong>{html.escape(name)}</strong> · <span id="train-state" style="color:{colour}">'
            f'{html.escape(state_text)}</span> · step <span id="train-step">{p["step"]}</span>/{p["max_steps"]}'
            f' · elapsed {duration(p["elapsed"])}{per}{eta}</div>')
    out = head + bar
    if status.get("error"):
        kind = "warning" if state == "stopped" else "error"
        out += messages.box(kind, str(status["error"]), "What happened")
    if status.get("evaluation_error"):  # training is saved; only its held-out evaluation failed
        out += messages.box("warning", str(status["evaluation_error"]), "Evaluation not done")
    if state in ("failed", "stopped") and not alive:
        out += messages.box("ok", "Resume continues from the last checkpoint (metrics after it are redone).")
    return out


def hints_html(metrics: list[dict[str, Any]], beta: float) -> str:
    parts = []
    for kind, text in hints(metrics, beta):
        parts.append(messages.box("warning", text) if kind == "warning" else
                     f'<div style="color:#37474f;font-size:0.9em;margin:4px 0">{html.escape(text)}</div>')
    return f'<div id="train-hint-list">{"".join(parts)}</div>'


def sample_choices(samples: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Dropdown choices, newest first: ("step 12 · group 1", index into samples)."""
    counts: dict[int, int] = {}
    labelled = []
    for i, sample in enumerate(samples):
        step = int(sample.get("step", 0))
        counts[step] = counts.get(step, 0) + 1
        labelled.append((f"step {step} · group {counts[step]}", i))
    return list(reversed(labelled))


def sample_html(sample: dict[str, Any] | None, template: str | None, weights: dict[str, float] | None = None) -> str:
    """One sampled group as a table: completion (reasoning / answer), each function, the weighted
    total (the rubric's weights; 1 for a function not in `weights`) and the advantage."""
    if not sample:
        return '<div style="color:#616161">Samples appear after the first logged step.</div>'
    rewards: dict[str, list[Any]] = sample.get("rewards") or {}
    names = list(rewards)
    advantages = sample.get("advantages") or []
    rows = []
    for i, completion in enumerate(sample.get("completions") or []):
        think, answer = split_think_answer(str(completion), template)
        scores = [rewards[n][i] if i < len(rewards[n]) else None for n in names]
        total = sum((weights or {}).get(n, 1.0) * s for n, s in zip(names, scores) if isinstance(s, (int, float)))
        cells = "".join(f"<td>{_num(s)}</td>" for s in scores)
        advantage = advantages[i] if i < len(advantages) else None
        text = (f'<details><summary>{html.escape(_short(answer or completion))}</summary>'
                f'<div><em>reasoning:</em> {html.escape(think) or "–"}</div>'
                f'<div><em>answer:</em> {html.escape(answer) or "–"}</div>'
                f'<div style="color:#757575"><em>raw:</em> {html.escape(str(completion))}</div></details>')
        rows.append(f"<tr><td>{i + 1}</td><td>{text}</td>{cells}<td><strong>{_num(total)}</strong></td>"
                    f"<td>{_num(advantage)}</td></tr>")
    header = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    prompt = str(sample.get("prompt", ""))
    return (f'<div id="train-sample-table"><div style="white-space:pre-wrap;background:#f5f5f5;padding:6px;'
            f'border-radius:4px"><strong>question (step {sample.get("step")}):</strong> '
            f'{html.escape(last_user_turn(prompt))}<details><summary>the whole prompt</summary>'
            f'<div style="max-height:240px;overflow:auto">{html.escape(prompt)}</div></details></div>'
            f'<table style="width:100%;font-size:0.9em"><tr><th>#</th><th>completion</th>{header}'
            f'<th>total (weighted)</th><th>advantage</th></tr>{"".join(rows)}</table></div>')


def last_user_turn(prompt: str) -> str:
    """The question of a logged prompt ("system: …\nuser: …\nassistant: …\nuser: <question>"): its last
    user turn, so a one-shot example before it does not push the question out of sight."""
    at = prompt.rfind("\nuser: ")
    if at >= 0:
        return prompt[at + len("\nuser: "):]
    return prompt[len("user: "):] if prompt.startswith("user: ") else prompt


def rubric_weights(config: RunConfig) -> dict[str, float]:
    """Each reward function's weight under the name the trainer logs it by (a repeated name gets _2 …)."""
    names = unique_names([spec.name for spec in config.rewards])
    return {name: float(spec.weight) for name, spec in zip(names, config.rewards)}


def run_sample_html(path: str | None, index: Any) -> str:
    """Logged group number `index` of the run at `path` (see `sample_choices`), rendered."""
    if not path or index is None:
        return sample_html(None, None)
    run = open_run(path)
    samples, config = run.samples(), run.config()
    try:
        sample = samples[int(index)]
    except (IndexError, ValueError, TypeError):
        sample = None
    return sample_html(sample, config.data.template, rubric_weights(config))


def _num(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value:.3g}"


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
