"""The Runs tab's "Export for cluster" panel: the opened run as a multi-GPU TRL job bundle.

It calls the engine's `cluster.build_bundle` in the app's own process, as the CLI's `cluster`
command does: building a bundle reads the run's config and data and copies files (the user's
reward file is copied, never imported), and loads no model, tokenizer or user code, so it needs
no child process. The result box shows the bundle's folder and its GPU split and batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from grpo_box.cluster import build_bundle
from grpo_box.cluster_plan import BACKENDS
from grpo_box.errors import UserError

from .registry import Registry

PathOf = Callable[[str | None], Path | None]


def build(reg: Registry) -> None:
    with gr.Accordion("Export for cluster (TRL + accelerate + a vLLM server)", open=False):
        with gr.Row():
            reg.add("runs.cluster_gpus", gr.Number(label="GPUs in all (vLLM server + training)", value=8,
                                                   minimum=1, precision=0, elem_id="runs-cluster-gpus"))
            reg.add("runs.cluster_backend", gr.Dropdown(label="Backend", choices=list(BACKENDS), value="zero3",
                                                        elem_id="runs-cluster-backend"))
            reg.add("runs.cluster_go", gr.Button("Export for cluster", elem_id="runs-cluster-go", scale=0))
        reg.add("runs.cluster_result", gr.Textbox(label="Bundle", lines=5, interactive=False,
                                                  elem_id="runs-cluster-result"))


def wire(reg: Registry, path_of: PathOf) -> None:
    reg["runs.cluster_go"].click(export(path_of), inputs=[reg["runs.pick"], reg["runs.cluster_gpus"],
                                                          reg["runs.cluster_backend"]],
                                 outputs=[reg["runs.cluster_result"]], api_name="runs_cluster")


def export(path_of: PathOf) -> Callable[[str | None, Any, str], str]:
    def run(name: str | None, gpus: Any, backend: str) -> str:
        path = path_of(name)
        if path is None:
            return "Choose a run first."
        try:
            return build_bundle(path, int(gpus or 0), backend=backend).summary()
        except UserError as exc:
            return f"Not exported: {exc}"

    return run
