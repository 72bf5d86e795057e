"""Tests for grpo_box.inference on CPU with the bundled SmolLM2-135M: greedy determinism and EOS
stop, an adapter changing replies (and switching off), streaming equal to the whole reply, sampling
shapes, and the GGUF back end. The LoRA adapter is made with PEFT (lora_B set to small random
values) instead of trained, so no test here trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_random_lora

from grpo_box.inference import (BaseGenerator, Completion, Generator, GGUFGenerator, Sampling, load_for_generation,
                                run_adapter_dir, vllm_sampling_kwargs)
from grpo_box.models import ModelError, bundled_gguf_path
from grpo_box.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_NEW = 24
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
COLOR = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a color."}]


@pytest.fixture(scope="module")
def adapter_dir(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_random_lora(bundled_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="module")
def tuned(bundled_model_dir: Path, adapter_dir: Path) -> Generator:
    return load_for_generation(str(bundled_model_dir), adapter_dir)


def test_generate_is_complete_with_the_sampling_as_keywords() -> None:
    seen: list[Sampling] = []

    class Recording(BaseGenerator):
        def complete(self, messages_batch, sampling=Sampling()):
            seen.append(sampling)
            return [[Completion("x", 1, False)] * sampling.n for _ in messages_batch]

    assert Recording().generate([QUESTION]) == [["x"]]
    sampled = Recording().generate([QUESTION], 8, temperature=0.5, top_p=0.9, num_return_sequences=2, seed=4)
    assert sampled == [["x"] * 2]
    assert seen == [Sampling(), Sampling(8, 0.5, 0.9, n=2, seed=4)]
    assert Sampling().greedy and Sampling(temperature=-1.0).greedy and not Sampling(temperature=0.1).greedy


def test_greedy_sampling_is_one_neutral_vllm_request() -> None:
    greedy = vllm_sampling_kwargs(Sampling(16, temperature=0.0, top_p=0.5, n=3, seed=2))
    assert [greedy[k] for k in ("n", "temperature", "top_p", "max_tokens", "seed")] == [1, 0.0, 1.0, 16, 2]
    sampled = vllm_sampling_kwargs(Sampling(16, temperature=0.8, top_p=0.5, n=3))
    assert (sampled["n"], sampled["temperature"], sampled["top_p"], sampled["seed"]) == (3, 0.8, 0.5, None)


def test_greedy_is_deterministic_and_stops_at_im_end(tuned: Generator) -> None:
    with tuned.adapter_disabled():
        first = tuned.complete([QUESTION, COLOR], Sampling(MAX_NEW))
        again = tuned.complete([QUESTION, COLOR], Sampling(MAX_NEW))
    assert [c[0].text for c in first] == [c[0].text for c in again]
    im_end = tuned.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tuned.eos_ids[0] == im_end
    for (reply,) in first:
        assert reply.text and "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
        if not reply.truncated:  # stopped by EOS: the last token is <|im_end|>, counted like TRL
            assert reply.token_ids[-1] == im_end and reply.num_tokens == len(reply.token_ids) <= MAX_NEW
    assert not first[0][0].truncated  # "2 + 3 = 5" fits easily


@pytest.mark.parametrize(("tokenizer_eos", "config_eos", "expected"), [
    (2, [7, 2], [2, 7]),  # Qwen-style: the generation config lists more EOS tokens than the tokenizer's
    (2, 7, [2, 7]),  # the config's single EOS differs from the tokenizer's: both stop
    (2, None, [2]),
    (None, [7], [7]),
])
def test_eos_set_is_the_tokenizer_s_plus_the_generation_config_s_as_trl(tokenizer_eos, config_eos, expected) -> None:
    """One rule for chat, evaluation, the merge check and the GGUF checks: TRL's training stop set.
    (merge once took the generation config's alone and so missed the tokenizer's EOS.)"""
    from types import SimpleNamespace

    from grpo_box import gguf_check, merge
    from grpo_box.inference import eos_token_ids

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=config_eos))
    assert eos_token_ids(model, SimpleNamespace(eos_token_id=tokenizer_eos)) == expected
    assert merge.eos_token_ids is eos_token_ids
    llm = SimpleNamespace(token_eos=lambda: 2)
    assert gguf_check.stop_ids(llm, {"eos_ids": expected}) == {2, *expected}


def test_batch_padding_does_not_change_replies(tuned: Generator) -> None:
    with tuned.adapter_disabled():
        alone = tuned.generate([QUESTION], MAX_NEW)[0][0]
        batched = tuned.generate([COLOR, QUESTION], MAX_NEW)[1][0]
    assert alone == batched


def test_adapter_changes_outputs_and_switches_off(bundled_model_dir: Path, tuned: Generator) -> None:
    plain = load_for_generation("bundled:smollm2-135m-instruct")
    assert not plain.has_adapter and tuned.has_adapter
    base_replies = plain.generate([COLOR, QUESTION], MAX_NEW)
    with tuned.adapter_disabled():
        assert tuned.generate([COLOR, QUESTION], MAX_NEW) == base_replies
    assert tuned.generate([COLOR, QUESTION], MAX_NEW) != base_replies


def test_stream_concatenation_equals_greedy_reply(tuned: Generator) -> None:
    whole = tuned.generate([QUESTION], MAX_NEW)[0][0]
    pieces = list(tuned.stream(QUESTION, Sampling(MAX_NEW, temperature=0.0)))
    assert len(pieces) >= 1 and "".join(pieces) == whole


def test_stream_stops_when_abandoned(tuned: Generator) -> None:
    stream = tuned.stream(COLOR, Sampling(32))
    next(stream)
    stream.close()  # joins the worker thread; must not hang or raise


def test_sampling_returns_n_per_prompt_and_greedy_repeats(tuned: Generator) -> None:
    sampled = tuned.generate([QUESTION, COLOR], 8, temperature=1.0, top_p=0.95, num_return_sequences=2, seed=1)
    assert [len(s) for s in sampled] == [2, 2] and all(isinstance(t, str) for s in sampled for t in s)
    assert tuned.generate([QUESTION], 8, temperature=1.0, num_return_sequences=2, seed=3) == \
        tuned.generate([QUESTION], 8, temperature=1.0, num_return_sequences=2, seed=3)
    greedy = tuned.generate([QUESTION], 8, num_return_sequences=3)[0]
    assert len(greedy) == 3 and len(set(greedy)) == 1


def test_truncated_flag_at_max_new_tokens(tuned: Generator) -> None:
    essay = [{"role": "user", "content": "Write a long story about a dragon."}]
    (reply,) = tuned.complete([essay], Sampling(4))[0]
    assert reply.truncated and reply.num_tokens == 4


def test_missing_adapter_is_explained(bundled_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_for_generation(str(bundled_model_dir), tmp_path)


def test_is_adapter_dir_is_the_one_adapter_folder_rule(tmp_path: Path) -> None:
    from grpo_box.runs import is_adapter_dir, read_adapter_config

    assert not is_adapter_dir(tmp_path) and not is_adapter_dir(None)
    (tmp_path / "adapter_config.json").write_text('{"r": 4}')
    assert is_adapter_dir(tmp_path) and is_adapter_dir(str(tmp_path)) and read_adapter_config(tmp_path)["r"] == 4
    package = Path(__file__).resolve().parent.parent / "grpo_box"
    spelled = [p.name for p in package.rglob("*.py") if '"adapter_config.json"' in p.read_text(encoding="utf-8")]
    assert spelled == ["runs.py"], f"use runs.is_adapter_dir / ADAPTER_CONFIG instead of the literal: {spelled}"


def test_run_adapter_dir_prefers_final_then_checkpoint(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run_adapter_dir(run) is None
    ckpt = tmp_path / "checkpoints" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_config.json").write_text("{}")
    assert run_adapter_dir(run) is None  # the Trainer has not finished it yet
    (ckpt / "trainer_state.json").write_text("{}")
    assert run_adapter_dir(run) == ckpt
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    assert run_adapter_dir(run) == run.adapter_dir


def test_run_adapter_dir_takes_a_checkpoint_newer_than_the_adapter(tmp_path: Path) -> None:
    """After a `resume --steps N` cut short, checkpoint-7 is newer than adapter/ saved at step 5."""
    run = RunDir(tmp_path)
    newer = tmp_path / "checkpoints" / "checkpoint-7"
    for folder in (run.adapter_dir, tmp_path / "checkpoints" / "checkpoint-5", newer):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        if folder != run.adapter_dir:
            (folder / "trainer_state.json").write_text("{}")
    assert run_adapter_dir(run) == run.adapter_dir  # no step recorded (an older run): adapter/ counts as newest
    run.record_adapter_step(5)
    assert run.adapter_step() == 5 and run_adapter_dir(run) == newer
    run.record_adapter_step(7)
    assert run_adapter_dir(run) == run.adapter_dir  # the same step: the final adapter


@pytest.fixture(scope="module")
def gguf() -> GGUFGenerator:
    generator = load_for_generation(bundled_gguf_path())
    assert isinstance(generator, GGUFGenerator)
    yield generator
    generator.close()


def test_gguf_greedy_stream_matches_complete(gguf: GGUFGenerator) -> None:
    (reply,) = gguf.complete([QUESTION], Sampling(MAX_NEW))[0]
    assert isinstance(reply, Completion) and reply.text and "<|im_end|>" not in reply.text
    assert 0 < reply.num_tokens <= MAX_NEW
    assert "".join(gguf.stream(QUESTION, Sampling(MAX_NEW))) == reply.text
    assert gguf.generate([QUESTION], MAX_NEW)[0][0] == reply.text


def test_gguf_rejects_an_adapter(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="merge"):
        load_for_generation(bundled_gguf_path(), tmp_path)
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_for_generation(tmp_path / "missing.gguf")


# -- the vLLM boundary (vLLM cannot run here: a stand-in for Unsloth's engine-carrying model) --


class _FakeVLLMModel:
    """What Unsloth's fast_inference model offers the generator: an engine, load_lora, fast_generate."""

    def __init__(self) -> None:
        self.vllm_engine = object()
        self.calls: list[dict] = []

    def load_lora(self, path: str) -> tuple[str, str]:
        return ("lora", path)

    def fast_generate(self, prompts, sampling_params, lora_request, use_tqdm):
        from types import SimpleNamespace as NS

        self.calls.append({"prompts": prompts, "params": sampling_params, "lora": lora_request})
        reply = NS(text="4", token_ids=[19, 2], finish_reason="stop")
        return [NS(outputs=[reply] * sampling_params.n) for _ in prompts]


def test_vllm_generator_sends_token_ids_and_the_lora_per_request(bundled_tokenizer, monkeypatch) -> None:
    import sys
    import types

    from grpo_box.inference import VLLMGenerator, has_vllm_engine

    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    model = _FakeVLLMModel()
    gen = VLLMGenerator(model, bundled_tokenizer, adapter_dir="/runs/x/adapter")
    assert has_vllm_engine(model) and not has_vllm_engine(object()) and gen.has_adapter

    greedy = gen.complete([QUESTION, COLOR], Sampling(16, temperature=0.0, n=3))
    call = model.calls[-1]
    text = bundled_tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert call["prompts"][0] == {"prompt_token_ids": bundled_tokenizer(text, add_special_tokens=False)["input_ids"]}
    assert call["lora"] == ("lora", "/runs/x/adapter") and call["params"].n == 1 and call["params"].temperature == 0.0
    assert [[c.text for c in replies] for replies in greedy] == [["4"] * 3] * 2  # one greedy reply, repeated
    assert greedy[0][0] == Completion("4", 2, False, [19, 2])

    with gen.adapter_disabled():
        gen.complete([QUESTION], Sampling(16, temperature=0.8, n=4, seed=7))
    call = model.calls[-1]
    assert call["lora"] is None and call["params"].n == 4 and call["params"].seed == 7
