"""Tests for data loading (files, tasks, a faked Hub), reference normalisation, splitting, prompt
templates, the prompt-length check, file lines in error messages, absolute paths in a run's
config, and the `preview` command. Every file is written into tmp_path; the Hub is never
contacted (`datasets.load_dataset` is replaced in every test)."""

from __future__ import annotations

import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import run_cli

from grpo_box import data
from grpo_box.config import ConfigError, DataConfig, RunConfig
from grpo_box.data import DataError, check_prompt_lengths, load_rows, local_source_path, preview
from grpo_box.prompts import (
    answer_tag_for,
    build_messages,
    list_templates,
    system_prompt,
    think_tag_for,
)
from grpo_box.rewards import answers_match, reference_answer

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                 "in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "A shop sells 1,234 apples a day for 2 days. How many apples is that?",
     "answer": "1,234 * 2 = 2,468\n#### 2,468"},
    {"question": "Weng earns $12 an hour. How much did she earn for 50 minutes?",
     "answer": "12/60 = $0.2 per minute.\n0.2 x 50 = $10\n#### 10"},
]


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Fail any test that reaches `datasets.load_dataset` without faking it first."""

    def refuse(*args, **kwargs):
        pytest.fail(f"test tried to load a Hub dataset: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(f'"{v}"' for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg_for(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


# ---------------------------------------------------------------- files


def test_jsonl_gsm8k_format(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    train, held = load_rows(cfg_for(path, eval_size=0, one_shot=False))
    assert len(train) == 3 and len(held) == 0
    assert train["answer"] == ["72", "2468", "10"]
    assert train["question"] == [r["question"] for r in GSM8K_ROWS]
    prompt = train[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert prompt[0]["content"] == system_prompt(DataConfig()) and "<think>" in prompt[0]["content"]
    assert prompt[1]["content"] == GSM8K_ROWS[0]["question"]


def test_jsonl_column_mapping_keeps_extra_columns(tmp_path):
    rows = [{"problem": f"p{i}", "solution": i * 10, "level": f"L{i}", "prompt": "dropped"} for i in range(4)]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    train, _ = load_rows(cfg_for(path, prompt_column="problem", answer_column="solution", eval_size=0))
    assert set(train.column_names) == {"prompt", "answer", "question", "level", "row_origin"}
    assert train["answer"] == ["0", "10", "20", "30"]
    assert train["level"] == ["L0", "L1", "L2", "L3"]
    assert train[2]["prompt"][-1] == {"role": "user", "content": "p2"}


def test_jsonl_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n\n   \n{"question": "b", "answer": "2"}\n')
    train, _ = load_rows(cfg_for(path, eval_size=0))
    assert train["question"] == ["a", "b"]


def test_csv_source(tmp_path):
    path = write_csv(tmp_path / "qa.csv", ["q", "a", "topic"],
                     [["What is 2, plus 2?", "4", "math"], ["Capital of France?", "Paris", "geo"]])
    train, _ = load_rows(cfg_for(path, prompt_column="q", answer_column="a", eval_size=0))
    assert train["question"] == ["What is 2, plus 2?", "Capital of France?"]
    assert train["answer"] == ["4", "Paris"]
    assert train["topic"] == ["math", "geo"]


def test_parquet_source_with_numeric_answers(tmp_path):
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question": ["a", "b", "c"], "answer": [72.0, 3.5, 1234.0]}), path)
    train, _ = load_rows(cfg_for(path, eval_size=0))
    assert train["answer"] == ["72", "3.5", "1234"]


def test_conversational_prompt_column(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "What is 1 + 1?"}], "answer": "2"}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    train, _ = load_rows(cfg_for(path, prompt_column="messages", eval_size=0, one_shot=False))
    assert [m["role"] for m in train[0]["prompt"]] == ["system", "user"]
    assert train[0]["question"] == "What is 1 + 1?"


def test_size_caps_file_rows(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(50)])
    train, held = load_rows(cfg_for(path, size=10, eval_size=3))
    assert len(train) == 7 and len(held) == 3
    assert set(train["question"]) | set(held["question"]) == {f"q{i}" for i in range(10)}


# ---------------------------------------------------------------- bad data


def test_missing_column_lists_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"problem": "x", "solution": "1"}])
    with pytest.raises(DataError) as err:
        load_rows(cfg_for(path))
    message = str(err.value)
    assert "qa.jsonl" in message and "'question'" in message and "data.prompt_column" in message
    assert "columns found: problem, solution" in message
    with pytest.raises(DataError, match="data.answer_column"):
        load_rows(cfg_for(path, prompt_column="problem"))


@pytest.mark.parametrize(
    "name,text",
    [("empty.jsonl", ""), ("blank.jsonl", "\n  \n"), ("empty.csv", ""), ("header.csv", "question,answer\n")],
)
def test_empty_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match="no rows") as err:
        load_rows(cfg_for(path))
    assert name in str(err.value)


def test_broken_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": }\n')
    with pytest.raises(DataError) as err:
        load_rows(cfg_for(path))
    message = str(err.value)
    assert "broken.jsonl, line 3" in message and "not valid JSON" in message
    assert "Expecting value at column 29" in message  # where the value is missing, not "column 1" of the next line
    from grpo_box.ui.columns import DataFileError, read_columns

    with pytest.raises(DataFileError, match=r"line 3: not valid JSON \(Expecting value at column 29\)"):
        read_columns(path)  # the Data tab's quick read says the same


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('["question", "answer"]\n')
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        load_rows(cfg_for(path))


@pytest.mark.parametrize("name", ["data.txt", "data.json", "data.tsv"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("question,answer\n")
    with pytest.raises(DataError, match="unsupported file type") as err:
        load_rows(cfg_for(path))
    assert name in str(err.value) and ".jsonl, .csv and .parquet" in str(err.value)


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        load_rows(cfg_for(tmp_path / "nowhere.jsonl"))
    assert "nowhere.jsonl" in str(err.value)


def test_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        load_rows(cfg_for(tmp_path))


def test_empty_answer_names_the_file_line(tmp_path):
    path = tmp_path / "gap.jsonl"  # line 2 is blank: the bad row is the second row but line 3
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": ""}\n')
    with pytest.raises(DataError, match=r"gap\.jsonl, line 3: empty 'answer' \(data.answer_column\)"):
        load_rows(cfg_for(path))


def test_csv_lines_count_the_header_and_multiline_cells(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\n"one\ntwo",1\nb,2\nc,\n')
    with pytest.raises(DataError, match=r"qa\.csv, line 5: empty 'answer'"):
        load_rows(cfg_for(path))


def test_parquet_rows_are_named_by_row_number(tmp_path):
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question": ["a", "", "c"], "answer": ["1", "2", "3"]}), path)
    with pytest.raises(DataError, match=r"qa\.parquet, row 2: empty 'question' \(data.prompt_column\)"):
        load_rows(cfg_for(path))


def test_rows_remember_their_file_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": "2"}\n')
    train, _ = load_rows(cfg_for(path, eval_size=0))
    assert train["row_origin"] == [f"{path}, line 1", f"{path}, line 3"]


def test_mixed_column_types_name_column_and_lines(tmp_path):
    rows = [{"question": "a", "answer": "1", "level": 1}, {"question": "b", "answer": "2", "level": 2},
            {"question": "c", "answer": "3", "level": "hard"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_rows(cfg_for(path))
    message = str(err.value)
    assert f"{path}, line 3: column 'level' holds text ('hard')" in message
    assert f"{path}, line 1 holds a number (1)" in message and "same type" in message


def test_broken_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        load_rows(cfg_for(path))


# ---------------------------------------------------------------- reference normalisation


REFERENCES = [
    ("She has 5 + 3 = 8 apples.\n#### 8", "8"),
    ("#### 1,234,567", "1234567"),
    ("steps\n####  -12 ", "-12"),
    ("12,345", "12345"),
    ("1, 2, 5, 9", "1, 2, 5, 9"),  # a list keeps its commas
    ("The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("so \\boxed{1,234}", "1234"),
    (72, "72"),
    (72.0, "72"),
    (3.5, "3.5"),
    ("  Paris ", "Paris"),
    (None, ""),
]


@pytest.mark.parametrize("raw,expected", REFERENCES)
def test_reference_answer(raw, expected):
    assert reference_answer(raw) == expected


@pytest.mark.parametrize("raw,expected", [r for r in REFERENCES if r[1] and r[1] != "Paris"])
def test_loaded_reference_and_correctness_agree(tmp_path, raw, expected):
    """One normaliser: what data loading stores is what the correctness check matches."""
    path = write_jsonl(tmp_path / "ref.jsonl", [{"question": "q", "answer": raw}])
    train, _ = load_rows(cfg_for(path, eval_size=0))
    assert train["answer"] == [expected]
    assert answers_match(expected, raw) and answers_match(expected, train["answer"][0])


# ---------------------------------------------------------------- split


def test_split_is_deterministic_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(40)])
    a_train, a_held = load_rows(cfg_for(path, eval_size=8, seed=1))
    b_train, b_held = load_rows(cfg_for(path, eval_size=8, seed=1))
    _, c_held = load_rows(cfg_for(path, eval_size=8, seed=2))
    assert a_train["question"] == b_train["question"] and a_held["question"] == b_held["question"]
    assert a_held["question"] != c_held["question"]
    assert len(a_train) == 32 and len(a_held) == 8
    assert not set(a_train["question"]) & set(a_held["question"])


def test_eval_size_is_capped_so_train_keeps_a_row(tmp_path):
    path = write_jsonl(tmp_path / "two.jsonl", [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}])
    train, held = load_rows(cfg_for(path, eval_size=32))
    assert len(train) == 1 and len(held) == 1
    one = write_jsonl(tmp_path / "one.jsonl", [{"question": "a", "answer": "1"}])
    train, held = load_rows(cfg_for(one, eval_size=32))
    assert len(train) == 1 and len(held) == 0


def test_held_out_questions_never_in_train_for_small_task_pools():
    train, held = load_rows(DataConfig())  # single-digit addition: 100 problems, 256 rows
    assert len(held) == 32 and len(train) > 100
    assert not set(train["question"]) & set(held["question"])


# ---------------------------------------------------------------- tasks as a source


def test_task_source_default_and_params():
    cfg = DataConfig(source="task:arithmetic?difficulty=3", size=20, eval_size=5, seed=4)
    train, held = load_rows(cfg)
    assert len(train) + len(held) == 20 and len(held) == 5
    assert load_rows(cfg)[0]["question"] == train["question"]
    train, _ = load_rows(DataConfig(size=10, eval_size=0))
    assert train[0]["question"].startswith("What is ") and "+" in train[0]["question"]


def test_countdown_task_carries_numbers_and_task_for_rewards():
    train, _ = load_rows(DataConfig(source="task:countdown", size=8, eval_size=2))
    assert "numbers" in train.column_names and set(train["task"]) == {"countdown"}
    row = train[0]
    assert all(isinstance(n, int) for n in row["numbers"]) and row["answer"].isdigit()
    assert row["row_origin"].startswith("task:countdown, row ")


@pytest.mark.parametrize(
    "source,match",
    [
        ("task:nope", "arithmetic, countdown, letter_count, sort"),
        ("task:arithmetic?difficulty=99", "use 1 to 5"),
        ("task:sort?level=2", "valid parameters: difficulty"),
    ],
)
def test_task_source_errors(source, match):
    with pytest.raises(DataError, match=match):
        load_rows(DataConfig(source=source))


def test_runconfig_is_accepted_too():
    run = RunConfig()
    run.data.size, run.data.eval_size = 6, 2
    train, held = load_rows(run)
    assert len(held) == 2 and len(train) >= 1


# ---------------------------------------------------------------- Hub (faked)


def test_hub_source_arguments_and_gsm8k_answers(monkeypatch):
    calls = []

    def fake_load(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(GSM8K_ROWS * 4)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    train, held = load_rows(DataConfig(source="openai/gsm8k", subset="main", split="test", size=5, eval_size=2))
    assert calls == [("openai/gsm8k", "main", "test")]
    assert len(train) + len(held) <= 5 and len(held) == 2
    assert set(train["answer"]) | set(held["answer"]) <= {"72", "2468", "10"}


def test_hub_unreachable_says_network_and_id(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_rows(DataConfig(source="openai/gsm8k", subset="main"))
    message = str(err.value)
    assert "openai/gsm8k" in message and "network" in message and "check the id" in message
    assert "data.subset='main'" in message


def test_hub_without_split_asks_for_one(monkeypatch):
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K_ROWS),
                                 "test": datasets.Dataset.from_list(GSM8K_ROWS)})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: both)
    with pytest.raises(DataError, match=r"data.split \(available: train, test\)"):
        load_rows(DataConfig(source="openai/gsm8k", split=""))


def test_nonsense_source_is_refused_before_any_download():
    with pytest.raises(DataError, match="not a built-in task"):
        load_rows(DataConfig(source="some data set!"))


# ---------------------------------------------------------------- prompts


def test_templates_and_tags():
    assert list_templates() == ["think", "reasoning", "boxed"]
    assert (think_tag_for("think"), answer_tag_for("think")) == ("think", "answer")
    assert (think_tag_for("reasoning"), answer_tag_for("reasoning")) == ("reasoning", "answer")
    assert (think_tag_for("boxed"), answer_tag_for("boxed")) == (None, None)
    assert "<reasoning>" in system_prompt(DataConfig(template="reasoning"))
    assert "\\boxed{}" in system_prompt(DataConfig(template="boxed"))


def test_unknown_template_lists_valid_ones():
    with pytest.raises(ConfigError, match="think, reasoning, boxed"):
        system_prompt(DataConfig(template="cot"))
    with pytest.raises(ConfigError, match="data.template"):
        answer_tag_for("cot")


def test_system_prompt_override_wins():
    assert system_prompt(DataConfig(system_prompt="Be brief.")) == "Be brief."
    train, _ = load_rows(DataConfig(system_prompt="", one_shot=False, size=3, eval_size=0))
    assert [m["role"] for m in train[0]["prompt"]] == ["user"]  # an empty override drops the system turn
    assert build_messages("Hi", "Sys") == [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}]


# ---------------------------------------------------------------- tokenizer (bundled SmolLM2 tokenizer)


def test_default_task_prompts_fit_the_default_limit(bundled_tokenizer):
    train, held = load_rows(DataConfig())
    longest = check_prompt_lengths(train, bundled_tokenizer, RunConfig().grpo.max_prompt_length)
    assert 20 < longest <= RunConfig().grpo.max_prompt_length
    check_prompt_lengths(held, bundled_tokenizer, RunConfig().grpo.max_prompt_length)


def test_prompt_too_long_names_file_line_and_setting(tmp_path, bundled_tokenizer):
    short = [json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(5)]
    long = json.dumps({"question": "Explain. " + "very long words " * 200, "answer": "3"})
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(short[:3] + ["", long] + short[3:]) + "\n")  # the long row is on line 5
    train, held = load_rows(cfg_for(path, eval_size=3, seed=1, one_shot=False))  # short rows stay under 128
    split = train if "Explain" in " ".join(train["question"]) else held
    with pytest.raises(DataError) as err:
        check_prompt_lengths(split, bundled_tokenizer, 128)
    message = str(err.value)
    assert message.startswith(f"{path}, line 5: the prompt is ") and "grpo.max_prompt_length=128" in message
    row = next(r for r in split if r["question"].startswith("Explain"))
    count = data.count_prompt_tokens(bundled_tokenizer, row["prompt"])
    assert count > 400 and f"{count} tokens" in message


def test_preview_shows_the_model_input(bundled_tokenizer):
    shown = preview(DataConfig(one_shot=False, prefill=False, size=10, eval_size=2), bundled_tokenizer, n=3)
    assert len(shown) == 3
    for item in shown:
        assert item["question"] in item["text"] and "A conversation between User" in item["text"]
        assert item["text"].rstrip().endswith("assistant")  # the generation prompt is included
        assert item["tokens"] == len(bundled_tokenizer(item["text"], add_special_tokens=False)["input_ids"])
        assert item["answer"].isdigit()


def test_preview_command_prints_the_chat_text():
    out = run_cli("preview", "-n", "2", "--set", "data.source=task:sort", "--set", "data.size=8",
                  "--set", "data.eval_size=2", "--json", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shown = json.loads(out.stdout)
    assert len(shown) == 2
    for item in shown:
        assert item["question"].startswith("Sort these numbers") and item["question"] in item["text"]
        assert "<|im_start|>assistant" in item["text"] and item["tokens"] > 20
        assert item["origin"].startswith("task:sort, row ")


# ---------------------------------------------------------------- paths saved in a run


@pytest.mark.parametrize(
    "source,local",
    [("task:arithmetic", False), ("openai/gsm8k", False), ("data/qa.jsonl", True), ("./qa", True),
     ("qa.csv", True), ("~/qa.parquet", True)],
)
def test_local_source_path(source, local):
    assert (local_source_path(source) is not None) is local


def test_run_config_keeps_absolute_data_and_reward_paths(tmp_path, monkeypatch):
    from grpo_box.evaluate import _rows
    from grpo_box.rewards import build_rubric
    from grpo_box.runs import create_run, open_run

    work = tmp_path / "work"
    work.mkdir()
    write_jsonl(work / "qa.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(6)])
    (work / "mine.py").write_text("def one(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    monkeypatch.chdir(work)
    config = RunConfig()
    config.data.source, config.reward_file = "qa.jsonl", "mine.py"
    config.data.eval_size = 2
    config.output.runs_dir = str(tmp_path / "runs")
    run = create_run(config)
    monkeypatch.chdir(tmp_path)  # eval RUN_DIR / resume from another directory
    saved = open_run(run.path).config()
    assert saved.data.source == str(work / "qa.jsonl") and saved.reward_file == str(work / "mine.py")
    assert os.path.isabs(saved.data.source)
    assert len(_rows(saved, "held_out", None)) == 2
    assert [f.name for f in build_rubric(["user:one"], saved.reward_file)[0]] == ["user:one"]
    assert RunConfig().data.source == "task:arithmetic"  # task sources are left alone


def test_a_file_whose_prompt_and_answer_are_one_column_is_refused(tmp_path):
    path = tmp_path / "onecol.csv"
    path.write_text("question\nWhat is 2+2?\nWhat is 3+3?\n")
    with pytest.raises(DataError, match="both 'question'.*no other column, so add one with each question's answer"):
        load_rows(cfg_for(path, prompt_column="question", answer_column="question"))
