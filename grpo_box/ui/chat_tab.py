"""The Chat tab: talk to the trained model, its base model, or an exported GGUF, streaming; and
the same prompt to base and trained side by side (Compare, greedy by default).

The model is loaded in the app process (the only place it does so) and kept in `chat_cache`,
behind a lock: one reply generates at a time, and the page says when it waits for another page's
reply or for a training job that holds the GPU. Replies stream through the engine's own
`chat.stream_with`; each is shown as a collapsible "Reasoning" message (the reasoning block of the
run's template) followed by the answer. The run's system prompt is preselected and the sampling
sliders start from the engine's defaults (`chat.CHAT_SAMPLING`, `chat.COMPARE_SAMPLING`; the
comparison's seed comes with it). "Held-out prompt" fills the box with a question the model never
trained on and shows its reference answer.
"""

from __future__ import annotations

import contextlib
import functools
import html
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from grpo_box import chat, job
from grpo_box.chat import ChatSource, resolve_source
from grpo_box.errors import UserError
from grpo_box.inference import Sampling

from . import chat_cache, messages, run_choice
from .registry import Registry

REASONING_TITLE = "Reasoning"
WAIT_POLL_SECONDS = 2.0
Bot = list[dict[str, Any]]
NO_ANSWER = "*(no answer: the reply ended inside its reasoning, or without the answer part)*"


@dataclass(frozen=True)
class Note:
    """A message for the page while a reply is prepared (waiting, loading, where it runs) or when it failed."""

    html: str
    failed: bool = False
    finished: bool = False  # the reply is complete: the page can say how long it took


# -- build ----------------------------------------------------------------------------------------
def build(reg: Registry) -> None:
    with gr.Row():
        reg.add("chat.run", gr.Dropdown(label="Run", choices=[], allow_custom_value=True, elem_id="chat-run",
                                        scale=3))
        reg.add("chat.model", gr.Dropdown(label="Model", choices=_model_choices(None), value="trained",
                                          allow_custom_value=True,
                                          elem_id="chat-model", scale=3))
        reg.add("chat.refresh", gr.Button("Refresh", elem_id="chat-refresh", scale=0))
    reg.add("chat.note", gr.HTML(elem_id="chat-note"))
    with gr.Accordion("System prompt and sampling", open=False):
        reg.add("chat.system", gr.Textbox(label="System prompt (the run's own is preselected; empty sends none)",
                                          lines=3, elem_id="chat-system"))
        with gr.Row():
            reg.add("chat.temperature", gr.Slider(0.0, 2.0, value=chat.CHAT_SAMPLING.temperature, step=0.05,
                                                  label="Temperature (0 = greedy)", elem_id="chat-temperature"))
            reg.add("chat.top_p", gr.Slider(0.05, 1.0, value=chat.CHAT_SAMPLING.top_p, step=0.05, label="Top-p",
                                            elem_id="chat-top-p"))
            reg.add("chat.max_tokens", gr.Slider(16, 4096, value=chat.CHAT_SAMPLING.max_new_tokens, step=16,
                                                 label="Max new tokens", elem_id="chat-max-tokens"))
        reg.add("chat.when_training", gr.Radio([("wait for it to finish", "wait"), ("run on the CPU", "cpu")],
                                               value="wait", label="While a training job uses the GPU",
                                               elem_id="chat-when-training"))
    reg.add("chat.history", gr.State([]))  # the conversation as the model sees it (whole replies)
    reg.add("chat.bot", gr.Chatbot(label="Chat", height=420, elem_id="chat-bot", buttons=["copy"]))
    # lines=1: Gradio sends on Enter only for a one-line box (Shift+Enter adds a line; it grows to max_lines)
    reg.add("chat.input", gr.Textbox(label="Message", placeholder="Ask something… (Enter sends, Shift+Enter: "
                                     "a new line)", lines=1, max_lines=8, elem_id="chat-input"))
    with gr.Row(equal_height=True):
        reg.add("chat.send", gr.Button("Send", variant="primary", elem_id="chat-send", scale=2))
        reg.add("chat.stop", gr.Button("Stop", elem_id="chat-stop", scale=1))
        reg.add("chat.clear", gr.Button("Clear", elem_id="chat-clear", scale=1))
        reg.add("chat.heldout", gr.Button("Held-out prompt", elem_id="chat-heldout", scale=1))
    reg.add("chat.reference", gr.HTML(elem_id="chat-reference"))
    reg.add("chat.heldout_index", gr.State(-1))
    with gr.Accordion("Compare: the same prompt to the base and the trained model", open=True):
        with gr.Row():
            reg.add("chat.compare_input", gr.Textbox(label="Prompt", lines=2, scale=5, elem_id="chat-compare-input"))
            reg.add("chat.compare_temperature", gr.Slider(0.0, 2.0, value=chat.COMPARE_SAMPLING.temperature, step=0.05,
                                                          label="Temperature (0 = greedy)",
                                                          elem_id="chat-compare-temperature", scale=2))
            reg.add("chat.compare_go", gr.Button("Compare", variant="primary", elem_id="chat-compare-go", scale=1))
        with gr.Row():
            reg.add("chat.compare_base", gr.Chatbot(label="base model", height=360, elem_id="chat-compare-base"))
            reg.add("chat.compare_trained", gr.Chatbot(label="trained model", height=360,
                                                       elem_id="chat-compare-trained"))


# -- wire -----------------------------------------------------------------------------------------
def wire(reg: Registry) -> None:
    run = reg["chat.run"]
    sampling = [reg["chat.temperature"], reg["chat.top_p"], reg["chat.max_tokens"], reg["chat.when_training"]]
    run_choice.wire_refresh(reg, "chat", _models(reg), [reg["chat.model"]], inputs=[reg["chat.model"]])
    send = gr.on(  # the button, or Enter in the message box
        [reg["chat.send"].click, reg["chat.input"].submit], _send(reg),
        inputs=[run, reg["chat.model"], reg["chat.system"], *sampling, reg["chat.input"], reg["chat.history"],
                reg["chat.bot"]],
        outputs=[reg["chat.bot"], reg["chat.history"], reg["chat.input"], reg["chat.note"]],
        api_name="chat_send", concurrency_limit=8, show_progress="hidden")
    reg["chat.heldout"].click(_heldout(reg), inputs=[run, reg["chat.heldout_index"]],
                              outputs=[reg["chat.input"], reg["chat.reference"], reg["chat.heldout_index"],
                                       reg["chat.compare_input"]], api_name="chat_heldout")
    compare = reg["chat.compare_go"].click(
        _compare(reg), inputs=[run, reg["chat.system"], reg["chat.compare_input"], reg["chat.compare_temperature"],
                               *sampling[1:]],
        outputs=[reg["chat.compare_base"], reg["chat.compare_trained"], reg["chat.note"]],
        api_name="chat_compare", concurrency_limit=8, show_progress="hidden")
    # cleared only once the stream is cancelled: cleared alongside, a late chunk would bring the reply back
    reg["chat.clear"].click(None, cancels=[send, compare], api_visibility="private") \
        .then(lambda: ([], [], "", ""), outputs=[reg["chat.bot"], reg["chat.history"], reg["chat.reference"],
                                                 reg["chat.note"]], api_visibility="private")
    reg["chat.stop"].click(lambda: messages.warning("Stopped: the reply was cut short."), outputs=[reg["chat.note"]],
                           cancels=[send, compare], api_visibility="private")
    # another run: its model, not this stream; the chat is cleared only once the stream is cancelled,
    # or a last chunk of the old reply could land in the new run's chat
    run.change(None, cancels=[send, compare], api_visibility="private") \
        .then(_open(reg), inputs=[run], api_name="chat_open",
              outputs=[reg[k] for k in ("chat.system", "chat.model", "chat.note", "chat.bot", "chat.history",
                                        "chat.reference", "chat.compare_base", "chat.compare_trained",
                                        "chat.heldout_index")])


def page_load(reg: Registry) -> tuple[list[Any], list[Any], Any]:
    """(inputs, outputs, fn) for the app's load event: the run list, the newest run chosen."""
    return [reg["chat.run"]], [reg["chat.run"]], lambda current: run_choice.dropdown(reg, current)


# -- sources --------------------------------------------------------------------------------------
def _model_choices(run: Path | None) -> list[tuple[str, str]]:
    choices = [("trained: the run's base model + its adapter", "trained"), ("base model (untrained)", "base")]
    for gguf in run_choice.exported_ggufs(run) if run else []:
        if "-lora-" not in gguf.name:  # an adapter-only GGUF needs a base model beside it
            choices.append((f"GGUF: {gguf.name} (what Ollama will say)", f"gguf:{gguf.name}"))
    return choices


def source(run: Path, choice: str) -> tuple[ChatSource, bool]:
    """(source to load, whether to switch its adapter off) for a model choice on a run."""
    if choice.startswith("gguf:"):
        path = run / "export" / choice[len("gguf:"):]
        if not path.is_file():
            raise UserError(f"{path.name} is not in {run.name}'s export folder any more; refresh the page")
        if not run_choice.is_gguf_file(path):
            raise UserError(f"{path.name} is not a GGUF file (it does not start with the GGUF header); export it "
                            "again from the Export tab")
        return resolve_source(path), False
    base_only = resolve_source(run, base=True)
    try:
        trained = resolve_source(run)
    except chat.ChatError:
        if choice == "trained":
            raise UserError(no_adapter(run.name)) from None
        return base_only, False  # no adapter yet: the base model alone
    return trained, choice == "base"


def no_adapter(name: str, compare: bool = False) -> str:
    """The page's words for a run with no trained adapter (the engine's name the CLI's --base flag)."""
    what = "Compare needs one: train it first (Train tab)." if compare else (
        "Choose 'base model (untrained)' in Model, or train it first (Train tab).")
    return f"{name} has no trained adapter yet (no adapter/ and no checkpoint). {what}"


# -- handlers -------------------------------------------------------------------------------------
def _open(reg: Registry):
    def open_(name: str | None) -> tuple[Any, ...]:
        """Preselect the run's system prompt and list its models (adapter, base, exported GGUFs)."""
        run = run_choice.run_path(reg, name)
        empty = ([], [], "", [], [], -1)  # bot, history, reference, both panes, held-out position
        if run is None:
            return "", gr.update(choices=_model_choices(None), value="trained"), "", *empty
        try:
            system = chat.default_system_prompt(run) or ""
            has_adapter = _has_adapter(run)
        except UserError as exc:
            return "", gr.update(), messages.error(str(exc)), *empty
        note = "" if has_adapter else messages.warning(f"{name} has no trained adapter yet: you can chat with its "
                                                       "base model; train it to chat with the trained one.")
        value = "trained" if has_adapter else "base"
        return system, gr.update(choices=_model_choices(run), value=value), note, *empty

    return open_


def _models(reg: Registry):
    def models(name: str, chosen: str | None) -> tuple[Any]:
        """The run's models listed again (a GGUF exported since it was chosen); the choice kept while it exists."""
        run = run_choice.run_path(reg, name)
        if run is None:
            return (gr.skip(),)
        choices = _model_choices(run)
        kept = chosen if chosen in {value for _, value in choices} else choices[0][1]
        return (gr.update(choices=choices, value=kept),)

    return models


def _has_adapter(run: Path) -> bool:
    from grpo_box.inference import run_adapter_dir
    from grpo_box.runs import open_run

    return run_adapter_dir(open_run(run)) is not None


def _send(reg: Registry):
    def send(name: str | None, choice: str | None, system: str | None, temperature: float, top_p: float,
             max_tokens: float, when_training: str, text: str | None, history: list[dict[str, str]] | None,
             bot: Bot | None) -> Iterator[tuple[Any, ...]]:
        """Stream one reply: (chat messages, history, cleared input, note) as the reply grows."""
        bot, history = list(bot or []), list(history or [])
        text = (text or "").strip()
        run = run_choice.run_path(reg, name)
        if run is None or not text:
            ask = "Type a message first." if run is not None else "Choose a run and type a message first."
            yield bot, history, gr.skip(), messages.warning(run_choice.no_run(reg, name, ask))
            return
        try:
            src, base = source(run, choice or "trained")
        except UserError as exc:
            yield bot, history, gr.skip(), messages.error(str(exc))
            return
        bot.append({"role": "user", "content": text})
        turn = [*history, {"role": "user", "content": text}]
        reply, note = "", gr.skip()
        sampling = chat.sampling_with(chat.CHAT_SAMPLING, temperature, top_p, max_tokens)
        for update in _generate(reg, src, base, turn, system, sampling, when_training):
            if isinstance(update, Note) and update.finished:
                note = update.html  # shown with the finished reply, so "finished" means the page is final
                continue
            if isinstance(update, Note) and update.failed:  # the message goes back to the box, to send again
                yield bot[:-1], history, text, update.html
                return
            if isinstance(update, Note):
                yield bot, history, "", update.html
                continue
            reply = update.text
            # the history follows the page at every chunk: a reply stopped halfway is part of the
            # conversation the next message continues, as the page shows it
            yield bot + _assistant(update), _with_reply(turn, reply), "", gr.skip()
        yield bot + _assistant(chat.ChatChunk.of("", reply, src.template, done=True)), _with_reply(turn, reply), "", note

    return send


def _with_reply(turn: list[dict[str, str]], reply: str) -> list[dict[str, str]]:
    return [*turn, {"role": "assistant", "content": reply}]


def _compare(reg: Registry):
    def compare(name: str | None, system: str | None, text: str | None, temperature: float, top_p: float,
                max_tokens: float, when_training: str) -> Iterator[tuple[Any, ...]]:
        """The same prompt to the base model, then to the trained one; both panes stream."""
        text = (text or "").strip()
        run = run_choice.run_path(reg, name)
        if run is None or not text:
            ask = "Type a prompt to compare." if run is not None else "Choose a run and type a prompt to compare."
            yield gr.skip(), gr.skip(), messages.warning(run_choice.no_run(reg, name, ask))
            return
        try:
            src = resolve_source(run)
        except chat.ChatError:
            yield gr.skip(), gr.skip(), messages.error(no_adapter(run.name, compare=True),
                                                       "Compare needs a trained adapter")
            return
        except UserError as exc:
            yield gr.skip(), gr.skip(), messages.error(str(exc), "Compare needs a trained adapter")
            return
        user = [{"role": "user", "content": text}]
        panes: dict[bool, Bot] = {True: list(user), False: list(user)}
        sampling = chat.sampling_with(chat.COMPARE_SAMPLING, temperature, top_p, max_tokens)
        for base in (True, False):
            for update in _generate(reg, src, base, user, system, sampling, when_training):
                if isinstance(update, Note):
                    yield panes[True], panes[False], update.html
                    if update.failed:
                        return
                    continue
                panes[base] = user + _assistant(update)
                yield panes[True], panes[False], gr.skip()

    return compare


def _generate(reg: Registry, src: ChatSource, base: bool, turn: list[dict[str, str]], system: str | None,
              sampling: Sampling, when_training: str) -> Iterator[chat.ChatChunk | Note]:
    """Notes and chunks of one reply: wait for another page's reply, decide where to run (holding the
    model, so a training job started meanwhile counts), wait for the GPU or load, stream."""
    has_gpu = reg.ctx.hardware.gpu is not None
    while True:
        if chat_cache.busy():
            yield Note(messages.warning("Another page's reply is being generated; this one starts when it is done."))
        with chat_cache.turn():
            where = _placement(src, has_gpu, when_training)
            if not where.wait:
                yield from _reply(src, base, turn, system, sampling, where, has_gpu)
                return
            chat_cache.drop_gpu_model()  # a job started elsewhere (the CLI, another app) gets the VRAM too
        yield Note(messages.warning(where.note))  # the model is let go while this page waits for training
        time.sleep(WAIT_POLL_SECONDS)


def _reply(src: ChatSource, base: bool, turn: list[dict[str, str]], system: str | None, sampling: Sampling,
           where: chat_cache.Placement, has_gpu: bool) -> Iterator[chat.ChatChunk | Note]:
    """Load (if needed) and stream one reply on `where.device`; call inside `chat_cache.turn()`."""
    if not chat_cache.is_loaded(src, where.device):
        yield Note(messages.ok(f"Loading {Path(src.model).name}… {where.note}"))
    try:
        generator = chat_cache.generator(src, where.device, has_gpu)
    except Exception as exc:  # a broken model file, a missing base: say so in the page, keep the app up
        yield Note(messages.error(f"could not load {src.model}: {exc}", "Model not loaded"), failed=True)
        return
    yield Note(messages.ok(where.note))
    off = generator.adapter_disabled() if base else contextlib.nullcontext()
    started = time.monotonic()
    try:
        stream = chat.stream_with(generator, src, turn, system, sampling)
        with off, contextlib.closing(stream):  # closed first: a cancelled reply stops generating, then unlocks
            for chunk in stream:
                if chat_cache.stop_requested():
                    yield Note(messages.warning("Stopped: a training job is starting and needs the memory."),
                               failed=True)
                    return
                yield chunk
    except Exception as exc:  # generation failed (out of memory, a broken GGUF): tell the page
        yield Note(messages.error(f"{type(exc).__name__}: {exc}", "The reply failed"), failed=True)
        return
    which = "The base model's reply" if base else "The reply"
    yield Note(messages.ok(f"{where.note} {which} finished in {time.monotonic() - started:.1f} s."), finished=True)


def _placement(src: ChatSource, has_gpu: bool, when_training: str) -> chat_cache.Placement:
    running = job.running_run()
    return chat_cache.placement(src, has_gpu, running.path.name if running else None, when_training)


def _assistant(chunk: chat.ChatChunk) -> Bot:
    """The assistant's messages for a reply so far: a collapsible reasoning block, then the answer."""
    out: Bot = []
    if chunk.think:
        thinking = not chunk.done and not chunk.answer
        out.append({"role": "assistant", "content": chunk.think,
                    "metadata": {"title": REASONING_TITLE, "status": "pending" if thinking else "done"}})
    if chunk.answer or not chunk.think:
        out.append({"role": "assistant", "content": chunk.answer})
    elif chunk.done:  # only reasoning: say so, or the bubble looks empty with its block collapsed
        out.append({"role": "assistant", "content": NO_ANSWER})
    return out


# -- held-out prompts -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _held_out(run: str, stamp: float) -> list[tuple[str, str]]:
    """(user message, reference answer) of the run's held-out rows (cached per config version)."""
    from grpo_box.data import load_rows
    from grpo_box.runs import open_run

    _, held = load_rows(open_run(run).config())
    rows = held.to_dict()
    prompts = [next((m["content"] for m in reversed(p) if m.get("role") == "user"), "") for p in rows["prompt"]]
    return list(zip(prompts, [str(a) for a in rows["answer"]]))


def held_out_problem(name: str, exc: BaseException) -> str:
    """Why the held-out rows of run `name` could not be read: the engine's own message for a data
    problem it knows, else the error's type and text (a Hub dataset that failed to load, no network)."""
    if isinstance(exc, UserError):
        return str(exc)
    return (f"could not read the held-out rows of {name}: {type(exc).__name__}: {exc}. Check the run's data.source "
            "(in its config.yaml): a Hub dataset needs the network the first time it is read.")


def _heldout(reg: Registry):
    def heldout(name: str | None, index: int | None) -> tuple[Any, ...]:
        """The next held-out question in the message box (and Compare's), its reference beside it."""
        run = run_choice.run_path(reg, name)
        if run is None:
            return gr.skip(), messages.warning(run_choice.no_run(reg, name)), gr.skip(), gr.skip()
        try:
            rows = _held_out(str(run), (run / "config.yaml").stat().st_mtime)
        except Exception as exc:  # the run's data (a file, a Hub dataset) could not be read: a message, not a crash
            return gr.skip(), messages.error(held_out_problem(name or "", exc), "No held-out prompts"), gr.skip(), \
                gr.skip()
        if not rows:
            return gr.skip(), messages.warning(f"{name} has no held-out rows (data.eval_size is 0)."), gr.skip(), \
                gr.skip()
        i = ((index if isinstance(index, int) else -1) + 1) % len(rows)
        prompt, answer = rows[i]
        reference = (f'<div id="chat-reference-answer">Held-out prompt {i + 1} of {len(rows)}. Reference answer: '
                     f"<strong>{html.escape(answer)}</strong></div>")
        return prompt, reference, i, prompt

    return heldout
