"""The Evaluate tab: did training help? Base against trained on the run's held-out split.

Evaluation runs as `python -m grpo_box eval RUN --json [--limit N] [--k K]` in a child process
(it loads the model and the run's reward functions, user code included), its progress lines
moving the page's progress bar forward through its phases (base, then trained; each greedy, then
sampled for pass@k). One evaluation of a run at a time: a second one, from another page, would
write the same `eval.json`, so it is refused while the first runs; Cancel (from any page) interrupts
it and leaves `eval.json` as it was. The result is read back from
the run's `eval.json`, so opening a run shows its last evaluation without rerunning it, including
the one training itself wrote.
The page shows a summary table, a bar chart (accuracy, the weighted total and each reward's mean,
base against trained) and the held-out examples, filterable to those training fixed or broke.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from grpo_box import job
from grpo_box.errors import UserError

from . import eval_view, messages, run_choice
from .child import (ChildCancelled, ChildError, Claims, cancel_children, model_child_refusal, parse_progress,
                    run_json)
from .registry import Registry

EVAL_TIMEOUT = 6 * 3600.0
_RUNNING = Claims()  # the runs being evaluated now, by folder


def build(reg: Registry) -> None:
    gr.Markdown("Score the run's **held-out** prompts (never trained on) with its own rubric, for the base model "
                "and for the trained adapter. The result is kept in the run's `eval.json`.")
    with gr.Row():
        reg.add("evaluate.run", gr.Dropdown(label="Run", choices=[], allow_custom_value=True, elem_id="evaluate-run",
                                            scale=4))
        reg.add("evaluate.refresh", gr.Button("Refresh runs", elem_id="evaluate-refresh", scale=0))
    with gr.Row():
        reg.add("evaluate.limit", gr.Number(label="Rows to score (0 = the whole held-out split)", value=0, minimum=0,
                                            precision=0, elem_id="evaluate-limit"))
        reg.add("evaluate.k", gr.Number(label="pass@k: samples per prompt (1 = greedy only)", value=1, minimum=1,
                                        maximum=64, precision=0, elem_id="evaluate-k"))
        with gr.Column(scale=1, min_width=200):
            reg.add("evaluate.start", gr.Button("Evaluate base and trained", variant="primary",
                                                elem_id="evaluate-start"))
            reg.add("evaluate.cancel", gr.Button("Cancel", elem_id="evaluate-cancel"))
    reg.add("evaluate.message", gr.HTML(elem_id="evaluate-message"))
    with gr.Row():
        reg.add("evaluate.summary", gr.HTML(elem_id="evaluate-summary"))
        reg.add("evaluate.chart", gr.BarPlot(None, x="bar", y="value", color="model", title="Base against trained",
                                             x_title="", y_title="", x_label_angle=-30, height=320,
                                             color_map={"base": "#9e9e9e", "trained": "#ef6c00"},
                                             elem_id="evaluate-chart"))
    reg.add("evaluate.filter", gr.Radio(list(eval_view.FILTERS), value="all", label="Show examples",
                                        elem_id="evaluate-filter"))
    reg.add("evaluate.examples", gr.HTML(elem_id="evaluate-examples"))


def wire(reg: Registry) -> None:
    shown = [reg["evaluate.summary"], reg["evaluate.chart"], reg["evaluate.filter"], reg["evaluate.examples"]]
    run_choice.wire_refresh(reg, "evaluate", _show(reg), [reg["evaluate.message"], *shown])
    reg["evaluate.run"].change(lambda: None, outputs=[reg["evaluate.chart"]], api_visibility="private") \
        .then(_show(reg), inputs=[reg["evaluate.run"]], outputs=[reg["evaluate.message"], *shown],
              api_name="evaluate_show")
    reg["evaluate.start"].click(_evaluate(reg), inputs=[reg["evaluate.run"], reg["evaluate.limit"], reg["evaluate.k"]],
                                outputs=[reg["evaluate.message"], *shown], api_name="evaluate_run",
                                concurrency_limit=2)
    reg["evaluate.cancel"].click(_cancel(reg), inputs=[reg["evaluate.run"]], outputs=[reg["evaluate.message"]],
                                 api_name="evaluate_cancel")
    reg["evaluate.filter"].change(_filter(reg), inputs=[reg["evaluate.run"], reg["evaluate.filter"]],
                                  outputs=[reg["evaluate.examples"]], api_visibility="private")


def page_load(reg: Registry) -> tuple[list[Any], list[Any], Any]:
    """(inputs, outputs, fn) for the app's load event: the run list, the newest run chosen."""
    return [reg["evaluate.run"]], [reg["evaluate.run"]], lambda current: run_choice.dropdown(reg, current)


def _template(run: Path) -> str | None:
    try:
        from grpo_box.runs import open_run

        return open_run(run).config().data.template
    except Exception:  # an unreadable config only loses the reasoning/answer split
        return None


def view(run: Path, which: str = "all") -> tuple[Any, ...]:
    """(summary, chart, filter, examples) for the run's eval.json."""
    results = eval_view.read(run)
    frame = eval_view.bar_frame(results)
    found = eval_view.counts(results)
    choices = [("all", "all")] + [(f"{name} ({found[name]})", name) for name in eval_view.FILTERS[1:]]
    order = list(frame["bar"]) if frame is not None else None
    chart = gr.update(value=frame, y_lim=eval_view.bar_limits(frame), sort=order)
    return (eval_view.summary_html(results), chart, gr.update(choices=choices, value=which),
            eval_view.examples_html(results, which, _template(run)))


def _show(reg: Registry):
    def show(name: str | None) -> tuple[Any, ...]:
        """The run's last evaluation, read back from its eval.json (nothing is rerun)."""
        run = run_choice.run_path(reg, name)
        if run is None:
            return "", "", None, gr.update(value="all"), ""
        return (_note(name, run), *view(run))

    return show


def _note(name: str, run: Path) -> str:
    """What the page says above a run's results: an evaluation in progress, or none made yet."""
    holder = _RUNNING.holder(str(run))
    if holder is not None:
        where = f" ({holder['line']})" if holder.get("line") else ""
        return messages.warning(f"{name} is being evaluated since {holder['since']}{where}. The result shows here "
                                "when it is done: press Refresh then.", "In progress")
    results = eval_view.read(run)
    if results:
        return out_of_date(name, run, results)
    return messages.warning(f"{name} has no evaluation yet: press 'Evaluate base and trained'.")


def out_of_date(name: str, run: Path, results: dict[str, Any]) -> str:
    """A warning when the run has trained past the step its evaluation scored ("" when current)."""
    from grpo_box.inference import adapter_dir_step, run_adapter_dir
    from grpo_box.runs import open_run

    scored = results.get("trained_step")
    try:
        opened = open_run(run)
        adapter = run_adapter_dir(opened)
        now = adapter_dir_step(opened, adapter) if adapter is not None else None
    except (OSError, UserError):
        return ""
    if scored is None or now is None or now <= scored:
        return ""
    return messages.warning(f"This evaluation scored {name}'s adapter at step {scored}; the run has trained on to step "
                            f"{now} since. Press 'Evaluate base and trained' for the current model.", "Out of date")


def _evaluate(reg: Registry):
    def evaluate(name: str | None, limit: float | None, k: float | None,
                 progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        """Run the evaluation in a child process; the page shows eval.json once it is written."""
        skip = (gr.skip(),) * 4
        run = run_choice.run_path(reg, name)
        if run is None:
            return messages.warning(run_choice.no_run(reg, name)), *skip
        busy = job.running_run()
        if busy is not None and busy.path == run.resolve():
            return messages.error(f"{name} is still training: its adapter changes with every checkpoint, so its score "
                                  "would not be the finished model's. Evaluate it once it has finished or been "
                                  "stopped.",
                                  "Not started"), *skip
        if busy is not None and reg.ctx.hardware.gpu is not None:
            return messages.error(f"A training job is running ({busy.path.name}) and needs the GPU; evaluate once it "
                                  "has finished or been stopped.", "Not started"), *skip
        refusal = model_child_refusal(f"Evaluating {name}") if reg.ctx.hardware.gpu is not None else None
        if refusal:  # a second model on the card would run it out of memory
            return messages.error(refusal, "Not started"), *skip
        if not _RUNNING.claim(str(run), run=name):
            return messages.error(already_running(name or "", _RUNNING.holder(str(run))), "Not started"), *skip
        try:
            _run_eval(run, limit, int(k or 1), progress)
        except ChildCancelled:
            kept = " Its earlier results are kept." if eval_view.read(run) else ""
            return messages.warning(f"The evaluation of {name} was cancelled.{kept}", "Cancelled"), *skip
        except ChildError as exc:
            return messages.error(str(exc), "Evaluation failed"), *skip
        finally:
            _RUNNING.release(str(run))
        note = f" (training {busy.path.name} shares the CPU, so it took longer)" if busy is not None else ""
        return messages.ok(f"Evaluated {name}; the results are saved in its eval.json.{note}"), *view(run)

    return evaluate


def _cancel(reg: Registry):
    def cancel(name: str | None) -> str:
        """Interrupt the run's evaluation (whichever page started it); its eval.json stays as it was."""
        run = run_choice.run_path(reg, name)
        if run is None:
            return messages.warning(run_choice.no_run(reg, name))
        if not cancel_children(["eval"], run):
            return messages.warning(f"No evaluation of {name} is running in this app.")
        return messages.warning(f"Cancelling the evaluation of {name}…", "Cancelling")

    return cancel


def already_running(name: str, holder: dict[str, Any] | None) -> str:
    """Why a second evaluation of run `name` does not start (`holder`: the running one's claim)."""
    since = f" since {holder['since']}" if holder else ""
    return (f"{name} is already being evaluated{since} (from this or another page). Both would write its "
            "eval.json, so this one was not started: its result shows here when it is done (press Refresh then).")


def _run_eval(run: Path, limit: float | None, k: int, progress: gr.Progress) -> None:
    args = ["eval", str(run), "--json", "--k", str(k)]
    if limit and int(limit) > 0:
        args += ["--limit", str(int(limit))]
    progress(0.0, desc="loading the model")
    bar = progress_bar(progress, k)

    def on_line(line: str) -> None:
        bar(line)
        if parse_progress(line) is not None:  # a page opened meanwhile says how far it got
            _RUNNING.note(str(run), line=line.strip())

    run_json(args, timeout=EVAL_TIMEOUT, on_line=on_line)


def phase_fraction(line: str, k: int) -> float | None:
    """Where a progress line ("  base: greedy: 3/8 prompts", "  trained: 4 samples: 1/8 prompts") lies
    on one bar: base then trained, each greedy then (with pass@k, k > 1) sampled, in equal parts."""
    counted = parse_progress(line)
    if counted is None:
        return None
    text = line.strip()
    per_model = 2 if k > 1 else 1
    phase = (per_model if text.startswith("trained") else 0) + (1 if per_model == 2 and "greedy" not in text else 0)
    done, total = counted
    return (phase + min(done / total, 1.0)) / (2 * per_model)


def progress_bar(progress: Callable[..., Any], k: int) -> Callable[[str], None]:
    """The child's line callback: moves `progress` forward only, whatever order the lines come in."""
    reached = [0.0]

    def on_line(line: str) -> None:
        fraction = phase_fraction(line, k)
        if fraction is None:
            return
        reached[0] = max(reached[0], fraction)
        progress(reached[0], desc=line.strip())

    return on_line


def _filter(reg: Registry):
    def filter_(name: str | None, which: str | None) -> str:
        run = run_choice.run_path(reg, name)
        if run is None:
            return ""
        return eval_view.examples_html(eval_view.read(run), which or "all", _template(run))

    return filter_
