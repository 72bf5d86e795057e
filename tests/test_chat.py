"""Tests for grpo_box.chat: think/answer splitting (table), source resolution and the preselected
system prompt, streaming chat on a run dir (base + a PEFT adapter made without training), base vs
trained side by side, and chat on the bundled GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_random_lora

from grpo_box import chat
from grpo_box.chat import ChatChunk, chat_stream, resolve_source, side_by_side, split_think_answer, with_system
from grpo_box.config import RunConfig
from grpo_box.models import bundled_gguf_path
from grpo_box.prompts import system_prompt
from grpo_box.runs import RunDir, create_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _drop_cached_chat_model():
    yield
    chat.clear_cache()

MAX_NEW = 20


def small_config(runs_dir: Path, template: str = "think") -> RunConfig:
    config = RunConfig()
    config.output.runs_dir = str(runs_dir)
    config.data.size, config.data.eval_size, config.data.template = 12, 4, template
    config.grpo.max_completion_length = 16
    config.lora.r, config.lora.alpha, config.lora.target_modules = 4, 8, ["q_proj", "v_proj"]
    return config


@pytest.fixture(scope="module")
def run(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    run = create_run(small_config(tmp_path_factory.mktemp("runs")))
    make_random_lora(bundled_model_dir, run.adapter_dir, std=0.5)
    return run


# ---------------------------------------------------------------- split_think_answer

SPLITS = [
    ("<think>2+2 is 4</think>\n<answer>4</answer>", "think", ("2+2 is 4", "4")),
    ("<think>\nadd them\n</think>\n<answer>\n4\n</answer>", None, ("add them", "4")),
    ("<reasoning>r</reasoning><answer>7</answer>", "reasoning", ("r", "7")),
    ("<think>still thinking", "think", ("still thinking", "")),  # mid-stream
    ("<think>done</think><answer>4", "think", ("done", "4")),  # answer still open
    ("<think>done</think> The answer is 4.", "think", ("done", "The answer is 4.")),
    ("Just 4.", "think", ("", "Just 4.")),
    ("<answer>4</answer>", "think", ("", "4")),
    ("Sure. <think>r</think><answer>4</answer>", "think", ("r", "4")),
    ("reasoning in the prompt</think><answer>4</answer>", "think", ("reasoning in the prompt", "4")),
    ("Steps... so \\boxed{4}", "boxed", ("", "Steps... so \\boxed{4}")),
    ("<think>r</think><answer>4</answer>", "reasoning", ("", "4")),  # other template: no reasoning block
    ("", "think", ("", "")),
]


@pytest.mark.parametrize(("text", "template", "expected"), SPLITS)
def test_split_think_answer(text: str, template: str | None, expected: tuple[str, str]) -> None:
    assert split_think_answer(text, template) == expected


def test_with_system() -> None:
    user = [{"role": "user", "content": "hi"}]
    assert with_system(user, "S")[0] == {"role": "system", "content": "S"}
    assert with_system(user, None) == user and with_system(user, "") == user
    own = [{"role": "system", "content": "mine"}, *user]
    assert with_system(own, "S") == own


# ---------------------------------------------------------------- sources


def test_run_source_preselects_the_run_system_prompt(run: RunDir) -> None:
    src = resolve_source(run.path)
    config = run.config()
    assert src.model == config.model.name and src.adapter == str(run.adapter_dir)
    assert src.template == "think" and src.system_prompt == system_prompt(config.data)
    assert chat.default_system_prompt(run.path) == system_prompt(config.data)
    assert resolve_source(run.path, base=True).adapter is None


def test_exported_model_inside_a_run_finds_its_template(run: RunDir) -> None:
    export = run.path / "export" / "gguf"
    export.mkdir(parents=True)
    (export / "model-q4_k_m.gguf").write_bytes(b"GGUF")
    src = resolve_source(export / "model-q4_k_m.gguf")
    assert src.adapter is None and src.template == "think"
    assert resolve_source(bundled_gguf_path()).system_prompt is None


def test_run_without_adapter_is_explained(tmp_path: Path) -> None:
    bare = create_run(small_config(tmp_path))
    with pytest.raises(FileNotFoundError, match="--base"):
        resolve_source(bare.path)
    assert resolve_source(bare.path, base=True).adapter is None


# ---------------------------------------------------------------- chatting


def test_chat_stream_on_run_dir(run: RunDir) -> None:
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    chunks = list(chat_stream(run.path, messages, temperature=0.0, max_new_tokens=MAX_NEW))
    assert all(isinstance(c, ChatChunk) for c in chunks) and chunks[-1].done
    assert sum(not c.done for c in chunks) >= 1
    final = chunks[-1]
    assert final.text == "".join(c.delta for c in chunks) and final.text
    assert (final.think, final.answer) == split_think_answer(final.text, "think")
    # the same greedy reply as a whole, with the run's system prompt preselected
    assert final.text == chat.reply(run.path, "What is 2 + 3?", max_new_tokens=MAX_NEW)


def test_side_by_side_differs_only_by_adapter(run: RunDir) -> None:
    prompt = "What is 2 + 3?"
    base_reply, trained_reply = side_by_side(run.path, prompt, system_prompt="", max_new_tokens=MAX_NEW)
    assert base_reply == chat.reply(run.path, prompt, system_prompt="", base=True, max_new_tokens=MAX_NEW)
    assert trained_reply == chat.reply(run.path, prompt, system_prompt="", max_new_tokens=MAX_NEW)
    assert base_reply != trained_reply


def test_chat_on_bundled_gguf() -> None:
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    chunks = list(chat_stream(bundled_gguf_path(), messages, temperature=0.0, max_new_tokens=MAX_NEW))
    final = chunks[-1]
    assert final.done and final.text and "<|im_end|>" not in final.text
    assert final.answer == final.text.strip()  # no tags: all answer
    assert chat.reply(bundled_gguf_path(), "What is 2 + 3?", max_new_tokens=MAX_NEW) == final.text
