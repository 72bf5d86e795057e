"""The Runs tab: every run with its state, steps, final reward, held-out accuracy and start time;
open one to see its curves, config and samples; overlay the reward curves of several runs;
resume a stopped or failed run; delete a run after confirming. An opened run also lists what was
made from it: its evaluation and its exports (`run_made`).

It reads run directories only (runs.list_runs, RunDir), so a run made by the CLI shows up here
too. Resume goes through the Train tab's `resume_run` (one job per machine, the same checks).
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from grpo_box import job
from grpo_box.errors import UserError
from grpo_box.runs import RunFileError, list_runs, open_run

from . import cluster_panel, messages, run_choice, setup_tab, watch
from .child import children_using
from .curves import AXIS_FORMAT, overlay_frame, plot_frame
from .registry import Registry
from .run_made import made_html
from .train_tab import resume_run
from .train_view import rubric_weights, run_sample_html, sample_choices, sample_html, status_html

COLUMNS = ["name", "state", "step", "max_steps", "reward", "accuracy", "started"]


def build(reg: Registry) -> None:
    with gr.Row():
        reg.add("runs.refresh", gr.Button("Refresh", elem_id="runs-refresh", scale=0))
    reg.add("runs.table", gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="runs-table", wrap=True))
    with gr.Row():
        reg.add("runs.pick", gr.Dropdown(label="Open a run", choices=[], elem_id="runs-pick"))
        reg.add("runs.watch", gr.Button("Watch in the Train tab", elem_id="runs-watch", scale=0))
        reg.add("runs.resume", gr.Button("Resume", elem_id="runs-resume", scale=0))
        reg.add("runs.reuse", gr.Button("New run with these settings", elem_id="runs-reuse", scale=0))
    with gr.Row():
        reg.add("runs.confirm", gr.Checkbox(label="Yes, delete this run and all its files", value=False,
                                            elem_id="runs-confirm"))
        reg.add("runs.delete", gr.Button("Delete run", variant="stop", elem_id="runs-delete", scale=0))
    reg.add("runs.message", gr.HTML(elem_id="runs-message"))
    reg.add("runs.status", gr.HTML(elem_id="runs-status"))
    reg.add("runs.made", gr.HTML(elem_id="runs-made"))  # its evaluation and exports
    with gr.Row():
        reg.add("runs.plot_reward", gr.LinePlot(None, x="step", y="value", color="series", title="Reward",
                                                height=260, x_axis_format=AXIS_FORMAT, y_axis_format=AXIS_FORMAT,
                                                elem_id="runs-plot-reward"))
        reg.add("runs.plot_signal", gr.LinePlot(None, x="step", y="value", color="series", title="Learning signal",
                                                height=260, x_axis_format=AXIS_FORMAT, y_axis_format=AXIS_FORMAT,
                                                elem_id="runs-plot-signal"))
    with gr.Accordion("Config", open=False):
        reg.add("runs.config", gr.Code(language="yaml", interactive=False, elem_id="runs-config"))
    with gr.Accordion("Samples", open=False):
        reg.add("runs.sample_pick", gr.Dropdown(label="Logged group", choices=[], elem_id="runs-sample-pick"))
        reg.add("runs.sample_view", gr.HTML(elem_id="runs-sample-view"))
    with gr.Accordion("Compare runs: reward curves overlaid", open=False):
        reg.add("runs.compare", gr.Dropdown(label="Runs to overlay", choices=[], multiselect=True,
                                            elem_id="runs-compare"))
        reg.add("runs.overlay", gr.LinePlot(None, x="step", y="value", color="series", title="Reward by run",
                                            height=300, x_axis_format=AXIS_FORMAT, y_axis_format=AXIS_FORMAT,
                                            elem_id="runs-overlay"))
    cluster_panel.build(reg)


def wire(reg: Registry) -> None:
    listing = [reg["runs.table"], reg["runs.pick"], reg["runs.compare"]]
    detail = [reg[k] for k in ("runs.status", "runs.plot_reward", "runs.plot_signal", "runs.config",
                               "runs.sample_pick", "runs.sample_view")]
    # Refresh, and opening the tab, read the list again; it keeps the chosen run, so its change event
    # does not fire: the run is read again here (it may have trained on, been evaluated or exported)
    for event, api in ((reg["runs.refresh"].click, {"api_name": "runs_list"}),
                       (reg["app.tab_runs"].select, {"api_visibility": "private"})):
        event(_listing(reg), outputs=listing, **api) \
            .then(_open(reg), inputs=[reg["runs.pick"]], outputs=detail, api_visibility="private") \
            .then(lambda name: made_html(_path(reg, name)), inputs=[reg["runs.pick"]], outputs=[reg["runs.made"]],
                  api_visibility="private")
    reg["runs.pick"].change(_clear, outputs=detail[1:3], api_visibility="private") \
        .then(_open(reg), inputs=[reg["runs.pick"]], outputs=detail, api_name="runs_open") \
        .then(lambda name: made_html(_path(reg, name)), inputs=[reg["runs.pick"]], outputs=[reg["runs.made"]],
              api_name="runs_made")
    reg["runs.sample_pick"].change(_sample(reg), inputs=[reg["runs.pick"], reg["runs.sample_pick"]],
                                   outputs=[reg["runs.sample_view"]], api_visibility="private")
    reg["runs.compare"].change(lambda: None, outputs=[reg["runs.overlay"]], api_visibility="private") \
        .then(_overlay(reg), inputs=[reg["runs.compare"]], outputs=[reg["runs.overlay"]], api_name="runs_overlay")
    reg["runs.watch"].click(_watch(reg), inputs=[reg["runs.pick"]],
                            outputs=[reg["train.run"], reg["train.seen"], reg["runs.message"]], api_name="runs_watch")
    reg["runs.resume"].click(_resume(reg), inputs=[reg["runs.pick"]],
                             outputs=[reg["train.run"], reg["train.seen"], reg["runs.message"]], api_name="runs_resume")
    reg["runs.reuse"].click(_reuse(reg), inputs=[reg["runs.pick"]],
                            outputs=reg.components(["app.state", *reg.sync_keys(), "runs.message", "app.tabs"]),
                            api_name="runs_reuse")
    reg["runs.delete"].click(_delete(reg), inputs=[reg["runs.pick"], reg["runs.confirm"]],
                             outputs=[reg["runs.message"], reg["runs.confirm"]], api_name="runs_delete") \
        .then(_listing(reg), outputs=listing, api_visibility="private")
    cluster_panel.wire(reg, lambda name: _path(reg, name))


def page_load(reg: Registry) -> tuple[list[Any], list[Any], Any]:
    """(inputs, outputs, fn) for the app's load event: the run list."""
    return [], [reg["runs.table"], reg["runs.pick"], reg["runs.compare"]], _listing(reg)


def _path(reg: Registry, name: str | None) -> Path | None:
    """The run's folder; None for no choice, a vanished run or a name outside the runs folder."""
    return run_choice.run_path(reg, name)


def table(root: Path) -> pd.DataFrame:
    rows = list_runs(root) if root.is_dir() else []
    out = []
    for r in rows:
        started = datetime.datetime.fromtimestamp(r["started"]).strftime("%Y-%m-%d %H:%M") if r["started"] else ""
        out.append({"name": r["name"], "state": r["state"], "step": r["step"], "max_steps": r["max_steps"],
                    "reward": _fmt(r["reward"]), "accuracy": _pct(r["accuracy"]), "started": started})
    return pd.DataFrame(out, columns=COLUMNS)


def _reuse(reg: Registry):
    def reuse(name: str | None) -> dict[Any, Any]:
        """The run's settings into Setup for a new run (its own name, so nothing of the old run is touched)."""
        path = _path(reg, name)
        if path is None:
            return reg.updates({"runs.message": messages.warning(run_choice.no_run(reg, name))})
        try:
            state = setup_tab.state_from_yaml(reg, open_run(path).file("config.yaml").read_text(encoding="utf-8"))
            state = state.set("output.run_name", None)
        except (UserError, OSError, UnicodeDecodeError) as exc:
            return reg.updates({"runs.message": messages.error(str(exc), f"Could not read {name}'s settings:")})
        note = messages.ok(f"Setup now holds {name}'s settings (a new run gets its own name): change what you want "
                           "to try, then press Start in the Train tab.")
        return reg.updates({"app.state": state, **reg.sync(state), "runs.message": note,
                            "app.tabs": gr.Tabs(selected="setup")})

    return reuse


def _listing(reg: Registry):
    def listing() -> tuple[Any, Any, Any]:
        frame = table(run_choice.runs_root(reg))
        names = list(frame["name"])
        return frame, gr.update(choices=names), gr.update(choices=names)

    return listing


def _clear() -> tuple[None, None]:
    return None, None


def _open(reg: Registry):
    def open_(name: str | None) -> tuple[Any, ...]:
        path = _path(reg, name)
        if path is None:
            return "", None, None, "", gr.update(choices=[], value=None), sample_html(None, None)
        try:
            run = open_run(path)
            metrics, samples = run.metrics(), run.samples()
            config_text = run.file("config.yaml").read_text()
        except (UserError, FileNotFoundError, RunFileError) as exc:
            return messages.error(str(exc)), None, None, "", gr.update(choices=[], value=None), ""
        status = status_html(run.path.name, run.status(), metrics, job.worker_alive(run))
        config = run.config()
        return (status, plot_frame("reward", metrics), plot_frame("signal", metrics), config_text,
                gr.update(choices=sample_choices(samples), value=len(samples) - 1 if samples else None),
                sample_html(samples[-1] if samples else None, config.data.template, rubric_weights(config)))

    return open_


def _sample(reg: Registry):
    def sample(name: str | None, index: Any) -> str:
        path = _path(reg, name)
        return run_sample_html(str(path) if path else None, index)

    return sample


def _overlay(reg: Registry):
    def overlay(names: list[str] | None) -> Any:
        runs = {}
        for name in names or []:
            path = _path(reg, name)
            if path is None:
                continue
            try:
                runs[name] = open_run(path).metrics()
            except (UserError, FileNotFoundError, RunFileError):
                continue
        return overlay_frame(runs)

    return overlay


def _watch(reg: Registry):
    def watch_(name: str | None) -> tuple[Any, Any, str]:
        path = _path(reg, name)
        if path is None:
            return gr.skip(), gr.skip(), messages.warning(run_choice.no_run(reg, name))
        watch.register(open_run(path))
        return str(path), watch.Seen(), messages.ok(f"The Train tab now shows {name}.")

    return watch_


def _resume(reg: Registry):
    def resume(name: str | None) -> tuple[Any, Any, str]:
        path = _path(reg, name)
        if path is None:
            return gr.skip(), gr.skip(), messages.warning(run_choice.no_run(reg, name))
        try:
            run = resume_run(str(path))
        except UserError as exc:
            return gr.skip(), gr.skip(), messages.error(str(exc), "Not resumed")
        return str(run.path), watch.Seen(), messages.ok(f"Resumed {name}; follow it in the Train tab.")

    return resume


def _delete(reg: Registry):
    def delete(name: str | None, confirmed: bool) -> tuple[str, bool]:
        path = _path(reg, name)
        if path is None:
            return messages.warning(run_choice.no_run(reg, name)), False
        if not confirmed:
            return messages.warning(f"Tick 'Yes, delete…' to delete {name}: its checkpoints, adapter and exports "
                                    "go with it."), False
        try:
            run = open_run(path)
        except FileNotFoundError as exc:
            return messages.error(str(exc)), False
        if job.worker_alive(run):
            return messages.error(f"{name} is training: stop it before deleting it."), False
        busy = children_using(run.path)
        if busy:
            return messages.error(f"`{busy[0]}` is working on {name} right now (Evaluate or Export tab): delete it "
                                  "once that is done."), False
        shutil.rmtree(run.path)
        watch.forget(str(run.path))
        return messages.ok(f"Deleted {name}."), False

    return delete


def _fmt(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{value:.3f}"


def _pct(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{100 * value:.1f}%"
