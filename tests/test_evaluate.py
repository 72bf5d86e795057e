"""Tests for grpo_box.evaluate: the pass@k estimator (table), scoring with a scripted generator
(exact accuracy, per-reward means, weighted total, pass@k, TRL-style reward calls), eval.json
merging, the text table, one real base-vs-trained run on the bundled model with a PEFT adapter
made without training, and the reward dry run on samples (scripted, then the bundled model
through the CLI)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import make_random_lora, run_cli

from grpo_box.config import RewardSpec, RunConfig
from grpo_box.data import DataError, load_rows
from grpo_box.evaluate import compare, evaluate, evaluate_run, format_eval, pass_at_k, read_eval, sample_dry_run
from grpo_box.inference import BaseGenerator, Completion, Sampling
from grpo_box.runs import EVAL, RunDir, create_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(runs_dir: Path) -> RunConfig:
    config = RunConfig()
    config.output.runs_dir = str(runs_dir)
    config.data.size, config.data.eval_size = 12, 4
    config.grpo.max_completion_length = 16
    config.lora.r, config.lora.alpha, config.lora.target_modules = 4, 8, ["q_proj", "v_proj"]
    config.rewards = [
        RewardSpec("think_format", 0.5),
        RewardSpec("correctness", 2.0),
        RewardSpec("target_length", 0.25, {"target": 8, "unit": "tokens"}),
    ]
    return config


# ---------------------------------------------------------------- pass@k

PASS_AT_K = [
    (5, 0, 1, 0.0),
    (5, 5, 3, 1.0),
    (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (10, 3, 1, 0.3),  # pass@1 is the share correct
    (10, 2, 5, 1 - 56 / 252),  # 1 - C(8,5)/C(10,5)
    (4, 1, 4, 1.0),  # n == k: any correct sample
    (4, 0, 4, 0.0),
    (100, 10, 10, 1 - math.comb(90, 10) / math.comb(100, 10)),
]


@pytest.mark.parametrize(("n", "c", "k", "expected"), PASS_AT_K)
def test_pass_at_k(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (3, 1, 4), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------- scripted generator


class Scripted(BaseGenerator):
    """Replies from a function of (question, reference answer, sample index); records its calls."""

    def __init__(self, config: RunConfig, reply):
        train, held = load_rows(config)
        self.answers = {r["question"]: r["answer"] for r in [*train, *held]}
        self.reply = reply
        self.calls: list[dict[str, Any]] = []

    def complete(self, messages_batch, sampling=Sampling()) -> list[list[Completion]]:
        self.calls.append({"n": len(messages_batch), "temperature": sampling.temperature, "k": sampling.n,
                           "max_new_tokens": sampling.max_new_tokens})
        out = []
        for messages in messages_batch:
            question = messages[-1]["content"]
            texts = [self.reply(question, self.answers[question], i) for i in range(sampling.n)]
            out.append([Completion(t, 8, False, list(range(8))) for t in texts])
        return out

    def stream(self, messages, sampling=Sampling()) -> Iterator[str]:
        yield self.complete([messages], sampling)[0][0].text


def formatted(answer: str) -> str:
    return f"<think>\nadd\n</think>\n<answer>\n{answer}\n</answer>"


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    return small_config(tmp_path)


def test_all_correct_scores_exactly(config: RunConfig) -> None:
    gen = Scripted(config, lambda q, a, i: formatted(a))
    result = evaluate(config, generator=gen)
    assert result["rows"] == 4 and result["accuracy"] == 1.0 and result["correct"] == 4
    assert result["rewards"] == {"think_format": 1.0, "correctness": 1.0, "target_length": 1.0}
    assert result["reward"] == pytest.approx(0.5 + 2.0 + 0.25)
    assert result["completion_length"] == 8 and result["clipped_ratio"] == 0.0
    assert "pass_at_k" not in result and gen.calls == [{"n": 4, "temperature": 0.0, "k": 1, "max_new_tokens": 16}]
    example = result["examples"][0]
    assert example["correct"] and example["predicted"] == example["answer"]


def test_wrong_answers_and_missing_format(config: RunConfig) -> None:
    result = evaluate(config, generator=Scripted(config, lambda q, a, i: f"it is {int(a) + 1}"))
    assert result["accuracy"] == 0.0 and result["rewards"]["think_format"] == 0.0
    assert result["reward"] == pytest.approx(0.25)  # only target_length pays


def test_accuracy_without_a_correctness_reward(config: RunConfig) -> None:
    config.rewards = [RewardSpec("think_format", 1.0)]
    half = lambda q, a, i: formatted(a) if int(a) % 2 == 0 else formatted("x")  # noqa: E731
    result = evaluate(config, generator=Scripted(config, half))
    _, held = load_rows(config)
    assert result["accuracy"] == sum(int(a) % 2 == 0 for a in held["answer"]) / len(held)
    assert list(result["rewards"]) == ["think_format"]


def test_pass_at_k_from_samples(config: RunConfig) -> None:
    gen = Scripted(config, lambda q, a, i: formatted(a) if i % 2 == 0 else formatted("-1"))
    result = evaluate(config, generator=gen, k=4, limit=2)
    assert result["rows"] == 2 and result["k"] == 4
    assert result["pass_at_1"] == pytest.approx(0.5) and result["pass_at_k"] == 1.0
    assert {"n": 2, "temperature": 1.0, "k": 4, "max_new_tokens": 16} in gen.calls


def test_rewards_get_trl_arguments(config: RunConfig, tmp_path: Path) -> None:
    record = tmp_path / "seen.json"
    user_file = tmp_path / "mine.py"
    user_file.write_text(
        "import json\n"
        "def spy(prompts, completions, completion_ids=None, **columns):\n"
        "    calls = sorted(k for k, v in columns.items() if callable(v))\n"
        "    columns = {k: v for k, v in columns.items() if not callable(v)}\n"
        f"    open({str(record)!r}, 'w').write(json.dumps([prompts, completions, completion_ids, columns, calls]))\n"
        "    return [0.5] * len(completions)\n"
    )
    config.reward_file = str(user_file)
    config.rewards = [RewardSpec("user:spy", 1.0)]
    result = evaluate(config, generator=Scripted(config, lambda q, a, i: formatted(a)), limit=2)
    prompts, completions, ids, columns, calls = json.loads(record.read_text())
    assert prompts[0][-1]["role"] == "user" and len(prompts) == 2
    assert completions[0] == [{"role": "assistant", "content": formatted(columns["answer"][0])}]
    assert ids == [list(range(8))] * 2
    assert {"answer", "question"} <= set(columns) and "prompt" not in columns and len(columns["answer"]) == 2
    assert columns["trainer_state"] is None and calls == ["log_extra", "log_metric"]  # as TRL passes them
    assert result["rewards"] == {"user:spy": 0.5} and result["accuracy"] == 1.0  # via answers_match


def test_a_row_every_reward_skipped_has_no_total_and_is_left_out_of_the_mean(config: RunConfig,
                                                                            tmp_path: Path) -> None:
    user_file = tmp_path / "skips.py"
    user_file.write_text("def odd(prompts, completions, completion_ids=None, answer=None, **kw):\n"
                         "    return [1.0 if int(a) % 2 else None for a in answer]\n")
    config.reward_file = str(user_file)
    config.rewards = [RewardSpec("user:odd", 2.0), RewardSpec("user:odd", 1.0)]
    result = evaluate(config, generator=Scripted(config, lambda q, a, i: formatted(a)))
    odd = [int(e["answer"]) % 2 == 1 for e in result["examples"]]
    assert [e["reward"] for e in result["examples"]] == [3.0 if o else None for o in odd]  # TRL: NaN, not 0
    assert result["reward"] == (3.0 if any(odd) else None)


def test_limit_scores_the_first_held_out_rows_without_changing_the_split(config: RunConfig) -> None:
    _, held = load_rows(config)
    result = evaluate(config, generator=Scripted(config, lambda q, a, i: formatted(a)), limit=2, n_examples=5)
    assert result["rows"] == 2 and [e["question"] for e in result["examples"]] == held["question"][:2]
    assert config.data.eval_size == 4 and len(load_rows(config)[1]) == 4
    with pytest.raises(ValueError, match="limit=0"):
        evaluate(config, generator=Scripted(config, lambda q, a, i: ""), limit=0)


@pytest.mark.parametrize("rubric", [[RewardSpec("think_format", 1.0)], [RewardSpec("correctness", 1.0)]])
def test_countdown_accuracy_uses_the_task_checker(config: RunConfig, rubric: list[RewardSpec]) -> None:
    config.data.source, config.rewards = "task:countdown", rubric
    train, held = load_rows(config)
    solutions = {r["question"]: r["solution"] for r in [*train, *held]}
    repeats_target = evaluate(config, generator=Scripted(config, lambda q, a, i: formatted(a)))
    solves = evaluate(config, generator=Scripted(config, lambda q, a, i: formatted(solutions[q])))
    assert repeats_target["accuracy"] == 0.0 and solves["accuracy"] == 1.0
    sampled = evaluate(config, generator=Scripted(config, lambda q, a, i: formatted(solutions[q] if i else a)), k=2)
    assert sampled["pass_at_1"] == 0.5 and sampled["pass_at_k"] == 1.0


class WithTokenizer(Scripted):
    """A scripted generator that, like the real ones, carries the model's tokenizer."""

    def __init__(self, config: RunConfig, reply, tokenizer: Any):
        super().__init__(config, reply)
        self.tokenizer = tokenizer


def test_held_out_prompts_are_length_checked_with_file_line(config: RunConfig, tmp_path: Path,
                                                             bundled_tokenizer: Any) -> None:
    lines = [json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(8)]
    lines[4] = json.dumps({"question": "Explain. " + "very long words " * 100, "answer": "5"})
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config.data.source, config.data.eval_size = str(path), 3
    _, held = load_rows(config)
    assert any(q.startswith("Explain") for q in held["question"])  # this seed holds it out
    with pytest.raises(DataError) as err:
        evaluate(config, generator=WithTokenizer(config, lambda q, a, i: formatted(a), bundled_tokenizer))
    assert str(err.value).startswith(f"{path}, line 5: the prompt is ") and "grpo.max_prompt_length" in str(err.value)


def test_no_held_out_rows_is_explained(config: RunConfig) -> None:
    config.data.eval_size = 0
    with pytest.raises(ValueError, match="eval_size"):
        evaluate(config, generator=Scripted(config, lambda q, a, i: ""))


def test_compare_and_format() -> None:
    base = {"rows": 4, "accuracy": 0.25, "reward": 1.0, "rewards": {"correctness": 0.25}, "completion_length": 10.0,
            "clipped_ratio": 0.5}
    trained = {**base, "accuracy": 0.75, "reward": 2.0, "rewards": {"correctness": 0.75}}
    delta = compare(base, trained)
    assert delta["accuracy"] == 0.5 and delta["rewards"] == {"correctness": 0.5} and delta["clipped_ratio"] == 0
    table = format_eval({"base": base, "trained": trained, "delta": delta})
    assert "accuracy" in table and "25.0%" in table and "75.0%" in table and "+50.0%" in table
    assert "correctness" in table and "delta" in table.splitlines()[0]
    assert "value" in format_eval(base).splitlines()[0]


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def run(bundled_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    run = create_run(small_config(tmp_path_factory.mktemp("runs")))
    make_random_lora(bundled_model_dir, run.adapter_dir)
    return run


def test_evaluate_run_merges_into_existing_eval_json(run: RunDir) -> None:
    config = run.config()
    (run.path / EVAL).write_text(json.dumps({"note": "kept", "base": {"accuracy": 0.0, "rewards": {}}}))
    right = Scripted(config, lambda q, a, i: formatted(a))
    result = evaluate_run(run.path, base=False, trained=True, generator=right)
    on_disk = read_eval(run.path)
    assert on_disk == json.loads(json.dumps(result)) and on_disk["note"] == "kept"
    assert on_disk["trained"]["accuracy"] == 1.0 and on_disk["delta"]["accuracy"] == 1.0
    assert on_disk["trained"]["adapter"] == str(run.adapter_dir)


def test_base_and_trained_scored_on_different_rows_are_flagged(tmp_path: Path) -> None:
    """Training scores the base at its first start and the adapter at the end; a resume (or
    `eval --trained-only --limit N`) in between can change the rows: eval.json and the table say so."""
    run = create_run(small_config(tmp_path))
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")  # the scripted generator loads nothing
    right = Scripted(run.config(), lambda q, a, i: formatted(a))
    evaluate_run(run.path, base=True, trained=False, generator=right)
    result = evaluate_run(run.path, base=False, trained=True, limit=2, generator=right)
    fix = f"run `python -m grpo_box eval {run.path}` to score both on the same rows"
    assert read_eval(run.path)["warning"] == result["warning"] == f"base scored on 4 rows, trained on 2: {fix}"
    assert f"warning: base scored on 4 rows, trained on 2: {fix}" in format_eval(result)

    config = run.config()
    config.data.seed = 1  # other held-out rows, as many
    (run.path / "config.yaml").write_text(config.to_yaml())
    result = evaluate_run(run.path, base=False, trained=True, generator=Scripted(config, lambda q, a, i: formatted(a)))
    assert "different prompts (4 rows each" in result["warning"] and fix in result["warning"]

    result = evaluate_run(run.path, generator=Scripted(config, lambda q, a, i: formatted(a)))  # both, as the fix says
    assert "warning" not in result and "warning" not in read_eval(run.path) and "warning" not in format_eval(result)


def test_evaluate_run_real_model(run: RunDir) -> None:
    steps: list[tuple[int, int, str]] = []
    result = evaluate_run(run.path, limit=2, max_new_tokens=12, progress=lambda *a: steps.append(a))
    on_disk = read_eval(run.path)
    assert set(on_disk) >= {"base", "trained", "delta"}
    for side in ("base", "trained"):
        part = on_disk[side]
        assert part["rows"] == 2 and 0.0 <= part["accuracy"] <= 1.0
        assert set(part["rewards"]) == {"think_format", "correctness", "target_length"}
        assert all(isinstance(v, float) for v in part["rewards"].values())
        assert 0 < part["completion_length"] <= 12 and part["max_new_tokens"] == 12
    assert on_disk["base"]["adapter"] is None and on_disk["trained"]["adapter"] == str(run.adapter_dir)
    # the adapter is on for "trained" and off for "base": the replies differ
    assert [e["completion"] for e in on_disk["base"]["examples"]] != [e["completion"] for e in on_disk["trained"]["examples"]]
    assert set(on_disk["delta"]["rewards"]) == {"think_format", "correctness", "target_length"}
    assert steps[0] == (0, 2, "base: greedy") and steps[-1] == (2, 2, "trained: greedy")
    assert "trained" in format_eval(result)


def test_eval_command_with_model_and_adapter_writes_eval_json(run: RunDir, tmp_path: Path) -> None:
    out_file = tmp_path / "out" / "eval.json"
    out = run_cli("eval", "--model", "bundled:smollm2-135m-instruct", "--adapter", str(run.adapter_dir),
                  "--limit", "2", "--out", str(out_file), "--set", "data.size=12", "--set", "data.eval_size=4",
                  "--set", "grpo.max_completion_length=8", timeout=600, OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr[-3000:]
    written = json.loads(out_file.read_text())
    assert written["base"]["rows"] == 2 and written["trained"]["rows"] == 2  # --limit: rows scored
    assert written["base"]["adapter"] is None and written["trained"]["adapter"] == str(run.adapter_dir)
    assert "accuracy" in written["delta"] and f"wrote {out_file}" in out.stderr
    assert "trained" in out.stdout.splitlines()[0]


@pytest.mark.parametrize("extra", [["--set", "grpo.max_completion_length=8"], ["--model", "bundled:x"],
                                   ["--preset", "8gb"], ["--out", "x.json"]])
def test_eval_command_refuses_flags_a_run_dir_ignores(run: RunDir, extra: list[str]) -> None:
    out = run_cli("eval", str(run.path), *extra, timeout=120)
    assert out.returncode == 2 and extra[0] in out.stderr and "would be ignored" in out.stderr
    assert "eval --model ID" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------- reward dry run on samples


def test_sample_dry_run_scores_each_prompt_as_a_group(config: RunConfig) -> None:
    config.grpo.num_generations, config.grpo.temperature = 4, 0.7
    gen = Scripted(config, lambda q, a, i: formatted(a) if i % 2 == 0 else f"maybe {a}1")
    report = sample_dry_run(config, 3, generator=gen)
    assert gen.calls == [{"n": 3, "temperature": 0.7, "k": 4, "max_new_tokens": 16}]
    train, _ = load_rows(config)
    assert [g.prompt for g in report.groups] == list(train["question"][:3])
    for group in report.groups:
        rows = group.completions
        assert len(rows) == 4
        assert [r.scores["correctness"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
        assert [r.scores["think_format"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
        assert [r.scores["target_length"] for r in rows] == [1.0] * 4  # 8 token ids, target 8 tokens
        assert [r.total for r in rows] == [2.75, 0.25, 2.75, 0.25]
        assert [round(r.advantage, 3) for r in rows] == [0.866, -0.866, 0.866, -0.866]
    assert report.warnings == []


def test_sample_dry_run_warns_when_the_base_model_never_scores(config: RunConfig) -> None:
    config.rewards = [RewardSpec("think_format", 0.5), RewardSpec("correctness", 2.0)]
    report = sample_dry_run(config, 2, generator=Scripted(config, lambda q, a, i: "I do not know"))
    assert "group 1: no learning signal: every completion scored 0" in report.warnings
    assert any(w.startswith("correctness scored 0 on every completion") for w in report.warnings)
    assert any(w.startswith("the whole rubric scored 0") for w in report.warnings)


@pytest.mark.slow
def test_rewards_score_sample_on_the_bundled_model(tmp_path: Path) -> None:
    out = run_cli("rewards", "score", "--sample", "2", "--json", "--set", "grpo.num_generations=4",
                  "--set", "grpo.max_completion_length=16", "--set", "data.size=20", "--set", "data.eval_size=4",
                  timeout=600, OMP_NUM_THREADS="1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sampling 4 completions for each of 2 prompts" in out.stderr and "2/2 prompts" in out.stderr
    report = json.loads(out.stdout)
    weights = {r["name"]: r["weight"] for r in report["rewards"]}
    assert len(report["groups"]) == 2
    for group in report["groups"]:
        rows = group["completions"]
        assert len(rows) == 4 and len({r["completion"] for r in rows}) > 1  # sampled, not greedy
        for r in rows:
            assert r["total"] == pytest.approx(sum(weights[n] * (v or 0.0) for n, v in r["scores"].items()))
    correctness = [r["scores"]["correctness"] for g in report["groups"] for r in g["completions"]]
    sparse = any(w.startswith("correctness scored 0 on every completion") for w in report["warnings"])
    assert sparse == (not any(correctness))


def test_a_failed_results_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    """eval.json goes through runs.write_text_atomic, the engine's one atomic write."""
    import os

    from grpo_box import evaluate as ev
    from grpo_box.evaluate import EvalWriteError

    path = tmp_path / "eval.json"
    path.write_text('{"old": 1}')

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(EvalWriteError, match="No space left") as err:
        ev._write_json(path, {"new": 2})
    assert err.value.results == {"new": 2} and json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
