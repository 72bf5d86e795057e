"""Chat with a trained model: streaming replies, think/answer sections, base-vs-trained side by side.

A chat source is whatever a user has after training: a run directory (the base model named in its
config plus its LoRA adapter), a merged Hugging Face directory, or an exported `.gguf` file (a
model name such as `bundled:…` or a Hub id works too). The run's system prompt is preselected so
the model is asked for the same output shape it was trained on, and `split_think_answer` cuts a
reply into its reasoning and its answer so the UI and CLI can show them apart, also mid-stream.

Back ends (`inference.load_for_generation`): on CPU, transformers + PEFT; on a CUDA machine,
Unsloth. Where the run trains with vLLM (`model.fast_inference`), whole replies (`reply`,
`side_by_side`) go through Unsloth's `fast_generate` with the adapter as a LoRA request, as
the run trains; streaming (`chat_stream`) stays on Unsloth's HF model, because vLLM's offline engine
only returns finished replies and a chat should show tokens as they come. Only one model is kept
(the last one loaded), so on such a run switching between streaming and whole replies reloads.

These are plain functions for the CLI and the Gradio tab. The cached model means a conversation
does not reload it on every turn. How replies are decoded is an `inference.Sampling`; the chat's
defaults are two of them, `CHAT_SAMPLING` and `COMPARE_SAMPLING`, which the CLI's flags and the
app's sliders start from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .config import RunConfig
from .errors import UserError
from .inference import BaseGenerator, Messages, Sampling, is_gguf, load_for_generation, run_adapter_dir
from .modeling import has_cuda
from .models import check_model_source, is_bundled, load_error
from .prompts import get_template, system_prompt as template_system_prompt
from .runs import CONFIG, RunDir, open_run

_RUN_SEARCH_DEPTH = 3  # export/merged/ and export/gguf/x.gguf sit this deep under their run
_PARTIAL_TAG = re.compile(r"<[/A-Za-z]*$")  # "<ans" at the end of a streamed reply: maybe a tag
THINK_LABEL, ANSWER_LABEL = "[thinking]", "[answer]"
# A chat reply: sampled, at Sampling's default length.
CHAT_SAMPLING = Sampling(temperature=0.7, top_p=0.95)
# Side by side: greedy, and one seed for both panes should a temperature be set, so that a
# difference between the panes comes from the adapter, not from sampling.
COMPARE_SAMPLING = replace(CHAT_SAMPLING, temperature=0.0, seed=0)


def sampling_with(default: Sampling, temperature: float | None, top_p: float, max_new_tokens: float) -> Sampling:
    """`default` (`CHAT_SAMPLING` or `COMPARE_SAMPLING`) with what a user set, as CLI flags or the
    app's sliders; temperature None keeps the default's."""
    return replace(default, temperature=default.temperature if temperature is None else float(temperature),
                   top_p=float(top_p), max_new_tokens=int(max_new_tokens))


@dataclass
class ChatSource:
    """Where a chat's model comes from, and what its run (when known) asked of it."""

    model: str  # what load_for_generation takes: model name/dir or .gguf path
    adapter: str | None
    run: RunDir | None
    config: RunConfig | None

    @property
    def template(self) -> str | None:
        return self.config.data.template if self.config else None

    @property
    def system_prompt(self) -> str | None:
        return template_system_prompt(self.config.data) if self.config else None


@dataclass
class ChatChunk:
    """One streaming step: the new piece, the reply so far, and the reply split into sections."""

    delta: str
    text: str
    think: str
    answer: str
    done: bool = False

    @classmethod
    def of(cls, delta: str, text: str, template: str | None, done: bool = False) -> "ChatChunk":
        """The chunk for the reply so far; mid-stream, a tag still being typed ("<ans") is held back
        from the sections, where it would show as answer text for a moment."""
        shown = text if done else _PARTIAL_TAG.sub("", text)
        return cls(delta, text, *split_think_answer(shown, template), done=done)


class ChatError(UserError, FileNotFoundError):
    """A chat source that cannot be used (a run without an adapter); the message says what to do."""


def resolve_source(source: str | Path, base: bool = False) -> ChatSource:
    """Classify a chat source; `base=True` ignores a run's adapter (the untrained model).

    A path that does not exist, or a Hub id that cannot be had offline, raises ModelError here,
    before any model loading starts."""
    path = Path(source).expanduser()
    if (path / CONFIG).is_file():
        return _run_source(open_run(path), base)
    if not path.exists():
        check_model_source(str(source))
        return ChatSource(str(source), None, None, None)  # bundled:… or a Hub id
    config = _enclosing_run_config(path)
    if is_gguf(path) or path.is_dir():
        return ChatSource(str(path), None, None, config)
    raise ChatError(f"{path}: not a chat source; give a run directory, a merged model folder or a .gguf file")


def _run_source(run: RunDir, base: bool) -> ChatSource:
    config = run.config()
    adapter = None if base else run_adapter_dir(run)
    if not base and adapter is None:
        raise ChatError(
            f"{run.path} has no trained adapter yet (no adapter/ and no checkpoint); "
            "train it first, or chat with the base model (--base)"
        )
    return ChatSource(config.model.name, str(adapter) if adapter else None, run, config)


def _enclosing_run_config(path: Path) -> RunConfig | None:
    """The config of the run an exported model sits in (e.g. <run>/export/merged), if any."""
    for parent in list(path.resolve().parents)[:_RUN_SEARCH_DEPTH]:
        if (parent / CONFIG).is_file():
            try:
                return RunDir(parent).config()
            except Exception:  # an unreadable config only loses the preselected system prompt
                return None
    return None


def default_system_prompt(source: str | Path) -> str | None:
    """The system prompt to preselect for a source: its run's, or None when it has no run."""
    return resolve_source(source, base=True).system_prompt


# -- model cache ----------------------------------------------------------------------------------

_cache: dict[tuple[str, str | None, bool], BaseGenerator] = {}


def get_generator(src: ChatSource, whole_replies: bool = False) -> BaseGenerator:
    """The generator for a source, reusing the last one loaded (only one model is kept).

    `whole_replies=True` (no streaming needed) selects vLLM where `uses_vllm(src)`.
    """
    fast = whole_replies and uses_vllm(src)
    key = (src.model, src.adapter, fast)
    if key not in _cache:
        clear_cache()
        model_config = src.config.model if src.config else None  # None: inference.standalone_model_config()
        try:
            _cache[key] = load_for_generation(src.model, src.adapter, model_config=model_config, fast_inference=fast)
        except OSError as exc:  # a Hub id that is not found, or no network
            if Path(src.model).exists() or is_bundled(src.model):
                raise
            raise load_error(src.model, exc) from exc
        if src.config is not None:
            _cache[key].use_run_format(src.config.data)
    return _cache[key]


def uses_vllm(src: ChatSource) -> bool:
    """Whether whole replies for `src` go through Unsloth's vLLM engine: a run that trains with
    `fast_inference`, on a CUDA machine (merged models and GGUFs have no run settings to follow)."""
    return bool(src.config and src.config.model.fast_inference and src.run and has_cuda())


def clear_cache() -> None:
    """Drop the cached model (e.g. before training starts and needs the memory)."""
    for generator in _cache.values():
        generator.close()
    _cache.clear()


# -- chat -----------------------------------------------------------------------------------------


def with_system(messages: Messages, system: str | None) -> Messages:
    """`messages` with `system` first, unless they already start with a system message or it is empty.

    A run's one-shot turn and reply prefill come from the model's chat template (`chat_format`)."""
    if not system or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def chat_stream(
    source: str | Path,
    messages: Messages,
    system_prompt: str | None = None,
    sampling: Sampling = CHAT_SAMPLING,
    base: bool = False,
) -> Iterator[ChatChunk]:
    """Stream a reply to `messages` (the conversation so far, ending with the user's turn).

    `system_prompt=None` uses the run's own system prompt; `""` sends none. The last chunk has
    `done=True` and the whole reply.
    """
    src = resolve_source(source, base)
    yield from stream_with(get_generator(src), src, messages, system_prompt, sampling)


def stream_with(generator: BaseGenerator, src: ChatSource, messages: Messages, system_prompt: str | None = None,
                sampling: Sampling = CHAT_SAMPLING) -> Iterator[ChatChunk]:
    """`chat_stream` on a generator the caller holds (the app keeps its own, behind a lock)."""
    system = src.system_prompt if system_prompt is None else system_prompt
    if src.config is not None:  # the app loads its own generators: prompt as the run trained, here too
        generator.use_run_format(src.config.data)
    text = ""
    for piece in generator.stream(with_system(messages, system), sampling):
        text += piece
        yield ChatChunk.of(piece, text, src.template)
    yield ChatChunk.of("", text, src.template, done=True)


def reply(source: str | Path, prompt: str, system_prompt: str | None = None, base: bool = False,
          sampling: Sampling = Sampling()) -> str:
    """One whole reply to a single user prompt (greedy by default)."""
    src = resolve_source(source, base)
    system = src.system_prompt if system_prompt is None else system_prompt
    messages = with_system([{"role": "user", "content": prompt}], system)
    return get_generator(src, whole_replies=True).complete([messages], sampling)[0][0].text


def side_by_side(
    run_dir: str | Path,
    prompt: str,
    system_prompt: str | None = None,
    sampling: Sampling = COMPARE_SAMPLING,
) -> tuple[str, str]:
    """(base reply, trained reply) to the same prompt; one model load, the adapter switched off for base.

    Greedy by default, so a difference between the two comes from the adapter, not from sampling.
    """
    src = resolve_source(run_dir)
    system = src.system_prompt if system_prompt is None else system_prompt
    messages = [with_system([{"role": "user", "content": prompt}], system)]
    generator = get_generator(src, whole_replies=True)
    with generator.adapter_disabled():
        base_reply = generator.complete(messages, sampling)[0][0].text
    trained_reply = generator.complete(messages, sampling)[0][0].text
    return base_reply, trained_reply


# -- sections -------------------------------------------------------------------------------------


class SectionStream:
    """A streamed reply as labelled terminal text: `[thinking]` then `[answer]`, only what is new.

    `feed(chunk)` returns the text to print for one `ChatChunk`. The sections only ever grow while
    a reply streams, except when text before a reasoning block turns out not to be the answer;
    then the last chunk re-shows the whole reply, labelled, so what stays on screen is right.
    """

    def __init__(self) -> None:
        self.shown = {THINK_LABEL: "", ANSWER_LABEL: ""}
        self.label: str | None = None

    def feed(self, chunk: ChatChunk) -> str:
        out = self._extend(THINK_LABEL, chunk.think) + self._extend(ANSWER_LABEL, chunk.answer)
        if chunk.done and (self.shown[THINK_LABEL], self.shown[ANSWER_LABEL]) != (chunk.think, chunk.answer):
            out += "\n" + format_sections(chunk.think, chunk.answer)
        return out

    def _extend(self, label: str, new: str) -> str:
        old = self.shown[label]
        if len(new) <= len(old) or not new.startswith(old):
            return ""
        self.shown[label] = new
        head = "" if self.label == label else ("\n" if self.label else "") + label + "\n"
        self.label = label
        return head + new[len(old):]


def format_sections(think: str, answer: str) -> str:
    """A whole reply with its sections labelled: the reasoning only when there is some, the answer
    unless the reply is all reasoning (as the streamed sections show it)."""
    parts = [f"{THINK_LABEL}\n{think}"] if think else []
    return "\n".join([*parts, *([f"{ANSWER_LABEL}\n{answer}"] if answer or not think else [])])


def split_think_answer(text: str, template: str | None = None) -> tuple[str, str]:
    """(reasoning, answer) of a reply, for display; works on partial (streaming) text too.

    Tags come from the template (`think` → `<think>`/`<answer>`, `reasoning` → `<reasoning>`/
    `<answer>`); None tries `<think>`/`<answer>`; a template without tags (`boxed`) gives
    ("", text). The answer is the `<answer>` block when there is one (unclosed: up to the end),
    else everything outside the reasoning block. An unclosed reasoning block is all reasoning.

    >>> split_think_answer("<think>2+2 is 4</think>\\n<answer>4</answer>", "think")
    ('2+2 is 4', '4')
    """
    think_tag, answer_tag = _tags(template)
    if think_tag is None and answer_tag is None:
        return "", text.strip()
    think_block = _find_block(text, think_tag) if think_tag else None
    if think_block and not think_block[2]:  # reasoning still open: nothing answered yet
        return think_block[0].strip(), ""
    think, rest = (think_block[0], think_block[1]) if think_block else ("", text)
    answer_block = _find_block(rest, answer_tag) if answer_tag else None
    return think.strip(), (answer_block[0] if answer_block else rest).strip()


def _tags(template: str | None) -> tuple[str | None, str | None]:
    if template is None:
        return "think", "answer"
    t = get_template(template)
    return t.think_tag, t.answer_tag


def _find_block(text: str, tag: str) -> tuple[str, str, bool] | None:
    """(content of the first <tag> block, the text around it, closed?) or None when absent.

    An unclosed block runs to the end. A closing tag with no opening one (the chat template put
    `<think>` in the prompt) makes everything before it the block.
    """
    opening, closing = f"<{tag}>", f"</{tag}>"
    start = text.find(opening)
    end = text.find(closing, max(start, 0))
    if start < 0 and end < 0:
        return None
    if start < 0:
        return text[:end], text[end + len(closing) :], True
    if end < 0:
        return text[start + len(opening) :], text[:start], False
    return text[start + len(opening) : end], text[:start] + text[end + len(closing) :], True
