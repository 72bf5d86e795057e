"""Config-field widgets built from the config's field metadata (`grpo_box.config.field_specs`).

A widget's type, default, range, step, help text and choices all come from the `FieldSpec` of
its setting, never from literals retyped here: int and float settings become Numbers with the
field's bounds and step, bools Checkboxes, settings with choices Dropdowns (registry-backed
choices from `choices_from`), lists multi-select Dropdowns and other strings Textboxes. The two
conversions `to_widget` / `from_widget` map config values to what the widget shows and back
(None shown as an empty box, booleans among string choices shown as "true"/"false").

The engine checks ranges, not the browser: a Number with bounds rejects an out-of-range value
in the page, which fails the whole form's event, so every later edit was dropped until it was
fixed. Without them the value reaches the state and the config check names the setting and its
range. A nullable number is a Textbox: Gradio's Number shows and sends None as 0 (which would
make `grpo.epsilon_high`, "empty = epsilon", an out-of-range 0 on any edit).
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from grpo_box.config import FieldSpec, field_specs

EMPTY = ""  # how a nullable setting's None is shown


@functools.lru_cache(maxsize=1)
def specs_by_key() -> dict[str, FieldSpec]:
    return {spec.key: spec for spec in field_specs()}


def spec(key: str) -> FieldSpec:
    return specs_by_key()[key]


def section_specs(section: str) -> list[FieldSpec]:
    """The settings of one section ("" for the top level), in declaration order."""
    return [s for s in specs_by_key().values() if s.section == section]


def runtime_choices(name: str, preset: str = "cpu") -> list[str]:
    """Choices known only at run time (templates, tasks, rewards, a preset's models), from the engine."""
    from grpo_box.choices import runtime_choices as engine_choices

    return list(engine_choices(name, preset))


def _choice_text(choice: Any) -> str:
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def choices_of(s: FieldSpec) -> list[Any] | None:
    if s.choices is not None:
        return list(s.choices)
    if s.choices_from:
        return runtime_choices(s.choices_from)
    return None


def _number_box(s: FieldSpec) -> bool:
    """A number shown in a Textbox, where an empty box means None."""
    return s.kind in ("int", "float") and s.nullable


def to_widget(s: FieldSpec, value: Any) -> Any:
    """A config value as the widget shows it."""
    if value is None:
        return EMPTY if s.kind not in ("int", "float", "bool") or _number_box(s) else None
    if _number_box(s):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if s.kind == "list":
        return list(value)
    if s.kind == "choice" or (choices_of(s) is not None and s.kind not in ("int", "float", "bool")):
        return _choice_text(value)
    return value


def from_widget(s: FieldSpec, value: Any) -> Any:
    """A widget's value as the config value (typed; a nullable field's empty box is None)."""
    if s.nullable and (value is None or (isinstance(value, str) and not value.strip())):
        return None
    choices = choices_of(s)
    if choices is not None and isinstance(value, str):
        by_text = {_choice_text(c): c for c in choices}
        if value in by_text:
            return by_text[value]
    if s.kind in ("int", "float") and isinstance(value, str):
        value = _parsed_number(value)
    if s.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if s.kind == "list" and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if s.kind == "str" and isinstance(value, str):
        return value.strip()
    return value


def _parsed_number(text: str) -> Any:
    """A typed number as int or float; anything else stays text, for the config check to name."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def info_text(s: FieldSpec) -> str:
    rng = s.range_text()
    return f"{s.help} ({rng})" if rng else s.help


def widget(s: FieldSpec, value: Any, *, label: str | None = None, elem_id: str | None = None,
           **extra: Any) -> gr.components.Component:
    """The widget for one setting, showing `value`."""
    common = {"label": label or s.name, "info": info_text(s), "elem_id": elem_id, **extra}
    shown = to_widget(s, value)
    choices = choices_of(s)
    if s.kind == "bool":
        return gr.Checkbox(value=bool(shown), **common)
    if _number_box(s):
        return gr.Textbox(value=shown, placeholder="(empty: default)", **common)
    if s.kind in ("int", "float"):
        return gr.Number(value=shown, step=s.step, **common)  # no bounds: see the module docstring
    if s.kind == "list":
        options = list(dict.fromkeys([*(choices or []), *(shown or []), *(s.default or [])]))
        return gr.Dropdown(choices=options, value=shown, multiselect=True, allow_custom_value=True, **common)
    if choices is not None:
        options = [(_choice_text(c), _choice_text(c)) for c in choices]
        if s.nullable:
            options = [("(empty: default)", EMPTY), *options]
        if shown not in [v for _, v in options]:
            options.append((str(shown), shown))
        return gr.Dropdown(choices=options, value=shown, allow_custom_value=bool(s.choices_from), **common)
    return gr.Textbox(value=shown, placeholder="(empty)" if s.nullable else None, **common)


def update(s: FieldSpec, value: Any) -> Any:
    """A gr.update showing `value` (adds a custom choice a dropdown does not list yet)."""
    shown = to_widget(s, value)
    if s.kind == "list":
        options = list(dict.fromkeys([*(choices_of(s) or []), *(shown or []), *(s.default or [])]))
        return gr.update(value=shown, choices=options)
    return gr.update(value=shown)
