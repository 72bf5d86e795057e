"""Rewards tab: the rubric, the user's own reward file, and the dry run on the base model.

The rubric editor adds registered rewards (name, description and param defaults from the
registry) or `user:<function>` from the checked reward file, each with a weight and params
(JSON or YAML), and removes or reorders rows; the state validates the result as the engine will.
The code editor starts from examples/my_rewards.py; Save writes the file under the app's files
folder only after `python -m grpo_box rewards check FILE --json` (a child process: the app never
imports user code) loads it, and shows each function's problems inline. "Try the rubric" runs
`python -m grpo_box rewards score --sample N … --json` in a child process and shows every
function's score per completion, the total and the group advantages, with its warnings (no
signal, nothing pays, correctness never pays) in a highlighted box and as notifications.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import yaml

from grpo_box.config import USER_PREFIX, rubric_field_specs, yaml_problem
from grpo_box.errors import UserError

from . import child, fields, messages
from .registry import Registry
from .state import UIState

TAB = "rewards"
EXAMPLE = child.PACKAGE_ROOT / "examples" / "my_rewards.py"
FALLBACK_EXAMPLE = '''"""My reward functions: use one in the rubric as user:<function name>."""


def short_answer(prompts, completions, max_chars=20, **kwargs):
    """1.0 when the completion is at most max_chars characters long, else 0.0."""
    texts = [c if isinstance(c, str) else "".join(m.get("content") or "" for m in c) for c in completions]
    return [1.0 if len(t) <= max_chars else 0.0 for t in texts]
'''
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,80}\.py$")
HEADERS = ["#", "reward", "weight", "params"]
CHECK_TIMEOUT = 120
DRY_RUN_TIMEOUT = 1800
COMPLETION_CHARS = 300


# -- rubric ---------------------------------------------------------------------------------------
def registered() -> dict[str, dict[str, Any]]:
    from grpo_box.rewards.builtin import list_rewards

    return {info["name"]: info for info in list_rewards()}


def reward_choices(state: UIState, user_functions: list[str] | None = None) -> list[str]:
    users = [r["name"] for r in state.rewards if r["name"].startswith(USER_PREFIX)]
    return list(dict.fromkeys([*registered(), *[USER_PREFIX + f for f in user_functions or []], *users]))


def rubric_rows(rewards: list[dict[str, Any]]) -> list[list[Any]]:
    return [[i, r["name"], r["weight"], json.dumps(r.get("params") or {})] for i, r in enumerate(rewards, 1)]


def parse_params(text: str) -> dict[str, Any]:
    """Params from the editor: a JSON or YAML mapping ("" means none)."""
    try:
        value = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        raise UserError(f"params: {yaml_problem(exc)} (JSON works too)") from None
    if not isinstance(value, dict):
        raise UserError('params: expected a mapping such as {"max_chars": 12}')
    return value


def describe(name: str) -> tuple[str, str]:
    """(description, default params as JSON) of a reward name."""
    info = registered().get(name)
    if info is None:
        if name.startswith(USER_PREFIX):
            return f"`{name}`: a function from your reward file (params are its keyword arguments).", "{}"
        return f"`{name}` is not a registered reward.", "{}"
    return f"**{name}**: {info['description']}", json.dumps(info["params"])


def rubric_problem(state: UIState) -> str:
    return messages.config_problem(state, "The rubric or config needs a fix:")


def rubric_view(state: UIState) -> dict[str, Any]:
    return {"rewards.table": rubric_rows(state.rewards), "rewards.error": rubric_problem(state)}


# -- reward file ----------------------------------------------------------------------------------
def example_code() -> str:
    return EXAMPLE.read_text(encoding="utf-8") if EXAMPLE.is_file() else FALLBACK_EXAMPLE


def file_view(state: UIState) -> tuple[str, str]:
    """(file name, code) shown in the editor: the state's reward file, else the example."""
    path = state.reward_file
    if path and Path(path).is_file():
        return Path(path).name, Path(path).read_text(encoding="utf-8", errors="replace")
    return "my_rewards.py", example_code()


def check_html(result: dict[str, Any], path: Path) -> str:
    names = ", ".join(USER_PREFIX + f["name"] for f in result["functions"])
    text = f"Saved {path}.\nReward functions: {names} (add them to the rubric above)."
    problems = [f"{USER_PREFIX}{f['name']}: {f['problem']}" for f in result["functions"] if f["problem"]]
    if not problems:
        scores = "; ".join(f"{USER_PREFIX}{f['name']} -> {f['scores']}" for f in result["functions"])
        return messages.ok(f"{text}\nOn an example group (2 + 3 = ?, three completions): {scores}", "File checked")
    return messages.warning(text + "\n\nOn an example group (2 + 3 = ?, three completions, column answer):\n"
                            + "\n".join(problems), "Saved, but a function failed on an example input")


def save_reward_file(folder: Path, name: str, code: str) -> tuple[Path, dict[str, Any]]:
    """Check `code` as a reward file in a child process; only a file that loads replaces `folder/name`."""
    name = (name or "").strip()
    if not FILE_NAME.match(name):
        raise UserError(f"file name {name!r}: use a plain name ending in .py, e.g. my_rewards.py")
    target = folder / name
    draft = folder / ".check" / name
    draft.parent.mkdir(parents=True, exist_ok=True)
    draft.write_text(code, encoding="utf-8")
    try:
        result = child.run_json(["rewards", "check", str(draft), "--json"], timeout=CHECK_TIMEOUT)
    except child.ChildError as exc:
        # named as the user named it: the checked draft's path, or the target's, would read as saved
        message = str(exc).replace(str(draft.resolve()), name).replace(str(draft), name)
        raise UserError(message) from None
    os.replace(draft, target)
    result["file"] = str(target)
    return target, result


# -- dry run --------------------------------------------------------------------------------------
def dry_run_table(report: dict[str, Any]) -> pd.DataFrame:
    names = [r["name"] for r in report["rewards"]]
    rows = []
    for g, group in enumerate(report["groups"], 1):
        for c in group["completions"]:
            text = c["completion"].replace("\n", " ⏎ ")
            text = text if len(text) <= COMPLETION_CHARS else text[:COMPLETION_CHARS] + " …"
            rows.append([g, text, *[c["scores"].get(n) for n in names], c["total"], round(c["advantage"], 3)])
    return pd.DataFrame(rows, columns=["group", "completion", *names, "total", "advantage"])


def dry_run_summary(report: dict[str, Any]) -> str:
    lines = []
    for g, group in enumerate(report["groups"], 1):
        prompt = group["prompt"].replace("\n", " ")
        mean = "-" if group["mean"] is None else f"{group['mean']:.3g}"
        lines.append(f"- **group {g}** (mean {mean}, std {group['std']:.3g}): {prompt[:200]}")
    return "\n".join(lines)


def warnings_html(warnings: list[str]) -> str:
    if not warnings:
        return messages.ok("Every group has a spread of scores: GRPO has a signal to learn from.", "No warnings")
    return messages.warning("\n".join(f"• {w}" for w in warnings), "Warnings: fix these before training")


# -- build ----------------------------------------------------------------------------------------
def sync(state: UIState) -> dict[str, Any]:
    name, code = file_view(state)
    return {**rubric_view(state), "rewards.name": gr.update(choices=reward_choices(state)),
            "rewards.file_name": name, "rewards.code": code}


def build(reg: Registry) -> None:
    state: UIState = reg["app.state"].value
    gr.Markdown("The **rubric** scores every sampled completion; GRPO learns from the differences within each "
                "group. Weights multiply each function's score; the total is their sum.")
    reg.add("rewards.table", gr.Dataframe(rubric_rows(state.rewards), headers=HEADERS, interactive=False,
                                          label="Rubric (click a row to edit it)", elem_id="rewards-table"))
    reg.add("rewards.error", gr.HTML(rubric_problem(state), elem_id="rewards-error"))
    first = next(iter(registered()))
    description, params = describe(first)
    with gr.Row():
        reg.add("rewards.row", gr.Number(None, label="Row", precision=0, scale=0, min_width=80,
                                         elem_id="rewards-row"))  # no minimum: an empty box sends 0
        reg.add("rewards.name", gr.Dropdown(reward_choices(state), value=first, allow_custom_value=True,
                                            label="Reward", elem_id="rewards-name"))
        weight, param_spec = rubric_field_specs()  # help and step from the config's metadata
        reg.add("rewards.weight", fields.widget(weight, weight.default, label="Weight", elem_id="rewards-weight"))
        reg.add("rewards.params", gr.Textbox(params, label="Params (JSON or YAML)", info=param_spec.help,
                                             elem_id="rewards-params"))
    reg.add("rewards.description", gr.Markdown(description, elem_id="rewards-description"))
    with gr.Row():
        for key, label in (("add", "Add"), ("update", "Update row"), ("remove", "Remove row"), ("up", "Move up"),
                           ("down", "Move down")):
            reg.add(f"rewards.{key}", gr.Button(label, size="sm", elem_id=f"rewards-{key}"))
    with gr.Accordion("Your own reward functions (Python)", open=False, elem_id="rewards-file-section"):
        name, code = file_view(state)
        reg.add("rewards.file_name", gr.Textbox(name, label="File name", elem_id="rewards-file-name"))
        reg.add("rewards.code", gr.Code(code, language="python", lines=18, label="Reward file",
                                        elem_id="rewards-code"))
        reg.add("rewards.save", gr.Button("Save and check", elem_id="rewards-save"))
        reg.add("rewards.check", gr.HTML(elem_id="rewards-check"))
    gr.Markdown("### Try the rubric\nSamples completions from the base model for a few training prompts and scores "
                "them, as the first training step will.")
    with gr.Row():
        reg.add("rewards.sample_n", gr.Number(2, label="Prompts to sample", minimum=1, maximum=32, precision=0,
                                              elem_id="rewards-sample-n"))
        reg.add("rewards.try", gr.Button("Try the rubric", variant="primary", elem_id="rewards-try"))
    reg.add("rewards.try_warnings", gr.HTML(elem_id="rewards-try-warnings"))
    reg.add("rewards.try_summary", gr.Markdown(elem_id="rewards-try-summary"))
    reg.add("rewards.try_table", gr.Dataframe(interactive=False, wrap=True, label="Scores per completion",
                                              elem_id="rewards-try-table"))
    reg.add_syncer(["rewards.table", "rewards.error", "rewards.name", "rewards.file_name", "rewards.code"], sync)


# -- events ---------------------------------------------------------------------------------------
def edit_rubric(state: UIState, action: str, row: Any, name: str, weight: Any, params: str) -> dict[str, Any]:
    """Add, update, remove or move one rubric row; returns the state and the re-rendered rubric."""
    rewards = state.rewards
    index = int(row) - 1 if row not in (None, "") and row >= 1 else None  # an empty Number box sends 0
    if action != "add" and (index is None or not 0 <= index < len(rewards)):
        raise UserError(f"choose a row first (1 to {len(rewards)}): click it in the table or type its number")
    if action in ("add", "update"):
        if not name:
            raise UserError("choose a reward to add")
        if weight is None or weight == "":
            raise UserError(f"the weight of {name.strip()} is empty: type a number (1.0 counts it fully, 0.5 half, "
                            "a negative weight penalises)")
        entry = {"name": name.strip(), "weight": float(weight), "params": parse_params(params)}
        if entry["name"] in registered():  # unknown or bad params now, not after a dry run loads the model
            from grpo_box.config import RewardSpec
            from grpo_box.rewards.rubric import check_builtin

            check_builtin(RewardSpec(**entry))
        if action == "add":  # below the chosen row, else at the end
            index = index + 1 if index is not None and index < len(rewards) else len(rewards)
            rewards.insert(index, entry)
        else:
            rewards[index] = entry
    elif action == "remove":  # no row chosen afterwards: a second click must not remove the next row
        rewards.pop(index)
        index = None
    else:
        other = index - 1 if action == "up" else index + 1
        if 0 <= other < len(rewards):
            rewards[index], rewards[other] = rewards[other], rewards[index]
            index = other
    state.set_rewards(rewards)
    return {"app.state": state, **rubric_view(state), "rewards.row": None if index is None else index + 1}


def stale_dry_run(shown: Any) -> dict[str, Any]:
    """A rubric edit makes a dry run on screen out of date (its scores, or its error about a row that
    may be gone): it is cleared, with a note saying why, instead of standing beside the new rubric."""
    if not shown:
        return {}
    return {"rewards.try_warnings": messages.warning("The rubric changed since this dry run: click Try the rubric "
                                                     "to score the new one."),
            "rewards.try_summary": "", "rewards.try_table": None}


def wire(reg: Registry) -> None:
    editor = reg.components(["app.state", "rewards.row", "rewards.name", "rewards.weight", "rewards.params",
                             "rewards.try_warnings"])
    rubric_out = reg.components(["app.state", "rewards.table", "rewards.error", "rewards.row", "rewards.try_warnings",
                                 "rewards.try_summary", "rewards.try_table"])
    for action in ("add", "update", "remove", "up", "down"):
        def handler(state: UIState, row: Any, name: str, weight: Any, params: str, shown: Any = None,
                    _action: str = action):
            try:
                return reg.updates({**edit_rubric(state, _action, row, name, weight, params), **stale_dry_run(shown)})
            except UserError as exc:
                return reg.updates({"rewards.error": messages.error(str(exc))})

        reg[f"rewards.{action}"].click(handler, inputs=editor, outputs=rubric_out, api_name=f"rubric_{action}")

    def pick_reward(name: str) -> dict[Any, Any]:
        description, params = describe(name or "")
        return reg.updates({"rewards.description": description, "rewards.params": params})

    reg["rewards.name"].input(pick_reward, inputs=reg["rewards.name"],
                              outputs=reg.components(["rewards.description", "rewards.params"]),
                              api_visibility="undocumented")

    def select_row(state: UIState, evt: gr.SelectData) -> dict[Any, Any]:
        rewards = state.rewards
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not 0 <= row < len(rewards):
            return {}
        entry = rewards[row]
        return reg.updates({"rewards.row": row + 1, "rewards.name": gr.update(value=entry["name"]),
                            "rewards.weight": entry["weight"], "rewards.params": json.dumps(entry.get("params") or {}),
                            "rewards.description": describe(entry["name"])[0]})

    reg["rewards.table"].select(select_row, inputs=reg["app.state"],
                                outputs=reg.components(["rewards.row", "rewards.name", "rewards.weight",
                                                        "rewards.params", "rewards.description"]),
                                api_visibility="undocumented")

    def save_file(state: UIState, name: str, code: str) -> dict[Any, Any]:
        """Check the code in a child process; save it and make it the run's reward file if it loads."""
        try:
            path, result = save_reward_file(reg.ctx.rewards_dir, name, code)
        except UserError as exc:
            return reg.updates({"rewards.check": messages.error(str(exc), "Not saved: fix this and save again")})
        state.set("reward_file", str(path))
        functions = [f["name"] for f in result["functions"]]
        return reg.updates({"app.state": state, "rewards.check": check_html(result, path),
                            "rewards.name": gr.update(choices=reward_choices(state, functions)),
                            "rewards.error": rubric_problem(state)})

    reg["rewards.save"].click(save_file, inputs=reg.components(["app.state", "rewards.file_name", "rewards.code"]),
                              outputs=reg.components(["app.state", "rewards.check", "rewards.name", "rewards.error"]),
                              api_name="save_reward_file")

    def try_rubric(state: UIState, n: Any, progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
        """The dry run: sample the base model on N prompts in a child process and score the groups."""
        def on_line(line: str) -> None:
            progress(child.parse_progress(line), desc=line.strip()[:120])

        try:
            count = max(1, int(n or 1))
            state.config()
            with child.temp_config(state.to_yaml()) as path:
                report = child.run_json(["rewards", "score", "--sample", str(count), "--preset", state.preset,
                                         "--config", path, "--json"], timeout=DRY_RUN_TIMEOUT, on_line=on_line)
        except UserError as exc:
            return reg.updates({"rewards.try_warnings": messages.error(str(exc), "The dry run failed:"),
                                "rewards.try_summary": "", "rewards.try_table": None})
        for warning in report["warnings"]:
            gr.Warning(warning)
        return reg.updates({"rewards.try_warnings": warnings_html(report["warnings"]),
                            "rewards.try_summary": dry_run_summary(report), "rewards.try_table": dry_run_table(report)})

    reg["rewards.try"].click(try_rubric, inputs=reg.components(["app.state", "rewards.sample_n"]),
                             outputs=reg.components(["rewards.try_warnings", "rewards.try_summary",
                                                     "rewards.try_table"]), api_name="try_rubric")
