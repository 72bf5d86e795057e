"""The bundled model's import is faithful: tokenizer, chat template, EOS and greedy output match llama.cpp."""

from __future__ import annotations

import json

import pytest

from grpo_box.gguf_check import llama_greedy
from grpo_box.models import BUNDLED_PREFIX, bundled_gguf_path, ensure_bundled_model, resolve_model

PROMPTS = ["What is 2 + 3?", "Name three colours.", "Write one sentence about the sea.", "Is 17 a prime number?"]


@pytest.fixture(scope="module")
def llama():
    from llama_cpp import Llama

    llm = Llama(str(bundled_gguf_path()), n_ctx=512, verbose=False, seed=0)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def hf_model(bundled_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(bundled_model_dir))


def test_import_is_a_normal_hf_directory(bundled_model_dir):
    names = {p.name for p in bundled_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert "quantization_config" not in json.loads((bundled_model_dir / "config.json").read_text())
    assert ensure_bundled_model() == bundled_model_dir  # second call reuses the import
    assert resolve_model(BUNDLED_PREFIX + "smollm2-135m-instruct") == str(bundled_model_dir)


def test_special_tokens_and_chat_template(bundled_tokenizer, hf_model):
    tok = bundled_tokenizer
    assert (tok.eos_token, tok.bos_token) == ("<|im_end|>", "<|im_start|>")
    assert hf_model.generation_config.eos_token_id == tok.eos_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "text", ["Hello world", "  leading spaces", "numbers 12345 and 3.14", "émigré naïve 東京", "<|im_start|>user\nx<|im_end|>"]
)
def test_tokenization_matches_llama_cpp(bundled_tokenizer, llama, text):
    ours = bundled_tokenizer(text, add_special_tokens=False).input_ids
    assert ours == llama.tokenize(text.encode(), add_bos=False, special=True)
    assert bundled_tokenizer.decode(ours) == text


def _prompt_ids(tok, prompt: str) -> list[int]:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"]


def _logit_margin(hf_model, ids: list[int], prefix: list[int], ours: int, theirs: int) -> float:
    import torch

    with torch.no_grad():
        logits = hf_model(torch.tensor([ids + prefix])).logits[0, -1]
    return float(logits[ours] - logits[theirs])


def test_greedy_generation_matches_llama_cpp_and_stops_at_im_end(bundled_tokenizer, hf_model, llama):
    """Same greedy tokens as llama.cpp on the GGUF. llama.cpp multiplies Q4_1 weights with 8-bit
    quantised activations, so a long reply may part at a near-tie; there the two candidates must be
    within 0.5 logits for our model, and most prompts must match exactly."""
    import torch

    tok = bundled_tokenizer
    exact, stopped = 0, 0
    for prompt in PROMPTS:
        ids = _prompt_ids(tok, prompt)
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        theirs = llama_greedy(llama, ids, len(out), {llama.token_eos()})
        if out == theirs:
            exact += 1
        else:
            i = next(i for i, (a, b) in enumerate(zip(out, theirs)) if a != b)
            assert i >= 4, f"{prompt!r} parts at token {i}: {tok.decode(out)!r} vs {tok.decode(theirs)!r}"
            assert _logit_margin(hf_model, ids, out[:i], out[i], theirs[i]) < 0.5, f"not a near-tie for {prompt!r}"
        stopped += out[-1] == tok.eos_token_id
    assert exact >= 3, f"only {exact} of {len(PROMPTS)} prompts gave identical greedy tokens"
    assert stopped >= 1, "no reply ended at <|im_end|> within 24 tokens"


# Questions whose greedy replies are short; each must end at <|im_end|> (id 2) in both runtimes.
SHORT_ANSWER_PROMPTS = ["What is 2 + 3?", "What is the capital of France?", "Write one sentence about the sea.",
                        "Is 17 a prime number?"]


def test_every_short_reply_stops_at_im_end_in_both_runtimes(bundled_tokenizer, hf_model, llama):
    import torch

    tok = bundled_tokenizer
    assert tok.eos_token_id == 2 and llama.token_eos() == 2
    llama_stops = 0
    for prompt in SHORT_ANSWER_PROMPTS:
        ids = _prompt_ids(tok, prompt)
        with torch.no_grad():
            ours = hf_model.generate(torch.tensor([ids]), max_new_tokens=128, do_sample=False)[0, len(ids):].tolist()
        theirs = llama_greedy(llama, ids, 128, {llama.token_eos()})
        assert ours[-1] == 2 and 2 not in ours[:-1], f"{prompt!r} ran on: {tok.decode(ours)!r}"
        assert tok.decode(ours, skip_special_tokens=True).strip()  # a real answer before the stop
        if theirs == ours[:len(theirs)]:
            assert theirs == ours, f"llama.cpp ran on past <|im_end|> for {prompt!r}"
        llama_stops += theirs[-1] == 2
    # The Q4_1 file may take another first word at a near-tie (see the test above) and then ramble;
    # every reply that follows ours stops where ours does, and nearly all stop.
    assert llama_stops >= len(SHORT_ANSWER_PROMPTS) - 1
