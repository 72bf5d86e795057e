"""Load a user's own reward functions from a Python file, with errors that point at the problem.

Users know their task best, so a rubric may name `user:<function>` from a plain Python file.
The file is imported by path (no package, no install), its public functions are collected, and
each signature is checked against TRL's calling convention before any training starts. A broken
file fails here with the file, line and function named, not twenty minutes into a run.

Loading executes the user's code with full privileges and it may hang, crash or leak GPU memory,
so it is only ever called inside a child process: the training or evaluation job, or the
`python -m grpo_box rewards score` dry run. The UI process never imports user reward files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable

from grpo_box.rewards.guard import DEFAULT_REWARD_TIMEOUT, RewardTimeout, UserExit, call_limited
from grpo_box.rewards.registry import RewardError

_CONTRACT = "def my_reward(prompts, completions, **kwargs) -> list[float | None]"


def load_user_rewards(path: str | Path, timeout: float | None = DEFAULT_REWARD_TIMEOUT) -> dict[str, Callable]:
    """Import the reward file at `path` and return its public functions by name.

    Public means: defined in that file and not starting with `_` (name helpers `_helper`).
    Raises RewardError naming the file (and line, for syntax and import errors) and the
    function whose signature does not fit `(prompts, completions, **kwargs)`, also for a file
    that calls sys.exit() while it is imported, or whose import takes longer than `timeout` s.
    Call this only inside a child process (training, evaluation, dry run), never in the UI.
    """
    path = Path(path)
    if not path.is_file():
        raise RewardError(f"user reward file {path}: not found")
    source = _read(path)
    _check_syntax(path, source)
    module = _import(path, timeout)
    functions = {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__
    }
    if not functions:
        raise RewardError(
            f"user reward file {path}: no public functions found; define at least one like\n    {_CONTRACT}"
        )
    for name, func in functions.items():
        problem = signature_problem(func)
        if problem:
            raise RewardError(
                f"user reward file {path}: function {name}{inspect.signature(func)} {problem}; "
                f"reward functions look like\n    {_CONTRACT}\n"
                "(prefix helper functions with _ so they are not taken as rewards)"
            )
    return functions


def signature_problem(func: Callable) -> str | None:
    """Why `func` cannot be called as TRL calls rewards, or None when it can."""
    if inspect.iscoroutinefunction(func):
        return "is async; write it as a plain def"
    params = inspect.signature(func).parameters.values()
    kinds = {p.kind for p in params}
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        return "has no **kwargs; the trainer also passes dataset columns (e.g. answer=) and trainer_state"
    by_name = {p.name: p for p in params}
    if "completions" not in by_name:
        return "has no 'completions' parameter; the trainer passes prompts= and completions= by name"
    positional_only = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    if positional_only:
        return f"has positional-only parameters ({', '.join(positional_only)}); the trainer passes everything by name"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RewardError(f"user reward file {path}: cannot read it ({exc})") from exc


def _check_syntax(path: Path, source: str) -> None:
    try:
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        line = (exc.text or "").strip()
        raise RewardError(
            f"user reward file {path}, line {exc.lineno}: syntax error: {exc.msg}" + (f"\n    {line}" if line else "")
        ) from exc


def _import(path: Path, timeout: float | None = None) -> ModuleType:
    # A stable, unique module name per file keeps two files with the same stem apart and lets
    # pickle find the functions again by module name inside the same process.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"grpo_box_user_rewards_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RewardError(f"user reward file {path}: cannot be imported as Python (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        call_limited(lambda: spec.loader.exec_module(module), timeout)
    except RewardTimeout:
        sys.modules.pop(name, None)
        raise RewardError(
            f"user reward file {path}: importing it took longer than reward_timeout={timeout:g} s and was stopped; "
            "move slow set-up out of module level (or raise reward_timeout)"
        ) from None
    except UserExit as exc:
        sys.modules.pop(name, None)
        raise RewardError(
            f"user reward file {path}{_line_in(path, exc.original)}: importing it {exc}; a reward file must only "
            "define functions (raise an exception to report a problem)"
        ) from exc.original
    except Exception as exc:
        sys.modules.pop(name, None)
        raise RewardError(
            f"user reward file {path}{_line_in(path, exc)}: importing it failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _line_in(path: Path, exc: BaseException) -> str:
    """', line N' for the deepest traceback frame inside the user's file, if any."""
    target = path.resolve()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == target]
    return f", line {frames[-1].lineno}" if frames else ""
