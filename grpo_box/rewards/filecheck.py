"""Check a user reward file before a run: it loads, its functions fit TRL's call, and each one
returns a valid score list on a small example.

`python -m grpo_box rewards check FILE --json` runs this (in the app, in a child process: the file
is user code). Loading problems (a syntax error, an import that fails, a function without
**kwargs) raise RewardError from `load_user_rewards`, naming the file and line. Each function is
then called once on an example group (a question with three completions and its reference
`answer`), as the trainer calls it; what goes wrong there (an exception, a wrong number of
scores, a non-number) is reported per function, since a function may need dataset columns the
example does not have.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from grpo_box.config import USER_PREFIX, RewardSpec
from grpo_box.rewards.dryrun import score_groups
from grpo_box.rewards.registry import RewardError
from grpo_box.rewards.user import load_user_rewards

EXAMPLE_GROUP: dict[str, Any] = {
    "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
    "completions": ["<think>2 plus 3 makes 5.</think>\n<answer>5</answer>", "<answer>6</answer>", "I am not sure."],
    "columns": {"answer": "5"},
    "label": "example",
}


def check_reward_file(path: str | Path) -> dict[str, Any]:
    """{file, ok, functions: [{name, signature, doc, scores, problem}]}; RewardError if it does not load."""
    path = Path(path).expanduser().resolve()
    functions = load_user_rewards(path)
    rows = []
    for name, func in functions.items():
        row: dict[str, Any] = {"name": name, "signature": f"{name}{inspect.signature(func)}",
                               "doc": (inspect.getdoc(func) or "").split("\n\n")[0], "scores": None, "problem": None}
        try:
            report = score_groups([EXAMPLE_GROUP], [RewardSpec(f"{USER_PREFIX}{name}")], user_file=str(path))
            row["scores"] = [c.scores[f"{USER_PREFIX}{name}"] for c in report.groups[0].completions]
        except RewardError as exc:
            row["problem"] = str(exc).removeprefix("example: ")
        rows.append(row)
    return {"file": str(path), "ok": all(r["problem"] is None for r in rows), "functions": rows}
