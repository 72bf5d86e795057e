"""Choosing a run in the Evaluate, Chat and Export tabs: names under the app's runs folder.

Runs live under `reg.ctx.runs_dir` (or the engine's default folder); a dropdown holds their
names, newest first by creation (the engine's `runs.run_dirs`, which skips a run deleted while it
is listed), and a handler turns a name back into its folder, refusing names that would leave the
runs folder. `exported_ggufs` lists a run's model GGUFs for the Chat and Serve pickers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from grpo_box.runs import CONFIG, EXPORT, default_runs_dir, run_dirs


def runs_root(reg: Any) -> Path:
    return Path(reg.ctx.runs_dir).expanduser() if reg.ctx.runs_dir else default_runs_dir()


def run_names(reg: Any) -> list[str]:
    """Run folder names, most recently created first."""
    return [run.path.name for run in run_dirs(runs_root(reg))]


def run_path(reg: Any, name: str | None) -> Path | None:
    """The folder of run `name`, or None for no choice, a vanished run or a name outside the root."""
    if not name:
        return None
    root = runs_root(reg).resolve()
    path = (root / name).resolve()
    if path.parent != root or not (path / CONFIG).is_file():
        return None
    return path


def no_run(reg: Any, name: str | None, ask: str = "Choose a run first.") -> str:
    """What to say when `run_path` found no run: `ask` for no choice, else that the run is gone
    (deleted from the Runs tab or another page while this one still listed it)."""
    if name and run_path(reg, name) is None:
        return f"Run {name} no longer exists (deleted?): press Refresh and choose another."
    return ask


def dropdown(reg: Any, current: str | None = None) -> Any:
    """An update listing the runs, keeping `current` when it still exists, else the newest run."""
    names = run_names(reg)
    if current in names:  # the value is left alone: a refresh that was slow must not undo a choice made meanwhile
        return gr.update(choices=names)
    return gr.update(choices=names, value=names[0] if names else None)


def wire_refresh(reg: Any, tab: str, reshow: Callable[..., tuple[Any, ...]] | None = None,
                 outputs: Sequence[Any] = (), inputs: Sequence[Any] = ()) -> None:
    """The tab's run list is read again on its Refresh button and whenever the tab is opened: a run
    trained or deleted meanwhile (in another tab or page) is listed or dropped, and a vanished
    choice moves to the newest. When the choice stays, `reshow(name, *inputs)` fills `outputs` again: the
    dropdown's own change event fires only for a new value, and what the run holds (its evaluation,
    its exports) may have changed since it was chosen."""
    run = reg[f"{tab}.run"]

    def refresh(current: str | None, *extra: Any) -> tuple[Any, ...]:
        update = dropdown(reg, current)
        if reshow is not None and current and "value" not in update:
            return update, *reshow(current, *extra)
        return update, *(gr.skip(),) * len(outputs)

    for event in (reg[f"{tab}.refresh"].click, reg[f"app.tab_{tab}"].select):
        event(refresh, inputs=[run, *inputs], outputs=[run, *outputs], api_visibility="private")


def exported_ggufs(run: Path) -> list[Path]:
    """The run's exported GGUF files (model and LoRA), by name; temporary `.partial` files left out."""
    folder = run / EXPORT
    return sorted(p for p in folder.glob("*.gguf") if p.is_file()) if folder.is_dir() else []


def is_gguf_file(path: Path) -> bool:
    """Whether `path` starts with the GGUF magic bytes (a .gguf name alone proves nothing)."""
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False
