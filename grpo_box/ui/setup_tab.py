"""Setup tab: the machine, the preset, the model, every preset value, the memory gauge.

Shows the detected GPU (or "CPU only" with an honest time per step), the proposed preset and a
preset picker, the model picker (the preset's catalog with its reasons, the bundled model, or a
typed Hub id / local folder), and every setting of the model, LoRA, GRPO and output sections as
widgets built from the config's field metadata. Each change updates the state, the memory gauge
(the engine's estimate: total, parts, verdict and what to lower) and the command line that runs
the same config. Save writes the config as YAML; Load reads one back; a bad file or a bad value
shows the engine's message beside the form.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from grpo_box.catalog import catalog_for_preset
from grpo_box.config import BUNDLED_MODEL, FieldSpec
from grpo_box.errors import UserError
from grpo_box.models import is_bundled
from grpo_box.presets import list_presets

from . import fields, messages, run_choice
from .context import Hardware
from .gauge import gauge_html, memory_report, verdict_markdown
from .registry import Registry
from .state import UIState

TAB = "setup"
SECTIONS = {"model": "Model loading", "lora": "LoRA adapter", "grpo": "GRPO training", "output": "Output",
            "": "Run options"}
SKIP = {"reward_file"}  # edited in the Rewards tab
MODEL_KEY = "model.name"
RUNS_DIR_KEY = "output.runs_dir"
PANEL_KEYS = ["setup.error", "setup.gauge", "setup.verdict", "setup.command"]


def form_specs() -> list[FieldSpec]:
    """The settings this tab edits: every section but data, plus the top-level options."""
    return [s for section in SECTIONS for s in fields.section_specs(section) if s.key not in SKIP]


def form_keys() -> list[str]:
    return [f"{TAB}.{s.key}" for s in form_specs()]


# -- text -----------------------------------------------------------------------------------------
def hardware_markdown(hw: Hardware) -> str:
    preset = hw.proposed_preset
    if hw.gpu is not None:
        extra = ", ".join(p for p in (f"driver {hw.driver}" if hw.driver else "",
                                      f"CUDA {hw.cuda}" if hw.cuda else "") if p)
        return (f"**GPU:** {hw.gpu.name}, {hw.gpu.vram_gb:g} GB VRAM" + (f" ({extra})" if extra else "")
                + f". Proposed preset: **{preset}**.")
    cores = f"{hw.cpu_count} CPU core{'s' if hw.cpu_count != 1 else ''}"
    ram = f", {hw.ram_gb:g} GB RAM" if hw.ram_gb else ""
    return (f"**CPU only** (no NVIDIA GPU found; {cores}{ram}). Proposed preset: **{preset}**.\n\n"
            f"Training runs on the CPU here: the cpu preset (the bundled 135M model) takes {messages.CPU_PRESET_PACE}, "
            "so its 60 steps take roughly 12–30 minutes. A GPU preset's model would take minutes a step; "
            "its memory estimate below is for the card the preset is meant for.")


def preset_choices() -> list[tuple[str, str]]:
    return [(f"{p.name}: {p.description}", p.name) for p in list_presets()]


def model_choices(preset: str, current: str) -> list[tuple[str, str]]:
    """The preset's catalog (with reasons), the bundled model, and the current value if typed."""
    try:
        catalog = catalog_for_preset(preset)
    except UserError:
        catalog = []
    choices = [(f"{model}: {reason}", model) for model, reason in catalog]
    if BUNDLED_MODEL not in [m for _, m in choices]:
        choices.append((f"{BUNDLED_MODEL}: bundled and offline, 135M parameters", BUNDLED_MODEL))
    if current and current not in [m for _, m in choices]:
        choices.append((current, current))
    return choices


def model_note(name: str) -> str:
    path = Path(name).expanduser()
    if is_bundled(name):
        return "The bundled model: already on disk, trains offline."
    if path.is_dir():
        found = "has" if (path / "config.json").is_file() else "has no"
        return f"Local folder `{path}` ({found} config.json)."
    return (f"Hub id `{name}`: downloaded on first use (needs network), or type a local model folder instead."
            if "/" in name else "Type a Hub id (owner/name) or the path of a local model folder.")


# -- state -> page --------------------------------------------------------------------------------
def panel(state: UIState, hw: Hardware) -> dict[str, Any]:
    """Error box, gauge, verdict and command for a state."""
    out: dict[str, Any] = {"setup.command": state.command()}
    try:
        config = state.config()
    except UserError as exc:
        return {**out, "setup.error": messages.error(str(exc), "These settings cannot be used:"), "setup.gauge": "",
                "setup.verdict": "*Fix the settings above to see the memory estimate.*"}
    out["setup.error"] = ""
    try:
        report = memory_report(config, hw)
    except UserError as exc:
        return {**out, "setup.gauge": "", "setup.verdict": f"Memory estimate unavailable: {exc}"}
    return {**out, "setup.gauge": gauge_html(report), "setup.verdict": verdict_markdown(report)}


def sync(state: UIState, hw: Hardware) -> dict[str, Any]:
    """Every widget of this tab re-rendered from the state (after a preset change or a Load)."""
    out: dict[str, Any] = {f"{TAB}.{s.key}": fields.update(s, state.value(s.key)) for s in form_specs()
                           if s.key != MODEL_KEY}
    name = state.value(MODEL_KEY)
    out[f"{TAB}.{MODEL_KEY}"] = gr.update(choices=model_choices(state.preset, name), value=name)
    out["setup.model_note"] = model_note(name)
    out["setup.preset"] = gr.update(value=state.preset)
    return {**out, **panel(state, hw)}


# -- build ----------------------------------------------------------------------------------------
def build(reg: Registry) -> None:
    state: UIState = reg["app.state"].value
    hw: Hardware = reg.ctx.hardware
    reg.add("setup.hardware", gr.Markdown(hardware_markdown(hw), elem_id="setup-hardware"))
    with gr.Row():
        with gr.Column(scale=3):  # preset and model one above the other: side by side, their long labels were cut
            reg.add("setup.preset", gr.Dropdown(preset_choices(), value=state.preset, label="Preset",
                                                info="A starting point for a card size; every value stays editable",
                                                elem_id="setup-preset"))
            name_spec = fields.spec(MODEL_KEY)
            name = state.value(MODEL_KEY)
            reg.add(f"setup.{MODEL_KEY}", gr.Dropdown(model_choices(state.preset, name), value=name,
                                                      allow_custom_value=True, label="Model",
                                                      info=name_spec.help, elem_id="setup-model"))
            reg.add("setup.model_note", gr.Markdown(model_note(name), elem_id="setup-model-note"))
            _build_sections(reg, state)
        with gr.Column(scale=2):
            first = panel(state, hw)
            reg.add("setup.error", gr.HTML(first["setup.error"], elem_id="setup-error"))
            reg.add("setup.gauge", gr.HTML(first["setup.gauge"], elem_id="setup-gauge"))
            reg.add("setup.verdict", gr.Markdown(first["setup.verdict"], elem_id="setup-verdict"))
            with gr.Row():
                reg.add("setup.save", gr.Button("Save config", elem_id="setup-save"))
                reg.add("setup.load", gr.UploadButton("Load config", file_types=[".yaml", ".yml"], type="filepath",
                                                      elem_id="setup-load"))
            reg.add("setup.saved", gr.File(label="Saved config", visible=False, interactive=False,
                                           elem_id="setup-saved"))
            reg.add("setup.show_command", gr.Button("Show command", elem_id="setup-show-command"))
            reg.add("setup.command", gr.Textbox(first["setup.command"], label="The same run from the command line",
                                                lines=3, interactive=False, buttons=["copy"], elem_id="setup-command"))
    reg.add("setup.options", gr.Textbox(visible=False, elem_id="setup-options"))  # API: JSON {"section.key": value}
    keys = [*(f"{TAB}.{s.key}" for s in form_specs()), "setup.model_note", "setup.preset", *PANEL_KEYS]
    reg.add_syncer(keys, lambda st: sync(st, hw))


def _build_sections(reg: Registry, state: UIState) -> None:
    by_section: dict[str, list[FieldSpec]] = {}
    for s in form_specs():
        if s.key != MODEL_KEY:
            by_section.setdefault(s.section, []).append(s)
    for section, title in SECTIONS.items():
        specs = by_section.get(section, [])
        with gr.Accordion(title, open=section == "grpo", elem_id=f"setup-section-{section or 'run'}"):
            for start in range(0, len(specs), 3):
                with gr.Row():
                    for s in specs[start:start + 3]:
                        reg.add(f"{TAB}.{s.key}", fields.widget(s, state.value(s.key), **_fixed(reg, s.key),
                                                                 elem_id=f"setup-{s.key.replace('.', '-')}"))


def _fixed(reg: Registry, key: str) -> dict[str, Any]:
    """Widget options for settings the app decides: the runs folder is the one every tab lists, so
    it is shown, not edited here (the CLI's --set output.runs_dir still chooses any folder)."""
    if key != RUNS_DIR_KEY:
        return {}
    return {"interactive": False, "info": f"The app keeps its runs in {run_choice.runs_root(reg)}, where the Runs, "
                                          "Evaluate, Chat and Export tabs find them; start the app with --runs-dir "
                                          "to use another folder"}


# -- events ---------------------------------------------------------------------------------------
def state_from_yaml(reg: Registry, text: str) -> UIState:
    """The form's state for a config file's text (a saved config, a run's config.yaml); runs stay in
    the folder the app lists. UserError when the text is not a valid config."""
    return UIState.from_yaml(text).set(RUNS_DIR_KEY, reg.ctx.runs_dir or "")


def wire(reg: Registry) -> None:
    hw: Hardware = reg.ctx.hardware
    keys = form_keys()
    sync_outputs = reg.components(["app.state", *reg.sync_keys()])

    def apply_form(values: dict[str, Any]) -> dict[str, Any]:
        """Any edited setting: the state takes every form value; gauge, command and errors follow."""
        state: UIState = values["app.state"]
        for key in keys:
            if key in values:
                spec = fields.spec(key[len(TAB) + 1:])
                state.set(spec.key, fields.from_widget(spec, values[key]))
        name = state.value(MODEL_KEY)
        return {"app.state": state, "setup.model_note": model_note(name), **panel(state, hw)}

    gr.on([reg[k].input for k in keys], reg.keyed(apply_form), inputs=reg.inputs("app.state", *keys),
          outputs=reg.components(["app.state", "setup.model_note", *PANEL_KEYS]), api_name="apply_setup",
          show_progress="hidden", trigger_mode="always_last")

    def select_preset(state: UIState, preset: str) -> dict[Any, Any]:
        """A new preset: its values everywhere, keeping the data, rubric and runs folder chosen."""
        try:
            new = state.with_preset(preset)
        except UserError as exc:
            return reg.updates({"setup.error": messages.error(str(exc))})
        return reg.updates({"app.state": new, **reg.sync(new)})

    reg["setup.preset"].input(select_preset, inputs=reg.components(["app.state", "setup.preset"]),
                              outputs=sync_outputs, api_name="select_preset")

    def set_options(state: UIState, text: str) -> dict[Any, Any]:
        """Set several settings at once from JSON {"section.key": value} (for scripts and tests)."""
        try:
            values = json.loads(text or "{}")
            if not isinstance(values, dict):
                raise UserError('expected a JSON object such as {"grpo.max_steps": 3}')
            new = state.copy().update(values)
        except (UserError, json.JSONDecodeError) as exc:
            return reg.updates({"setup.error": messages.error(str(exc), "Could not set these options:")})
        return reg.updates({"app.state": new, **reg.sync(new)})

    reg["setup.options"].submit(set_options, inputs=reg.components(["app.state", "setup.options"]),
                                outputs=sync_outputs, api_name="set_options")

    def load_config(state: UIState, path: str | None) -> dict[Any, Any]:
        """Load a YAML config: a bad file changes nothing and says what is wrong."""
        if not path:
            return {}
        try:
            new = state_from_yaml(reg, Path(path).read_text(encoding="utf-8"))
        except (UserError, UnicodeDecodeError, OSError) as exc:
            return reg.updates({"setup.error": messages.error(str(exc), f"Could not load {Path(path).name}:")})
        return reg.updates({"app.state": new, **reg.sync(new)})

    reg["setup.load"].upload(load_config, inputs=reg.components(["app.state", "setup.load"]),
                             outputs=sync_outputs, api_name="load_config")

    def save_config(state: UIState) -> dict[Any, Any]:
        out = Path(tempfile.mkdtemp(prefix="grpo-box-config-")) / f"grpo-box-{state.preset}.yaml"
        out.write_text(state.to_yaml(), encoding="utf-8")
        return reg.updates({"setup.saved": gr.update(value=str(out), visible=True)})

    reg["setup.save"].click(save_config, inputs=reg["app.state"], outputs=reg.components(["setup.saved"]),
                            api_name="save_config")
    reg["setup.show_command"].click(lambda state: state.command(), inputs=reg["app.state"],
                                    outputs=reg["setup.command"], api_name="show_command")
