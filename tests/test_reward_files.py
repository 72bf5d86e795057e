"""User reward files: loading, signature checks, and runtime failures that name file and function.

Each case writes a small reward file to a temporary directory, loads it the way the training
child process does, and checks that the error a user would see points at the right place.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from grpo_box.config import RewardSpec
from grpo_box.rewards import RewardError, build_rubric, load_user_rewards, score_groups

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_rewards.py"

GOOD = """
import re
from math import sqrt  # imported names are not rewards

def _helper(text):
    return text.strip()

def says_yes(prompts, completions, **kwargs):
    return [1.0 if "yes" in _helper(c) else 0.0 for c in completions]

def uses_answer(prompts, completions, answer, bonus=0.0, **kwargs):
    return [float(a in c) + bonus for c, a in zip(completions, answer)]

def skips_all(completions, **kwargs):
    return [None for _ in completions]

def logs_a_metric(prompts, completions, log_metric=None, trainer_state=None, **kwargs):
    log_metric("my_metric", 1.0)
    return [0] * len(completions)
"""


def write(tmp_path: Path, source: str, name: str = "my_rewards.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def user_reward(tmp_path: Path, body: str, name: str = "bad"):
    """Build the rubric callable for `user:<name>` from a file holding `body`."""
    path = write(tmp_path, body)
    (func,), _ = build_rubric([f"user:{name}"], user_file=str(path))
    return func, path


def test_good_file_loads_only_public_functions_defined_there(tmp_path):
    funcs = load_user_rewards(write(tmp_path, GOOD))
    assert sorted(funcs) == ["logs_a_metric", "says_yes", "skips_all", "uses_answer"]


def test_user_rewards_run_through_the_rubric_with_params_and_columns(tmp_path):
    path = write(tmp_path, GOOD)
    funcs, weights = build_rubric(
        [RewardSpec("user:says_yes", 0.5), RewardSpec("user:uses_answer", 1.0, {"bonus": 0.25}), "user:skips_all"],
        user_file=str(path),
    )
    assert [f.__name__ for f in funcs] == ["user:says_yes", "user:uses_answer", "user:skips_all"]
    assert weights == [0.5, 1.0, 1.0]
    completions = ["yes it is 4", "no, 5"]
    assert funcs[0](["q", "q"], completions) == [1.0, 0.0]
    assert funcs[1](["q", "q"], completions, answer=["4", "4"]) == [1.25, 0.25]
    assert funcs[2](["q", "q"], completions) == [None, None]


def test_user_reward_in_the_dry_run_gets_trainer_kwargs(tmp_path):
    path = write(tmp_path, GOOD)
    groups = [{"prompt": "q", "completions": ["yes", "no"], "columns": {"answer": "yes"}}]
    report = score_groups(groups, ["user:says_yes", "user:logs_a_metric", "user:skips_all"], user_file=str(path))
    rows = report.groups[0].completions
    assert [r.total for r in rows] == [1.0, 0.0]
    assert rows[0].scores["user:skips_all"] is None
    assert rows[0].advantage == pytest.approx(-rows[1].advantage) and rows[0].advantage > 0


def test_example_file_from_the_repository_works():
    funcs = load_user_rewards(EXAMPLE)
    assert set(funcs) == {"close_enough", "short_answer"}
    rubric, _ = build_rubric(
        ["user:close_enough", {"name": "user:short_answer", "params": {"max_chars": 3}}], user_file=str(EXAMPLE)
    )
    completions = [
        [{"role": "assistant", "content": "<answer>72</answer>"}],
        [{"role": "assistant", "content": "<answer>36 apples</answer>"}],
    ]
    assert rubric[0](["q", "q"], completions, answer=["72", "72"]) == [1.0, 0.5]
    assert rubric[0](["q"], completions[:1], answer=["seventy"]) == [None]
    assert rubric[1](["q", "q"], completions) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("def bad(prompts, completions, **kwargs):\n    return [1 / 0 for _ in completions]\n",
         r"'user:bad' \(from .*my_rewards\.py\) raised ZeroDivisionError"),
        ("def bad(prompts, completions, **kwargs):\n    return [1.0]\n",
         r"'user:bad' \(from .*my_rewards\.py\) returned 1 scores for 2 completions"),
        ("def bad(prompts, completions, **kwargs):\n    return [1.0, float('nan')]\n",
         r"'user:bad' \(from .*my_rewards\.py\) returned nan for completion 1"),
        ("def bad(prompts, completions, **kwargs):\n    return [1.0, 'high']\n",
         r"'user:bad' \(from .*my_rewards\.py\) returned 'high' \(str\) for completion 1"),
        ("def bad(prompts, completions, **kwargs):\n    return 1.0\n",
         r"'user:bad' \(from .*my_rewards\.py\) returned float"),
        ("def bad(prompts, completions, answer, **kwargs):\n    return [1.0 for _ in completions]\n",
         r"'user:bad' .* raised TypeError: .*answer"),
    ],
)
def test_runtime_failures_name_file_function_and_example(tmp_path, body, match):
    func, _ = user_reward(tmp_path, body)
    with pytest.raises(RewardError, match=match) as err:
        func(["What is 8*9?", "What is 8*9?"], ["<answer>72</answer>", "<answer>71</answer>"])
    assert "example input" in str(err.value) and "What is 8*9?" in str(err.value)


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "def ok(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n\ndef bad(:\n")
    with pytest.raises(RewardError, match=r"my_rewards\.py, line 4: syntax error") as err:
        load_user_rewards(path)
    assert "def bad(:" in str(err.value)


def test_import_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "import math\nimport not_a_real_module_xyz\n")
    with pytest.raises(RewardError, match=r"my_rewards\.py, line 2: importing it failed: ModuleNotFoundError"):
        load_user_rewards(path)


def test_error_at_import_time_names_file_and_line(tmp_path):
    path = write(tmp_path, "X = 1\nY = {}['missing']\n")
    with pytest.raises(RewardError, match=r"my_rewards\.py, line 2: importing it failed: KeyError"):
        load_user_rewards(path)


def test_file_without_functions_is_rejected(tmp_path):
    source = "from os.path import join\nTHRESHOLD = 3\ndef _private(prompts, completions, **kwargs):\n    return []\n"
    path = write(tmp_path, source)
    with pytest.raises(RewardError, match=r"my_rewards\.py: no public functions found"):
        load_user_rewards(path)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("def bad(prompts, completions):\n    return []\n", r"function bad\(prompts, completions\) has no \*\*kwargs"),
        ("def bad(prompts, outputs, **kwargs):\n    return []\n", r"function bad.* has no 'completions' parameter"),
        ("def bad(prompts, completions, /, **kwargs):\n    return []\n", r"function bad.* positional-only"),
        ("async def bad(prompts, completions, **kwargs):\n    return []\n", r"function bad.* is async"),
        ("def extract(text):\n    return text\n", r"(?s)function extract\(text\).*prefix helper functions with _"),
    ],
)
def test_wrong_signature_names_file_and_function(tmp_path, source, match):
    path = write(tmp_path, source)
    with pytest.raises(RewardError, match=match) as err:
        load_user_rewards(path)
    assert "my_rewards.py" in str(err.value)


def test_missing_file_and_unknown_function(tmp_path):
    with pytest.raises(RewardError, match=r"nope\.py: not found"):
        load_user_rewards(tmp_path / "nope.py")
    path = write(tmp_path, GOOD)
    with pytest.raises(RewardError, match=r"no public function 'says_no' .*it defines: logs_a_metric, says_yes"):
        build_rubric(["user:says_no"], user_file=str(path))


def test_two_files_with_the_same_name_stay_apart(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a", "def r(prompts, completions, **kwargs):\n    return [1] * len(completions)\n")
    b = write(tmp_path / "b", "def r(prompts, completions, **kwargs):\n    return [2] * len(completions)\n")
    assert load_user_rewards(a)["r"](None, ["x"]) == [1]
    assert load_user_rewards(b)["r"](None, ["x"]) == [2]


def test_builtin_rubric_callables_pickle():
    funcs, _ = build_rubric(["think_format", "correctness"])
    restored = pickle.loads(pickle.dumps(funcs))
    assert restored[1](["q"], ["<answer>4</answer>"], answer=["4"]) == [1.0]
    assert restored[0](["q"], ["x"]) == [0.0]


FLAGGED = """
def exact(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

exact.checks_answer = True

def unflagged(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]
"""


def test_user_function_flagged_checks_answer_gets_the_sparse_warning(tmp_path):
    path = write(tmp_path, FLAGGED)
    wrong = [{"prompt": "2+2?", "completions": ["5", "six"], "columns": {"answer": "4"}}]
    report = score_groups(wrong, ["user:exact", "user:unflagged", "xml_count"], user_file=str(path))
    sparse = [w for w in report.warnings if "too sparse" in w]
    assert len(sparse) == 1 and sparse[0].startswith("user:exact scored 0 on every completion")
    assert any(w.startswith("the whole rubric scored 0") for w in report.warnings)
    right = [{"prompt": "2+2?", "completions": ["4", "six"], "columns": {"answer": "4"}}]
    assert not any("too sparse" in w for w in score_groups(right, ["user:exact"], user_file=str(path)).warnings)
