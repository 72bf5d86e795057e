"""System prompt templates and chat message building.

A template fixes two things that must agree across the run: the system prompt that asks the model
for a particular output shape, and the tag names that the format/correctness rewards and the
evaluation look for in completions. Training, evaluation and the sampled dry run build the
rubric with `rewards.apply_template`, which fills every tag param the rubric leaves unset from
this table and refuses tag-checking rewards under the tagless `boxed` template, so a reward does
not check for `<think>` while the prompt asked for `<reasoning>` or `\\boxed{}`. Templates are
looked up by the name in `DataConfig.template`; `DataConfig.system_prompt` replaces the text but
not the tags.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import DataConfig


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    think_tag: str | None  # e.g. "think" for <think>…</think>; None when no reasoning tag is asked for
    answer_tag: str | None  # e.g. "answer"; None when the answer is not tagged (boxed)
    description: str


# DeepSeek-R1-Zero's prompt, the common reference for `<think>`/`<answer>` GRPO runs.
_THINK = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)

# The format popularised by the Unsloth / willccbb GRPO notebooks.
_REASONING = (
    "Respond in the following format:\n"
    "<reasoning>\n...\n</reasoning>\n"
    "<answer>\n...\n</answer>"
)

# The Qwen-Math / DeepSeek-Math instruction; the answer is read from the last \boxed{}.
_BOXED = "Please reason step by step, and put your final answer within \\boxed{}."

TEMPLATES: dict[str, Template] = {
    "think": Template("think", _THINK, "think", "answer", "R1 style: <think>…</think> then <answer>…</answer>"),
    "reasoning": Template(
        "reasoning", _REASONING, "reasoning", "answer", "<reasoning>…</reasoning> then <answer>…</answer>"
    ),
    "boxed": Template("boxed", _BOXED, None, None, "free reasoning, final answer in \\boxed{}"),
}


def list_templates() -> list[str]:
    """Names of the available templates, in display order."""
    return list(TEMPLATES)


def get_template(name: str) -> Template:
    """Look up a template; an unknown name raises ConfigError listing the valid ones."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"data.template={name!r} is not a known template; choose one of: {', '.join(TEMPLATES)}"
        ) from None


def system_prompt(data_cfg: DataConfig) -> str:
    """The system prompt for a run: `data.system_prompt` when set (even ""), else the template's."""
    template = get_template(data_cfg.template)  # validated even when overridden: the tags still apply
    if data_cfg.system_prompt is not None:
        return data_cfg.system_prompt
    return template.system


def answer_tag_for(template: str) -> str | None:
    """Tag wrapping the final answer (`"answer"`), or None when the template uses \\boxed{}."""
    return get_template(template).answer_tag


def think_tag_for(template: str) -> str | None:
    """Tag wrapping the reasoning (`"think"`, `"reasoning"`), or None when none is asked for."""
    return get_template(template).think_tag


def build_messages(question: str, system: str | None) -> list[dict[str, str]]:
    """Conversational prompt as TRL's GRPO expects it: [system?, user]. An empty system is left out."""
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question})
    return messages
