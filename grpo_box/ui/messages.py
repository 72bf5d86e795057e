"""Message boxes shown next to a form: an engine error, a warning, a success note.

Engine errors (`UserError` and its kin: ConfigError, DataError, RewardError, a failed child
command) carry a message that says what to change; the app shows that text, escaped, in a
coloured box beside the field, never a traceback. An empty string renders nothing.
"""

from __future__ import annotations

import html
from typing import Any

from grpo_box.errors import UserError

# The cpu preset's measured pace on 2 cores (bench/learning_demo.py): 11-15 s a step on one machine,
# up to 28 s on a slower one; the Train tab shows the run's own pace and ETA once it trains.
CPU_PRESET_PACE = "about 11–30 s a step on 2 cores, depending on the CPU"

_STYLES = {
    "error": "border-left:4px solid #c62828;background:#fdecea;color:#5f1010",
    "warning": "border-left:4px solid #ef6c00;background:#fff4e5;color:#663c00",
    "ok": "border-left:4px solid #2e7d32;background:#edf7ed;color:#1e4620",
}


def box(kind: str, text: str, title: str | None = None) -> str:
    """`text` (plain, escaped; newlines kept) in a coloured box of `kind` error | warning | ok."""
    if not text and not title:
        return ""
    head = f"<strong>{html.escape(title, quote=False)}</strong><br>" if title else ""
    return (f'<div class="grpo-box-{kind}" style="{_STYLES[kind]};padding:8px 12px;border-radius:4px;'
            f'white-space:pre-wrap;margin:4px 0">{head}{html.escape(text, quote=False)}</div>')


def error(text: str, title: str | None = None) -> str:
    return box("error", text, title)


def warning(text: str, title: str | None = None) -> str:
    return box("warning", text, title)


def ok(text: str, title: str | None = None) -> str:
    return box("ok", text, title)


def config_problem(state: Any, title: str) -> str:
    """The engine's validation message for the app state (`state.config()`), as an error box
    under `title`; "" when the config validates."""
    try:
        state.config()
    except UserError as exc:
        return error(str(exc), title)
    return ""
