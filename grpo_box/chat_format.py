"""A run's prompt contract written into the model's chat template: the one-shot turn and the prefill.

A run may show the model one worked example before every question and start every reply with the
template's opening reasoning tag (`DataConfig.one_shot`, `DataConfig.prefill`; see `prompts`). The
trained model only behaves when it is prompted exactly that way, wherever it ends up: TRL's
rollouts, evaluation, the chat, the merged model, the GGUF in llama.cpp or Open WebUI. So both are
written into the tokenizer's chat template, which training saves with every checkpoint and the
adapter, the merge saves with the merged model, and the GGUF converter embeds in the file:

- the prefill is a block appended at the end, where chat templates write the generation prompt
  (as DeepSeek-R1's template does), so it works for ChatML, Llama 3, Qwen, … alike;
- the one-shot turn is a block at the start that inserts the example after the system message,
  unless the conversation already holds it there (the training rows do): rendering stays the same
  whether the caller added the turn or the template did.

Each block is marked with a Jinja comment, so `prefill_of` and `without_one_shot` find it again in
any template, a GGUF's included. The model never generates the prefill: whoever scores or shows a
reply puts it back in front (TRL's completions start after it).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .prompts import Messages, one_shot_turn, reply_prefill

_PREFILL_BLOCK = "{#- grpo-box reply prefill -#}{%- if add_generation_prompt %}{{ PREFILL }}{%- endif %}"
_PREFILL_RE = re.compile(r"\{#- grpo-box reply prefill -#\}\{%- if add_generation_prompt %\}\{\{ (.*?) \}\}"
                         r"\{%- endif %\}$", re.S)
_SHOT_BLOCK = (
    "{#- grpo-box one-shot turn -#}"
    "{%- set grpo_box_shots = SHOTS -%}"
    "{%- set grpo_box_at = 1 if messages and messages[0]['role'] == 'system' else 0 -%}"
    "{%- if messages|length <= grpo_box_at or messages[grpo_box_at]['content'] != grpo_box_shots[0]['content'] -%}"
    "{%- set messages = messages[:grpo_box_at] + grpo_box_shots + messages[grpo_box_at:] -%}"
    "{%- endif -%}"
    "{#- end of the one-shot turn -#}"
)
_SHOT_RE = re.compile(r"^\{#- grpo-box one-shot turn -#\}.*?\{#- end of the one-shot turn -#\}", re.S)


def with_prefill(chat_template: str, prefill: str) -> str:
    """`chat_template` whose generation prompt ends with `prefill` ("" removes an earlier prefill)."""
    base = _PREFILL_RE.sub("", chat_template)
    return base + _PREFILL_BLOCK.replace("PREFILL", json.dumps(prefill)) if prefill else base


def prefill_of(chat_template: str | None) -> str:
    """The prefill `with_prefill` wrote into a chat template; "" for any other template."""
    match = _PREFILL_RE.search(chat_template or "")
    return json.loads(match.group(1)) if match else ""


def with_one_shot(chat_template: str, turn: Messages) -> str:
    """`chat_template` that puts `turn` after the system message of every conversation ([] removes it)."""
    base = without_one_shot(chat_template)
    return _SHOT_BLOCK.replace("SHOTS", json.dumps(turn)) + base if turn else base


def without_one_shot(chat_template: str) -> str:
    """The template without a one-shot block (e.g. to translate it for Ollama, which gets MESSAGE lines)."""
    return _SHOT_RE.sub("", chat_template)


def apply_run_format(tokenizer: Any, data_cfg: Any) -> None:
    """Write the run's one-shot turn and reply prefill into the tokenizer's chat template (or take
    earlier ones out when the run has none)."""
    if tokenizer.chat_template:
        template = with_one_shot(tokenizer.chat_template, one_shot_turn(data_cfg))
        tokenizer.chat_template = with_prefill(template, reply_prefill(data_cfg))


def prompt_text(tokenizer: Any, messages: Messages, chat_template: str | None = None) -> str:
    """The prompt exactly as the model sees it: chat template plus the assistant header (and prefill).

    The one place a chat template is applied; `chat_template` replaces the tokenizer's own."""
    return tokenizer.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True,
                                         tokenize=False)
