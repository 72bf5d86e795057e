"""The Export tab: merge to 16-bit (with the parity check), GGUF files with the engine's
verification table, download links, the Ollama Modelfile; then Serve and Push (their own panels).

Merge and export run as `python -m grpo_box merge|export RUN …` in a child process, exactly as a
user would type them; their progress lines move the page's progress bar and the results are read
back from the files they write (`export/export.json`, `export/merged/grpo_box_merge.json`), so a
failed export (a full disk, a crash) leaves the earlier files and their table as they were. One
export runs at a time, and none while a training job runs: it would compete for the memory.
Downloads are served straight from the run folder (each file is registered once as a static path,
so multi-GB GGUFs are never copied into Gradio's cache). A base model whose 16-bit weights are not
on disk is found before any child starts, and the page says what to do in the app's own terms.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr

from grpo_box import job
from grpo_box.errors import UserError

from . import export_view, messages, push_panel, run_choice, serve_panel
from .child import ChildCancelled, ChildError, Claims, cancel_children, model_child_refusal
from .cli_stream import CHECK_FAILED, parse_percent, stream_cli
from .registry import Registry

EXPORT_TIMEOUT = 6 * 3600.0
_SLOT = Claims()  # one merge or export at a time in this app, under the key _ONE
_ONE = "export"
_STATIC: set[str] = set()  # download paths already allowed (gr.set_static_paths only ever appends)
_STATIC_LOCK = threading.Lock()
FOUR_BIT_LABEL = "Allow a 4-bit merge (lower quality; for Merge and Export)"
FOUR_BIT_HELP = ("Only used when the original 16-bit base weights are not on disk: the adapter is then merged into "
                 "the dequantized 4-bit base, so every weight keeps its 4-bit rounding and the merged model and its "
                 "GGUFs are of lower quality than base + adapter. The merge check says how far its replies drift. "
                 "Prefer downloading the 16-bit base.")


# -- build ----------------------------------------------------------------------------------------
def build(reg: Registry) -> None:
    from grpo_box.export import BITS_PER_WEIGHT, DEFAULT_QUANTS

    with gr.Row():
        reg.add("export.run", gr.Dropdown(label="Run", choices=[], allow_custom_value=True, elem_id="export-run",
                                          scale=4))
        reg.add("export.refresh", gr.Button("Refresh", elem_id="export-refresh", scale=0))
    reg.add("export.message", gr.HTML(elem_id="export-message"))
    reg.add("export.allow_4bit", gr.Checkbox(label=FOUR_BIT_LABEL, info=FOUR_BIT_HELP, value=False,
                                             elem_id="export-allow-4bit"))
    with gr.Accordion("1. Merge the LoRA into the base model (16-bit)", open=False):
        reg.add("export.merge", gr.Button("Merge", elem_id="export-merge"))
        reg.add("export.merge_report", gr.HTML(elem_id="export-merge-report"))
    gr.Markdown("### 2. GGUF for llama.cpp, Ollama and Open WebUI\nExport merges first when needed, then converts, "
                "quantizes and checks every file in llama.cpp against the merged model.")
    reg.add("export.quants", gr.CheckboxGroup(choices=list(BITS_PER_WEIGHT), value=list(DEFAULT_QUANTS),
                                              label="Quantizations (estimated size)", elem_id="export-quants"))
    with gr.Row():
        reg.add("export.lora", gr.Checkbox(label="Also the adapter alone as a GGUF LoRA (llama.cpp --lora, Ollama "
                                                 "ADAPTER)", value=False, elem_id="export-lora"))
        reg.add("export.start", gr.Button("Export", variant="primary", elem_id="export-start", scale=0))
        reg.add("export.cancel", gr.Button("Cancel", elem_id="export-cancel", scale=0, min_width=120))
    reg.add("export.table", gr.HTML(elem_id="export-table"))
    reg.add("export.files", gr.File(label="Downloads", file_count="multiple", interactive=False,
                                    elem_id="export-files"))
    reg.add("export.ollama", gr.Textbox(label="Ollama: create the model (one line per GGUF, each with its own "
                                              "Modelfile)", buttons=["copy"], interactive=False, lines=1,
                                        elem_id="export-ollama"))
    with gr.Accordion("Modelfile", open=False):
        reg.add("export.modelfile", gr.Code(label="Modelfile", interactive=False, elem_id="export-modelfile"))
    with gr.Accordion("3. Serve: an OpenAI-compatible server for Open WebUI", open=True):
        serve_panel.build(reg)
    with gr.Accordion("4. Push to the Hugging Face Hub", open=False):
        push_panel.build(reg)


# -- wire -----------------------------------------------------------------------------------------
def wire(reg: Registry) -> None:
    run = reg["export.run"]
    run_choice.wire_refresh(reg, "export", _show(reg), _view_outputs(reg) + [reg["export.message"]])
    run.change(_show(reg), inputs=[run], outputs=_view_outputs(reg) + [reg["export.message"]], api_name="export_show")
    reg["export.merge"].click(_merge(reg), inputs=[run, reg["export.allow_4bit"]],
                              outputs=[reg["export.message"], reg["export.merge_report"]], api_name="export_merge",
                              show_progress_on=[reg["export.merge_report"]])  # the message box stays readable
    reg["export.start"].click(_export(reg), inputs=[run, reg["export.quants"], reg["export.lora"],
                                                    reg["export.allow_4bit"]],
                              outputs=[reg["export.message"], *_view_outputs(reg)], api_name="export_run",
                              concurrency_limit=2, show_progress_on=[reg["export.table"]])
    reg["export.cancel"].click(_cancel(reg), inputs=[run], outputs=[reg["export.message"]], api_name="export_cancel")
    serve_panel.wire(reg)
    push_panel.wire(reg)


def page_load(reg: Registry) -> tuple[list[Any], list[Any], Any]:
    """(inputs, outputs, fn) for the app's load event: the run list (the newest run chosen) and the server."""

    def load(current: str | None) -> tuple[Any, ...]:
        return (run_choice.dropdown(reg, current), *serve_panel.status())

    return [reg["export.run"]], [reg["export.run"], reg["serve.status"], reg["serve.settings"]], load


def _view_outputs(reg: Registry) -> list[Any]:
    return [reg[k] for k in ("export.quants", "export.merge_report", "export.table", "export.files", "export.ollama",
                             "export.modelfile", "serve.gguf", "push.quant")]


# -- views ----------------------------------------------------------------------------------------
def quant_choices(run: Path) -> list[tuple[str, str]]:
    """Every quantization the engine knows, labelled with its estimated size for this run's model."""
    from grpo_box.export import BITS_PER_WEIGHT

    sizes = _sizes(run)
    return [(f"{q} (~{export_view.size_text(sizes[q])})" if sizes.get(q) else q, q) for q in BITS_PER_WEIGHT]


def _sizes(run: Path) -> dict[str, int]:
    from grpo_box.export import BITS_PER_WEIGHT, estimate_sizes
    from grpo_box.merge import locate_run_base
    from grpo_box.models import BaseSource
    from grpo_box.runs import open_run

    try:
        name = open_run(run).config().model.name
        try:
            base = locate_run_base(open_run(run), allow_4bit_merge=True)
        except UserError:  # the base is not on disk: the catalog may still know its size
            base = BaseSource(name, name)
        return estimate_sizes(base, list(BITS_PER_WEIGHT), False, False)
    except Exception:  # a size is a hint only
        return {}


def view(run: Path, quants: list[str] | None = None) -> list[Any]:
    """The outputs of `_view_outputs` for `run`'s current export files."""
    data = export_view.report(run)
    files = export_view.downloads(data, run)
    allow_static(files)
    ggufs = [p.name for p in run_choice.exported_ggufs(run)]
    models = [g for g in ggufs if "-lora-" not in g]
    kept = {} if quants is None else {"value": quants}
    shown, text = export_view.modelfile_preview(data)
    return [gr.update(choices=quant_choices(run), **kept),
            export_view.merge_html(export_view.merge_info(run)), export_view.table_html(data), files or None,
            export_view.ollama_commands(data), gr.update(value=text, label=shown or "Modelfile"),
            gr.update(choices=models, value=models[0] if models else None),
            gr.update(choices=models, value=models[0] if models else None)]


def allow_static(files: list[str]) -> None:
    """Let Gradio serve `files` from the run folder as they are (never copied); each path is added
    once, however often the page is viewed (Gradio keeps every path it is given)."""
    with _STATIC_LOCK:
        new = [f for f in dict.fromkeys(files) if f not in _STATIC]
        if new:
            gr.set_static_paths(new)
            _STATIC.update(new)


def _show(reg: Registry):
    def show(name: str | None) -> list[Any]:
        """What the run already has: the merge check, the verification table, downloads."""
        run = run_choice.run_path(reg, name)
        if run is None:
            return [gr.skip(), "", "", None, "", "", gr.update(choices=[], value=None),
                    gr.update(choices=[], value=None), running_note()]
        return [*view(run), running_note()]

    return show


# -- merge and export -----------------------------------------------------------------------------
_BUSY_TEXT = "Another merge or export is running in this app; try again when it is done."
KEPT = "the files it had started are removed and earlier exports of this run are as they were."


def _claim(what: str, name: str) -> bool:
    """Take the app's one merge/export slot, noting what runs in it (for a page opened meanwhile)."""
    return _SLOT.claim(_ONE, what=what, run=name, line="")


def _release() -> None:
    _SLOT.release(_ONE)


def running_note() -> str:
    """A page opened (or reloaded) while a merge or export runs: what it is and how far it got."""
    now = _SLOT.holder(_ONE)
    if not now:
        return ""
    where = f" ({now['line']})" if now.get("line") else ""
    return messages.warning(f"{now['what'].capitalize()} of {now['run']} running since {now['since']}{where}. Its "
                            "result shows here when it is done: press Refresh then.", "In progress")


def refusal(reg: Registry, run: Path | None, name: str | None = None) -> str | None:
    """Why a merge or export of run `name` (found at `run`) cannot start now, or None."""
    if run is None:
        return run_choice.no_run(reg, name)
    busy = job.running_run()
    if busy is not None:
        return (f"A training job is running ({busy.path.name}). Merging and exporting load the model and would "
                "compete with it for memory: export once it has finished, or stop it in the Train tab.")
    if reg.ctx.hardware.gpu is not None:  # an evaluation holds the card (a merge or export holds the slot)
        return model_child_refusal("Merging or exporting")
    return None


def base_problem(run: Path, allow_4bit: bool, what: str) -> str | None:
    """Why `what` (Merge, Export) cannot find the base weights it needs, in the app's terms, or None.

    The same lookup the child would make (files only, no model load, no network), so the page names
    the 4-bit checkbox and how to download the base instead of the CLI's flags."""
    from grpo_box.merge import locate_run_base
    from grpo_box.models import BaseWeightsMissingError
    from grpo_box.runs import open_run

    try:
        locate_run_base(open_run(run), allow_4bit_merge=allow_4bit)
    except BaseWeightsMissingError as exc:
        return base_missing_text(exc.why, exc.repo, exc.tried_4bit, what)
    except Exception:  # anything else: the child reports it in its own words
        return None
    return None


def base_missing_text(why: str, repo: str, tried_4bit: bool, what: str) -> str:
    """The engine's "16-bit base not on disk" in the app's terms: the 4-bit checkbox, not CLI flags."""
    download = (f"Download the 16-bit base in a terminal with `hf download {repo}` (it goes to the Hugging Face "
                f"cache, where {what} finds it), then press {what} again." if _hub_id(repo) else
                f"Train the run on a model whose 16-bit weights are on disk ({repo} holds 4-bit ones).")
    if tried_4bit:
        return f"{why}, and no 4-bit checkpoint of it is on disk either. {download}"
    return (f"{why}. A faithful merge needs the original 16-bit base. {download} Or tick '{FOUR_BIT_LABEL}' above "
            "Merge to merge into its dequantized 4-bit weights instead: a lower-quality model.")


def _hub_id(name: str) -> bool:
    return name.count("/") == 1 and not Path(name).exists()


def _merge(reg: Registry):
    def merge(name: str | None, allow_4bit: bool, progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
        """`python -m grpo_box merge RUN`: the merged model's greedy replies checked against base + adapter."""
        run = run_choice.run_path(reg, name)
        why = refusal(reg, run, name)
        why = why or base_problem(run, allow_4bit, "Merge")
        if why:
            return messages.error(why, "Not merged"), gr.skip()
        if not _claim("merge", name or ""):
            gr.Warning(_BUSY_TEXT, title="Not merged")  # a toast: the message box shows the running one's progress
            return gr.skip(), gr.skip()
        try:
            args = ["merge", str(run)] + (["--allow-4bit-merge"] if allow_4bit else [])
            result = stream_cli(args, timeout=EXPORT_TIMEOUT, on_line=lambda line: _progress(progress, line))
        except ChildCancelled:
            return messages.warning(f"The merge of {name} was cancelled; {KEPT}", "Cancelled"), gr.skip()
        except ChildError as exc:
            return messages.error(str(exc), "Merge failed"), gr.skip()
        finally:
            _release()
        report = export_view.merge_html(export_view.merge_info(run))
        if result.returncode == CHECK_FAILED:
            return messages.warning("The merged model answers unlike base + adapter on some prompts (see below).",
                                    "Merged, but the check failed"), report
        return messages.ok(f"Merged {name} into export/merged/."), report

    return merge


def _export(reg: Registry):
    def export(name: str | None, quants: list[str] | None, lora: bool, allow_4bit: bool,
               progress: gr.Progress = gr.Progress()) -> list[Any]:
        """`python -m grpo_box export RUN --quant …`: convert, quantize, verify; the table from export.json."""
        run = run_choice.run_path(reg, name)
        skip = [gr.skip()] * len(_view_outputs(reg))
        why = refusal(reg, run, name)
        if why:
            return [messages.error(why, "Not exported"), *skip]
        if not quants and not lora:
            return [messages.warning("Tick at least one quantization (or the LoRA GGUF)."), *skip]
        missing = base_problem(run, allow_4bit, "Export")
        if missing:
            return [messages.error(missing, "Not exported"), *skip]
        if not _claim("export", name or ""):
            gr.Warning(_BUSY_TEXT, title="Not exported")
            return [gr.skip(), *skip]
        args = ["export", str(run), "--quant", ",".join(quants or [])] + (["--lora"] if lora else []) + \
            (["--allow-4bit-merge"] if allow_4bit else [])
        progress(0.0, desc="starting the export")
        try:
            result = stream_cli(args, timeout=EXPORT_TIMEOUT, on_line=lambda line: _progress(progress, line))
        except ChildCancelled:
            return [messages.warning(f"The export of {name} was cancelled; {KEPT}", "Cancelled"), *view(run, quants)]
        except ChildError as exc:
            return [messages.error(f"{exc}\n\nEarlier exports of this run were left as they were.", "Export failed"),
                    *view(run, quants)]
        finally:
            _release()
        if result.returncode == CHECK_FAILED:
            note = messages.warning("The files were written, but some checks failed: see the red cells and the notes "
                                    "under the table.", "Exported, with failed checks")
        else:
            note = messages.ok("Every file was exported and passed its checks in llama.cpp.", "Exported")
        return [note, *view(run, quants)]

    return export


def _cancel(reg: Registry):
    def cancel(name: str | None) -> str:
        """Interrupt the run's merge or export (whichever page started it); earlier files stay."""
        run = run_choice.run_path(reg, name)
        if run is None:
            return messages.warning(run_choice.no_run(reg, name))
        now = _SLOT.holder(_ONE)
        if cancel_children(["merge", "export"], run):
            return messages.warning(f"Cancelling the {now['what'] if now else 'merge or export'} of {name}…",
                                    "Cancelling")
        other = f" (the {now['what']} running now is {now['run']}'s: choose that run to cancel it)" if now else ""
        return messages.warning(f"No merge or export of {name} is running in this app{other}.")

    return cancel


def _progress(progress: gr.Progress, line: str) -> None:
    parsed = parse_percent(line)
    if line.strip():
        _SLOT.note(_ONE, line=line.strip()[:120])
    if parsed is not None:
        progress(min(parsed[0], 1.0), desc=parsed[1])
