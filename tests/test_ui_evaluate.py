"""The Evaluate tab's views of eval.json (no model): the summary table, the bars base against
trained, the examples filtered to those training fixed or broke with each reply split into its
reasoning and answer; the tab reading a run's eval.json back through the API; its progress bar
moving forward only, and a second evaluation of a run refused while one runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ui_helpers import launch_app, value

from grpo_box.config import RunConfig
from grpo_box.runs import create_run
from grpo_box.ui import eval_view


def example(question: str, answer: str, completion: str, correct: bool) -> dict[str, Any]:
    return {"question": question, "answer": answer, "completion": completion, "predicted": answer if correct else "",
            "correct": correct, "reward": 1.0 if correct else 0.0, "rewards": {}}


BASE = {"rows": 3, "accuracy": 1 / 3, "reward": 0.5, "rewards": {"think_format": 0.2, "correctness": 0.33},
        "completion_length": 40.0, "clipped_ratio": 0.5,
        "examples": [example("1+1?", "2", "<think>one and one</think><answer>2</answer>", True),
                     example("2+2?", "4", "five", False),
                     example("3+3?", "6", "six", False)]}
TRAINED = {"rows": 3, "accuracy": 2 / 3, "reward": 0.9, "rewards": {"think_format": 0.8, "correctness": -0.1},
           "completion_length": 30.0, "clipped_ratio": 0.0,
           "examples": [example("1+1?", "2", "<think>hmm</think><answer>3</answer>", False),
                        example("2+2?", "4", "<think>two and two</think><answer>4</answer>", True),
                        example("3+3?", "6", "<think>three</think><answer>6</answer>", True)]}
RESULTS = {"base": BASE, "trained": TRAINED,
           "delta": {"accuracy": 1 / 3, "reward": 0.4, "rewards": {"think_format": 0.6, "correctness": -0.43},
                     "completion_length": -10.0, "clipped_ratio": -0.5}}


def test_summary_colours_the_change() -> None:
    html = eval_view.summary_html(RESULTS)
    assert "<td>accuracy</td><td>33.3%</td><td>66.7%</td><td style=\"color:#2e7d32\">+33.3%</td>" in html
    assert "<td>reward: correctness</td><td>0.330</td><td>-0.100</td><td style=\"color:#c62828\">-0.430</td>" in html
    assert "<td>clipped ratio</td><td>50.0%</td><td>0.0%</td><td style=\"color:#2e7d32\">-50.0%</td>" in html
    assert eval_view.summary_html({}) == ""


def test_base_and_trained_scored_on_different_rows_are_flagged_above_the_table(tmp_path: Path) -> None:
    from grpo_box.evaluate import mismatch_warning

    trained = {**TRAINED, "rows": 2}
    warning = mismatch_warning(BASE, trained, tmp_path)  # the engine's own words, as eval.json keeps them
    html = eval_view.summary_html({**RESULTS, "trained": trained, "warning": warning})
    assert html.index("Not a like-for-like comparison") < html.index("evaluate-summary-table")
    assert "base scored on 3 rows, trained on 2" in html and "Evaluate base and trained" in html
    assert "Not a like-for-like" not in eval_view.summary_html(RESULTS)


def test_bars_stand_side_by_side_from_zero() -> None:
    frame = eval_view.bar_frame(RESULTS)
    assert list(frame["bar"][:2]) == ["accuracy · base", "accuracy · trained"]
    assert set(frame["metric"]) == {"accuracy", "reward (weighted total)", "think_format", "correctness"}
    assert frame["value"].dtype == "float64" and len(frame) == 8
    assert eval_view.bar_limits(frame) == [-0.1, 1.0]
    assert eval_view.bar_frame({}) is None


@pytest.mark.parametrize(("which", "questions"), [
    ("all", ["1+1?", "2+2?", "3+3?"]),
    ("fixed by training", ["2+2?", "3+3?"]),
    ("broken by training", ["1+1?"]),
])
def test_examples_filter(which: str, questions: list[str]) -> None:
    html = eval_view.examples_html(RESULTS, which, "think")
    shown = [q for q in ("1+1?", "2+2?", "3+3?") if f">{q}<" in html]
    assert shown == questions
    assert eval_view.counts(RESULTS) == {"fixed by training": 2, "broken by training": 1}


def test_replies_are_split_into_reasoning_and_answer() -> None:
    html = eval_view.examples_html(RESULTS, "broken by training", "think")
    assert "<details><summary>reasoning</summary><div style='white-space:pre-wrap'>one and one</div></details>" in html
    assert "<think>" not in html and "&lt;think&gt;" not in html
    assert "✔ right" in html and "✘ wrong" in html
    none = eval_view.examples_html({"base": {"examples": []}, "trained": {"examples": []}}, "all")
    assert none == ""
    assert "No held-out example was fixed by training" in eval_view.examples_html(
        {"base": {"examples": [BASE["examples"][0]]}, "trained": {"examples": [BASE["examples"][0]]}},
        "fixed by training")


def test_short_text_for_the_runs_tab() -> None:
    assert eval_view.short_text(RESULTS) == "accuracy 33.3% (base) → 66.7% (trained); 2 fixed, 1 broken by training"
    assert "not evaluated yet" in eval_view.short_text({})


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("ui-evaluate")
    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp / "runs"), "evaluated"
    run = create_run(config)
    run.file("eval.json").write_text(json.dumps(RESULTS))
    yield from launch_app(tmp)


def test_the_tab_reads_eval_json_back_and_filters(app: Any) -> None:
    page = app.client()
    shown = page.call("/evaluate_show", "evaluated")
    assert shown["evaluate.message"] == "" and "66.7%" in shown["evaluate.summary"]
    assert len(value(shown["evaluate.chart"])["data"]) == 8
    choices = [c[0] for c in shown["evaluate.filter"]["choices"]]
    assert choices == ["all", "fixed by training (2)", "broken by training (1)"]
    assert shown["evaluate.examples"].count("<tr data-verdict") == 3
    missing = page.call("/evaluate_run", "no-such-run", 0, 1)
    assert "Run no-such-run no longer exists" in missing["evaluate.message"]  # a name no folder has


def test_an_evaluation_of_an_earlier_step_is_marked_out_of_date(tmp_path: Path) -> None:
    """Trained on (a resume with more steps) after it was evaluated: the page says so, with both steps."""
    from grpo_box.ui import evaluate_tab

    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path / "runs"), "extended"
    run = create_run(config)
    run.adapter_dir.mkdir(parents=True)
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    run.record_adapter_step(5)
    scored = {**RESULTS, "trained_step": 3}
    assert "trained: the adapter at step 3" in eval_view.summary_html(scored)
    said = evaluate_tab.out_of_date("extended", run.path, scored)
    assert "Out of date" in said and "at step 3" in said and "on to step 5" in said
    assert evaluate_tab.out_of_date("extended", run.path, {**RESULTS, "trained_step": 5}) == ""
    assert evaluate_tab.out_of_date("extended", run.path, RESULTS) == ""  # an eval.json from before steps were kept


# -- progress and one evaluation per run (no model) ----------------------------------------------
def _lines(k: int) -> list[str]:
    """The child's progress lines for base then trained, greedy then (k > 1) sampled, 4 prompts."""
    phases = ["greedy"] + ([f"{k} samples"] if k > 1 else [])
    return [f"  {model}: {what}: {done}/4 prompts" for model in ("base", "trained") for what in phases
            for done in range(5)]


class FakeRegistry(dict):
    def __init__(self, runs: Path) -> None:
        super().__init__()
        self.ctx = SimpleNamespace(runs_dir=str(runs), hardware=SimpleNamespace(gpu=None))


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeRegistry, Path]:
    """Run "busy" under a fake registry, no training job."""
    from grpo_box.ui import evaluate_tab

    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path / "runs"), "busy"
    run = create_run(config).path.resolve()
    monkeypatch.setattr(evaluate_tab.job, "running_run", lambda: None)
    return FakeRegistry(tmp_path / "runs"), run


@pytest.mark.parametrize("k", [1, 4])
def test_progress_only_moves_forward_through_the_phases(k: int, offline: tuple[FakeRegistry, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import evaluate_tab

    def child(args: list[str], on_line: Any = None, **kwargs: Any) -> dict[str, Any]:
        for line in _lines(k):
            on_line(line)
        return {}

    monkeypatch.setattr(evaluate_tab, "run_json", child)
    shown: list[float] = []
    evaluate_tab._evaluate(offline[0])("busy", 0, k, progress=lambda fraction, desc="": shown.append(fraction))
    fractions = shown[1:]  # after "loading the model"
    assert len(fractions) == len(_lines(k)) and fractions[-1] == 1.0
    assert fractions == sorted(fractions), fractions  # pass@k's sampled phase no longer restarts the bar
    assert evaluate_tab.phase_fraction("loading the model", k) is None


def test_a_line_from_an_earlier_phase_never_moves_the_bar_back() -> None:
    from grpo_box.ui import evaluate_tab

    shown: list[float] = []
    bar = evaluate_tab.progress_bar(lambda fraction, desc="": shown.append(fraction), 1)
    for line in ["  trained: greedy: 2/4 prompts", "  base: greedy: 4/4 prompts", "wrote eval.json"]:
        bar(line)
    assert shown == [0.75, 0.75]


def test_a_second_evaluation_of_a_run_is_refused_while_one_runs(offline: tuple[FakeRegistry, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from grpo_box.ui import evaluate_tab
    from grpo_box.ui.child import ChildError

    reg, run = offline
    started: list[list[str]] = []
    first_running = threading.Event()
    finish_first = threading.Event()

    def child(args: list[str], **kwargs: Any) -> Any:
        started.append(list(args))
        if len(started) == 1:  # the first evaluation runs until the second one was tried
            first_running.set()
            finish_first.wait(30)
        raise ChildError("the child stands in here")

    monkeypatch.setattr(evaluate_tab, "run_json", child)
    evaluate = evaluate_tab._evaluate(reg)
    first = threading.Thread(target=evaluate, args=("busy", 0, 1))
    first.start()
    try:
        assert first_running.wait(30)
        refused = evaluate("busy", 0, 1)[0]  # from another page, while the first runs
    finally:
        finish_first.set()
        first.join(30)
    assert "busy is already being evaluated since" in refused and "Not started" in refused and len(started) == 1
    failed = evaluate("busy", 0, 1)[0]  # once it is done, the next one starts (and its claim ends with it)
    assert "Evaluation failed" in failed and len(started) == 2
