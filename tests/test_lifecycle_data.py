"""Issue 15, item 12: no silent coercion of data.

A reference answer that is not plain text or a number (a list, bytes, NaN, an object, a
true/false value) used to reach the rewards as its Python text ("[4]", "b'ab'", "nan") and never
match; now it is refused naming the file, line and column. A one-element list of a scalar is
unwrapped (it can mean nothing else). Chat content given as a list of text parts is joined into
text instead of failing with a message that contradicts itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grpo_box.config import DataConfig
from grpo_box.data import DataError, load_rows


def jsonl(tmp_path: Path, rows: list[dict[str, Any]], name: str = "qa.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def parquet(tmp_path: Path, columns: dict[str, list[Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def load(path: Path, **settings: Any):
    return load_rows(DataConfig(source=str(path), eval_size=0, **settings))[0]


@pytest.mark.parametrize("answer,problem", [
    ([4, 5], r"a list of 2 items \(\[4, 5\]\)"),
    ([], "an empty list"),
    ({"value": 4}, r"an object \(\{'value': 4\}\)"),
    (True, r"a true/false value \(True\)"),
    ([[4]], r"a list of 1 item \(\[\[4\]\]\)"),
])
def test_an_answer_that_is_not_text_or_a_number_is_refused(tmp_path: Path, answer: Any, problem: str) -> None:
    path = jsonl(tmp_path, [{"question": "2 + 2?", "answer": "4"}, {"question": "3 + 3?", "answer": answer}])
    with pytest.raises(DataError, match=rf"^{path}, line 2: column 'answer' \(data.answer_column\) holds {problem}; "
                                        r"give a plain text or number answer$"):
        load(path)


def test_nan_and_bytes_answers_are_refused(tmp_path: Path) -> None:
    path = parquet(tmp_path, {"question": ["a?", "b?"], "answer": [1.0, float("nan")]})
    with pytest.raises(DataError, match=rf"{path}, row 2: column 'answer' .* holds NaN, not a number \(an empty "
                                        r"numeric cell\?\)"):
        load(path)
    path = parquet(tmp_path, {"question": ["a?"], "answer": [b"ab"]})
    with pytest.raises(DataError, match=r"row 1: column 'answer' .* holds bytes \(b'ab'\)"):
        load(path)


def test_a_question_that_is_not_text_is_refused_too(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"question": ["a", "b"], "answer": "4"}])
    with pytest.raises(DataError, match=r"line 1: column 'question' \(data.prompt_column\) holds a list of 2 items "
                                        r"\(\['a', 'b'\]\); give a plain text or number question"):
        load(path)


def test_a_one_element_list_and_plain_numbers_are_taken_as_the_answer(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"question": "a?", "answer": [4]}, {"question": "b?", "answer": ["seven"]},
                            {"question": "c?", "answer": 2.5}, {"question": "d?", "answer": 8.0}])
    assert load(path)["answer"] == ["4", "seven", "2.5", "8"]


def test_chat_content_given_as_text_parts_is_joined(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 2?"}]
    path = jsonl(tmp_path, [{"prompt": [{"role": "user", "content": parts}], "answer": "4"},
                            {"prompt": [{"role": "user", "content": "What is 3 + 3?"}], "answer": "6"}])
    train = load(path, prompt_column="prompt")
    assert [row["prompt"][-1] for row in train] == [{"role": "user", "content": "What is 2 + 2?"},
                                                    {"role": "user", "content": "What is 3 + 3?"}]
    assert train["question"] == ["What is 2 + 2?", "What is 3 + 3?"]


def test_chat_content_that_is_not_text_is_refused_naming_the_message(tmp_path: Path) -> None:
    image = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}]
    path = jsonl(tmp_path, [{"prompt": image, "answer": "4"}])
    with pytest.raises(DataError, match=rf"^{path}, line 1: column 'prompt', message 2: its content holds a part of "
                                        "type 'image_url'; only text can be trained on here"):
        load(path, prompt_column="prompt")


def test_a_value_whose_items_disagree_is_named_without_contradiction(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"question": "a?", "answer": "1", "numbers": [1, "two"]}])
    with pytest.raises(DataError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line 1: column 'numbers' holds a list whose items are of different types")
    assert message.count("line 1") == 1
