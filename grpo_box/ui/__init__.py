"""GRPO Box's Gradio app: the only package that imports gradio.

`build_app()` returns the page (tabs Setup, Data, Rewards, Train, Runs); `launch()` serves it.
Tabs are modules with `build(reg)` and `wire(reg)` over a "tab.name" component `Registry`; the
run configuration lives in one `UIState` (preset + overrides) in the `gr.State` "app.state".
Anything that loads a model or user code runs through the CLI in a child process (`child`).
"""

from __future__ import annotations

from .app import build_app, launch

__all__ = ["build_app", "launch"]
