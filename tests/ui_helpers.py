"""Helpers for the app's API tests: launch `build_app()` on a free port, call endpoints by key."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveApp:
    blocks: Any
    url: str
    runs_dir: Path
    files_dir: Path

    @property
    def reg(self) -> Any:
        return self.blocks.registry

    def client(self) -> "Session":
        """A new browser-like session (its own app state)."""
        from gradio_client import Client

        return Session(self, Client(self.url, verbose=False, download_files=str(self.files_dir / "downloads")))


@dataclass
class Session:
    app: LiveApp
    client: Any

    def call(self, api_name: str, *args: Any) -> dict[str, Any]:
        """Call an endpoint; its results keyed "tab.name" (State and layout outputs are not returned)."""
        result = self.client.predict(*args, api_name=api_name)
        values = result if isinstance(result, tuple) else (result,)
        keys = self.app.reg.client_keys(self.app.blocks, api_name)
        assert len(keys) == len(values), (keys, values)
        return dict(zip(keys, values))


    def form(self, api_name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Call a form endpoint (its inputs are a set of components) with the page's initial values,
        `changes` ({"tab.name": value}) applied, in the order Gradio lists the inputs."""
        fn = next(f for f in self.app.blocks.fns.values() if f.api_name == api_name.lstrip("/"))
        keys = [self.app.reg.key_of(c) for c in fn.inputs if not isinstance(c, _state_type())]
        unknown = set(changes) - set(keys)
        assert not unknown, f"{unknown} are not inputs of {api_name}"
        return self.call(api_name, *[changes.get(k, self.app.reg[k].value) for k in keys])


def _state_type() -> type:
    import gradio as gr

    return gr.State


def launch_app(tmp: Path, hardware: Any = None) -> Iterator[LiveApp]:
    """The app on a free port, its runs and files under `tmp`; `hardware` replaces the detected
    machine (a `grpo_box.ui.context.Hardware`), e.g. to judge a run against a given RAM."""
    from grpo_box.ui import build_app
    from grpo_box.ui.context import AppContext

    runs, files = tmp / "runs", tmp / "files"
    ctx = AppContext.create(str(runs), str(files), hardware=hardware) if hardware else None
    blocks = build_app(runs_dir=str(runs), files_dir=str(files), ctx=ctx)
    blocks.queue()
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                  run_history=False, show_error=True)
    try:
        yield LiveApp(blocks, f"http://127.0.0.1:{port}/", runs, files)
    finally:
        blocks.close()


def value(update: Any) -> Any:
    """A component's value from a returned update ({"value": ..., "__type__": "update"}) or plain value."""
    return update.get("value") if isinstance(update, dict) and update.get("__type__") == "update" else update


def child_runs(monkeypatch: Any, code: str) -> None:
    """The app's CLI children (`run_cli`, `stream_cli`) run this Python code instead of `python -m grpo_box …`."""
    from grpo_box.ui import child

    monkeypatch.setattr(child, "cli_command", lambda args: [sys.executable, "-c", code])
