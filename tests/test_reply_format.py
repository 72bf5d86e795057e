"""The two options that help a small model take up the reasoning format (`data.one_shot`,
`data.prefill`), followed everywhere a prompt is built or a reply is read: the dataset's prompts,
the chat template (training, evaluation, chat, merge, GGUF), the rewards, the samples file and the
Ollama Modelfile. Real tokenizer and model (the bundled one); nothing is downloaded."""

from __future__ import annotations

import json

import pytest

from grpo_box import chat_format, prompts
from grpo_box.callbacks import RunFilesCallback
from grpo_box.config import DataConfig, RewardSpec
from grpo_box.data import load_rows, preview
from grpo_box.modelfile import modelfile_text, render_modelfile_template, translate_template
from grpo_box.rewards import build_rubric
from grpo_box.rewards.rubric import with_reply_prefill

SHOWN = DataConfig(one_shot=True, prefill=True)


@pytest.fixture
def tokenizer(bundled_model_dir):
    """A fresh tokenizer per test: these tests change its chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_dir))


def test_run_format_is_written_into_the_chat_template_and_read_back(tokenizer):
    plain = tokenizer.chat_template
    question = prompts.build_messages("What is 2 + 2?", "Be brief.")
    shown = prompts.build_messages("What is 2 + 2?", [question[0], *prompts.one_shot_turn(SHOWN)])
    before = chat_format.prompt_text(tokenizer, shown)
    chat_format.apply_run_format(tokenizer, DataConfig(one_shot=False, prefill=True))
    assert chat_format.prefill_of(tokenizer.chat_template) == "<think>\n"
    assert chat_format.prompt_text(tokenizer, shown) == before + "<think>\n"
    chat_format.apply_run_format(tokenizer, SHOWN)
    # the template adds the one-shot turn after the system prompt, unless the conversation has it already
    assert chat_format.prompt_text(tokenizer, question) == chat_format.prompt_text(tokenizer, shown) == \
        before + "<think>\n"
    no_system = [question[1]]
    assert chat_format.prompt_text(tokenizer, no_system) == \
        chat_format.prompt_text(tokenizer, [*prompts.one_shot_turn(SHOWN), *no_system])
    whole = [*shown, {"role": "assistant", "content": "4"}]  # no generation prompt: no prefill
    assert tokenizer.apply_chat_template(whole, tokenize=False, chat_template=plain) == \
        tokenizer.apply_chat_template(whole, tokenize=False)
    chat_format.apply_run_format(tokenizer, SHOWN)  # twice: still one block each
    assert chat_format.prompt_text(tokenizer, question).count("What is 3 + 5?") == 1
    assert not chat_format.prompt_text(tokenizer, question).endswith("<think>\n<think>\n")
    assert chat_format.without_one_shot(tokenizer.chat_template) == chat_format.with_prefill(plain, "<think>\n")
    chat_format.apply_run_format(tokenizer, DataConfig(one_shot=False, prefill=False))  # off again: the model's own
    assert tokenizer.chat_template == plain and chat_format.prefill_of(plain) == ""


def test_templates_prefill_their_own_tag():
    assert prompts.reply_prefill(DataConfig(template="reasoning", prefill=True)) == "<reasoning>\n"
    assert prompts.reply_prefill(DataConfig(template="boxed", prefill=True)) == ""  # no reasoning tag to open
    assert prompts.reply_prefill(DataConfig(template="think", prefill=False)) == ""


def test_one_shot_turn_comes_between_the_system_prompt_and_every_question():
    train, held_out = load_rows(DataConfig(one_shot=True, size=8, eval_size=2))
    question, reply = prompts.get_template("think").example
    for row in [*train, *held_out]:
        roles = [m["role"] for m in row["prompt"]]
        assert roles == ["system", "user", "assistant", "user"]
        assert row["prompt"][1]["content"] == question and row["prompt"][2]["content"] == reply
        assert row["prompt"][3]["content"] == row["question"]
    plain, _ = load_rows(DataConfig(one_shot=False, size=8, eval_size=2))
    assert [m["role"] for m in plain[0]["prompt"]] == ["system", "user"]


def test_one_shot_turn_goes_after_a_conversation_sources_own_system_prompt(tmp_path):
    path = tmp_path / "chat.jsonl"
    conversation = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "What is 4 + 4?"}]
    path.write_text("\n".join(json.dumps({"question": conversation, "answer": "8"}) for _ in range(3)) + "\n")
    train, _ = load_rows(DataConfig(source=str(path), one_shot=True, eval_size=0))
    messages = train[0]["prompt"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Mine." and messages[-1]["content"] == "What is 4 + 4?"


def test_the_one_shot_example_is_in_the_format_the_rewards_pay_for():
    from grpo_box.rewards.format import think_format

    for name in ("think", "reasoning"):
        template = prompts.get_template(name)
        assert think_format(None, [template.example[1]], think_tag=template.think_tag,
                            answer_tag=template.answer_tag) == [1.0]


def test_preview_shows_the_prompt_with_the_prefill(tokenizer):
    shown = preview(DataConfig(one_shot=True, prefill=True, size=4, eval_size=1), tokenizer, n=1)[0]
    assert shown["text"].endswith("<|im_start|>assistant\n<think>\n")
    assert "What is 3 + 5?" in shown["text"]
    assert shown["tokens"] == len(tokenizer(shown["text"], add_special_tokens=False)["input_ids"])


def test_rewards_in_training_see_the_prefilled_tag():
    funcs, _ = build_rubric([RewardSpec("think_format", 1.0)], template="think")
    generated = [[{"role": "assistant", "content": "2 + 2 = 4\n</think>\n<answer>\n4\n</answer>"}]]
    prompt = [[{"role": "user", "content": "What is 2 + 2?"}]]
    assert funcs[0](prompt, generated) == [0.25]  # without its opening tag only the answer block counts
    funcs[0].reply_prefill = "<think>\n"
    assert funcs[0](prompt, generated) == [1.0]
    assert with_reply_prefill(["x"], "") == ["x"]


def test_samples_file_shows_whole_replies_and_the_one_shot_turn(tmp_path):
    from grpo_box.runs import SAMPLES, RunDir

    run = RunDir(tmp_path)
    files = RunFilesCallback(run, 1, 2, reply_prefill="<think>\n")
    prompt = prompts.build_messages("What is 1 + 1?", prompts.preamble(DataConfig(one_shot=True)))

    class Trainer:
        _logs = {"prompt": [prompt, prompt], "completion": [[{"role": "assistant", "content": "1 + 1 = 2"}]] * 2,
                 "rewards": {"r": [0.0, 1.0]}, "advantages": [-0.5, 0.5]}

    files.trainer = Trainer()
    files._write_samples(1)
    sample = json.loads((tmp_path / SAMPLES).read_text().splitlines()[0])
    assert sample["completions"] == ["<think>\n1 + 1 = 2"] * 2
    assert "assistant: <think>\n3 + 5 = 8" in sample["prompt"]  # the one-shot reply is labelled, not a completion


def test_generator_replies_start_with_the_prefill(bundled_model_dir):
    from grpo_box.inference import Sampling, load_for_generation

    gen = load_for_generation(str(bundled_model_dir))
    try:
        messages = prompts.build_messages("What is 2 + 2?", prompts.preamble(SHOWN))
        assert gen.prefill == ""
        gen.use_run_format(SHOWN)
        assert gen.prompt_text(messages).endswith("assistant\n<think>\n")  # the model reads the tag, then goes on
        whole = gen.generate([messages], max_new_tokens=8)[0][0]
        streamed = list(gen.stream(messages, Sampling(max_new_tokens=8)))
        assert whole.startswith("<think>\n") and streamed[0] == "<think>\n"
        assert "".join(streamed) == whole
    finally:
        gen.close()


def test_modelfile_prompts_like_the_prefilled_template_and_carries_the_one_shot_turn(tokenizer):
    chat_format.apply_run_format(tokenizer, SHOWN)
    translation = translate_template(tokenizer)
    assert translation.template is not None, translation.note
    assert translation.template.endswith("<|im_start|>assistant\n<think>\n")
    conversation = prompts.build_messages("What is 2 + 2?", prompts.preamble(SHOWN))
    # Ollama: MESSAGE lines put the one-shot turn into the conversation; the template adds the prefill
    assert render_modelfile_template(translation.template, conversation) == \
        chat_format.prompt_text(tokenizer, [conversation[0], conversation[-1]])
    text = modelfile_text("m.gguf", translation.template, ["<|im_end|>"], prompts.preamble(SHOWN))
    assert 'MESSAGE user """What is 3 + 5?"""' in text
    assert 'MESSAGE assistant """<think>\n3 + 5 = 8\n</think>\n<answer>\n8\n</answer>"""' in text
    assert text.index("SYSTEM") < text.index("MESSAGE user") < text.index("MESSAGE assistant")
