"""The Train tab: start, stop, resume with auto-fit and the memory verdict; live curves, progress,
hints, sampled groups and the log tail of the run being watched, refreshed by a `gr.Timer`.

Training runs in the engine's child process (job.start); this tab only writes the run's config,
starts the child, asks for a stop (job.request_stop, which returns at once) and reads the run
directory back through the shared monitors in `watch`. A reload or a restarted app finds the
running job again (`watch.reattach`). Each tick also sets which of Start, Stop and Resume the
watched run allows. Plots get `None` until they have rows and a fresh frame
whenever their set of series changes (Gradio 6's LinePlot otherwise draws no lines).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from grpo_box import job
from grpo_box.config import ConfigError
from grpo_box.errors import UserError
from grpo_box.models import is_bundled
from grpo_box.runs import RunDir, open_run

from . import fields, messages, watch
from .child import check_no_model_child
from .curves import AXIS_FORMAT, PLOTS, plot_frame, step_axis
from .gauge import model_arch
from .registry import Registry
from .state import UIState
from .train_view import hints_html, rubric_weights, run_sample_html, sample_choices, sample_html, status_html

# Each poll costs the shared CPU a little: every 2 s cost a tiny CPU step 4.4%, every 4 s nothing
# measurable (bench/ui.py), and a step takes longer than that anyway.
TICK_SECONDS = 4.0
PLOT_ROWS = (("reward", "signal"), ("length", "memory"), ("optim", "lr", "kl"))  # KL shows only when beta > 0
PLOT_IDS = [plot for row in PLOT_ROWS for plot in row]
AUTO_FIT = "auto_fit"
assert sorted(PLOT_IDS) == sorted(PLOTS)


# -- build ----------------------------------------------------------------------------------------
def build(reg: Registry) -> None:
    reg.add("train.run", gr.State(None))  # path of the run this page watches
    reg.add("train.seen", gr.State(watch.Seen()))
    reg.add("train.verdict", gr.HTML(elem_id="train-verdict"))
    with gr.Row():
        # the same setting as Setup's "auto_fit" (one value in the state, shown in both tabs)
        reg.add("train.autofit", fields.widget(fields.spec(AUTO_FIT), reg["app.state"].value.value(AUTO_FIT),
                                               label="Auto-fit", elem_id="train-autofit"))
        reg.add("train.force", gr.Checkbox(label="Start even if the estimate says it will not fit", value=False,
                                           elem_id="train-force"))
    with gr.Row():
        reg.add("train.start", gr.Button("Start training", variant="primary", elem_id="train-start"))
        reg.add("train.stop", gr.Button("Stop (save a checkpoint, then stop)", variant="stop", elem_id="train-stop"))
        reg.add("train.resume", gr.Button("Resume", elem_id="train-resume"))
        reg.add("train.more_steps", gr.Number(label="More steps (to continue a finished run)", value=0, step=1,
                                              elem_id="train-more-steps"))  # checked by _resume, in its message
    reg.add("train.message", gr.HTML(elem_id="train-message"))
    reg.add("train.status", gr.HTML(elem_id="train-status"))
    reg.add("train.hints", gr.HTML(elem_id="train-hints"))
    for row in PLOT_ROWS:
        with gr.Row():
            for plot in row:
                _plot(reg, plot)
    with gr.Accordion("Sampled groups: every completion of a prompt, scored", open=True):
        reg.add("train.sample_pick", gr.Dropdown(label="Logged group", choices=[], elem_id="train-sample-pick"))
        reg.add("train.sample_view", gr.HTML(elem_id="train-sample-view"))
    with gr.Accordion("Log", open=False):
        reg.add("train.log", gr.Textbox(label="train.log (last lines)", lines=12, max_lines=12, interactive=False,
                                        elem_id="train-log", autoscroll=True))
    reg.add("train.timer", gr.Timer(TICK_SECONDS))
    # what a page does when it opens (find the running job); a button too, for API clients
    reg.add("train.reattach", gr.Button("Show the running job", visible=False, elem_id="train-reattach"))


def _plot(reg: Registry, plot: str) -> None:
    title, y_title, _ = PLOTS[plot]
    reg.add(f"train.plot_{plot}", gr.LinePlot(None, x="step", y="value", color="series", title=title,
                                              y_title=y_title, x_title="step", height=260, x_axis_format=AXIS_FORMAT,
                                              y_axis_format=AXIS_FORMAT, visible=plot != "kl",
                                              elem_id=f"train-plot-{plot}"))


# -- wire -----------------------------------------------------------------------------------------
def wire(reg: Registry) -> None:
    state, run, seen = reg["app.state"], reg["train.run"], reg["train.seen"]
    view = _view_outputs(reg)
    reg["train.start"].click(_start(reg), inputs=[state, reg["train.force"]],
                             outputs=[run, seen, reg["train.message"]], api_name="train_start") \
        .then(_tick, inputs=[run, seen, state], outputs=[seen, *view], api_visibility="private")
    reg["train.stop"].click(_stop, inputs=[run], outputs=[reg["train.message"]], api_name="train_stop")
    reg["train.resume"].click(_resume, inputs=[run, reg["train.more_steps"]],
                              outputs=[run, seen, reg["train.message"], reg["train.more_steps"]],
                              api_name="train_resume")
    reg["train.timer"].tick(_tick, inputs=[run, seen, state], outputs=[seen, *view], api_name="train_poll",
                            show_progress="hidden")
    reg["train.sample_pick"].change(run_sample_html, inputs=[run, reg["train.sample_pick"]],
                                    outputs=[reg["train.sample_view"]], api_visibility="private")
    state.change(_verdict(reg), inputs=[state], outputs=[reg["train.verdict"]], api_visibility="private")
    state.change(lambda st: st.value(AUTO_FIT), inputs=[state], outputs=[reg["train.autofit"]],
                 api_visibility="private")
    reg["train.autofit"].input(_set_autofit, inputs=[state, reg["train.autofit"]],
                               outputs=[state, reg[f"setup.{AUTO_FIT}"]], api_name="train_autofit")
    inputs, outputs, load = page_load(reg)
    reg["train.reattach"].click(load, inputs=inputs, outputs=outputs, api_name="train_reattach")


def page_load(reg: Registry) -> tuple[list[Any], list[Any], Any]:
    """(inputs, outputs, fn) for the app's load event: watch the running job, else the latest run."""

    def load(current: str | None, state: UIState) -> tuple[Any, ...]:
        path = watch.reattach() or current or watch.latest_run(reg.ctx.runs_dir)
        return path, watch.Seen(), _verdict(reg)(state)

    return [reg["train.run"], reg["app.state"]], [reg["train.run"], reg["train.seen"], reg["train.verdict"]], load


def _view_outputs(reg: Registry) -> list[Any]:
    return [reg["train.status"], reg["train.hints"], reg["train.log"], reg["train.sample_pick"],
            reg["train.sample_view"], *[reg[f"train.plot_{p}"] for p in PLOT_IDS],
            reg["train.start"], reg["train.stop"], reg["train.resume"]]


def _buttons(busy: bool) -> tuple[Any, Any, Any]:
    """Start, Stop and Resume as the watched run allows: while its worker lives only Stop is offered
    (the engine refuses the others anyway, but a button that cannot work should look it)."""
    return gr.update(interactive=not busy), gr.update(interactive=busy), gr.update(interactive=not busy)


# -- handlers -------------------------------------------------------------------------------------
def _verdict(reg: Registry):
    def verdict(state: UIState) -> str:
        """The memory verdict for the current form (VRAM, or RAM without a GPU), repeated where the
        user presses Start."""
        try:
            config = state.config()
        except UserError as exc:
            return messages.error(str(exc), "The configuration needs a fix before training")
        result = _preflight(reg, config)
        kind = {"fits": "ok", "tight": "warning", "will not fit": "error"}.get(result.verdict or "", "warning")
        if reg.ctx.hardware.gpu is None:
            if result.verdict == "fits" and config.preset != "cpu":
                kind = "warning"  # a GPU preset on the CPU: it fits the RAM but crawls
            ram = f" RAM: {result.ram_note}." if result.ram_note else ""
            return messages.box(kind, _cpu_note(config) + ram, "Memory")
        return messages.box(kind, result.message, "Memory")

    return verdict


def _preflight(reg: Registry, config: Any, force: bool = False) -> Any:
    """The engine's preflight on this machine: against the GPU's VRAM, or without one the RAM. The
    model's shape comes through the gauge's cache, so an unknown Hub id offline is not asked again
    on every change (the engine would skip the estimate too)."""
    from grpo_box.memory import Card, PreflightResult, preflight

    hw = reg.ctx.hardware
    try:
        arch = model_arch(config.model.name)
    except ConfigError as exc:
        return PreflightResult(True, None, f"memory estimate skipped: {exc}", Card(None, "unknown model shape"))
    return preflight(config, vram_gb=hw.gpu.vram_gb if hw.gpu else None, ram_gb=hw.ram_gb, force=force, arch=arch)


def _cpu_note(config: Any) -> str:
    if config.preset == "cpu" and is_bundled(config.model.name):
        return f"No GPU: training runs on the CPU with the bundled model, {messages.CPU_PRESET_PACE}."
    if config.preset == "cpu":
        return (f"No GPU: training runs on the CPU with {config.model.name}; the bundled model takes "
                f"{messages.CPU_PRESET_PACE}, a larger model takes longer.")
    return (f"No GPU, but the {config.preset} preset is for a {config.preset.upper()} card: on the CPU it runs without "
            "4-bit or vLLM and a step can take many minutes. Choose the cpu preset in Setup.")


def _set_autofit(state: UIState, on: bool) -> tuple[UIState, bool]:
    """Train's auto-fit box sets the state's auto_fit, which Setup shows too (and the command prints)."""
    return state.set(AUTO_FIT, bool(on)), bool(on)


def _start(reg: Registry):
    def start(state: UIState, force: bool) -> tuple[Any, Any, str]:
        """Write the run's config and start its training child; a message says what happened."""
        from grpo_box.train import start_run

        try:
            config = state.config()
            refusal = _refusal(reg, config, force)
            if refusal:
                return gr.skip(), gr.skip(), messages.error(refusal, "Not started")
            job.check_machine_free()  # before a run folder is made for a start that cannot happen
            check_no_model_child("Training")
            _release_chat_model()
            run = start_run(config)
            try:
                started = job.start(run)
            except UserError:
                run.discard_untrained()  # nothing trained in it: no half-made run left
                raise
        except UserError as exc:
            return gr.skip(), gr.skip(), messages.error(str(exc), "Not started")
        watch.register(run, started)
        return str(run.path), watch.Seen(), messages.ok(f"Started {run.path.name}. Curves appear after the first step.")

    return start


def _refusal(reg: Registry, config: Any, force: bool) -> str | None:
    result = _preflight(reg, config, force)
    return None if result.proceed else f"{result.message}. Tick 'Start even if…' to try anyway."


def _release_chat_model() -> None:
    """Free the Chat tab's cached model before training needs the memory (when that tab exists)."""
    try:
        from . import chat_cache  # type: ignore[attr-defined]
    except ImportError:
        return
    chat_cache.release()


def _stop(path: str | None) -> str:
    if not path:
        return messages.warning("No run is being watched.")
    run = open_run(path)
    if not job.worker_alive(run):
        return messages.warning(f"{run.path.name} is not training (state: {run.status().get('state')}).")
    try:
        job.request_stop(run)
    except UserError as exc:
        return messages.error(str(exc))
    return messages.ok("Stop requested: the run saves a checkpoint at the end of its current step, then stops.")


def _resume(path: str | None, more_steps: float | None) -> tuple[Any, Any, str, Any]:
    """Resume the watched run; "More steps" is used once (back to 0), so a later Resume of the same
    run, stopped again, goes on to the target it has instead of adding the steps a second time."""
    skip = gr.skip()
    if not path:
        return skip, skip, messages.warning("Choose a run to resume (Runs tab) first."), skip
    more = float(more_steps or 0)
    if more < 0 or not more.is_integer():
        return skip, skip, messages.error(f"More steps is {more_steps:g}: type a whole number of steps to add "
                                          "(0 resumes a stopped run where it stopped).", "Not resumed"), skip
    try:
        run = resume_run(path, int(more))
    except UserError as exc:
        return skip, skip, messages.error(str(exc), "Not resumed"), skip
    target = f", now to step {run.status().get('max_steps')}" if more else ""
    return (str(run.path), watch.Seen(), messages.ok(f"Resumed {run.path.name} from its last checkpoint{target}."),
            0 if more else skip)


def resume_run(path: str, more_steps: int = 0) -> RunDir:
    """Resume `path` in a child (after extending a finished run by `more_steps`); shared with the Runs tab."""
    run = open_run(path)
    # the engine's rule, worded for this page (it names the CLI's --steps)
    job.prepare_resume(run, more_steps or None, how='type how many more steps in "More steps" on the Train tab and click '
                       'Resume', before_change=lambda: check_no_model_child("Training"))
    _release_chat_model()
    started = job.start(run, resume=True)
    watch.register(run, started)
    return run


def _tick(path: str | None, seen: watch.Seen, state: UIState) -> tuple[Any, ...]:
    """One timer tick: poll the watched run; send plots and samples only when they changed."""
    skip = gr.skip()
    if not path:
        return (seen, "", hints_html([], 0.0), "", skip, skip, *[skip] * len(PLOT_IDS), *_buttons(False))
    try:
        update, metrics, samples, generation = watch.poll(path)
        config = watch.run_config(path)
    except (UserError, FileNotFoundError) as exc:
        return (seen, messages.error(str(exc)), skip, skip, skip, skip, *[skip] * len(PLOT_IDS), *_buttons(False))
    buttons = _buttons(update.alive)
    fresh = seen.run != path or seen.generation != generation
    status = status_html(config.output.run_name or path, update.status, metrics, update.alive, update.starting)
    log = update.log_tail
    if fresh:  # another run, or a rewrite: clear the plots first, draw on the next tick
        cleared = watch.Seen(path, generation, 0, 0)
        return (cleared, status, skip, log, gr.update(choices=[], value=None), sample_html(None, None),
                *[None] * len(PLOT_IDS), *buttons)
    if len(metrics) == seen.metrics and len(samples) == seen.samples:
        return (seen, status, skip, log, skip, skip, *[skip] * len(PLOT_IDS), *buttons)
    x_lim = step_axis(config.grpo.max_steps, metrics)
    shown = {"visible": config.grpo.beta > 0}  # the KL plot only where there is a KL term
    plots = [gr.update(value=plot_frame(p, metrics), x_lim=x_lim, **(shown if p == "kl" else {})) for p in PLOT_IDS]
    pick = gr.update(choices=sample_choices(samples), value=len(samples) - 1 if samples else None)
    view = sample_html(samples[-1] if samples else None, config.data.template, rubric_weights(config))
    new_seen = watch.Seen(path, generation, len(metrics), len(samples))
    return (new_seen, status, hints_html(metrics, config.grpo.beta), log, pick, view, *plots, *buttons)
