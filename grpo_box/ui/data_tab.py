"""Data tab: where the prompts come from, which columns hold prompt and answer, the template.

A source is a built-in task (`task:<name>?difficulty=N`, generated offline), a JSONL/CSV/Parquet
file (uploaded, copied under the app's files folder, or a path typed by hand) or a Hub dataset id
with subset and split. The column dropdowns list the columns actually found in the file's head
(`columns.read_columns`). The template sets the output format the system prompt asks for; the
system prompt is editable. The preview runs `python -m grpo_box preview … --json` in a child
process and shows the first prompts exactly as the model sees them (chat template applied, token
counts, reference answers); a data error shows the engine's "file, line N: …" message.
"""

from __future__ import annotations

import hashlib
import html
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import gradio as gr

from grpo_box.config import column_clash
from grpo_box.errors import UserError
from grpo_box.prompts import PREVIEW_ROWS, get_template
from grpo_box.tasks import TASKS, get_task

from . import child, fields, messages
from .columns import ANSWER_GUESSES, PROMPT_GUESSES, SUFFIXES, guess, read_columns
from .registry import Registry
from .state import UIState

TAB = "data"
KINDS = [("Built-in task (offline, no download)", "task"), ("File: JSONL, CSV or Parquet", "file"),
         ("Hugging Face Hub dataset", "hub")]
FIELD_KEYS = ["data.subset", "data.split", "data.size", "data.eval_size", "data.seed", "data.one_shot", "data.prefill"]
GROUPS = ["data.task_group", "data.file_group", "data.hub_group", "data.mapping_group"]
FORM = ["data.kind", "data.task", "data.difficulty", "data.path", "data.hub_id", "data.prompt_column",
        "data.answer_column", "data.system_prompt", *(f"data.{k}" for k in FIELD_KEYS)]
PREVIEW_TIMEOUT = 600


# -- data.source <-> widgets ----------------------------------------------------------------------
def source_kind(source: str) -> str:
    source = source.strip()
    if source.startswith("task:"):
        return "task"
    path = Path(source).expanduser()
    if path.suffix.lower() in SUFFIXES or path.exists() or source.startswith(("/", ".", "~")) \
            or source.count("/") > 1:
        return "file"
    return "hub"


def parse_task(source: str) -> tuple[str, int]:
    """("arithmetic", 2) from "task:arithmetic?difficulty=2"; an unknown task gives the first one."""
    name, _, query = source[len("task:"):].partition("?")
    params = dict(parse_qsl(query))
    try:
        difficulty = int(params.get("difficulty", 1))
    except ValueError:
        difficulty = 1
    return (name if name in TASKS else next(iter(TASKS))), difficulty


def task_source(name: str, difficulty: Any) -> str:
    level = int(difficulty or 1)
    return f"task:{name}" + (f"?difficulty={level}" if level != 1 else "")


def task_note(name: str) -> str:
    task = get_task(name)
    return f"{task.description}. Example: *{task.example}*"


def template_system(state: UIState) -> str:
    custom = state.value("data.system_prompt")
    return custom if custom is not None else get_template(state.value("data.template")).system


def columns_of(path: str) -> tuple[list[str], str]:
    """(columns, problem) for a file path; problem is "" when the head reads fine."""
    if not path.strip():
        return [], ""
    try:
        return read_columns(path.strip()), ""
    except UserError as exc:
        return [], str(exc)


def column_updates(state: UIState, columns: list[str]) -> dict[str, Any]:
    return {f"data.{key}": gr.update(choices=list(dict.fromkeys([*columns, value])), value=value)
            for key, value in picked_columns(state, columns).items()}


def same_column_problem(name: str, picked: dict[str, str], columns: list[str]) -> str:
    """The engine's `column_clash` for file `name` (a file with one column); "" when there is none."""
    clash = column_clash(picked["prompt_column"], picked["answer_column"], columns) if columns else None
    return f"{name}: {clash}" if clash else ""


def picked_columns(state: UIState, columns: list[str]) -> dict[str, str]:
    """The prompt and answer columns for a file with `columns`: the chosen ones where the file has
    them, else likely names; the answer guess avoids the prompt's column where there is another."""
    prompt = guess(columns, state.value("data.prompt_column"), PROMPT_GUESSES) if columns else \
        state.value("data.prompt_column")
    current = state.value("data.answer_column")
    answer = guess([c for c in columns if c != prompt] or columns, current, ANSWER_GUESSES) if columns else current
    return {"prompt_column": prompt, "answer_column": answer}


def visibility(kind: str) -> dict[str, Any]:
    return {"data.task_group": gr.update(visible=kind == "task"), "data.file_group": gr.update(visible=kind == "file"),
            "data.hub_group": gr.update(visible=kind == "hub"), "data.mapping_group": gr.update(visible=kind != "task")}


def view(state: UIState) -> dict[str, Any]:
    """What this tab shows for a state, as plain values (used to build it and to sync it)."""
    source = state.value("data.source")
    kind = source_kind(source)
    task, difficulty = parse_task(source) if kind == "task" else (next(iter(TASKS)), 1)
    path = source if kind == "file" else ""
    columns, problem = columns_of(path)
    picked = picked_columns(state, columns)
    problem = problem or same_column_problem(Path(path).name, picked, columns)
    return {"kind": kind, "task": task, "difficulty": difficulty, "max_difficulty": get_task(task).max_difficulty,
            "path": path, "hub_id": source if kind == "hub" else "", "columns": columns, **picked,
            "problem": problem, "system": template_system(state)}


def sync(state: UIState) -> dict[str, Any]:
    """Every widget of this tab re-rendered from the state."""
    v = view(state)
    return {
        "data.kind": v["kind"], "data.task": v["task"],
        "data.difficulty": gr.update(value=v["difficulty"], info=difficulty_info(v["max_difficulty"])),
        "data.task_note": task_note(v["task"]), "data.path": v["path"], "data.hub_id": v["hub_id"],
        "data.system_prompt": v["system"], "data.data.template": state.value("data.template"),
        "data.error": messages.error(v["problem"]) if v["problem"] else config_problem(state), "data.preview": "",
        **{f"data.{k}": fields.update(fields.spec(k), state.value(k)) for k in FIELD_KEYS},
        **{f"data.{k}": gr.update(choices=list(dict.fromkeys([*v["columns"], v[k]])), value=v[k])
           for k in ("prompt_column", "answer_column")},
        **visibility(v["kind"]),
    }


# -- build ----------------------------------------------------------------------------------------
def build(reg: Registry) -> None:
    state: UIState = reg["app.state"].value
    v = view(state)
    gr.Markdown("Choose the prompts to train on. Each row needs a prompt and a reference answer the rewards "
                "can check.")
    reg.add("data.kind", gr.Radio(KINDS, value=v["kind"], label="Source", elem_id="data-kind"))
    with gr.Column(visible=v["kind"] == "task") as task_group:
        with gr.Row():
            reg.add("data.task", gr.Dropdown([(f"{t.name}: {t.description}", t.name) for t in TASKS.values()],
                                             value=v["task"], label="Task", elem_id="data-task"))
            # no minimum/maximum on the box: Gradio answers a value past them with a red error toast; the
            # form's handler brings it into the task's range and says so instead
            reg.add("data.difficulty", gr.Number(v["difficulty"], label="Difficulty", step=1, precision=0,
                                                 info=difficulty_info(v["max_difficulty"]),
                                                 elem_id="data-difficulty"))
        reg.add("data.task_note", gr.Markdown(task_note(v["task"]), elem_id="data-task-note"))
    reg.add("data.task_group", task_group)
    with gr.Column(visible=v["kind"] == "file") as file_group:
        reg.add("data.upload", gr.File(label="Upload a data file", file_types=list(SUFFIXES), type="filepath",
                                       elem_id="data-upload"))
        reg.add("data.path", gr.Textbox(v["path"], label="Data file", info="The uploaded file's copy, or type the path of a "
                                        ".jsonl, .csv or .parquet file on this machine", elem_id="data-path"))
    reg.add("data.file_group", file_group)
    with gr.Column(visible=v["kind"] == "hub") as hub_group:
        with gr.Row():
            reg.add("data.hub_id", gr.Textbox(v["hub_id"], label="Hub dataset id", placeholder="openai/gsm8k",
                                              info="Downloaded when training starts (needs network or a cached copy)",
                                              elem_id="data-hub-id"))
            for key in ("data.subset", "data.split"):
                reg.add(f"data.{key}", fields.widget(fields.spec(key), state.value(key),
                                                     elem_id=f"data-{key.split('.')[1]}"))
    reg.add("data.hub_group", hub_group)
    with gr.Row(visible=v["kind"] != "task") as mapping_group:
        for key in ("prompt_column", "answer_column"):
            spec = fields.spec(f"data.{key}")
            reg.add(f"data.{key}", gr.Dropdown(list(dict.fromkeys([*v["columns"], v[key]])), value=v[key],
                                               allow_custom_value=True, label=key.replace("_", " "), info=spec.help,
                                               elem_id=f"data-{key.replace('_', '-')}"))
    reg.add("data.mapping_group", mapping_group)
    with gr.Row():
        for key in ("data.size", "data.eval_size", "data.seed"):
            reg.add(f"data.{key}", fields.widget(fields.spec(key), state.value(key),
                                                 elem_id=f"data-{key.split('.')[1].replace('_', '-')}"))
    template = fields.spec("data.template")
    reg.add("data.data.template", fields.widget(template, state.value(template.key), label="Template",
                                                elem_id="data-template"))
    reg.add("data.system_prompt", gr.Textbox(v["system"], label="System prompt", lines=4, elem_id="data-system-prompt",
                                             info=fields.spec("data.system_prompt").help))
    with gr.Row():  # the two ways to help a small model take up the format (prompts module docstring)
        for key, label in (("data.one_shot", "One-shot example"), ("data.prefill", "Prefill the reasoning tag")):
            reg.add(f"data.{key}", fields.widget(fields.spec(key), state.value(key), label=label,
                                                 elem_id=f"data-{key.split('.')[1].replace('_', '-')}"))
    reg.add("data.error", gr.HTML(messages.error(v["problem"]) if v["problem"] else "", elem_id="data-error"))
    reg.add("data.preview_button", gr.Button("Preview the first prompts", elem_id="data-preview-button"))
    reg.add("data.preview", gr.HTML(elem_id="data-preview"))
    keys = [*FORM, "data.task_note", "data.data.template", "data.error", "data.preview", *GROUPS]
    reg.add_syncer(keys, sync)


def difficulty_info(limit: int) -> str:
    return f"1 to {limit}; 1 is easy enough for a small model to score sometimes"


# -- events ---------------------------------------------------------------------------------------
def apply_form(values: dict[str, Any]) -> dict[str, Any]:
    """The form changed: rebuild data.source and the other data settings in the state."""
    state: UIState = values["app.state"]
    kind = values.get("data.kind") or "task"
    before = state.value("data.source")
    out: dict[str, Any] = {"data.error": "", **visibility(kind)}
    if kind == "task":
        task = values.get("data.task") or next(iter(TASKS))
        limit = get_task(task).max_difficulty
        typed = values.get("data.difficulty")
        level = min(max(int(typed or 1), 1), limit)
        state.set("data.source", task_source(task, level))
        out.update({"data.task_note": task_note(task),
                    "data.difficulty": gr.update(value=level, info=difficulty_info(limit))})
        if typed is not None and typed != level:
            out["data.error"] = messages.warning(f"Difficulty {typed:g} is outside this task's 1 to {limit}: "
                                                 f"using {level}.")
    elif kind == "file":
        path = (values.get("data.path") or "").strip()
        columns, problem = columns_of(path)
        if path and not problem:
            state.set("data.source", str(Path(path).expanduser()))
        out["data.error"] = messages.error(problem) if problem else (
            "" if path else messages.warning("Upload a file or type its path."))
        if columns:
            out.update(column_updates(state, columns))
    else:
        hub_id = (values.get("data.hub_id") or "").strip()
        if hub_id:
            state.set("data.source", hub_id)
        else:
            out["data.error"] = messages.warning("Type a Hub dataset id such as openai/gsm8k.")
    for key in ("prompt_column", "answer_column"):
        if kind != "task" and values.get(f"data.{key}"):
            state.set(f"data.{key}", values[f"data.{key}"])
    for key in FIELD_KEYS:
        if f"data.{key}" in values:
            state.set(key, fields.from_widget(fields.spec(key), values[f"data.{key}"]))
    system = values.get("data.system_prompt")
    if system is not None:
        default = get_template(state.value("data.template")).system
        state.set("data.system_prompt", None if system == default else system)
    out["app.state"] = state
    if not out["data.error"]:
        out["data.error"] = config_problem(state)
    if kind != source_kind(before) or state.value("data.source") != before:
        out["data.preview"] = ""  # it showed the rows of the source chosen before
    return out


def unused_choice(state: UIState, kind: str | None, path: str | None, hub_id: str | None) -> str:
    """Why the source chosen in the form is not the state's (the state keeps the last usable one),
    so a preview never shows the previous source under a file that could not be used; "" if it is."""
    source = str(state.value("data.source") or "")
    if kind == "file":
        path = (path or "").strip()
        if not path:
            return "upload a file or type its path"
        problem = columns_of(path)[1]
        if problem or source != str(Path(path).expanduser()):
            return (problem or f"{path} is not the data source yet: press Enter in the path box") + \
                f" (the settings still use {source})"
    if kind == "hub" and (hub_id or "").strip() != source:
        return "type a Hub dataset id such as openai/gsm8k" if not (hub_id or "").strip() else \
            f"{hub_id.strip()} is not the data source yet (the settings still use {source})"
    return ""


def config_problem(state: UIState) -> str:
    return messages.config_problem(state, "These data settings cannot be used:")


def users_names(text: str, uploads_dir: Path) -> str:
    """`text` (an engine message) with each kept upload's path replaced by the name the user uploaded."""
    return re.sub(re.escape(str(uploads_dir)) + r"/([^/\s,:]+)-[0-9a-f]{8}(\.[a-z]+)", r"\1\2", text)


def upload_file(files_dir: Path, uploaded: str) -> Path:
    """Copy an upload under `files_dir` (Gradio's temp copy does not last); same content, same name."""
    src = Path(uploaded)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    out = files_dir / f"{src.stem}-{digest}{src.suffix.lower()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        shutil.copyfile(src, out)
    return out


def preview_html(rows: list[dict[str, Any]]) -> str:
    parts = []
    for i, row in enumerate(rows, 1):
        head = (f"<strong>{i}.</strong> {html.escape(str(row.get('origin', '')))} · {row.get('tokens')} prompt tokens · "
                f"reference answer: <code>{html.escape(str(row.get('answer')))}</code>")
        parts.append(f'<div class="data-preview-row">{head}<pre style="white-space:pre-wrap;background:#f6f8fa;'
                     f'padding:8px;border-radius:4px">{html.escape(str(row.get("text", "")))}</pre></div>')
    if not parts:
        return "<em>No rows.</em>"
    note = ('<p class="data-preview-note">The first training prompts, each with the row it came from: the held-out '
            "rows (picked at random with the seed) are never trained on, so the numbering skips them.</p>")
    return note + "".join(parts)


def wire(reg: Registry) -> None:
    form_inputs = reg.inputs("app.state", *FORM)
    outputs = reg.components(["app.state", "data.error", "data.task_note", "data.difficulty", "data.prompt_column",
                              "data.answer_column", "data.preview", *GROUPS])
    triggers = [reg[k].input for k in FORM if k != "data.path"] + [reg["data.path"].submit, reg["data.path"].blur]
    gr.on(triggers, reg.keyed(apply_form), inputs=form_inputs, outputs=outputs, api_name="apply_data",
          show_progress="hidden", trigger_mode="always_last")

    def on_upload(state: UIState, uploaded: str | None) -> dict[Any, Any]:
        """An uploaded file: keep a copy, read its columns, make it the source."""
        if not uploaded:
            return {}
        try:
            path = upload_file(reg.ctx.uploads_dir, uploaded)
        except OSError as exc:
            return reg.updates({"data.error": messages.error(f"could not keep the uploaded file: {exc}")})
        columns, problem = columns_of(str(path))
        problem = users_names(problem, reg.ctx.uploads_dir)  # the name the user picked, not the kept copy's
        problem = problem or same_column_problem(Path(uploaded).name, picked_columns(state, columns), columns)
        out: dict[str, Any] = {"data.path": str(path), "data.kind": "file", **visibility("file"),
                               "data.error": messages.error(problem, "This file cannot be used:") if problem else ""}
        if not problem:
            state.set("data.source", str(path))
            out.update(column_updates(state, columns))
            for key in ("prompt_column", "answer_column"):
                state.set(f"data.{key}", out[f"data.{key}"]["value"])
        out["app.state"] = state
        return reg.updates(out)

    reg["data.upload"].upload(on_upload, inputs=reg.components(["app.state", "data.upload"]),
                              outputs=reg.components(["app.state", "data.path", "data.kind", "data.error",
                                                      "data.prompt_column", "data.answer_column", *GROUPS]),
                              api_name="upload_data")

    def on_template(state: UIState, template: str) -> dict[Any, Any]:
        """A new template: its system prompt replaces the text (the tags the rewards check follow it)."""
        state.set("data.template", fields.from_widget(fields.spec("data.template"), template))
        state.set("data.system_prompt", None)
        return reg.updates({"app.state": state, "data.system_prompt": template_system(state)})

    reg["data.data.template"].input(on_template, inputs=reg.components(["app.state", "data.data.template"]),
                                    outputs=reg.components(["app.state", "data.system_prompt"]),
                                    api_name="select_template")

    def preview(state: UIState, kind: str | None, path: str | None, hub_id: str | None,
                progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
        """The first prompts as the model sees them, from the engine in a child process."""
        unused = unused_choice(state, kind, path, hub_id)
        if unused:
            return reg.updates({"data.error": messages.error(unused, "Not previewed:"), "data.preview": ""})
        try:
            state.config()
            with child.temp_config(state.to_yaml()) as path:
                rows = child.run_json(["preview", "--preset", state.preset, "--config", path, "-n", str(PREVIEW_ROWS),
                                       "--json"], timeout=PREVIEW_TIMEOUT,
                                      on_line=lambda line: progress(None, desc=line.strip()[:120]))
        except UserError as exc:
            return reg.updates({"data.error": messages.error(users_names(str(exc), reg.ctx.uploads_dir),
                                                             "The data cannot be previewed:"),
                                "data.preview": ""})
        return reg.updates({"data.error": "", "data.preview": preview_html(rows)})

    reg["data.preview_button"].click(preview, inputs=reg.components(["app.state", "data.kind", "data.path",
                                                                     "data.hub_id"]),
                                     outputs=reg.components(["data.error", "data.preview"]), api_name="preview_data")
