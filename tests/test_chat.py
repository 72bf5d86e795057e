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
from grpo_box.inference import Sampling
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
    config.data.one_shot = config.data.prefill = False  # the model's own chat template: a reply is what it writes
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


def test_chat_defaults_are_sampling_values_that_the_cli_reads() -> None:
    from grpo_box.__main__ import build_parser

    args = build_parser().parse_args(["chat", "some-run"])
    for default in (chat.CHAT_SAMPLING, chat.COMPARE_SAMPLING):
        assert chat.sampling_with(default, args.temperature, args.top_p, args.max_tokens) == default
    assert not chat.CHAT_SAMPLING.greedy and chat.COMPARE_SAMPLING.greedy and chat.COMPARE_SAMPLING.seed == 0
    # what a user sets replaces the default's values (the sliders send floats); the seed stays
    assert chat.sampling_with(chat.COMPARE_SAMPLING, 0.5, 0.9, 64.0) == Sampling(64, 0.5, 0.9, seed=0)


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
    chunks = list(chat_stream(run.path, messages, sampling=Sampling(MAX_NEW)))
    assert all(isinstance(c, ChatChunk) for c in chunks) and chunks[-1].done
    assert sum(not c.done for c in chunks) >= 1
    final = chunks[-1]
    assert final.text == "".join(c.delta for c in chunks) and final.text
    assert (final.think, final.answer) == split_think_answer(final.text, "think")
    # the same greedy reply as a whole, with the run's system prompt preselected
    assert final.text == chat.reply(run.path, "What is 2 + 3?", sampling=Sampling(MAX_NEW))


def test_side_by_side_differs_only_by_adapter(run: RunDir) -> None:
    prompt = "What is 2 + 3?"
    base_reply, trained_reply = side_by_side(run.path, prompt, system_prompt="", sampling=Sampling(MAX_NEW))
    assert base_reply == chat.reply(run.path, prompt, system_prompt="", base=True, sampling=Sampling(MAX_NEW))
    assert trained_reply == chat.reply(run.path, prompt, system_prompt="", sampling=Sampling(MAX_NEW))
    assert base_reply != trained_reply


def test_chat_on_bundled_gguf() -> None:
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    chunks = list(chat_stream(bundled_gguf_path(), messages, sampling=Sampling(MAX_NEW)))
    final = chunks[-1]
    assert final.done and final.text and "<|im_end|>" not in final.text
    assert final.answer == final.text.strip()  # no tags: all answer
    assert chat.reply(bundled_gguf_path(), "What is 2 + 3?", sampling=Sampling(MAX_NEW)) == final.text


# ---------------------------------------------------------------- terminal display


def _displayed(text: str, template: str | None = "think", step: int = 3) -> str:
    """What `SectionStream` prints for `text` streamed `step` characters at a time."""
    sections, out = chat.SectionStream(), ""
    for end in range(step, len(text) + step, step):
        out += sections.feed(ChatChunk.of(text[end - step:end], text[:end], template))
    return out + sections.feed(ChatChunk.of("", text, template, done=True))


@pytest.mark.parametrize(("text", "template", "shown"), [
    ("<think>2+2 is 4</think>\n<answer>4</answer>", "think", "[thinking]\n2+2 is 4\n[answer]\n4"),
    ("<reasoning>add</reasoning><answer>7</answer>", "reasoning", "[thinking]\nadd\n[answer]\n7"),
    ("Just 4.", "think", "[answer]\nJust 4."),
    ("x < 5", "boxed", "[answer]\nx < 5"),  # a "<" that is no tag is not lost
    # text before the reasoning looked like the answer: the last chunk re-shows the reply, labelled
    ("Sure. <think>r</think><answer>4</answer>", "think", "[answer]\nSure.\n[thinking]\nr\n[thinking]\nr\n[answer]\n4"),
])
def test_section_stream_labels_thinking_and_answer(text: str, template: str, shown: str) -> None:
    assert _displayed(text, template) == shown
    assert "<ans" not in _displayed("<think>r</think><answer>4</answer>", step=1), "a half-typed tag showed"


# ---------------------------------------------------------------- vLLM on a GPU (faked: no CUDA here)


def test_whole_replies_use_fast_generate_with_the_lora_request(run: RunDir, bundled_model_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA machine a run with fast_inference answers through Unsloth's vLLM engine, with its
    adapter as a LoRA request. CUDA, Unsloth's loader and vLLM are replaced: they need a GPU."""
    import sys
    import types

    import torch
    from transformers import AutoTokenizer

    calls: dict[str, object] = {}

    class Output:
        text, token_ids, finish_reason = "vLLM reply", [1, 2], "stop"

    class FakeUnslothModel:
        vllm_engine = object()

        def load_lora(self, adapter_dir: str) -> str:
            calls["load_lora"] = adapter_dir
            return "lora-request"

        def fast_generate(self, prompts: list, sampling_params: object, lora_request: object, use_tqdm: bool) -> list:
            calls.setdefault("lora_requests", []).append(lora_request)
            return [types.SimpleNamespace(outputs=[Output()]) for _ in prompts]

    def from_pretrained(**kwargs: object) -> tuple[object, object]:
        calls["fast_inference"] = kwargs["fast_inference"]
        return FakeUnslothModel(), AutoTokenizer.from_pretrained(str(bundled_model_dir))

    from grpo_box import hardware
    from grpo_box.hardware import GpuInfo

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # the card the faked CUDA is on (a usable one: the load checks it before anything else)
    monkeypatch.setattr(hardware, "detect_gpu", lambda runner=None: GpuInfo("NVIDIA GeForce RTX 3070", 7.6, (8, 6),
                                                                           "580.65"))
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(
        FastLanguageModel=types.SimpleNamespace(from_pretrained=from_pretrained)))
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=lambda **kw: kw))
    config = run.config()
    config.model.fast_inference = True
    monkeypatch.setattr(RunDir, "config", lambda self: config)
    from grpo_box import inference

    # unsloth_zoo's vLLM teardown needs vLLM itself: record that the engine chat loaded is torn down
    monkeypatch.setattr(inference, "_delete_vllm_engine", lambda engine: calls.setdefault("deleted", []).append(engine))
    chat.clear_cache()
    try:
        assert chat.uses_vllm(resolve_source(run.path))
        assert chat.reply(run.path, "What is 2 + 3?") == "vLLM reply"
        assert calls["fast_inference"] is True and calls["load_lora"] == str(run.adapter_dir)
        side_by_side(run.path, "What is 2 + 3?")
        assert calls["lora_requests"] == ["lora-request", None, "lora-request"], "base: no LoRA; trained: the run's"
    finally:
        chat.clear_cache()
    assert calls["deleted"] and all(e is FakeUnslothModel.vllm_engine for e in calls["deleted"])
    config.model.fast_inference = False
    assert not chat.uses_vllm(resolve_source(run.path)), "without fast_inference, plain generation"
