"""The Runs tab's "Export for cluster" panel: the opened run as a multi-GPU TRL job bundle.

It calls the engine's `cluster.build_bundle` in the app's own process, as the CLI's `cluster`
command does: building a bundle reads the run's config and data and copies files (the user's
reward file is copied, never imported), and loads no model, tokenizer or user code, so it needs
no child process. The fields are the CLI's options (GPUs, nodes, vLLM GPUs, backend, output
folder) with the engine's defaults and help (cluster_plan.OPTION_HELP); the boxes set no limits of
their own, so a split that cannot work is refused with the engine's message, as on the command
line. The result box shows the bundle's folder and its GPU split and batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from grpo_box.cluster import build_bundle
from grpo_box.cluster_plan import BACKENDS, DEFAULT_BACKEND, DEFAULT_NODES, EXAMPLE_GPUS, OPTION_HELP
from grpo_box.errors import UserError

from .registry import Registry

PathOf = Callable[[str | None], Path | None]
Handler = Callable[[str | None, Any, Any, Any, str, str | None], str]
INPUTS = ("runs.pick", "runs.cluster_gpus", "runs.cluster_nodes", "runs.cluster_vllm_gpus", "runs.cluster_backend",
          "runs.cluster_out")  # the handler's arguments, in order


def build(reg: Registry) -> None:
    with gr.Accordion("Export for cluster (TRL + accelerate + a vLLM server)", open=False):
        with gr.Row():
            reg.add("runs.cluster_gpus", gr.Number(label="GPUs", info=OPTION_HELP["gpus"], value=EXAMPLE_GPUS,
                                                   precision=0, elem_id="runs-cluster-gpus"))
            reg.add("runs.cluster_nodes", gr.Number(label="Nodes", info=OPTION_HELP["nodes"], value=DEFAULT_NODES,
                                                    precision=0, elem_id="runs-cluster-nodes"))
            reg.add("runs.cluster_vllm_gpus", gr.Number(label="vLLM GPUs (empty: the default)",
                                                        info=OPTION_HELP["vllm_gpus"], value=None, precision=0,
                                                        elem_id="runs-cluster-vllm-gpus"))
            reg.add("runs.cluster_backend", gr.Dropdown(label="Backend", info=OPTION_HELP["backend"],
                                                        choices=list(BACKENDS), value=DEFAULT_BACKEND,
                                                        elem_id="runs-cluster-backend"))
        with gr.Row():
            reg.add("runs.cluster_out", gr.Textbox(label="Output folder (empty: the default)", info=OPTION_HELP["out"],
                                                   elem_id="runs-cluster-out"))
            reg.add("runs.cluster_go", gr.Button("Export for cluster", elem_id="runs-cluster-go", scale=0))
        reg.add("runs.cluster_result", gr.Textbox(label="Bundle", lines=5, interactive=False,
                                                  elem_id="runs-cluster-result"))


def wire(reg: Registry, path_of: PathOf) -> None:
    reg["runs.cluster_go"].click(export(path_of), inputs=[reg[key] for key in INPUTS],
                                 outputs=[reg["runs.cluster_result"]], api_name="runs_cluster")


def export(path_of: PathOf) -> Handler:
    def run(name: str | None, gpus: Any, nodes: Any, vllm_gpus: Any, backend: str, out: str | None) -> str:
        path = path_of(name)
        if path is None:
            return "Choose a run first."
        try:
            bundle = build_bundle(path, _count(gpus, 0), nodes=_count(nodes, DEFAULT_NODES), backend=backend,
                                  vllm_gpus=None if _empty(vllm_gpus) else _count(vllm_gpus, 0),
                                  out=(out or "").strip() or None)
        except UserError as exc:
            return f"Not exported: {exc}"
        return bundle.summary()

    return run


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _count(value: Any, empty: int) -> int:
    """A box's whole number (Gradio gives a float or None); an empty box is `empty`, which the engine
    refuses with its own message where no default applies (0 GPUs)."""
    return empty if _empty(value) else int(round(float(value)))
