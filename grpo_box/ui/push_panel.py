"""The Export tab's Push panel: upload a run's GGUF, merged model or adapter to the Hugging Face Hub.

The upload runs as `python -m grpo_box push RUN --repo ID --what …` in a child process. The token
comes from the password box or from the app's `HF_TOKEN`; it reaches the child only through its
environment (never its command line, which `ps` shows), is never stored, logged or echoed, and the
box is emptied after every attempt. The engine scrubs it from error messages; this panel also
turns the usual failures (no network, a refused token, a missing repo name) into plain advice.
"""

from __future__ import annotations

import os
import re
import gradio as gr

from . import messages, run_choice
from .child import ChildError, run_cli
from .registry import Registry

WHAT = [("a GGUF file", "gguf"), ("the merged 16-bit model", "merged"), ("the LoRA adapter", "adapter")]
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OFFLINE = ("offline mode", "cannot reach", "connectionerror", "connection error", "max retries",
            "name or service not known", "temporary failure in name resolution", "network is unreachable",
            "failed to establish a new connection", "timed out")
PUSH_TIMEOUT = 6 * 3600.0


def build(reg: Registry) -> None:
    with gr.Row():
        reg.add("push.what", gr.Radio(WHAT, value="gguf", label="What to push", elem_id="push-what"))
        reg.add("push.quant", gr.Dropdown(label="Which GGUF", choices=[], allow_custom_value=True,
                                          elem_id="push-quant"))
    with gr.Row():
        reg.add("push.repo", gr.Textbox(label="Hub repo id (USER/NAME, created if missing)", elem_id="push-repo"))
        reg.add("push.token", gr.Textbox(label="Hugging Face token with write access (or set HF_TOKEN before starting "
                                               "the app); never stored", type="password", elem_id="push-token"))
    with gr.Row():
        reg.add("push.public", gr.Checkbox(label="Make a new repo public (default: private)", value=False,
                                           elem_id="push-public"))
        reg.add("push.go", gr.Button("Push", variant="primary", elem_id="push-go", scale=0))
    reg.add("push.message", gr.HTML(elem_id="push-message"))


def wire(reg: Registry) -> None:
    reg["push.go"].click(_push(reg), inputs=[reg["export.run"], reg["push.what"], reg["push.quant"], reg["push.repo"],
                                             reg["push.token"], reg["push.public"]],
                         outputs=[reg["push.message"], reg["push.token"]], api_name="push_run")


def check_token(token: str) -> str | None:
    """Why `token` cannot be a Hugging Face token, or None."""
    if not token:
        return "Paste a Hugging Face token with write access, or set HF_TOKEN before starting the app."
    if not token.startswith("hf_") or any(c.isspace() for c in token):
        return ("That does not look like a Hugging Face token (they start with hf_ and have no spaces); create one "
                "with write access at https://huggingface.co/settings/tokens")
    return None


def advice(message: str) -> str:
    """The engine's failure message with what to do about the usual causes."""
    low = message.lower()
    if any(sign in low for sign in _OFFLINE):
        return ("No network: the Hugging Face Hub could not be reached (or HF_HUB_OFFLINE is set). Nothing was "
                f"uploaded; connect and push again.\n\n{message}")
    if "401" in low or "unauthorized" in low or "invalid user token" in low or "403" in low:
        return (f"The Hub refused the token: check that it is valid and has write access.\n\n{message}")
    return message


def _push(reg: Registry):
    def push(name: str | None, what: str, quant: str | None, repo: str | None, token: str | None,
             public: bool) -> tuple[str, str]:
        """Upload in a child process; returns (message, "") — the token box is always emptied."""
        run = run_choice.run_path(reg, name)
        repo = (repo or "").strip()
        token = (token or "").strip() or os.environ.get("HF_TOKEN", "").strip()
        if run is None:
            return messages.warning(run_choice.no_run(reg, name)), ""
        if not _REPO.match(repo):
            return messages.error("Give the Hub repo as USER/NAME (e.g. alice/my-reasoner).", "Not pushed"), ""
        why = check_token(token)
        if why:
            return messages.error(why, "Not pushed"), ""
        args = ["push", str(run), "--repo", repo, "--what", what or "gguf"]
        if what == "gguf" and quant:
            args += ["--quant", _quant_of(quant)]
        if public:
            args.append("--public")
        try:
            result = run_cli(args, timeout=PUSH_TIMEOUT, env={"HF_TOKEN": token})
        except ChildError as exc:
            return messages.error(_scrub(advice(str(exc)), token), "Not pushed"), ""
        done = _scrub(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "Uploaded.", token)
        return messages.ok(done), ""

    return push


def _quant_of(file_name: str) -> str:
    """"demo-q4_k_m.gguf" -> "q4_k_m" (the CLI picks a GGUF by its quantization)."""
    stem = file_name[:-len(".gguf")] if file_name.endswith(".gguf") else file_name
    return stem.rsplit("-", 1)[-1]


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
