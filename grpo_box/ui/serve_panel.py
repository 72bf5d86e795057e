"""The Export tab's Serve panel: an OpenAI-compatible llama.cpp server for a GGUF, for Open WebUI.

Start or stop the server (`server_slot`: one at a time, stopped when the app exits) on a GGUF of
the chosen run, or on any .gguf path; loopback by default. The page shows the URL and whether it
runs, copyable Open WebUI settings (the base URL, the Docker `host.docker.internal` form, the
model name), and a "test request" button that sends one chat completion through the `openai`
client and shows the reply.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlsplit

import gradio as gr

from grpo_box.errors import UserError
from grpo_box.serve import DEFAULT_HOST, DEFAULT_PORT

from . import messages, run_choice, server_slot
from .app import is_loopback
from .registry import Registry

TEST_PROMPT = "Say hello in one short sentence."


def build(reg: Registry) -> None:
    with gr.Row():
        reg.add("serve.gguf", gr.Dropdown(label="GGUF of this run", choices=[], allow_custom_value=True,
                                          elem_id="serve-gguf", scale=3))
        reg.add("serve.path", gr.Textbox(label="…or another .gguf file (path)", elem_id="serve-path", scale=3))
    with gr.Row():
        reg.add("serve.host", gr.Textbox(value=DEFAULT_HOST, label="Host (127.0.0.1: this machine only; 0.0.0.0 for "
                                                                   "Open WebUI in Docker or other machines)",
                                         elem_id="serve-host"))
        reg.add("serve.port", gr.Number(value=DEFAULT_PORT, label="Port (0 = any free port)", precision=0, minimum=0,
                                        maximum=65535, elem_id="serve-port"))
    with gr.Row():
        reg.add("serve.start", gr.Button("Start server", variant="primary", elem_id="serve-start"))
        reg.add("serve.stop", gr.Button("Stop server", variant="stop", elem_id="serve-stop"))
        reg.add("serve.test", gr.Button("Send a test request", elem_id="serve-test"))
    reg.add("serve.status", gr.HTML(elem_id="serve-status"))
    reg.add("serve.settings", gr.Textbox(label="Open WebUI: Settings → Connections → OpenAI API", lines=4,
                                         buttons=["copy"], interactive=False, elem_id="serve-settings"))
    reg.add("serve.reply", gr.Textbox(label="Reply to the test request", lines=3, interactive=False,
                                      elem_id="serve-reply"))


def wire(reg: Registry) -> None:
    outputs = [reg["serve.status"], reg["serve.settings"]]
    reg["serve.start"].click(_start(reg), inputs=[reg["export.run"], reg["serve.gguf"], reg["serve.path"],
                                                  reg["serve.host"], reg["serve.port"]],
                             outputs=outputs, api_name="serve_start")
    reg["serve.stop"].click(_stop, outputs=outputs, api_name="serve_stop")
    reg["serve.test"].click(_test, outputs=[reg["serve.reply"], reg["serve.status"]], api_name="serve_test")


def status() -> tuple[str, str]:
    """(status box, Open WebUI settings) of the app's server."""
    handle = server_slot.current()
    if handle is None:
        return '<div id="serve-state" data-state="stopped">No server running.</div>', ""
    return (f'<div id="serve-state" data-state="running" class="grpo-box-ok" style="padding:6px">Running: '
            f'<code id="serve-url">{html.escape(handle.url)}</code> serving <code>{html.escape(handle.model)}</code> '
            f"(log: {html.escape(str(handle.log_path))})</div>", settings(handle.url, handle.model))


def settings(url: str, model: str) -> str:
    port = urlsplit(url).port
    return (f"Base URL: {url}\n"
            f"Base URL from Open WebUI in Docker: http://host.docker.internal:{port}/v1 (serve on host 0.0.0.0; on "
            f"Linux start the container with --add-host=host.docker.internal:host-gateway)\n"
            f"API key: anything (e.g. none)\n"
            f"Model: {model}")


def chosen_gguf(reg: Registry, run_name: str | None, pick: str | None, path: str | None) -> Path:
    """The GGUF to serve: a typed path wins over the run's pick; checked to be a real GGUF."""
    if path and path.strip():
        gguf = Path(path.strip()).expanduser()
    else:
        run = run_choice.run_path(reg, run_name)
        if run is None or not pick:
            raise UserError("Choose a run with an exported GGUF (export one above), or type a .gguf path.")
        gguf = run / "export" / pick
    if not gguf.is_file():
        raise UserError(f"{gguf} does not exist: export a GGUF first, or check the path")
    if not run_choice.is_gguf_file(gguf):
        raise UserError(f"{gguf.name} is not a GGUF file: it does not start with the GGUF header. Choose a .gguf "
                        "file made by the export (or by llama.cpp's converter)")
    return gguf


def _start(reg: Registry):
    def start(run_name: str | None, pick: str | None, path: str | None, host: str | None,
              port: float | None) -> tuple[str, str]:
        """Start the llama.cpp server on the chosen GGUF; returns when it answers (or says why not)."""
        host = (host or DEFAULT_HOST).strip()
        try:
            gguf = chosen_gguf(reg, run_name, pick, path)
            server_slot.start(gguf, host, int(port or 0))
        except UserError as exc:
            box, settings_text = status()
            return messages.error(str(exc), "Server not started") + box, settings_text
        box, settings_text = status()
        warn = "" if is_loopback(host) else messages.warning(
            f"Listening on {host}: other machines on your network can reach this server (it has no API key).")
        return messages.ok(f"Serving {gguf.name}.") + warn + box, settings_text

    return start


def _stop() -> tuple[str, str]:
    served = server_slot.stop()
    box, settings_text = status()
    note = messages.ok(f"Stopped the server for {served}.") if served else messages.warning("No server was running.")
    return note + box, settings_text


def _test() -> tuple[str, str]:
    """One chat completion through the `openai` client against the running server."""
    handle = server_slot.current()
    if handle is None:
        return "", messages.warning("Start the server first.") + status()[0]
    import openai

    client = openai.OpenAI(base_url=handle.url, api_key="not-needed", timeout=120)
    try:
        reply = client.chat.completions.create(model=handle.model, max_tokens=128, temperature=0,
                                               messages=[{"role": "user", "content": TEST_PROMPT}])
    except openai.OpenAIError as exc:
        return "", messages.error(f"the test request failed: {exc}") + status()[0]
    choice = reply.choices[0]
    text = (choice.message.content or "").strip()
    return text, messages.ok(f"The server answered \"{TEST_PROMPT}\" (finish reason: {choice.finish_reason}).") + \
        status()[0]
