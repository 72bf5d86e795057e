"""Table tests for the built-in rewards, answer extraction, rubric building and the dry run.

Every reward is checked on plain-string and on conversational completions (TRL passes either),
through the rubric wrapper the trainer really gets. No network, no model.
"""

from __future__ import annotations

import doctest
import importlib
import json
import math
import re
from pathlib import Path

import pytest

from grpo_box.config import RewardSpec
from grpo_box.text_table import text_table
from grpo_box.rewards import (
    RewardError,
    answers,
    build_rubric,
    dryrun,
    extract_answer,
    extract_boxed,
    format_report,
    get_reward,
    list_rewards,
    parse_number,
    registry,
    rubric,
    score_file,
    score_groups,
)

PERFECT = "<think>\n8 * 9 = 72\n</think>\n<answer>\n72\n</answer>"
PERFECT_NL = PERFECT + "\n"
REASONING = "<reasoning>\n8 * 9 = 72\n</reasoning>\n<answer>\n72\n</answer>\n"
REASONING_TAGS = {"think_tag": "reasoning"}
COUNTDOWN = {"answer": "20", "task": "countdown", "numbers": [3, 5, 7]}
SORT = {"answer": "2, 4, 7, 9", "task": "sort"}


def as_chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


FORMS = {"string": lambda t: t, "chat": as_chat}


def score_one(name: str, completion: str, form: str, params: dict | None = None, **columns) -> float | None:
    """Score one completion through the same wrapped callable the trainer gets."""
    (func,), _ = build_rubric([RewardSpec(name, 1.0, params or {})])
    prompt = "What is 8*9?" if form == "string" else [{"role": "user", "content": "What is 8*9?"}]
    cols = {k: [v] for k, v in columns.items()}
    (score,) = func([prompt], [FORMS[form](completion)], None, **cols)
    return score


REWARD_TABLE = [
    # strict_format
    ("strict_format", PERFECT, {}, {}, 1.0),
    ("strict_format", PERFECT_NL, {}, {}, 1.0),
    ("strict_format", "<think>8*9=72</think><answer>72</answer>", {}, {}, 0.0),
    ("strict_format", "Sure!\n" + PERFECT, {}, {}, 0.0),
    ("strict_format", PERFECT + "\nmore text", {}, {}, 0.0),
    ("strict_format", PERFECT + "\n<answer>\n73\n</answer>", {}, {}, 0.0),
    ("strict_format", REASONING, REASONING_TAGS, {}, 1.0),
    ("strict_format", REASONING, {}, {}, 0.0),
    # soft_format
    ("soft_format", "<think>x</think> <answer>72</answer>", {}, {}, 1.0),
    ("soft_format", "Okay. <think>x</think>\n\n<answer>72</answer> bye", {}, {}, 1.0),
    ("soft_format", "<answer>72</answer><think>x</think>", {}, {}, 0.0),
    ("soft_format", "<think>x</think> 72", {}, {}, 0.0),
    ("soft_format", "<reasoning>x</reasoning><answer>72</answer>", REASONING_TAGS, {}, 1.0),
    # xml_count
    ("xml_count", PERFECT, {}, {}, 0.5),
    ("xml_count", PERFECT_NL, {}, {}, 0.5),
    ("xml_count", REASONING, REASONING_TAGS, {}, 0.5),
    ("xml_count", PERFECT + "\nabcdefghij", {}, {}, 0.49),
    ("xml_count", "<think>\nx\n</think>\n", {}, {}, 0.25),
    ("xml_count", "<think>\nx\n</think>\n<think>\ny\n</think>\n", {}, {}, 0.0),
    ("xml_count", "72", {}, {}, 0.0),
    # think_format (graded)
    ("think_format", PERFECT, {}, {}, 1.0),
    ("think_format", "<think>x</think><answer>72</answer> bye", {}, {}, 0.75),
    ("think_format", "<answer>72</answer><think>x</think>", {}, {}, 0.5),
    ("think_format", "<think>8*9</think> so 72", {}, {}, 0.25),
    ("think_format", "<answer>72</answer>", {}, {}, 0.25),
    ("think_format", "<think> </think><answer>72</answer>", {}, {}, 0.25),
    ("think_format", "just 72", {}, {}, 0.0),
    ("think_format", REASONING, REASONING_TAGS, {}, 1.0),
    # boxed_format
    ("boxed_format", r"so \boxed{72}", {}, {}, 1.0),
    ("boxed_format", r"\boxed{7} or \boxed{2}", {}, {}, 0.0),
    ("boxed_format", r"\boxed{}", {}, {}, 0.0),
    # correctness: math-verify equivalences against reference 72
    ("correctness", "<answer>72</answer>", {}, {"answer": "72"}, 1.0),
    ("correctness", "<answer>72.0</answer>", {}, {"answer": "72"}, 1.0),
    ("correctness", r"<answer>\boxed{72}</answer>", {}, {"answer": "72"}, 1.0),
    ("correctness", "<answer>$72</answer>", {}, {"answer": "72"}, 1.0),
    ("correctness", "<answer>72 dollars</answer>", {}, {"answer": "72"}, 1.0),
    ("correctness", r"<answer>\$72.00</answer>", {}, {"answer": "72"}, 1.0),
    ("correctness", "<answer>71</answer>", {}, {"answer": "72"}, 0.0),
    ("correctness", "<answer>72</answer>", {}, {"answer": "He earns 8*9 = 72. #### 72"}, 1.0),
    ("correctness", "<answer>72</answer>", {}, {"answer": 72}, 1.0),
    ("correctness", "<answer>1,000</answer>", {}, {"answer": "1000"}, 1.0),
    ("correctness", r"<answer>\frac{3}{4}</answer>", {}, {"answer": "0.75"}, 1.0),
    ("correctness", "<answer>x</answer> but really 72", {}, {"answer": "72"}, 0.0),
    ("correctness", r"thinking... \boxed{72}", {}, {"answer": "72"}, 1.0),
    ("correctness", "8 times 9 is 72", {}, {"answer": "72"}, 1.0),
    ("correctness", "8 times 9 is 72", {"fallback": False}, {"answer": "72"}, 0.0),
    ("correctness", "no idea", {}, {"answer": "72"}, 0.0),
    ("correctness", "<result>72</result>", {"tag": "result", "fallback": False}, {"answer": "72"}, 1.0),
    # correctness on task rows: the task's own checker, not math-verify against the target
    ("correctness", "<answer>(7 - 3) * 5</answer>", {}, COUNTDOWN, 1.0),
    ("correctness", "<answer>5 * (7 - 3) = 20</answer>", {}, COUNTDOWN, 1.0),
    ("correctness", "<answer>20</answer>", {}, COUNTDOWN, 0.0),  # repeats the target
    ("correctness", "<answer>7+3+10</answer>", {}, COUNTDOWN, 0.0),  # 10 is not a given number
    ("correctness", "<answer>7*3-5</answer>", {}, COUNTDOWN, 0.0),  # 16
    ("correctness", "<answer>2,4,7,9</answer>", {}, SORT, 1.0),
    ("correctness", "<answer>2, 4, 7, 9</answer>", {}, SORT, 1.0),
    ("correctness", "<answer>4, 2, 7, 9</answer>", {}, SORT, 0.0),
    ("correctness", "<answer>9</answer>", {}, SORT, 0.0),
    ("correctness", "<answer>72 dollars</answer>", {}, {"answer": "72", "task": "arithmetic"}, 1.0),
    ("correctness", "<answer>71</answer>", {}, {"answer": "72", "task": "arithmetic"}, 0.0),
    ("correctness", "<answer>72</answer>", {}, {"answer": "72", "task": "gsm8k"}, 1.0),  # not a built-in task
    # integer_answer
    ("integer_answer", "<answer>72</answer>", {}, {}, 1.0),
    ("integer_answer", "<answer>\n-3\n</answer>", {}, {}, 1.0),
    ("integer_answer", "<answer>1,000</answer>", {}, {}, 1.0),
    ("integer_answer", "<answer>72.5</answer>", {}, {}, 0.0),
    ("integer_answer", "<answer>seventy</answer>", {}, {}, 0.0),
    ("integer_answer", "72", {}, {}, 0.0),
    ("integer_answer", r"\boxed{72}", {"fallback": True}, {}, 1.0),
    # target_length
    ("target_length", "a" * 100, {"target": 100, "unit": "chars"}, {}, 1.0),
    ("target_length", "a" * 50, {"target": 100, "unit": "chars"}, {}, 0.5),
    ("target_length", "a" * 150, {"target": 100, "unit": "chars"}, {}, 0.5),
    ("target_length", "a" * 300, {"target": 100, "unit": "chars"}, {}, 0.0),
    ("target_length", "one two three four", {"target": 4, "unit": "words"}, {}, 1.0),
    ("target_length", "a" * 40, {"target": 10}, {}, 1.0),  # no token ids: ~4 chars per token
    # repetition_penalty
    ("repetition_penalty", "the cat sat on the mat today", {}, {}, 0.0),
    ("repetition_penalty", "go go go go go go", {"ngram": 2}, {}, -0.8),
    ("repetition_penalty", "go go go go go go", {"ngram": 2, "max_penalty": -0.5}, {}, -0.4),
    ("repetition_penalty", "hi", {}, {}, 0.0),
    # reasoning_then_answer
    ("reasoning_then_answer", "<think>" + "step " * 50 + "</think><answer>72</answer>", {}, {"answer": "72"}, 0.5),
    ("reasoning_then_answer", "<think>" + "step " * 500 + "</think><answer>72</answer>", {}, {"answer": "72"}, 1.0),
    ("reasoning_then_answer", "<think>" + "step " * 50 + "</think><answer>71</answer>", {}, {"answer": "72"}, 0.0),
    ("reasoning_then_answer", "<think>ok</think><answer>72</answer>", {}, {"answer": "72"}, 0.0),
    ("reasoning_then_answer", "<answer>72</answer><think>" + "step " * 50 + "</think>", {}, {"answer": "72"}, 0.0),
    ("reasoning_then_answer", "<think>" + "w " * 10 + "</think><answer>72</answer>", {"cap_words": 20}, {"answer": "72"}, 0.5),
    ("reasoning_then_answer", "<think>" + "step " * 50 + "</think><answer>(7-3)*5</answer>", {}, COUNTDOWN, 0.5),
    ("reasoning_then_answer", "<think>" + "step " * 50 + "</think><answer>20</answer>", {}, COUNTDOWN, 0.0),
]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize(("name", "completion", "params", "columns", "expected"), REWARD_TABLE)
def test_reward_table(name, completion, params, columns, expected, form):
    assert score_one(name, completion, form, params, **columns) == pytest.approx(expected)


def test_every_registered_reward_has_a_table_row_and_a_docstring_example():
    tested = {row[0] for row in REWARD_TABLE}
    for info in list_rewards():
        assert info["name"] in tested
        assert ">>>" in (get_reward(info["name"]).__doc__ or "")


def _modules_with_examples() -> list[str]:
    """Every grpo_box module whose source holds a docstring example (`>>>`)."""
    package = Path(__file__).resolve().parent.parent / "grpo_box"
    found = [p.relative_to(package.parent).with_suffix("") for p in sorted(package.rglob("*.py"))
             if ">>>" in p.read_text(encoding="utf-8")]
    return [".".join(p.parts).removesuffix(".__init__") for p in found]


def test_doctest_discovery_finds_the_known_modules():
    found = set(_modules_with_examples())
    assert {"grpo_box.tasks", "grpo_box.evaluate", "grpo_box.rewards.answers", "grpo_box.rewards.correctness",
            "grpo_box.rewards.format", "grpo_box.rewards.length", "grpo_box.rewards.dryrun",
            "grpo_box.rewards.rubric"} <= found


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_hold(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_target_length_uses_completion_ids_for_tokens():
    func = get_reward("target_length")
    assert func(None, ["x", "y"], completion_ids=[[1] * 10, [1] * 15], target=10) == [1.0, 0.5]


def test_correctness_without_answer_column_names_the_fix():
    (func,), _ = build_rubric(["correctness"])
    with pytest.raises(RewardError, match="column named 'answer'") as err:
        func(["What is 8*9?"], ["<answer>72</answer>"])
    assert "correctness" in str(err.value) and "What is 8*9?" in str(err.value)


# --- answer helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tag", "expected"),
    [
        ("<answer>\n 42 \n</answer>", "answer", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "answer", "2"),
        ("<answer>unclosed", "answer", None),
        ("<result>7</result>", "result", "7"),
        ("no tags", "answer", None),
    ],
)
def test_extract_answer(text, tag, expected):
    assert extract_answer(text, tag) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{72}", "72"),
        (r"\boxed{\frac{1}{2}} and later \boxed{3}", "3"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\fbox{5}", "5"),
        (r"\boxed{unclosed", None),
        ("nothing", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("72", 72.0), ("$1,234.50", 1234.5), ("it is -3 degrees", -3.0), ("72 dollars", 72.0),
     ("3/4", 0.75), ("from 5 to 9", 9.0), ("none", None), ("", None), (None, None)],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "chat"}], "chat"),
        ([{"role": "assistant", "content": [{"type": "text", "text": "parts"}]}], "parts"),
        ({"role": "user", "content": "one"}, "one"),
        (None, ""),
    ],
)
def test_to_text(item, expected):
    assert answers.to_text(item) == expected


# --- registry and rubric --------------------------------------------------------------------


def test_list_rewards_has_names_descriptions_and_defaults():
    entries = {e["name"]: e for e in list_rewards()}
    assert {"think_format", "correctness", "xml_count", "strict_format", "soft_format", "integer_answer",
            "target_length", "repetition_penalty", "reasoning_then_answer"} <= set(entries)
    assert entries["target_length"]["params"] == {"target": 200, "unit": "tokens"}
    assert all(e["description"] and "\n" not in e["description"] for e in entries.values())
    json.dumps(list_rewards())


def test_unknown_reward_lists_valid_names():
    with pytest.raises(RewardError) as err:
        get_reward("corectness")
    message = str(err.value)
    assert "did you mean 'correctness'" in message and "think_format" in message and "xml_count" in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(RewardError, match="valid names"):
        build_rubric([RewardSpec("nope")])


def test_build_rubric_binds_params_names_and_weights():
    funcs, weights = build_rubric(
        [
            RewardSpec("think_format", 0.5),
            RewardSpec("correctness", 2),
            {"name": "target_length", "params": {"target": 5, "unit": "chars"}},
            RewardSpec("target_length", 1.0, {"target": 10, "unit": "chars"}),
        ]
    )
    assert [f.__name__ for f in funcs] == ["think_format", "correctness", "target_length", "target_length_2"]
    assert weights == [0.5, 2.0, 1.0, 1.0]
    assert funcs[2]([None], ["aaaaa"]) == [1.0] and funcs[3]([None], ["aaaaa"]) == [0.5]


def test_default_config_rubric_builds():
    from grpo_box.config import RunConfig

    funcs, weights = build_rubric(RunConfig().rewards)  # the cpu preset's rubric
    assert [f.__name__ for f in funcs] == ["xml_count", "think_format", "correctness"] and weights == [0.5, 0.5, 2.0]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (RewardSpec("target_length", 1.0, {"length": 3}), "no param 'length'.*target=200"),
        (RewardSpec("target_length", 1.0, {"target": "long"}), "should be a int"),
        (RewardSpec("target_length", 1.0, {"unit": "bytes"}), "unit='bytes'"),
        (RewardSpec("repetition_penalty", 1.0, {"max_penalty": 1.0}), "must be <= 0"),
        (RewardSpec("strict_format", 1.0, {"think_tag": "<think>"}), "plain word"),
        (RewardSpec("correctness", "heavy"), "weight must be a finite number"),
        (RewardSpec("user:mine"), "no user reward file"),
    ],
)
def test_build_rubric_rejects_bad_specs(spec, match):
    with pytest.raises(RewardError, match=match):
        build_rubric([spec])


def test_rubric_callable_takes_trainer_kwargs_and_extra_columns():
    (func,), _ = build_rubric(["correctness"])
    scores = func(
        prompts=["q1", "q2"], completions=["<answer>72</answer>", "<answer>3</answer>"], completion_ids=[[1], [2]],
        answer=["72", "4"], difficulty=["easy", "hard"], trainer_state=None, log_extra=print, log_metric=print,
    )
    assert scores == [1.0, 0.0]


def test_trl_sees_the_rubric_names():
    utils = pytest.importorskip("trl.trainer.utils")
    funcs, _ = build_rubric(["think_format", "correctness"])
    assert [utils.get_callable_name(f) for f in funcs] == ["think_format", "correctness"]
    assert not any(utils.is_async_callable(f) for f in funcs)


@pytest.mark.parametrize(
    ("output", "match"),
    [
        (0.5, "returned float"),
        ([1.0], "returned 1 scores for 2 completions"),
        ([1.0, float("nan")], "returned nan for completion 1"),
        ([float("inf"), 1.0], "returned inf for completion 0"),
        ([1.0, "yes"], "returned 'yes' \\(str\\) for completion 1"),
    ],
)
def test_output_checker_rejects_bad_output(output, match):
    with pytest.raises(RewardError, match=match) as err:
        rubric.check_output("mine", output, ["q", "q"], ["first completion", "second completion"])
    assert "'mine'" in str(err.value) and "example input" in str(err.value)


def test_output_checker_accepts_numbers_and_none():
    import numpy as np

    out = rubric.check_output("mine", [1, 0.5, None, np.float32(2)], list("abcd"), list("abcd"))
    assert out == [1.0, 0.5, None, 2.0] and all(type(v) in (float, type(None)) for v in out)
    assert rubric.check_output("mine", np.array([1.0, 2.0]), [0, 0], ["a", "b"]) == [1.0, 2.0]


def test_exception_becomes_reward_error_with_shortened_example():
    def broken(prompts, completions, **kwargs):
        raise KeyError("boom")

    func = rubric.RewardFunction("user:broken", broken, {})
    long_completion = "x" * 5000 + " the end"
    with pytest.raises(RewardError) as err:
        func([[{"role": "user", "content": "What is 8*9?"}]], [as_chat(long_completion)])
    message = str(err.value)
    assert "'user:broken' raised KeyError" in message and "What is 8*9?" in message
    assert "the end" in message and len(message) < 600


# --- dry run --------------------------------------------------------------------------------


def test_advantages_use_sample_std():
    mean, std, adv = dryrun.group_advantages([1.0, 0.0, 0.0, 1.0])
    assert mean == 0.5 and std == pytest.approx(math.sqrt(1 / 3))
    assert adv == pytest.approx([0.866, -0.866, -0.866, 0.866], abs=1e-3)


def test_advantages_skip_unscorable_rows_like_trl():
    mean, std, adv = dryrun.group_advantages([2.0, None, 0.0])
    assert mean == 1.0 and adv[1] == 0.0 and adv[0] == pytest.approx(-adv[2])


GROUP = {
    "prompt": [{"role": "user", "content": "What is 8*9?"}],
    "completions": [PERFECT, "<think>\nhmm\n</think>\n<answer>\n71\n</answer>", "72", "no idea"],
    "columns": {"answer": "72"},
}


def test_score_groups_reports_scores_totals_and_advantages():
    report = score_groups([GROUP], [RewardSpec("think_format", 0.5), RewardSpec("correctness", 2.0)])
    rows = report.groups[0].completions
    assert [r.scores["think_format"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
    assert [r.scores["correctness"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert [r.total for r in rows] == [2.5, 0.5, 2.0, 0.0]
    assert sum(r.advantage for r in rows) == pytest.approx(0.0, abs=1e-6)
    assert rows[0].advantage > rows[2].advantage > 0 > rows[1].advantage > rows[3].advantage
    assert report.warnings == []
    json.loads(json.dumps(report.to_dict()))


def test_score_groups_warns_about_flat_groups_and_sparse_correctness():
    groups = [
        {"prompt": "2+2?", "completions": ["<answer>5</answer>"] * 3, "columns": {"answer": "4"}},
        {"prompt": "3+3?", "completions": ["<think>x</think><answer>7</answer>", "7"], "columns": {"answer": "6"}},
    ]
    report = score_groups(groups, ["think_format", "correctness"])
    assert "group 1: no learning signal: every completion scored 0.25" in report.warnings
    assert not any(w.startswith("group 2") for w in report.warnings)
    assert any(dryrun.SPARSE_WARNING in w for w in report.warnings)
    text = format_report(report)
    assert "no learning signal" in text and "think_format" in text and "advantage" in text


def test_no_sparse_warning_when_some_answer_is_right():
    report = score_groups([GROUP], ["correctness"])
    assert not any(dryrun.SPARSE_WARNING in w for w in report.warnings)


def test_format_report_renders_every_completion():
    report = score_groups([GROUP], [RewardSpec("think_format", 0.5), RewardSpec("correctness", 2.0)])
    text = format_report(report)
    assert "Rubric: think_format ×0.5, correctness ×2" in text and "What is 8*9?" in text
    assert text.count("\n  ") >= 6 and "+0." in text and "No warnings." in text


def test_score_file_reads_yaml_and_jsonl(tmp_path):
    rubric_path = tmp_path / "rubric.yaml"
    rubric_path.write_text("rewards:\n  - {name: think_format, weight: 0.5}\n  - name: correctness\n    weight: 2.0\n")
    data = tmp_path / "samples.jsonl"
    rows = [
        {"prompt": "What is 8*9?", "completion": PERFECT, "answer": "72"},
        {"prompt": "What is 8*9?", "completion": "71", "answer": "72"},
        {"prompt": "2+2?", "completions": ["<answer>4</answer>", "<answer>5</answer>"], "answer": "4"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    report = score_file(rubric_path, data)
    assert [len(g.completions) for g in report.groups] == [2, 2]
    assert [r.total for r in report.groups[0].completions] == [2.5, 0.0]
    assert report.rewards[1] == {"name": "correctness", "weight": 2.0, "params": {"tag": "answer", "fallback": True}}


def test_score_file_accepts_a_plain_list_rubric(tmp_path):
    rubric_path = tmp_path / "rubric.yaml"
    rubric_path.write_text("- xml_count\n- {name: target_length, params: {target: 5, unit: chars}}\n")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completions": ["aaaaa", PERFECT_NL]}) + "\n")
    rows = score_file(rubric_path, data).groups[0].completions
    assert [r.scores["xml_count"] for r in rows] == [0.0, 0.5]
    assert rows[0].scores["target_length"] == 1.0


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"prompt": "p", "completion": "c"}', "{not json"], r"d\.jsonl, line 2: not valid JSON"),
        (['{"completion": "c"}'], r"line 1: .*'prompt'"),
        (['{"prompt": "p"}'], r"line 1: give either 'completion'"),
        (['{"prompt": "p", "completions": [1, 2]}'], r"line 1: completions must be strings"),
        (['{"prompt": "p", "completion": "a", "answer": "1"}', '{"prompt": "p", "completion": "b", "answer": "2"}'],
         r"line 2: same prompt as .*line 1 but different columns"),
        ([], r"no rows"),
    ],
)
def test_score_file_bad_data_lines_name_file_and_line(tmp_path, lines, match):
    rubric_path = tmp_path / "r.yaml"
    rubric_path.write_text("- think_format\n")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines))
    with pytest.raises(RewardError, match=match):
        score_file(rubric_path, data)


@pytest.mark.parametrize(
    ("text", "match"),
    [("model: {}\n", "needs a 'rewards:' list"), ("rewards: [", "not valid YAML"), ("[]", "non-empty list"),
     ("- {name: x, wieght: 2}\n", "unknown key 'wieght'")],
)
def test_bad_rubric_yaml_names_the_file(tmp_path, text, match):
    rubric_path = tmp_path / "r.yaml"
    rubric_path.write_text(text)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    with pytest.raises(RewardError, match=match) as err:
        score_file(rubric_path, data)
    assert "r.yaml" in str(err.value)


@pytest.mark.parametrize("which", ["rubric", "data"])
def test_a_rubric_or_data_file_that_is_not_utf8_names_the_file(tmp_path, which):
    """A Latin-1 file was a UnicodeDecodeError traceback; it reads through config.read_text now."""
    rubric_path, data = tmp_path / "r.yaml", tmp_path / "d.jsonl"
    rubric_path.write_text("- think_format\n")
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    bad = rubric_path if which == "rubric" else data
    bad.write_bytes(bad.read_bytes().replace(b"\n", " # caf\xe9\n".encode("latin-1"), 1) if which == "rubric"
                    else '{"prompt": "caf\xe9", "completion": "c"}\n'.encode("latin-1"))
    with pytest.raises(RewardError) as err:
        score_file(rubric_path, data)
    assert str(err.value) == f"{which} file {bad}: not a UTF-8 text file (byte {bad.read_bytes().index(0xE9)}); " \
                             "save it as UTF-8"
    bad.unlink()
    with pytest.raises(RewardError, match=rf"^{which} file .*{bad.name}: file not found$"):
        score_file(rubric_path, data)


def test_the_dry_run_table_is_the_clis_one_table(monkeypatch):
    """The group table goes through text_table (it aligned its columns by hand): scores right-aligned
    under their headers, the completion last and left-aligned."""
    calls = []
    monkeypatch.setattr(dryrun, "text_table", lambda rows, **kw: calls.append(rows) or text_table(rows, **kw))
    report = score_groups([GROUP], [RewardSpec("think_format", 0.5), RewardSpec("correctness", 2.0)])
    lines = format_report(report).splitlines()
    assert len(calls) == 1 and calls[0][0] == ["#", "think_format", "correctness", "total", "advantage", "completion"]
    header = next(i for i, line in enumerate(lines) if line.startswith("  #  think_format"))
    table = lines[header:header + 1 + len(GROUP["completions"])]
    ends = {re.search(r"advantage|[+-]\d\.\d{3}", line).end() for line in table}
    assert len(ends) == 1  # every advantage ends under the header's last letter
    assert table[2].endswith("  <think>\\nhmm\\n</think>\\n<answer>\\n71\\n</answer>")


def test_score_error_names_the_data_line(tmp_path):
    rubric_path = tmp_path / "r.yaml"
    rubric_path.write_text("- correctness\n")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')  # no answer column
    with pytest.raises(RewardError, match=r"d\.jsonl, line 1: reward 'correctness' raised ValueError"):
        score_file(rubric_path, data)


def test_registry_rejects_a_second_reward_under_a_taken_name():
    with pytest.raises(RewardError, match="registered twice"):
        @registry.register("xml_count", "duplicate")
        def other(prompts, completions, **kwargs):
            return [0.0] * len(completions)


def test_correctness_works_off_the_main_thread():
    # math-verify's SIGALRM timeout is main-thread only; the UI calls rewards from worker threads.
    from concurrent.futures import ThreadPoolExecutor

    func = get_reward("correctness")
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(func, None, ["<answer>$72</answer>", "<answer>7</answer>"], answer=["72", "72"]).result()
    assert result == [1.0, 0.0]


# --- rubric tags follow the data template ----------------------------------------------------

FULL_FORMAT = {"strict_format": 1.0, "soft_format": 1.0, "xml_count": 0.5, "think_format": 1.0, "correctness": 1.0}
PERFECT_IN = {"think": PERFECT_NL, "reasoning": REASONING, "boxed": "8 * 9 = 72, so the answer is \\boxed{72}."}


def score_with_template(template: str, specs: list, completion: str) -> dict[str, float | None]:
    funcs, _ = build_rubric(specs, template=template)
    prompt = [{"role": "user", "content": "What is 8*9?"}]
    return {f.name: f([prompt], [as_chat(completion)], None, answer=["72"])[0] for f in funcs}


@pytest.mark.parametrize("template", ["think", "reasoning"])
def test_perfect_completion_gets_full_format_reward_in_its_template(template):
    assert score_with_template(template, list(FULL_FORMAT), PERFECT_IN[template]) == FULL_FORMAT


def test_perfect_boxed_completion_gets_full_format_reward():
    scores = score_with_template("boxed", ["boxed_format", "correctness"], PERFECT_IN["boxed"])
    assert scores == {"boxed_format": 1.0, "correctness": 1.0}
    assert score_with_template("boxed", [{"name": "integer_answer", "params": {"fallback": True}}],
                               PERFECT_IN["boxed"]) == {"integer_answer": 1.0}


def test_template_tags_reach_the_rubric_and_matter():
    specs = [RewardSpec("think_format", 0.5), RewardSpec("correctness", 2.0)]  # tags unset
    assert score_with_template("reasoning", specs, REASONING) == {"think_format": 1.0, "correctness": 1.0}
    assert score_with_template("think", specs, REASONING)["think_format"] == 0.25  # the wrong tags cost


def test_explicit_tag_params_win_over_the_template():
    spec = RewardSpec("think_format", 1.0, {"think_tag": "think"})
    assert score_with_template("reasoning", [spec], PERFECT_NL) == {"think_format": 1.0}
    assert rubric.apply_template([spec], "reasoning")[0].params == {"think_tag": "think", "answer_tag": "answer"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [("think_format", "use boxed_format"), ("xml_count", "use boxed_format"),
     ("reasoning_then_answer", "think_tag and answer_tag"),
     (RewardSpec("correctness", 1.0, {"fallback": False}), "fallback: true"),
     ("integer_answer", "fallback: true")],  # it reads <answer> only by default
)
def test_boxed_template_refuses_rewards_that_need_tags(spec, match):
    with pytest.raises(RewardError, match=match) as err:
        build_rubric([spec], template="boxed")
    assert "data.template='boxed'" in str(err.value)
    explicit = RewardSpec("think_format", 1.0, {"think_tag": "think", "answer_tag": "answer"})
    assert build_rubric([explicit], template="boxed")[0][0].params["think_tag"] == "think"


def test_unknown_template_is_refused_with_the_choices():
    from grpo_box.config import ConfigError

    with pytest.raises(ConfigError, match="think, reasoning, boxed"):
        build_rubric(["think_format"], template="cot")


# --- dry run: completion_ids, reserved keys, sparse correctness-like rewards --------------------


def write_dry_run(tmp_path, rows: list[dict], rubric_text: str = "- {name: target_length, params: {target: 4}}\n"):
    rubric_path = tmp_path / "r.yaml"
    rubric_path.write_text(rubric_text)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rubric_path, data


def test_score_file_takes_completion_ids_per_line_and_per_group(tmp_path):
    rows = [{"prompt": "p", "completion": "a", "completion_ids": [1, 2, 3, 4]},
            {"prompt": "p", "completion": "b", "completion_ids": [1, 2]},
            {"prompt": "q", "completions": ["c", "d"], "completion_ids": [[1], [1, 2, 3, 4, 5, 6]]}]
    report = score_file(*write_dry_run(tmp_path, rows))
    lengths = [[r.scores["target_length"] for r in g.completions] for g in report.groups]
    assert lengths == [[1.0, 0.5], [0.25, 0.5]]  # tokens counted from the ids, not estimated


@pytest.mark.parametrize(
    ("row", "match"),
    [({"prompt": "p", "completion": "a", "completion_ids": "1 2"}, "'completion_ids' must be a list of token ids"),
     ({"prompt": "p", "completions": ["a", "b"], "completion_ids": [[1]]}, "a list of 2 token-id lists"),
     ({"prompt": "p", "completion": "a", "trainer_state": {}}, "'trainer_state' is passed by the trainer"),
     ({"prompt": "p", "completion": "a", "prompts": ["p"]}, "'prompts' is passed by the trainer"),
     ({"prompt": "p", "completion": "a", "log_metric": 1}, "'log_metric' is passed by the trainer")],
)
def test_score_file_rejects_reserved_keys_with_the_line(tmp_path, row, match):
    with pytest.raises(RewardError, match=match) as err:
        score_file(*write_dry_run(tmp_path, [row]))
    assert "d.jsonl, line 1" in str(err.value)


def test_score_file_wants_completion_ids_on_all_lines_of_a_prompt_or_none(tmp_path):
    rows = [{"prompt": "p", "completion": "a", "completion_ids": [1]}, {"prompt": "p", "completion": "b"}]
    with pytest.raises(RewardError, match=r"line 2: give 'completion_ids' on every line of a prompt or on none"):
        score_file(*write_dry_run(tmp_path, rows))


def test_score_groups_rejects_reserved_column_names():
    group = {"prompt": "p", "completions": ["a"], "columns": {"answer": "1", "completions": ["x"]}}
    with pytest.raises(RewardError, match="column 'completions' is a name the trainer passes itself"):
        score_groups([group], ["correctness"])


NEVER_RIGHT = [{"prompt": "2+2?", "completions": ["<think>" + "hmm " * 10 + "</think><answer>5</answer>"] * 2,
                "columns": {"answer": "4"}}]


@pytest.mark.parametrize(
    ("specs", "sparse"),
    [(["xml_count", "reasoning_then_answer"], ["reasoning_then_answer"]),
     (["xml_count", "correctness", "reasoning_then_answer"], ["correctness", "reasoning_then_answer"]),
     (["xml_count", "repetition_penalty"], [])],  # a penalty at 0 is fine; only answer checks count
)
def test_sparse_warning_covers_every_correctness_like_reward(specs, sparse):
    report = score_groups(NEVER_RIGHT, specs)
    flagged = [w.split(" scored 0")[0] for w in report.warnings if dryrun.SPARSE_WARNING in w]
    assert flagged == sparse


def test_list_rewards_marks_the_correctness_like_ones():
    marked = {e["name"] for e in list_rewards() if e["checks_answer"]}
    assert marked == {"correctness", "reasoning_then_answer"}


def test_score_file_template_fills_tags_as_training_does(tmp_path):
    rubric_path, data = write_dry_run(tmp_path, [{"prompt": "p", "completion": REASONING}], "- think_format\n")
    assert score_file(rubric_path, data).groups[0].completions[0].scores["think_format"] == 0.25
    assert score_file(rubric_path, data, template="reasoning").groups[0].completions[0].scores["think_format"] == 1.0


# ---------------------------------------------------------------- one scoring rule (rewards.scoring)

SKIPPING = '''
def skip_short(prompts, completions, completion_ids=None, **kw):
    """None (skip) for a completion without an answer tag, else 1.0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if "<answer>" in t else None for t in texts]


def skip_all(prompts, completions, completion_ids=None, **kw):
    return [None] * len(completions)
'''


def test_weighted_total_is_none_when_every_function_skipped():
    from grpo_box.rewards import weighted_total

    assert weighted_total([None, None], [2.0, 0.5]) is None  # TRL: unscorable, not 0
    assert weighted_total([1.0, None], [2.0, 0.5]) == 2.0  # nansum of the present ones
    assert weighted_total([0.0, 0.0], [2.0, 0.5]) == 0.0


def test_dry_run_gives_an_all_none_row_no_total_and_no_advantage(tmp_path):
    user = tmp_path / "skips.py"
    user.write_text(SKIPPING)
    group = {"prompt": "2+2?", "completions": ["<answer>4</answer>", "four", "<answer>5</answer>"],
             "columns": {"answer": "4"}}
    report = score_groups([group], [RewardSpec("user:skip_short", 2.0), RewardSpec("user:skip_all", 1.0)], str(user))
    rows = report.groups[0].completions
    assert [r.total for r in rows] == [2.0, None, 2.0]
    assert rows[1].advantage == 0.0 and report.groups[0].mean == 2.0


def test_call_rewards_passes_what_trl_passes(tmp_path):
    from grpo_box.rewards import call_rewards

    seen = {}

    def spy(prompts, completions, completion_ids=None, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, kwargs=kwargs)
        return [0.0] * len(completions)

    func = rubric.RewardFunction("spy", spy, {})
    chat = [[{"role": "user", "content": "2+2?"}]] * 2
    call_rewards([func], chat, ["4", "5"], [[1], [2]], {"answer": ["4", "4"]})
    assert seen["completions"] == [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]]
    assert seen["ids"] == [[1], [2]] and seen["kwargs"]["answer"] == ["4", "4"]
    assert seen["kwargs"]["trainer_state"] is None
    assert callable(seen["kwargs"]["log_extra"]) and callable(seen["kwargs"]["log_metric"])
    call_rewards([func], ["2+2?"] * 2, ["4", "5"])
    assert seen["completions"] == ["4", "5"] and seen["ids"] is None  # plain prompts: plain completions
