"""System prompt templates and chat message building.

A template fixes two things that must agree across the run: the system prompt that asks the model
for a particular output shape, and the tag names that the format/correctness rewards and the
evaluation look for in completions. Training, evaluation and the sampled dry run build the
rubric with `rewards.apply_template`, which fills every tag param the rubric leaves unset from
this table and refuses tag-checking rewards under the tagless `boxed` template, so a reward does
not check for `<think>` while the prompt asked for `<reasoning>` or `\\boxed{}`. Templates are
looked up by the name in `DataConfig.template`; `DataConfig.system_prompt` replaces the text but
not the tags.

Two options help a small model take up the format (`DataConfig.one_shot`, `DataConfig.prefill`):

- a one-shot example: one worked question and reply in the template's format, as an earlier chat
  turn before every question. Small instruct models copy a shown turn far more readily than they
  follow a described format;
- a reply prefill: the reply starts with the opening reasoning tag, as DeepSeek-R1's own chat
  template does.

`chat_format` writes both into the model's chat template, so every prompt built from it prompts
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

PREVIEW_ROWS = 3  # prompts `data.preview` shows unless told (the CLI's `preview -n`, the app's Data tab)

if TYPE_CHECKING:
    from .config import DataConfig


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    think_tag: str | None  # e.g. "think" for <think>…</think>; None when no reasoning tag is asked for
    answer_tag: str | None  # e.g. "answer"; None when the answer is not tagged (boxed)
    description: str
    example: tuple[str, str]  # one worked (question, reply) in this format: the one-shot turn

    @property
    def prefill(self) -> str:
        """What a prefilled reply starts with: the opening reasoning tag, or "" when there is none."""
        return f"<{self.think_tag}>\n" if self.think_tag else ""


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

_QUESTION = "What is 3 + 5?"

TEMPLATES: dict[str, Template] = {
    "think": Template("think", _THINK, "think", "answer", "R1 style: <think>…</think> then <answer>…</answer>",
                      (_QUESTION, "<think>\n3 + 5 = 8\n</think>\n<answer>\n8\n</answer>")),
    "reasoning": Template(
        "reasoning", _REASONING, "reasoning", "answer", "<reasoning>…</reasoning> then <answer>…</answer>",
        (_QUESTION, "<reasoning>\n3 + 5 = 8\n</reasoning>\n<answer>\n8\n</answer>"),
    ),
    "boxed": Template("boxed", _BOXED, None, None, "free reasoning, final answer in \\boxed{}",
                      (_QUESTION, "3 + 5 = 8, so the answer is \\boxed{8}.")),
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


Messages = list[dict[str, str]]


def preamble(data_cfg: DataConfig) -> Messages:
    """What comes before every question of a run: its system prompt, then the one-shot turn if asked for."""
    return build_messages(None, system_prompt(data_cfg)) + one_shot_turn(data_cfg)


def one_shot_turn(data_cfg: DataConfig) -> Messages:
    """The run's worked example as a user and an assistant message; [] when `one_shot` is off."""
    if not data_cfg.one_shot:
        return []
    question, reply = get_template(data_cfg.template).example
    return [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def build_messages(question: str | None, system: str | Messages | None) -> Messages:
    """Conversational prompt as TRL's GRPO expects it: [system?, user]. An empty system is left out.

    `system` may be a whole preamble (`preamble`), which then goes before the question as it is.
    """
    if isinstance(system, list):
        messages = [dict(m) for m in system]
    else:
        messages = [{"role": "system", "content": system}] if system else []
    if question is not None:
        messages.append({"role": "user", "content": question})
    return messages


def reply_prefill(data_cfg: DataConfig) -> str:
    """The text every reply of the run starts with: the template's opening tag when `prefill` is on."""
    return get_template(data_cfg.template).prefill if data_cfg.prefill else ""
