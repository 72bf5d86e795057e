"""Before/after evaluation: score held-out prompts with the run's own rubric, base vs trained.

GRPO's training reward says how the policy does on prompts it is training on; whether it learned
the task shows on prompts it never saw. `evaluate` generates greedy replies to the held-out rows
(`data.load_rows`; `limit` scores only the first of them, never changing the split) and scores
them with the same reward functions, called exactly as TRL calls them, so the numbers line up
with the training curves: accuracy (the `correctness` reward > 0, or the same check,
`rewards.is_correct`, on the final answer when the rubric has none; task rows use their task's
checker), the mean of each reward, the weighted total, completion length in tokens and the share
cut off at the length limit. With `k > 1` it also samples k replies per prompt at temperature 1.0
and reports pass@k with the unbiased estimator of Chen et al. (2021). Prompts over
`grpo.max_prompt_length` are refused, naming their file and line, as training refuses them.

`evaluate_run` does this for a run's base model and its adapter with one model load (the adapter
is switched off for the base pass) and keeps the results in the run's `eval.json` as
{"base": …, "trained": …, "delta": …}, merged with what was there, since training evaluates the
base before it starts and the adapter after it ends. The two sides can then have been scored on
different rows (a resume after `data.eval_size` changed, `eval --trained-only --limit N`) or reply
lengths (auto-fit lowered `grpo.max_completion_length`); each result records a digest of its
prompts, and eval.json then gets a `warning` saying how to score both alike (`mismatch_warning`,
also printed under `format_eval`'s table). `evaluate_model` does the same for any model (plus an
optional adapter) outside a run and writes the result to a file of the caller's choice.

`sample_dry_run` is the reward dry run on the base model's own output: a few training prompts,
`num_generations` samples each at the training temperature, scored group by group with the
rubric (`rewards.score_groups`), so users see before training whether their rewards give GRPO a
signal on this model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets

from .config import RunConfig
from .errors import UserError
from .data import check_prompt_lengths, load_rows
from .inference import (BaseGenerator, Completion, Sampling, adapter_dir_step, load_for_generation,
                        run_adapter_dir)
from .models import check_model_source, load_error, resolve_model
from .progress import RowsProgress
from .prompts import answer_tag_for
from .rewards import DryRunReport, build_rubric, final_answer, get_reward, is_correct, score_groups
from .rewards.guard import timeout_of
from .rewards.rubric import RewardFunction
from .rewards.scoring import call_rewards, weighted_totals
from .runs import ADAPTER_CONFIG, EVAL, is_adapter_dir, open_run, write_text_atomic
from .text_table import text_table

Show = Callable[[dict[str, Any]], None]  # called with the results before they are written


class EvalError(UserError, ValueError):
    """A request that cannot be evaluated (no adapter, nothing asked for, no held-out rows)."""


class EvalWriteError(UserError, OSError):
    """The results could not be written (a read-only folder, a full disk); `results` holds them."""

    def __init__(self, message: str, results: dict[str, Any]):
        super().__init__(message)
        self.results = results

SAMPLE_TEMPERATURE = 1.0
_COMPARED = ("accuracy", "reward", "completion_length", "clipped_ratio", "pass_at_1", "pass_at_k")


# -- estimator ------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    >>> pass_at_k(4, 1, 2)
    0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# -- evaluate -------------------------------------------------------------------------------------
def evaluate(
    config: RunConfig,
    adapter_dir: str | Path | None = None,
    split: str = "held_out",
    k: int = 1,
    max_new_tokens: int | None = None,
    progress: RowsProgress | None = None,
    *,
    limit: int | None = None,
    generator: BaseGenerator | None = None,
    n_examples: int | None = None,
) -> dict[str, Any]:
    """Score `split` ("held_out" or "train") of the config's data with its rubric.

    Loads the config's model (plus `adapter_dir`) unless a `generator` is given; a trainer that
    holds its model passes `Generator(model, tokenizer)` instead of loading a second copy.
    `examples` keeps every scored row unless `n_examples` caps it (the app filters them into
    "fixed by training" and "broken by training").
    """
    if k < 1:
        raise EvalError(f"k={k}: pass@k needs at least one sample per prompt")
    data = _rows(config, split, limit)
    rows = data.to_dict()
    funcs, weights = build_rubric(config.rewards, config.reward_file, template=config.data.template,
                                  timeout=timeout_of(config))
    max_new = max_new_tokens or config.grpo.max_completion_length
    started = time.time()
    with _generator(config, adapter_dir, generator) as gen:
        if getattr(gen, "tokenizer", None) is not None:  # a GGUF generator has none to count with
            check_prompt_lengths(data, gen.tokenizer, config.grpo.max_prompt_length)
        greedy = _generate(gen, rows["prompt"], Sampling(max_new, seed=config.grpo.seed), progress, "greedy")
        sampled = _generate(gen, rows["prompt"], Sampling(max_new, SAMPLE_TEMPERATURE, n=k, seed=config.grpo.seed),
                            progress, f"{k} samples") if k > 1 else None
    result = _summary(config, rows, funcs, weights, [g[0] for g in greedy], n_examples)
    if sampled is not None:
        result.update(_pass_at(config, rows, funcs, sampled, k))
    result.update(model=config.model.name, adapter=str(adapter_dir) if adapter_dir else None, split=split,
                  max_new_tokens=max_new, prompts_digest=prompts_digest(rows["prompt"]),
                  seconds=round(time.time() - started, 2), time=time.time())
    return result


def prompts_digest(prompts: list[Any]) -> str:
    """Names the prompts a result was scored on (rows, system prompt, one-shot turn) in 16 hex digits."""
    return hashlib.sha256(json.dumps(prompts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sample_dry_run(
    config: RunConfig,
    prompts: int = 4,
    progress: RowsProgress | None = None,
    *,
    generator: BaseGenerator | None = None,
) -> DryRunReport:
    """Sample `num_generations` completions per training prompt from the (base) model and score
    each group with the config's rubric: per-function scores, totals, advantages, warnings."""
    if prompts < 1:
        raise EvalError(f"prompts={prompts}: sample at least one prompt")
    rows = _rows(config, "train", prompts).to_dict()
    g = config.grpo
    n = g.num_generations
    with _generator(config, None, generator) as gen:
        sampled = _generate(gen, rows["prompt"], Sampling(g.max_completion_length, g.temperature, n=n, seed=g.seed),
                            progress, f"{n} samples per prompt")
    columns = [name for name in rows if name != "prompt"]
    groups = [
        {
            "prompt": prompt,
            "completions": [c.text for c in group],
            "completion_ids": [c.token_ids for c in group] if all(c.token_ids for c in group) else None,
            "columns": {name: rows[name][i] for name in columns},
            "label": f"prompt {i + 1}",
        }
        for i, (prompt, group) in enumerate(zip(rows["prompt"], sampled))
    ]
    return score_groups(groups, config.rewards, config.reward_file, template=config.data.template,
                        timeout=timeout_of(config))


@contextlib.contextmanager
def _generator(config: RunConfig, adapter_dir: str | Path | None,
               given: BaseGenerator | None) -> Iterator[BaseGenerator]:
    """`given` as it is, or the config's model (plus adapter) loaded for this block and closed after."""
    if given is not None:
        yield given
        return
    check_model_source(config.model.name)
    try:
        gen = load_for_generation(config.model.name, adapter_dir, model_config=config.model,
                                  fast_inference=config.model.fast_inference)
    except OSError as exc:  # not found on the Hub, no network
        if Path(resolve_model(config.model.name)).exists():
            raise
        raise load_error(config.model.name, exc) from exc
    gen.use_run_format(config.data)
    try:
        yield gen
    finally:
        gen.close()


def _rows(config: RunConfig, split: str, limit: int | None) -> datasets.Dataset:
    """The split's rows, the first `limit` of them when given (the split itself never changes)."""
    if split not in ("held_out", "train"):
        raise EvalError(f"split={split!r}: choose held_out or train")
    train, held_out = load_rows(config)
    data = held_out if split == "held_out" else train
    if len(data) == 0:
        raise EvalError("there are no held-out rows: set data.eval_size above 0, or evaluate split='train'")
    if limit is not None:
        if limit < 1:
            raise EvalError(f"limit={limit}: score at least one row")
        data = data.select(range(min(limit, len(data))))
    return data


def _generate(
    gen: BaseGenerator, prompts: list[Any], sampling: Sampling, progress: RowsProgress | None, what: str,
) -> list[list[Completion]]:
    """Replies for every prompt, in batches so that `progress` moves; each batch is seeded with
    `sampling.seed` plus its first row's index."""
    step = getattr(gen, "batch_size", len(prompts)) or len(prompts)
    done: list[list[Completion]] = []
    for start in range(0, len(prompts), step):
        if progress:
            progress(start, len(prompts), what)
        chunk = prompts[start : start + step]
        seed = None if sampling.seed is None else sampling.seed + start
        done += gen.complete(chunk, replace(sampling, seed=seed))
    if progress:
        progress(len(prompts), len(prompts), what)
    return done


# -- scoring --------------------------------------------------------------------------------------
def score_completions(
    funcs: list[RewardFunction], rows: dict[str, list[Any]], completions: list[Completion], repeat: int = 1
) -> dict[str, list[float | None]]:
    """Each reward's scores for `repeat` completions per row, called as TRL does (`rewards.call_rewards`)."""
    expand = (lambda values: [v for v in values for _ in range(repeat)]) if repeat > 1 else list
    columns = {name: expand(values) for name, values in rows.items() if name != "prompt"}
    ids = [c.token_ids for c in completions]
    return call_rewards(funcs, expand(rows["prompt"]), [c.text for c in completions],
                        ids if all(i is not None for i in ids) else None, columns)


def _correctness(funcs: list[RewardFunction]) -> RewardFunction | None:
    """The rubric's first built-in `correctness` reward (its params, e.g. the tag, apply), if any."""
    return next((f for f in funcs if f.func is get_reward("correctness")), None)


def _correct(funcs: list[RewardFunction], scores: dict[str, list[float | None]], config: RunConfig,
             rows: dict[str, list[Any]], completions: list[Completion], repeat: int = 1) -> list[bool]:
    """Per completion: the correctness reward > 0, or `is_correct` on the final answer without one.

    Both check task rows with their task's own checker (countdown, sort) and others by math-verify.
    """
    reward = _correctness(funcs)
    if reward is not None:
        return [(s or 0.0) > 0 for s in scores[reward.name]]
    tag = answer_tag_for(config.data.template) or "answer"
    names = [name for name in rows if name != "prompt"]
    row_dicts = [{name: rows[name][i] for name in names} for i in range(len(rows["answer"])) for _ in range(repeat)]
    return [is_correct(final_answer(c.text, tag), row) for c, row in zip(completions, row_dicts)]


def _summary(config: RunConfig, rows: dict[str, list[Any]], funcs: list[RewardFunction], weights: list[float],
             completions: list[Completion], n_examples: int | None) -> dict[str, Any]:
    scores = score_completions(funcs, rows, completions)
    correct = _correct(funcs, scores, config, rows, completions)
    totals = weighted_totals(funcs, weights, scores)  # None where every reward skipped (TRL: left out of the mean)
    return {
        "rows": len(completions),
        "accuracy": _mean([float(c) for c in correct]),
        "correct": sum(correct),
        "reward": _mean(totals),
        "rewards": {f.name: _mean(scores[f.name]) for f in funcs},
        "weights": {f.name: w for f, w in zip(funcs, weights)},
        "completion_length": _mean([c.num_tokens for c in completions]),
        "clipped_ratio": _mean([float(c.truncated) for c in completions]),
        "examples": _examples(config, rows, funcs, scores, completions, correct, totals, n_examples),
    }


def _pass_at(config: RunConfig, rows: dict[str, list[Any]], funcs: list[RewardFunction],
             sampled: list[list[Completion]], k: int) -> dict[str, Any]:
    flat = [c for group in sampled for c in group]
    reward = _correctness(funcs)
    correctness = [reward] if reward is not None else []
    scores = score_completions(correctness, rows, flat, repeat=k) if correctness else {}
    correct = _correct(correctness, scores, config, rows, flat, repeat=k)
    counts = [sum(correct[i * k : (i + 1) * k]) for i in range(len(sampled))]
    return {
        "k": k,
        "pass_at_1": _mean([pass_at_k(k, c, 1) for c in counts]),
        "pass_at_k": _mean([pass_at_k(k, c, k) for c in counts]),
    }


def _examples(config: RunConfig, rows: dict[str, list[Any]], funcs: list[RewardFunction],
              scores: dict[str, list[float | None]], completions: list[Completion], correct: list[bool],
              totals: list[float | None], n: int | None) -> list[dict[str, Any]]:
    tag = answer_tag_for(config.data.template) or "answer"
    return [
        {
            "question": rows["question"][i],
            "answer": rows["answer"][i],
            "completion": completions[i].text,
            "predicted": final_answer(completions[i].text, tag),
            "correct": correct[i],
            "reward": totals[i],
            "rewards": {f.name: scores[f.name][i] for f in funcs},
        }
        for i in range(len(completions) if n is None else min(n, len(completions)))
    ]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


# -- runs -----------------------------------------------------------------------------------------
def evaluate_run(
    run_dir: str | Path,
    base: bool = True,
    trained: bool = True,
    k: int = 1,
    limit: int | None = None,
    progress: RowsProgress | None = None,
    *,
    max_new_tokens: int | None = None,
    generator: BaseGenerator | None = None,
    show: Show | None = None,
) -> dict[str, Any]:
    """Evaluate a run's base model and/or its adapter; write and return the merged eval.json.

    `show` gets the results before they are written, so a write that fails (EvalWriteError: a
    read-only run folder, a full disk) does not lose minutes of scoring."""
    if not (base or trained):
        raise EvalError("nothing to evaluate: ask for base, trained or both")
    run = open_run(run_dir)
    adapter = run_adapter_dir(run) if trained else None
    if trained and adapter is None:
        raise EvalError(f"{run.path} has no trained adapter yet (no adapter/ and no checkpoint); train it first")
    results = read_eval(run.path)
    results.update(_base_and_trained(run.config(), adapter, base, k=k, limit=limit, progress=progress,
                                     max_new_tokens=max_new_tokens, generator=generator))
    if adapter is not None:  # which training step was scored: a run trained further makes it out of date
        results["trained_step"] = adapter_dir_step(run, adapter)
    results["delta"] = compare(results.get("base"), results.get("trained"))
    results.pop("warning", None)
    warning = mismatch_warning(results.get("base"), results.get("trained"), run.path)
    if warning:
        results["warning"] = warning
    if show is not None:
        show(results)
    _write_json(run.file(EVAL), results)
    return results


def evaluate_model(
    config: RunConfig,
    adapter_dir: str | Path | None = None,
    out: str | Path | None = None,
    *,
    base: bool = True,
    k: int = 1,
    limit: int | None = None,
    progress: RowsProgress | None = None,
    max_new_tokens: int | None = None,
    generator: BaseGenerator | None = None,
    show: Show | None = None,
) -> dict[str, Any]:
    """Evaluate the config's model, and `adapter_dir` on top of it when given, outside any run.

    Returns {"base", "trained", "delta"} like `evaluate_run` and writes it to `out` (replacing
    that file: its numbers would belong to another model); `show` as in `evaluate_run`.
    """
    if adapter_dir is not None and not is_adapter_dir(adapter_dir):
        raise EvalError(f"{adapter_dir}: not a LoRA adapter folder (no {ADAPTER_CONFIG}); "
                                "pass the adapter/ folder of a run or a checkpoint-N folder")
    if not base and adapter_dir is None:
        raise EvalError("nothing to evaluate: --trained-only needs --adapter DIR")
    results = _base_and_trained(config, adapter_dir, base, k=k, limit=limit, progress=progress,
                                max_new_tokens=max_new_tokens, generator=generator)
    results["delta"] = compare(results.get("base"), results.get("trained"))
    if show is not None:
        show(results)
    if out is not None:
        _write_json(Path(out), results)
    return results


def _base_and_trained(config: RunConfig, adapter: str | Path | None, base: bool, *, generator: BaseGenerator | None,
                      progress: RowsProgress | None, **options: Any) -> dict[str, Any]:
    """{"base": …} and/or {"trained": …} with one model load; the adapter is off for the base pass."""
    results: dict[str, Any] = {}
    with _generator(config, adapter, generator) as gen:
        if base:
            with gen.adapter_disabled():
                results["base"] = evaluate(config, None, progress=_phase(progress, "base"), generator=gen, **options)
        if adapter is not None:
            results["trained"] = evaluate(config, adapter, progress=_phase(progress, "trained"), generator=gen,
                                          **options)
    return results


def read_eval(run_dir: str | Path) -> dict[str, Any]:
    """A run's eval.json, or {} when it has none (or it is unreadable)."""
    path = Path(run_dir) / EVAL
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def compare(base: dict[str, Any] | None, trained: dict[str, Any] | None) -> dict[str, Any]:
    """trained − base for every shared number (accuracy, reward, each reward's mean, …)."""
    if not base or not trained:
        return {}
    delta = {key: _minus(trained.get(key), base.get(key)) for key in _COMPARED}
    if base.get("k") != trained.get("k"):
        delta.pop("pass_at_k")
    rewards = {name: _minus(value, base.get("rewards", {}).get(name))
               for name, value in trained.get("rewards", {}).items()}
    return {**{k: v for k, v in delta.items() if v is not None}, "rewards": {k: v for k, v in rewards.items() if v is not None}}


def mismatch_warning(base: dict[str, Any] | None, trained: dict[str, Any] | None, run_dir: str | Path) -> str | None:
    """Why base and trained (scored at different times, see the module docstring) do not compare
    like for like, with the command that rescores both; None when they do or it cannot be told."""
    if not base or not trained:
        return None
    fix = f"run `python -m grpo_box eval {run_dir}` to score both on the same rows"
    rows = base.get("rows"), trained.get("rows")
    if None not in rows and rows[0] != rows[1]:
        return f"base scored on {rows[0]} rows, trained on {rows[1]}: {fix}"
    digests = base.get("prompts_digest"), trained.get("prompts_digest")
    if None not in digests and digests[0] != digests[1]:
        return (f"base and trained were scored on different prompts ({rows[1]} rows each: the held-out rows or the "
                f"system prompt changed in between): {fix}")
    lengths = base.get("max_new_tokens"), trained.get("max_new_tokens")
    if None not in lengths and lengths[0] != lengths[1]:
        return (f"base replies were cut at {lengths[0]} tokens, trained at {lengths[1]}: run "
                f"`python -m grpo_box eval {run_dir}` to score both with the same length")
    return None


def _minus(a: Any, b: Any) -> float | None:
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return a - b if ok else None


def _phase(progress: RowsProgress | None, name: str) -> RowsProgress | None:
    if progress is None:
        return None
    return lambda done, total, what: progress(done, total, f"{name}: {what}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically; an OSError becomes EvalWriteError carrying the results."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(data, indent=2, default=str))
    except OSError as exc:
        raise EvalWriteError(f"could not write the results to {path}: {exc.strerror or exc}; they are shown above "
                             "but not saved: make that folder writable (or free disk space) and run eval again",
                             data) from exc


# -- text -----------------------------------------------------------------------------------------
def format_eval(result: dict[str, Any]) -> str:
    """A plain-text table of one `evaluate` result or an `evaluate_run` result (base/trained/delta)."""
    if "base" in result or "trained" in result:
        columns = [(name, result.get(name)) for name in ("base", "trained") if result.get(name)]
        delta = result.get("delta") or None
    else:
        columns, delta = [("value", result)], None
    header = ["metric", *(name for name, _ in columns), *(["delta"] if delta else [])]
    rows = [header] + [_table_row(label, key, columns, delta) for label, key in _metrics(columns)]
    table = text_table(rows, right=range(1, len(header)), rule=True)
    return f"{table}\nwarning: {result['warning']}" if result.get("warning") else table


def _metrics(columns: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, tuple[str, ...]]]:
    first = columns[0][1]
    names = list(dict.fromkeys(n for _, r in columns for n in r.get("rewards", {})))
    rows = [("rows", ("rows",)), ("accuracy", ("accuracy",))]
    if any("pass_at_k" in r for _, r in columns):
        rows += [("pass@1 (sampled)", ("pass_at_1",)), (f"pass@{first.get('k', 'k')}", ("pass_at_k",))]
    rows += [("reward (weighted)", ("reward",))] + [(f"  {n}", ("rewards", n)) for n in names]
    return rows + [("completion tokens", ("completion_length",)), ("clipped ratio", ("clipped_ratio",))]


def _table_row(label: str, key: tuple[str, ...], columns: list[tuple[str, dict[str, Any]]],
               delta: dict[str, Any] | None) -> list[str]:
    cells = [label] + [_cell(_lookup(r, key), key) for _, r in columns]
    if delta:
        value = _lookup(delta, key)
        cells.append("" if value is None else ("+" if value >= 0 else "") + _cell(value, key))
    return cells


def _lookup(data: dict[str, Any], key: tuple[str, ...]) -> Any:
    for part in key:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _cell(value: Any, key: tuple[str, ...]) -> str:
    if value is None:
        return "-"
    if key[0] in ("accuracy", "pass_at_1", "pass_at_k", "clipped_ratio"):
        return f"{100 * value:.1f}%"
    if key[0] in ("rows",):
        return str(value)
    if key[0] == "completion_length":
        return f"{value:.1f}"
    return f"{value:.3f}"
