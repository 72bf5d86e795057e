"""Tests for the built-in procedural tasks: determinism, correct answers, and the countdown checker."""

from __future__ import annotations

import re

import pytest

from grpo_box import tasks
from grpo_box.tasks import TASKS, check_answer, generate, list_tasks, verify_countdown


def _levels(name: str) -> list[int]:
    return list(range(1, TASKS[name].max_difficulty + 1))


ALL_LEVELS = [(name, d) for name in TASKS for d in _levels(name)]


def test_registry_has_the_four_tasks():
    assert {"arithmetic", "countdown", "letter_count", "sort"} <= set(list_tasks())
    for task in TASKS.values():
        assert task.description and task.example and task.max_difficulty >= 1


@pytest.mark.parametrize("name,difficulty", ALL_LEVELS)
def test_same_seed_same_rows_and_string_answers(name, difficulty):
    rows = generate(name, 40, seed=7, difficulty=difficulty)
    assert rows == generate(name, 40, seed=7, difficulty=difficulty)
    assert rows != generate(name, 40, seed=8, difficulty=difficulty)
    assert len(rows) == 40
    for row in rows:
        assert isinstance(row["question"], str) and row["question"]
        assert isinstance(row["answer"], str) and row["answer"]


def test_arithmetic_default_is_single_digit_addition():
    rows = generate("arithmetic", 50, seed=0)
    for row in rows:
        a, b = map(int, re.fullmatch(r"What is (\d) \+ (\d)\?", row["question"]).groups())
        assert row["answer"] == str(a + b)


@pytest.mark.parametrize("difficulty", _levels("arithmetic"))
def test_arithmetic_answers_recomputed(difficulty):
    for row in generate("arithmetic", 100, seed=1, difficulty=difficulty):
        expr = re.fullmatch(r"What is (.+)\?", row["question"]).group(1).replace("×", "*")
        assert re.fullmatch(r"[\d +\-*]+", expr)
        assert row["answer"] == str(eval(expr))  # safe: digits and + - * only, checked above


def test_small_pools_give_distinct_questions_first():
    rows = generate("arithmetic", 100, seed=3)  # single-digit addition has exactly 100 problems
    assert len({r["question"] for r in rows}) == 100
    assert len(generate("arithmetic", 150, seed=3)) == 150  # then repeats are allowed


@pytest.mark.parametrize("difficulty", _levels("countdown"))
def test_countdown_rows_are_solvable(difficulty):
    for row in generate("countdown", 60, seed=2, difficulty=difficulty):
        assert str(row["answer"]) in row["question"]
        assert all(str(n) in row["question"] for n in row["numbers"])
        assert verify_countdown(row["solution"], row["numbers"], row["answer"])
        assert check_answer("countdown", row["solution"], row)


@pytest.mark.parametrize(
    "expr,ok",
    [
        ("(7 - 3) * 5", True),
        ("5 * (7 - 3)", True),  # any valid expression, not only the stored one
        ("5 × (7 − 3) = 20", True),  # unicode operators and a trailing "= target"
        ("7 * 3 - 5 + 4", False),  # a number not given
        ("(7 - 3) * 5 * 5", False),  # a number used twice
        ("7 + 3 + 5", False),  # wrong value
        ("(7 - 3) * 5 - 0", False),
        ("-(3 - 7) * 5", False),  # unary minus
        ("(7 - 3) ** 5", False),
        ("__import__('os')", False),
        ("5 / (7 - 7) + 3", False),
        ("", False),
        ("twenty", False),
    ],
)
def test_verify_countdown(expr, ok):
    assert verify_countdown(expr, [3, 5, 7], 20) is ok


def test_verify_countdown_division_is_exact():
    assert verify_countdown("(8 / 3) * 6 - 2", [8, 3, 6, 2], 14)
    assert not verify_countdown("8 / 3 + 6", [8, 3, 6], 8)


@pytest.mark.parametrize("difficulty", _levels("letter_count"))
def test_letter_count_answers_recomputed(difficulty):
    rows = generate("letter_count", 100, seed=4, difficulty=difficulty)
    for row in rows:
        letter, text = re.search(r"letter '(\w)' appear in the (?:word|phrase) '([\w ]+)'", row["question"]).groups()
        assert row["answer"] == str(text.count(letter))
    assert any(r["answer"] == "0" for r in rows)  # absent letters are asked about too


def test_letter_count_strawberry_style():
    row = {"question": "How many times does the letter 'r' appear in the word 'strawberry'?", "answer": "3"}
    assert check_answer("letter_count", " 3 ", row)
    assert not check_answer("letter_count", "2", row)


@pytest.mark.parametrize("difficulty", _levels("sort"))
def test_sort_answers_recomputed(difficulty):
    for row in generate("sort", 60, seed=5, difficulty=difficulty):
        listed = re.search(r"largest: (.+?)\. Give", row["question"]).group(1)
        numbers = [int(x) for x in listed.split(", ")]
        assert row["answer"] == ", ".join(str(x) for x in sorted(numbers))


def test_sort_check_accepts_spacing_variants():
    row = {"question": "…", "answer": "1, 2, 5, 9"}
    assert check_answer("sort", "1,2,5,9", row)
    assert check_answer("sort", "[1, 2, 5, 9]", row)
    assert not check_answer("sort", "9, 5, 2, 1", row)
    assert not check_answer("sort", "one, two", row)


def test_arithmetic_check_compares_numbers():
    row = {"question": "What is 3 + 4?", "answer": "7"}
    assert check_answer("arithmetic", "7.0", row)
    assert check_answer("arithmetic", "7 apples", row)  # math-verify, as for any dataset answer
    assert not check_answer("arithmetic", "8", row)
    assert not check_answer("arithmetic", "seven", row)


COUNTDOWN_ROW = {"answer": "20", "numbers": [3, 5, 7]}
SORT_ROW = {"answer": "2, 4, 7, 9"}


@pytest.mark.parametrize(
    ("task", "predicted", "row", "ok"),
    [
        ("countdown", "(7 - 3) * 5", COUNTDOWN_ROW, True),
        ("countdown", "20", COUNTDOWN_ROW, False),  # repeating the target is not a solution
        ("countdown", "7+3+10", COUNTDOWN_ROW, False),  # 10 is not one of the numbers
        ("sort", "2,4,7,9", SORT_ROW, True),
        ("sort", "2, 4, 7, 9", SORT_ROW, True),
        ("sort", "4, 2, 7, 9", SORT_ROW, False),  # math-verify would take this as equal
        ("sort", "9", SORT_ROW, False),  # …and this, the last number
        ("letter_count", "3", {"answer": "3"}, True),
        ("letter_count", "three", {"answer": "3"}, False),
    ],
)
def test_check_answer_table(task, predicted, row, ok):
    assert check_answer(task, predicted, row) is ok


def test_countdown_check_without_numbers_says_which_column():
    with pytest.raises(ValueError, match="'numbers' column"):
        check_answer("countdown", "(7 - 3) * 5", {"answer": "20"})


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="arithmetic, countdown"):
        generate("nope", 3)
    with pytest.raises(ValueError, match="use 1 to 5"):
        generate("arithmetic", 3, difficulty=6)
    with pytest.raises(ValueError, match="valid parameters: difficulty"):
        generate("arithmetic", 3, level=2)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.get_task("")
