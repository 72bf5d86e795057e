"""The Gradio app: one page of tabs over the engine, built from small tab modules.

Each tab is a module with `build(reg)` (create its components inside the current `gr.Tab`,
registering each as "tab.name") and `wire(reg)` (attach its events); every tab is built before
any is wired, so a tab's events may use components of tabs to its right. The shared state is a
`gr.State` holding a `UIState`, registered as "app.state", and `reg.ctx` is the `AppContext`
(hardware, runs folder, where uploads go). Tabs listed in `TABS` whose module does not exist yet
show a placeholder, so later tabs are added by dropping in a module and a line here.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import sys
from pathlib import Path
from types import ModuleType

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no network threads

import gradio as gr  # noqa: E402

from . import watch  # noqa: E402
from .context import AppContext  # noqa: E402
from .registry import Registry  # noqa: E402
from .state import UIState  # noqa: E402

# (label, id, module): the tab's button is "#tab-<id>-button" in the page.
TABS: list[tuple[str, str, str]] = [
    ("Setup", "setup", "grpo_box.ui.setup_tab"),
    ("Data", "data", "grpo_box.ui.data_tab"),
    ("Rewards", "rewards", "grpo_box.ui.rewards_tab"),
    ("Train", "train", "grpo_box.ui.train_tab"),
    ("Evaluate", "evaluate", "grpo_box.ui.evaluate_tab"),
    ("Chat", "chat", "grpo_box.ui.chat_tab"),
    ("Export", "export", "grpo_box.ui.export_tab"),
    ("Runs", "runs", "grpo_box.ui.runs_tab"),
]
CSS = (".grpo-box-error, .grpo-box-warning, .grpo-box-ok { font-size: 0.95em; }\n"
       ".grpo-box-table { border-collapse: collapse; } .grpo-box-table td, .grpo-box-table th "
       "{ border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }")


def _tab_module(name: str) -> ModuleType | None:
    """The tab's module, or None when it does not exist yet (an import error inside it is raised)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def initial_state(ctx: AppContext) -> UIState:
    """The proposed preset for this machine (cpu and the bundled model without a GPU)."""
    state = UIState(ctx.hardware.proposed_preset)
    if ctx.runs_dir:
        state.set("output.runs_dir", ctx.runs_dir)
    return state


def build_app(runs_dir: str | None = None, *, files_dir: str | None = None,
              ctx: AppContext | None = None) -> gr.Blocks:
    """The whole app; `runs_dir` is where runs go (default <data home>/runs), `files_dir` where
    uploaded data and saved reward files go (default the data home). `blocks.registry` is the
    component registry (for tests and scripts)."""
    ctx = ctx or AppContext.create(runs_dir, files_dir)
    reg = Registry()
    reg.ctx = ctx
    modules: list[ModuleType] = []
    with gr.Blocks(title="GRPO Box", analytics_enabled=False) as blocks:
        reg.add("app.state", gr.State(initial_state(ctx)))
        gr.Markdown("# GRPO Box\nTeach a model to reason with GRPO: choose the setup, the data and the "
                    "rewards, then train and watch it learn.", elem_id="app-header")
        with reg.add("app.tabs", gr.Tabs(elem_id="app-tabs")):
            for label, tab_id, module_name in TABS:
                with reg.add(f"app.tab_{tab_id}", gr.Tab(label, id=tab_id, elem_id=f"tab-{tab_id}")):
                    module = _tab_module(module_name)
                    if module is None:
                        gr.Markdown(f"The {label} tab is coming.", elem_id=f"{tab_id}-placeholder")
                        continue
                    module.build(reg)
                    modules.append(module)
        for module in modules:
            module.wire(reg)
        for module in modules:  # e.g. the Train tab reattaches to a running job when a page opens
            if hasattr(module, "page_load"):
                inputs, outputs, fn = module.page_load(reg)
                blocks.load(fn, inputs=inputs, outputs=outputs, api_visibility="private")
    blocks.registry = reg  # type: ignore[attr-defined]
    return blocks


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth: tuple[str, str] | None = None,
           runs_dir: str | None = None, open_browser: bool | None = None, *, prevent_thread_lock: bool = False,
           files_dir: str | None = None) -> gr.Blocks:
    """Build and serve the app. `open_browser=None` opens a tab only where there is a display."""
    if not is_loopback(host) and auth is None:
        print(f"WARNING: serving on {host}, reachable from other machines, without --auth: anyone who can reach "
              f"port {port} can start training and read your runs. Add --auth USER:PASS or use --host 127.0.0.1.",
              file=sys.stderr, flush=True)
    blocks = build_app(runs_dir, files_dir=files_dir)
    watch.follow_in_background()  # auto-fit retries and dead workers are handled with no page open
    blocks.queue(default_concurrency_limit=4)
    blocks.launch(server_name=host, server_port=port, share=share, auth=auth, show_error=True,
                  inbrowser=has_display() if open_browser is None else open_browser, run_history=False,
                  footer_links=["api", "settings"], prevent_thread_lock=prevent_thread_lock, css=CSS,
                  allowed_paths=[str(Path(files_dir).expanduser())] if files_dir else None)
    return blocks
