"""Dry run: score example completions with a rubric before spending GPU hours on training.

GRPO learns only from differences inside a group of completions for one prompt: the advantage
of each is `(r - mean) / std` over its group (TRL's default `scale_rewards="group"`, with the
sample standard deviation and TRL's 1e-4 guard). A rubric that scores every completion alike
teaches nothing, and a correctness-like reward (built-in `correctness`, `reasoning_then_answer`,
or a user function with `checks_answer = True`) that is always 0 is too sparse for a small model;
so is a rubric whose total is 0 everywhere. The dry run shows per-function scores, weighted
totals and advantages, and warns about all three, using exactly the callables `build_rubric`
hands the trainer. `score_file` is what
`python -m grpo_box rewards score --rubric RUBRIC.yaml --data DATA.jsonl` runs; completions
sampled from the base model come through `evaluate.sample_dry_run` (`rewards score --sample N`).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grpo_box.config import RewardSpec, read_text, read_yaml
from grpo_box.jsonlines import loads_line, problem as json_problem
from grpo_box.rewards.answers import to_text
from grpo_box.rewards.guard import DEFAULT_REWARD_TIMEOUT
from grpo_box.rewards.registry import RESERVED_COLUMNS, RewardError
from grpo_box.rewards.rubric import RewardFunction, as_spec, build_rubric, shorten
from grpo_box.rewards.scoring import call_rewards, weighted_totals
from grpo_box.text_table import text_table

STD_EPS = 1e-4  # TRL adds this to the group std before dividing
SPARSE_WARNING = "reward too sparse for this model: add format rewards or use an easier task"


@dataclass
class ScoredCompletion:
    completion: str
    scores: dict[str, float | None]
    total: float | None  # weighted sum; None when every function skipped it (TRL then gives advantage 0)
    advantage: float


@dataclass
class GroupResult:
    prompt: str
    completions: list[ScoredCompletion]
    mean: float | None
    std: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class DryRunReport:
    rewards: list[dict[str, Any]]  # {name, weight, params} in rubric order
    groups: list[GroupResult]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_groups(groups: list[dict[str, Any]], rubric_specs: list[RewardSpec | dict | str],
                 user_file: str | None = None, template: str | None = None,
                 timeout: float | None = DEFAULT_REWARD_TIMEOUT) -> DryRunReport:
    """Score each group {prompt, completions: [...], columns: {answer: ...}} with the rubric.

    A group may also carry `completion_ids` (one token list per completion), which length
    rewards then count in tokens, as in training. `template` fills tag params as in training;
    `timeout` limits each reward call as `reward_timeout` does in training.
    """
    funcs, weights = build_rubric(rubric_specs, user_file, template=template, timeout=timeout)
    results = [_score_group(i, g, funcs, weights) for i, g in enumerate(groups)]
    report = DryRunReport(
        rewards=[{"name": f.name, "weight": w, "params": f.params} for f, w in zip(funcs, weights)],
        groups=results,
    )
    for i, group in enumerate(results, 1):
        report.warnings += [f"group {i}: {w}" for w in group.warnings]
    report.warnings += _sparse_warnings(funcs, results)
    return report


def _score_group(index: int, group: dict[str, Any], funcs: list[RewardFunction], weights: list[float]) -> GroupResult:
    prompt, completions, columns = _unpack_group(index, group)
    n = len(completions)
    prompts = [prompt] * n
    try:
        scores = call_rewards(funcs, prompts, completions, group.get("completion_ids"),
                              {k: [v] * n for k, v in columns.items()})
    except RewardError as exc:
        raise RewardError(f"{group.get('label') or f'group {index + 1}'}: {exc}") from exc
    totals = weighted_totals(funcs, weights, scores)
    mean, std, advantages = group_advantages(totals)
    rows = [
        ScoredCompletion(to_text(c), {f.name: scores[f.name][i] for f in funcs}, totals[i], advantages[i])
        for i, c in enumerate(completions)
    ]
    warnings = []
    if mean is not None and math.isclose(std, 0.0, abs_tol=1e-9):
        warnings.append(f"no learning signal: every completion scored {_fmt(mean)}")
    return GroupResult(to_text(prompt, role="user"), rows, mean, std, warnings)


def _unpack_group(index: int, group: dict[str, Any]) -> tuple[Any, list[Any], dict[str, Any]]:
    where = group.get("label") if isinstance(group, dict) else None
    where = where or f"group {index + 1}"
    if not isinstance(group, dict) or "prompt" not in group:
        raise RewardError(f"{where}: expected {{prompt, completions, columns}}, got {group!r:.120}")
    completions = group.get("completions")
    if not isinstance(completions, list) or not completions:
        raise RewardError(f"{where}: 'completions' must be a non-empty list of strings")
    for c in completions:
        if not isinstance(c, (str, list)):
            raise RewardError(f"{where}: each completion must be a string (or a list of chat messages), got {c!r:.80}")
    columns = group.get("columns") or {}
    if not isinstance(columns, dict):
        raise RewardError(f"{where}: 'columns' must be a mapping such as {{answer: '72'}}")
    taken = [k for k in columns if k in RESERVED_COLUMNS]
    if taken:
        raise RewardError(f"{where}: column {taken[0]!r} is a name the trainer passes itself "
                          f"({', '.join(RESERVED_COLUMNS)}); rename that column")
    ids = group.get("completion_ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(completions)):
        raise RewardError(f"{where}: 'completion_ids' must hold one token-id list per completion ({len(completions)})")
    return group["prompt"], completions, columns


def group_advantages(totals: list[float | None]) -> tuple[float | None, float, list[float]]:
    """(mean, sample std, advantages) for one group, as TRL computes them; skipped rows get 0.

    >>> group_advantages([1.0, 0.0, 0.0, 1.0])[2]  # doctest: +ELLIPSIS
    [0.86..., -0.86..., -0.86..., 0.86...]
    """
    valid = [t for t in totals if t is not None]
    if not valid:
        return None, 0.0, [0.0] * len(totals)
    mean = statistics.fmean(valid)
    std = statistics.stdev(valid) if len(valid) > 1 else 0.0
    return mean, std, [0.0 if t is None else (t - mean) / (std + STD_EPS) for t in totals]


def _sparse_warnings(funcs: list[RewardFunction], groups: list[GroupResult]) -> list[str]:
    """Warn when the whole rubric, or any correctness-like function, pays nothing anywhere."""
    warnings = []
    totals = [row.total for g in groups for row in g.completions]
    if totals and all(not t for t in totals):
        warnings.append("the whole rubric scored 0 on every completion of every group: nothing pays yet, so GRPO "
                        "cannot learn; add a partial-credit reward (xml_count, target_length) or use an easier task")
    for func in funcs:
        if not func.checks_answer or not groups:
            continue
        values = [row.scores[func.name] for g in groups for row in g.completions]
        if all(not v for v in values):
            warnings.append(f"{func.name} scored 0 on every completion of every group: {SPARSE_WARNING}")
    return warnings


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_report(report: DryRunReport, width: int = 60) -> str:
    """Plain-text tables: one per group, a row per completion, then the warnings."""
    names = [r["name"] for r in report.rewards]
    lines = ["Rubric: " + ", ".join(f"{r['name']} ×{r['weight']:g}" for r in report.rewards)]
    for i, group in enumerate(report.groups, 1):
        lines += ["", f"Group {i}: {shorten(group.prompt, 100)}"]
        lines += _group_table(group, names, width)
        lines.append(f"  mean {_fmt(group.mean)}  std {_fmt(group.std)} (sample)")
    lines += ["", "Warnings:" if report.warnings else "No warnings."]
    lines += [f"  - {w}" for w in report.warnings]
    return "\n".join(lines)


def _group_table(group: GroupResult, names: list[str], width: int) -> list[str]:
    """A row per completion: the scores right-aligned, the completion (shortened to `width`) last."""
    headers = ["#", *names, "total", "advantage", "completion"]
    rows = [
        [j, *(_fmt(c.scores[n]) for n in names), _fmt(c.total), f"{c.advantage:+.3f}", shorten(c.completion, width)]
        for j, c in enumerate(group.completions, 1)
    ]
    return text_table([headers, *rows], right=range(len(headers) - 1), indent="  ").splitlines()


def score_file(rubric_yaml_path: str | Path, data_jsonl_path: str | Path, user_file: str | None = None,
               template: str | None = None, timeout: float | None = DEFAULT_REWARD_TIMEOUT) -> DryRunReport:
    """The dry run from files: a rubric YAML and a JSONL of prompts with completions.

    With `template` (think, reasoning, boxed) the rubric's unset tag params come from it, as in training.
    """
    specs = load_rubric(rubric_yaml_path)
    groups = load_groups(data_jsonl_path)
    return score_groups(groups, specs, user_file, template=template, timeout=timeout)


def load_rubric(path: str | Path) -> list[RewardSpec]:
    """Read a rubric YAML: a list of {name, weight, params}, or a mapping with a `rewards:` list."""
    path = Path(path)
    raw = read_yaml(path, "rubric file", RewardError)
    if isinstance(raw, dict):
        if "rewards" not in raw:
            raise RewardError(f"rubric file {path}: a mapping needs a 'rewards:' list of {{name, weight, params}}")
        raw = raw["rewards"]
    if not isinstance(raw, list) or not raw:
        raise RewardError(f"rubric file {path}: expected a non-empty list of {{name, weight, params}}")
    try:
        return [as_spec(item, i) for i, item in enumerate(raw)]
    except RewardError as exc:
        raise RewardError(f"rubric file {path}: {exc}") from exc


def load_groups(path: str | Path) -> list[dict[str, Any]]:
    """Read dry-run JSONL into groups; rows with the same prompt join one group, in file order.

    Each line: {"prompt": ..., "completion": "..."} or {"prompt": ..., "completions": [...]},
    plus columns such as "answer", and optionally "completion_ids" (a token-id list for
    "completion", a list of them for "completions"). A bad line raises RewardError naming the
    file and line.
    """
    path = Path(path)
    lines = read_text(path, "data file", RewardError).splitlines()
    groups: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            _add_row(groups, _parse_row(path, lineno, line), f"{path}, line {lineno}")
    if not groups:
        raise RewardError(f"data file {path}: no rows; each line needs a prompt and a completion")
    return list(groups.values())


def _parse_row(path: Path, lineno: int, line: str) -> dict[str, Any]:
    where = f"data file {path}, line {lineno}"
    try:
        row = loads_line(line)
    except json.JSONDecodeError as exc:
        raise RewardError(f"{where}: {json_problem(exc)}") from exc
    if not isinstance(row, dict) or "prompt" not in row:
        raise RewardError(f"{where}: each line must be an object with a 'prompt'")
    if ("completion" in row) == ("completions" in row):
        raise RewardError(f"{where}: give either 'completion' (one string) or 'completions' (a list of strings)")
    single = "completion" in row
    completions = [row.pop("completion")] if single else row.pop("completions")
    if not isinstance(completions, list) or not completions or not all(isinstance(c, (str, list)) for c in completions):
        raise RewardError(f"{where}: completions must be strings (or lists of chat messages)")
    taken = [k for k in row if k in RESERVED_COLUMNS and k not in ("prompt", "completion_ids")]
    if taken:
        raise RewardError(f"{where}: {taken[0]!r} is passed by the trainer itself, not read from the data; "
                          "remove or rename that key")
    row["_completions"] = completions
    row["_ids"] = _completion_ids(where, row.pop("completion_ids", None), completions, single)
    return row


def _completion_ids(where: str, ids: Any, completions: list[Any], single: bool) -> list[list[int]] | None:
    """Token ids per completion from a line's optional `completion_ids`, checked for shape."""
    if ids is None:
        return None
    if single and _is_id_list(ids):
        return [ids]
    if isinstance(ids, list) and len(ids) == len(completions) and all(_is_id_list(i) for i in ids):
        return ids
    shape = "a list of token ids" if single else f"a list of {len(completions)} token-id lists, one per completion"
    raise RewardError(f"{where}: 'completion_ids' must be {shape}")


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _add_row(groups: dict[str, dict[str, Any]], row: dict[str, Any], label: str) -> None:
    columns = {k: v for k, v in row.items() if k not in ("prompt", "_completions", "_ids")}
    key = json.dumps(row["prompt"], sort_keys=True)
    group = groups.get(key)
    if group is None:
        groups[key] = {"prompt": row["prompt"], "completions": list(row["_completions"]), "columns": columns,
                       "label": label, "completion_ids": row["_ids"]}
    elif group["columns"] != columns:
        raise RewardError(f"data file {label}: same prompt as {group['label']} but different columns {columns!r:.120}")
    elif (group["completion_ids"] is None) != (row["_ids"] is None):
        raise RewardError(f"data file {label}: give 'completion_ids' on every line of a prompt or on none "
                          f"({group['label']} has the same prompt)")
    else:
        group["completions"] += row["_completions"]
        if row["_ids"] is not None:
            group["completion_ids"] += row["_ids"]
